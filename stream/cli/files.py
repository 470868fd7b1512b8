"""Command line of recordings and files: record, replay, process-file, export-xsocs.

  sxdm-stream record --connect tcp://HOST:31001 --out run.stream
  sxdm-stream replay SOURCE --bind tcp://127.0.0.1:31001 --rate 1x|10x|max
  sxdm-stream process-file SOURCE --out results.h5 [--export-xsocs qspace.h5]
                           [--dask tcp://HOST:8786 | --dask local:N]
  sxdm-stream export-xsocs results.h5 --out qspace.h5

SOURCE is a recording, an ID01 BLISS scan set or an XSOCS master file; the geometry comes
from the file's metadata, overridden by ``--energy-ev``, ``--distance-m``... Parse, build,
call the library: nothing here is unavailable from Python.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from pathlib import Path

from sxdm_stream.cli.args import add_processing_args, config_from_args
from sxdm_stream.config import override
from sxdm_stream.errors import ConfigError

log = logging.getLogger("sxdm_stream")


def add_file_commands(sub) -> None:
    """Add the record, replay, process-file and export-xsocs sub-commands to ``sub``."""

    rec = sub.add_parser("record", help="record a detector stream to a file, as received")
    rec.add_argument("--connect", action="append", required=True,
                     help="detector stream endpoint, e.g. tcp://HOST:31001 (repeatable)")
    rec.add_argument("--out", type=Path, required=True, help="the recording, e.g. run.stream")
    rec.add_argument("--series", type=int, default=1,
                     help="stop after this many series ended (0: until Ctrl-C)")
    rec.set_defaults(run=run_record)

    rep = sub.add_parser("replay", help="send a recording or beamline files as a DECTRIS stream")
    _source_args(rep)
    rep.add_argument("--bind", default="tcp://127.0.0.1:31001",
                     help="PUSH endpoint to bind (default tcp://127.0.0.1:31001)")
    rep.add_argument("--rate", default="1x",
                     help="1x (the acquisition's pace), any factor such as 10x, or max")
    rep.add_argument("--format", choices=["cbor", "legacy"], default="cbor",
                     help="stream v2 (cbor) or v1 (legacy), for files")
    rep.add_argument("--compression", choices=["bslz4", "lz4", "none"], default="bslz4",
                     help="image compression, for files")
    rep.set_defaults(run=run_replay)

    proc = sub.add_parser("process-file", help="process a recording or beamline files directly")
    _source_args(proc)
    proc.add_argument("--out", type=Path, required=True, help="results file (NeXus HDF5)")
    proc.add_argument("--overwrite", action="store_true",
                      help="replace an existing results file (never replaced otherwise)")
    proc.add_argument("--workers", type=int, default=2, help="accumulating threads (files)")
    proc.add_argument("--dask", metavar="ADDRESS",
                      help="beamline files: accumulate blocks of map rows on a Dask cluster, "
                           "the scheduler at ADDRESS (tcp://HOST:8786) or local:N (N worker "
                           "processes here); the workers must read the files (docs/scaling.md)")
    proc.add_argument("--dask-rows", type=int, metavar="N",
                      help="map rows per Dask task (default: 2 tasks per worker at least, "
                           "each sub-map under 256 MiB)")
    proc.add_argument("--export-xsocs", type=Path, metavar="QSPACE_H5",
                      help="also write the q-space histograms as an XSOCS qspace.h5")
    proc.add_argument("--config", type=Path, help="TOML configuration file")
    add_processing_args(proc)          # the same histogram flags as ``process``
    proc.set_defaults(run=run_process_file)

    exp = sub.add_parser("export-xsocs", help="write a results file's histograms as XSOCS qspace.h5")
    exp.add_argument("results", type=Path, help="an sxdm-stream results file")
    exp.add_argument("--out", type=Path, required=True, help="the qspace.h5 to write")
    exp.set_defaults(run=run_export_xsocs)


def _source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", type=Path,
                   help="a recording, an ID01 BLISS scan set or an XSOCS master file")
    p.add_argument("--kind", choices=["auto", "recording", "id01", "xsocs"], default="auto")
    p.add_argument("--detector", help="ID01 detector name (default: the one in the file)")
    p.add_argument("--scans", help="ID01 scans to use, e.g. 3-33 or 3,5,7 (default: all sxdm)")
    p.add_argument("--energy-ev", type=float, help="beam energy, instead of the file's")
    p.add_argument("--distance-m", type=float, help="detector distance, instead of the file's")
    p.add_argument("--pixel-size-m", type=float, help="detector pixel size, instead of the file's")
    p.add_argument("--beam-center", type=float, nargs=2, metavar=("ROW", "COL"),
                   help="direct-beam pixel at zero detector angles, instead of the file's")
    p.add_argument("--roi", type=int, nargs=4, metavar=("R0", "R1", "C0", "C1"),
                   help="detector rows R0:R1 and columns C0:C1 to process (default: all)")
    p.add_argument("--mask", metavar="FILE",
                   help="pixels to exclude besides the file's own mask: .npy, EDF or "
                        "FILE.h5:/path/to/dataset (non-zero = excluded)")
    p.add_argument("--monitor", metavar="COUNTER",
                   help="files: normalise every frame by this measurement counter, e.g. mon "
                        "(default: no normalisation)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def parse_scans(text: str | None) -> tuple[int, ...] | None:
    """``"3-33"``, ``"3,5,7"`` or ``"1-4,9"`` -> scan numbers in that order."""
    if not text:
        return None
    numbers: list[int] = []
    try:
        for part in text.split(","):
            first, _, last = part.partition("-")
            numbers += list(range(int(first), int(last or first) + 1))
    except ValueError:
        raise ConfigError(f"--scans {text!r} is not a list such as 3-33 or 3,5,7") from None
    return tuple(numbers)


def source_options(args: argparse.Namespace):
    """How to read ``args.source``: the geometry flags (checked for plausible units first)
    and the user's pixel mask (``--mask``, else ``accumulation.pixel_mask`` of ``--config``)."""
    from sxdm_stream.config import load_config
    from sxdm_stream.core.geometry import check_distance_m, check_energy_ev, check_pixel_size_m
    from sxdm_stream.sources.files.filescan import GeometryOverrides
    from sxdm_stream.sources.files.masks import read_mask
    from sxdm_stream.sources.files.open import SourceOptions

    for value, check, flag in ((args.energy_ev, check_energy_ev, "--energy-ev"),
                               (args.distance_m, check_distance_m, "--distance-m"),
                               (args.pixel_size_m, check_pixel_size_m, "--pixel-size-m")):
        if value is not None:
            check(value, flag)
    spec = args.mask or load_config(getattr(args, "config", None)).accumulation.pixel_mask
    mask = read_mask(spec) if spec else None
    overrides = GeometryOverrides(args.energy_ev, args.distance_m, args.pixel_size_m,
                                  tuple(args.beam_center) if args.beam_center else None,
                                  tuple(args.roi) if args.roi else None, mask)
    return SourceOptions(args.kind, args.detector, parse_scans(args.scans), overrides,
                         args.monitor)


