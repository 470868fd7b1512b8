"""Image payloads of the DECTRIS streams: bytes to arrays and back, framings checked first.

Stream v2 sends an image as an RFC 8746 multi-dimensional array, ``Tag40([[rows, cols],
TypedArrayTag(bytes)])``, where the byte string may be wrapped in the DECTRIS compression tag
``56500 [algorithm, modifier, bytes]``; stream v1 sends a blob described by an ``encoding``
string. Three framings reach us (``reference/dectris_stream.md`` §1.1-1.3):

* ``bslz4`` (v2 ``"bslz4"``, v1 ``bsNN-lz4<``): the bitshuffle HDF5-filter framing. A 12-byte
  header (big-endian u64 uncompressed bytes, u32 block bytes), then per full block a
  big-endian u32 compressed size and an LZ4 block of the bit-transposed elements; the partial
  last block (its elements rounded *down* to a multiple of 8) is one shorter block framed the
  same way; the last ``n % 8`` elements follow raw. (Checked against ``bitshuffle.compress_lz4``
  on sizes that are not multiples of the block size or of 8.)
* ``lz4`` (v2 only): the HDF5 LZ4-filter framing. The same 12-byte header, then per block
  (the last one shorter) a u32 BE compressed size and an LZ4 block; a block whose compressed
  size equals its uncompressed size is stored raw.
* ``lz4<`` (v1 only): one raw LZ4 block, no header at all.

``bitshuffle.decompress_lz4`` trusts the block size fields and is given no input length, so a
corrupted size field makes it read past the payload and crash the process. We walk the block
framing ourselves (a numba kernel: it runs for every frame) and hand the payload to bitshuffle
only when the walk ends exactly at the payload end. Every failure raises
:class:`~sxdm_stream.errors.BadMessageError` with a stable ``reason``. Decoded arrays are
writable, C-contiguous and in native byte order.

Nothing is allocated before it is checked (:func:`checked_nbytes`): the dims are sane, their
product times the itemsize (Python integers, which cannot overflow) stays under a byte cap
and matches what the series' start message declared (:class:`ImageSpec`); a compression
header must announce exactly those bytes, the element size must be the dtype's itemsize, and
a payload too small to inflate to them (LZ4 writes at most 255 bytes per byte read) is
refused before the decompressor sees it.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from typing import Any

# bitshuffle parallelises each frame with OpenMP. For frames of ~1 MB on a machine that also
# runs the receiver, the accumulator and often the detector simulator, its spinning threads
# stall (measured 1.5-4.6 ms per frame instead of 0.2 ms). One thread per frame, and several
# frames in flight, is the better use of the cores. Set before bitshuffle's OpenMP starts;
# a user who exports OMP_NUM_THREADS keeps their value.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import bitshuffle  # noqa: E402
import lz4.block
import numpy as np
from cbor2 import CBORTag
from numba import njit

from .errors import BadMessageError

#: big-endian u64 uncompressed bytes + u32 block bytes, in front of bslz4 and HDF5-lz4 payloads
HEADER = struct.Struct(">QI")
#: bslz4 block size of DECTRIS detectors (bitshuffle's own default, 8192 bytes)
BSLZ4_BLOCK_BYTES = 8192
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
#: bitshuffle transposes elements in groups of 8 (BSHUF_BLOCKED_MULT)
_BLOCKED_MULT = 8
#: the HDF5 LZ4 filter's default block (1 GiB): a frame is one block
_LZ4_HDF5_BLOCK_BYTES = 1 << 30
_INT32_MAX = 2**31 - 1
#: no detector frame comes near this; bigger sizes would overflow the int64 framing walk
_MAX_FRAME_BYTES = 1 << 40
_U32 = struct.Struct(">I")
#: default cap on one decoded image, bytes: seven times the largest DECTRIS frame (EIGER2 16M
#: at 32 bits, 4148 x 4362 x 4 B = 72 MB). A message declaring more is refused before any
#: buffer is made; ``Decoder(max_image_bytes=...)`` changes it.
MAX_IMAGE_BYTES = 512 << 20
#: pixels along one side: no detector comes near it, and a larger dim (even beside a zero one,
#: which keeps the byte count at 0) is nonsense that numpy cannot reshape to
MAX_IMAGE_SIDE = 1 << 24
#: LZ4 writes at most 255 bytes per byte it reads (each match-length byte adds 255; measured
#: 254.99 on 64 MiB of zeros): a payload that would have to inflate more is a corrupt size
#: field or a bomb, refused without inflating it
LZ4_MAX_RATIO = 255


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


def checked_nbytes(shape: tuple[int, int], dtype: np.dtype, max_bytes: int,
                   declared: ImageSpec | None = None) -> int:
    """Bytes of an image of ``shape`` (rows, cols) and ``dtype``, once it may be allocated.

    Raises
    ------
    BadMessageError
        ``too_large`` for a side over :data:`MAX_IMAGE_SIDE` or more than ``max_bytes``;
        ``wrong_shape`` / ``wrong_dtype`` when ``declared`` says otherwise.
    """
    rows, cols = shape
    if rows > MAX_IMAGE_SIDE or cols > MAX_IMAGE_SIDE:
        raise _bad(f"image of {rows} x {cols} pixels: a side over {MAX_IMAGE_SIDE}", "too_large")
    if declared is not None:
        if declared.shape is not None and (rows, cols) != tuple(declared.shape):
            raise _bad(f"image of {rows} x {cols} pixels where the start message declared "
                       f"{declared.shape[0]} x {declared.shape[1]}", "wrong_shape")
        if ((declared.itemsize is not None and dtype.itemsize != declared.itemsize)
                or (declared.kind is not None and dtype.kind != declared.kind)):
            raise _bad(f"image of {dtype.name} pixels where the start message declared "
                       f"{_described(declared)}", "wrong_dtype")
    nbytes = rows * cols * dtype.itemsize
    if nbytes > max_bytes:
        raise _bad(f"image of {rows} x {cols} {dtype.name} pixels is {nbytes} bytes, over the "
                   f"{max_bytes}-byte cap", "too_large")
    return nbytes


def _described(declared: ImageSpec) -> str:
    if declared.kind and declared.itemsize:
        return np.dtype(f"{declared.kind}{declared.itemsize}").name
    return f"{8 * declared.itemsize}-bit" if declared.itemsize else f"kind {declared.kind!r}"


def _inflatable(nbytes: int, payload_bytes: int, what: str) -> None:
    if nbytes > LZ4_MAX_RATIO * payload_bytes:
        raise _bad(f"{what} of {payload_bytes} bytes cannot hold {nbytes} bytes (LZ4 inflates "
                   f"at most {LZ4_MAX_RATIO} times)", "truncated_payload")


# ---- bitshuffle-LZ4 -----------------------------------------------------------------------------
@njit(nogil=True, cache=True)
def _walk_bslz4_blocks(buf, n_elements, itemsize, block_elements):
    """End of the bslz4 framing of ``buf`` (uint8, header included); -1 if a block size field
    is zero, above the LZ4 bound of its block (n + n/255 + 16) or past the payload end."""
    size = buf.shape[0]
    pos = 12
    n_full = n_elements // block_elements
    last = n_elements % block_elements
    last -= last % 8
    for block in range(n_full + (1 if last > 0 else 0)):
        block_bytes = (block_elements if block < n_full else last) * itemsize
        if pos + 4 > size:
            return -1
        compressed = ((np.int64(buf[pos]) << 24) | (np.int64(buf[pos + 1]) << 16)
                      | (np.int64(buf[pos + 2]) << 8) | np.int64(buf[pos + 3]))
        pos += 4
        if compressed == 0 or compressed > block_bytes + block_bytes // 255 + 16:
            return -1
        if compressed > size - pos:
            return -1
        pos += compressed
    return pos + (n_elements % 8) * itemsize


def _element_dtype(itemsize: Any) -> np.dtype:
    if itemsize not in (1, 2, 4, 8) or isinstance(itemsize, bool):
        raise _bad(f"bitshuffle element size {itemsize!r} is not 1, 2, 4 or 8", "wrong_dtype")
    return np.dtype(f"u{itemsize}")


def compress_bslz4(data: np.ndarray, block_bytes: int = BSLZ4_BLOCK_BYTES) -> bytes:
    """Bitshuffle-LZ4 compress ``data`` (C order, elements of its itemsize) with the 12-byte header.

    Parameters
    ----------
    data : numpy.ndarray
        Array of any shape, itemsize 1, 2, 4 or 8.
    block_bytes : int
        Bytes per block, a multiple of ``8 * data.itemsize``; 8192 like DECTRIS.

    Returns
    -------
    bytes
        The payload as DECTRIS sends it (bitshuffle-HDF5-filter framing).
    """
    data = np.ascontiguousarray(data)
    elem = _element_dtype(data.itemsize)
    if block_bytes <= 0 or block_bytes % (_BLOCKED_MULT * data.itemsize):
        raise ValueError(f"block_bytes {block_bytes} is not a multiple of {8 * data.itemsize}")
    header = HEADER.pack(data.nbytes, block_bytes)
    if data.size == 0:
        return header
    # compress_lz4 writes the blocks only; the header is the HDF5 filter's part
    blocks = bitshuffle.compress_lz4(data.reshape(-1).view(elem), block_bytes // data.itemsize)
    return header + blocks.tobytes()


def decompress_bslz4(payload, nbytes: int, itemsize: int, *,
                     allow_empty_header: bool = False) -> np.ndarray:
    """Decompress a bslz4 payload (header included) once its framing has been validated.

    Parameters
    ----------
    payload : bytes-like
        The framed payload.
    nbytes : int
        Uncompressed bytes the message's shape and dtype call for; the header must agree.
    itemsize : int
        Bitshuffle element size (1, 2, 4 or 8 bytes).
    allow_empty_header : bool
        Accept an all-zero header with bitshuffle's default block (stream v1: LiberTEM's
        emulator writes 12 zero bytes there).

    Returns
    -------
    numpy.ndarray
        1-D writable array of ``nbytes // itemsize`` unsigned integers of ``itemsize`` bytes.

    Raises
    ------
    BadMessageError
        ``size_mismatch`` when the header or element size disagrees with ``nbytes``;
        ``truncated_payload`` when the framing does not end exactly at the payload end or
        LZ4 fails; ``wrong_dtype`` for an impossible element size.
    """
    elem = _element_dtype(itemsize)
    if nbytes % itemsize:
        raise _bad(f"{nbytes} bytes are not whole {itemsize}-byte elements", "size_mismatch")
    if len(payload) < HEADER.size:
        raise _bad(f"bslz4 payload of {len(payload)} bytes lacks its 12-byte header",
                   "truncated_payload")
    header_nbytes, block_bytes = HEADER.unpack_from(payload)
    if allow_empty_header and header_nbytes == 0 and block_bytes == 0:
        # bitshuffle's default: 8192 bytes of elements, a multiple of 8 elements, at least 128
        header_nbytes, block_bytes = nbytes, max(8192 // itemsize // 8 * 8, 128) * itemsize
    if header_nbytes != nbytes or nbytes > _MAX_FRAME_BYTES:
        raise _bad(f"bslz4 header announces {header_nbytes} bytes, the message's shape and "
                   f"dtype {nbytes}", "size_mismatch")
    if nbytes == 0:
        return _ends_at(np.zeros(0, elem), HEADER.size, payload)
    _inflatable(nbytes, len(payload), "bslz4 payload")
    if not 0 < block_bytes <= _INT32_MAX or block_bytes % (_BLOCKED_MULT * itemsize):
        raise _bad(f"bslz4 block size {block_bytes} is not a positive multiple of "
                   f"{_BLOCKED_MULT * itemsize} bytes", "truncated_payload")
    buf = np.frombuffer(payload, np.uint8)
    n_elements, block_elements = nbytes // itemsize, block_bytes // itemsize
    end = _walk_bslz4_blocks(buf, n_elements, itemsize, block_elements)
    if end < 0:
        raise _bad("bslz4 payload has a corrupt block size field", "truncated_payload")
    _ends_at(None, end, payload)
    try:
        return bitshuffle.decompress_lz4(buf[HEADER.size:], (n_elements,), elem, block_elements)
    except (RuntimeError, ValueError) as exc:
        raise _bad(f"bslz4 decompression failed: {exc}", "truncated_payload") from exc


def _ends_at(result, end: int, payload):
    if end != len(payload):
        raise _bad(f"compressed payload framing covers {end} bytes but the payload has "
                   f"{len(payload)}", "truncated_payload")
    return result


# ---- LZ4 ----------------------------------------------------------------------------------------
def compress_lz4_hdf5(raw, block_bytes: int | None = None) -> bytes:
    """LZ4-compress ``raw`` (bytes-like) in the HDF5 LZ4-filter framing (v2 ``"lz4"``).

    Parameters
    ----------
    raw : bytes-like
        Uncompressed bytes.
    block_bytes : int, optional
        Block size; by default the filter's, 1 GiB capped to the payload (one block).

    Returns
    -------
    bytes
        Header, then per block a u32 BE size and the block (raw when LZ4 does not shrink it).
    """
    raw = memoryview(raw)
    raw = raw if raw.ndim == 1 and raw.itemsize == 1 else raw.cast("B")
    block = block_bytes or min(_LZ4_HDF5_BLOCK_BYTES, len(raw))
    chunks = [HEADER.pack(len(raw), block)]
    for start in range(0, len(raw), block or 1):
        plain = raw[start:start + block]
        packed = lz4.block.compress(plain, store_size=False)
        packed = packed if len(packed) < len(plain) else bytes(plain)
        chunks += [_U32.pack(len(packed)), packed]
    return b"".join(chunks)


def decompress_lz4_hdf5(payload, nbytes: int) -> np.ndarray:
    """Decompress an HDF5-LZ4-framed payload (v2 ``"lz4"``) to a writable uint8 array.

    Parameters
    ----------
    payload : bytes-like
        Header and blocks.
    nbytes : int
        Uncompressed bytes the message's shape and dtype call for; the header must agree.

    Returns
    -------
    numpy.ndarray
        1-D uint8 array of ``nbytes``.

    Raises
    ------
    BadMessageError
        ``size_mismatch`` when the header disagrees with ``nbytes``; ``truncated_payload``
        when a block size field is out of bounds, a block fails, or bytes are left over.
    """
    if len(payload) < HEADER.size:
        raise _bad(f"lz4 payload of {len(payload)} bytes lacks its 12-byte header",
                   "truncated_payload")
    total, block = HEADER.unpack_from(payload)
    if total != nbytes:
        raise _bad(f"lz4 header announces {total} bytes, the message's shape and dtype "
                   f"{nbytes}", "size_mismatch")
    if total and not 0 < block <= _INT32_MAX:
        raise _bad(f"lz4 block size {block} is out of range", "truncated_payload")
    view, blocks = memoryview(payload).cast("B"), []
    pos, done = HEADER.size, 0
    while done < total:
        size = min(block, total - done)
        compressed = _U32.unpack_from(view, pos)[0] if pos + 4 <= len(view) else 0
        pos += 4
        if not 0 < compressed <= min(len(view) - pos, size + size // 255 + 16):
            raise _bad("lz4 payload has a corrupt block size field", "truncated_payload")
        _inflatable(size, compressed, "lz4 block")
        # the HDF5 LZ4 filter stores a block raw when compressing it saved nothing
        chunk = view[pos:pos + compressed]
        blocks.append(chunk if compressed == size else _lz4_block(chunk, size))
        pos, done = pos + compressed, done + size
    _ends_at(None, pos, payload)
    # one decompressed block (the usual frame) is already a writable buffer: no copy
    one = len(blocks) == 1 and isinstance(blocks[0], bytearray)
    return np.frombuffer(blocks[0] if one else bytearray().join(blocks), np.uint8)


def _lz4_block(blob, nbytes: int) -> bytearray:
    try:
        out = lz4.block.decompress(blob, uncompressed_size=nbytes, return_bytearray=True)
    except (lz4.block.LZ4BlockError, ValueError) as exc:
        raise _bad(f"lz4 decompression failed: {exc}", "truncated_payload") from exc
    # a shorter block decompresses without error to fewer bytes
    if len(out) != nbytes:
        raise _bad(f"lz4 block holds {len(out)} bytes, expected {nbytes}", "truncated_payload")
    return out


# ---- stream v2: RFC 8746 arrays -----------------------------------------------------------------
def decode_array(item: Any, max_bytes: int = MAX_IMAGE_BYTES,
                 declared: ImageSpec | None = None) -> np.ndarray:
    """Decode a v2 multi-dimensional array (tag 40, or column-major 1040) to a 2D array.

    Parameters
    ----------
    item : cbor2.CBORTag
        ``Tag40([[rows, cols], TypedArrayTag(bytes or Tag56500([algorithm, modifier, bytes]))])``.
    max_bytes : int
        Largest array accepted, bytes (checked before anything is allocated).
    declared : ImageSpec, optional
        What the start message declared: the array must match it.

    Returns
    -------
    numpy.ndarray
        Shape (rows, cols), writable, C-contiguous, native byte order.
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
    if not (isinstance(dims, (list, tuple)) and all(_is_count(d) for d in dims)):
        raise _bad(f"array dims {dims!r:.60} are not non-negative integers", "malformed")
    if len(dims) != 2:
        raise _bad(f"array dims {list(dims)} are not [rows, cols]", "size_mismatch")
    flat = _decode_typed_array(typed, tuple(dims), max_bytes, declared)
    if item.tag == COLUMN_MAJOR_TAG:
        return np.ascontiguousarray(flat.reshape(dims[::-1]).T)
    return flat.reshape(dims)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _decode_typed_array(item: Any, dims: tuple[int, int], max_bytes: int,
                        declared: ImageSpec | None) -> np.ndarray:
    if not isinstance(item, CBORTag):
        raise _bad(f"expected a typed array tag, got {type(item).__name__}", "malformed")
    dtype = TYPED_ARRAY_DTYPES.get(item.tag)
    if dtype is None:
        raise _bad(f"CBOR tag {item.tag} is not a typed array we know", "unknown_tag")
    nbytes, payload = checked_nbytes(dims, dtype, max_bytes, declared), item.value
    if isinstance(payload, bytes):
        raw = _raw(payload, nbytes)
    elif isinstance(payload, CBORTag) and payload.tag == COMPRESSION_TAG:
        raw = _decompress_tag(payload.value, nbytes, dtype.itemsize)
    elif isinstance(payload, CBORTag):
        raise _bad(f"CBOR tag {payload.tag} where a byte string is expected", "unknown_tag")
    else:
        raise _bad(f"typed array holds a {type(payload).__name__}, not bytes", "malformed")
    return _native(raw.view(np.uint8).view(dtype))


