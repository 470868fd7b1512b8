"""The details of one map pixel on request: the processor's pixel service (REQ/REP).

A snapshot carries every map and every rocking curve, but not the q-space histograms (far too
big to publish). The inspector asks for the histogram of the clicked pixel; the request runs in
a thread of its own so that a processor that does not answer never freezes the UI. Only the
newest request is kept: clicking quickly through pixels asks for the last one only.
"""

from __future__ import annotations

import logging
import threading

import numpy as np
import zmq
from PySide6.QtCore import QObject, Signal

from sxdm_stream import BadMessageError, decode_pixel_reply, encode_pixel_request

log = logging.getLogger(__name__)


class PixelService(QObject):
    """Client of a processor's pixel service (see :mod:`sxdm_stream.sinks.publish`).

    Parameters
    ----------
    endpoint : the processor's REP endpoint (``LiveProcessor.serve_endpoint``).
    timeout_s : how long to wait for an answer before giving up on a request.

    Signals
    -------
    replied(int, object) : flat map index and the reply (a :class:`~sxdm_stream.PixelReply`).
    failed(int, str) : flat map index and why there is no answer.
    """

    replied = Signal(int, object)
    failed = Signal(int, str)

    def __init__(self, endpoint: str, timeout_s: float = 2.0, context: zmq.Context | None = None,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self._context = context or zmq.Context.instance()
        self._wanted: int | None = None
        self._wake = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None

    def describe(self) -> str:
        return f"the pixel service {self.endpoint}"

    def start(self) -> "PixelService":
        """Start the request thread (idempotent; :meth:`request` starts it too)."""
        if self._thread is None:
            self._stop = False
            self._thread = threading.Thread(target=self._run, name="sxdm-viewer-pixels",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the request thread and close its socket (idempotent)."""
        with self._wake:
            self._stop = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def request(self, point: int) -> None:
        """Ask for map pixel ``point`` (flat index); replaces a request not yet sent."""
        with self._wake:
            self._wanted = int(point)
            self._wake.notify()
        self.start()

    def _next(self) -> int | None:
        with self._wake:
            while self._wanted is None and not self._stop:
                self._wake.wait()
            point, self._wanted = self._wanted, None
            return None if self._stop else point

    def _run(self) -> None:
        socket = None
        try:
            while (point := self._next()) is not None:
                socket = socket or self._socket()
                answered = self._ask(socket, point)
                if not answered:
                    # a REQ socket that got no reply cannot send again: start afresh
                    socket.close()
                    socket = None
        finally:
            if socket is not None:
                socket.close()

    def _socket(self) -> zmq.Socket:
        socket = self._context.socket(zmq.REQ)
        socket.setsockopt(zmq.LINGER, 0)
        socket.connect(self.endpoint)
        return socket

    def _ask(self, socket: zmq.Socket, point: int) -> bool:
        socket.send_multipart(encode_pixel_request(point))
        waited = 0.0
        while not socket.poll(100):
            waited += 0.1
            if self._stop:
                return False
            if waited >= self.timeout_s:
                self.failed.emit(point, f"no answer from {self.endpoint} in {self.timeout_s:g} s")
                return False
        try:
            self.replied.emit(point, decode_pixel_reply(socket.recv_multipart()))
        except BadMessageError as exc:
            self.failed.emit(point, str(exc))
        return True


def histogram_axes(header: dict, shape: tuple[int, ...]) -> list[np.ndarray]:
    """Bin centres (1/angstrom) of a pixel reply's histogram along qx, qy, qz.

    From ``header["grid"]`` (``QGrid.describe()``: lo, step, bins); bin indices when absent.
    """
    grid = header.get("grid") or {}
    if not grid:
        return [np.arange(n, dtype=float) for n in shape]
    return [float(lo) + float(step) * np.arange(int(n))
            for lo, step, n in zip(grid["lo"], grid["step"], shape)]


def histogram_projections(histogram: np.ndarray) -> dict[tuple[int, int], np.ndarray]:
    """The three 2D projections of a (bx, by, bz) histogram, keyed by the axes they keep:
    (0, 1) = qx-qy (summed over qz), (0, 2) = qx-qz, (1, 2) = qy-qz."""
    h = np.asarray(histogram, float)
    return {(0, 1): h.sum(axis=2), (0, 2): h.sum(axis=1), (1, 2): h.sum(axis=0)}