def _progress_bar(total: int, unit: str, disable: bool):
    from tqdm import tqdm

    tqdm.monitor_interval = 0       # no monitor thread: the bar is updated from this one
    return tqdm(total=total, unit=unit, unit_scale=False, dynamic_ncols=True, disable=disable,
                smoothing=0.1)


def run_record(args: argparse.Namespace) -> int:
    from sxdm_stream.sources.recordings.recorder import record_stream

    stop = threading.Event()
    log.info("recording %s to %s", ", ".join(args.connect), args.out)
    try:
        counters = record_stream(args.connect, args.out, max_series=args.series or None,
                                 stop=stop, progress=lambda c: log.info(
                                     "%d messages, %.1f MB", c.messages, c.bytes / 1e6))
    except KeyboardInterrupt:
        log.info("interrupted: the recording is closed with its index")
        return 0
    log.info("recorded %d messages, %d series", counters.messages, counters.series_ended)
    return 0


def run_replay(args: argparse.Namespace) -> int:
    from sxdm_stream.sources.dectris.sender import StreamSender
    from sxdm_stream.sources.files.open import open_source
    from sxdm_stream.sources.recordings.replay import parse_rate, replay, source_length

    speed = parse_rate(args.rate)
    source = open_source(args.source, source_options(args))
    sender = StreamSender(args.bind, args.format, args.compression)
    print(f"endpoint: {sender.endpoint}", flush=True)
    unit = "msg" if type(source).__name__ == "RecordingReader" else "frame"
    bar = _progress_bar(source_length(source), unit, args.no_progress)
    try:
        sent = replay(source, sender, speed, progress=bar.update)
    finally:
        bar.close()
        sender.close()
        if hasattr(source, "close"):
            source.close()
    log.info("replayed %d %ss of %s", sent, unit, args.source)
    return 0


