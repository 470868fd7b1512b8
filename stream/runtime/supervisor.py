"""Supervision of the live processor's threads: one bad message never stops a loop, and a
loop that stops anyway is noticed.

Every long-lived loop (receiver, worker, writer, pixel service, snapshots) handles one
message or job at a time inside :meth:`InternalErrors.guard`: an exception that is not a
rejection we planned for (a bug of ours, a library raising what it does not document) is
counted under ``internal_error`` with the loop's name, logged with its traceback once per
(loop, exception type), and the loop goes on with the next message.

If a thread ends anyway (an error outside the per-message guard, or a loop that returns
before it was asked to stop), :class:`ThreadSupervisor` records why and calls ``on_death``:
the processor then stops the scan and writes what it has as incomplete, and the command line
exits non-zero with that reason.

=================  ==========================================================================
thread             owns
=================  ==========================================================================
any (under lock)   :class:`InternalErrors` counts and what was logged
supervised thread  nothing here; it records its own death (under lock)
caller of start()  the thread list (start, join)
=================  ==========================================================================
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import Counter
from typing import Callable, Iterator

log = logging.getLogger(__name__)


class InternalErrors:
    """Exceptions of our own loops, counted per loop (``where``), logged once per kind."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter = Counter()
        self._logged: set[tuple[str, str]] = set()

    def record(self, where: str, exc: BaseException, what: str = "a message") -> None:
        """Count ``exc`` raised in loop ``where`` while handling ``what``; log it once per kind."""
        kind = (where, type(exc).__name__)
        with self._lock:
            self._counts[where] += 1
            first = kind not in self._logged
            self._logged.add(kind)
        if first:
            log.error("internal error in the %s while handling %s (counted under "
                      "'internal_error'; the %s goes on; further %s there are only counted)",
                      where, what, where, type(exc).__name__, exc_info=exc)

    @contextlib.contextmanager
    def guard(self, where: str, what: str = "a message") -> Iterator[None]:
        """Run the block; an :class:`Exception` it raises is recorded, not propagated."""
        try:
            yield
        except Exception as exc:                  # one message must never stop a loop
            self.record(where, exc, what)

    def counts(self) -> dict[str, int]:
        """Internal errors per loop."""
        with self._lock:
            return dict(self._counts)

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())


class ThreadSupervisor:
    """Starts named daemon threads and notices one that ends before it was asked to.

    Parameters
    ----------
    on_death : called (on the dying thread) with one line saying which thread stopped and why.
    stopping : tells whether the threads were asked to stop (a thread ending then is normal).
    """

    def __init__(self, on_death: Callable[[str], None], stopping: Callable[[], bool]) -> None:
        self._on_death, self._stopping = on_death, stopping
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        self._died: dict[str, str] = {}

    def start(self, name: str, target: Callable[[], None]) -> threading.Thread:
        """Run ``target`` on a new daemon thread called ``name``."""
        thread = threading.Thread(target=self._run, args=(name, target), name=name, daemon=True)
        self._threads[name] = thread
        thread.start()
        return thread

    def _run(self, name: str, target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as exc:              # the thread is ending: say why
            self._death(name, f"the {name} thread stopped: {type(exc).__name__}: {exc}", exc)
            return
        if not self._stopping():
            self._death(name, f"the {name} thread ended before it was asked to stop", None)

    def _death(self, name: str, reason: str, exc: BaseException | None) -> None:
        with self._lock:
            self._died[name] = reason
        log.critical("%s; stopping the scan and writing what it has as incomplete", reason,
                     exc_info=exc)
        self._on_death(reason)

    def died(self, name: str) -> bool:
        """Whether thread ``name`` ended by an error (or before it was asked to stop)."""
        with self._lock:
            return name in self._died

    def alive(self, name: str) -> bool:
        thread = self._threads.get(name)
        return thread is not None and thread.is_alive()

    def started(self, name: str) -> bool:
        return name in self._threads

    def join(self, name: str, timeout: float | None = None) -> bool:
        """Wait for thread ``name`` (if started); True if it is no longer running."""
        thread = self._threads.get(name)
        if thread is not None:
            thread.join(timeout)
        return thread is None or not thread.is_alive()

    @property
    def failure(self) -> str | None:
        """The first death recorded, or None."""
        with self._lock:
            return next(iter(self._died.values()), None)
