"""The live processor's writer thread: results files, checkpoints, operando records.

The worker hands it a series' sums (:meth:`ResultsWriter.schedule`, a :class:`WriteJob`) at
the end of each rocking angle and of the series, and operando records (:class:`OperandoJob`);
it writes the results file atomically with a checkpoint beside it (removed once every frame of
the scan is in), and hands every finished series to ``on_result`` as a
:class:`SeriesResult`. The analysis written
(:func:`sxdm_stream.analysis.scan_analysis.analyse`) of a series' last write is the one the
worker made for its last snapshot, handed over with the job: the final analysis (drift,
particles, ROI suggestion, fits) is made once. The writer analyses the sums itself only for
the intermediate writes, and when the worker's analysis failed.

What the worker pays at an angle end does not grow with the q histograms (hundreds of MB on
a large map): an intermediate job's copy is a :class:`~sxdm_stream.runtime.handoff.SumsHandoff`,
whose histogram the writer copies while frames keep coming and which the worker finishes
between two messages (:meth:`ResultsWriter.finish_handoff`: the rows that moved meanwhile and
the small arrays); a series' last job takes the sums themselves (the worker feeds them no
more). The histogram is gzip-compressed only by a series' last write: re-compressing it at
every angle kept the writer busy half the time; and HDF5 gets it a few MB per call, since
h5py holds the GIL through each call.

Failures never stop the thread and never pass unseen:

* a failing analysis still writes the plain maps; a failing write (missing or read-only
  folder, full disk, HDF5 error) is counted in :attr:`ResultsWriter.errors` and logged. The
  next angle's write retries by itself; the final result of a series whose write failed is
  kept (the last ``keep_results`` of them) and written again before every later job and when
  the writer closes. :attr:`SeriesResult.written` says whether it ever was;
* any other exception of one job is counted under ``internal_error`` ("writer") and the
  thread takes the next job.

The job queue is bounded in jobs and in bytes (each job holds a copy of the sums, or the
sums, q histograms included): an intermediate write finding it busy is skipped (the next
angle's
will do), a series' last write waits for room, which holds the worker back.

======================  ===================================================================
thread                  owns
======================  ===================================================================
worker                  :meth:`schedule`, :meth:`add_record` (producers), ``_spare`` taken,
                        :meth:`finish_handoff`, ``_handoff``
writer                  :meth:`run`, ``_unwritten``, ``errors``, ``SeriesResult.written``,
                        ``_spare`` given back, ``_busy``
any                     ``jobs`` (a locked :class:`BoundedQueue`), :meth:`pending_ended`,
                        :meth:`unwritten`, :meth:`wait_done` (``jobs_done``, under ``_done``)
caller of stop()        :meth:`run` again, only once the writer thread has died
======================  ===================================================================
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from sxdm_stream.analysis.operando import OperandoRecord
from sxdm_stream.analysis.scan_analysis import ScanAnalysis, analyse
from sxdm_stream.core.maps import MapSet
from sxdm_stream.core.scan import ScanDescription
from sxdm_stream.errors import SxdmError
from sxdm_stream.messages import SeriesStart
from sxdm_stream.pipeline.join import correlation_id_of
from sxdm_stream.pipeline.scan_processor import ScanProcessor
from sxdm_stream.runtime.handoff import SumsHandoff
from sxdm_stream.runtime.queues import BoundedQueue
from sxdm_stream.runtime.report import describe_outcome
from sxdm_stream.runtime.settings import Config
from sxdm_stream.runtime.supervisor import InternalErrors
from sxdm_stream.sinks.checkpoint import checkpoint_path, write_checkpoint
from sxdm_stream.sinks.results import write_results
from sxdm_stream.sinks.timeseries import OperandoSeriesFile

log = logging.getLogger(__name__)

#: how long the writer waits for the worker's part of a copy (:class:`SumsHandoff`): the
#: worker takes it between two messages, so only a worker that stopped or died takes longer
HANDOFF_TIMEOUT_S = 30.0


@dataclass
class SeriesResult:
    """The final maps of one series, with what identifies it.

    ``complete``: every frame of the scan is in the sums; ``ended``: the detector ended the
    series (otherwise the run stopped first); ``missing``: frames not in the sums, per rocking
    angle; ``written``: the results file holds them (False while its write fails; set by the
    writer thread when a later attempt succeeds)."""

    series_id: int
    series_unique_id: str | None
    path: Path | None
    maps: MapSet
    complete: bool
    scan: ScanDescription | None = None
    correlation_id: str | None = None
    frames: dict = field(default_factory=dict)   # received, processed, rejected, dropped, missing
    analysis: ScanAnalysis | None = None         # drift, particles, q-ROI maps, suggestion, fits
    ended: bool = True
    missing: np.ndarray | None = None
    written: bool = False
    write_error: str | None = None

    def describe(self) -> str:
        """One line: ``series 3 (uid): complete -> path`` or why not."""
        return f"series {self.series_id} ({self.series_unique_id}): {describe_outcome(self)}"


@dataclass
class WriteJob:
    """A copy of one series' sums to write (worker -> writer).

    ``ended``: the detector ended the series (its final analysis is due); ``last``: the
    series' last write (the worker has moved on); ``analysis``: the worker's analysis of these
    very sums (its last snapshot's), written as it is; None: the writer analyses them."""

    processor: ScanProcessor
    series: SeriesStart
    ended: bool
    last: bool
    path: Path | None
    dropped: int = 0
    analysis: ScanAnalysis | None = None
    handoff: SumsHandoff | None = None            # an intermediate copy still being made

    @property
    def complete(self) -> bool:
        """Every frame of the scan is in these sums."""
        return self.processor.complete

    @property
    def final(self) -> bool:
        return self.last and (self.ended or self.complete)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.processor.accumulator.state().values())


