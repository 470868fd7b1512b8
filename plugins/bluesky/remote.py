"""Receive a RunEngine's documents from its 0MQ proxy and feed them to the live processor.

The RunEngine publishes with ``bluesky.callbacks.zmq.Publisher`` to the proxy's in-port
(``bluesky-0MQ-proxy``, conventionally 5577 in, 5578 out); :class:`RemoteListener`
subscribes to the out-port. Each ZeroMQ message is ``prefix name document`` separated by
single spaces (bluesky's wire format). Documents are msgpack with msgpack-numpy arrays by
default, decoded by :mod:`.codec`, which rebuilds only plain numeric, bool and string arrays:
nothing executable crosses the socket. ``serializer="pickle"`` (bluesky's default) must be
asked for explicitly, only on a trusted network, and says so in the log when the listener
starts.

The listener is its own small loop, not bluesky's ``RemoteDispatcher``: that one stops for good
on a document name it does not know and prints, rather than counts, what it drops. Here one
message can never stop the loop: a message that cannot be split, a name that is not a bluesky
document, a document that cannot be decoded and an exception raised by a callback are each
counted in :attr:`RemoteListener.rejected` under a reason (``malformed``,
``unknown_document``, the codec's reasons, ``internal_error``), reported once in the log, and
the loop goes on. Runs published under the processor's own derived-run prefix
(``sxdm-maps``) are skipped, so ``--bluesky-publish`` to the same proxy never feeds the
processor its own results.

Threads: :meth:`RemoteListener.run` owns the SUB socket and calls the callbacks (keep them
short: :class:`~.callback.SxdmCallback` only converts documents and hands them to the
processor's queue); :meth:`RemoteListener.stop` only sets an event, from any thread.
"""

from __future__ import annotations

import logging
import pickle
import threading
from collections import Counter
from typing import Callable

import zmq
from event_model import DocumentNames

from sxdm_stream import BadMessageError, SxdmError

from .callback import SxdmCallback
from .codec import dumps as msgpack_dumps
from .codec import loads as msgpack_loads

log = logging.getLogger(__name__)

SERIALIZERS = ("msgpack", "pickle")
#: the prefix of the derived runs this package publishes (:mod:`.derived`)
DERIVED_PREFIX = b"sxdm-maps"
_NAMES = frozenset(DocumentNames.__members__)


def serializer_pair(serializer: str) -> tuple[Callable, Callable]:
    """(dumps, loads) for a serializer name; pickle only when named explicitly."""
    if serializer == "msgpack":
        return msgpack_dumps, msgpack_loads
    if serializer == "pickle":
        log.warning("serializer 'pickle': documents from the network will be unpickled, which "
                    "runs any code a publisher on the proxy sends; use only on a trusted network")
        return pickle.dumps, pickle.loads
    raise ValueError(f"serializer {serializer!r} is not one of {SERIALIZERS}")


