"""The raw material of hostile messages: the :class:`Hostile` record, decompression bombs made
by hand, and the editing of decoded messages.

A decoded CBOR (v2) or JSON (v1) message is edited at a *path* (:func:`paths_of`,
:func:`value_at`, :func:`replaced`; :data:`INTO_TAG` steps into a tag's content) with a
*hostile value* (:func:`hostile_value`): a plain value, :data:`DELETE`, or a :class:`Splice`
of raw bytes or text the encoders cannot write (10**5 nested arrays, 10**5000, a byte string
that declares 2**62 bytes). :func:`with_value`, :func:`dump_v2` and :func:`dump_json` encode
the result, splice included.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import struct
from datetime import datetime, timezone
from typing import Any

import cbor2
import numpy as np
from cbor2 import CBORSimpleValue, CBORTag, undefined

from sxdm_stream.sources.dectris.compression import HEADER, compress_bslz4

#: the bombs declare 256 MiB, the size that raised the processor's RSS in issue 11
BOMB_BYTES = 256 << 20
#: nesting depth of the "nesting" family (the pixel request of issue 11 had 10**5 brackets)
DEEP = 100_000
#: the v2 channel of the corpus' images and masks
CHANNEL = "threshold_1"


# ---- hostile messages ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Hostile:
    """One hostile message: its parts, the family that made it and what was done.

    ``must_reject``: the message can only be wrong (a valid decode would be garbage or an
    allocation the start never announced), so the decoder must raise BadMessageError.
    """

    family: str
    what: str
    parts: tuple[bytes, ...]
    must_reject: bool = False

    def __repr__(self) -> str:
        sizes = [len(p) for p in self.parts]
        return f"Hostile({self.family}: {self.what}; parts of {sizes} bytes)"


def lz4_zeros(n: int) -> bytes:
    """A raw LZ4 block that inflates to ``n`` zero bytes (n >= 25), made by hand (compressing
    256 MiB would cost 256 MiB): 1 literal, one match of offset 1 and the 5 literals LZ4
    requires at the end."""
    extra, last = divmod(n - 10 - 15, 255)
    return bytes([0x1F, 0, 1, 0]) + b"\xff" * extra + bytes([last, 0x50]) + bytes(5)


def hdf5_lz4_bomb(n: int) -> bytes:
    """HDF5-LZ4 framing of ``n`` zero bytes in one block."""
    record = lz4_zeros(n)
    return HEADER.pack(n, n) + struct.pack(">I", len(record)) + record


def bslz4_zeros(nbytes: int, itemsize: int = 4) -> bytes:
    """bslz4 framing of ``nbytes`` zero bytes (a multiple of 8192): one block, repeated."""
    record = compress_bslz4(np.zeros(8192 // itemsize, f"u{itemsize}"))[HEADER.size:]
    return HEADER.pack(nbytes, 8192) + record * (nbytes // 8192)


class _Delete:
    def __repr__(self) -> str:
        return "<removed>"


DELETE = _Delete()
INTO_TAG = "<tag>"


def paths_of(node: Any, prefix: tuple = (), depth: int = 7):
    """Every path to a value inside a decoded message (dict keys, list indices, tag values)."""
    if depth == 0:
        return
    if isinstance(node, CBORTag):
        yield prefix + (INTO_TAG,)
        yield from paths_of(node.value, prefix + (INTO_TAG,), depth - 1)
    elif isinstance(node, dict):
        for key, value in node.items():
            yield prefix + (key,)
            yield from paths_of(value, prefix + (key,), depth - 1)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield prefix + (index,)
            yield from paths_of(value, prefix + (index,), depth - 1)


def value_at(node: Any, path: tuple) -> Any:
    for key in path:
        node = node.value if key == INTO_TAG else node[key]
    return node


def replaced(node: Any, path: tuple, value: Any) -> Any:
    """A copy of ``node`` with the value at ``path`` replaced (DELETE: removed)."""
    if not path:
        return value
    key, rest = path[0], path[1:]
    if key == INTO_TAG:
        return CBORTag(node.tag, replaced(node.value, rest, value))
    copy = dict(node) if isinstance(node, dict) else list(node)
    if value is DELETE and not rest:
        del copy[key]
    else:
        copy[key] = replaced(node[key], rest, value)
    return copy


def thawed(node: Any) -> Any:
    """cbor2 returns frozendicts and tuples inside tags: plain dicts and lists to edit."""
    if isinstance(node, CBORTag):
        return CBORTag(node.tag, thawed(node.value))
    if isinstance(node, dict) or type(node).__name__ == "frozendict":
        return {k: thawed(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [thawed(v) for v in node]
    return node


def show_path(path: tuple) -> str:
    return ".".join(str(k) for k in path)


class Splice:
    """Raw bytes or text to put where a field's value goes (what the encoders cannot write)."""

    def __init__(self, label: str, cbor: bytes, text: str) -> None:
        self.label, self.cbor, self.text = label, cbor, text


