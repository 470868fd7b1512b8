"""The LZ4 framings of DECTRIS image payloads: bytes to bytes, each framing walked first.

Three framings reach us (``docs/reference/dectris_stream.md`` §1.1-1.3):

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
framing ourselves (a numba kernel: it runs for every frame) and hand the payload to the
decompressor only when the walk ends exactly at the payload end. That decompressor
(:data:`BSLZ4_BACKEND`) is DECTRIS' own ``dectris-compression`` when it is installed (one
thread: ~1.3x bitshuffle's frames/s on 516 x 516 u32 frames, copy to a writable array
included; ``benchmarks/bench_decode.py``), else bitshuffle; both release the GIL and give
the same bytes. A header must announce exactly the bytes
the caller's shape and dtype call for, and a payload too small to inflate to them (LZ4 writes
at most 255 bytes per byte read) is refused before the decompressor sees it. Every failure
raises :class:`~sxdm_stream.errors.BadMessageError` with a stable ``reason``.

The typed-array tags and v1 blob encodings that carry these payloads, and the checks of shape
and dtype against the start message, are in :mod:`sxdm_stream.sources.dectris.compression`.
"""

from __future__ import annotations

import functools
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import bitshuffle
import lz4.block
import numpy as np
from numba import njit
from threadpoolctl import ThreadpoolController

from sxdm_stream.errors import BadMessageError

try:                                    # DECTRIS' decompressor: the faster one, when installed
    from dectris import compression as _dectris_compression
except ImportError:                     # pragma: no cover - a dependency, but optional here
    _dectris_compression = None

#: big-endian u64 uncompressed bytes + u32 block bytes, in front of bslz4 and HDF5-lz4 payloads
HEADER = struct.Struct(">QI")
#: bslz4 block size of DECTRIS detectors (bitshuffle's own default, 8192 bytes)
BSLZ4_BLOCK_BYTES = 8192
#: bitshuffle transposes elements in groups of 8 (BSHUF_BLOCKED_MULT)
_BLOCKED_MULT = 8
#: the HDF5 LZ4 filter's default block (1 GiB): a frame is one block
_LZ4_HDF5_BLOCK_BYTES = 1 << 30
_INT32_MAX = 2**31 - 1
#: no detector frame comes near this; bigger sizes would overflow the int64 framing walk
_MAX_FRAME_BYTES = 1 << 40
_U32 = struct.Struct(">I")
#: LZ4 writes at most 255 bytes per byte it reads (each match-length byte adds 255; measured
#: 254.99 on 64 MiB of zeros): a payload that would have to inflate more is a corrupt size
#: field or a bomb, refused without inflating it
LZ4_MAX_RATIO = 255
#: the bslz4 decompressors this process has, fastest first, and the one used by default
BSLZ4_BACKENDS = ("dectris", "bitshuffle") if _dectris_compression else ("bitshuffle",)
BSLZ4_BACKEND = BSLZ4_BACKENDS[0]


def _bad(message: str, reason: str) -> BadMessageError:
    return BadMessageError(message, reason)


def check_inflatable(nbytes: int, payload_bytes: int, what: str) -> None:
    """Refuse (``truncated_payload``) ``payload_bytes`` that LZ4 cannot inflate to ``nbytes``."""
    if nbytes > LZ4_MAX_RATIO * payload_bytes:
        raise _bad(f"{what} of {payload_bytes} bytes cannot hold {nbytes} bytes (LZ4 inflates "
                   f"at most {LZ4_MAX_RATIO} times)", "truncated_payload")


# ---- bitshuffle's threads -----------------------------------------------------------------------
# bitshuffle parallelises each frame with OpenMP. For frames of ~1 MB on a machine that also
# runs the receiver, the accumulator and often the detector simulator, its spinning threads
# stall (measured 1.5-4.6 ms per frame instead of 0.2 ms). One thread per frame, and several
# frames in flight, is the better use of the cores. OpenMP's thread count belongs to the
# calling thread, so it is set to 1 around each bitshuffle call and restored after it: the
# environment and the rest of the process are left alone. A user who exports
# OMP_NUM_THREADS keeps their value.
@functools.cache
def _openmp_runtimes() -> tuple:
    """The OpenMP runtimes to hold to one thread (bitshuffle's libgomp is loaded by the time
    bitshuffle is first called); none when the user exported OMP_NUM_THREADS."""
    if "OMP_NUM_THREADS" in os.environ:
        return ()
    return tuple(ThreadpoolController().select(user_api="openmp").lib_controllers)


