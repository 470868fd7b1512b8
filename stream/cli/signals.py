"""SIGTERM as Ctrl-C, and no second signal that loses a partial result.

A batch system or a service manager stops a processor with SIGTERM, a user with Ctrl-C
(SIGINT); both must end the same way: what was received is written, marked incomplete, and
the checkpoint kept for ``--resume``. While that is written, a further Ctrl-C or SIGTERM is
only logged: a second Ctrl-C that killed the process there would lose the partial result
(SIGKILL still ends it at once, and the checkpoint of the last rocking angle stays).
"""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class InterruptOnSignals:
    """Context manager: while :attr:`running`, SIGINT and SIGTERM raise KeyboardInterrupt in
    the main thread; after :meth:`stopping` (or the first signal) they are only logged. The
    previous handlers come back on exit. Off the main thread it does nothing (Python runs
    signal handlers there only)."""

    def __init__(self) -> None:
        self.running = True
        self.received: int | None = None          # the first signal's number
        self._previous: dict = {}

    def __enter__(self) -> "InterruptOnSignals":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def stopping(self) -> None:
        """From now on a signal no longer interrupts: the results are being written."""
        self.running = False

    def _handle(self, signum: int, _frame) -> None:
        if self.received is None:
            self.received = signum
        if self.running:
            self.running = False
            raise KeyboardInterrupt(signal.Signals(signum).name)
        log.warning("%s: already stopping, writing what was received (kill -9 abandons it; "
                    "the checkpoint of the last rocking angle stays)", signal.Signals(signum).name)
