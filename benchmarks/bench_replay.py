"""Replay at --rate max against the live processor, and process-file, in one run.

The simulator writes an ID01 BLISS scan set (Maxipix 516 x 516 frames in Lima files behind a
virtual dataset; bitshuffle-LZ4 as Eiger/Lima write them, or ``--file-compression gzip|none``). Then, measured in this run:

1. the file replay sender alone (another process) into a PULL socket that records what it
   receives: the fastest the replay of a beamline file can send (read, encode, send);
2. the file replay (another process) into the real :class:`LiveProcessor` (this process);
3. the replay of that recording (the same messages, nothing to read or encode) alone and
   into the processor: the processor's own rate on this stream, when its source is not the
   limit;
4. ``process-file`` on the same files (no sockets, two accumulating threads).

Replay at ``--rate max`` sustains the processor if its rate alone is at least the
processor's rate from (3).

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

from sxdm_stream.runtime.process_file import process_file_scan  # noqa: E402
from sxdm_stream.runtime.processor import LiveProcessor  # noqa: E402
from sxdm_stream.simulators.files import FRAME_COMPRESSIONS, write_id01_scan_set  # noqa: E402
from sxdm_stream.simulators.scenarios import default_scenario  # noqa: E402
from sxdm_stream.sources.dectris.sender import StreamSender  # noqa: E402
from sxdm_stream.sources.files.filescan import GeometryOverrides  # noqa: E402
from sxdm_stream.sources.files.open import SourceOptions, open_source  # noqa: E402
from sxdm_stream.sources.recordings.format import RecordingReader, RecordingWriter  # noqa: E402
from sxdm_stream.sources.recordings.replay import replay_file_scan, replay_recording  # noqa: E402


def replay_process(master: str, roi, compression: str, queue) -> None:
    """The replay, as ``sxdm-stream replay --rate max`` runs it: bind, report, send."""
    scan_file = open_source(master, SourceOptions(overrides=GeometryOverrides(roi=roi)))
    sender = StreamSender("tcp://127.0.0.1:*", compression=compression)
    queue.put(sender.endpoint)
    t0 = time.perf_counter()
    n = replay_file_scan(scan_file, sender)
    queue.put(n / (time.perf_counter() - t0))
    sender.close()


def recording_process(path: str, roi, compression: str, queue) -> None:
    """``sxdm-stream replay RECORDING --rate max``: bind, report, send."""
    sender = StreamSender("tcp://127.0.0.1:*")
    queue.put(sender.endpoint)
    t0 = time.perf_counter()
    with RecordingReader(path) as reader:
        n = replay_recording(reader, sender)
    queue.put((n - 2) / (time.perf_counter() - t0))          # images: start and end excluded
    sender.close()


def start_replay(master, roi, compression, target=replay_process):
    queue = mp.get_context("spawn").Queue()
    proc = mp.get_context("spawn").Process(target=target,
                                           args=(str(master), roi, compression, queue))
    proc.start()
    return proc, queue, queue.get(timeout=120)


def sender_alone(master, roi, compression, n_frames: int, record: Path | None = None,
                 target=replay_process) -> float:
    """The sender's rate into a PULL socket that only receives (and records, if asked)."""
    proc, queue, endpoint = start_replay(master, roi, compression, target)
    pull = zmq.Context.instance().socket(zmq.PULL)
    pull.connect(endpoint)
    writer = RecordingWriter(record) if record is not None else None
    for _ in range(n_frames + 2):
        parts = pull.recv_multipart()
        if writer is not None:
            writer.write(parts, time.perf_counter())
    if writer is not None:
        writer.close()
    rate = queue.get(timeout=600)
    proc.join(60)
    pull.close()
    return rate


def replay_into_processor(master, roi, compression, out: Path,
                          target=replay_process) -> tuple[float, float, dict]:
    proc, queue, endpoint = start_replay(master, roi, compression, target)
    with LiveProcessor(endpoint, out=out, max_series=1) as live:
        assert live.wait(600), "the series did not complete"
    send_rate = queue.get(timeout=600)
    proc.join(60)
    status = live.status()
    return status.frames_per_s, send_rate, status


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=2, default=(30, 30))
    parser.add_argument("--angles", type=int, default=15)
    parser.add_argument("--compression", choices=["bslz4", "lz4", "none"], default="bslz4")
    parser.add_argument("--dir", type=Path, help="where to write the files (default: a temp dir)")
    parser.add_argument("--file-compression", choices=FRAME_COMPRESSIONS, default="bslz4",
                        help="of the frames in the Lima files (bslz4: as Eiger/Lima write them)")
    args = parser.parse_args(argv)
    scenario = default_scenario(shape=tuple(args.shape), n_angles=args.angles)
    roi = scenario.geometry.detector.roi
    n = scenario.scan.n_frames
    with tempfile.TemporaryDirectory() as tmp:
        base = args.dir or Path(tmp)
        t0 = time.perf_counter()
        master = write_id01_scan_set(scenario, base / "id01", compression=args.file_compression)
        print(f"wrote {n} frames of 516 x 516 as an ID01 scan set ({args.file_compression} in "
              f"the files) in {time.perf_counter() - t0:.1f} s (ROI {roi}, stream images "
              f"{args.compression})")
        recording = base / "run.stream"
        alone = sender_alone(master, roi, args.compression, n, record=recording)
        print(f"file replay --rate max, sender alone:               {alone:8.0f} frames/s")
        live_rate, send_rate, status = replay_into_processor(master, roi, args.compression,
                                                             base / "live.h5")
        print(f"file replay --rate max into the live processor:     {live_rate:8.0f} frames/s "
              f"processed (sender {send_rate:.0f} frames/s; processed {status.processed}, "
              f"dropped {status.dropped}, rejected {sum(status.rejected.values())})")
        rec_alone = sender_alone(recording, roi, args.compression, n, target=recording_process)
        print(f"recording replay --rate max, sender alone:          {rec_alone:8.0f} frames/s")
        own_rate, rec_send, rec_status = replay_into_processor(
            recording, roi, args.compression, base / "rec.h5", target=recording_process)
        print(f"recording replay into the live processor:           {own_rate:8.0f} frames/s "
              f"processed (sender {rec_send:.0f} frames/s; processed {rec_status.processed})")
        scan_file = open_source(master, SourceOptions(overrides=GeometryOverrides(roi=roi)))
        result = process_file_scan(scan_file, base / "file.h5", workers=2)
        print(f"process-file, 2 threads, no sockets:                {result.frames_per_s:8.0f} "
              f"frames/s")
        for what, rate in (("file", alone), ("recording", rec_alone)):
            verdict = "sustains" if rate >= own_rate else "does NOT sustain"
            print(f"=> {what} replay at --rate max {verdict} the processor's own rate "
                  f"({rate:.0f} vs {own_rate:.0f} frames/s, ratio {rate / own_rate:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
