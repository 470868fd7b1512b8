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

from .accumulate import ScanSetup
from .analysis import analyse
from .dectris import Decoder
from .errors import BadMessageError, SxdmError
from .filescan import FileScan
from .hdf5 import write_results
from .live import LiveProcessor, LiveSettings
from .maps import MapSet
from .pipeline import ScanProcessor
from .recording import RecordingReader

log = logging.getLogger(__name__)


@dataclass
class FileResult:
    """One processed series: its maps, the merged processor and where it was written."""

    maps: MapSet
    processor: ScanProcessor | None
    path: Path | None
    frames_per_s: float


def process_file_scan(file_scan: FileScan, out: str | Path | None = None,
                      settings: LiveSettings | None = None, workers: int = 2,
                      block_size: int = 32,
                      progress: Callable[[int], None] | None = None) -> FileResult:
    """Accumulate every frame of ``file_scan`` with ``workers`` threads and write ``out``.

    Parameters
    ----------
    file_scan : the scan and where its frames are.
    out : results file (NeXus HDF5, as the live processor writes it); None: do not write.
    settings : accumulation and map settings (those of the live processor).
    workers : threads, each with its own accumulator, merged by addition.
    block_size : frames read at a time.
    progress : called with the number of frames of each block done.
    """
    settings = settings or LiveSettings()
    setup = ScanSetup(file_scan.geometry, file_scan.scan, settings.accumulation)
    blocks: queue.Queue = queue.Queue()
    scan = file_scan.scan
    for angle in range(scan.n_angles):
        for start in range(0, scan.n_points, block_size):
            blocks.put((angle, start, min(start + block_size, scan.n_points)))
    processors = [ScanProcessor(setup, settings.mask_fraction, settings.d_ref)
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
    rate = merged.counters.processed / max(time.perf_counter() - t0, 1e-9)
    analysis = analyse(merged.accumulator, settings.analysis, final=merged.complete)
    maps = analysis.maps
    if out is not None:
        write_results(out, maps, setup, merged.accumulator,
                      hits=setup.hits() if setup.keep_histogram else None,
                      extra_attrs=_attrs(file_scan, merged), analysis=analysis)
    log.info("%s: %d frames processed, %d rejected (%.0f frames/s, %d threads)", file_scan.path,
             merged.counters.processed, merged.counters.n_rejected, rate, len(threads))
    return FileResult(maps, merged, Path(out) if out is not None else None, rate)


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
    return {"status": "complete" if complete else "incomplete", "source": str(file_scan.path),
            "source_kind": file_scan.kind, "frames_received": p.counters.received,
            "frames_processed": p.counters.processed, "frames_rejected": p.counters.n_rejected,
            "frames_dropped": 0}


def process_recording(reader: RecordingReader, out: str | Path | None = None,
                      settings: LiveSettings | None = None,
                      progress: Callable[[int], None] | None = None) -> list[FileResult]:
    """Feed every message of a recording to a socket-less :class:`LiveProcessor`.

    Messages that do not decode are counted under their reason, as the live receiver counts
    them. Returns one result per series (results files named as the live processor names
    them: ``out``, then ``<stem>_<series_id><suffix>``).
    """
    settings = settings or LiveSettings(checkpoints=False)
    decoder, reported = Decoder(), set()
    t0 = time.perf_counter()
    live = LiveProcessor(None, out=out, settings=settings)
    finished = []                                  # every series (live.results keeps the last few)
    live.on_result(finished.append)
    with live:
        for _t, parts in reader.messages():
            try:
                live.submit(decoder.decode(parts, received_s=time.perf_counter()))
            except BadMessageError as exc:
                live.receiver.messages += 1
                live.receiver.rejected[exc.reason] += 1
                if exc.reason not in reported:
                    reported.add(exc.reason)
                    log.warning("%s: rejected a message (further %r only counted): %s",
                                reader.path, exc.reason, exc)
            if progress is not None:
                progress(1)
    elapsed = max(time.perf_counter() - t0, 1e-9)
    status = live.status()
    if status["rejected"]:
        log.warning("%s: rejected %s", reader.path, status["rejected"])
    return [FileResult(r.maps, None, r.path, status["processed"] / elapsed) for r in finished]