class RemoteListener:
    """Subscribes to a 0MQ proxy and feeds an :class:`SxdmCallback`; stoppable from any thread.

    Parameters
    ----------
    address : the proxy's out-port, "host:port" (e.g. "localhost:5578") or a ZeroMQ endpoint.
    processor : anything with ``submit(message)``, e.g. a running LiveProcessor.
    serializer : "msgpack" (default) or "pickle" (explicitly, trusted networks only).
    prefix : the Publisher's prefix (bytes): only its documents are taken; b"" for all
        (except the processor's own derived runs, see ``ignore_prefixes``).
    pixel_mask : detector pixel mask passed to the callback.
    ignore_prefixes : prefixes never taken when ``prefix`` is b"".
    context : the ZeroMQ context (default: the process' shared one).
    stop : an event that stops :meth:`run` when set (default: a new one, set by :meth:`stop`).

    Attributes
    ----------
    rejected : Counter of the messages dropped, by reason.
    received : number of messages received.
    skipped : messages of another prefix (or of the ignored ones) left alone.
    """

    def __init__(self, address: str, processor, serializer: str = "msgpack", prefix: bytes = b"",
                 pixel_mask=None, ignore_prefixes: tuple[bytes, ...] = (DERIVED_PREFIX,),
                 context: zmq.Context | None = None,
                 stop: threading.Event | None = None) -> None:
        if not isinstance(prefix, bytes) or b" " in prefix:
            raise ValueError(f"prefix must be bytes without spaces, not {prefix!r}")
        _, self._loads = serializer_pair(serializer)
        self.address = address if "://" in address else f"tcp://{address}"
        self.prefix = prefix
        self.ignore_prefixes = () if prefix else tuple(ignore_prefixes)
        self.callback = SxdmCallback(processor, pixel_mask=pixel_mask)
        self.rejected: Counter = Counter()
        self.received = 0
        self.skipped = 0
        self._callbacks: list[Callable] = [self.callback]
        self._context = context or zmq.Context.instance()
        self._stopping = stop if stop is not None else threading.Event()
        self._reported: set[str] = set()

    def subscribe(self, callback: Callable) -> None:
        """Also send the documents to ``callback(name, doc)`` (on the listener's thread)."""
        self._callbacks.append(callback)

    def run(self) -> None:
        """Receive until :meth:`stop` is called (blocks; run it in a thread if needed)."""
        if self._stopping.is_set():
            return
        sock = self._context.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, self.prefix)
        sock.connect(self.address)
        log.info("listening for bluesky documents at %s", self.address)
        try:
            while not self._stopping.is_set():
                if sock.poll(100):
                    self.received += 1
                    self.handle(sock.recv())
        finally:
            sock.close()
        log.info("stopped listening at %s (%d messages, dropped: %s)", self.address,
                 self.received, dict(self.rejected) or "none")

    def handle(self, message: bytes) -> None:
        """Split, decode and dispatch one message; never raises."""
        try:
            prefix, name, payload = message.split(b" ", 2)
            name = name.decode("ascii")
        except (ValueError, UnicodeDecodeError):
            self._count("malformed", f"a message of {len(message)} bytes is not "
                        "'prefix name document'")
            return
        if (self.prefix and prefix != self.prefix) or prefix in self.ignore_prefixes:
            self.skipped += 1                       # another publisher's, or our own results
            return
        if name not in _NAMES:
            self._count("unknown_document", f"{name[:40]!r} is not a bluesky document name")
            return
        try:
            doc = self._loads(payload)
        except BadMessageError as exc:
            self._count(exc.reason, f"a {name} document was dropped: {exc}")
            return
        except Exception as exc:                    # pickle, when asked for, raises anything
            self._count("malformed_document", f"a {name} document was dropped: "
                        f"{type(exc).__name__}: {exc}")
            return
        if not isinstance(doc, dict):
            self._count("malformed_document", f"a {name} document is a "
                        f"{type(doc).__name__}, not a map")
            return
        for callback in self._callbacks:
            try:
                callback(name, doc)
            except SxdmError as exc:                # a document we refuse (e.g. a bad seq_num)
                self._count(getattr(exc, "reason", "bad_document"), f"a {name} document was "
                            f"refused: {exc}")
            except Exception:                       # a bug: count, go on
                self._count("internal_error", f"callback {callback!r} failed on a {name} "
                            "document", exc_info=True)

    def stop(self) -> None:
        """Stop :meth:`run` from any thread (it returns within 0.1 s)."""
        self._stopping.set()

    def _count(self, reason: str, message: str, exc_info: bool = False) -> None:
        self.rejected[reason] += 1
        if reason not in self._reported:
            self._reported.add(reason)
            log.warning("bluesky listener: %s (further occurrences of %r are only counted)",
                        message, reason, exc_info=exc_info)


def listen(address: str, processor, serializer: str = "msgpack", *, prefix: bytes = b"",
           pixel_mask=None, stop: threading.Event | None = None) -> SxdmCallback:
    """Feed ``processor`` with the SXDM runs published at ``address`` until ``stop`` is set.

    Parameters
    ----------
    address : the 0MQ proxy's out-port, "host:port" (e.g. "localhost:5578").
    processor : anything with ``submit(message)``, e.g. a started LiveProcessor.
    serializer : "msgpack" (msgpack-numpy's format, decoded safely; default) or "pickle"
        (trusted networks only).
    prefix : only documents published with this prefix (b"": all).
    pixel_mask : detector pixel mask (True = bad) sent with each series start.
    stop : set it (from any thread) to stop listening; None: until interrupted.

    Returns
    -------
    SxdmCallback : the callback, with its counters (``rejected``, ``runs_seen``); the
        listener's own (messages it could not take) are logged when it stops.
    """
    listener = RemoteListener(address, processor, serializer, prefix, pixel_mask, stop=stop)
    listener.run()
    return listener.callback
