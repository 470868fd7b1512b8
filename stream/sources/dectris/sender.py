"""A DECTRIS-compliant stream sender: what a detector's DCU does on its PUSH socket.

Shared by everything that plays a detector: the simulator (``simulators.sender``) and the
replay of recordings and beamline files (:mod:`sxdm_stream.sources.recordings.replay`). It binds a ZeroMQ PUSH
socket (port 31001 by convention for stream v2), encodes our messages as stream v2 (CBOR) or
v1 (legacy multipart) with the codec of :mod:`sxdm_stream.sources.dectris.codec`, and waits for the receiver
when its queues are full: a slow processor slows the sender, as it slows a real detector.
Closing it waits for the receiver to take what is still queued (the end of a series, often)
rather than dropping it: up to a long, configurable linger, and the log says when it gave up.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Sequence

import zmq

from sxdm_stream.core.geometry import Geometry
from sxdm_stream.core.scan import ScanDescription
from sxdm_stream.messages import SXDM_KEY, SXDM_METADATA_VERSION, ImageFrame, SeriesEnd, SeriesStart
from sxdm_stream.sources.dectris.codec import (encode_end_v1, encode_end_v2, encode_image_v1,
                                               encode_image_v2, encode_start_v1, encode_start_v2)

FORMATS = ("cbor", "legacy")
COMPRESSIONS = ("bslz4", "lz4", "none")
_V1_ENCODING = {"bslz4": "bslz4", "lz4": "lz4<", "none": "<"}  # bslz4: bs<pixel bits>-lz4<
#: how long closing a sender waits for the receiver to take the messages still queued: a
#: processor can be many seconds behind its detector (its own queues hold hundreds of frames)
CLOSE_LINGER_S = 60.0

log = logging.getLogger(__name__)


def describing_start(scan: ScanDescription, geometry: Geometry, series_id: int,
                     series_unique_id: str, correlation_id: str,
                     image_dtype: str = "uint32") -> SeriesStart:
    """The start message of a series that describes its own scan (``user_data`` sxdm block).

    Parameters
    ----------
    scan, geometry : what the processor needs to join and accumulate the frames.
    series_id, series_unique_id : the DECTRIS series identifiers.
    correlation_id : joins the series to a control-system run (here: to itself).
    image_dtype : dtype of the images, as the detector announces it.
    """
    det = geometry.detector
    return SeriesStart(
        series_id=series_id, series_unique_id=series_unique_id, image_shape=tuple(det.shape),
        image_dtype=image_dtype, number_of_images=scan.n_frames, energy_ev=geometry.energy_ev,
        wavelength_a=geometry.wavelength_a, pixel_size_m=det.pixel_size_m,
        beam_center=tuple(det.beam_center), detector_distance_m=det.distance_m,
        pixel_mask=det.mask,
        user_data={SXDM_KEY: {"version": SXDM_METADATA_VERSION, "scan": scan.describe(),
                              "geometry": geometry.describe(), "correlation_id": correlation_id}},
    )


def positions_user_data(positions: dict[str, float] | None) -> dict | None:
    """Image ``user_data`` carrying a frame's measured positions (None: no positions)."""
    return None if positions is None else {SXDM_KEY: {"positions": positions}}


class Pacer:
    """Paces a sequence of sends to ``rate_hz`` per second (None: no pacing)."""

    def __init__(self, rate_hz: float | None = None) -> None:
        if rate_hz is not None and not rate_hz > 0:
            raise ValueError(f"a send rate must be positive, got {rate_hz}")
        self.rate_hz = rate_hz
        self._t0: float | None = None
        self._count = 0

    def wait_at(self, due_s: float | None = None, stop: threading.Event | None = None) -> None:
        """Wait for the next send: ``due_s`` seconds after the first one if given, else one
        period after the previous one."""
        now = time.perf_counter()
        if self._t0 is None:
            self._t0 = now
        if due_s is None:
            if self.rate_hz is None:
                return
            due_s = self._count / self.rate_hz
        self._count += 1
        delay = self._t0 + due_s - now
        if delay > 0:
            (stop or threading.Event()).wait(delay)


