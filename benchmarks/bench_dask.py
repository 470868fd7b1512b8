"""process-file against process-file --dask local:N on the same beamline files, in one run.

What is measured
----------------
An ID01 BLISS scan set of the default LiNiO2 particle (Maxipix 2x2, 516 x 516 uint32 frames,
gzip as BLISS/Lima write them; ``--shape`` map, ``--angles`` rocking angles) is written once.
Then, each in a fresh Python process so that the peak memory is its own:

* ``plain``: ``process_file_scan(..., workers=--threads)``, the plain ``process-file``;
* ``dask``: ``dask_client("local:N")`` + ``process_file_scan_dask``: N worker processes (one
  thread each) on loopback, tasks of blocks of map rows, reduced in the client; run twice on
  the same cluster: ``first`` (every worker loads the compiled kernels: what ``--dask local:N``
  pays each time) and ``warm`` (what a cluster that stays up pays for every later scan).

First the frames are only read (decompressed), one thread: the files' share of the cost.
Printed per mode: wall time and CPU time of the processing (user + system, of the client and
of every worker: less sensitive than wall time to other load on a shared machine; the
cluster's start-up excluded, and printed apart), frames/s, and peak RSS (``ru_maxrss``) of the client process and, for Dask, of each
worker process (asked from the workers themselves before the cluster stops). Both modes write
a results file; their accumulated sums (moments per rocking angle, q histograms, frame
counts) are compared and the largest relative difference printed.

On a 2-core machine two Dask workers share the cores with the client: the ratio says what the
engine costs (serialisation, scheduling, the plan and the reduction), not what more hosts gain.

Run ``python benchmarks/bench_dask.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024     # kB on Linux


def _cpu_s() -> float:
    """CPU seconds (user + system) of this process so far: less sensitive than wall time to
    other load on a shared machine."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _open(master: Path, roi):
    from sxdm_stream.sources.files.filescan import GeometryOverrides
    from sxdm_stream.sources.files.open import SourceOptions, open_source

    return open_source(master, SourceOptions(overrides=GeometryOverrides(roi=roi)))


def run_mode(mode: str, master: Path, out: Path, roi, threads: int, workers: int,
             bins: int) -> dict:
    """One mode in this process; what it measured, as a dict (printed as JSON)."""
    from sxdm_stream.config import Config, override

    settings = override(Config(), "accumulation", histogram_bins=(bins, bins, bins))
    source = _open(master, roi)
    report = {"mode": mode}
    if mode == "read":                         # the files' share: read (decompress) only
        t0, c0 = time.perf_counter(), _cpu_s()
        with source.open() as reader:
            n = sum(len(frames) for _, frames in reader.blocks(32))
        report["wall_s"] = time.perf_counter() - t0
        report["cpu_s"] = _cpu_s() - c0
        report["frames"], report["complete"] = n, True
        report["client_peak_rss_mib"] = _peak_rss_mib()
        return report
    if mode == "plain":
        from sxdm_stream.runtime.process_file import process_file_scan

        t0, c0 = time.perf_counter(), _cpu_s()
        result = process_file_scan(source, out, settings, workers=threads, overwrite=True)
        report["wall_s"] = time.perf_counter() - t0
        report["cpu_s"] = _cpu_s() - c0
    else:
        from sxdm_stream.runtime.distributed import dask_client, process_file_scan_dask

        t_start = time.perf_counter()
        with dask_client(f"local:{workers}") as client:
            report["cluster_start_s"] = time.perf_counter() - t_start
            # twice: the first run's tasks load the compiled kernels in every worker process
            # (what --dask local:N pays each time), the second is what a cluster that stays
            # up (dask worker on the hosts) pays for every later scan
            for run in ("first", "warm"):
                workers_c0 = client.run(_cpu_s)
                t0, c0 = time.perf_counter(), _cpu_s()
                result = process_file_scan_dask(source, client, out, settings, overwrite=True)
                report[f"wall_s_{run}"] = time.perf_counter() - t0
                workers_c1 = client.run(_cpu_s)
                report[f"cpu_s_{run}"] = _cpu_s() - c0 + sum(workers_c1[w] - workers_c0[w]
                                                             for w in workers_c1)
            report["wall_s"], report["cpu_s"] = report["wall_s_first"], report["cpu_s_first"]
            report["worker_peak_rss_mib"] = sorted(client.run(_peak_rss_mib).values())
    report["frames"] = int(result.processor.counters.processed)
    report["complete"] = bool(result.complete)
    report["client_peak_rss_mib"] = _peak_rss_mib()
    return report


