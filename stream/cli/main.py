"""Command line: parse, build the configuration, call the library.

  sxdm-stream demo       simulated detector and live processor together over loopback ZeroMQ
                         (no hardware): writes sxdm_results.h5 and sxdm_overview.png
  sxdm-stream simulate   a simulated detector: sends scans as a DECTRIS stream (PUSH, binds)
  sxdm-stream process    the live processor: connects to a detector stream (or bluesky),
                         keeps the maps, publishes snapshots, writes results and checkpoints
  sxdm-stream view       the live viewer (Qt): --connect a processor's snapshots, or a file
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path

from sxdm_stream.cli.args import add_processing_args, add_simulation_args, config_from_args
from sxdm_stream.cli.files import add_file_commands
from sxdm_stream.config import load_scan_file
from sxdm_stream.errors import ConfigError, SxdmError
from sxdm_stream.version import __version__

log = logging.getLogger("sxdm_stream")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sxdm-stream", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"sxdm-stream {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="simulator and processor together, no hardware")
    add_simulation_args(demo)
    add_processing_args(demo)
    demo.add_argument("--out", type=Path, help="output directory (default: results)")
    demo.add_argument("--in-process", action="store_true",
                      help="feed frames directly, without the simulated detector and sockets")
    demo.add_argument("--format", choices=["cbor", "legacy"], default="cbor",
                      help="DECTRIS stream version 2 (cbor) or 1 (legacy)")
    demo.add_argument("--operando", type=int, metavar="N",
                      help="an operando charge of N maps instead (simulate --operando N), "
                           "followed live: particles tracked through the drift, phases, "
                           "alarms; writes OUT/operando_series.h5, OUT/operando_overview.png "
                           "and one results file per map in OUT/operando_maps/, and prints "
                           "the figures against the truth")
    demo.set_defaults(run=run_demo)

    sim = sub.add_parser("simulate", help="simulated detector: send scans as a DECTRIS stream")
    add_simulation_args(sim)
    sim.add_argument("--bind", default="tcp://127.0.0.1:31001",
                     help="PUSH endpoint to bind (default tcp://127.0.0.1:31001; '*' for any port)")
    sim.add_argument("--format", choices=["cbor", "legacy"], default="cbor")
    sim.add_argument("--compression", choices=["bslz4", "lz4", "none"], default="bslz4")
    sim.add_argument("--rate", type=float, help="images per second (default: as fast as taken)")
    sim.add_argument("--series", type=int, default=1, help="number of scans to send")
    sim.add_argument("--no-positions", action="store_true", help="no positions in image user_data")
    sim.add_argument("--operando", type=int, metavar="N",
                     help="send N scans of a simulated battery charge instead "
                          "(sxdm_stream.simulators.operando: LiNiO2 particles through the H2-H3 "
                          "transition, with lag, a moving two-phase front, sample drift "
                          "between maps and a particle appearing midway; voltage, current and "
                          "capacity in each start's sxdm block). --shape, --angles, --counts "
                          "and --seed apply (default a 24x28 map, 9 rocking angles)")
    sim.set_defaults(run=run_simulate)

    proc = sub.add_parser("process", help="live processor of a DECTRIS stream")
    proc.add_argument("--connect", action="append", default=[],
                      help="detector stream endpoint, e.g. tcp://HOST:31001 (repeatable)")
    proc.add_argument("--bluesky", metavar="HOST:PORT",
                      help="listen to bluesky documents at a 0MQ proxy's out-port, e.g. localhost:5578")
    proc.add_argument("--bluesky-serializer", choices=["msgpack", "pickle"], default="msgpack",
                      help="document serializer (pickle only for a trusted proxy)")
    proc.add_argument("--bluesky-publish", metavar="HOST:PORT",
                      help="emit each finished map as a derived bluesky run (prefix 'sxdm-maps') "
                           "to a 0MQ proxy's in-port, e.g. localhost:5577")
    proc.add_argument("--serve", help="REP endpoint answering pixel requests (q histogram), "
                                      "e.g. tcp://127.0.0.1:5561")
    proc.add_argument("--out", type=Path, required=True, help="results file (NeXus HDF5)")
    proc.add_argument("--publish", help="PUB endpoint for map snapshots, e.g. tcp://127.0.0.1:5560")
    proc.add_argument("--operando", type=Path, metavar="SERIES.h5",
                      help="operando time series: every completed map adds a record (summary, "
                           "particles, electrochemistry) to this file; an existing one is continued")
    proc.add_argument("--scan-file", type=Path,
                      help="TOML/JSON with [scan] and [geometry], for streams that carry none")
    proc.add_argument("--mask", metavar="FILE",
                      help="pixels to exclude besides the detector's own mask: .npy, EDF or "
                           "FILE.h5:/path/to/dataset (non-zero = excluded)")
    proc.add_argument("--resume", action="store_true", help="continue from the checkpoint of --out")
    proc.add_argument("--overwrite", action="store_true",
                      help="replace an existing results file (never replaced otherwise)")
    proc.add_argument("--policy", choices=["block", "drop"],
                      help="when processing falls behind: block the sender or drop images "
                           "(default: [live] policy of --config, else block)")
    proc.add_argument("--series", type=int, help="exit after this many complete series")
    proc.add_argument("--workers", type=int, default=1, metavar="N",
                      help="worker processes sharing the stream, each summing a block of map "
                           "rows (a forwarder hands out the images undecoded; default 1: "
                           "one process)")
    proc.add_argument("--config", type=Path, help="TOML configuration file")
    add_processing_args(proc)
    proc.set_defaults(run=run_process)

    add_file_commands(sub)   # record, replay, process-file, export-xsocs

    rois = sub.add_parser("rois", help="the q-space ROIs suggested for a results file, as "
                                       "configuration to paste into the next scan's --config")
    rois.add_argument("results", type=Path, help="results file written by process/demo")
    rois.set_defaults(run=run_rois)

    sub.add_parser("view", add_help=False,
                   help="live viewer: maps of a processor (--connect) or of a results file "
                        "(sxdm-stream view --help)")
    return parser


#: the endpoint options of every sub-command, and whether each binds
_ENDPOINT_OPTIONS = {"connect": False, "publish": True, "serve": True, "bind": True}


def check_endpoints(args: argparse.Namespace) -> None:
    """One-line ConfigError for a malformed endpoint option, or a bind address in use."""
    from sxdm_stream.cli.endpoints import check_bindable, check_endpoint

    for name, binds in _ENDPOINT_OPTIONS.items():
        values = getattr(args, name, None)
        for endpoint in [values] if isinstance(values, str) else values or []:
            check_endpoint(endpoint, f"--{name}", bind=binds)
            if binds:
                check_bindable(endpoint, f"--{name}")


def run_demo(args: argparse.Namespace) -> int:
    from sxdm_stream.cli.signals import InterruptOnSignals
    from sxdm_stream.simulators.demo import run_demo as demo  # the CLI is the top layer
    from sxdm_stream.simulators.validation import format_report

    if args.operando:
        return _run_operando_demo(args)
    try:
        with InterruptOnSignals():                # SIGTERM as Ctrl-C
            result = demo(config_from_args(args), live=not args.in_process, fmt=args.format)
    except KeyboardInterrupt as exc:
        print(f"sxdm-stream: interrupted ({exc or 'SIGINT'})", file=sys.stderr)
        return EXIT_INCOMPLETE
    except RuntimeError as exc:                   # the simulated detector or the processor failed
        print(f"sxdm-stream: error: {exc}", file=sys.stderr)
        return EXIT_INCOMPLETE
    print(f"frames: {result.frames}")
    print(f"d_ref = {result.maps.d_ref:.5f} A, mask {int(result.maps.mask.sum())} of "
          f"{result.maps.mask.size} pixels")
    print(format_report(result.accuracy))
    print(f"wrote {result.results_path} and {result.overview_path}")
    return 0


def _run_operando_demo(args: argparse.Namespace) -> int:
    from sxdm_stream.cli.signals import InterruptOnSignals
    from sxdm_stream.simulators.demo import run_operando_demo
    from sxdm_stream.simulators.operando_validation import format_operando_report

    if args.in_process:
        raise ConfigError("demo --operando runs the simulated detector in its own process: "
                          "leave out --in-process")
    try:
        with InterruptOnSignals():
            result = run_operando_demo(config_from_args(args), args.operando,
                                       shape=tuple(args.shape) if args.shape else None,
                                       n_angles=args.angles, fmt=args.format)
    except KeyboardInterrupt as exc:
        print(f"sxdm-stream: interrupted ({exc or 'SIGINT'})", file=sys.stderr)
        return EXIT_INCOMPLETE
    except RuntimeError as exc:
        print(f"sxdm-stream: error: {exc}", file=sys.stderr)
        return EXIT_INCOMPLETE
    print(f"frames: {result.frames}")
    print(format_operando_report(result.accuracy))
    print(f"wrote {result.series_path}, {result.overview_path} and the maps in {result.results_dir}")
    return 0


def run_simulate(args: argparse.Namespace) -> int:
    from sxdm_stream.simulators.scenarios import default_scenario
    from sxdm_stream.simulators.sender import SimulatedDetector

    config = config_from_args(args)
    scenario = default_scenario(**dataclasses.asdict(config.simulation))
    detector = SimulatedDetector(scenario, args.bind, fmt=args.format, compression=args.compression,
                                 rate_hz=args.rate, positions=not args.no_positions)
    print(f"endpoint: {detector.endpoint}", flush=True)
    try:
        for series, scenario_, channels in _simulated_scans(args, config, scenario):
            detector.scenario = scenario_
            t0 = time.perf_counter()
            n = detector.send_series(series_id=series, operando=channels)
            dt = time.perf_counter() - t0
            log.info("series %d: sent %d images in %.1f s (%.0f images/s)%s", series, n, dt,
                     n / dt, f", voltage {channels['voltage']['value']:.3f} V" if channels else "")
    finally:
        detector.close()
    return 0


def _simulated_scans(args, config, scenario):
    """(series id, scenario, operando channels or None) of each scan to send."""
    if not args.operando:
        for series in range(1, args.series + 1):
            yield series, scenario, None
        return
    from sxdm_stream.simulators.operando import operando_sequence

    given = {"shape": tuple(args.shape) if args.shape else None, "n_angles": args.angles,
             "counts": args.counts, "seed": args.seed}
    for step in operando_sequence(args.operando, **{k: v for k, v in given.items()
                                                    if v is not None}):
        yield step.index + 1, step.scenario, step.channels


def run_rois(args: argparse.Namespace) -> int:
    from sxdm_stream.sinks.results_analysis import read_roi_suggestion

    suggestion = read_roi_suggestion(args.results)
    if suggestion is None:
        raise ConfigError(f"{args.results} holds no q-ROI suggestion: it is made at the end of "
                          "a complete scan whose q histogram was kept (--bins not 0 0 0)")
    print("\n".join(f"# {line}" for line in suggestion["text"].splitlines()))
    print("\n# q-space ROIs for the next scan (paste into the --config TOML file):")
    for peak in suggestion["peaks"]:
        roi = peak["roi"]
        print(f"[[accumulation.q_rois]]\nname = {json.dumps(roi['name'])}\n"
              f"lo = [{', '.join(repr(float(v)) for v in roi['lo'])}]\n"
              f"hi = [{', '.join(repr(float(v)) for v in roi['hi'])}]\nshape = {json.dumps(roi['shape'])}\n")
    return 0


#: |Q| slices per map pixel of an operando series whose configuration sets none
OPERANDO_Q_SHELLS = 64

#: exit statuses of ``process`` and ``process-file``
EXIT_OK, EXIT_INCOMPLETE, EXIT_USAGE = 0, 1, 2


def run_process(args: argparse.Namespace) -> int:
    """Exit 0 when every series received is complete and written; 1 when one is incomplete
    (frames missing, interrupted), its results could not be written, or a thread of the
    processor died; 2 for what the user can fix (configuration, --out exists or cannot be
    written, a q histogram over its memory budget)."""
    from sxdm_stream.cli.signals import InterruptOnSignals
    from sxdm_stream.runtime.processor import LiveProcessor, ScanOverride

    config = config_from_args(args)
    if args.operando and not config.accumulation.q_shells:
        # an operando series follows phases: they need the q shells (off by default)
        config = dataclasses.replace(config, accumulation=dataclasses.replace(
            config.accumulation, q_shells=OPERANDO_Q_SHELLS))
        log.info("--operando: %d q shells per map pixel for the phases ([accumulation] "
                 "q_shells)", OPERANDO_Q_SHELLS)
    override_ = None
    if args.scan_file:
        scan, geometry = load_scan_file(args.scan_file)
        override_ = ScanOverride(scan, geometry)
    if not args.connect and not args.bluesky:
        raise ConfigError("process needs a source: --connect tcp://HOST:31001 and/or --bluesky HOST:PORT")
    if args.workers != 1:
        return _run_fanout(args, config, override_)
    processor = LiveProcessor(args.connect, out=args.out, publish=args.publish, settings=config,
                              override=override_, resume=args.resume, max_series=args.series,
                              serve=args.serve, operando=args.operando,
                              overwrite=getattr(args, "overwrite", False))
    log.info("receiving from %s%s", ", ".join(args.connect + ([f"bluesky {args.bluesky}"]
                                                               if args.bluesky else [])),
             f", publishing snapshots on {processor.publish_endpoint}" if args.publish else "")
    derived = None
    if args.bluesky_publish:
        from sxdm_stream.plugins.bluesky.derived import DerivedRunPublisher
        derived = DerivedRunPublisher(args.bluesky_publish, serializer=args.bluesky_serializer)
        processor.on_result(derived)
    bluesky = None
    with InterruptOnSignals() as signals:
        try:
            processor.start()
            bluesky = _start_bluesky(args, processor, override_) if args.bluesky else None
            _watch(processor)
        except KeyboardInterrupt as exc:
            log.info("interrupted (%s): writing what was received (the checkpoint allows "
                     "--resume)", exc or "SIGINT")
        finally:
            signals.stopping()
            if bluesky is not None:
                bluesky[0].set()
                bluesky[1].join(30)
            processor.stop(timeout=None)          # a partial result is written, whatever comes
            if derived is not None:
                derived.close()
    return _process_outcome(processor)


def _run_fanout(args: argparse.Namespace, config, override_) -> int:
    """``process --workers N``: :class:`~sxdm_stream.runtime.fanout.FanoutProcessor`."""
    from sxdm_stream.cli.signals import InterruptOnSignals
    from sxdm_stream.runtime.fanout import FanoutProcessor, unsupported_options

    unsupported_options(vars(args))
    processor = FanoutProcessor(args.connect, args.out, args.workers, settings=config,
                                override=override_, max_series=args.series,
                                overwrite=args.overwrite)
    with InterruptOnSignals() as signals:
        try:
            processor.start()
            while not processor.wait(1.0):
                log.info("%s", processor.progress())
        except KeyboardInterrupt as exc:
            log.info("interrupted (%s): writing what was received", exc or "SIGINT")
        finally:
            signals.stopping()
            processor.stop()
    for result in processor.results:
        log.log(logging.INFO if result.complete and result.written else logging.WARNING,
                "%s", result.describe())
    if processor.failure or any(not (r.complete and r.written) for r in processor.results):
        print(f"sxdm-stream: {processor.failure or 'a series is incomplete or unwritten'}",
              file=sys.stderr)
        return EXIT_INCOMPLETE
    return EXIT_OK


def _watch(processor, quiet_s: float = 30.0) -> None:
    """Log the status every second until the processor is done; warn once when nothing has
    arrived for ``quiet_s`` seconds."""
    from sxdm_stream.runtime.processor import format_status

    started, warned = time.monotonic(), False
    while not processor.wait(1.0):
        status = processor.status()
        log.info("%s", format_status(status))
        if not warned and not status.messages and time.monotonic() - started > quiet_s:
            warned = True
            log.warning("nothing received for %.0f s: is the detector armed, and are the "
                        "endpoints right (%s)?", quiet_s, ", ".join(processor.endpoints) or
                        "bluesky only")


def _process_outcome(processor) -> int:
    """Log the end-of-run summary (one line per series kept); say why on stderr and return
    the exit status (see :func:`run_process`)."""
    from sxdm_stream.runtime.processor import format_status

    status = processor.status()
    log.info("%s", format_status(status))
    for result in processor.results:
        ok = result.complete and (result.written or result.path is None)
        log.log(logging.INFO if ok else logging.WARNING, "%s", result.describe())
    unwritten = processor.writer.unwritten()
    finished, complete = processor.series_finished, status.completed
    if processor.failure is not None:
        user_error = isinstance(processor.failure_error, SxdmError)
        kept = "" if user_error or not processor.results else (
            "; what was received is written as incomplete" if not unwritten else
            f"; {unwritten[0].describe()}")
        print(f"sxdm-stream: error: {processor.failure}{kept}", file=sys.stderr)
        return EXIT_USAGE if user_error else EXIT_INCOMPLETE
    if unwritten:
        print(f"sxdm-stream: error: the results of {len(unwritten)} series could not be written: "
              f"{unwritten[0].describe()}", file=sys.stderr)
        return EXIT_INCOMPLETE
    if complete < finished:
        first = next((r for r in processor.results if not r.complete), None)
        print(f"sxdm-stream: {finished - complete} of {finished} series incomplete"
              + (f": {first.describe()}" if first is not None else ""), file=sys.stderr)
        return EXIT_INCOMPLETE
    return EXIT_OK


def _start_bluesky(args, processor, override_):
    """Listen to bluesky documents in a thread; returns (stop event, thread)."""
    import threading

    from sxdm_stream.plugins.bluesky.remote import listen

    mask = override_.geometry.detector.mask if override_ is not None else None
    stop = threading.Event()
    thread = threading.Thread(target=listen, args=(args.bluesky, processor, args.bluesky_serializer),
                              kwargs={"pixel_mask": mask, "stop": stop}, name="sxdm-bluesky",
                              daemon=True)
    thread.start()
    return stop, thread


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "view":
        from sxdm_stream.plugins.viewer.app import main as view_main  # Qt is imported only here
        return view_main((["-v"] if args.verbose else []) + rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        check_endpoints(args)
        return args.run(args)
    except SxdmError as exc:
        print(f"sxdm-stream: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:                       # `sxdm-stream rois X.h5 | head`: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
