"""The worker's stall and the writer's busy time at rocking-angle ends, before and after.

What is measured
----------------
A worker thread adds frames to a live :class:`~sxdm_stream.pipeline.scan_processor.ScanProcessor`
angle by angle (a small detector, so that adding a frame costs little and the writes show),
and at every angle end hands the sums to a real
:class:`~sxdm_stream.runtime.writer.ResultsWriter` running on its own thread, which writes the
results file and the checkpoint into a temporary folder, as the live processor does. Per angle
end it prints:

* ``handoff``: the longest time the worker spent handing sums over during angle k+1
  (``schedule()`` and ``finish_handoff()``, its part of a copy);
* ``late``: the longest delay of a frame of angle k+1 past the time it was due (``--rate``):
  what the frames' latency sees (the hand-off, the GIL held by the writer thread, backlog);
* ``write``: the writer's busy time for that angle's write (copy, results file, checkpoint),
  or ``skipped`` when the writer was still busy with the previous one;

for two writers in the same run, in turn on the same scan:

* ``before``: the hand-off as it was (the worker copies the whole sums; the results file's
  histogram gzip-compressed at every write);
* ``after``: :class:`~sxdm_stream.runtime.handoff.SumsHandoff` (the writer copies the histogram,
  the worker the rows that moved meanwhile), histograms uncompressed until the series' last
  write, HDF5 written a block of rows per call.

Run ``python benchmarks/bench_writes.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

from sxdm_stream.core.accumulate import AccumulationSettings, ScanSetup
from sxdm_stream.core.geometry import Detector, Geometry
from sxdm_stream.core.scan import ScanDescription
from sxdm_stream.messages import SeriesStart
from sxdm_stream.pipeline.scan_processor import ScanProcessor
from sxdm_stream.runtime import writer as writer_module
from sxdm_stream.runtime.settings import Config, LiveSettings
from sxdm_stream.runtime.writer import ResultsWriter, WriteJob


class BeforeWriter(ResultsWriter):
    """The hand-off and the results file as they were before the incremental writes."""

    def _write(self, job, analysis) -> None:
        with gzip_every_write():
            super()._write(job, analysis)

    def schedule(self, p, series, ended, last, path, dropped=0, analysis=None) -> bool:
        if not last and (self._busy or self.jobs.qsize() > 0):
            return False
        copy = ScanProcessor(p.setup, p.mask_fraction, p.d_ref)
        spare, self._spare = self._spare, None
        copy.accumulator = p.accumulator.copy(into=None if last else spare)
        copy.included = p.included.copy()
        copy.counters.received, copy.counters.processed = p.counters.received, p.counters.processed
        copy.counters.rejected = Counter(dict.copy(p.counters.rejected))
        copy.angles_done = p.angles_done
        job = WriteJob(copy, series, ended, last, path, dropped, analysis)
        if not last:
            return self.jobs.put_nowait(job, job.nbytes)
        self._put_waiting(job, job.nbytes)
        return True


@contextlib.contextmanager
def gzip_every_write():
    """The results file's histogram gzipped at every write, as before."""
    plain = writer_module.write_results
    writer_module.write_results = lambda *a, **k: plain(*a, **{**k, "compress_histogram": True})
    try:
        yield
    finally:
        writer_module.write_results = plain


def timed(writer: ResultsWriter, busy: dict) -> None:
    """Record the busy time of every write job of ``writer``, by the angle it ends (the last
    write: -1)."""
    do = writer._do

    def _do(job):
        live = job.handoff.live if job.handoff is not None else job.processor
        angle = -1 if job.last else live.angles_done
        t0 = time.perf_counter()
        do(job)
        busy[angle] = time.perf_counter() - t0
    writer._do = _do


def make_setup(size: int, bins: int, angles: int) -> ScanSetup:
    detector = Detector(shape=(32, 32), pixel_size_m=55e-6, distance_m=0.6, beam_center=(16, 16))
    scan = ScanDescription(shape=(size, size), rocking_axis="eta",
                           rocking_angles=tuple(9.05 + np.linspace(-0.3, 0.3, angles)),
                           fixed_angles={"phi": 0.0, "nu": 0.0, "delta": 18.1})
    settings = AccumulationSettings(histogram_bins=(bins, bins, bins),
                                    histogram_budget_mib=8192.0)
    return ScanSetup(Geometry(detector, 8330.0), scan, settings)