@contextmanager
def _one_openmp_thread() -> Iterator[None]:
    """Run the block on one OpenMP thread of the calling thread, then restore its count."""
    runtimes = _openmp_runtimes()
    before = [runtime.get_num_threads() for runtime in runtimes]
    for runtime in runtimes:
        runtime.set_num_threads(1)
    try:
        yield
    finally:
        for runtime, threads in zip(runtimes, before):
            runtime.set_num_threads(threads)


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
    with _one_openmp_thread():
        blocks = bitshuffle.compress_lz4(data.reshape(-1).view(elem),
                                         block_bytes // data.itemsize)
    return header + blocks.tobytes()


def decompress_bslz4(payload, nbytes: int, itemsize: int, *, allow_empty_header: bool = False,
                     backend: str | None = None) -> np.ndarray:
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
    backend : {"dectris", "bitshuffle"}, optional
        The decompressor, one of :data:`BSLZ4_BACKENDS`; default :data:`BSLZ4_BACKEND`.

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
    if (backend or BSLZ4_BACKEND) not in BSLZ4_BACKENDS:
        raise ValueError(f"bslz4 backend {backend!r} is not one of {BSLZ4_BACKENDS}")
    inflate = _BSLZ4_INFLATERS[backend or BSLZ4_BACKEND]
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
    check_inflatable(nbytes, len(payload), "bslz4 payload")
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
        return inflate(buf, elem, n_elements, block_bytes)
    except (RuntimeError, ValueError) as exc:
        raise _bad(f"bslz4 decompression failed: {exc}", "truncated_payload") from exc


def _inflate_bitshuffle(buf: np.ndarray, elem: np.dtype, n_elements: int,
                        block_bytes: int) -> np.ndarray:
    """bslz4 blocks of a walked payload (``buf``, header included) to a new array."""
    with _one_openmp_thread():
        return bitshuffle.decompress_lz4(buf[HEADER.size:], (n_elements,), elem,
                                         block_bytes // elem.itemsize)


def _inflate_dectris(buf: np.ndarray, elem: np.dtype, n_elements: int,
                     block_bytes: int) -> np.ndarray:
    """The same with ``dectris.compression``, which reads sizes from the header: an all-zero
    one (allowed for v1) is replaced by what it stands for."""
    header = HEADER.pack(n_elements * elem.itemsize, block_bytes)
    if bytes(buf[:HEADER.size]) != header:
        buf = np.concatenate([np.frombuffer(header, np.uint8), buf[HEADER.size:]])
    out = _dectris_compression.decompress(buf, "bslz4", elem_size=elem.itemsize)
    if len(out) != n_elements * elem.itemsize:
        raise ValueError(f"{len(out)} bytes decompressed, {n_elements * elem.itemsize} expected")
    # bytes are immutable: copied, as the decoded arrays are writable (the copy costs ~1/6
    # of the decompression and still leaves DECTRIS' decompressor the faster)
    return np.frombuffer(out, elem).copy()


_BSLZ4_INFLATERS = {"bitshuffle": _inflate_bitshuffle, "dectris": _inflate_dectris}


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
        check_inflatable(size, compressed, "lz4 block")
        # the HDF5 LZ4 filter stores a block raw when compressing it saved nothing
        chunk = view[pos:pos + compressed]
        blocks.append(chunk if compressed == size else _lz4_block(chunk, size))
        pos, done = pos + compressed, done + size
    _ends_at(None, pos, payload)
    # one decompressed block (the usual frame) is already a writable buffer: no copy
    one = len(blocks) == 1 and isinstance(blocks[0], bytearray)
    return np.frombuffer(blocks[0] if one else bytearray().join(blocks), np.uint8)


def compress_lz4_raw(raw) -> bytes:
    """LZ4-compress ``raw`` (bytes-like) as one raw block without header (v1 ``lz4<``)."""
    return lz4.block.compress(raw, store_size=False)


def decompress_lz4_raw(blob, nbytes: int) -> np.ndarray:
    """Decompress one raw LZ4 block (v1 ``lz4<``) of ``nbytes`` to a writable uint8 array.

    Raises ``truncated_payload`` when ``blob`` cannot hold ``nbytes`` or the block fails.
    """
    # a raw block, no size header (SIMPLON manual §5.4.3): the size comes from the shape,
    # and lz4 allocates all of it before reading a byte
    check_inflatable(nbytes, len(blob), "lz4 block")
    return np.frombuffer(_lz4_block(blob, nbytes), np.uint8)


def _lz4_block(blob, nbytes: int) -> bytearray:
    try:
        out = lz4.block.decompress(blob, uncompressed_size=nbytes, return_bytearray=True)
    except (lz4.block.LZ4BlockError, ValueError) as exc:
        raise _bad(f"lz4 decompression failed: {exc}", "truncated_payload") from exc
    # a shorter block decompresses without error to fewer bytes
    if len(out) != nbytes:
        raise _bad(f"lz4 block holds {len(out)} bytes, expected {nbytes}", "truncated_payload")
    return out
