"""Throughput of the accumulate step on full 516 x 516 uint32 frames, against the memory ceiling.

What is measured
----------------
Frames per second (and MB/s of frame data) of adding detector frames into the per-map-pixel
sums of :class:`sxdm_stream.core.accumulate.Accumulator`, on the whole detector (no ROI), at 1 % and
5 % non-zero pixels (random positions, small Poisson counts), for:

* ``read-only``: a numba ``nogil`` kernel with the accumulate kernels' loop structure (rows,
  then columns, every pixel of the frame) that only reads each pixel (sums it). Any accumulate
  variant must read every pixel of the frame too, and the frames come from main memory (the
  frame buffers cycled are far larger than the last-level cache), so no accumulate variant can
  be faster than this pass: it is the memory ceiling, and "% ceil" says how close an
  accumulate variant gets to it. It reads each row through a view, which lets LLVM vectorise
  the loop, so it really runs at memory speed;
* ``read-only, r0+i index``: the same sum indexed like the kernels in ``stream/core/kernels.py``
  (``frame[r0 + i, c0 + j]``). Numba wraps negative indices on every such read and the loop no
  longer vectorises: the gap to ``read-only`` is the price of that indexing alone;
* ``moments``: histogram disabled (``histogram_bins=(0, 0, 0)``), ``Accumulator.add_frame``;
* ``moments+hist``: moments and a (bins, bins, bins) q histogram per map pixel,
  ``Accumulator.add_frame``;
* ``moments+hist per-hit``: the same sums through the per-hit kernel
  ``kernels.accumulate_frame`` (dq and the bin computed from k_f for every hit), which the
  accumulator ran before it looked them up in per-angle pixel tables: the baseline of the
  table kernel, in the same run;
* ``... batch``: the same through ``Accumulator.add_frames`` (one kernel call per stack of frames);
* ``...+shells``: the same with ``--shells`` |Q| slices (``AccumulationSettings.q_shells``, the
  phase analysis' moments); the line "q shells cost" after each table gives the time per frame
  with shells over the time without, variant by variant, in the same run.

Each with 1 and 2 threads. With 2 threads each ``threading.Thread`` adds its own share of the
frames, sharded by map pixel (``point % n_threads``), so two threads never write the same map
pixel's sums: the rule a live pipeline follows. Both threads share one accumulator. The
read-only ceiling is measured with the same shards and thread count, in the same run.

All frames are generated in memory before timing; numba is warmed up (JIT compiled or loaded
from cache) before timing; each figure is the best of ``--repeats`` passes over ``--frames``.

Run ``python benchmarks/bench_accumulate.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import os
import platform
import threading
import time
from dataclasses import dataclass

import numba
import numpy as np
from numba import njit

from sxdm_stream.core import kernels
from sxdm_stream.core.accumulate import (AccumulationSettings, Accumulator, ScanSetup,
                                         max_valid_for)
from sxdm_stream.core.geometry import Detector, Geometry
from sxdm_stream.core.scan import ScanDescription

DETECTOR_SHAPE = (516, 516)
FRAME_DTYPE = np.uint32
FRAME_BYTES = DETECTOR_SHAPE[0] * DETECTOR_SHAPE[1] * np.dtype(FRAME_DTYPE).itemsize


@njit(nogil=True)
def read_frame(frame, r0, c0, h, w):
    """Sum every pixel of the (h, w) window at (r0, c0), row by row: the memory ceiling.

    Each row is taken as a view (``frame[r0 + i, c0:c0 + w]``) and indexed from 0, so numba
    knows the index is not negative and LLVM vectorises the loop: it runs at memory speed.
    """
    total = 0
    for i in range(h):
        row = frame[r0 + i, c0:c0 + w]
        for j in range(w):
            total += row[j]
    return total


@njit(nogil=True)
def read_frame_offset_indexing(frame, r0, c0, h, w):
    """The same sum indexed as the accumulate kernels do, ``frame[r0 + i, c0 + j]``.

    A signed runtime offset makes numba wrap negative indices on every read, which keeps
    LLVM from vectorising: this shows what that indexing alone costs.
    """
    total = 0
    for i in range(h):
        for j in range(w):
            total += frame[r0 + i, c0 + j]
    return total


# ---- the scan and the frames ------------------------------------------------------------------
def make_setup(bins: int, shells: int = 0) -> ScanSetup:
    """Whole Maxipix 2x2 detector, 003 of LiNiO2 at 8.33 keV: 40 x 40 map, 31 rocking angles."""
    detector = Detector(shape=DETECTOR_SHAPE, pixel_size_m=55e-6, distance_m=0.6,
                        beam_center=(258, 258))
    scan = ScanDescription(shape=(40, 40), rocking_axis="eta",
                           rocking_angles=tuple(9.05 + np.linspace(-0.3, 0.3, 31)),
                           fixed_angles={"phi": 0.0, "nu": 0.0, "delta": 18.1})
    settings = AccumulationSettings(histogram_bins=(bins, bins, bins), q_shells=shells)
    return ScanSetup(Geometry(detector, 8330.0), scan, settings)


def make_frames(n_buffers: int, fraction: float, seed: int) -> np.ndarray:
    """(n_buffers, 516, 516) uint32 frames; ``fraction`` of the pixels hold 1 + Poisson(1)."""
    rng = np.random.default_rng(seed)
    n_pixels = DETECTOR_SHAPE[0] * DETECTOR_SHAPE[1]
    n_hits = int(round(fraction * n_pixels))
    frames = np.zeros((n_buffers, n_pixels), dtype=FRAME_DTYPE)
    for frame in frames:
        positions = rng.choice(n_pixels, n_hits, replace=False)
        frame[positions] = 1 + rng.poisson(1.0, n_hits)
    return frames.reshape(n_buffers, *DETECTOR_SHAPE)


@dataclass(frozen=True)
class Shard:
    """One thread's frames: buffer, rocking angle and map pixel of each, in order."""

    buffers: np.ndarray
    angles: np.ndarray
    points: np.ndarray
    batch: int  # frames j*batch .. (j+1)*batch-1 use a contiguous run of buffers


