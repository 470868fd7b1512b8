"""How often, and how long, the live processor runs the final analysis of a series.

The final analysis (:func:`sxdm_stream.analysis.scan_analysis.analyse` with ``final=True``:
drift, particles, q-ROI suggestion, fits) of every series was once made twice: on the worker
for the last snapshot and again on the writer for the results file. This script streams
simulated series through a :class:`~sxdm_stream.runtime.processor.LiveProcessor` (messages
handed to :meth:`~sxdm_stream.runtime.processor.LiveProcessor.submit`: no sockets), counts the
``analyse(final=True)`` calls of the worker and of the writer, times each, and prints calls
per series and seconds per series.

    .venv/bin/python benchmarks/bench_final_analysis.py                          # 20x20, 15 angles
    .venv/bin/python benchmarks/bench_final_analysis.py --shape 40 40 --angles 31  # the demo's scan
    .venv/bin/python benchmarks/bench_final_analysis.py --fits                    # with the fits
    .venv/bin/python benchmarks/bench_final_analysis.py --recompute               # as before

``--recompute`` drops the analysis the worker hands to the writer with a series' last write,
so that the writer analyses the sums again: what every series cost before the hand-over.

Only the analyses are timed; the frames are simulated while they are streamed.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import sxdm_stream.runtime.snapshots as snapshots_module
import sxdm_stream.runtime.writer as writer_module
from sxdm_stream.config import Config, FitSettings
from sxdm_stream.messages import ImageFrame, SeriesEnd
from sxdm_stream.runtime.processor import LiveProcessor, LiveSettings
from sxdm_stream.simulators.scenarios import default_scenario
from sxdm_stream.simulators.sender import series_start


class FinalAnalysisClock:
    """Wraps the ``analyse`` each runtime module calls: final calls counted and timed per
    thread (the worker's snapshots, the writer's results files)."""

    def __init__(self) -> None:
        self.seconds: dict[str, list[float]] = defaultdict(list)
        self._lock = threading.Lock()

    def wrap(self, module) -> None:
        analyse = module.analyse

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            result = analyse(*args, **kwargs)
            if kwargs.get("final"):
                with self._lock:
                    self.seconds[threading.current_thread().name].append(time.perf_counter() - t0)
            return result

        module.analyse = timed


def recompute_on_the_writer() -> None:
    """The writer ignores the worker's analysis and makes its own (as before the hand-over)."""
    schedule = writer_module.ResultsWriter.schedule

    def without_analysis(self, *args, analysis=None, **kwargs):
        return schedule(self, *args, **kwargs)

    writer_module.ResultsWriter.schedule = without_analysis


def stream_series(live: LiveProcessor, scenario, k: int) -> None:
    live.submit(series_start(scenario, k, f"bench-{k}", f"bench-run-{k}"))
    for index, _angle, _point, frame in scenario.simulator.frames():
        live.submit(ImageFrame(k, index, frame, series_unique_id=f"bench-{k}"))
    live.submit(SeriesEnd(k, f"bench-{k}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=2, default=(20, 20))
    parser.add_argument("--angles", type=int, default=15)
    parser.add_argument("--series", type=int, default=3)
    parser.add_argument("--fits", action="store_true", help="Gaussian projection fits too")
    parser.add_argument("--recompute", action="store_true",
                        help="the writer analyses the last write again (the old behaviour)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    scenario = default_scenario(shape=tuple(args.shape), n_angles=args.angles,
                                rocking_half_range_deg=0.3)
    clock = FinalAnalysisClock()
    for module in (snapshots_module, writer_module):
        clock.wrap(module)
    if args.recompute:
        recompute_on_the_writer()
    settings = Config(fits=FitSettings(enabled=args.fits), live=LiveSettings(checkpoints=False))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench_{series_id}.h5"
        with LiveProcessor(None, out=out, settings=settings, max_series=args.series) as live:
            for k in range(1, args.series + 1):
                stream_series(live, scenario, k)
            if not live.wait(600):
                raise SystemExit("the series did not finish in 600 s")
        assert all(r.complete and r.written for r in live.results), "a series was not written"
    wall = time.perf_counter() - t0
    n = args.series
    print(f"scan {args.shape[0]}x{args.shape[1]}, {args.angles} angles "
          f"({scenario.scan.n_frames} frames), {n} series, fits {'on' if args.fits else 'off'}"
          f"{', the writer recomputes (as before)' if args.recompute else ''}")
    total_calls = total_s = 0
    for thread, seconds in sorted(clock.seconds.items()):
        total_calls += len(seconds)
        total_s += sum(seconds)
        print(f"  {thread:14s} analyse(final=True): {len(seconds) / n:.1f} calls per series, "
              f"{sum(seconds) / n:.3f} s per series ({sum(seconds) / len(seconds):.3f} s a call)")
    print(f"  {'all threads':14s} analyse(final=True): {total_calls / n:.1f} calls per series, "
          f"{total_s / n:.3f} s per series (run, frames simulated included: {wall:.1f} s)")


if __name__ == "__main__":
    main()
