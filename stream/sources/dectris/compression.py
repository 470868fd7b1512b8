"""Image payloads of the DECTRIS streams: bytes to arrays and back, framings checked first.

Stream v2 sends an image as an RFC 8746 multi-dimensional array, ``Tag40([[rows, cols],
TypedArrayTag(bytes)])``, where the byte string may be wrapped in the DECTRIS compression tag
``56500 [algorithm, modifier, bytes]``; stream v1 sends a blob described by an ``encoding``
string. This module reads and writes those wrappers; the LZ4 framings inside them (``bslz4``,
``lz4``, ``lz4<``) are walked and inflated in :mod:`sxdm_stream.sources.dectris.lz4_framing`, whose public
names are re-exported here. Every failure raises :class:`~sxdm_stream.errors.BadMessageError`
with a stable ``reason``. Decoded arrays are writable, C-contiguous and in native byte order.

Nothing is allocated before it is checked (:func:`checked_nbytes`): the dims are sane, their
product times the itemsize (Python integers, which cannot overflow) stays under a byte cap
(the largest DECTRIS frame when no start message declared the size) and matches what the
series' start message declared (:class:`ImageSpec`); a compression
header must announce exactly those bytes, the element size must be the dtype's itemsize, and
a payload too small to inflate to them (LZ4 writes at most 255 bytes per byte read) is
refused before the decompressor sees it.

Decoding an image is two steps: reading its wrappers and checking its size, cheap and
depending on the series (the receiver thread does it, in arrival order), then decompressing
its pixels, which depends on nothing else and releases the GIL. ``defer=True`` stops after
the first and returns :class:`PendingPixels`, whose :meth:`~PendingPixels.decompress` does the
second in any thread (the receiver's decode pool). Without it both run at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from cbor2 import CBORTag

from sxdm_stream.errors import BadMessageError, format_untrusted
from sxdm_stream.messages import is_u64
from sxdm_stream.sources.dectris.lz4_framing import (BSLZ4_BACKEND, BSLZ4_BACKENDS,
                                                     BSLZ4_BLOCK_BYTES, HEADER, LZ4_MAX_RATIO,
                                                     compress_bslz4, compress_lz4_hdf5,
                                                     compress_lz4_raw, decompress_bslz4,
                                                     decompress_lz4_hdf5, decompress_lz4_raw)

# the LZ4 framings are re-exported: they were defined here, and importers keep working
__all__ = ["BSLZ4_BACKEND", "BSLZ4_BACKENDS", "BSLZ4_BLOCK_BYTES", "COLUMN_MAJOR_TAG",
           "COMPRESSION_TAG", "HEADER", "ImageSpec", "LZ4_MAX_RATIO", "MAX_IMAGE_BYTES", "MAX_IMAGE_SIDE", "MAX_UNDECLARED_IMAGE_BYTES",
           "PendingPixels", "ROW_MAJOR_TAG", "TYPED_ARRAY_DTYPES", "V1_ENCODING", "bslz4_array_tag",
           "checked_nbytes", "compress_bslz4", "compress_lz4_hdf5", "decode_array",
           "decode_v1_blob", "decompress_bslz4", "decompress_lz4_hdf5", "encode_array",
           "encode_v1_blob"]

COMPRESSION_TAG = 56500
ROW_MAJOR_TAG, COLUMN_MAJOR_TAG = 40, 1040
#: RFC 8746 typed-array tags (68 is u8 "clamped": the same bytes)
TYPED_ARRAY_DTYPES = {tag: np.dtype(code) for tag, code in {
    64: "u1", 65: ">u2", 66: ">u4", 67: ">u8", 68: "u1", 69: "<u2", 70: "<u4", 71: "<u8",
    72: "i1", 73: ">i2", 74: ">i4", 75: ">i8", 77: "<i2", 78: "<i4", 79: "<i8",
    80: ">f2", 81: ">f4", 82: ">f8", 84: "<f2", 85: "<f4", 86: "<f8"}.items()}
#: the little-endian tag we send for each dtype (what DECTRIS sends: 64, 69, 70, 85)
_TAG_OF_DTYPE = {"u1": 64, "u2": 69, "u4": 70, "u8": 71, "i1": 72, "i2": 77, "i4": 78,
                 "i8": 79, "f2": 84, "f4": 85, "f8": 86}
#: v1 encoding grammar "[bs<BIT>[-]lz4][<|>]" (bitshuffle only ever comes with lz4)
V1_ENCODING = re.compile(r"(?:(?:bs(8|16|32|64)-?)?(lz4))?([<>])")
#: default cap on one decoded image, bytes: seven times the largest DECTRIS frame (EIGER2 16M
#: at 32 bits, 4148 x 4362 x 4 B = 72 MB). A message declaring more is refused before any
#: buffer is made; ``Decoder(max_image_bytes=...)`` changes it.
MAX_IMAGE_BYTES = 512 << 20
#: cap on an image whose size no start message declared (none seen yet, or a v1 header
#: without its detector configuration): the largest DECTRIS frame, EIGER2 16M at 32 bits.
#: Without it such a series would admit, under the cap above, a 256 MiB lz4 bomb per message.
MAX_UNDECLARED_IMAGE_BYTES = 4148 * 4362 * 4
#: pixels along one side: no detector comes near it, and a larger dim (even beside a zero one,
#: which keeps the byte count at 0) is nonsense that numpy cannot reshape to
MAX_IMAGE_SIDE = 1 << 24


def _bad(message: str, reason: str) -> BadMessageError:
    return BadMessageError(message, reason)


@dataclass(frozen=True)
class ImageSpec:
    """What a series' start message declared of its images; None where it did not say.

    ``shape`` is (rows, cols); ``itemsize`` in bytes; ``kind`` the numpy kind letter ("u",
    "f"...), known only where the start names the dtype (v2 ``image_dtype``: v1 gives a bit
    depth, which also announces float32 series as 32-bit).
    """

    shape: tuple[int, int] | None = None
    itemsize: int | None = None
    kind: str | None = None


@dataclass(frozen=True, eq=False)
class PendingPixels:
    """An image whose wrappers were read and size checked, its pixels not yet decompressed.

    ``inflate()`` returns the image's bytes as a 1-D writable array (any unsigned dtype) or
    raises :class:`~sxdm_stream.errors.BadMessageError`; :meth:`decompress` makes the
    image of it. ``nbytes`` is the decoded image's size, known before decompressing.
    """

    inflate: Callable[[], np.ndarray]
    dtype: np.dtype
    shape: tuple[int, int]
    column_major: bool = False

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.shape[1] * self.dtype.itemsize

    def decompress(self) -> np.ndarray:
        """The image: shape (rows, cols), writable, C-contiguous, native byte order; raises
        BadMessageError (with its ``reason``) for a payload that does not decompress."""
        flat = _native(self.inflate().view(np.uint8).view(self.dtype))
        if self.column_major:
            return np.ascontiguousarray(flat.reshape(self.shape[::-1]).T)
        return flat.reshape(self.shape)


def checked_nbytes(shape: tuple[int, int], dtype: np.dtype, max_bytes: int,
                   declared: ImageSpec | None = None) -> int:
    """Bytes of an image of ``shape`` (rows, cols) and ``dtype``, once it may be allocated.

    Raises
    ------
    BadMessageError
        ``malformed`` for sides that are not non-negative integers, ``too_large`` for a
        side over :data:`MAX_IMAGE_SIDE` or more than ``max_bytes`` (than
        :data:`MAX_UNDECLARED_IMAGE_BYTES` too when ``declared`` gives no shape);
        ``wrong_shape`` / ``wrong_dtype`` when ``declared`` says otherwise.
    """
    rows, cols = shape
    if not (_is_count(rows) and _is_count(cols)):
        raise _bad(f"image shape {format_untrusted(shape)} is not two non-negative integers",
                   "malformed")
    if rows > MAX_IMAGE_SIDE or cols > MAX_IMAGE_SIDE:    # and so no integer too long to show
        raise _bad(f"image of {format_untrusted(rows)} x {format_untrusted(cols)} pixels: a "
                   f"side over {MAX_IMAGE_SIDE}", "too_large")
    if declared is not None:
        if declared.shape is not None and (rows, cols) != tuple(declared.shape):
            raise _bad(f"image of {rows} x {cols} pixels where the start message declared "
                       f"{declared.shape[0]} x {declared.shape[1]}", "wrong_shape")
        if ((declared.itemsize is not None and dtype.itemsize != declared.itemsize)
                or (declared.kind is not None and dtype.kind != declared.kind)):
            raise _bad(f"image of {dtype.name} pixels where the start message declared "
                       f"{_described(declared)}", "wrong_dtype")
    nbytes = rows * cols * dtype.itemsize
    undeclared = declared is None or declared.shape is None
    cap = min(max_bytes, MAX_UNDECLARED_IMAGE_BYTES) if undeclared else max_bytes
    if nbytes > cap:
        raise _bad(f"image of {rows} x {cols} {dtype.name} pixels is {nbytes} bytes, over the "
                   f"{cap}-byte cap" + (" on an image whose size no start message declared"
                                        if cap < max_bytes else ""), "too_large")
    return nbytes


def _described(declared: ImageSpec) -> str:
    if declared.kind and declared.itemsize:
        return np.dtype(f"{declared.kind}{declared.itemsize}").name
    return f"{8 * declared.itemsize}-bit" if declared.itemsize else f"kind {declared.kind!r}"


# ---- stream v2: RFC 8746 arrays -----------------------------------------------------------------
def decode_array(item: Any, max_bytes: int = MAX_IMAGE_BYTES,
                 declared: ImageSpec | None = None,
                 defer: bool = False) -> np.ndarray | PendingPixels:
    """Decode a v2 multi-dimensional array (tag 40, or column-major 1040) to a 2D array.

    Parameters
    ----------
    item : cbor2.CBORTag
        ``Tag40([[rows, cols], TypedArrayTag(bytes or Tag56500([algorithm, modifier, bytes]))])``.
    max_bytes : int
        Largest array accepted, bytes (checked before anything is allocated).
    declared : ImageSpec, optional
        What the start message declared: the array must match it.
    defer : bool
        Check everything but decompress nothing: return :class:`PendingPixels`.

    Returns
    -------
    numpy.ndarray or PendingPixels
        Shape (rows, cols), writable, C-contiguous, native byte order (once decompressed).
    """
    if not isinstance(item, CBORTag):
        raise _bad(f"expected a tag 40 multi-dimensional array, got {type(item).__name__}",
                   "malformed")
    if item.tag not in (ROW_MAJOR_TAG, COLUMN_MAJOR_TAG):
        raise _bad(f"CBOR tag {item.tag} where a multi-dimensional array is expected",
                   "unknown_tag")
    if not (isinstance(item.value, (list, tuple)) and len(item.value) == 2):
        raise _bad("multi-dimensional array is not [dims, typed array]", "malformed")
    dims, typed = item.value
    if not (isinstance(dims, (list, tuple)) and all(map(_is_count, dims))):
        raise _bad(f"array dims {format_untrusted(dims)} are not non-negative integers",
                   "malformed")
    if len(dims) != 2:
        raise _bad(f"array dims {format_untrusted(dims)} are not [rows, cols]", "size_mismatch")
    dims = (dims[0], dims[1])
    inflate, dtype = _typed_array_inflater(typed, dims, max_bytes, declared)
    pending = PendingPixels(inflate, dtype, dims, item.tag == COLUMN_MAJOR_TAG)
    return pending if defer else pending.decompress()


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _typed_array_inflater(item: Any, dims: tuple[int, int], max_bytes: int,
                          declared: ImageSpec | None) -> tuple[Callable[[], np.ndarray], np.dtype]:
    """What decompresses the typed array ``item`` to its bytes, and its dtype: the tags and
    sizes are checked here, the payload's own framing when it is decompressed."""
    if not isinstance(item, CBORTag):
        raise _bad(f"expected a typed array tag, got {type(item).__name__}", "malformed")
    dtype = TYPED_ARRAY_DTYPES.get(item.tag)
    if dtype is None:
        raise _bad(f"CBOR tag {item.tag} is not a typed array we know", "unknown_tag")
    nbytes, payload = checked_nbytes(dims, dtype, max_bytes, declared), item.value
    if isinstance(payload, bytes):
        _check_raw(payload, nbytes)
        return (lambda: _raw(payload, nbytes)), dtype
    if isinstance(payload, CBORTag) and payload.tag == COMPRESSION_TAG:
        return _tag_inflater(payload.value, nbytes, dtype.itemsize), dtype
    if isinstance(payload, CBORTag):
        raise _bad(f"CBOR tag {payload.tag} where a byte string is expected", "unknown_tag")
    raise _bad(f"typed array holds a {type(payload).__name__}, not bytes", "malformed")


