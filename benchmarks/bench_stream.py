"""End-to-end streaming benchmark: detector process -> ZeroMQ -> live processor, the processor
of a baseline git revision and of the current tree measured in ONE run, and libertem-dectris
as an outside anchor.

A sender process (:mod:`stream_detector`) plays a DECTRIS detector (PUSH, bound on loopback)
of 516 x 516 uint32 frames with a given fraction of non-zero pixels, bslz4-compressed or
uncompressed; it pre-encodes a pool of distinct images and only wraps each in its image message
when sending. Each processor is the real ``python -m sxdm_stream.cli process`` (receive, decode,
accumulate moments + 32^3 histogram, publish snapshots at 10 Hz, write the results file), in
its own process, of:

``baseline REV``   git revision REV (``--baseline``, default aafba82, the tree before issue 14)
                   checked out into a temporary worktree, importing its own code
                   (:mod:`stream_trees`; where each package came from is printed)
``current``        this working tree
``current ARGS``   this working tree with more ``process`` arguments (``--process-args``,
                   repeatable: e.g. ``--process-args "--workers 2"``)
``libertem-dectris``  the same images as stream v1 into LiberTEM-live's Rust receiver,
                   decoded into numpy and each frame summed (:mod:`stream_anchor`; bslz4 only)

Printed per run, and again at the end as one table with the ratios:

``frames/s``   the processor's own figure, in its last snapshot: first image received to the
               last one processed (libertem-dectris: first frame stack handed over to the last
               frame summed, that stack's frames not counted)
``x base``     frames/s over the baseline's, same payload and ROI, this run
``x anchor``   frames/s over libertem-dectris', same payload and ROI, this run
``steady/s``   the sender's images/s over the second half of the series: under ``--policy
               block``, once the processor's queues are full, the rate at which it takes images
               (the only rate of a processor that publishes no snapshots, as ``process
               --workers N`` so far; libertem-dectris' queues hold the whole series: none)
``x steady``   steady/s over the baseline's
``e2e/s``      all images over the time from the first one sent to the last snapshot received
``sent/s``     the sender's images/s over the whole series
``processed``, ``dropped``, ``rejected``: images, in the last snapshot's status (every image
               must be one of them; with ``--policy block`` none dropped, and the run's exit
               status must be 0; libertem-dectris: the ROI sums of all frames must add up to
               the sender's)
``p50 ms``, ``p99 ms``: frame-to-snapshot latency, from a frame's arrival at the processor to
               the publication of the first snapshot that includes it (the last snapshot's own
               frames are not in its figures)

With ``--policy block`` (default) nothing can be dropped and the sender is slowed to the
processor's pace; with ``--policy drop --rate R`` the sender keeps its rate and what the
processor cannot take is dropped and counted (libertem-dectris never drops: it slows the
sender). The sender starts at once: PUSH sends nothing before the processor has connected.
Every processor first runs a 16-frame series per payload, not measured (its numba kernels
compiled and cached for its tree, its bytecode written). ``--frames`` is rounded up to whole
rocking angles of the 60 x 60 map; a run that has not ended after ``--timeout`` seconds
prints what it got and the benchmark exits 1 (as it does when a run fails).

    .venv/bin/python benchmarks/bench_stream.py                  # both payloads, full frame + ROI
    .venv/bin/python benchmarks/bench_stream.py --frames 5000 --process-args "--workers 2"
    .venv/bin/python benchmarks/bench_stream.py --baseline none --no-anchor --compression bslz4
    .venv/bin/python benchmarks/bench_stream.py --frames 20000 --policy drop --rate 4000
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import multiprocessing as mp
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import zmq  # noqa: E402

import stream_anchor  # noqa: E402
from stream_detector import MAP, StreamSpec, sender, whole_angles  # noqa: E402
from stream_trees import Processor, baseline_tree, current_tree, imported_from  # noqa: E402

DEFAULT_BASELINE = "aafba82"
ANCHOR = "libertem-dectris"
WARMUP_MAP = (4, 4)
COLS = ["frames/s", "x base", "x anchor", "steady/s", "x steady", "e2e/s", "sent/s",
        "processed", "dropped", "rejected", "p50 ms", "p99 ms"]


class Sender:
    """The detector process of one run: started bound, told when to send, always ended."""

    def __init__(self, spec: StreamSpec) -> None:
        ctx = mp.get_context("spawn")
        self.reports, self.go = ctx.Queue(), ctx.Event()
        self.process = ctx.Process(target=sender, args=(self.reports, self.go, spec))
        self.process.start()
        self.endpoint = self.reports.get(timeout=120)

    def report(self, wait_s: float) -> dict:
        try:
            return self.reports.get(timeout=wait_s)
        except queue.Empty:                   # still sending
            return {"sent/s": float("nan"), "first_sent_s": None, "roi_total": None}

    def close(self, wait_s: float) -> None:
        self.process.join(wait_s)
        if self.process.is_alive():            # blocked on a receiver that stopped taking
            self.process.terminate()
            self.process.join()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processor(proc: Processor, spec: StreamSpec, policy: str, workdir: Path,
                  timeout_s: float, tag: str) -> dict:
    """One series through a fresh ``process`` of ``proc``: the processor's status in its last
    snapshot (when it publishes them), the sender's rates, the exit status."""
    snd = Sender(spec)
    publish = f"tcp://127.0.0.1:{free_port()}" if proc.snapshots else None
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"sxdm.snapshot")
    if publish:
        sub.connect(publish)
    log_path = workdir / f"{tag}.log"
    cmd = proc.command("process", "--connect", snd.endpoint, "--out", str(workdir / f"{tag}.h5"),
                       "--series", "1", "--policy", policy, "--bins", "32", "32", "32",
                       *(["--publish", publish] if publish else []))
    deadline = time.perf_counter() + timeout_s
    with open(log_path, "w") as log:
        p = subprocess.Popen(cmd, cwd=proc.cwd, env=proc.env, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True)
    # PUSH sends nothing before a peer connects: the first image leaves once the processor is up
    snd.go.set()
    last, done_s, ended, rc = None, None, False, None
    try:
        last, done_s = _follow(p, sub, deadline) if publish else (None, None)
        ended = last.get("complete") is True if publish and last else not publish
        rc = p.wait(max(1.0, deadline - time.perf_counter())) if ended else p.poll()
        sent = snd.report(10 if rc is not None else 0.1)
    except subprocess.TimeoutExpired:
        sent = {}
    finally:
        sub.close(linger=0)
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        snd.close(10 if rc is not None else 0)
    return _result(last, done_s, sent, rc, spec, policy, log_path)


