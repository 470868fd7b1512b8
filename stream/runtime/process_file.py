"""Process a recorded acquisition directly, without sockets, on every core given.

* A beamline file (:class:`FileScan`): ``workers`` threads each read blocks of frames and add
  them into their own :class:`ScanProcessor` (the numba kernel and most of HDF5 reading run
  without the GIL); the processors are merged by addition at the end and analysed as the
  live processor analyses a scan (drift, q-ROIs, particles, fits). The frames are joined
  to map pixels and normalised exactly as the live path joins the replayed stream (frame
  index, measured positions, monitor), so the maps are those of a replay through
  :class:`LiveProcessor`.
* A recording: its messages are decoded here and handed to a :class:`LiveProcessor` without
  a socket (:meth:`LiveProcessor.submit`), whose worker thread accumulates while this one
  decodes: the very code of the live path.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from sxdm_stream.analysis.scan_analysis import analyse
from sxdm_stream.config import Config, override
from sxdm_stream.core.accumulate import ScanSetup
from sxdm_stream.core.maps import MapSet
from sxdm_stream.errors import BadMessageError, SxdmError
from sxdm_stream.pipeline.scan_processor import ScanProcessor
from sxdm_stream.runtime.processor import LiveProcessor
from sxdm_stream.runtime.report import describe_outcome
from sxdm_stream.sinks.paths import check_output
from sxdm_stream.sinks.results import write_results
from sxdm_stream.sources.dectris.codec import Decoder
from sxdm_stream.sources.files.filescan import FileScan
from sxdm_stream.sources.recordings.format import RecordingReader

log = logging.getLogger(__name__)


class RunFailedError(RuntimeError):
    """The processing stopped before the end (a thread of the live processor died)."""


@dataclass
class FileResult:
    """One processed series: its maps, the merged processor and where it was written.

    ``complete``: every frame of the scan is in the sums (else ``missing`` per rocking
    angle); ``written``: ``path`` holds the results (else ``write_error`` says why)."""

    maps: MapSet
    processor: ScanProcessor | None
    path: Path | None
    frames_per_s: float
    complete: bool = True
    missing: np.ndarray | None = None
    written: bool = True
    write_error: str | None = None

    def describe(self) -> str:
        """One line: ``complete -> path`` or what is missing, or why nothing was written."""
        return describe_outcome(self)


def process_file_scan(file_scan: FileScan, out: str | Path | None = None,
                      settings: Config | None = None, workers: int = 2,
                      block_size: int = 32,
                      progress: Callable[[int], None] | None = None,
                      overwrite: bool = False) -> FileResult:
    """Accumulate every frame of ``file_scan`` with ``workers`` threads and write ``out``.

    Parameters
    ----------
    file_scan : the scan and where its frames are.
    out : results file (NeXus HDF5, as the live processor writes it); None: do not write.
    settings : the configuration (its accumulation and analysis sections, as live).
    workers : threads, each with its own accumulator, merged by addition.
    block_size : frames read at a time.
    progress : called with the number of frames of each block done.
    overwrite : an existing ``out`` may be replaced (else ConfigError before any work).

    A results file that cannot be written is logged and said in the result (``written``);
    the maps are still returned.
    """
    if out is not None:
        check_output(Path(out), overwrite)
    settings = settings or Config()
    setup = ScanSetup(file_scan.geometry, file_scan.scan, settings.accumulation)
    blocks: queue.Queue = queue.Queue()
    scan = file_scan.scan
    for angle in range(scan.n_angles):
        for start in range(0, scan.n_points, block_size):
            blocks.put((angle, start, min(start + block_size, scan.n_points)))
    processors = [ScanProcessor(setup, settings.maps.mask_fraction, settings.maps.d_ref_a)
                  for _ in range(max(1, workers))]
    errors: list[BaseException] = []
    t0 = time.perf_counter()
    threads = [threading.Thread(target=_work, args=(file_scan, p, blocks, errors, progress),
                                name=f"sxdm-file-{i}", daemon=True)
               for i, p in enumerate(processors)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    merged = processors[0]
    for other in processors[1:]:
        merged.merge(other)
    return finish_file_scan(file_scan, merged, out, settings, t0, f"{len(threads)} threads")


def finish_file_scan(file_scan: FileScan, merged: ScanProcessor, out: str | Path | None,
                     settings: Config, t0: float, how: str,
                     extra_attrs: dict | None = None) -> FileResult:
    """Analyse the merged sums of ``file_scan`` as live, write ``out`` (None: do not) and
    say what became of it; ``t0`` is when the processing started (``time.perf_counter``),
    ``how`` what did it (for the log), ``extra_attrs`` more attributes of the results file."""
    setup = merged.setup
    rate = merged.counters.processed / max(time.perf_counter() - t0, 1e-9)
    analysis = analyse(merged.accumulator, settings.analysis, final=merged.complete)
    maps = analysis.maps
    error = None
    if out is not None:
        try:
            write_results(out, maps, setup, merged.accumulator,
                          hits=setup.hits() if setup.keep_histogram else None,
                          extra_attrs={**_attrs(file_scan, merged), **(extra_attrs or {})},
                          analysis=analysis)
        except Exception as exc:                  # a full disk, a folder gone, an HDF5 error
            error = str(exc) if isinstance(exc, (OSError, SxdmError)) else \
                f"{type(exc).__name__}: {exc}"
            log.error("could not write the results to %s: %s", out, error)
    log.info("%s: %d frames processed, %d rejected (%.0f frames/s, %s)", file_scan.path,
             merged.counters.processed, merged.counters.n_rejected, rate, how)
    missing = merged.missing_per_angle()
    return FileResult(maps, merged, Path(out) if out is not None else None, rate,
                      merged.complete, missing, error is None, error)


def _work(file_scan: FileScan, processor: ScanProcessor, blocks: queue.Queue,
          errors: list, progress) -> None:
    n_points = file_scan.scan.n_points
    try:
        with file_scan.open() as reader:
            while not errors:
                try:
                    angle, start, stop = blocks.get_nowait()
                except queue.Empty:
                    return
                frames = reader.read(angle, start, stop)
                for i, frame in enumerate(frames):
                    index = angle * n_points + start + i
                    processor.add(index, frame, monitor=file_scan.monitor(index),
                                  positions=file_scan.positions(index))
                if progress is not None:
                    progress(stop - start)
    except (SxdmError, OSError) as exc:          # a missing or unreadable dataset
        errors.append(exc)


def _attrs(file_scan: FileScan, p: ScanProcessor) -> dict:
    complete = bool(p.included.all())
    missing = p.missing_per_angle()
    return {"status": "complete" if complete else "incomplete", "source": str(file_scan.path),
            "source_kind": file_scan.kind, "frames_received": p.counters.received,
            "frames_processed": p.counters.processed, "frames_rejected": p.counters.n_rejected,
            "frames_dropped": 0, "frames_missing": int(missing.sum()),
            "frames_missing_per_angle": missing}


def process_recording(reader: RecordingReader, out: str | Path | None = None,
                      settings: Config | None = None,
                      progress: Callable[[int], None] | None = None,
                      overwrite: bool = False) -> list[FileResult]:
    """Feed every message of a recording to a socket-less :class:`LiveProcessor`.

    Messages that do not decode are counted under their reason, as the live receiver counts
    them. Returns one result per series (results files named as the live processor names
    them: ``out``, then ``<stem>_<series_id><suffix>``, never one another's).

    Raises
    ------
    SxdmError : the run cannot be processed (a q histogram over its memory budget).
    RunFailedError : the processing stopped before the end (a thread died).
    """
    settings = settings or override(Config(), "live", checkpoints=False)
    decoder, reported = Decoder(), set()
    t0 = time.perf_counter()
    live = LiveProcessor(None, out=out, settings=settings, overwrite=overwrite)
    finished = []                                  # every series (live.results keeps the last few)
    live.on_result(finished.append)
    with live:
        for _t, parts in reader.messages():
            if live.failure is not None:
                break
            try:
                message = decoder.decode(parts, received_s=time.perf_counter())
                if message is not None:          # None: a v1 header held for its configuration
                    live.submit(message)
            except BadMessageError as exc:
                live.receiver.reject(exc.reason)
                if exc.reason not in reported:
                    reported.add(exc.reason)
                    log.warning("%s: rejected a message (further %r only counted): %s",
                                reader.path, exc.reason, exc)
            if progress is not None:
                progress(1)
    if isinstance(live.failure_error, SxdmError):
        raise live.failure_error
    if live.failure is not None:
        raise RunFailedError(live.failure)
    elapsed = max(time.perf_counter() - t0, 1e-9)
    status = live.status()
    if status.rejected:
        log.warning("%s: rejected %s", reader.path, dict(status.rejected))
    rate = status.processed / elapsed
    return [FileResult(r.maps, None, r.path, rate, r.complete, r.missing,
                       r.written or r.path is None, r.write_error) for r in finished]
