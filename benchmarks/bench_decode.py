"""bslz4 decompression: bitshuffle against DECTRIS' dectris-compression, on 1 and 2 threads.

The same frames (516 x 516 uint32, a given fraction of non-zero pixels, bslz4-compressed as
DECTRIS sends them) go through :func:`sxdm_stream.sources.dectris.lz4_framing.decompress_bslz4`
with each backend: the framing walk, the decompression and (dectris) the copy to a writable
array, as the receiver's decode pool runs them. Printed: frames/s per backend and thread
count, and the ratios within this run (dectris over bitshuffle; 2 threads over 1).

    .venv/bin/python benchmarks/bench_decode.py
    .venv/bin/python benchmarks/bench_decode.py --frames 400 --density 0.2
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from sxdm_stream.sources.dectris.lz4_framing import (BSLZ4_BACKENDS, compress_bslz4,  # noqa: E402
                                                     decompress_bslz4)

SHAPE = (516, 516)


def make_payloads(n: int, density: float, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    payloads = []
    for _ in range(n):
        frame = np.zeros(SHAPE, np.uint32)
        hit = rng.random(SHAPE) < density
        frame[hit] = rng.poisson(5, int(hit.sum())) + 1
        payloads.append(compress_bslz4(frame))
    return payloads


def frames_per_s(payloads: list[bytes], backend: str, threads: int, repeats: int) -> float:
    nbytes = SHAPE[0] * SHAPE[1] * 4

    def one(payload):
        return decompress_bslz4(payload, nbytes, 4, backend=backend)

    best = float("inf")
    # one thread: the calling thread, as the receiver decodes with decode_threads = 1
    with ThreadPoolExecutor(threads) as pool:
        run = map if threads == 1 else pool.map
        list(run(one, payloads[:threads * 4]))                # warm-up (numba, threads)
        for _ in range(repeats):
            began = time.perf_counter()
            list(run(one, payloads))
            best = min(best, time.perf_counter() - began)
    return len(payloads) / best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=200, help="distinct frames per pass")
    p.add_argument("--density", type=float, default=0.05, help="fraction of non-zero pixels")
    p.add_argument("--repeats", type=int, default=5, help="passes; the fastest is kept")
    args = p.parse_args(argv)
    payloads = make_payloads(args.frames, args.density)
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()}; {args.frames} frames "
          f"516x516 uint32, {100 * args.density:.0f}% non-zero, "
          f"{np.mean([len(b) for b in payloads]) / 1024:.0f} KiB compressed")
    rates = {(b, t): frames_per_s(payloads, b, t, args.repeats)
             for b in BSLZ4_BACKENDS for t in (1, 2)}
    print(f"{'backend':>11} {'threads':>8} {'frames/s':>10} {'us/frame':>9} {'x 1 thread':>11}")
    for (backend, threads), rate in rates.items():
        print(f"{backend:>11} {threads:>8} {rate:>10.0f} {1e6 / rate:>9.0f} "
              f"{rate / rates[backend, 1]:>11.2f}")
    if "dectris" in BSLZ4_BACKENDS:
        for threads in (1, 2):
            print(f"dectris / bitshuffle, {threads} thread(s): "
                  f"{rates['dectris', threads] / rates['bitshuffle', threads]:.2f}")
    else:
        print("dectris-compression is not installed: bitshuffle only")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