def _follow(p, sub, deadline: float):
    """Snapshot headers until the series' last one (``complete``), the process's end or the
    deadline: the last header and when it came."""
    last, done_s = None, None
    while time.perf_counter() < deadline:
        if not sub.poll(200):
            if p.poll() is not None:
                break
            continue
        header = json.loads(sub.recv_multipart()[1])
        last, done_s = header, time.perf_counter()
        if header.get("complete") is True:
            break
    return last, done_s


def _result(last, done_s, sent: dict, rc, spec: StreamSpec, policy: str,
            log_path: Path) -> dict:
    nan = float("nan")
    stats = (last or {}).get("stats")
    tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
    r = {"timed_out": rc is None, "sent/s": sent.get("sent/s", nan),
         "steady/s": sent.get("steady/s") if policy == "block" else None, "log": tail}
    if stats is None:                         # no snapshots: the exit status vouches
        r.update({"failed": rc != 0, "what": f"exit {rc} (no snapshots: counts not seen)"
                  + ("" if rc == 0 else f"; log {log_path}: " + " / ".join(tail))})
        return r
    processed, dropped = stats.get("processed", 0), stats.get("dropped", 0)
    rejected = sum((stats.get("rejected") or {}).values())
    first = sent.get("first_sent_s")
    ok_rc = rc == 0 or (rc == 1 and policy == "drop" and dropped)
    accounted = processed + dropped + rejected == spec.n_frames
    lat = [stats.get("latency_p50_s"), stats.get("latency_p99_s")]
    r.update({"failed": not (ok_rc and accounted),
              "frames/s": stats.get("frames_per_s", nan),
              "e2e/s": spec.n_frames / (done_s - first) if done_s and first else nan,
              "processed": processed, "dropped": dropped, "rejected": rejected,
              "p50 ms": 1000 * lat[0] if lat[0] is not None else nan,
              "p99 ms": 1000 * lat[1] if lat[1] is not None else nan,
              "what": f"exit {rc}, processed {processed}, dropped {dropped}, rejected "
                      f"{rejected} of {spec.n_frames}" + ("" if ok_rc and accounted else
                                                          f"; log {log_path}: " + " / ".join(tail))})
    return r


