"""bluesky documents as msgpack bytes, decoded without ever running code from the network.

The wire format is msgpack-numpy's, which bluesky users publish with
(``Publisher(serializer=partial(msgpack.dumps, default=msgpack_numpy.encode))``): an array is
the map ``{b"nd": True, b"type": dtype string, b"kind": b"", b"shape": [...], b"data": raw}``,
a numpy scalar ``{b"nd": False, b"type": ..., b"data": raw}``, a Python complex
``{b"complex": True, b"data": repr}``.

msgpack-numpy's own *decoder* is not safe for network data: for ``kind == b"O"`` it calls
``pickle.loads`` on the payload, so any publisher on the proxy can run code in the reader.
:func:`loads` uses plain msgpack with an ``object_hook`` that rebuilds only arrays of an
allow-listed dtype (bool, signed and unsigned integers, floats, complex, fixed-size byte and
unicode strings) from their raw bytes, after checking that shape x itemsize equals the number
of bytes sent and stays under :data:`MAX_ARRAY_BYTES`. Anything else (object or structured
arrays, unknown dtypes, wrong sizes, deep nesting, truncated bytes) raises
:class:`DocumentDecodeError` with a short ``reason`` the listener counts.

:func:`dumps` writes the same format and refuses, rather than pickles, what it cannot write.
"""

from __future__ import annotations

import math
import re
from typing import Any

import msgpack
import numpy as np

from sxdm_stream import BadMessageError

#: the largest array one document may carry (a 16M-pixel u32 image is 64 MiB)
MAX_ARRAY_BYTES = 256 * 2**20
#: the largest document; the proxy sends whole documents in one ZeroMQ frame
MAX_DOCUMENT_BYTES = 1024 * 2**20

#: byte order, then kind (b bool, i/u integers, f float, c complex, S bytes, U unicode), size
_SAFE_DTYPE = re.compile(r"[<>|=]?[biufcSU][0-9]{1,4}")


class DocumentDecodeError(BadMessageError):
    """A document from the 0MQ proxy cannot be decoded safely (``reason`` says why)."""


def dumps(doc: Any) -> bytes:
    """Serialise a document with msgpack; numpy arrays and scalars as msgpack-numpy records."""
    return msgpack.packb(doc, default=_encode, use_bin_type=True)


def loads(payload: bytes) -> Any:
    """Decode a document from :func:`dumps` or any msgpack-numpy publisher, safely.

    Raises
    ------
    DocumentDecodeError : malformed msgpack (``malformed_document``), an array that is not
        plain numeric, bool or string data (``unsafe_array``), or whose bytes do not match
        its shape (``bad_array``).
    """
    if len(payload) > MAX_DOCUMENT_BYTES:
        raise DocumentDecodeError(f"document of {len(payload)} bytes exceeds the "
                                  f"{MAX_DOCUMENT_BYTES}-byte limit", "malformed_document")
    try:
        return msgpack.unpackb(payload, object_hook=_decode, strict_map_key=False, raw=False)
    except DocumentDecodeError:
        raise
    except Exception as exc:  # msgpack raises ValueError, ExtraData, StackError, TypeError...
        raise DocumentDecodeError(f"not a msgpack document: {type(exc).__name__}: {exc}",
                                  "malformed_document") from None


def _encode(obj: Any) -> Any:
    if isinstance(obj, (np.ndarray, np.bool_, np.number)) and not _SAFE_DTYPE.fullmatch(obj.dtype.str):
        raise TypeError(f"cannot serialise an array of dtype {obj.dtype} (only numeric, bool "
                        "and string arrays travel; object arrays would need pickle)")
    if isinstance(obj, np.ndarray):
        return {b"nd": True, b"type": obj.dtype.str, b"kind": b"", b"shape": list(obj.shape),
                b"data": np.ascontiguousarray(obj).tobytes()}
    if isinstance(obj, (np.bool_, np.number)):
        return {b"nd": False, b"type": obj.dtype.str, b"data": obj.tobytes()}
    if isinstance(obj, complex):
        return {b"complex": True, b"data": repr(obj)}
    raise TypeError(f"cannot serialise {type(obj).__name__} in a document")


def _decode(obj: dict) -> Any:
    if b"nd" in obj:
        return _array(obj) if obj[b"nd"] is True else _scalar(obj)
    if b"complex" in obj:
        text = obj.get(b"data")
        try:
            return complex(text.decode() if isinstance(text, bytes) else text)
        except (TypeError, ValueError, AttributeError):
            raise DocumentDecodeError(f"bad complex number {text!r:.40}", "bad_array") from None
    return obj


def _array(obj: dict) -> np.ndarray:
    if obj.get(b"kind", b"") not in (b"", ""):
        raise DocumentDecodeError(f"array of kind {obj.get(b'kind')!r:.20} (object or structured "
                                  "dtype) refused: only numeric, bool and string arrays are "
                                  "decoded", "unsafe_array")
    dtype = _checked_dtype(obj.get(b"type"))
    shape = obj.get(b"shape")
    if not isinstance(shape, list) or len(shape) > 32 or not all(
            type(n) is int and n >= 0 for n in shape):
        raise DocumentDecodeError(f"array shape {shape!r:.60} is not a list of sizes", "bad_array")
    nbytes = math.prod(shape) * dtype.itemsize     # Python ints: no overflow
    data = obj.get(b"data")
    if nbytes > MAX_ARRAY_BYTES:
        raise DocumentDecodeError(f"array of {nbytes} bytes exceeds the {MAX_ARRAY_BYTES}-byte "
                                  "limit", "bad_array")
    if not isinstance(data, bytes) or len(data) != nbytes:
        got = len(data) if isinstance(data, bytes) else type(data).__name__
        raise DocumentDecodeError(f"array {shape} of {dtype} needs {nbytes} bytes, got {got}",
                                  "bad_array")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _scalar(obj: dict) -> Any:
    dtype = _checked_dtype(obj.get(b"type"))
    data = obj.get(b"data")
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise DocumentDecodeError(f"a {dtype} scalar needs {dtype.itemsize} bytes", "bad_array")
    return np.frombuffer(data, dtype=dtype)[0]


def _checked_dtype(text: Any) -> np.dtype:
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    if not isinstance(text, str) or not _SAFE_DTYPE.fullmatch(text):
        raise DocumentDecodeError(f"dtype {text!r:.40} is not a plain numeric, bool or string "
                                  "dtype", "unsafe_array")
    try:
        return np.dtype(text)
    except TypeError:                              # e.g. "i3": matches the pattern, no such type
        raise DocumentDecodeError(f"unknown dtype {text!r}", "unsafe_array") from None