def _tag_inflater(value: Any, nbytes: int, itemsize: int) -> Callable[[], np.ndarray]:
    if not (isinstance(value, (list, tuple)) and len(value) == 3 and isinstance(value[0], str)
            and is_u64(value[1]) and isinstance(value[2], bytes)):
        raise _bad("compression tag 56500 is not [algorithm, unsigned 64-bit modifier, bytes]",
                   "malformed")
    algorithm, modifier, payload = value
    if algorithm == "bslz4":
        # tag 56500 stands for a byte string: bitshuffle's element size is the modifier, which
        # DECTRIS sets to the typed array's itemsize. Any other one unshuffles the bits of the
        # wrong elements: garbage that decodes without error, so it is refused.
        if modifier != itemsize:
            raise _bad(f"bslz4 element size {modifier} on an array of {itemsize}-byte elements",
                       "wrong_dtype")
        return lambda: decompress_bslz4(payload, nbytes, modifier)
    if algorithm == "lz4":  # modifier unused, sent as 0
        return lambda: decompress_lz4_hdf5(payload, nbytes)
    raise _bad(f"unknown compression algorithm {format_untrusted(algorithm)}",
               "unsupported_encoding")


def _check_raw(payload, nbytes: int) -> None:
    if len(payload) != nbytes:
        raise _bad(f"{len(payload)} bytes of data where shape and dtype call for {nbytes}",
                   "size_mismatch")