def run_anchor(spec: StreamSpec, workdir: Path, timeout_s: float) -> dict:
    """The same images into libertem-dectris (stream v1, header basic, no appendix)."""
    snd = Sender(dataclasses.replace(spec, fmt="libertem"))
    result = {"timed_out": True, "what": "interrupted"}
    try:
        result = stream_anchor.receive(snd.endpoint, snd.go, spec.n_frames, spec.roi, workdir,
                                       timeout_s)
        sent = snd.report(10 if not result["timed_out"] else 0.1)
    finally:
        snd.close(10 if not result["timed_out"] else 0)
    first, total = sent.get("first_sent_s"), sent.get("roi_total")
    summed_ok = total is not None and result.get("roi_total") == total
    result.update({"sent/s": sent.get("sent/s"), "dropped": 0, "rejected": 0,
                   "failed": not summed_ok,
                   "e2e/s": spec.n_frames / (result["done_s"] - first)
                   if first and result.get("done_s") else float("nan")})
    if not summed_ok:
        result["what"] += f"; ROI total {result.get('roi_total')}, the sender's {total}"
    return result


def warm_up(proc: Processor, args, workdir: Path) -> None:
    """A 16-frame series per payload through ``proc``: its numba kernels compiled and cached,
    its bytecode written, before anything is timed; a processor that refuses ``--publish``
    is measured without snapshots from then on. Raises RuntimeError if a series fails."""
    for compression in args.compression:
        spec = StreamSpec(whole_angles(1, WARMUP_MAP), args.density, _payload(compression),
                          args.roi[0] or None, None, 4, args.format, WARMUP_MAP)
        t0 = time.perf_counter()
        tag = f"warmup-{_slug(proc.name)}-{compression}"
        r = run_processor(proc, spec, "block", workdir, args.timeout, tag)
        if proc.snapshots and r["failed"] and any("--publish" in line for line in r["log"]):
            proc.snapshots = False
            print(f"  {proc.name}: refuses --publish ({r['log'][-1].strip()}): measured "
                  "without snapshots (steady/s and exit status only)", flush=True)
            r = run_processor(proc, spec, "block", workdir, args.timeout, tag + "-nopub")
        if r["timed_out"] or r["failed"]:
            raise RuntimeError(f"{proc.name}: the warm-up series failed: {r['what']}")
        print(f"  {proc.name}: warm-up ({compression}) {time.perf_counter() - t0:.1f} s",
              flush=True)


def _payload(compression: str) -> str | None:
    return None if compression == "none" else compression


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name)


def _fmt(value, col: str) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return f"{'-':>9}"
    return f"{value:>9.2f}" if col.startswith("x ") else f"{value:>9.0f}"


def print_row(payload: str, roi, name: str, r: dict) -> None:
    print(f"{payload:>7} {roi or 'full':>5} {name:<28} "
          + " ".join(_fmt(r.get(c), c) for c in COLS), flush=True)


def ratios(rows: list, baseline: str | None) -> None:
    """``x base``, ``x steady`` and ``x anchor`` of every row, against the rows of the same
    payload and ROI: frames/s over the baseline's, steady/s over the baseline's, frames/s
    (steady/s for a processor without snapshots) over libertem-dectris' frames/s."""
    by = {(p, roi, name): r for p, roi, name, r in rows}
    for p, roi, name, r in rows:
        base, anchor = by.get((p, roi, baseline)), by.get((p, roi, ANCHOR))
        r["x base"] = _over(r.get("frames/s"), base and base.get("frames/s"))
        r["x steady"] = _over(r.get("steady/s"), base and base.get("steady/s"))
        r["x anchor"] = _over(r.get("frames/s") or r.get("steady/s"),
                              anchor and anchor.get("frames/s"))


def _over(a, b):
    return a / b if a and b and a == a and b == b else None


