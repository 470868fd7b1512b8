"""Operando series over many maps: does memory stay flat, what does following the series cost
per map, and does the series follow the truth?

1. **Live**: the simulated charge (:class:`sxdm_stream.simulators.operando.OperandoSeries`:
   drift between maps, the H2-H3 transition, a particle appearing) is streamed map after map
   over a real ZeroMQ DECTRIS stream (bslz4) to a live processor with q shells writing an
   operando series file. Printed: resident memory (VmRSS) of this process after map 5 and at
   the end and their ratio, the frame rate, and the series against the truth
   (:func:`sxdm_stream.simulators.operando_validation.operando_accuracy`).
2. **Cost per map**: the same maps accumulated in this process, then each step of following
   the series timed on its own: registration (against the running reference), tracking
   (particle ids and events), phase analysis (:func:`sxdm_stream.analysis.phases.analyse_phases`)
   and alarms, against the time the map's frames took to accumulate here and against its
   simulated acquisition time (6 minutes a map).

    .venv/bin/python benchmarks/bench_operando.py [--scans 50] [--shape 24 28] [--angles 9]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from sxdm_stream.analysis.alarms import AlarmSettings, check_alarms
from sxdm_stream.analysis.phases import analyse_phases
from sxdm_stream.analysis.scan_analysis import AnalysisSettings, analyse
from sxdm_stream.analysis.tracking import SeriesTracker
from sxdm_stream.config import Config
from sxdm_stream.core.accumulate import AccumulationSettings, Accumulator, ScanSetup
from sxdm_stream.messages import ImageFrame, SeriesEnd
from sxdm_stream.runtime.processor import LiveProcessor, LiveSettings
from sxdm_stream.simulators.operando import OperandoSeries
from sxdm_stream.simulators.operando_validation import format_operando_report, operando_accuracy
from sxdm_stream.simulators.sender import series_start, with_operando
from sxdm_stream.sinks.timeseries import read_operando
from sxdm_stream.sources.dectris.sender import StreamSender

Q_SHELLS = 64


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def send(sender: StreamSender, series: OperandoSeries, marks: dict, truths: list,
         live: LiveProcessor) -> None:
    """Build each map's simulator only when it is sent (the processor's memory is measured)."""
    for k in range(1, series.n_scans + 1):
        scan = series.scan(k - 1)
        truths.append(dataclasses.replace(scan, scenario=None))
        sc = scan.scenario
        sender.send_start(with_operando(series_start(sc, k, f"op-{k}", f"charge-{k}"),
                                        scan.channels))
        for index, _, _, frame in sc.simulator.frames():
            sender.send_image(ImageFrame(k, index, frame, series_unique_id=f"op-{k}"))
        sender.send_end(SeriesEnd(k, f"op-{k}"))
        while live.status().completed < k:
            time.sleep(0.01)
        marks[k] = rss_mib()


def live_run(series: OperandoSeries) -> None:
    truths: list = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "series.h5"
        sender = StreamSender("tcp://127.0.0.1:*")
        config = Config(accumulation=AccumulationSettings(q_shells=Q_SHELLS),
                        live=LiveSettings(checkpoints=False))
        live = LiveProcessor(sender.endpoint, out=Path(tmp) / "maps_{series_id}.h5",
                             operando=path, settings=config, max_series=series.n_scans)
        marks: dict[int, float] = {}
        live.start()
        t0 = time.perf_counter()
        thread = threading.Thread(target=send, args=(sender, series, marks, truths, live))
        thread.start()
        thread.join()
        live.wait(60)
        elapsed = time.perf_counter() - t0
        frames = live.status().processed
        live.stop()
        sender.close()
        file = read_operando(path)
    first, last = min(5, series.n_scans), series.n_scans
    print(f"1. live: {series.n_scans} maps of {series.shape[0]}x{series.shape[1]} points x "
          f"{series.n_angles} angles ({frames} frames) over ZeroMQ in {elapsed:.1f} s, "
          f"{frames / elapsed:.0f} frames/s")
    print(f"   VmRSS after map {first}: {marks[first]:.1f} MiB; after map {last}: "
          f"{marks[last]:.1f} MiB; ratio {marks[last] / marks[first]:.3f}")
    print("   " + format_operando_report(operando_accuracy(file, truths, series.appears_at))
          .replace("\n", "\n   "))


def cost_per_map(series: OperandoSeries) -> None:
    tracker, settings, alarms = SeriesTracker(), AnalysisSettings(), AlarmSettings()
    accumulation = AccumulationSettings(q_shells=Q_SHELLS)
    rows_before, previous_phases = None, None
    cost = {"accumulate": [], "registration": [], "tracking": [], "phases": [], "alarms": []}
    for k in range(series.n_scans):
        scan = series.scan(k).scenario
        setup = ScanSetup(scan.geometry, scan.scan, accumulation)
        acc = Accumulator(setup)
        t0 = time.perf_counter()
        for _index, angle, point, frame in scan.simulator.frames(reuse_buffer=True):
            acc.add_frame(frame, angle, point)
        cost["accumulate"].append(time.perf_counter() - t0)
        base = analyse(acc, dataclasses.replace(settings, phases=dataclasses.replace(
            settings.phases, enabled=False)), final=True)
        t0 = time.perf_counter()
        phases = analyse_phases(acc.shell_moments, setup.shells, setup.q_ref, base.maps.mask,
                                base.particles.labels, settings.phases, previous_phases)
        cost["phases"].append(time.perf_counter() - t0)
        previous_phases = phases.phase_list()
        t0 = time.perf_counter()
        registration, events = tracker.register(base.maps, scan.scan)
        cost["registration"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        step = tracker.identify(base.particles, scan.scan, registration, events)
        cost["tracking"].append(time.perf_counter() - t0)
        ids = dict(zip(step.labels.tolist(), step.particle_ids.tolist()))
        rows = [{"particle_id": ids[int(r["label"])], "phases": [
                    {"phase_id": int(r["phase_id"]), "d_a": float(r["d_a"]),
                     "fraction": float(r["fraction"])}]} for r in phases.particles]
        t0 = time.perf_counter()
        check_alarms(alarms, rows_before, rows, [e.to_json() for e in step.events])
        cost["alarms"].append(time.perf_counter() - t0)
        rows_before = rows
    acquisition = series.minutes_per_scan * 60.0
    frames = series.shape[0] * series.shape[1] * series.n_angles
    mean = {name: float(np.mean(values)) for name, values in cost.items()}
    print(f"2. cost per map ({series.n_scans} maps, {frames} frames each, mean and max):")
    for name in ("registration", "tracking", "phases", "alarms"):
        print(f"   {name:12s} {1e3 * mean[name]:8.2f} ms (max {1e3 * max(cost[name]):7.2f}); "
              f"{mean[name] / mean['accumulate']:.4f} of accumulating the map here "
              f"({mean['accumulate']:.2f} s), {mean[name] / acquisition:.2e} of its "
              f"{series.minutes_per_scan:g}-minute acquisition")
    total = sum(mean[n] for n in ("registration", "tracking", "phases", "alarms"))
    print(f"   all four     {1e3 * total:8.2f} ms, ratio to accumulation "
          f"{total / mean['accumulate']:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scans", type=int, default=50)
    parser.add_argument("--shape", type=int, nargs=2, default=(24, 28))
    parser.add_argument("--angles", type=int, default=9)
    parser.add_argument("--skip-live", action="store_true", help="only the cost per map")
    args = parser.parse_args()
    series = OperandoSeries(args.scans, shape=tuple(args.shape), n_angles=args.angles)
    if not args.skip_live:
        live_run(series)
    cost_per_map(series)


if __name__ == "__main__":
    main()