@dataclass
class OperandoJob:
    """An operando record to add to the series file (worker -> writer)."""

    record: OperandoRecord


class ResultsWriter:
    """Writes what the worker schedules, on its own thread (:meth:`run`).

    Parameters
    ----------
    settings : the processor's configuration (analysis; ``[live]`` checkpoints, queue bounds).
    operando : the operando series file, or None.
    on_result : called with the :class:`SeriesResult` of every finished series.
    internal : where exceptions of one job are counted (a new counter if None).
    """

    def __init__(self, settings: Config, operando: OperandoSeriesFile | None,
                 on_result: Callable[[SeriesResult], None],
                 internal: InternalErrors | None = None) -> None:
        self.settings, self.operando, self.on_result = settings, operando, on_result
        self.internal = internal or InternalErrors()
        self.jobs = BoundedQueue(settings.live.writer_queue_jobs,
                                 int(settings.live.writer_queue_mib * 2**20))
        self.errors = 0
        self.jobs_done = 0            # write jobs taken and finished (written, failed, skipped)
        self._done = threading.Condition()
        self.running = False
        self._busy = False
        self._spare = None            # the accumulator of the last intermediate job, reused
        self._handoff: SumsHandoff | None = None  # the intermediate copy the worker finishes
        #: final results whose write failed: path -> (job, analysis, result), oldest first
        self._unwritten: OrderedDict = OrderedDict()

    # ---- worker side ------------------------------------------------------------------------
    def schedule(self, p: ScanProcessor, series: SeriesStart, ended: bool, last: bool,
                 path: Path | None, dropped: int = 0,
                 analysis: ScanAnalysis | None = None) -> bool:
        """Queue ``p``'s sums; an intermediate write is skipped (False) while the writer is
        still busy with an earlier one. A last write waits for room in the queue (while the
        writer runs). ``analysis``: already made of these sums (the worker's last snapshot);
        the writer writes it instead of analysing again.

        A series' last write takes ``p`` itself: the worker feeds it no more. An intermediate
        write takes a :class:`SumsHandoff`: the writer copies the histogram while frames keep
        coming, and the worker finishes the copy in :meth:`finish_handoff` (call it between
        messages); the worker never copies the whole histogram."""
        self.finish_handoff()
        if last and self._handoff is not None:    # its phase 1 is not over: this write instead
            self._handoff.cancel()
            self._handoff = None
        if not last and (self._busy or self.jobs.qsize() > 0):
            return False                          # the writer is behind: the next angle will do
        if last:
            job = WriteJob(p, series, ended, last, path, dropped, analysis)
            self._put_waiting(job, job.nbytes)
            return True
        spare, self._spare = self._spare, None
        handoff = SumsHandoff(p, into=spare)
        job = WriteJob(handoff.copy, series, ended, last, path, dropped, analysis, handoff)
        if not self.jobs.put_nowait(job, job.nbytes):
            return False
        self._handoff = handoff
        return True

    def finish_handoff(self) -> None:
        """The worker's part of the pending intermediate copy (:class:`SumsHandoff` phase 2),
        once the writer has copied the histogram: call it between two messages. Cheap when
        there is nothing to do."""
        handoff = self._handoff
        if handoff is not None and handoff.finish():
            self._handoff = None

    def add_record(self, record: OperandoRecord) -> None:
        """Queue an operando record for the series file."""
        if self.operando is not None:
            self._put_waiting(OperandoJob(record), 0)

    def _put_waiting(self, job, nbytes: int) -> None:
        # wait for room while the writer thread takes jobs; if it is gone (not started yet,
        # or died), queue anyway: whoever drains the queue (stop()) must find every job
        while not self.jobs.put(job, nbytes, timeout=0.1):
            if not self.running:
                self.jobs.put_beyond_bounds(job, nbytes)
                return

    def pending_ended(self) -> int:
        """Ended series queued and not yet written."""
        return sum(1 for job in self.jobs.items()
                   if isinstance(job, WriteJob) and job.last and job.ended)

    def close(self) -> None:
        """Let :meth:`run` end once everything queued is written (the worker has stopped: a
        copy it has not finished is given up)."""
        if self._handoff is not None:
            self._handoff.cancel()
        self.jobs.put_beyond_bounds(None)

    # ---- writer thread ----------------------------------------------------------------------
    def run(self) -> None:
        """The writer thread: until :meth:`close`; then the results not yet written are tried
        once more. Called again on another thread only if the writer thread died."""
        self.running = True
        try:
            while True:
                job = self.jobs.get()
                if job is None:
                    break
                self._busy = True
                with self.internal.guard("writer", f"a {type(job).__name__}"):
                    self._retry_unwritten()
                    self._do(job)
                self._busy = False
                with self._done:
                    self.jobs_done += 1
                    self._done.notify_all()
            with self.internal.guard("writer", "a retry of unwritten results"):
                self._retry_unwritten(closing=True)
        finally:
            self.running = False
            self._busy = False

    def wait_done(self, jobs: int, timeout: float | None = None) -> bool:
        """Wait until ``jobs`` jobs in all were taken and finished; False if ``timeout``
        (seconds) passed first."""
        with self._done:
            return self._done.wait_for(lambda: self.jobs_done >= jobs, timeout)

    def unwritten(self) -> list[SeriesResult]:
        """Final results that could not be written (so far)."""
        return [result for _job, _analysis, result in list(self._unwritten.values())]

    def _do(self, job) -> None:
        if isinstance(job, OperandoJob):
            self._append_operando(job.record)
            return
        if job.handoff is not None and not self._take_handoff(job):
            return                                # given up: the next angle's write will do
        analysis = None
        try:
            analysis = self._analyse(job)
        except Exception:                         # a bug in the analysis: the maps still go out
            self.errors += 1
            log.exception("could not analyse series %s; writing its maps without drift, "
                          "particles, q-ROIs or fits", job.series.series_id)
        self._unwritten.pop(job.path, None)       # a newer write of the same file supersedes
        error = self._try_write(job, analysis)
        if job.last:
            result = self._record_result(job, analysis, error)
            if error is not None and job.path is not None:
                self._keep_unwritten(job, analysis, result)
        else:                                     # its arrays take the next angle's copy
            self._spare = job.processor.accumulator

    def _take_handoff(self, job: WriteJob) -> bool:
        """Make the copy of an intermediate job (phase 1 here, phase 2 on the worker)."""
        handoff = job.handoff
        handoff.copy_histogram()
        if handoff.wait(HANDOFF_TIMEOUT_S):
            return True
        self._spare = handoff.copy.accumulator
        if not handoff.done.is_set():             # a loop that never calls finish_handoff()
            log.warning("series %s: the worker did not finish the copy of its sums within "
                        "%.0f s (does its loop call ResultsWriter.finish_handoff?); this "
                        "angle's write is skipped", job.series.series_id, HANDOFF_TIMEOUT_S)
        return False

    def _analyse(self, job: WriteJob) -> ScanAnalysis | None:
        if job.analysis is not None:              # the worker's: made once, written as it is
            return job.analysis
        if job.path is None and not job.last:
            return None
        p = job.processor
        return analyse(p.accumulator, self.settings.analysis,
                       angles_done=None if job.final else p.angles_done, final=job.final)

    def _try_write(self, job: WriteJob, analysis: ScanAnalysis | None) -> str | None:
        """Write ``job``; the error's text if it failed (None: written, or nothing to write)."""
        try:
            self._write(job, analysis)
        except Exception as exc:                  # OSError, HDF5 errors, a full disk...
            self.errors += 1
            text = f"{type(exc).__name__}: {exc}" if not isinstance(exc, (OSError, SxdmError)) \
                else str(exc)
            log.error("could not write the results of series %s to %s: %s (the sums are kept; "
                      "the next write tries again)", job.series.series_id, job.path, text)
            return text
        return None

    def _write(self, job: WriteJob, analysis: ScanAnalysis | None) -> None:
        path, p, series = job.path, job.processor, job.series
        if path is None:
            return
        status = "complete" if job.complete else ("incomplete" if job.last else "running")
        missing = p.missing_per_angle()
        attrs = {"status": status, "series_id": series.series_id,
                 "series_unique_id": series.series_unique_id or "",
                 "series_ended": bool(job.ended),
                 "frames_received": p.counters.received, "frames_processed": p.counters.processed,
                 "frames_rejected": p.counters.n_rejected, "frames_dropped": job.dropped,
                 "frames_missing": int(missing.sum()), "frames_missing_per_angle": missing}
        maps = analysis.maps if analysis is not None else p.maps()
        write_results(path, maps, p.setup, p.accumulator, extra_attrs=attrs,
                      hits=p.setup.hits() if p.setup.keep_histogram and job.last else None,
                      analysis=analysis, compress_histogram=job.last)
        ckpt = checkpoint_path(path)
        if job.complete:
            ckpt.unlink(missing_ok=True)          # the results file now holds everything
        elif self.settings.live.checkpoints:
            write_checkpoint(ckpt, p, series.series_id, series.series_unique_id)

    def _keep_unwritten(self, job: WriteJob, analysis, result: SeriesResult) -> None:
        self._unwritten[job.path] = (job, analysis, result)
        while len(self._unwritten) > self.settings.live.keep_results:
            _path, (old, _a, _r) = self._unwritten.popitem(last=False)
            log.error("giving up writing the results of series %s to %s (more than %d results "
                      "wait to be written)", old.series.series_id, old.path,
                      self.settings.live.keep_results)

    def _retry_unwritten(self, closing: bool = False) -> None:
        """Write again the final results whose write failed (oldest first)."""
        for path, (job, analysis, result) in list(self._unwritten.items()):
            error = self._try_write(job, analysis)
            if error is None:
                del self._unwritten[path]
                result.written, result.write_error = True, None
                log.info("wrote the results of series %s to %s after all",
                         job.series.series_id, path)
            else:
                result.write_error = error
                if closing:
                    log.error("the results of series %s were never written to %s: %s",
                              job.series.series_id, path, error)

    def _append_operando(self, record: OperandoRecord) -> None:
        try:
            self.operando.append(record)
        except (OSError, SxdmError) as exc:
            self.errors += 1
            log.error("could not add series %s to the operando series %s: %s",
                      record.series_id, self.operando.path, exc)

    def _record_result(self, job: WriteJob, analysis: ScanAnalysis | None,
                       error: str | None) -> SeriesResult:
        """Hand the finished series to :attr:`on_result`."""
        p, series = job.processor, job.series
        missing = p.missing_per_angle()
        frames = {"received": p.counters.received, "processed": p.counters.processed,
                  "rejected": p.counters.n_rejected, "dropped": job.dropped,
                  "missing": int(missing.sum())}
        maps = analysis.maps if analysis is not None else p.maps()
        result = SeriesResult(series.series_id, series.series_unique_id, job.path, maps,
                              job.complete, p.setup.scan, correlation_id_of(series.sxdm), frames,
                              analysis, ended=job.ended, missing=missing,
                              written=job.path is not None and error is None, write_error=error)
        self.on_result(result)
        return result