def run_process_file(args: argparse.Namespace) -> int:
    """Exit 0 when every series is complete and written; 1 when one is incomplete, could
    not be written, or the run was interrupted (SIGINT or SIGTERM) or failed; 2 for what
    the user can fix (configuration, --out exists or cannot be written)."""
    from sxdm_stream.cli.signals import InterruptOnSignals
    from sxdm_stream.runtime.process_file import (RunFailedError, process_file_scan,
                                                  process_recording)
    from sxdm_stream.sinks.paths import check_output
    from sxdm_stream.sources.files.open import open_source
    from sxdm_stream.sources.recordings.format import RecordingReader
    from sxdm_stream.sources.recordings.replay import source_length

    config = config_from_args(args)
    check_output(args.out, args.overwrite)        # before reading anything
    source = open_source(args.source, source_options(args))
    is_recording = isinstance(source, RecordingReader)
    if args.dask and is_recording:
        source.close()
        raise ConfigError(f"--dask takes beamline files (ID01, XSOCS); {args.source} is a "
                          "recording: process it without --dask")
    settings = override(config, "live", checkpoints=False)
    bar = _progress_bar(source_length(source), "msg" if is_recording else "frame",
                        args.no_progress)
    try:
        with InterruptOnSignals():
            if is_recording:
                results = process_recording(source, args.out, settings, progress=bar.update,
                                            overwrite=args.overwrite)
            elif args.dask:
                results = [_process_file_dask(source, args, settings, bar.update)]
            else:
                results = [process_file_scan(source, args.out, settings, workers=args.workers,
                                             progress=bar.update, overwrite=args.overwrite)]
    except KeyboardInterrupt as exc:
        print(f"sxdm-stream: interrupted ({exc or 'SIGINT'}): the results are incomplete",
              file=sys.stderr)
        return 1
    except RunFailedError as exc:
        print(f"sxdm-stream: error: {exc}", file=sys.stderr)
        return 1
    finally:
        bar.close()
        if is_recording:
            source.close()
    return _files_outcome(results, args.export_xsocs)


def _process_file_dask(source, args: argparse.Namespace, settings, progress):
    from sxdm_stream.runtime.distributed import dask_client, process_file_scan_dask

    with dask_client(args.dask) as client:
        log.info("Dask scheduler %s, %d workers", client.scheduler.address,
                 len(client.nthreads()))
        return process_file_scan_dask(source, client, args.out, settings,
                                      rows_per_task=args.dask_rows, progress=progress,
                                      overwrite=args.overwrite)


def _files_outcome(results, export_xsocs: Path | None) -> int:
    """Say what became of each series (and export the first if asked); the exit status."""
    for r in results:
        log.log(logging.INFO if r.complete and r.written else logging.WARNING,
                "%s (%.0f frames/s)", r.describe(), r.frames_per_s)
    if export_xsocs is not None:
        from sxdm_stream.sinks.xsocs_export import export_results

        for r in [r for r in results if r.written][:1]:
            export_results(r.path, export_xsocs)
            log.info("wrote %s", export_xsocs)
    unwritten = [r for r in results if not r.written]
    if unwritten:
        print(f"sxdm-stream: error: {len(unwritten)} results not written: "
              f"{unwritten[0].describe()}", file=sys.stderr)
        return 1
    incomplete = [r for r in results if not r.complete]
    if incomplete:
        print(f"sxdm-stream: {len(incomplete)} of {len(results)} series incomplete: "
              f"{incomplete[0].describe()}", file=sys.stderr)
        return 1
    if not results:
        print("sxdm-stream: error: no series found: nothing was written", file=sys.stderr)
        return 1
    return 0


def run_export_xsocs(args: argparse.Namespace) -> int:
    from sxdm_stream.sinks.xsocs_export import export_results

    export_results(args.results, args.out)
    log.info("wrote %s", args.out)
    return 0