_CBOR_HOLE = b"\xde\xad\x00HOLE\x00\xbe\xef"
_JSON_HOLE = "@@sxdm-fuzz-hole@@"
SPLICES = (Splice(f"{DEEP} nested arrays", b"\x81" * DEEP + b"\x00", "[" * DEEP + "]" * DEEP),
           Splice(f"{DEEP} nested maps", b"\xa1\x00" * DEEP + b"\x00",
                  '{"a":' * DEEP + "0" + "}" * DEEP),
           Splice("a 5000-digit int", cbor2.dumps(10**5000), "9" * 5000),
           Splice("1e999", b"\xfb\x7f\xf0\x00\x00\x00\x00\x00\x00", "1e999"),
           Splice("a byte string of 2**62 bytes", b"\x5b" + struct.pack(">Q", 2**62), '"'),
           Splice("an array of 2**40 items", b"\x9b" + struct.pack(">Q", 2**40), "["))

_COMMON = [("2**70", 2**70), ("-2**70", -2**70), ("2**64", 2**64), ("2**63", 2**63), ("-1", -1),
           ("0", 0), ("True", True), ("False", False), ("None", None), ("NaN", math.nan),
           ("inf", math.inf), ("-inf", -math.inf), ("1.5", 1.5), ("''", ""),
           ("'image'", "image"), ("[]", []), ("{}", {}), ("[2**70, 0]", [2**70, 0]),
           ("[0, 2**70]", [0, 2**70]), ("[-1, 516]", [-1, 516]), ("[1, 2, 3]", [1, 2, 3]),
           ("{'': None}", {"": None}), ("100 kB of text", "x" * 100_000)]
_CBOR_ONLY = [("b''", b""), ("16 bytes 0xff", b"\xff" * 16), ("tag 99999", CBORTag(99999, None)),
              ("tag 40 of dims [2**70, 0]", CBORTag(40, [[2**70, 0], CBORTag(70, b"")])),
              ("tag 56500 empty", CBORTag(56500, ["bslz4", 4, b""])),
              ("undefined", undefined), ("simple 32", CBORSimpleValue(32)),
              ("a set", {1, 2}), ("a datetime", datetime(2020, 1, 1, tzinfo=timezone.utc)),
              ("10**5000", 10**5000), ("rational 1/0", CBORTag(30, [1, 0]))]


def hostile_value(rng: random.Random, original: Any, cbor: bool) -> tuple[str, Any]:
    """A value to put where ``original`` was: (label, value, a Splice, or DELETE)."""
    pool = list(_COMMON) + (_CBOR_ONLY if cbor else [])
    if isinstance(original, int) and not isinstance(original, bool):
        pool += [("+1", original + 1), ("negated", -original - 1),
                 ("x 2**40", original * 2**40),
                 ("bit flipped", original ^ (1 << rng.randrange(64)))]
    elif isinstance(original, float):
        pool += [("negated", -original), ("x 1e300", original * 1e300)]
    elif isinstance(original, str):
        pool += [("with NUL", original + "\x00"), ("upper", original.upper())]
    elif isinstance(original, list) and original and all(
            isinstance(v, int) and not isinstance(v, bool) for v in original):
        pool += [("x 2**20 each", [v * 2**20 for v in original]),
                 ("reversed", original[::-1]), ("+ [1]", original + [1])]
    elif isinstance(original, bytes):
        pool += [("half", original[:len(original) // 2]), ("+ 8 zero bytes", original + bytes(8))]
    roll = rng.random()
    if roll < 0.1:
        return "removed", DELETE
    if roll < 0.2:
        splice = rng.choice(SPLICES)
        return splice.label, splice
    return rng.choice(pool)


def dump_v2(tree: Any, splice: Splice | None = None) -> bytes:
    data = cbor2.dumps(CBORTag(55799, tree))
    return data.replace(cbor2.dumps(_CBOR_HOLE), splice.cbor, 1) if splice else data


def dump_json(tree: Any, splice: Splice | None = None) -> bytes:
    text = json.dumps(tree, separators=(",", ":"))
    return (text.replace(json.dumps(_JSON_HOLE), splice.text, 1) if splice else text).encode()


def with_value(tree: Any, path: tuple, value: Any, cbor: bool) -> bytes:
    """``tree`` with ``value`` (which may be a Splice or DELETE) at ``path``, encoded."""
    if isinstance(value, Splice):
        tree = replaced(tree, path, _CBOR_HOLE if cbor else _JSON_HOLE)
        return dump_v2(tree, value) if cbor else dump_json(tree, value)
    tree = replaced(tree, path, value)
    return dump_v2(tree) if cbor else dump_json(tree)


def load_v2(data: bytes) -> dict:
    tree = cbor2.loads(data)
    return thawed(tree.value if isinstance(tree, CBORTag) else tree)


def json_parts(parts: tuple[bytes, ...]) -> list[int]:
    """Indices of the parts of a v1 message that hold a JSON object."""
    found = []
    for i, part in enumerate(parts):
        try:
            if isinstance(json.loads(part), dict):
                found.append(i)
        except ValueError:
            pass
    return found

