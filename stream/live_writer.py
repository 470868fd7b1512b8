"""The live processor's writer thread: results files, checkpoints, operando records.

The worker hands it copies of a series' sums (:meth:`ResultsWriter.schedule`) at the end of
each rocking angle and of the series, and operando records; it analyses them
(:func:`sxdm_stream.analysis.analyse`), writes the results file atomically with a checkpoint
beside it (removed once the series is complete), and hands every finished series to
``on_result`` as a :class:`SeriesResult`. A failing analysis still writes the plain maps; a
failing write is counted in :attr:`ResultsWriter.errors` and logged; neither stops the thread.
"""

from __future__ import annotations

import logging
import queue
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .analysis import ScanAnalysis, analyse
from .checkpoint import checkpoint_path, write_checkpoint
from .errors import SxdmError
from .hdf5 import write_results
from .join import correlation_id_of
from .live_settings import LiveSettings
from .maps import MapSet
from .operando import OperandoRecord
from .pipeline import ScanProcessor
from .scan import ScanDescription
from .timeseries import OperandoSeriesFile

log = logging.getLogger(__name__)


@dataclass
class SeriesResult:
    """The final maps of one series, with what identifies it."""

    series_id: int
    series_unique_id: str | None
    path: Path | None
    maps: MapSet
    complete: bool
    scan: ScanDescription | None = None
    correlation_id: str | None = None
    frames: dict = field(default_factory=dict)   # received, processed, rejected, dropped
    analysis: ScanAnalysis | None = None         # drift, particles, q-ROI maps, suggestion, fits


class ResultsWriter:
    """Writes what the worker schedules, on its own thread (:meth:`run`).

    Parameters
    ----------
    settings : the processor's settings (analysis, checkpoints).
    operando : the operando series file, or None.
    on_result : called with the :class:`SeriesResult` of every finished series.
    """

    def __init__(self, settings: LiveSettings, operando: OperandoSeriesFile | None,
                 on_result: Callable[[SeriesResult], None]) -> None:
        self.settings, self.operando, self.on_result = settings, operando, on_result
        self.jobs: queue.Queue = queue.Queue()
        self.errors = 0
        self._busy = False
        self._spare = None            # the accumulator of the last intermediate job, reused

    def schedule(self, p: ScanProcessor, series, complete: bool, last: bool, path: Path | None,
                 stats: dict) -> bool:
        """Queue a copy of ``p``'s sums; an intermediate write is skipped (False) while the
        writer is still busy with an earlier one."""
        if not last and (self._busy or self.jobs.qsize() > 0):
            return False                          # the writer is behind: the next angle will do
        copy = ScanProcessor(p.setup, p.mask_fraction, p.d_ref)
        spare, self._spare = self._spare, None
        copy.accumulator = p.accumulator.copy(into=None if last else spare)
        copy.included = p.included.copy()
        copy.counters.received, copy.counters.processed = p.counters.received, p.counters.processed
        copy.counters.rejected = Counter(p.counters.rejected)
        copy.angles_done = p.angles_done
        self.jobs.put({"processor": copy, "series": series, "complete": complete, "last": last,
                       "path": path, "stats": stats})
        return True

    def add_record(self, record: OperandoRecord) -> None:
        """Queue an operando record for the series file."""
        if self.operando is not None:
            self.jobs.put({"operando": record})

    def pending_complete(self) -> int:
        """Complete series queued and not yet written."""
        return sum(1 for job in list(self.jobs.queue)
                   if job is not None and job.get("last") and job["complete"])

    def close(self) -> None:
        """Let :meth:`run` end once everything queued is written."""
        self.jobs.put(None)

    def run(self) -> None:
        """The writer thread: until :meth:`close`."""
        while True:
            job = self.jobs.get()
            if job is None:
                break
            self._busy = True
            try:
                self._do(job)
            finally:
                self._busy = False

    def _do(self, job: dict) -> None:
        if "operando" in job:
            self._append_operando(job["operando"])
            return
        analysis = None
        try:
            analysis = self._analyse(job)
        except Exception:                         # a bug in the analysis: the maps still go out
            self.errors += 1
            log.exception("could not analyse series %s; writing its maps without drift, "
                          "particles, q-ROIs or fits", job["series"].series_id)
        try:
            self._write(job, analysis)
        except (OSError, SxdmError) as exc:
            self.errors += 1
            log.error("could not write results: %s", exc)
        if job["last"]:
            self._record_result(job, analysis)
        else:                                     # its arrays take the next angle's copy
            self._spare = job["processor"].accumulator

    def _analyse(self, job: dict) -> ScanAnalysis | None:
        if job["path"] is None and not job["last"]:
            return None
        p = job["processor"]
        final = job["last"] and job["complete"]
        return analyse(p.accumulator, self.settings.analysis,
                       angles_done=None if final else p.angles_done, final=final)

    def _write(self, job: dict, analysis: ScanAnalysis | None) -> None:
        path, p, series = job["path"], job["processor"], job["series"]
        if path is None:
            return
        status = "complete" if job["complete"] else ("incomplete" if job["last"] else "running")
        stats = job["stats"]
        attrs = {"status": status, "series_id": series.series_id,
                 "series_unique_id": series.series_unique_id or "",
                 "frames_received": p.counters.received, "frames_processed": p.counters.processed,
                 "frames_rejected": p.counters.n_rejected, "frames_dropped": stats["dropped"]}
        maps = analysis.maps if analysis is not None else p.maps()
        write_results(path, maps, p.setup, p.accumulator, extra_attrs=attrs,
                      hits=p.setup.hits() if p.setup.keep_histogram and job["last"] else None,
                      analysis=analysis)
        ckpt = checkpoint_path(path)
        if job["complete"]:
            ckpt.unlink(missing_ok=True)          # the results file now holds everything
        elif self.settings.checkpoints:
            write_checkpoint(ckpt, p, series.series_id, series.series_unique_id)

    def _append_operando(self, record: OperandoRecord) -> None:
        try:
            self.operando.append(record)
        except (OSError, SxdmError) as exc:
            self.errors += 1
            log.error("could not add series %s to the operando series %s: %s",
                      record.series_id, self.operando.path, exc)

    def _record_result(self, job: dict, analysis: ScanAnalysis | None) -> None:
        """Hand the finished series to :attr:`on_result`."""
        p, series = job["processor"], job["series"]
        frames = {"received": p.counters.received, "processed": p.counters.processed,
                  "rejected": p.counters.n_rejected, "dropped": job["stats"]["dropped"]}
        maps = analysis.maps if analysis is not None else p.maps()
        result = SeriesResult(series.series_id, series.series_unique_id, job["path"], maps,
                              job["complete"], p.setup.scan, correlation_id_of(series.sxdm), frames,
                              analysis)
        self.on_result(result)
