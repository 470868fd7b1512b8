"""Recordings of a detector stream: every message as received, in a length-prefixed file.

Layout (all integers little-endian)::

    b"SXDMREC\\x01"                                   8-byte magic and version
    per message:  u32 n_parts | f64 t_s | n_parts x (u64 length | bytes)
    index:        u64 n_messages | n_messages x (u64 offset, f64 t_s)
    trailer:      b"SXDMIDX\\x01" | u64 offset of the index

``t_s`` is the arrival time in seconds since the first message (a replay at ``1x`` keeps the
original pace). Stream v2 messages are one part; stream v1 keeps its multipart boundaries, so
a replay sends exactly what the detector sent. The index lets a reader seek to any message;
a recording whose recorder was killed has no index: the reader rebuilds it by walking the
records, and ignores a partial message at the very end (with a warning).
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from sxdm_stream.errors import IncompatibleFileError

log = logging.getLogger(__name__)

MAGIC = b"SXDMREC\x01"
INDEX_MAGIC = b"SXDMIDX\x01"
_RECORD = struct.Struct("<Id")
_LENGTH = struct.Struct("<Q")
_TRAILER = struct.Struct("<8sQ")
_INDEX_DTYPE = np.dtype([("offset", "<u8"), ("t_s", "<f8")])
#: a message of more parts than this is not something a DECTRIS detector sends (v1 headers
#: with header_detail "all" and an appendix have 9): the file is corrupt
MAX_PARTS = 64


def is_recording(path: str | os.PathLike) -> bool:
    """True if ``path`` starts with the recording magic."""
    try:
        with open(path, "rb") as fh:
            return fh.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


class RecordingWriter:
    """Appends messages to a new recording; :meth:`close` writes the index.

    Parameters
    ----------
    path : the file to create (an existing file is replaced).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._fh = open(self.path, "wb")
        self._fh.write(MAGIC)
        self._offsets: list[int] = []
        self._times: list[float] = []
        self._t0: float | None = None

    def __len__(self) -> int:
        return len(self._offsets)

    def write(self, parts: Sequence[bytes], t_s: float) -> None:
        """Append one message; ``t_s`` is its arrival time (any clock, seconds)."""
        if self._t0 is None:
            self._t0 = t_s
        rel = t_s - self._t0
        self._offsets.append(self._fh.tell())
        self._times.append(rel)
        self._fh.write(_RECORD.pack(len(parts), rel))
        for part in parts:
            self._fh.write(_LENGTH.pack(len(part)))
            self._fh.write(part)

    def flush(self) -> None:
        self._fh.flush()

    def close(self) -> None:
        """Write the index and the trailer, close the file."""
        if self._fh.closed:
            return
        index_offset = self._fh.tell()
        self._fh.write(_LENGTH.pack(len(self._offsets)))
        index = np.empty(len(self._offsets), _INDEX_DTYPE)
        index["offset"], index["t_s"] = self._offsets, self._times
        self._fh.write(index.tobytes())
        self._fh.write(_TRAILER.pack(INDEX_MAGIC, index_offset))
        self._fh.close()

    def __enter__(self) -> "RecordingWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RecordingReader:
    """Reads a recording: ``len(reader)`` messages, ``reader[i]`` the parts of message i.

    Raises
    ------
    IncompatibleFileError : not a recording, or corrupt (a record that runs past the end of
        the file before the index, an index that points outside the records).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            self._fh = open(self.path, "rb")
        except OSError as exc:
            raise IncompatibleFileError(f"cannot open recording {self.path}: {exc.strerror}") from None
        size = os.fstat(self._fh.fileno()).st_size
        self._map = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        if self._map[:len(MAGIC)] != MAGIC:
            self.close()
            raise IncompatibleFileError(f"{self.path} is not an sxdm-stream recording "
                                        f"(it does not start with {MAGIC!r})")
        try:
            self.index, self._end = self._read_index(size)
        except IncompatibleFileError:
            self.close()
            raise

    def close(self) -> None:
        if isinstance(self._map, mmap.mmap):
            self._map.close()
        self._fh.close()

    def __enter__(self) -> "RecordingReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.index)

    @property
    def times_s(self) -> np.ndarray:
        """Arrival time of every message, seconds since the first."""
        return self.index["t_s"]

    def __getitem__(self, i: int) -> list[bytes]:
        parts, _t, _next = self._record(int(self.index["offset"][i]), self._end)
        return parts

    def messages(self, start: int = 0, stop: int | None = None) -> Iterator[tuple[float, list[bytes]]]:
        """(arrival time, parts) of messages ``start`` to ``stop`` (default: to the end)."""
        for i in range(start, len(self) if stop is None else min(stop, len(self))):
            yield float(self.index["t_s"][i]), self[i]

    # ---- index ----------------------------------------------------------------------------
    def _read_index(self, size: int) -> tuple[np.ndarray, int]:
        if size >= len(MAGIC) + _TRAILER.size:
            magic, offset = _TRAILER.unpack_from(self._map, size - _TRAILER.size)
            if magic == INDEX_MAGIC:
                return self._stored_index(offset, size), offset
        log.warning("%s has no index (the recorder did not finish): rebuilding it", self.path)
        return self._rebuilt_index(size)

    def _stored_index(self, offset: int, size: int) -> np.ndarray:
        end = size - _TRAILER.size
        if not len(MAGIC) <= offset <= end - _LENGTH.size:
            raise IncompatibleFileError(f"{self.path}: its index offset {offset} lies outside "
                                        f"the file: the recording is corrupt")
        (count,) = _LENGTH.unpack_from(self._map, offset)
        if offset + _LENGTH.size + count * _INDEX_DTYPE.itemsize != end:
            raise IncompatibleFileError(f"{self.path}: its index of {count} messages does not "
                                        f"fit the file: the recording is corrupt")
        index = np.frombuffer(self._map, _INDEX_DTYPE, count, offset + _LENGTH.size).copy()
        if count and (index["offset"].min() < len(MAGIC) or index["offset"].max() >= offset
                      or np.any(np.diff(index["offset"].astype(np.int64)) <= 0)):
            raise IncompatibleFileError(f"{self.path}: its index points outside the messages: "
                                        f"the recording is corrupt")
        return index

    def _rebuilt_index(self, size: int) -> tuple[np.ndarray, int]:
        offsets, times, pos = [], [], len(MAGIC)
        while pos < size:
            try:
                _parts, t_s, nxt = self._record(pos, size)
            except IncompatibleFileError as exc:
                log.warning("%s ends in a partial message at byte %d (%s): using the %d complete "
                            "messages before it", self.path, pos, exc, len(offsets))
                break
            offsets.append(pos)
            times.append(t_s)
            pos = nxt
        index = np.empty(len(offsets), _INDEX_DTYPE)
        index["offset"], index["t_s"] = offsets, times
        return index, pos

    def _record(self, pos: int, end: int) -> tuple[list[bytes], float, int]:
        """The parts and time of the record at ``pos``, and where the next one starts."""
        def corrupt(what: str) -> IncompatibleFileError:
            return IncompatibleFileError(f"{self.path}: message at byte {pos} {what}: the "
                                         f"recording is corrupt or truncated")

        if pos + _RECORD.size > end:
            raise corrupt("is cut short")
        n_parts, t_s = _RECORD.unpack_from(self._map, pos)
        if not 1 <= n_parts <= MAX_PARTS:
            raise corrupt(f"claims {n_parts} parts")
        pos_ = pos + _RECORD.size
        parts = []
        for _ in range(n_parts):
            if pos_ + _LENGTH.size > end:
                raise corrupt("is cut short")
            (length,) = _LENGTH.unpack_from(self._map, pos_)
            pos_ += _LENGTH.size
            if pos_ + length > end:
                raise corrupt(f"has a part of {length} bytes that runs past the end")
            parts.append(bytes(self._map[pos_:pos_ + length]))
            pos_ += length
        return parts, t_s, pos_