def _raw(payload, nbytes: int) -> np.ndarray:
    _check_raw(payload, nbytes)
    return np.frombuffer(payload, np.uint8).copy()  # writable, like the decompressed arrays


def _native(array: np.ndarray) -> np.ndarray:
    return array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("="))


def bslz4_array_tag(shape, dtype, payload: bytes) -> CBORTag:
    """The DECTRIS image tag of bytes already bitshuffle-LZ4 compressed with the 12-byte
    header (as the HDF5 bitshuffle filter stores a chunk: replay sends such chunks as read)."""
    dtype = np.dtype(dtype)
    tag = _TAG_OF_DTYPE.get(dtype.str[1:])
    if len(shape) != 2 or tag is None:
        raise ValueError(f"cannot send a {len(shape)}-D {dtype} array as a DECTRIS image")
    return CBORTag(ROW_MAJOR_TAG, [list(shape), CBORTag(tag, CBORTag(
        COMPRESSION_TAG, ["bslz4", dtype.itemsize, bytes(payload)]))])


def encode_array(data: np.ndarray, compression: str | None = "bslz4") -> CBORTag:
    """Encode a 2D array as DECTRIS does: ``Tag40([[rows, cols], typed array])``.

    Parameters
    ----------
    data : numpy.ndarray
        2D array of an integer or float dtype of the RFC 8746 table; sent little-endian.
    compression : {"bslz4", "lz4", None}
        Wrap the byte string in tag 56500 with this algorithm, or send it plain.

    Returns
    -------
    cbor2.CBORTag
    """
    data = np.asarray(data)
    tag = _TAG_OF_DTYPE.get(data.dtype.str[1:])
    if data.ndim != 2 or tag is None:
        raise ValueError(f"cannot send a {data.ndim}-D {data.dtype} array as a DECTRIS image")
    little = np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("<"))
    if compression == "bslz4":
        return bslz4_array_tag(data.shape, data.dtype, compress_bslz4(little))
    elif compression == "lz4":
        payload = CBORTag(COMPRESSION_TAG, ["lz4", 0, compress_lz4_hdf5(
            little.reshape(-1).view(np.uint8))])
    elif compression is None:
        payload = little.tobytes()
    else:
        raise ValueError(f"unknown compression {compression!r}: 'bslz4', 'lz4' or None")
    return CBORTag(ROW_MAJOR_TAG, [list(data.shape), CBORTag(tag, payload)])