def _decompress_tag(value: Any, nbytes: int, itemsize: int) -> np.ndarray:
    if not (isinstance(value, (list, tuple)) and len(value) == 3 and isinstance(value[0], str)
            and isinstance(value[1], int) and isinstance(value[2], bytes)):
        raise _bad("compression tag 56500 is not [algorithm, modifier, bytes]", "malformed")
    algorithm, modifier, payload = value
    if algorithm == "bslz4":
        # tag 56500 stands for a byte string: bitshuffle's element size is the modifier, which
        # DECTRIS sets to the typed array's itemsize. Any other one unshuffles the bits of the
        # wrong elements: garbage that decodes without error, so it is refused.
        if modifier != itemsize:
            raise _bad(f"bslz4 element size {modifier} on an array of {itemsize}-byte elements",
                       "wrong_dtype")
        return decompress_bslz4(payload, nbytes, modifier)
    if algorithm == "lz4":  # modifier unused, sent as 0
        return decompress_lz4_hdf5(payload, nbytes)
    raise _bad(f"unknown compression algorithm {algorithm!r}", "unsupported_encoding")


def _raw(payload, nbytes: int) -> np.ndarray:
    if len(payload) != nbytes:
        raise _bad(f"{len(payload)} bytes of data where shape and dtype call for {nbytes}",
                   "size_mismatch")
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
                   max_bytes: int = MAX_IMAGE_BYTES,
                   declared: ImageSpec | None = None) -> np.ndarray:
    """Decode a v1 image blob (``dimage_d-1.0`` ``encoding``) to an array of ``shape``.

    ``<`` raw; ``lz4<`` one raw LZ4 block; ``bsNN-lz4<`` bslz4 with NN-bit elements, NN the
    dtype's bits (``>``: big-endian data). Raises ``unsupported_encoding`` for any other
    encoding; ``max_bytes`` and ``declared`` as in :func:`decode_array`.
    """
    match = V1_ENCODING.fullmatch(encoding)
    if match is None:
        raise _bad(f"unknown stream v1 encoding {encoding!r}", "unsupported_encoding")
    bits, lz4_, order = match.groups()
    dtype = np.dtype(dtype).newbyteorder(order)
    nbytes = checked_nbytes(shape, dtype, max_bytes, declared)
    if bits and int(bits) != 8 * dtype.itemsize:
        raise _bad(f"encoding {encoding!r} on {dtype.name} pixels: bitshuffle elements must be "
                   "the pixels", "wrong_dtype")
    if bits:
        raw = decompress_bslz4(blob, nbytes, int(bits) // 8, allow_empty_header=True)
    elif lz4_:
        # a raw block, no size header (SIMPLON manual §5.4.3): the size comes from the shape,
        # and lz4 allocates all of it before reading a byte
        _inflatable(nbytes, len(blob), "lz4 block")
        raw = np.frombuffer(_lz4_block(blob, nbytes), np.uint8)
    else:
        raw = _raw(blob, nbytes)
    return _native(raw.view(np.uint8).view(dtype)).reshape(shape)


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
        return lz4.block.compress(raw, store_size=False)
    return raw.tobytes()
