"""The anchor of ``bench_stream.py``: the same images received by libertem-dectris (LiberTEM-live's
Rust receiver, PyPI ``libertem-dectris``, the ``bench`` extra), decoded into numpy and summed.

What it reads (libertem_dectris 0.3.2, ``src/background_thread.rs``): DECTRIS stream v1 only, a
PULL socket connected to the detector. A global header ``dheader-1.0`` whose ``header_detail``
is ``basic`` or ``all`` followed by ONE detector-configuration part (``ntrigger``, ``nimages``,
``trigger_mode``, ``x/y_pixels_in_detector``, ``bit_depth_image``), then per image exactly four
parts (``dimage-1.0`` with series, frame from 0 in order and a non-empty hash,
``dimage_d-1.0``, blob, ``dconfig-1.0``), then ``dseries_end-1.0``. Image encodings
``bs8/16/32-lz4<`` and ``lz4<`` only. So it cannot take stream v2 (CBOR) at all, and from our
sender's v1 neither a header ``all`` (its flatfield, mask and count-rate parts are read as the
first image) nor an appendix part (header or image), nor raw ``<`` images: the benchmark sends it
header ``basic`` without appendix, ``bs32-lz4<`` images (``stream_detector`` format
``libertem``).

Its frames/s is counted as ours is: from the first frame received (here: the first frame stack
handed over, its frames left out of the count) to the last frame summed.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from stream_detector import SHAPE, roi_bounds

FRAME_STACK = 32


def available() -> str | None:
    """None when libertem_dectris imports, else why not."""
    try:
        import libertem_dectris  # noqa: F401
    except ImportError as exc:
        return f"libertem-dectris is not installed (pip install -e '.[bench]'): {exc}"
    return None


def receive(endpoint: str, go, n_frames: int, roi: int | None, workdir: Path,
            timeout_s: float) -> dict:
    """Receive one series from ``endpoint``, decode every frame stack into a uint32 buffer and
    sum each frame's ROI; ``go`` (an Event) lets the sender start once the receiver is armed
    for it."""
    import libertem_dectris

    conn = libertem_dectris.DectrisConnection(
        uri=endpoint, frame_stack_size=FRAME_STACK, handle_path=str(workdir / "ld-shm.sock"),
        num_slots=16, bytes_per_frame=SHAPE[0] * SHAPE[1] * 4, huge=False)
    cam = None
    deadline = time.perf_counter() + timeout_s
    try:
        conn.start_passive(timeout=30.0)
        go.set()
        armed = None
        while armed is None and time.perf_counter() < deadline:
            armed = conn.wait_for_arm(timeout=1.0)
        if armed is None:
            return {"timed_out": True, "what": "libertem-dectris never saw the series start"}
        cam = libertem_dectris.CamClient(conn.get_socket_path())
        return _sum_stacks(conn, cam, n_frames, roi, deadline)
    finally:
        if cam is not None:
            cam.close()
        conn.close()


def _sum_stacks(conn, cam, n_frames: int, roi: int | None, deadline: float) -> dict:
    r0, r1, c0, c1 = roi_bounds(roi)
    buf = np.empty((FRAME_STACK,) + SHAPE, np.uint32)
    total, count, first, first_len, t_first = 0, 0, True, 0, None
    while time.perf_counter() < deadline:
        stack = conn.get_next_stack(max_size=FRAME_STACK)
        if stack is None:                     # the receiver is idle: the series is over
            break
        n = len(stack)
        if first:
            first, first_len, t_first = False, n, time.perf_counter()
        if n > buf.shape[0]:
            buf = np.empty((n,) + SHAPE, np.uint32)
        frames = buf[:n]
        try:
            cam.decode_range_into_buffer(stack, frames, 0, n)
        finally:
            cam.done(stack)
        total += int(frames[:, r0:r1, c0:c1].sum(axis=(1, 2), dtype=np.uint64).sum())
        count += n
    t_last = time.perf_counter()
    rate = (count - first_len) / (t_last - t_first) if t_first and t_last > t_first else 0.0
    return {"timed_out": count < n_frames, "frames/s": rate, "processed": count,
            "roi_total": total, "done_s": t_last,
            "what": f"libertem-dectris summed {count} of {n_frames} frames"}