def plan_shards(scan: ScanDescription, n_frames: int, n_threads: int,
                n_buffers: int) -> list[Shard]:
    """Split the first ``n_frames`` of the scan by map pixel (``point % n_threads``).

    Thread t cycles through its own ``n_buffers // n_threads`` buffers, so a stack of that many
    consecutive frames of a thread is a contiguous slice of the buffers (for ``add_frames``).
    """
    located = np.array([scan.locate(k % scan.n_frames) for k in range(n_frames)])
    per_thread = n_buffers // n_threads
    shards = []
    for t in range(n_threads):
        mine = located[located[:, 1] % n_threads == t]
        buffers = t * per_thread + np.arange(len(mine)) % per_thread
        shards.append(Shard(buffers, mine[:, 0].copy(), mine[:, 1].copy(), per_thread))
    return shards


# ---- what each thread runs --------------------------------------------------------------------
def read_shard(frames: np.ndarray, shard: Shard, _acc) -> None:
    h, w = DETECTOR_SHAPE
    for b in shard.buffers.tolist():
        read_frame(frames[b], 0, 0, h, w)


def read_shard_offset_indexing(frames: np.ndarray, shard: Shard, _acc) -> None:
    h, w = DETECTOR_SHAPE
    for b in shard.buffers.tolist():
        read_frame_offset_indexing(frames[b], 0, 0, h, w)


def add_shard(frames: np.ndarray, shard: Shard, acc: Accumulator) -> None:
    for b, a, p in zip(shard.buffers.tolist(), shard.angles.tolist(), shard.points.tolist()):
        acc.add_frame(frames[b], a, p)


def add_shard_per_hit(frames: np.ndarray, shard: Shard, acc: Accumulator) -> None:
    """``add_shard`` through the per-hit kernel (no pixel tables): the baseline."""
    s = acc.setup
    max_valid = max_valid_for(frames.dtype, s.max_valid)
    for b, a, p in zip(shard.buffers.tolist(), shard.angles.tolist(), shard.points.tolist()):
        frame, scale = acc.check_frame(frames[b], a, p)
        kernels.accumulate_frame(frame, s.roi_origin[0], s.roi_origin[1], s.kf, s.mask, s.rots[a],
                                 s.offsets[a], s.edge0, s.inv_step, s.bins, scale,
                                 s.settings.threshold, max_valid, acc.moments[a, p],
                                 acc.histogram[p], acc._invalid, None, None)
        acc.frame_count[a, p] += 1


