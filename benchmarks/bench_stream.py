"""End-to-end streaming benchmark: detector process -> ZeroMQ -> live processor.

A sender process plays a DECTRIS stream v2 detector (PUSH, bound on loopback) of 516 x 516
uint32 frames with a given fraction of non-zero pixels, bslz4-compressed or uncompressed. To
measure the processor and not the simulator, the sender pre-encodes a pool of distinct images
and only wraps each in its CBOR image message (image_id, times) when sending. The processor
(this process) is the real :class:`sxdm_stream.runtime.processor.LiveProcessor`: receive, decode,
accumulate (moments + 32^3 histogram), publish snapshots (10 Hz) on a PUB socket.

Printed per run: sustained frames/s (first image received to last processed), images dropped,
and the frame-to-snapshot latency p50/p99 (from the frame's arrival at the processor to the
publication of the first snapshot that includes it). With ``--policy block`` (default) nothing
can be dropped and the sender is slowed to the processor's pace; with ``--policy drop --rate R``
the sender keeps its rate and what the processor cannot take is dropped and counted.
``--frames`` is rounded up to whole rocking angles of the 60 x 60 map (a series whose frame
count is not its scan's is refused); a run that has not ended after ``--timeout`` seconds
prints what it got and the benchmark exits 1.

    .venv/bin/python benchmarks/bench_stream.py                  # both payloads, full frame + ROI
    .venv/bin/python benchmarks/bench_stream.py --frames 20000 --policy drop --rate 4000
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from sxdm_stream.config import Config  # noqa: E402
from sxdm_stream.core.accumulate import AccumulationSettings  # noqa: E402
from sxdm_stream.core.geometry import Detector, Geometry  # noqa: E402
from sxdm_stream.core.scan import ScanDescription  # noqa: E402
from sxdm_stream.messages import SXDM_KEY, ImageFrame, SeriesEnd, SeriesStart  # noqa: E402
from sxdm_stream.runtime.processor import LiveProcessor, LiveSettings  # noqa: E402

SHAPE = (516, 516)
MAP = (60, 60)                                  # map pixels: 3600 frames per rocking angle


def whole_angles(n_frames: int) -> int:
    """``n_frames`` rounded up to whole rocking angles of the 60 x 60 map: a series whose
    frame count differs from its scan's is refused (``frame_count_mismatch``)."""
    points = MAP[0] * MAP[1]
    return max(1, -(-n_frames // points)) * points


def make_scan(n_frames: int) -> ScanDescription:
    """The 60 x 60 map with one rocking angle per 3600 frames (``n_frames`` is whole angles)."""
    n_angles = whole_angles(n_frames) // (MAP[0] * MAP[1])
    return ScanDescription(shape=MAP, extents_um=((0, 5.9), (0, 5.9)),
                           rocking_angles=tuple(9.05 + 0.01 * np.arange(n_angles)),
                           fixed_angles={"phi": 0.0, "nu": 0.0, "delta": 18.1})


def make_geometry(roi: int | None) -> Geometry:
    c = SHAPE[0] // 2
    det = Detector(SHAPE, 55e-6, 0.6, (c, c),
                   roi=None if roi is None else (c - roi // 2, c + roi // 2, c - roi // 2, c + roi // 2))
    return Geometry(det, 8330.0)


def sender(endpoint_queue, n_frames: int, density: float, compression: str | None,
           roi: int | None, rate: float | None, pool_size: int) -> None:
    """The detector process: bind PUSH, send start, n_frames images, end."""
    import zmq

    from sxdm_stream.sources.dectris.codec import encode_end_v2, encode_image_v2, encode_start_v2
    from sxdm_stream.sources.dectris.compression import encode_array

    rng = np.random.default_rng(1)
    pool = []
    for _ in range(pool_size):
        frame = np.zeros(SHAPE, np.uint32)
        hits = rng.random(SHAPE) < density
        frame[hits] = rng.poisson(3.0, int(hits.sum())) + 1
        pool.append((frame, encode_array(frame, compression)))
    scan, geometry = make_scan(n_frames), make_geometry(roi)
    sock = zmq.Context.instance().socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 64)
    sock.bind("tcp://127.0.0.1:*")
    endpoint_queue.put(sock.getsockopt_string(zmq.LAST_ENDPOINT))
    start = SeriesStart(1, "bench", SHAPE, "uint32", n_frames, 8330.0, pixel_size_m=55e-6,
                        user_data={SXDM_KEY: {"scan": scan.describe(), "geometry": geometry.describe()}})
    sock.send(encode_start_v2(start))
    t0 = time.perf_counter()
    for i in range(n_frames):
        if rate:
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        frame, encoded = pool[i % pool_size]
        sock.send(encode_image_v2(ImageFrame(1, i, frame, "bench"), encoded=encoded))
    sent_s = time.perf_counter() - t0
    sock.send(encode_end_v2(SeriesEnd(1, "bench")))
    endpoint_queue.put(n_frames / sent_s)
    # wait until the end message is out, however far behind the processor is (a linger of a
    # few seconds would drop it and leave the processor waiting): run() ends this process if
    # the processor never takes it
    sock.close(linger=-1)
    zmq.Context.instance().term()


def run(n_frames: int, density: float, compression: str | None, roi: int | None,
        policy: str, rate: float | None, pool_size: int, timeout_s: float) -> dict:
    """One series through a fresh processor; ``timed_out`` says whether it ended within
    ``timeout_s`` (the sender process is ended in any case)."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=sender, args=(q, n_frames, density, compression, roi, rate, pool_size))
    proc.start()
    result = {"timed_out": True, "what": "interrupted"}
    try:
        result = _measure(q, policy, timeout_s)
        return result
    finally:
        proc.join(0 if result["timed_out"] else 10)
        if proc.is_alive():                     # blocked on a processor that stopped taking
            proc.terminate()
            proc.join()


def _measure(q, policy: str, timeout_s: float) -> dict:
    try:
        endpoint = q.get(timeout=120)
    except queue.Empty:
        return {"timed_out": True, "what": "the sender never bound its socket"}
    settings = Config(accumulation=AccumulationSettings(histogram_bins=(32, 32, 32)),
                      live=LiveSettings(policy=policy, snapshot_max_hz=10.0))
    live = LiveProcessor(endpoint, publish="tcp://127.0.0.1:*", settings=settings, max_series=1)
    with live:
        ended = live.wait(timeout_s)
    try:
        send_rate = q.get(timeout=10 if ended else 0.1)
    except queue.Empty:                         # the sender is still sending
        send_rate = float("nan")
    s = live.status()
    return {"sent/s": send_rate, "frames/s": s.frames_per_s, "processed": s.processed,
            "dropped": s.dropped, "rejected": sum(s.rejected.values()),
            "p50 ms": 1000 * (s.latency_p50_s or float("nan")),
            "p99 ms": 1000 * (s.latency_p99_s or float("nan")), "timed_out": not ended,
            "what": f"received {s.received} images, processed {s.processed}, dropped "
                    f"{s.dropped}, rejected {dict(s.rejected) or 'none'}"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=20000,
                   help="images per run, rounded up to whole rocking angles of 3600")
    p.add_argument("--density", type=float, default=0.05, help="fraction of non-zero pixels")
    p.add_argument("--policy", choices=["block", "drop"], default="block")
    p.add_argument("--rate", type=float, help="sender images/s (default: as fast as possible)")
    p.add_argument("--pool", type=int, default=64, help="distinct pre-encoded images")
    p.add_argument("--roi", type=int, nargs="*", default=[0, 128],
                   help="square detector ROI sizes to run (0 = whole detector)")
    p.add_argument("--compression", nargs="*", default=["bslz4", "none"])
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds a run may take; past them, what it got is printed, exit 1")
    args = p.parse_args(argv)
    frames = whole_angles(args.frames)
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()}, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS')}")
    print(f"{frames} frames 516x516 uint32 ({frames // (MAP[0] * MAP[1])} rocking angles of "
          f"{MAP[0]}x{MAP[1]}), {100 * args.density:.0f}% non-zero, policy "
          f"{args.policy}, sender rate {args.rate or 'max'}, snapshots 10 Hz, 32^3 histogram")
    cols = ["sent/s", "frames/s", "processed", "dropped", "rejected", "p50 ms", "p99 ms"]
    print(f"{'payload':>8} {'roi':>6} " + " ".join(f"{c:>10}" for c in cols))
    for compression in args.compression:
        for roi in args.roi:
            r = run(frames, args.density, None if compression == "none" else compression,
                    roi or None, args.policy, args.rate, args.pool, args.timeout)
            if r["timed_out"]:
                print(f"{compression:>8} {roi or 'full':>6} timed out after {args.timeout:.0f} s: "
                      f"{r['what']}", flush=True)
                return 1
            print(f"{compression:>8} {roi or 'full':>6} " + " ".join(
                f"{r[c]:>10.0f}" for c in cols), flush=True)
    print(f"load after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
