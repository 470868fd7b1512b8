"""The live processor's receiver: detector messages from a PULL socket, decoded, handed on.

Each message is decoded (stream v1 or v2, told apart per message) and handed to
``deliver`` (the processor's frame queue, which applies the back-pressure policy), in the
order the messages came. With ``decode_threads`` > 1 the receiver thread reads each message
and checks it (the decoder's state, a start's declarations and a held v1 header, is its
alone) and a pool of threads decompresses the images' pixels, the one costly step, which
releases the GIL; the outcomes are handed on in arrival order (an end never overtakes its
images), at most ``2 * decode_threads`` in flight (each a compressed payload and, once done,
a decoded image beyond the frame queue's bounds). A message
that does not decode is counted under its reason and reported once per reason, and so is one
the decoder held and then gave up (a v1 header whose configuration never came, under
``v1_header_without_config``, when the next message arrives or the receiver stops); any other
exception from one message is counted under ``internal_error`` ("receiver") and the loop goes
on. The socket is made and connected by the processor (so a bad endpoint is refused at
start) and closed here, by the thread that used it.

=================  ==========================================================================
thread             owns
=================  ==========================================================================
receiver           the socket, the decoder, the decode pool and the messages in flight (it
                   alone hands them on), what was reported, held messages given up
decode pool        nothing: decompresses the pixels of the frame it is given, a new frame out
any (under lock)   :class:`ReceiverCounters`
=================  ==========================================================================
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, Callable

from sxdm_stream.errors import BadMessageError
from sxdm_stream.messages import ImageFrame
from sxdm_stream.runtime.supervisor import InternalErrors
from sxdm_stream.sources.dectris.codec import Decoder

log = logging.getLogger(__name__)

#: decode threads when ``[live] decode_threads`` is 0: one per core, up to 4 (measured on
#: 516 x 516 frames: two threads decompress 1.9 times as many frames as one; the worker,
#: which accumulates, is the bound long before four)
MAX_AUTO_DECODE_THREADS = 4


def decode_thread_count(decode_threads: int = 0) -> int:
    """Threads decompressing images for ``decode_threads`` (0: one per core, at most
    :data:`MAX_AUTO_DECODE_THREADS`)."""
    return decode_threads or min(MAX_AUTO_DECODE_THREADS, os.cpu_count() or 1)


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
    decode_threads : threads decompressing images (1: the receiver thread itself; 0: see
        :func:`decode_thread_count`).
    """

    def __init__(self, socket: Any, deliver: Callable[[Any], None], counters: ReceiverCounters,
                 internal: InternalErrors, stopping: Callable[[], bool],
                 decode_threads: int = 1) -> None:
        self.socket, self.deliver, self.counters = socket, deliver, counters
        self.internal, self.stopping = internal, stopping
        self.decode_threads = decode_thread_count(decode_threads)
        self.decoder = Decoder(defer_pixels=self.decode_threads > 1)
        self._pool: ThreadPoolExecutor | None = None
        #: decoded messages (or their pixels being decompressed), in arrival order
        self._in_flight: deque[Future] = deque()
        self._max_in_flight = 2 * self.decode_threads
        self._reported: set[str] = set()
        self._abandoned: Counter = Counter()     # of decoder.abandoned, counted as rejected

    def run(self) -> None:
        """The receiver thread."""
        if self.decode_threads > 1:
            self._pool = ThreadPoolExecutor(self.decode_threads, "sxdm-decode")
        try:
            while not self.stopping():
                self._hand_on_done()
                if len(self._in_flight) >= self._max_in_flight:
                    wait([self._in_flight[0]], timeout=0.1)   # bounded: the oldest first
                    continue
                # while pixels are being decompressed, come back soon to hand them on
                if self.socket.poll(1 if self._in_flight else 100):
                    self._take(self.socket.recv_multipart())
        finally:
            try:
                while self._in_flight:            # taken in: accounted for, even at a stop
                    self._hand_on(self._in_flight.popleft())
            finally:
                if self._pool is not None:
                    self._pool.shutdown(wait=True)
                self.socket.close()
                with self.internal.guard("receiver", "what the decoder held at the end"):
                    self.decoder.abandon_held()   # a v1 header still waiting: never completed
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
        if message is None:                       # a part of a message still to complete
            self.counters.count()
            return
        if self._pool is not None and isinstance(message, ImageFrame):
            self._in_flight.append(self._pool.submit(self.decoder.decompress_pixels, message))
        else:
            done: Future = Future()
            done.set_result(message)
            self._in_flight.append(done)

    def _hand_on_done(self) -> None:
        """Hand on the messages at the head of the line whose pixels are decompressed."""
        while self._in_flight and self._in_flight[0].done():
            self._hand_on(self._in_flight.popleft())

    def _hand_on(self, outcome: Future) -> None:
        """Count and deliver a decoded message, or count its rejection (waits for its pixels)."""
        try:
            message = outcome.result()
        except BadMessageError as exc:            # its pixels did not decompress
            self.counters.reject(exc.reason)
            self._report(exc.reason, f"rejected a message: {exc}")
            return
        except Exception as exc:                  # a bug of ours: count it, take the next one
            self.counters.reject("internal_error")
            self.internal.record("receiver", exc, "an image's pixels")
            return
        self.counters.count(image=isinstance(message, ImageFrame))
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
