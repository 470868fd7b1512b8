"""The detector process of ``bench_stream.py``: one series of 516 x 516 uint32 frames on a PUSH
socket, as DECTRIS stream v2 (CBOR) or v1 (JSON multipart).

To measure the receivers and not this process, a pool of distinct images is encoded once and
each image message only wraps a pool entry with its image id. Three framings of the same
images (the same bslz4 or raw payload bytes):

``cbor``      stream v2, the start carrying the scan in ``user_data`` (our processor)
``legacy``    stream v1, header ``all`` with the scan as its appendix (our processor)
``libertem``  stream v1, header ``basic`` without appendix: what libertem-dectris reads (it
              takes the part after the detector configuration for the first image, so it
              stops on an appendix or on the flatfield/mask parts of ``all``)
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass

import numpy as np

from sxdm_stream.core.geometry import Detector, Geometry
from sxdm_stream.core.scan import ScanDescription
from sxdm_stream.messages import SXDM_KEY, ImageFrame, SeriesEnd, SeriesStart

SHAPE = (516, 516)
MAP = (60, 60)                                  # map pixels: 3600 frames per rocking angle
FORMATS = ("cbor", "legacy", "libertem")
SERIES_ID = 1


@dataclass(frozen=True)
class StreamSpec:
    """One series as the detector process sends it.

    n_frames : images, whole rocking angles of ``map_shape`` (see :func:`whole_angles`).
    density : fraction of non-zero pixels.
    compression : "bslz4" or None (raw little-endian pixels).
    roi : side of the square detector ROI the start message declares (None: whole detector).
    rate : images/s the sender keeps to (None: as fast as the receiver takes them).
    pool_size : distinct pre-encoded images.
    fmt : one of :data:`FORMATS`.
    map_shape : the scan's map (the warm-up runs use a small one).
    """

    n_frames: int
    density: float
    compression: str | None
    roi: int | None
    rate: float | None
    pool_size: int
    fmt: str = "cbor"
    map_shape: tuple[int, int] = MAP


def whole_angles(n_frames: int, map_shape: tuple[int, int] = MAP) -> int:
    """``n_frames`` rounded up to whole rocking angles of the map: a series whose frame count
    differs from its scan's is refused (``frame_count_mismatch``)."""
    points = map_shape[0] * map_shape[1]
    return max(1, -(-n_frames // points)) * points


def make_scan(n_frames: int, map_shape: tuple[int, int] = MAP) -> ScanDescription:
    """The map with one rocking angle per map's worth of frames (``n_frames`` whole angles)."""
    n_angles = whole_angles(n_frames, map_shape) // (map_shape[0] * map_shape[1])
    extent = 0.1 * (map_shape[0] - 1), 0.1 * (map_shape[1] - 1)
    return ScanDescription(shape=map_shape, extents_um=((0, extent[0]), (0, extent[1])),
                           rocking_angles=tuple(9.05 + 0.01 * np.arange(n_angles)),
                           fixed_angles={"phi": 0.0, "nu": 0.0, "delta": 18.1})


def roi_bounds(roi: int | None) -> tuple[int, int, int, int]:
    """Rows r0:r1 and columns c0:c1 of a centred square ROI of side ``roi`` (None: all)."""
    if roi is None:
        return 0, SHAPE[0], 0, SHAPE[1]
    c = SHAPE[0] // 2
    return c - roi // 2, c + roi // 2, c - roi // 2, c + roi // 2


def make_geometry(roi: int | None) -> Geometry:
    c = SHAPE[0] // 2
    det = Detector(SHAPE, 55e-6, 0.6, (c, c), roi=None if roi is None else roi_bounds(roi))
    return Geometry(det, 8330.0)


def make_pool(spec: StreamSpec) -> list[np.ndarray]:
    """The distinct images, seeded: Poisson counts (+1) on ``density`` of the pixels."""
    rng = np.random.default_rng(1)
    pool = []
    for _ in range(spec.pool_size):
        frame = np.zeros(SHAPE, np.uint32)
        hits = rng.random(SHAPE) < spec.density
        frame[hits] = rng.poisson(3.0, int(hits.sum())) + 1
        pool.append(frame)
    return pool


def expected_roi_total(spec: StreamSpec, pool: list[np.ndarray]) -> int:
    """Sum of the ROI's pixels over the whole series: what a receiver that sums every frame
    must find."""
    r0, r1, c0, c1 = roi_bounds(spec.roi)
    sums = [int(f[r0:r1, c0:c1].sum(dtype=np.uint64)) for f in pool]
    full, rest = divmod(spec.n_frames, len(pool))
    return full * sum(sums) + sum(sums[:rest])


def start_message(spec: StreamSpec) -> list[bytes]:
    """The series start in ``spec.fmt``."""
    from sxdm_stream.sources.dectris.codec import encode_start_v1, encode_start_v2

    scan, geometry = make_scan(spec.n_frames, spec.map_shape), make_geometry(spec.roi)
    user_data = {SXDM_KEY: {"scan": scan.describe(), "geometry": geometry.describe()}}
    start = SeriesStart(SERIES_ID, "bench", SHAPE, "uint32", spec.n_frames, 8330.0,
                        pixel_size_m=55e-6,
                        user_data=None if spec.fmt == "libertem" else user_data)
    if spec.fmt == "cbor":
        return [encode_start_v2(start)]
    return encode_start_v1(start, header_detail="basic" if spec.fmt == "libertem" else "all")


class ImageMessages:
    """The image messages of a series in ``spec.fmt``, pool entries encoded once."""

    def __init__(self, spec: StreamSpec, pool: list[np.ndarray]) -> None:
        from sxdm_stream.sources.dectris.codec import encode_image_v1
        from sxdm_stream.sources.dectris.compression import encode_array

        self.v2 = spec.fmt == "cbor"
        if self.v2:
            self.pool = [(f, encode_array(f, spec.compression)) for f in pool]
            return
        encoding = "bslz4" if spec.compression == "bslz4" else "<"
        # parts: dimage (image id: made per frame), dimage_d, blob, dconfig (no times: zeros)
        self.pool = [encode_image_v1(ImageFrame(SERIES_ID, 0, f, "bench"), encoding)
                     for f in pool]
        self.hashes = [hashlib.md5(parts[1]).hexdigest() for parts in self.pool]

    def message(self, i: int) -> list:
        """Image ``i`` (pool entry ``i % pool_size``)."""
        k = i % len(self.pool)
        if self.v2:
            from sxdm_stream.sources.dectris.codec import encode_image_v2

            frame, encoded = self.pool[k]
            return [encode_image_v2(ImageFrame(SERIES_ID, i, frame, "bench"), encoded=encoded)]
        parts = self.pool[k]
        head = json.dumps({"htype": "dimage-1.0", "series": SERIES_ID, "frame": i,
                           "hash": self.hashes[k]}, separators=(",", ":")).encode()
        return [head, *parts[1:]]


def end_message(spec: StreamSpec) -> list[bytes]:
    from sxdm_stream.sources.dectris.codec import encode_end_v1, encode_end_v2

    end = SeriesEnd(SERIES_ID, "bench")
    return [encode_end_v2(end)] if spec.fmt == "cbor" else encode_end_v1(end)


def sender(reports, go, spec: StreamSpec) -> None:
    """The detector process: bind PUSH, report the endpoint, wait for ``go``, send start,
    images, end; report the send rate, the send rate over the second half (``steady/s``:
    under backpressure, once the receiver's queues are full, the rate at which it takes
    images), the first image's send time (perf_counter: one clock for every process of the
    machine) and the ROI total of the series."""
    import zmq

    pool = make_pool(spec)
    images = ImageMessages(spec, pool)
    sock = zmq.Context.instance().socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 64)
    sock.bind("tcp://127.0.0.1:*")
    reports.put(sock.getsockopt_string(zmq.LAST_ENDPOINT))
    if not go.wait(600):
        sock.close(linger=0)
        return
    sock.send_multipart(start_message(spec))
    t0 = time.perf_counter()
    half, t_half = spec.n_frames // 2, t0
    for i in range(spec.n_frames):
        if spec.rate:
            delay = t0 + i / spec.rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        if i == half:
            t_half = time.perf_counter()
        sock.send_multipart(images.message(i), copy=False)
    t_end = time.perf_counter()
    sock.send_multipart(end_message(spec))
    reports.put({"sent/s": spec.n_frames / (t_end - t0), "first_sent_s": t0,
                 "steady/s": (spec.n_frames - half) / (t_end - t_half) if t_end > t_half else None,
                 "roi_total": expected_roi_total(spec, pool)})
    # wait until the end message is out, however far behind the receiver is (a linger of a
    # few seconds would drop it and leave the receiver waiting): the benchmark ends this
    # process if the receiver never takes it
    sock.close(linger=-1)
    zmq.Context.instance().term()