def measure(processors: list[Processor], baseline: str | None, args, frames: int,
            workdir: Path) -> int:
    rows, failed = [], False
    header = f"{'payload':>7} {'roi':>5} {'processor':<28} " + " ".join(f"{c:>9}" for c in COLS)
    print(header)
    anchor_why = None if args.anchor else "--no-anchor"
    anchor_why = anchor_why or stream_anchor.available()
    for compression in args.compression:
        for roi in args.roi:
            spec = StreamSpec(frames, args.density, _payload(compression), roi or None,
                              args.rate, args.pool, args.format)
            for k, proc in enumerate(processors):
                r = run_processor(proc, spec, args.policy, workdir, args.timeout,
                                  f"{compression}-{roi}-{k}")
                rows.append((compression, roi, proc.name, r))
                print_row(compression, roi, proc.name, r)
                failed |= _say(r, proc.name, args.timeout)
            if anchor_why is None and compression == "bslz4":
                r = run_anchor(spec, workdir, args.timeout)
                rows.append((compression, roi, ANCHOR, r))
                print_row(compression, roi, ANCHOR, r)
                failed |= _say(r, ANCHOR, args.timeout)
    ratios(rows, baseline)
    print(f"\nsummary, this run (x base, x steady: frames/s, steady/s over {baseline or 'no baseline'}"
          f"'s; x anchor: frames/s over {ANCHOR}'s; same payload and ROI)\n{header}")
    for row in rows:
        print_row(*row)
    if anchor_why is not None:
        print(f"{ANCHOR}: not run ({anchor_why})")
    elif "none" in args.compression:
        print(f"{ANCHOR}: no 'none' rows (it decodes bs*-lz4< and lz4< images, not raw '<')")
    if not all(p.snapshots for p in processors):
        print("a processor without snapshots has no frames/s, counts or latency: its x anchor "
              "is its steady/s over the anchor's frames/s")
    return 1 if failed else 0


def _say(r: dict, name: str, timeout_s: float) -> bool:
    if r["timed_out"]:
        print(f"  {name}: timed out after {timeout_s:.0f} s: {r['what']}", flush=True)
    elif r["failed"]:
        print(f"  {name}: FAILED: {r['what']}", flush=True)
    return r["timed_out"] or r["failed"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=20000,
                   help="images per run, rounded up to whole rocking angles of 3600")
    p.add_argument("--density", type=float, default=0.05, help="fraction of non-zero pixels")
    p.add_argument("--policy", choices=["block", "drop"], default="block")
    p.add_argument("--rate", type=float, help="sender images/s (default: as fast as possible)")
    p.add_argument("--pool", type=int, default=64, help="distinct pre-encoded images")
    p.add_argument("--roi", type=int, nargs="*", default=[0, 128],
                   help="square detector ROI sizes to run (0 = whole detector)")
    p.add_argument("--compression", nargs="*", default=["bslz4", "none"],
                   choices=["bslz4", "none"])
    p.add_argument("--format", choices=["cbor", "legacy"], default="cbor",
                   help="stream our processors receive: v2 (cbor) or v1 (legacy); "
                        f"{ANCHOR} always gets v1")
    p.add_argument("--baseline", default=DEFAULT_BASELINE, metavar="REV",
                   help="git revision of the baseline processor ('none': no baseline)")
    p.add_argument("--process-args", action="append", default=[], metavar="ARGS",
                   help="measure the current tree once more with these process arguments "
                        "(one shell-quoted string; repeatable), e.g. --process-args=--workers=2 "
                        "or --process-args \"--workers 2\"")
    p.add_argument("--no-anchor", dest="anchor", action="store_false",
                   help=f"leave out {ANCHOR}")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds a run may take; past them, what it got is printed, exit 1")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    frames = whole_angles(args.frames)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # the worktree removed all the same
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()}, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS')}")
    print(f"{frames} frames 516x516 uint32 ({frames // (MAP[0] * MAP[1])} rocking angles of "
          f"{MAP[0]}x{MAP[1]}), {100 * args.density:.0f}% non-zero, stream {args.format}, policy "
          f"{args.policy}, sender rate {args.rate or 'max'}, snapshots 10 Hz, 32^3 histogram")
    with tempfile.TemporaryDirectory(prefix="bench_stream_") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        current = current_tree(workdir)
        processors = [current] + [current.with_args(a) for a in args.process_args]
        if args.baseline != "none":
            processors.insert(0, stack.enter_context(baseline_tree(args.baseline, workdir)))
        for proc in processors:
            print(f"  {proc.name}: {' '.join(proc.extra_args) or 'no extra args'}; imports "
                  + ", ".join(f"{m} from {p}" for m, p in imported_from(proc).items()))
        baseline = processors[0].name if args.baseline != "none" else None
        ready = []
        for proc in processors:
            try:
                warm_up(proc, args, workdir)
                ready.append(proc)
            except RuntimeError as exc:
                print(f"  left out: {exc}", flush=True)
        code = measure(ready, baseline, args, frames, workdir) if ready else 1
        code = code or int(len(ready) < len(processors))
    print(f"load after: {os.getloadavg()}")
    return code


if __name__ == "__main__":
    sys.exit(main())
