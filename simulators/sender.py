"""A simulated detector on the network: sends a scan as a DECTRIS-compliant stream.

Binds a ZeroMQ PUSH socket like a DCU (port 31001 by convention for stream v2) and sends one
series per scan: the start message (image size, energy, pixel size, beam centre, distance,
the pixel mask, and in ``user_data`` our scan and geometry description with a correlation
id), one image message per frame (bslz4-compressed by default, measured positions in the
image ``user_data``), and the end message. The socket and the encoding are
:class:`sxdm_stream.sources.dectris.sender.StreamSender`'s, shared with the replay of recorded acquisitions.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import uuid
from typing import Iterable

import zmq

from sxdm_stream.messages import SXDM_KEY, ImageFrame, SeriesEnd, SeriesStart
from sxdm_stream.sources.dectris.sender import (COMPRESSIONS, FORMATS, Pacer, StreamSender,
                                                describing_start, positions_user_data)

from .scenarios import Scenario

log = logging.getLogger(__name__)

__all__ = ["COMPRESSIONS", "FORMATS", "SimulatedDetector", "frame_positions", "series_start"]


def series_start(scenario: Scenario, series_id: int, series_unique_id: str,
                 correlation_id: str) -> SeriesStart:
    """The start message describing ``scenario``'s scan, as our simulator sends it."""
    return describing_start(scenario.scan, scenario.geometry, series_id, series_unique_id,
                            correlation_id)


def with_operando(start: SeriesStart, channels: dict | None) -> SeriesStart:
    """``start`` with electrochemistry ``channels`` ({name: {"value", "units"}}) in its sxdm
    block, as a beamline adds them to each scan of an operando series (None: unchanged)."""
    if not channels:
        return start
    return dataclasses.replace(start, user_data={SXDM_KEY: {**start.sxdm,
                                                            "operando": dict(channels)}})


def frame_positions(scenario: Scenario, frame_index: int) -> dict[str, float]:
    """Measured positions of a frame: the nominal grid position of its map pixel and angle."""
    scan = scenario.scan
    angle, point = scan.locate(frame_index)
    row, col = divmod(point, scan.shape[1])
    return {scan.motors[0]: float(scan.axis_um(0)[row]), scan.motors[1]: float(scan.axis_um(1)[col]),
            scan.rocking_axis: scan.rocking_angles[angle]}


class SimulatedDetector:
    """Sends simulated scans over a PUSH socket bound to ``endpoint`` (loopback by default).

    ``rate_hz`` paces the images (None: as fast as the receiver takes them).
    """

    def __init__(self, scenario: Scenario, endpoint: str = "tcp://127.0.0.1:31001",
                 fmt: str = "cbor", compression: str = "bslz4", rate_hz: float | None = None,
                 positions: bool = True, context: zmq.Context | None = None, hwm: int = 64) -> None:
        self.sender = StreamSender(endpoint, fmt, compression, context, hwm)
        self.scenario, self.fmt, self.compression = scenario, fmt, compression
        self.rate_hz, self.positions = rate_hz, positions
        self.socket = self.sender.socket
        self.endpoint = self.sender.endpoint
        self.sent = 0

    def close(self) -> None:
        self.sender.close()

    def send_series(self, series_id: int = 1, series_unique_id: str | None = None,
                    frames: Iterable[int] | None = None, correlation_id: str | None = None,
                    stop: threading.Event | None = None, send_end: bool = True,
                    operando: dict | None = None) -> int:
        """Send start, the images (``frames``: indices, default all) and end; returns images sent.

        ``operando``: electrochemistry channels ({name: {"value", "units"}}) put in the start's
        sxdm block, as a beamline adds them to each scan of an operando series.
        """
        unique = series_unique_id or uuid.uuid4().hex
        start = with_operando(series_start(self.scenario, series_id, unique,
                                           correlation_id or unique), operando)
        if not self.sender.send_start(start, stop):
            return 0
        indices = range(self.scenario.scan.n_frames) if frames is None else frames
        sent, pacer = 0, Pacer(self.rate_hz)
        for index in indices:
            pacer.wait_at(stop=stop)
            if not self.sender.send_image(self._image(series_id, unique, index), stop):
                return sent
            sent += 1
            self.sent += 1
        if send_end:
            self.sender.send_end(SeriesEnd(series_id, unique), stop)
        return sent

    def _image(self, series_id: int, unique: str, index: int) -> ImageFrame:
        angle, point = self.scenario.scan.locate(index)
        data = self.scenario.simulator.frame(angle, point)
        user = positions_user_data(frame_positions(self.scenario, index)) if self.positions else None
        return ImageFrame(series_id=series_id, image_id=index, data=data, series_unique_id=unique,
                          user_data=user)
