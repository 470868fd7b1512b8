"""The corpus of valid messages and the mutation families that break them (issue 11).

:class:`Corpus` holds valid v1 and v2 messages of one series, made by our own encoders
(:mod:`sxdm_stream.sources.dectris.codec`) from one simulated frame of a scenario;
:meth:`Corpus.mutate` breaks one of them by one *family* of mutation (:data:`FAMILIES`):

========== ===========================================================================
flip       1-8 bytes xor-ed, half of the time in the first 64 bytes (keys, headers)
truncate   one part cut short
parts      a part dropped, duplicated, swapped, emptied; junk or 300 extra parts
field      one CBOR/JSON field replaced by a hostile value (2**70, -1, bool where int,
           NaN, wrong type, 10**5000, deep nesting, unknown tags) or removed
array      the image array edited: dims ([2**70, 0], negative, inflated), bitshuffle
           element size, typed-array tag, algorithm, declared sizes of the payload
bomb       256 MiB of zeros in ~1 MB of lz4 or bslz4, as image or pixel mask
nesting    10**5 nested arrays or brackets in a field
junk       random bytes, empty parts, CBOR or JSON that is not a message
========== ===========================================================================

Every family is a function ``(corpus, base, parts, rng) -> Hostile``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import struct
from typing import Any, Callable

import cbor2
import numpy as np
from cbor2 import CBORTag

from sxdm_stream.messages import ImageFrame, SeriesEnd
from sxdm_stream.sources.dectris.codec import (encode_end_v1, encode_end_v2, encode_image_v1,
                                               encode_image_v2, encode_start_v1, encode_start_v2)
from sxdm_stream.sources.dectris.compression import HEADER, TYPED_ARRAY_DTYPES
from sxdm_stream.sources.dectris.sender import positions_user_data

from ..sender import frame_positions, series_start
from .values import (BOMB_BYTES, CHANNEL, DELETE, INTO_TAG, SPLICES, Hostile, bslz4_zeros,
                     dump_v2, hdf5_lz4_bomb, hostile_value, json_parts, load_v2, lz4_zeros,
                     paths_of, replaced, show_path, value_at, with_value)


# ---- the corpus and the families ----------------------------------------------------------------
class Corpus:
    """Valid v1 and v2 messages of one series of ``scenario`` (one bright simulated frame),
    and :meth:`mutate`, which breaks one of them."""

    def __init__(self, scenario, series_id: int = 999, unique: str = "hostile-run") -> None:
        scan = scenario.scan
        angle, point = scan.n_angles // 2, scan.n_points // 2 + scan.shape[1] // 2
        index = next(i for i in range(scan.n_frames) if scan.locate(i) == (angle, point))
        self.frame = scenario.simulator.frame(angle, point)
        self.shape = self.frame.shape
        start = series_start(scenario, series_id, unique, unique)
        light = dataclasses.replace(start, pixel_mask=None)
        image = ImageFrame(series_id, index, self.frame, unique,
                           positions_user_data(frame_positions(scenario, index)))
        end = SeriesEnd(series_id, unique)
        self.primers = {1: tuple(encode_start_v1(light, "basic")), 2: (encode_start_v2(light),)}
        self.bases: dict[str, tuple[bytes, ...]] = {
            "v2 end": (encode_end_v2(end),), "v1 end": tuple(encode_end_v1(end)),
            "v2 image bslz4": (encode_image_v2(image, "bslz4"),),
            "v2 image lz4": (encode_image_v2(image, "lz4"),),
            "v2 image raw": (encode_image_v2(image, None),),
            "v1 image bs32-lz4<": tuple(encode_image_v1(image, "bs32-lz4<")),
            "v1 image lz4<": tuple(encode_image_v1(image, "lz4<")),
            "v1 image <": tuple(encode_image_v1(image, "<")),
            "v2 start": (encode_start_v2(start),), "v2 start light": self.primers[2],
            "v1 start all": tuple(encode_start_v1(start, "all")),
            "v1 start basic": self.primers[1],
            "v1 start none": tuple(encode_start_v1(start, "none")),
        }

    @staticmethod
    def version(base: str) -> int:
        return int(base[1])

    def mutate(self, base: str, rng: random.Random, family: str | None = None) -> Hostile:
        """``base`` broken by ``family`` (default: one drawn by weight)."""
        families = list(FAMILIES)
        family = family or rng.choices(families, [FAMILIES[f][1] for f in families])[0]
        return FAMILIES[family][0](self, base, self.bases[base], rng)


def _some_part(parts: tuple, rng: random.Random) -> int:
    return rng.choice([i for i, part in enumerate(parts) if part])


def flip(corpus: Corpus, base: str, parts: tuple, rng: random.Random) -> Hostile:
    i = _some_part(parts, rng)
    part, head = bytearray(parts[i]), rng.random() < 0.5
    flips = []
    for _ in range(rng.randint(1, 8)):
        pos = rng.randrange(min(len(part), 64) if head else len(part))
        mask = rng.randrange(1, 256)
        part[pos] ^= mask
        flips.append(f"{pos}^{mask:#04x}")
    return Hostile("flip", f"{base}, part {i} bytes {', '.join(flips)}",
                   parts[:i] + (bytes(part),) + parts[i + 1:])


def truncate(corpus: Corpus, base: str, parts: tuple, rng: random.Random) -> Hostile:
    i = _some_part(parts, rng)
    n = len(parts[i])
    cut = rng.randrange(max(n - 64, 0), n) if rng.random() < 0.5 else rng.randrange(n)
    return Hostile("truncate", f"{base}, part {i} cut to {cut} of {n} bytes",
                   parts[:i] + (parts[i][:cut],) + parts[i + 1:])


def reshuffle_parts(corpus: Corpus, base: str, parts: tuple, rng: random.Random) -> Hostile:
    i, j = rng.randrange(len(parts)), rng.randrange(len(parts))
    ops: dict[str, Callable[[], tuple]] = {
        f"part {i} dropped": lambda: parts[:i] + parts[i + 1:] or (b"",),
        f"part {i} duplicated": lambda: parts[:i + 1] + parts[i:],
        f"parts {i} and {j} swapped": lambda: tuple(
            parts[j] if k == i else parts[i] if k == j else p for k, p in enumerate(parts)),
        f"part {i} emptied": lambda: parts[:i] + (b"",) + parts[i + 1:],
        "a junk part appended": lambda: parts + (rng.randbytes(rng.randrange(64)),),
        "300 empty parts appended": lambda: parts + (b"",) * 300,
        "only the first part": lambda: parts[:1],
    }
    what = rng.choice(sorted(ops))
    return Hostile("parts", f"{base}, {what}", ops[what]())


def replace_field(corpus: Corpus, base: str, parts: tuple, rng: random.Random,
                  family: str = "field", value: Any = None) -> Hostile:
    cbor = corpus.version(base) == 2
    i = 0 if cbor else rng.choice(json_parts(parts))
    tree = load_v2(parts[0]) if cbor else json.loads(parts[i])
    path = rng.choice(list(paths_of(tree)))
    label, new = value if value is not None else hostile_value(rng, value_at(tree, path), cbor)
    if new is DELETE and path[-1] == INTO_TAG:  # a tag cannot lose its content: empty it
        new = None
    data = with_value(tree, path, new, cbor)
    where = show_path(path) if cbor else f"part {i} {show_path(path)}"
    return Hostile(family, f"{base}, {where} := {label}", parts[:i] + (data,) + parts[i + 1:])


def nest(corpus: Corpus, base: str, parts: tuple, rng: random.Random) -> Hostile:
    splice = rng.choice(SPLICES[:2])
    if rng.random() < 0.2:                      # the whole message
        raw = (b"\xd9\xd9\xf7" + splice.cbor) if corpus.version(base) == 2 else splice.text.encode()
        return Hostile("nesting", f"{base} replaced by {splice.label}", (raw,) + parts[1:])
    return replace_field(corpus, base, parts, rng, "nesting", (splice.label, splice))


def junk(corpus: Corpus, base: str, parts: tuple, rng: random.Random) -> Hostile:
    options = {
        "random bytes": lambda: (rng.randbytes(rng.randrange(1, 256)),),
        "an empty frame": lambda: (b"",),
        "three random parts": lambda: tuple(rng.randbytes(rng.randrange(8)) for _ in range(3)),
        "CBOR array": lambda: (cbor2.dumps(CBORTag(55799, [1, 2])),),
        "CBOR 10**5000": lambda: (cbor2.dumps(10**5000),),
        "CBOR magic only": lambda: (b"\xd9\xd9\xf7",),
        "CBOR map without type": lambda: (cbor2.dumps({"series_id": 1}),),
        "CBOR image of nothing": lambda: (cbor2.dumps({"type": "image"}),),
        "CBOR start of nothing": lambda: (cbor2.dumps({"type": "start"}),),
        "2 bytes after the message": lambda: (parts[0] + b"\x00\x00",) + parts[1:],
        "JSON array first": lambda: (b"[]",) + parts[1:],
        "JSON not UTF-8": lambda: (b'{"htype":"dimage-1.0\xff\xfe"}',) + parts[1:],
        "JSON dimage alone": lambda: (b'{"htype":"dimage-1.0","series":1,"frame":0}',),
        "JSON header alone": lambda: (b'{"htype":"dheader-1.0","series":1,"header_detail":"all"}',),
        "JSON 5000-digit series": lambda: (b'{"htype":"dseries_end-1.0","series":' + b"9" * 5000
                                           + b"}",),
        "JSON NaN series": lambda: (b'{"htype":"dseries_end-1.0","series":NaN}',),
    }
    what = rng.choice(sorted(options))
    return Hostile("junk", f"{what} (from {base})", options[what]())


# ---- the image arrays ---------------------------------------------------------------------------
def edit_array(corpus: Corpus, base: str, parts: tuple, rng: random.Random) -> Hostile:
    if "image" not in base and base not in ("v2 start", "v1 start all"):
        return replace_field(corpus, base, parts, rng)
    return (edit_v2_array if corpus.version(base) == 2 else edit_v1_array)(corpus, base, parts, rng)


def _v2_array_path(base: str) -> tuple:
    return ("pixel_mask" if "start" in base else "data", CHANNEL)


def edit_v2_array(corpus: Corpus, base: str, parts: tuple, rng: random.Random) -> Hostile:
    tree = load_v2(parts[0])
    path = _v2_array_path(base)
    dims, typed = value_at(tree, path).value
    payload = typed.value
    rows, cols = dims
    itemsize = TYPED_ARRAY_DTYPES[typed.tag].itemsize
    nbytes = rows * cols * itemsize
    edits: list[tuple[str, tuple, Any, bool]] = [
        (f"dims := {d}", path + (INTO_TAG, 0), d, False) for d in
        ([2**70, 0], [0, 2**70], [2**64, 2**64], [-rows, cols], [rows, -cols], [rows + 1, cols],
         [rows // 2, 2 * cols], [16 * rows, 16 * cols], [rows], [rows, cols, 1], [True, cols],
         [rows, 1.5], [rows, None], "516x516", [])]
    edits += [(f"typed-array tag := {t}", path + (INTO_TAG, 1), CBORTag(t, payload), False)
              for t in (64, 65, 66, 69, 71, 72, 77, 79, 84, 85, 86, 0, 63, 87, 2**32)
              if t != typed.tag]
    edits += [(f"array tag := {t}", path, CBORTag(t, [dims, typed]), False) for t in (1040, 41, 0)]
    if isinstance(payload, CBORTag):            # tag 56500 [algorithm, modifier, bytes]
        algorithm, modifier, packed = payload.value
        declared, block = HEADER.unpack_from(packed)
        inner = path + (INTO_TAG, 1, INTO_TAG, INTO_TAG)
        if algorithm == "bslz4":
            edits += [(f"bslz4 element size := {m!r}", inner + (1,), m, True)
                      for m in (1, 2, 8, 0, 3, 16, -4, 2**70, True) if m != itemsize]
        edits += [(f"algorithm := {a!r}", inner + (0,), a, False)
                  for a in ("lz4", "bslz4", "zstd", "", "LZ4") if a != algorithm]
        edits += [(f"declared uncompressed bytes := {n}", inner + (2,),
                   HEADER.pack(n, block) + packed[HEADER.size:], True)
                  for n in (0, nbytes - 4, nbytes + 4, 2 * nbytes, 256 * nbytes, 2**40, 2**63,
                            2**64 - 1)]
        edits += [(f"block bytes := {b}", inner + (2,),
                   HEADER.pack(declared, b) + packed[HEADER.size:], False)
                  for b in (0, 1, 7, 8, 12, 2**31, 2**32 - 1) if b != block]
        edits += [("inflated dims and declared size, same payload", path + (INTO_TAG,),
                   [[16 * rows, 16 * cols], CBORTag(typed.tag, CBORTag(56500, [
                       algorithm, modifier, HEADER.pack(256 * nbytes, block)
                       + packed[HEADER.size:]]))], True)]
        edits += [(f"tag 56500 value := {v}", inner, val, False) for v, val in
                  (("[alg, mod]", [algorithm, modifier]),
                   ("+ [0]", [algorithm, modifier, packed, 0]),
                   ("text payload", [algorithm, modifier, "x"]), ("bytes", packed))]
    else:
        edits += [("raw bytes - 4", path + (INTO_TAG, 1, INTO_TAG), payload[:-4], True),
                  ("raw bytes + 4", path + (INTO_TAG, 1, INTO_TAG), payload + bytes(4), True)]
    what, at, value, must = rng.choice(edits)
    return Hostile("array", f"{base}, {show_path(path)}: {what}",
                   (dump_v2(replaced(tree, at, value)),), must)


def _v1_array_parts(base: str) -> tuple[int, int]:
    """(description, blob) part indices of the array of a v1 base (mask of "start all")."""
    return (4, 5) if "start" in base else (1, 2)


def edit_v1_array(corpus: Corpus, base: str, parts: tuple, rng: random.Random) -> Hostile:
    d, b = _v1_array_parts(base)
    description = json.loads(parts[d])
    width, height = description["shape"]
    encoding = description.get("encoding", "<")
    bits = np.dtype(description["type"]).itemsize * 8
    edits: list[tuple[str, dict, bool]] = [
        (f"shape := {s}", {"shape": s}, False) for s in
        ([2**70, 0], [0, 2**70], [-1, height], [width + 1, height], [2 * width, height // 2],
         [width], [True, height], [width, 1.5], "516x516", None)]
    edits += [(f"type := {t!r}", {"type": t}, False) for t in
              ("uint16", "float32", "int64", "uint8", "bool", "object", "complex128", "", 3)]
    edits += [(f"encoding := {e!r}", {"encoding": e}, False) for e in
              ("lz4>", "<", ">", "zstd", "bs32-lz4>", "bs32lz4<", "", None, 4) if e != encoding]
    edits += [(f"size := {s!r}", {"size": s}, isinstance(s, int))
              for s in (2**70, -1, True, len(parts[b]) + 1, "1") if "size" in description]
    if encoding.startswith("bs"):
        edits += [(f"encoding := {e!r} on {bits}-bit data", {"encoding": e}, True)
                  for e in ("bs8-lz4<", "bs16-lz4<", "bs32-lz4<", "bs64-lz4<")
                  if not e.startswith(f"bs{bits}-")]
    edits += [("shape x 16 each, same blob", {"shape": [16 * width, 16 * height]}, True)]
    what, change, must = rng.choice(edits)
    new = {**description, **change}
    return Hostile("array", f"{base}, part {d}: {what}",
                   parts[:d] + (json.dumps(new).encode(),) + parts[d + 1:], must)


def bomb(corpus: Corpus, base: str, parts: tuple, rng: random.Random) -> Hostile:
    """256 MiB of zeros in ~1 MB: as an image (v1/v2, lz4/bslz4) or as the start's pixel mask,
    declared as such (8192 x 8192 u32, unlike the start's 516 x 516) or inflating past its
    declared size."""
    side = int(math.isqrt(BOMB_BYTES // 4))
    version = corpus.version(base)
    kind = rng.choice(["image lz4", "image bslz4", "mask lz4", "beyond declared"])
    if version == 2:
        if kind == "beyond declared":
            n = corpus.frame.nbytes
            record = lz4_zeros(BOMB_BYTES)     # in a block of n: inflates past it
            payload = CBORTag(56500, ["lz4", 0, HEADER.pack(n, n) + struct.pack(">I", len(record))
                                      + record])
            array = CBORTag(40, [list(corpus.shape), CBORTag(70, payload)])
        else:
            packed = (["bslz4", 4, bslz4_zeros(BOMB_BYTES)] if kind == "image bslz4"
                      else ["lz4", 0, hdf5_lz4_bomb(BOMB_BYTES)])
            array = CBORTag(40, [[side, side], CBORTag(70, CBORTag(56500, packed))])
        if kind == "mask lz4":
            tree, path = load_v2(corpus.bases["v2 start"][0]), ("pixel_mask", CHANNEL)
        else:
            tree, path = load_v2(corpus.bases["v2 image lz4"][0]), ("data", CHANNEL)
        return Hostile("bomb", f"v2 {kind} of {BOMB_BYTES >> 20} MiB",
                       (dump_v2(replaced(tree, path, array)),), True)
    name = "v1 start all" if kind == "mask lz4" else "v1 image lz4<"
    d, b = _v1_array_parts(name)
    source = corpus.bases[name]
    description = json.loads(source[d])
    if kind == "image bslz4":
        blob = bslz4_zeros(BOMB_BYTES)
        description.update(shape=[side, side], encoding="bs32-lz4<")
    else:
        blob = lz4_zeros(BOMB_BYTES)
        description.update(encoding="lz4<")
        if kind != "beyond declared":
            description["shape"] = [side, side]
    if "size" in description:
        description["size"] = len(blob)
    return Hostile("bomb", f"v1 {kind} of {BOMB_BYTES >> 20} MiB",
                   source[:d] + (json.dumps(description).encode(), blob) + source[b + 1:], True)


#: family -> (function, weight in a mixed run)
FAMILIES: dict[str, tuple[Callable[..., Hostile], float]] = {
    "flip": (flip, 24), "truncate": (truncate, 12), "parts": (reshuffle_parts, 8),
    "field": (replace_field, 26), "array": (edit_array, 18), "nesting": (nest, 4),
    "bomb": (bomb, 1), "junk": (junk, 7)}

