"""Receive a RunEngine's documents from its 0MQ proxy and feed them to the live processor.

The RunEngine publishes with ``bluesky.callbacks.zmq.Publisher`` to the proxy's in-port
(``bluesky-0MQ-proxy``, conventionally 5577 in, 5578 out); we subscribe to the out-port with
``bluesky.callbacks.zmq.RemoteDispatcher``. Documents are msgpack with msgpack-numpy arrays
by default: nothing executable crosses the socket. ``serializer="pickle"`` (bluesky's default)
must be asked for explicitly, and only on a trusted network.

Callbacks run on the dispatcher's asyncio thread; :class:`~.callback.SxdmCallback` only
converts documents and hands them to the processor's queue.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import threading
from typing import Callable

import msgpack
import msgpack_numpy
from bluesky.callbacks.zmq import RemoteDispatcher

from .callback import SxdmCallback

log = logging.getLogger(__name__)

SERIALIZERS = ("msgpack", "pickle")


def msgpack_dumps(doc) -> bytes:
    """Serialise a document with msgpack; numpy arrays travel as msgpack-numpy records."""
    return msgpack.packb(doc, default=msgpack_numpy.encode)


def msgpack_loads(payload: bytes):
    """Inverse of :func:`msgpack_dumps`."""
    return msgpack.unpackb(payload, object_hook=msgpack_numpy.decode, strict_map_key=False)


def serializer_pair(serializer: str) -> tuple[Callable, Callable]:
    """(dumps, loads) for a serializer name; pickle only when named explicitly."""
    if serializer == "msgpack":
        return msgpack_dumps, msgpack_loads
    if serializer == "pickle":
        log.warning("unpickling documents from the network: use only on a trusted network")
        return pickle.dumps, pickle.loads
    raise ValueError(f"serializer {serializer!r} is not one of {SERIALIZERS}")


class RemoteListener:
    """A RemoteDispatcher feeding an :class:`SxdmCallback`, stoppable from any thread.

    Parameters
    ----------
    address : the proxy's out-port, "host:port" (e.g. "localhost:5578").
    processor : anything with ``submit(message)``, e.g. a running LiveProcessor.
    serializer : "msgpack" (default) or "pickle" (explicitly, trusted networks only).
    prefix : the Publisher's prefix (bytes), b"" for all.
    pixel_mask : detector pixel mask passed to the callback.
    """

    def __init__(self, address: str, processor, serializer: str = "msgpack", prefix: bytes = b"",
                 pixel_mask=None) -> None:
        _, loads = serializer_pair(serializer)
        self.dispatcher = RemoteDispatcher(address, prefix=prefix, deserializer=loads,
                                           loop=asyncio.new_event_loop())
        self.callback = SxdmCallback(processor, pixel_mask=pixel_mask)
        self.dispatcher.subscribe(self.callback)
        self._stopping = threading.Event()

    def subscribe(self, callback) -> int:
        """Also send the documents to ``callback(name, doc)`` (on the dispatcher thread)."""
        return self.dispatcher.subscribe(callback)

    def run(self) -> None:
        """Receive until :meth:`stop` is called (blocks; run it in a thread if needed)."""
        if self._stopping.is_set():
            self.dispatcher.stop()                 # never started: close its loop
            return
        log.info("listening for bluesky documents at %s", self.dispatcher.address)
        try:
            self.dispatcher.start()
        except asyncio.CancelledError:
            pass                                   # stop() cancelled the receiving task
        log.info("stopped listening at %s", self.dispatcher.address)

    def stop(self) -> None:
        """Stop :meth:`run` from any thread (RemoteDispatcher.stop is not thread-safe)."""
        self._stopping.set()
        loop = self.dispatcher.loop
        if loop.is_closed():
            return
        # queued before or while the loop runs: run() creates the task before running the loop
        loop.call_soon_threadsafe(self._cancel)

    def _cancel(self) -> None:
        task = self.dispatcher._task
        if task is not None:
            task.cancel()


def listen(address: str, processor, serializer: str = "msgpack", *, prefix: bytes = b"",
           pixel_mask=None, stop: threading.Event | None = None) -> SxdmCallback:
    """Feed ``processor`` with the SXDM runs published at ``address`` until ``stop`` is set.

    Parameters
    ----------
    address : the 0MQ proxy's out-port, "host:port" (e.g. "localhost:5578").
    processor : anything with ``submit(message)``, e.g. a started LiveProcessor.
    serializer : "msgpack" (msgpack + msgpack-numpy, default) or "pickle" (trusted only).
    prefix : only documents published with this prefix (b"": all).
    pixel_mask : detector pixel mask (True = bad) sent with each series start.
    stop : set it (from any thread) to stop listening; None: until interrupted.

    Returns
    -------
    SxdmCallback : the callback, with its counters (``rejected``, ``runs_seen``).
    """
    listener = RemoteListener(address, processor, serializer, prefix, pixel_mask)
    watcher = None
    if stop is not None:
        watcher = threading.Thread(target=lambda: (stop.wait(), listener.stop()),
                                   name="sxdm-bluesky-stop", daemon=True)
        watcher.start()
    try:
        listener.run()
    finally:
        if watcher is not None:
            stop.set()
            watcher.join()
    return listener.callback