def add_shard_batched(frames: np.ndarray, shard: Shard, acc: Accumulator) -> None:
    for start in range(0, len(shard.buffers), shard.batch):
        stop = min(start + shard.batch, len(shard.buffers))
        first = shard.buffers[start]
        stack = frames[first:first + stop - start]
        acc.add_frames(stack, shard.angles[start:stop], shard.points[start:stop])


def run_threads(work, frames: np.ndarray, shards: list[Shard], acc) -> float:
    """Wall time of running ``work`` on every shard, one thread per shard (inline for one)."""
    if len(shards) == 1:
        start = time.perf_counter()
        work(frames, shards[0], acc)
        return time.perf_counter() - start
    errors: list[BaseException] = []

    def guarded(shard: Shard) -> None:
        try:
            work(frames, shard, acc)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(s,)) for s in shards]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return elapsed


# ---- the measurement ----------------------------------------------------------------------------
def fresh_accumulator(setup: ScanSetup) -> Accumulator:
    """An accumulator whose arrays are already paged in (no first-touch faults while timing)."""
    acc = Accumulator(setup)
    for array in acc.state().values():
        array.fill(0)  # writing faults in the pages np.zeros left unmapped
    return acc


def warm_up(frames: np.ndarray, setups: dict[str, ScanSetup]) -> None:
    """Compile (or load from numba's cache) every kernel for the argument types timed."""
    h, w = DETECTOR_SHAPE
    read_frame(frames[0], 0, 0, h, w)
    read_frame_offset_indexing(frames[0], 0, 0, h, w)
    for setup in setups.values():
        acc = Accumulator(setup)
        acc.add_frame(frames[0], 0, 0)
        acc.add_frames(frames[0:2], [0, 0], [0, 1])
        add_shard_per_hit(frames, Shard(np.array([0]), np.array([0]), np.array([0]), 1), acc)


VARIANTS = (  # (name, setup key, per-thread work)
    ("read-only", None, read_shard),
    ("read-only, r0+i index", None, read_shard_offset_indexing),
    ("moments", "moments", add_shard),
    ("moments batch", "moments", add_shard_batched),
    ("moments+hist", "hist", add_shard),
    ("moments+hist per-hit", "hist", add_shard_per_hit),
    ("moments+hist batch", "hist", add_shard_batched),
    ("moments+shells", "shells", add_shard),
    ("moments+shells batch", "shells", add_shard_batched),
    ("moments+hist+shells", "hist+shells", add_shard),
)
#: (with shells, without): the pairs whose time ratio is the cost of the q shells
SHELL_PAIRS = (("moments+shells", "moments"), ("moments+shells batch", "moments batch"),
               ("moments+hist+shells", "moments+hist"))


def measure_density(frames, setups, n_frames, n_buffers, repeats, thread_counts) -> list[dict]:
    """One row per (variant, thread count) at one frame density.

    Repeats are the outer loop (every variant once per round), so a burst of load from other
    users of the machine hits all variants alike instead of one variant's every repeat.
    """
    scan = next(iter(setups.values())).scan
    shards = {n: plan_shards(scan, n_frames, n, n_buffers) for n in thread_counts}
    accumulators = {key: fresh_accumulator(setup) for key, setup in setups.items()}
    best: dict[tuple[str, int], float] = {}
    for _ in range(repeats):
        for n_threads in thread_counts:
            for name, key, work in VARIANTS:
                acc = accumulators[key] if key else None
                seconds = run_threads(work, frames, shards[n_threads], acc)
                best[name, n_threads] = min(seconds, best.get((name, n_threads), np.inf))
    rows = [{"variant": name, "threads": n, "fps": n_frames / best[name, n]}
            for n in thread_counts for name, _key, _work in VARIANTS]
    for row in rows:  # ratio to the ceiling of the same thread count
        row["ratio"] = row["fps"] * best["read-only", row["threads"]] / n_frames
    return rows


# ---- reporting --------------------------------------------------------------------------------
def describe_load() -> str:
    """Load average: this benchmark is meant for shared machines, say how busy this one is."""
    return "load avg: " + " ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1, 5, 15 min)"