def compare_sums(a: Path, b: Path) -> float:
    """Largest relative difference between the accumulated sums of two results files."""
    from sxdm_stream.sinks.results_read import read_accumulator_state

    sa, sb = read_accumulator_state(a), read_accumulator_state(b)
    worst = 0.0
    for name in ("moments", "histogram", "frame_count"):
        x, y = np.asarray(sa[name], float), np.asarray(sb[name], float)
        scale = max(np.abs(x).max(), 1e-300)
        worst = max(worst, float(np.abs(x - y).max() / scale))
    return worst


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", type=int, nargs=2, default=(24, 24), help="map rows, cols")
    p.add_argument("--angles", type=int, default=15, help="rocking angles")
    p.add_argument("--workers", type=int, default=2, help="Dask worker processes (local:N)")
    p.add_argument("--threads", type=int, default=2, help="threads of the plain process-file")
    p.add_argument("--bins", type=int, default=32, help="q histogram bins per axis")
    p.add_argument("--full-frame", action="store_true",
                   help="process the whole detector (default: the scenario's detector ROI)")
    p.add_argument("--dir", type=Path, help="where to write the files (default: a temporary one)")
    p.add_argument("--compression", choices=["gzip", "bslz4", "none"], default="gzip",
                   help="of the frames in the files (gzip: BLISS/Lima's default; bslz4: Eiger)")
    p.add_argument("--mode", choices=["read", "plain", "dask"], help=argparse.SUPPRESS)
    p.add_argument("--master", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--roi", type=int, nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mode:                                  # a child: one mode, JSON on stdout
        report = run_mode(args.mode, args.master, args.out, args.roi, args.threads,
                          args.workers, args.bins)
        print(json.dumps(report))
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        bench(args, Path(tmp))


def bench(args, tmp: Path) -> None:
    from sxdm_stream.simulators.files import write_id01_scan_set
    from sxdm_stream.simulators.scenarios import default_scenario

    scenario = default_scenario(shape=tuple(args.shape), n_angles=args.angles)
    t0 = time.perf_counter()
    master = write_id01_scan_set(scenario, tmp / "files", compression=args.compression)
    det = scenario.geometry.detector
    roi = (0, det.shape[0], 0, det.shape[1]) if args.full_frame else det.roi
    print(f"files: {scenario.scan.n_frames} frames {det.shape} uint32 {args.compression}, map "
          f"{scenario.scan.shape} x {args.angles} angles, ROI {roi}, {args.bins}^3 bins "
          f"(written in {time.perf_counter() - t0:.0f} s); load {os.getloadavg()[0]:.1f}")
    reports = {}
    for mode in ("read", "plain", "dask"):
        cmd = [sys.executable, __file__, "--mode", mode, "--master", str(master),
               "--out", str(tmp / f"{mode}.h5"), "--roi", *map(str, roi),
               "--threads", str(args.threads), "--workers", str(args.workers),
               "--bins", str(args.bins)]
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        reports[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    plain, dask, read = reports["plain"], reports["dask"], reports["read"]
    print(f"read only (1 thread, whole frames): {1e3 * read['wall_s'] / read['frames']:.2f} "
          f"ms/frame wall, {1e3 * read['cpu_s'] / read['frames']:.2f} ms/frame CPU")
    print(f"{'mode':<28}{'wall s':>8}{'frames/s':>10}{'CPU ms/frame':>14}{'client peak MiB':>17}"
          "  workers peak MiB")
    warm = {**dask, "wall_s": dask["wall_s_warm"], "cpu_s": dask["cpu_s_warm"]}
    for name, r in ((f"plain ({args.threads} threads)", plain),
                    (f"dask local:{args.workers}, first", dask),
                    (f"dask local:{args.workers}, warm", warm)):
        workers = ", ".join(f"{m:.0f}" for m in r.get("worker_peak_rss_mib", [])) or "-"
        print(f"{name:<28}{r['wall_s']:>8.2f}{r['frames'] / r['wall_s']:>10.0f}"
              f"{1e3 * r['cpu_s'] / r['frames']:>14.2f}{r['client_peak_rss_mib']:>17.0f}  "
              f"{workers}")
    for name, r in (("first", dask), ("warm", warm)):
        print(f"dask ({name}) / plain: wall time {r['wall_s'] / plain['wall_s']:.2f}, CPU time "
              f"{r['cpu_s'] / plain['cpu_s']:.2f}")
    print(f"(cluster start-up {dask['cluster_start_s']:.1f} s, in neither; first: the workers' "
          "first tasks load the compiled kernels; warm: the same files again on the same cluster)")
    print(f"frames: plain {plain['frames']}, dask {dask['frames']}; complete: "
          f"{plain['complete']}, {dask['complete']}")
    print(f"sums: largest relative difference {compare_sums(tmp / 'plain.h5', tmp / 'dask.h5'):.2e}"
          f"; load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