# ---- stream v1: encoded blobs -------------------------------------------------------------------
def decode_v1_blob(blob, encoding: str, dtype: np.dtype, shape: tuple[int, int],
                   max_bytes: int = MAX_IMAGE_BYTES, declared: ImageSpec | None = None,
                   defer: bool = False) -> np.ndarray | PendingPixels:
    """Decode a v1 image blob (``dimage_d-1.0`` ``encoding``) to an array of ``shape``.

    ``<`` raw; ``lz4<`` one raw LZ4 block; ``bsNN-lz4<`` bslz4 with NN-bit elements, NN the
    dtype's bits (``>``: big-endian data). Raises ``unsupported_encoding`` for any other
    encoding; ``max_bytes``, ``declared`` and ``defer`` as in :func:`decode_array`.
    """
    match = V1_ENCODING.fullmatch(encoding)
    if match is None:
        raise _bad(f"unknown stream v1 encoding {format_untrusted(encoding)}",
                   "unsupported_encoding")
    bits, lz4_, order = match.groups()
    dtype = np.dtype(dtype).newbyteorder(order)
    nbytes = checked_nbytes(shape, dtype, max_bytes, declared)
    if bits and int(bits) != 8 * dtype.itemsize:
        raise _bad(f"encoding {format_untrusted(encoding)} on {dtype.name} pixels: bitshuffle "
                   "elements must be the pixels", "wrong_dtype")
    if bits:
        def inflate():
            return decompress_bslz4(blob, nbytes, int(bits) // 8, allow_empty_header=True)
    elif lz4_:
        def inflate():
            return decompress_lz4_raw(blob, nbytes)
    else:
        _check_raw(blob, nbytes)

        def inflate():
            return _raw(blob, nbytes)
    pending = PendingPixels(inflate, dtype, (shape[0], shape[1]))
    return pending if defer else pending.decompress()


def encode_v1_blob(data: np.ndarray, encoding: str) -> bytes:
    """Encode an array as a v1 image blob in ``encoding`` (``<``, ``lz4<``, ``bsNN-lz4<``)."""
    match = V1_ENCODING.fullmatch(encoding)
    if match is None:
        raise ValueError(f"unknown stream v1 encoding {encoding!r}")
    bits, lz4_, order = match.groups()
    if bits and int(bits) != 8 * data.dtype.itemsize:
        raise ValueError(f"encoding {encoding!r} on {data.dtype} data: DECTRIS shuffles "
                         f"elements of the pixel size, bs{8 * data.dtype.itemsize}")
    raw = np.ascontiguousarray(data, dtype=data.dtype.newbyteorder(order)).reshape(-1)
    if bits:
        return compress_bslz4(raw.view(np.uint8).view(f"u{int(bits) // 8}"))
    if lz4_:
        return compress_lz4_raw(raw)
    return raw.tobytes()
