"""A queue between two threads of the live processor, bounded in items and in bytes.

A count alone does not bound memory: 256 frames of a Maxipix are 256 MiB, of an Eiger 4M
4 GiB, and a writer job holds a copy of a scan's q histograms (up to the histogram budget).
So each item is put with its size, and the queue takes it only while both the count and the
byte total stay within their limits. An item bigger than the byte limit on its own is still
taken into an empty queue: otherwise it could never pass.

=================  ==========================================================================
thread             owns
=================  ==========================================================================
any (under lock)   the items, the byte total
=================  ==========================================================================
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from typing import Any


class BoundedQueue:
    """A FIFO between threads, bounded by ``max_items`` and ``max_bytes``.

    Parameters
    ----------
    max_items : most items held.
    max_bytes : most bytes held (the sum of the sizes given to :meth:`put`).
    """

    def __init__(self, max_items: int, max_bytes: int) -> None:
        if max_items < 1 or max_bytes < 1:
            raise ValueError("a bounded queue needs room for at least one item and one byte")
        self.max_items, self.max_bytes = int(max_items), int(max_bytes)
        self._items: collections.deque = collections.deque()
        self._nbytes = 0
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)

    def put(self, item: Any, nbytes: int = 0, timeout: float | None = None) -> bool:
        """Add ``item`` of ``nbytes`` bytes once there is room; False if ``timeout`` (seconds)
        passed first (None: wait as long as it takes)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._not_full:
            while not self._fits(nbytes):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._not_full.wait(left)
            self._append(item, nbytes)
            return True

    def put_nowait(self, item: Any, nbytes: int = 0) -> bool:
        """Add ``item`` if there is room now; False if not."""
        return self.put(item, nbytes, timeout=0)

    def put_beyond_bounds(self, item: Any, nbytes: int = 0) -> None:
        """Add ``item`` whatever the bounds: for an end marker, or when the consumer is gone and
        whoever drains the queue next must still find everything."""
        with self._lock:
            self._append(item, nbytes)

    def get(self, timeout: float | None = None) -> Any:
        """The oldest item; :class:`queue.Empty` if none came within ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._not_empty:
            while not self._items:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise queue.Empty
                self._not_empty.wait(left)
            item, nbytes = self._items.popleft()
            self._nbytes -= nbytes
            self._not_full.notify_all()
            return item

    def qsize(self) -> int:
        """Items held now."""
        with self._lock:
            return len(self._items)

    @property
    def nbytes(self) -> int:
        """Bytes held now."""
        with self._lock:
            return self._nbytes

    def items(self) -> list:
        """A copy of the items held, oldest first."""
        with self._lock:
            return [item for item, _ in self._items]

    def _fits(self, nbytes: int) -> bool:
        if not self._items:
            return True
        return len(self._items) < self.max_items and self._nbytes + nbytes <= self.max_bytes

    def _append(self, item: Any, nbytes: int) -> None:
        self._items.append((item, int(nbytes)))
        self._nbytes += int(nbytes)
        self._not_empty.notify()
