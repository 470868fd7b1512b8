"""Operando series over many scans: does memory stay flat, and does the particle series follow
the truth?

A simulated charge (:func:`sxdm_stream.simulators.operando.operando_sequence`) is streamed
scan after scan over a real ZeroMQ DECTRIS stream (bslz4) to a live processor writing an
operando series file. Printed: resident memory (VmRSS) of this process after scan 5 and at
the end, their ratio, the per-particle mean-d error against the truth, and the rate.

    .venv/bin/python benchmarks/bench_operando.py [--scans 50] [--shape 10 14] [--angles 7]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from sxdm_stream.config import Config
from sxdm_stream.messages import ImageFrame, SeriesEnd
from sxdm_stream.runtime.processor import LiveProcessor, LiveSettings
from sxdm_stream.simulators.operando import operando_sequence
from sxdm_stream.simulators.sender import series_start, with_operando
from sxdm_stream.sinks.timeseries import read_operando
from sxdm_stream.sources.dectris.sender import StreamSender


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def send(sender: StreamSender, scans, marks: dict, truth: list, live: LiveProcessor) -> None:
    """Build each scan's simulator only when it is sent (the processor's memory is measured)."""
    for k, scan in enumerate(scans, start=1):
        truth.append(scan.particle_d)
        sc = scan.scenario
        sender.send_start(with_operando(series_start(sc, k, f"op-{k}", f"charge-{k}"),
                                        scan.channels))
        for index, _, _, frame in sc.simulator.frames():
            sender.send_image(ImageFrame(k, index, frame, series_unique_id=f"op-{k}"))
        sender.send_end(SeriesEnd(k, f"op-{k}"))
        while live.status().completed < k:
            time.sleep(0.01)
        marks[k] = rss_mib()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scans", type=int, default=50)
    parser.add_argument("--shape", type=int, nargs=2, default=(10, 14))
    parser.add_argument("--angles", type=int, default=7)
    args = parser.parse_args()
    scans = operando_sequence(args.scans, shape=tuple(args.shape), n_angles=args.angles)
    truth: list[tuple[float, ...]] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "series.h5"
        sender = StreamSender("tcp://127.0.0.1:*")
        live = LiveProcessor(sender.endpoint, out=Path(tmp) / "maps_{series_id}.h5", operando=path,
                             settings=Config(live=LiveSettings(checkpoints=False)),
                             max_series=args.scans)
        marks: dict[int, float] = {}
        live.start()
        t0 = time.perf_counter()
        thread = threading.Thread(target=send, args=(sender, scans, marks, truth, live))
        thread.start()
        thread.join()
        live.wait(60)
        elapsed = time.perf_counter() - t0
        live.stop()
        sender.close()
        series = read_operando(path)
    table = series["particles"]
    errors = []
    for k, particle_d in enumerate(truth):
        rows = table["record"] == k
        measured = table["mean_d_a"][rows][np.argsort(table["centroid_col_um"][rows])]
        if len(measured) == len(particle_d):
            errors.append(np.abs(measured - np.array(particle_d)))
    errors = np.array(errors)
    frames = args.scans * args.shape[0] * args.shape[1] * args.angles
    first = min(5, args.scans)
    print(f"{args.scans} scans of {args.shape[0]}x{args.shape[1]} points x {args.angles} angles "
          f"({frames} frames) in {elapsed:.1f} s, {frames / elapsed:.0f} frames/s")
    print(f"records in the series file: {series['records']}; scans with both particles found: "
          f"{len(errors)}")
    print(f"per-particle mean d error vs truth: max {errors.max():.2e} A, "
          f"RMS {np.sqrt(np.mean(errors ** 2)):.2e} A")
    print(f"VmRSS after scan {first}: {marks[first]:.1f} MiB; after scan {args.scans}: "
          f"{marks[args.scans]:.1f} MiB; ratio {marks[args.scans] / marks[first]:.3f}")


if __name__ == "__main__":
    main()
