"""Replay at --rate max against the live processor, and process-file, in one run.

The simulator writes an ID01 BLISS scan set (Maxipix 516 x 516 frames, gzip in Lima files
behind a virtual dataset). Then, measured in this run:

1. the replay sender alone (another process) into a PULL socket that only counts: the
   fastest the replay can send (read the file, encode, send);
2. the replay (another process) into the real :class:`LiveProcessor` (this process):
   frames/s end to end, which is the processor's rate if the sender keeps ahead of it;
3. ``process-file`` on the same files (no sockets, two accumulating threads).

If (1) is above (2), replay at ``--rate max`` sustains the processor's rate.

    .venv/bin/python benchmarks/bench_replay.py
    .venv/bin/python benchmarks/bench_replay.py --shape 30 30 --angles 21 --compression none
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import zmq  # noqa: E402

from sxdm_stream.filescan import GeometryOverrides  # noqa: E402
from sxdm_stream.live import LiveProcessor  # noqa: E402
from sxdm_stream.process_file import process_file_scan  # noqa: E402
from sxdm_stream.replay import replay_file_scan  # noqa: E402
from sxdm_stream.sender import StreamSender  # noqa: E402
from sxdm_stream.simulators.files import write_id01_scan_set  # noqa: E402
from sxdm_stream.simulators.scenarios import default_scenario  # noqa: E402
from sxdm_stream.sources import SourceOptions, open_source  # noqa: E402


def replay_process(master: str, roi, compression: str, queue) -> None:
    """The replay, as ``sxdm-stream replay --rate max`` runs it: bind, report, send."""
    scan_file = open_source(master, SourceOptions(overrides=GeometryOverrides(roi=roi)))
    sender = StreamSender("tcp://127.0.0.1:*", compression=compression)
    queue.put(sender.endpoint)
    t0 = time.perf_counter()
    n = replay_file_scan(scan_file, sender)
    queue.put(n / (time.perf_counter() - t0))
    sender.close()


def start_replay(master, roi, compression):
    queue = mp.get_context("spawn").Queue()
    proc = mp.get_context("spawn").Process(target=replay_process,
                                           args=(str(master), roi, compression, queue))
    proc.start()
    return proc, queue, queue.get(timeout=120)


def sender_alone(master, roi, compression, n_frames: int) -> float:
    proc, queue, endpoint = start_replay(master, roi, compression)
    pull = zmq.Context.instance().socket(zmq.PULL)
    pull.connect(endpoint)
    for _ in range(n_frames + 2):
        pull.recv_multipart(copy=False)
    rate = queue.get(timeout=600)
    proc.join(60)
    pull.close()
    return rate


def replay_into_processor(master, roi, compression, out: Path) -> tuple[float, float, dict]:
    proc, queue, endpoint = start_replay(master, roi, compression)
    with LiveProcessor(endpoint, out=out, max_series=1) as live:
        assert live.wait(600), "the series did not complete"
    send_rate = queue.get(timeout=600)
    proc.join(60)
    status = live.status()
    return status["frames_per_s"], send_rate, status


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=2, default=(30, 30))
    parser.add_argument("--angles", type=int, default=15)
    parser.add_argument("--compression", choices=["bslz4", "lz4", "none"], default="bslz4")
    parser.add_argument("--dir", type=Path, help="where to write the files (default: a temp dir)")
    args = parser.parse_args(argv)
    scenario = default_scenario(shape=tuple(args.shape), n_angles=args.angles)
    roi = scenario.geometry.detector.roi
    n = scenario.scan.n_frames
    with tempfile.TemporaryDirectory() as tmp:
        base = args.dir or Path(tmp)
        t0 = time.perf_counter()
        master = write_id01_scan_set(scenario, base / "id01")
        print(f"wrote {n} frames of 516 x 516 as an ID01 scan set in "
              f"{time.perf_counter() - t0:.1f} s (ROI {roi}, images {args.compression})")
        alone = sender_alone(master, roi, args.compression, n)
        print(f"replay --rate max, sender alone (counting receiver): {alone:8.0f} frames/s")
        live_rate, send_rate, status = replay_into_processor(master, roi, args.compression,
                                                             base / "live.h5")
        print(f"replay --rate max into the live processor:          {live_rate:8.0f} frames/s "
              f"processed (sender {send_rate:.0f} frames/s; processed {status['processed']}, "
              f"dropped {status['dropped']}, rejected {sum(status['rejected'].values())})")
        scan_file = open_source(master, SourceOptions(overrides=GeometryOverrides(roi=roi)))
        result = process_file_scan(scan_file, base / "file.h5", workers=2)
        print(f"process-file, 2 threads, no sockets:                {result.frames_per_s:8.0f} "
              f"frames/s")
        verdict = "sustains" if alone >= live_rate else "does NOT sustain"
        print(f"=> replay at --rate max {verdict} the processor's rate "
              f"({alone:.0f} vs {live_rate:.0f} frames/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