def describe_machine() -> list[str]:
    blas = {k: v for k, v in os.environ.items() if k.startswith("OPENBLAS")}
    names = ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS")
    threads = {k: os.environ[k] for k in names if k in os.environ}
    return [
        f"machine : {platform.machine()} {platform.processor() or ''}".rstrip()
        + f", nproc {os.cpu_count()}, usable {len(os.sched_getaffinity(0))}",
        f"versions: python {platform.python_version()}, numpy {np.__version__}, "
        f"numba {numba.__version__}",
        f"env     : OPENBLAS_* {blas or 'not set'}; {threads or 'OMP/NUMBA_NUM_THREADS not set'}",
        describe_load(),
    ]


def format_table(fraction: float, measured: float, rows: list[dict]) -> list[str]:
    lines = [f"-- {fraction:.0%} non-zero pixels (measured {measured:.2%}) --",
             f"{'variant':<25}{'threads':>8}{'frames/s':>10}{'us/frame':>10}{'MB/s':>8}"
             f"{'% ceil':>8}"]
    for r in rows:
        mbs = r["fps"] * FRAME_BYTES / 1e6
        lines.append(f"{r['variant']:<25}{r['threads']:>8}{r['fps']:>10.0f}{1e6 / r['fps']:>10.1f}"
                     f"{mbs:>8.0f}{r['ratio']:>8.1%}")
    return lines


def format_table_gain(rows: list[dict]) -> str:
    """Speed of the table kernel over the per-hit kernel (same sums), per thread count."""
    fps = {(r["variant"], r["threads"]): r["fps"] for r in rows}
    parts = [f"{n} thr {fps['moments+hist', n] / fps['moments+hist per-hit', n]:.2f}x"
             for n in sorted({r["threads"] for r in rows})]
    return "pixel tables (moments+hist over moments+hist per-hit): " + "; ".join(parts)


def format_shell_cost(rows: list[dict]) -> str:
    """Time per frame with q shells over without, per variant pair and thread count."""
    fps = {(r["variant"], r["threads"]): r["fps"] for r in rows}
    parts = [f"{on} / {off} ({n} thr) {fps[off, n] / fps[on, n]:.3f}"
             for on, off in SHELL_PAIRS for n in sorted({r["threads"] for r in rows})]
    return "q shells cost (time ratio on/off): " + "; ".join(parts)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=2000, help="frames per timed pass")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes; the best is kept")
    parser.add_argument("--bins", type=int, default=32, help="histogram bins per q axis")
    parser.add_argument("--buffers", type=int, default=256, help="distinct frames cycled")
    parser.add_argument("--densities", type=float, nargs="+", default=[0.01, 0.05],
                        help="fractions of non-zero pixels")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--shells", type=int, default=64, help="q shells of the +shells variants")
    parser.add_argument("--quick", action="store_true",
                        help="500 frames, 1 repeat, 64 buffers: a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.frames, args.repeats, args.buffers = 500, 1, 64
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    t0 = time.perf_counter()
    setups = {"moments": make_setup(0), "hist": make_setup(args.bins),
              "shells": make_setup(0, args.shells),
              "hist+shells": make_setup(args.bins, args.shells)}
    hist = setups["hist"]
    hist_mib = hist.scan.n_points * hist.grid.n_bins * hist.histogram_dtype.itemsize / 2**20
    print("\n".join(describe_machine()))
    print(f"frames  : {DETECTOR_SHAPE[0]}x{DETECTOR_SHAPE[1]} uint32 ({FRAME_BYTES / 1e6:.2f} "
          f"MB), whole detector, {args.frames} per pass, best of {args.repeats}")
    print(f"working : {args.buffers} distinct frame buffers = "
          f"{args.buffers * FRAME_BYTES / 2**20:.0f} MiB cycled; histogram {args.bins}^3 "
          f"{hist.histogram_dtype} x {hist.scan.n_points} map pixels = {hist_mib:.0f} MiB")
    for k, fraction in enumerate(args.densities):
        frames = make_frames(args.buffers, fraction, seed=k)
        measured = np.count_nonzero(frames) / frames.size
        warm_up(frames, setups)
        rows = measure_density(frames, setups, args.frames, args.buffers, args.repeats,
                               args.threads)
        print("\n".join(["", *format_table(fraction, measured, rows), format_table_gain(rows),
                         format_shell_cost(rows)]),
              flush=True)
        del frames
    print(f"\n{describe_load()}; total {time.perf_counter() - t0:.0f} s")
    print("MB/s = frame bytes read per second; % ceil = frames/s over the read-only pass with the "
          "same thread count; us/frame = wall time per frame (all threads together)")


if __name__ == "__main__":
    main()
