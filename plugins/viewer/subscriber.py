"""The subscriber thread: receives a processor's snapshots and keeps the newest for the UI.

The thread never touches a widget. It decodes snapshots (:class:`SnapshotSubscriber`), puts
them in a :class:`SnapshotMailbox` and emits :attr:`SnapshotFeed.arrived`; the window's refresh
timer takes what is there at its own pace. A slow UI therefore skips intermediate snapshots,
never queues them, and never loses a completed map (each one is an operando point). Operando
records (``sxdm.operando``, one per completed map, on the same socket) are small and rare: the
mailbox keeps every one until the UI takes it.

Who owns what:

=====================================  =================================================
subscriber thread                      the SUB socket and its monitor; ``received``,
                                       ``records_received``, ``bad_messages``
either thread, under the mailbox lock  the newest snapshot, the final ones, the records
UI thread                              everything the mailbox's ``take*`` hand over
=====================================  =================================================

Whether the processor can be reached comes from ZeroMQ itself: a socket monitor reports the
connection going up and down, and ZMTP heartbeats detect a peer that vanished without closing
its connection. ZeroMQ reconnects by itself when the processor comes back.
"""

from __future__ import annotations

import collections
import logging
import threading
import time

import zmq
from PySide6.QtCore import QObject, Signal
from zmq.utils.monitor import recv_monitor_message

from sxdm_stream import (OPERANDO_TOPIC, BadMessageError, Snapshot, SnapshotSubscriber,
                         decode_operando_record)

log = logging.getLogger(__name__)

#: ZMTP heartbeat: a processor silent at the transport level this long is declared gone
HEARTBEAT_IVL_MS = 1000
HEARTBEAT_TIMEOUT_MS = 3000
_UP_EVENTS = zmq.EVENT_HANDSHAKE_SUCCEEDED
_DOWN_EVENTS = zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_CLOSED


class SnapshotMailbox:
    """The newest snapshot, plus every final one and every operando record not yet taken
    (thread-safe).

    Parameters
    ----------
    max_complete : final snapshots kept for a UI that does not take them (oldest dropped).
    max_records : operando records kept for a UI that does not take them (oldest dropped).
    """

    def __init__(self, max_complete: int = 64, max_records: int = 1024) -> None:
        self._lock = threading.Lock()
        self._latest: tuple[Snapshot, float] | None = None
        self._complete: collections.deque = collections.deque(maxlen=max_complete)
        self._records: collections.deque = collections.deque(maxlen=max_records)

    def put(self, snapshot: Snapshot, received_s: float) -> None:
        """Keep ``snapshot`` (received at monotonic ``received_s``)."""
        with self._lock:
            if snapshot.header.final:
                self._complete.append((snapshot, received_s))
            self._latest = (snapshot, received_s)

    def take(self) -> list[tuple[Snapshot, float]]:
        """Final snapshots not yet taken, then the newest one (if not already among them)."""
        with self._lock:
            out = list(self._complete)
            if self._latest is not None and (not out or out[-1][0] is not self._latest[0]):
                out.append(self._latest)
            self._complete.clear()
            self._latest = None
        return out

    def put_record(self, record: dict) -> None:
        """Keep an operando record (the decoded JSON object)."""
        with self._lock:
            self._records.append(record)

    def take_records(self) -> list[dict]:
        """The operando records not yet taken, oldest first."""
        with self._lock:
            out = list(self._records)
            self._records.clear()
        return out


class SnapshotFeed(QObject):
    """Receives snapshots from a processor's PUB endpoint in a thread of its own.

    Parameters
    ----------
    endpoint : the processor's snapshot endpoint, e.g. "tcp://host:5560".
    context : ZeroMQ context (default: the process-wide one).

    Signals
    -------
    arrived() : a snapshot or an operando record is waiting in the mailbox (emitted from the
        subscriber thread).
    connectedChanged(bool) : the connection to the processor went up or down.
    """

    arrived = Signal()
    connectedChanged = Signal(bool)

    def __init__(self, endpoint: str, context: zmq.Context | None = None,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.endpoint = endpoint
        self.mailbox = SnapshotMailbox()
        self.connected: bool | None = None
        self.received = 0
        self.records_received = 0
        self.bad_messages = 0
        self._context = context or zmq.Context.instance()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reported: set[str] = set()

    def describe(self) -> str:
        return self.endpoint

    def start(self) -> "SnapshotFeed":
        """Start the subscriber thread (idempotent)."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="sxdm-viewer-subscriber",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread and close the socket (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def take(self) -> list[tuple[Snapshot, float]]:
        """What arrived since the last call (see :meth:`SnapshotMailbox.take`)."""
        return self.mailbox.take()

    def take_records(self) -> list[dict]:
        """Operando records that arrived since the last call, oldest first."""
        return self.mailbox.take_records()

    # ---- the thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        subscriber = SnapshotSubscriber(self.endpoint, self._context)
        subscriber.socket.setsockopt(zmq.SUBSCRIBE, OPERANDO_TOPIC)
        monitor = _monitored(subscriber.socket, self.endpoint)
        poller = zmq.Poller()
        poller.register(subscriber.socket, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                events = dict(poller.poll(200))
                if monitor in events:
                    self._on_monitor(monitor)
                if subscriber.socket in events:
                    self._receive(subscriber)
        except zmq.ZMQError as exc:           # the context was terminated under us
            log.warning("snapshot subscriber stopped: %s", exc)
        finally:
            subscriber.socket.disable_monitor()
            monitor.close()
            subscriber.close()

    def _receive(self, subscriber: SnapshotSubscriber) -> None:
        try:
            parts = subscriber.socket.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        try:
            if parts and bytes(parts[0]) == OPERANDO_TOPIC:
                self.mailbox.put_record(decode_operando_record(parts))
                self.records_received += 1
            else:
                self.mailbox.put(Snapshot.from_wire(parts), time.monotonic())
                self.received += 1
        except BadMessageError as exc:
            self.bad_messages += 1
            if exc.reason not in self._reported:
                self._reported.add(exc.reason)
                log.warning("ignored a bad message from %s: %s (further ones are only counted)",
                            self.endpoint, exc)
            return
        self._set_connected(True)
        self.arrived.emit()

    def _on_monitor(self, monitor: zmq.Socket) -> None:
        while monitor.poll(0):
            event = recv_monitor_message(monitor)["event"]
            if event & _UP_EVENTS:
                self._set_connected(True)
            elif event & _DOWN_EVENTS:
                self._set_connected(False)

    def _set_connected(self, connected: bool) -> None:
        if connected != self.connected:
            self.connected = connected
            self.connectedChanged.emit(connected)


def _monitored(socket: zmq.Socket, endpoint: str) -> zmq.Socket:
    """Attach a monitor and heartbeats to a connected SUB socket; returns the monitor socket.

    SnapshotSubscriber connects in its constructor, before a monitor could see the connection
    come up, and heartbeat options only apply to connections made after they are set: so the
    socket disconnects, is set up, and connects again.
    """
    socket.disconnect(endpoint)
    socket.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
    monitor = socket.get_monitor_socket(_UP_EVENTS | _DOWN_EVENTS)
    socket.connect(endpoint)
    return monitor
