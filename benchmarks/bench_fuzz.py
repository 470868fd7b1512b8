"""Fuzz benchmark: a live processor under a long stream of hostile messages and requests.

A clean simulated scan (the tests' small scenario: 12 x 12 map, 15 rocking angles, 2160
frames of 516 x 516 uint32, stream v2 bslz4 with measured positions) goes to a real
:class:`sxdm_stream.runtime.processor.LiveProcessor` over a PUSH socket on loopback, interleaved with
``--messages`` hostile ones made by the mutation families of
:mod:`sxdm_stream.simulators.hostile`, shared with ``tests/sources/test_fuzz.py`` (flips,
truncation, parts, fields, arrays, 256 MiB bombs, nesting, junk, and attacks on the running
series), plus a hostile pixel request on the processor's REP service every ``--pixel-every``
messages. A clean run of the same scan through the same path comes first: its maps are the
reference, and the RSS after it the baseline.

Printed: messages tried (by family) and pixel requests, the processor's rejection reasons
with counts (``status()``), internal errors per loop, thread deaths (every thread the processor
started must be alive at the end), peak RSS against the baseline, and whether the maps of the
interleaved clean scan equal the clean run's. Exit status 1 if a thread died, the processor
stopped taking messages or answering requests, or the maps differ.

    .venv/bin/python benchmarks/bench_fuzz.py                     # 20000 messages
    .venv/bin/python benchmarks/bench_fuzz.py --messages 3000 --seed 1
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import resource
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import zmq  # noqa: E402

from sxdm_stream.core.maps import map_arrays  # noqa: E402
from sxdm_stream.errors import BadMessageError  # noqa: E402
from sxdm_stream.messages import ImageFrame, LiveStatus, SeriesEnd  # noqa: E402
from sxdm_stream.runtime.processor import LiveProcessor  # noqa: E402
from sxdm_stream.simulators import hostile  # noqa: E402
from sxdm_stream.simulators.scenarios import default_scenario  # noqa: E402
from sxdm_stream.simulators.sender import frame_positions, series_start  # noqa: E402
from sxdm_stream.sinks.publish import decode_pixel_reply, encode_pixel_request  # noqa: E402
from sxdm_stream.sources.dectris.codec import (encode_end_v2, encode_image_v2,  # noqa: E402
                                               encode_start_v2)
from sxdm_stream.sources.dectris.sender import positions_user_data  # noqa: E402

SERIES, UNIQUE = 7, "bench-run"


@dataclass
class Run:
    """What one pass of the scan through a live processor gave."""

    frames: int
    families: Counter = field(default_factory=Counter)   # hostile messages sent, by family
    pixel_requests: int = 0
    bad_replies: list[str] = field(default_factory=list)
    stalled: str | None = None
    dead: list[str] = field(default_factory=list)
    status: LiveStatus = field(default_factory=LiveStatus)
    complete: list[bool] = field(default_factory=list)
    maps: Any = None
    seconds: float = 0.0

    @property
    def hostile(self) -> int:
        return sum(self.families.values())


def rss_mib() -> float:
    """Peak resident set size of this process so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def clean_image(scenario, index: int) -> bytes:
    frame = scenario.simulator.frame(*scenario.scan.locate(index))
    user = positions_user_data(frame_positions(scenario, index))
    return encode_image_v2(ImageFrame(SERIES, index, frame, UNIQUE, user))


def run_scan(scenario, corpus, messages: int, pixel_every: int, rng: random.Random,
             timeout_s: float, out: Path) -> Run:
    """The scan through a fresh processor, ``messages`` hostile ones spread over it."""
    scan = scenario.scan
    run = Run(scan.n_frames)
    start = series_start(scenario, SERIES, UNIQUE, UNIQUE)
    push = zmq.Context.instance().socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.bind("tcp://127.0.0.1:*")
    live = LiveProcessor(push.getsockopt_string(zmq.LAST_ENDPOINT), out=out,
                         serve="tcp://127.0.0.1:*")
    finished = threading.Event()
    live.on_result(lambda result: finished.set())
    before = set(threading.enumerate())
    live.start()
    threads = [t for t in threading.enumerate() if t not in before]
    feed = hostile.LiveFeed(live.serve_endpoint, push, threads, timeout_s)
    t0 = time.perf_counter()
    try:
        feed.send(encode_start_v2(start))
        for index in range(scan.n_frames):
            feed.send(clean_image(scenario, index))
            due = (index + 1) * messages // scan.n_frames - index * messages // scan.n_frames
            for _ in range(due):
                attack = hostile.hostile_during(rng, scenario, corpus, start, index + 1)
                run.families[attack.family] += 1
                feed.send(attack.parts)
                if pixel_every and run.hostile % pixel_every == 0:
                    ask_hostile_pixel(feed, rng, run)
        feed.send(encode_end_v2(SeriesEnd(SERIES, UNIQUE)))
        feed.wait(lambda: finished.wait(0.05), "end of the series")
        point = int(np.argmax(live.last_maps.intensity)) if live.last_maps is not None else 0
        run.pixel_requests += 1
        try:
            answer = decode_pixel_reply(feed.ask(encode_pixel_request(point))).header.get("point")
        except BadMessageError as exc:
            answer = exc
        if answer != point:
            run.bad_replies.append(f"valid request for point {point}: {answer}")
    except hostile.FeedStalled as exc:          # a dead thread or no progress
        run.stalled = str(exc)
    finally:
        run.seconds = time.perf_counter() - t0
        run.dead = [t.name for t in threads if not t.is_alive()]
        feed.close()
        live.stop()
        push.close()
    run.status = live.status()
    run.complete = [r.complete for r in live.results]
    run.maps = live.results[-1].maps if live.results else None
    return run


