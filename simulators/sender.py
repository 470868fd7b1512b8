"""A simulated detector on the network: sends a scan as a DECTRIS-compliant stream.

Binds a ZeroMQ PUSH socket like a DCU (port 31001 by convention for stream v2) and sends one
series per scan: the start message (image size, energy, pixel size, beam centre, distance,
the pixel mask, and in ``user_data`` our scan and geometry description with a correlation
id), one image message per frame (bslz4-compressed by default, measured positions in the
image ``user_data``), and the end message. PUSH blocks when the receiver's queues are full:
a slow processor slows the sender, as it slows a real detector.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Iterable

import zmq

from sxdm_stream.dectris import (encode_end_v1, encode_end_v2, encode_image_v1, encode_image_v2,
                                 encode_start_v1, encode_start_v2)
from sxdm_stream.messages import SXDM_KEY, SXDM_METADATA_VERSION, ImageFrame, SeriesEnd, SeriesStart

from .scenarios import Scenario

log = logging.getLogger(__name__)

FORMATS = ("cbor", "legacy")
COMPRESSIONS = ("bslz4", "lz4", "none")
_V1_ENCODING = {"bslz4": "bs32-lz4<", "lz4": "lz4<", "none": "<"}


def series_start(scenario: Scenario, series_id: int, series_unique_id: str,
                 correlation_id: str) -> SeriesStart:
    """The start message describing ``scenario``'s scan, as our simulator sends it."""
    geo, scan = scenario.geometry, scenario.scan
    det = geo.detector
    return SeriesStart(
        series_id=series_id, series_unique_id=series_unique_id, image_shape=tuple(det.shape),
        image_dtype="uint32", number_of_images=scan.n_frames, energy_ev=geo.energy_ev,
        wavelength_a=geo.wavelength_a, pixel_size_m=det.pixel_size_m,
        beam_center=tuple(det.beam_center), detector_distance_m=det.distance_m,
        pixel_mask=det.mask,
        user_data={SXDM_KEY: {"version": SXDM_METADATA_VERSION, "scan": scan.describe(),
                              "geometry": geo.describe(), "correlation_id": correlation_id}},
    )


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
        if fmt not in FORMATS:
            raise ValueError(f"stream format {fmt!r} is not one of {FORMATS}")
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression {compression!r} is not one of {COMPRESSIONS}")
        self.scenario, self.fmt, self.compression = scenario, fmt, compression
        self.rate_hz, self.positions = rate_hz, positions
        self._context = context or zmq.Context.instance()
        self.socket = self._context.socket(zmq.PUSH)
        self.socket.setsockopt(zmq.SNDHWM, hwm)
        self.socket.setsockopt(zmq.LINGER, 2000)
        self.socket.bind(endpoint)
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.sent = 0

    def close(self) -> None:
        self.socket.close()

    def send_series(self, series_id: int = 1, series_unique_id: str | None = None,
                    frames: Iterable[int] | None = None, correlation_id: str | None = None,
                    stop: threading.Event | None = None, send_end: bool = True) -> int:
        """Send start, the images (``frames``: indices, default all) and end; returns images sent."""
        unique = series_unique_id or uuid.uuid4().hex
        start = series_start(self.scenario, series_id, unique, correlation_id or unique)
        if not self._send(self._encode_start(start), stop):
            return 0
        indices = range(self.scenario.scan.n_frames) if frames is None else frames
        sent, t0 = 0, time.perf_counter()
        for index in indices:
            if self.rate_hz:
                delay = t0 + sent / self.rate_hz - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            if not self._send(self._encode_image(self._image(series_id, unique, index)), stop):
                return sent
            sent += 1
            self.sent += 1
        if send_end:
            self._send(self._encode_end(SeriesEnd(series_id, unique)), stop)
        return sent

    def _image(self, series_id: int, unique: str, index: int) -> ImageFrame:
        angle, point = self.scenario.scan.locate(index)
        data = self.scenario.simulator.frame(angle, point)
        user = {SXDM_KEY: {"positions": frame_positions(self.scenario, index)}} if self.positions else None
        return ImageFrame(series_id=series_id, image_id=index, data=data, series_unique_id=unique,
                          user_data=user)

    def _send(self, parts, stop: threading.Event | None) -> bool:
        """Send, waiting for the receiver as long as needed; False if ``stop`` was set."""
        parts = parts if isinstance(parts, list) else [parts]
        while not self.socket.poll(100, zmq.POLLOUT):
            if stop is not None and stop.is_set():
                return False
        self.socket.send_multipart(parts)
        return True

    def _encode_start(self, start: SeriesStart):
        if self.fmt == "cbor":
            return encode_start_v2(start)
        return encode_start_v1(start, header_detail="all", appendix=start.user_data)

    def _encode_image(self, image: ImageFrame):
        if self.fmt == "cbor":
            return encode_image_v2(image, compression=None if self.compression == "none" else self.compression)
        return encode_image_v1(image, encoding=_V1_ENCODING[self.compression])

    def _encode_end(self, end: SeriesEnd):
        return encode_end_v2(end) if self.fmt == "cbor" else encode_end_v1(end)

