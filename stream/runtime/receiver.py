"""The live processor's receiver: detector messages from a PULL socket, decoded, handed on.

Each message is decoded (stream v1 or v2, told apart per message) and handed to
``deliver`` (the processor's frame queue, which applies the back-pressure policy). A message
that does not decode is counted under its reason and reported once per reason, and so is one
the decoder held and then gave up (a v1 header whose configuration never came, under
``v1_header_without_config``, when the next message arrives or the receiver stops); any other
exception from one message is counted under ``internal_error`` ("receiver") and the loop goes
on. The socket is made and connected by the processor (so a bad endpoint is refused at
start) and closed here, by the thread that used it.

=================  ==========================================================================
thread             owns
=================  ==========================================================================
receiver           the socket, the decoder, what was reported, held messages given up
any (under lock)   :class:`ReceiverCounters`
=================  ==========================================================================
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Any, Callable

from sxdm_stream.errors import BadMessageError
from sxdm_stream.messages import ImageFrame
from sxdm_stream.runtime.supervisor import InternalErrors
from sxdm_stream.sources.dectris.codec import Decoder

log = logging.getLogger(__name__)


class ReceiverCounters:
    """What came in: messages, images, decode rejections by reason, drops (thread-safe: the
    receiver thread and :meth:`LiveProcessor.submit` callers count here)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.messages = 0
        self.images = 0
        self.rejected: Counter = Counter()
        self.dropped = 0
        self.after_stop = 0

    def count(self, image: bool = False) -> None:
        """A message came in (an image if ``image``)."""
        with self._lock:
            self.messages += 1
            self.images += int(image)

    def reject(self, reason: str) -> None:
        """A message came in and could not be decoded (``reason``)."""
        with self._lock:
            self.messages += 1
            self.rejected[reason] += 1

    def reject_held(self, reason: str, n: int = 1) -> None:
        """``n`` messages counted when they came in, held by the decoder for a continuation
        that never came, are given up (``reason``)."""
        with self._lock:
            self.rejected[reason] += n

    def drop(self) -> None:
        with self._lock:
            self.dropped += 1

    def refused_after_stop(self) -> None:
        """A message handed in after the processor was asked to stop: not processed."""
        with self._lock:
            self.after_stop += 1

    def copy_rejected(self) -> Counter:
        with self._lock:
            return Counter(self.rejected)


class Receiver:
    """Receives, decodes and hands on detector messages until ``stopping()``.

    Parameters
    ----------
    socket : a connected PULL socket, used and closed by :meth:`run` only.
    deliver : ``deliver(message)``, called with every decoded message.
    counters : where messages and rejections are counted.
    internal : where unexpected exceptions are counted.
    stopping : tells the loop to end.
    """

    def __init__(self, socket: Any, deliver: Callable[[Any], None], counters: ReceiverCounters,
                 internal: InternalErrors, stopping: Callable[[], bool]) -> None:
        self.socket, self.deliver, self.counters = socket, deliver, counters
        self.internal, self.stopping = internal, stopping
        self.decoder = Decoder()
        self._reported: set[str] = set()
        self._abandoned: Counter = Counter()     # of decoder.abandoned, counted as rejected

    def run(self) -> None:
        """The receiver thread."""
        try:
            while not self.stopping():
                if not self.socket.poll(100):
                    continue
                self._take(self.socket.recv_multipart())
        finally:
            self.socket.close()
            with self.internal.guard("receiver", "what the decoder held at the end"):
                self.decoder.abandon_held()       # a v1 header still waiting: never completed
                self._count_abandoned()

    def quirks(self) -> dict[str, int]:
        """What the decoder accepted although a strict reader would not."""
        quirks = getattr(self.decoder, "quirks", None)
        # dict.copy: one step under the GIL, while the receiver thread may be counting
        return {k: v for k, v in dict.copy(quirks).items() if v} if isinstance(quirks, dict) else {}

    def _take(self, parts: list) -> None:
        received = time.perf_counter()
        try:
            message = self.decoder.decode(parts, received_s=received)
        except BadMessageError as exc:
            self.counters.reject(exc.reason)
            self._report(exc.reason, f"rejected a message: {exc}")
            return
        except Exception as exc:                  # a decoder bug: count it, take the next one
            self.counters.reject("internal_error")
            self.internal.record("receiver", exc, "a detector message")
            return
        finally:                                  # this message may have made it drop one held
            self._count_abandoned()
        self.counters.count(image=isinstance(message, ImageFrame))
        if message is None:                       # a part of a message still to complete
            return
        with self.internal.guard("receiver", f"a {type(message).__name__}"):
            self.deliver(message)

    def _count_abandoned(self) -> None:
        """Messages the decoder held and gave up since the last call: counted as rejected
        under the kind (``v1_header_without_config``), so that every message is accounted
        for; the decoder has logged why."""
        for kind, total in dict.copy(self.decoder.abandoned).items():
            if total > self._abandoned[kind]:
                self.counters.reject_held(kind, total - self._abandoned[kind])
                self._abandoned[kind] = total

    def _report(self, reason: str, message: str) -> None:
        if reason not in self._reported:
            self._reported.add(reason)
            log.warning("%s (further occurrences of %r are only counted)", message, reason)
