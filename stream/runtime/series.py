"""The live processor's worker: each message goes to the series state machine
(:class:`~sxdm_stream.pipeline.series.SeriesMachine`: which series is current, what becomes of
every message), and the worker acts on the events it returns: snapshots at a bounded rate
(:mod:`.snapshots`), writes (:mod:`.writer`), the log (each reason once, then only counted),
pixel requests (:class:`~sxdm_stream.sinks.publish.PixelService`). The last snapshot of a
series makes its analysis (the final one once the scan is over: drift, particles, ROI
suggestion, fits), handed to the writer with the series' last write: made once.

=================  ==========================================================================
thread             owns
=================  ==========================================================================
worker             everything here: the machine, the current series' results path and
                   operando channels, the snapshots and the pixel service it drives
caller of stop()   everything here, only once the worker thread has died
any                :meth:`counts` (copies), :attr:`processor`, :attr:`series`, :attr:`held`,
                   :attr:`placed_by_index` (each read once)
=================  ==========================================================================
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Callable

from sxdm_stream.analysis.operando import OperandoRecord, operando_channels
from sxdm_stream.analysis.scan_analysis import ScanAnalysis
from sxdm_stream.errors import HistogramBudgetError, SxdmError
from sxdm_stream.messages import ImageFrame, SeriesStart
from sxdm_stream.pipeline import series_events as ev
from sxdm_stream.pipeline.scan_processor import ScanProcessor
from sxdm_stream.pipeline.series import SeriesMachine
from sxdm_stream.runtime.queues import BoundedQueue
from sxdm_stream.runtime.report import format_missing
from sxdm_stream.runtime.settings import Config, ScanOverride, setup_for_series
from sxdm_stream.runtime.snapshots import Snapshots
from sxdm_stream.runtime.supervisor import InternalErrors
from sxdm_stream.runtime.writer import ResultsWriter
from sxdm_stream.sinks.checkpoint import continues_series
from sxdm_stream.sinks.paths import ResultPaths
from sxdm_stream.sinks.publish import PixelService, pixel_reply

log = logging.getLogger(__name__)


class SeriesWorker:
    """The worker thread's loop (:meth:`run`) around a :class:`SeriesMachine`.

    Parameters
    ----------
    settings, override : as given to the processor.
    paths : names each series' results file.
    snapshots : derives and publishes the current scan's maps.
    writer : takes the copies of the sums to write.
    internal : where exceptions of one message are counted.
    stop : set by the worker when ``max_series`` series ended, or when the run cannot go on
        (then ``on_fatal(exc)`` is told first).
    stats : the processor's status, which snapshots carry.
    dropped : images dropped so far, which results files carry.
    """

    def __init__(self, settings: Config, override: ScanOverride | None,
                 paths: ResultPaths, snapshots: Snapshots, writer: ResultsWriter,
                 internal: InternalErrors, stop: threading.Event, max_series: int | None,
                 on_fatal: Callable[[BaseException], None], stats: Callable[[], dict],
                 dropped: Callable[[], int]) -> None:
        self.settings, self.override, self.paths = settings, override, paths
        self.snapshots, self.writer, self.internal = snapshots, writer, internal
        self.stop, self.max_series, self.on_fatal = stop, max_series, on_fatal
        self.stats, self.dropped = stats, dropped
        self.machine = SeriesMachine(
            lambda start, plan_block: setup_for_series(start, settings.accumulation, override,
                                                       plan_block),
            continues_series, hold_frames=settings.live.hold_frames,
            join_timeout_s=settings.live.join_timeout_s,
            mask_fraction=settings.maps.mask_fraction, d_ref=settings.maps.d_ref_a,
            user_scan=override is not None)
        self.after_stop = 0                       # messages left once the run was over
        self.first_image_s: float | None = None
        self.last_record: OperandoRecord | None = None
        self._over = False                        # max_series ended, or the run cannot go on
        self._path: Path | None = None            # the current series' results file
        self._channels: dict = {}
        self._closing: tuple | None = None        # (processor, series) of the series finishing
        self._finished: tuple = (None, None)      # answers pixel requests after the end
        self._reported: set[str] = set()

    def resume(self, processor: ScanProcessor, series_id: int, series_unique_id: str | None,
               path: Path) -> None:
        """Continue a checkpoint's series (before :meth:`run`), written to ``path``."""
        self.machine.resume(processor, series_id, series_unique_id)
        self._path = path

    # ---- what the status reads (any thread) -------------------------------------------------
    @property
    def processor(self) -> ScanProcessor | None:
        """The current scan's sums (while its last snapshot is made: the finishing one's)."""
        closing = self._closing
        return closing[0] if closing is not None else self.machine.processor

    @property
    def series(self) -> SeriesStart | None:
        closing = self._closing
        return closing[1] if closing is not None else self.machine.series

    @property
    def held(self) -> int:
        return self.machine.held

    @property
    def placed_by_index(self) -> int:
        return self.machine.tally.placed_by_index

    def counts(self) -> tuple[Counter, Counter, int]:
        """Copies of (rejections, quirks, frames processed), the current scan's included."""
        tally, p = self.machine.tally, self.machine.processor
        rejected = Counter(dict.copy(tally.rejected))
        processed = tally.processed_before
        if p is not None:
            rejected.update(dict.copy(p.counters.rejected))
            processed += p.counters.processed
        return rejected, Counter(dict.copy(tally.quirks)), processed

    # ---- the loop -----------------------------------------------------------------------------
    def run(self, frames: BoundedQueue, service: PixelService | None) -> None:
        """Handle messages until stopped and ``frames`` is empty; then finish the series."""
        while True:
            try:
                message = frames.get(timeout=0.05)
            except queue.Empty:
                if self.stop.is_set():
                    break
                message = None
            if message is not None and self._over:
                self.after_stop += 1              # another series' messages: not taken
            elif message is not None:
                self.handle(message)
            self._act(self.machine.tick(time.monotonic()))
            self.writer.finish_handoff()          # the worker's part of an angle end's copy
            self._maybe_snapshot()
            if service is not None:
                service.answer_pending(self._pixel_reply, self._pixel_error)
        self.finish_series(ended=False)

    def handle(self, message) -> None:
        """One message; whatever it raises is counted, never propagated."""
        if self.first_image_s is None and isinstance(message, ImageFrame):
            self.first_image_s = message.received_s
        self._act(self.machine.feed(message, time.monotonic()))

    def finish_series(self, ended: bool) -> None:
        """The current series is over: ``ended`` by the detector, or cut short (stop). Its
        last snapshot and write go out, complete or not."""
        self._act(self.machine.finish(ended))

    def _act(self, events: list) -> None:
        for event in events:
            level, action = _LOGGED.get(type(event)), _ACTIONS.get(type(event))
            try:
                if level is not None and not getattr(event, "by_scan", False):
                    self._report(event.reason, event.detail, level)   # the scan logs its own
                if action is not None:
                    action(self, event)
            except Exception as exc:              # a bug of ours: keep running, keep the sums
                self.machine.tally.count(ev.InternalError(f"a {type(event).__name__}", exc))
                self.internal.record("worker", exc, f"a {type(event).__name__}")

    def _pixel_reply(self, point: int) -> list[bytes]:
        p, series = self.machine.processor, self.machine.series
        if p is None:
            p, series = self._finished
        return pixel_reply(p, series.series_id if series is not None else None, point)

    def _pixel_error(self, exc: Exception) -> None:
        self.internal.record("pixel service", exc, "a pixel request")

    # ---- acting on the machine's events -------------------------------------------------------
    def _started(self, event: ev.SeriesStarted) -> None:
        start, plan, scan = event.series, event.plan, event.processor.setup.scan
        self._path = None
        self._channels = {**operando_channels(plan.sxdm if plan is not None else None),
                          **operando_channels(start.sxdm)}
        log.info("series %s (%s): %dx%d map, %d rocking angles, %d frames%s", start.series_id,
                 start.series_unique_id, *scan.shape, scan.n_angles, scan.n_frames,
                 f", joined to run {plan.run_uid}" if plan is not None else "")
        try:
            self._path = self.paths.path_for(start, event.index)
        except SxdmError as exc:                  # a name template that cannot be filled in
            self._report("unnamed_results", f"series {start.series_id}: {exc}; its results "
                         "are not written", level=logging.ERROR)

    def _refused(self, event: ev.SeriesRefused) -> None:
        if not isinstance(event.error, HistogramBudgetError):   # a bad start, an unusable run
            self._report(event.reason, event.detail, level=logging.ERROR)
            return
        self.on_fatal(event.error)                # no scan of this shape fits: stop the run
        self._over = True
        self.stop.set()

    def _angle_done(self, event: ev.AngleDone) -> None:
        if self._path is not None:
            self.writer.schedule(event.processor, event.series, False, False, self._path,
                                 self.dropped())

    def _finished_series(self, event: ev.SeriesFinished) -> None:
        p, series = event.processor, event.series
        self._closing = (p, series)
        try:
            analysis = self._final_snapshot(event)
            if not event.complete:
                log.warning("series %s (%s) %s incomplete: %s", series.series_id,
                            series.series_unique_id, "ended" if event.ended else "stopped",
                            format_missing(event.missing))
            self.writer.schedule(p, series, event.ended, True, self._path, self.dropped(),
                                 analysis=analysis)
        finally:
            self._finished, self._closing = (p, series), None
        if event.ended and self.max_series is not None and \
                self.machine.tally.ended >= self.max_series:
            self._over = True
            self.stop.set()

    def _final_snapshot(self, event: ev.SeriesFinished) -> ScanAnalysis | None:
        """The series' last snapshot; its analysis (None if it failed: the writer makes it)."""
        p, series = event.processor, event.series
        try:
            analysis, record = self.snapshots.last(p, series, event.index, event.final,
                                                   self.stats, self._channels)
        except Exception as exc:                  # the sums are still written
            self.snapshots.failed()
            self.internal.record("snapshots", exc,
                                 f"the final snapshot of series {series.series_id}")
            return None
        if record is not None:                    # published; the writer adds it to the file
            self.last_record = record
            self.writer.add_record(record)
        return analysis

    def _maybe_snapshot(self) -> None:
        p, series = self.machine.processor, self.machine.series
        if p is None or not self.snapshots.due():
            return
        try:
            self.snapshots.make(p, series, self.machine.index, False, "running", self.stats,
                                self._channels)
        except Exception as exc:                  # a bug in the analysis must not stop the sums
            self.snapshots.failed()
            self.internal.record("snapshots", exc, "a snapshot")

    def _report(self, reason: str, message: str, level: int = logging.WARNING) -> None:
        if reason not in self._reported:
            self._reported.add(reason)
            log.log(level, "%s (further occurrences of %r are only counted)", message, reason)


#: events logged (the first of each reason, then only counted), at which level
_LOGGED = {ev.CheckpointRefused: logging.ERROR, ev.FrameRejected: logging.WARNING,
           ev.MessageRejected: logging.WARNING, ev.PlacedByIndex: logging.WARNING,
           ev.Quirk: logging.INFO}

#: what the worker does on each event of the machine, besides logging it
_ACTIONS: dict[type, Callable] = {
    ev.SeriesStarted: SeriesWorker._started,
    ev.SeriesWaiting: lambda w, e: log.info(
        "series %s waits for the run with correlation id %s to describe its scan",
        e.series.series_id, e.correlation_id),
    ev.SeriesContinued: lambda w, e: log.info("series %s restarted; continuing its scan",
                                           e.series.series_id),
    ev.SeriesRefused: SeriesWorker._refused,
    ev.FrameAccepted: lambda w, e: w.snapshots.frame_added(e.received_s),
    ev.AngleDone: SeriesWorker._angle_done,
    ev.SeriesFinished: SeriesWorker._finished_series,
    ev.InternalError: lambda w, e: w.internal.record("worker", e.error, e.what),
}