class StreamSender:
    """A PUSH socket bound to ``endpoint`` that sends DECTRIS stream v2 or v1 messages.

    Parameters
    ----------
    endpoint : where to bind, e.g. "tcp://127.0.0.1:31001" ("tcp://127.0.0.1:*": any port;
        the bound one is :attr:`endpoint`).
    fmt : "cbor" (stream v2) or "legacy" (stream v1).
    compression : "bslz4", "lz4" or "none": how images are encoded.
    hwm : send high-water mark (messages queued before PUSH blocks).
    context : the ZeroMQ context of the socket; by default one of its own, which :meth:`close`
        terminates (and so knows when the queue is empty).
    close_linger_s : how long :meth:`close` waits for the receiver to take what is queued
        (None: as long as it takes).
    """

    def __init__(self, endpoint: str = "tcp://127.0.0.1:31001", fmt: str = "cbor",
                 compression: str = "bslz4", context: zmq.Context | None = None,
                 hwm: int = 64, close_linger_s: float | None = CLOSE_LINGER_S) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"stream format {fmt!r} is not one of {FORMATS}")
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression {compression!r} is not one of {COMPRESSIONS}")
        if close_linger_s is not None and not close_linger_s > 0:
            raise ValueError(f"close_linger_s must be positive or None, got {close_linger_s}")
        self.fmt, self.compression = fmt, compression
        self.close_linger_s = close_linger_s
        self._own_context = context is None
        self._context = zmq.Context() if context is None else context
        self.socket = self._context.socket(zmq.PUSH)
        self.socket.setsockopt(zmq.SNDHWM, hwm)
        self.socket.setsockopt(zmq.LINGER, self._linger_ms())   # for a close not made here
        self.socket.bind(endpoint)
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def close(self) -> None:
        """Close the socket once the receiver has taken every message still queued.

        Waits up to :attr:`close_linger_s` (None: as long as it takes); ZeroMQ drops what is
        still queued then, and a warning says so. A receiver that closed its socket takes
        nothing more: closing then returns at once. With a context of the caller's, its
        ``term()`` does the waiting, and nothing is logged here.
        """
        linger_s = self.close_linger_s
        began = time.monotonic()
        self.socket.close(linger=self._linger_ms())
        if not self._own_context:
            return
        self._context.term()                  # once the queue is empty, or the linger over
        waited = time.monotonic() - began
        # term() returns early only when everything was sent: a wait of the whole linger
        # means it gave up (zmq has no count of what it dropped)
        if linger_s is not None and waited >= linger_s - 0.01:
            log.warning("closing the stream sender on %s gave up after %.0f s: the receiver, "
                        "still connected, did not take the messages queued (the end of the "
                        "series among them?), which are dropped; close_linger_s sets the wait",
                        self.endpoint, waited)

    def _linger_ms(self) -> int:
        return -1 if self.close_linger_s is None else round(self.close_linger_s * 1000)

    def send_parts(self, parts: Sequence[bytes] | bytes,
                   stop: threading.Event | None = None) -> bool:
        """Send one message, waiting for the receiver as long as needed; False if ``stop``
        was set while waiting."""
        parts = [parts] if isinstance(parts, (bytes, bytearray, memoryview)) else list(parts)
        while not self.socket.poll(100, zmq.POLLOUT):
            if stop is not None and stop.is_set():
                return False
        self.socket.send_multipart(parts, copy=False)
        return True

    def send_start(self, start: SeriesStart, stop: threading.Event | None = None) -> bool:
        return self.send_parts(self.encode_start(start), stop)

    def send_image(self, image: ImageFrame, stop: threading.Event | None = None,
                   encoded=None) -> bool:
        """Send an image; ``encoded`` (stream v2 only): its data already encoded as the
        DECTRIS array tag (:func:`sxdm_stream.sources.dectris.compression.bslz4_array_tag`), sent as is."""
        if encoded is not None and self.fmt == "cbor":
            return self.send_parts(encode_image_v2(image, encoded=encoded), stop)
        return self.send_parts(self.encode_image(image), stop)

    def send_end(self, end: SeriesEnd, stop: threading.Event | None = None) -> bool:
        return self.send_parts(self.encode_end(end), stop)

    def encode_start(self, start: SeriesStart):
        if self.fmt == "cbor":
            return encode_start_v2(start)
        return encode_start_v1(start, header_detail="all", appendix=start.user_data)

    def encode_image(self, image: ImageFrame):
        if self.fmt == "cbor":
            compression = None if self.compression == "none" else self.compression
            return encode_image_v2(image, compression=compression)
        return encode_image_v1(image, encoding=_V1_ENCODING[self.compression])

    def encode_end(self, end: SeriesEnd):
        return encode_end_v2(end) if self.fmt == "cbor" else encode_end_v1(end)