def ask_hostile_pixel(feed, rng: random.Random, run: Run) -> None:
    what, parts = hostile.hostile_pixel_request(rng)
    run.pixel_requests += 1
    if not hostile.answered_well(feed.ask(parts)):
        run.bad_replies.append(what)


def same_maps(maps, reference) -> str | None:
    """None if equal, else what differs."""
    if maps is None or reference is None:
        return "no maps"
    ours, theirs = map_arrays(maps), map_arrays(reference)
    if sorted(ours) != sorted(theirs):
        return f"maps {sorted(ours)} instead of {sorted(theirs)}"
    for name in ours:
        if not np.allclose(ours[name], theirs[name], rtol=1e-12, atol=1e-9, equal_nan=True):
            return f"map {name} differs"
    return None


def report(clean: Run, fuzzed: Run, baseline_mib: float, peak_mib: float) -> int:
    status = fuzzed.status
    rejected = status.rejected
    rate = (fuzzed.hostile + fuzzed.frames) / max(fuzzed.seconds, 1e-9)
    print(f"messages tried: {fuzzed.hostile} hostile stream messages + {fuzzed.pixel_requests} "
          f"pixel requests, among {status.processed} clean frames processed "
          f"({fuzzed.seconds:.1f} s, {rate:.0f} messages/s)")
    print("  by family: " + ", ".join(f"{k} {v}" for k, v in sorted(fuzzed.families.items())))
    print(f"rejected: {sum(rejected.values())} (every hostile message counted once: "
          f"{'yes' if sum(rejected.values()) == fuzzed.hostile else 'NO'})")
    for reason, count in sorted(rejected.items(), key=lambda kv: -kv[1]):
        print(f"  {reason:24s} {count:8d}")
    print(f"internal errors: {dict(status.internal_errors) or 'none'}; quirks: "
          f"{dict(status.quirks) or 'none'}")
    print(f"pixel requests without a well-formed reply: {fuzzed.bad_replies or 'none'}")
    deaths = len(fuzzed.dead)
    print(f"thread deaths: {deaths}" + (f" ({', '.join(fuzzed.dead)}; {status.failure})"
                                        if deaths else ""))
    if fuzzed.stalled:
        print(f"stalled: {fuzzed.stalled}")
    print(f"peak RSS: {peak_mib:.0f} MiB, baseline before the fuzz {baseline_mib:.0f} MiB "
          f"(+{peak_mib - baseline_mib:.0f} MiB)")
    differs = same_maps(fuzzed.maps, clean.maps)
    print(f"series complete: {fuzzed.complete}; maps equal to the clean run: "
          f"{'yes' if differs is None else 'NO: ' + differs}")
    return 1 if deaths or fuzzed.stalled or fuzzed.bad_replies or differs else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=20000, help="hostile stream messages")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pixel-every", type=int, default=20,
                   help="a hostile pixel request after every N hostile messages (0: none)")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds without progress before the processor is declared stuck")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()}; seed {args.seed}")
    scenario = default_scenario(shape=(12, 12), n_angles=15, rocking_half_range_deg=0.3)
    corpus = hostile.Corpus(scenario)
    with tempfile.TemporaryDirectory() as folder:
        clean = run_scan(scenario, corpus, 0, 0, random.Random(args.seed), args.timeout,
                         Path(folder) / "clean.h5")
        if clean.stalled or clean.dead or clean.complete != [True]:
            print(f"the clean run failed: {clean.stalled or clean.dead or clean.complete}")
            return 1
        baseline = rss_mib()
        fuzzed = run_scan(scenario, corpus, args.messages, args.pixel_every,
                          random.Random(args.seed), args.timeout, Path(folder) / "fuzz.h5")
    return report(clean, fuzzed, baseline, rss_mib())


if __name__ == "__main__":
    sys.exit(main())