def run(kind: str, setup: ScanSetup, folder: Path, frame: np.ndarray, rate: float) -> list[dict]:
    """One scan through a writer of ``kind``, frames due at ``rate`` per second; one dict per
    angle end."""
    settings = Config(live=LiveSettings(writer_queue_mib=65536))
    writer = (BeforeWriter if kind == "before" else ResultsWriter)(settings, None,
                                                                    lambda result: None)
    busy: dict[int, float] = {}
    timed(writer, busy)
    thread = threading.Thread(target=writer.run, name=f"writer {kind}")
    thread.start()
    p = ScanProcessor(setup)
    series, path = SeriesStart(1, kind), folder / f"{kind}.h5"
    n_points, rows = setup.scan.n_points, []
    start = time.perf_counter()
    for angle in range(setup.scan.n_angles):
        handoff, late, written = 0.0, 0.0, False
        for point in range(n_points):
            index = angle * n_points + point
            due = start + index / rate
            ahead = due - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
            p.add(index, frame)
            t0 = time.perf_counter()
            writer.finish_handoff()              # what the worker's loop does between messages
            if angle and point == 0:             # the live worker schedules after this frame
                written = writer.schedule(p, series, False, False, path)
            t1 = time.perf_counter()
            handoff, late = max(handoff, t1 - t0), max(late, t1 - due)
        if angle:
            rows.append({"angle": angle, "handoff": handoff, "late": late, "written": written})
    t0 = time.perf_counter()
    writer.schedule(p, series, True, True, path)
    last_handoff = time.perf_counter() - t0
    writer.close()
    thread.join()
    for row in rows:
        row["write"] = busy.get(row["angle"], float("nan"))
    rows.append({"angle": "end", "handoff": last_handoff, "late": 0.0, "written": True,
                 "write": busy.get(-1, float("nan"))})
    return rows


def _w(row: dict) -> str:
    return f"{row['write']:>6.2f}s" if row["written"] else "skipped"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=60, help="map side (map pixels)")
    parser.add_argument("--bins", type=int, default=32, help="q bins per axis")
    parser.add_argument("--angles", type=int, default=6, help="rocking angles")
    parser.add_argument("--rate", type=float, default=1000.0, help="frames per second")
    parser.add_argument("--dir", default=None, help="folder for the files (default: a temp one)")
    args = parser.parse_args()
    setup = make_setup(args.size, args.bins, args.angles)
    frame = np.random.default_rng(0).poisson(2.0, (32, 32)).astype(np.uint32)
    mib = setup.scan.n_points * setup.grid.n_bins * 4 / 2**20
    print(f"{args.size}x{args.size} map, {args.bins}^3 bins ({mib:.0f} MiB of histogram), "
          f"{args.angles} angles; load {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        results = {kind: run(kind, setup, Path(tmp), frame, args.rate)
                   for kind in ("before", "after")}
    print(f"{'angle end':>9} | {'before: handoff':>15} {'late':>7} {'write':>7} | "
          f"{'after: handoff':>14} {'late':>7} {'write':>7}")
    for b, a in zip(results["before"], results["after"]):
        print(f"{b['angle']:>9} | {b['handoff']:>14.3f}s {b['late']:>6.3f}s {_w(b)} | "
              f"{a['handoff']:>13.3f}s {a['late']:>6.3f}s {_w(a)}")
    for kind, rows in results.items():
        worst = max(r["late"] for r in rows)
        busy = sum(r["write"] for r in rows if r["written"] and r["write"] == r["write"])
        writes = sum(1 for r in rows if r["written"])
        skipped = sum(1 for r in rows if not r["written"])
        print(f"{kind}: worst worker delay {worst:.3f} s; writer busy {busy:.1f} s for "
              f"{writes} writes ({skipped} skipped: writer behind)")
    print(f"load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
