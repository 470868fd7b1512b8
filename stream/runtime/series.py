"""The live processor's worker: which series is current, its frames joined and accumulated,
its end, its last snapshot and write.

A series is (``series_id``, ``series_unique_id``): stream v1 sends no unique id, and then
the id alone tells series apart. An image or end of the current id but another unique id
belongs to another series (``unknown_series``: it neither enters nor ends the current one).
A start with the current unique id re-announces the current series (a restarted detector);
so does, for the series resumed from a checkpoint, a start with its id and no unique id
whose scan set-up is the checkpoint's (stream v1 resume); a checkpoint of another scan set-up
is dropped unwritten (``checkpoint_refused``).

Every message is accounted for:

* an image while no series is current is counted under the reason its series' start was
  refused (``no_scan_description``...), ``image_after_end`` for the series just ended, and
  ``image_before_start`` only when its series never started here;
* a duplicated end is accepted and counted as a quirk (``duplicate_end``);
* ids that are not unsigned 64-bit integers are refused (``malformed``) before any use.

A series is ``complete`` when every frame of its scan is in the sums; one ended by the
detector or cut short (a new start, stop) with frames missing is written ``incomplete``
with the count per rocking angle, and logged so.

=================  ==========================================================================
thread             owns
=================  ==========================================================================
worker             everything here; the snapshots and the pixel service it drives
caller of stop()   everything here, only once the worker thread has died
any                :meth:`counts` (copies), ``processor`` and ``series`` read once
=================  ==========================================================================
"""

from __future__ import annotations

import logging
import numbers
import queue
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Callable

from sxdm_stream.analysis.operando import OperandoRecord, operando_channels
from sxdm_stream.errors import HistogramBudgetError, SxdmError
from sxdm_stream.messages import (ImageFrame, PlanEnd, PlanStart, PointPositions, SeriesEnd,
                                  SeriesStart)
from sxdm_stream.pipeline.join import HeldFrames, PlanBook, correlation_id_of, describes_scan
from sxdm_stream.pipeline.scan_processor import ScanProcessor
from sxdm_stream.runtime.queues import BoundedQueue
from sxdm_stream.runtime.report import format_missing, missing_per_angle
from sxdm_stream.runtime.settings import LiveSettings, ScanOverride, setup_for_series
from sxdm_stream.runtime.snapshots import Snapshots
from sxdm_stream.runtime.supervisor import InternalErrors
from sxdm_stream.runtime.writer import ResultsWriter
from sxdm_stream.sinks.paths import ResultPaths
from sxdm_stream.sinks.publish import PixelService, pixel_reply

log = logging.getLogger(__name__)


def _same_unique(a: str | None, b: str | None) -> bool:
    """Unique ids that do not tell two series apart (v1 sends none)."""
    return a is None or b is None or a == b


def _reason(exc: SxdmError) -> str:
    """The reason a series' start (and so its images) is refused."""
    if isinstance(exc, HistogramBudgetError):
        return "histogram_over_budget"
    return getattr(exc, "reason", "error")


def _is_id(value) -> bool:
    """A DECTRIS id: an unsigned 64-bit integer (a bigger one cannot even be logged)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and \
        0 <= value < 2**64


def _of_series(message, series: SeriesStart | None) -> bool:
    """Whether an image or end ``message`` belongs to ``series``."""
    return series is not None and message.series_id == series.series_id and \
        _same_unique(message.series_unique_id, series.series_unique_id)


class SeriesWorker:
    """The worker thread's state and loop (:meth:`run`).

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

    def __init__(self, settings: LiveSettings, override: ScanOverride | None,
                 paths: ResultPaths, snapshots: Snapshots, writer: ResultsWriter,
                 internal: InternalErrors, stop: threading.Event, max_series: int | None,
                 on_fatal: Callable[[BaseException], None], stats: Callable[[], dict],
                 dropped: Callable[[], int]) -> None:
        self.settings, self.override, self.paths = settings, override, paths
        self.snapshots, self.writer, self.internal = snapshots, writer, internal
        self.stop, self.max_series, self.on_fatal = stop, max_series, on_fatal
        self.stats, self.dropped = stats, dropped
        self.rejected: Counter = Counter()        # rejections outside a scan, and finished ones
        self.quirks: Counter = Counter()          # accepted although not as specified
        self.placed_by_index = 0
        self.ended = 0                            # series ended by their detector
        self.after_stop = 0                       # messages left once the run was over
        self._over = False                        # max_series ended, or the run cannot go on
        self.processed_before = 0
        self.first_image_s: float | None = None
        self.last_record: OperandoRecord | None = None
        self.processor: ScanProcessor | None = None
        self.series: SeriesStart | None = None
        self._path: Path | None = None            # the current series' results file
        self._index = 0                           # of the current series in this run
        self._resumed = False                     # the current series came from a checkpoint
        self._refused: tuple[SeriesStart, str] | None = None   # a start that failed, why
        self._last_ended: SeriesStart | None = None
        self._finished: tuple = (None, None)      # answers pixel requests after the end
        self._channels: dict = {}
        self._angles_written = 0
        self._reported: set[str] = set()
        self._plans = PlanBook()
        self._plan = None                         # the control-system run joined to the series
        self._held = HeldFrames(settings.hold_frames)
        self._end_pending: float | None = None    # when the detector ended a series still joining

    def resume(self, processor: ScanProcessor, series_id: int, series_unique_id: str | None,
               path: Path) -> None:
        """Continue a checkpoint's series (before :meth:`run`), written to ``path``."""
        self.processor = processor
        self.series = SeriesStart(series_id=series_id, series_unique_id=series_unique_id)
        self._index, self._resumed, self._path = 1, True, path
        self._angles_written = processor.angles_done

    def counts(self) -> tuple[Counter, Counter, int]:
        """Copies of (rejections, quirks, frames processed), the current scan's included."""
        p = self.processor
        rejected = Counter(dict.copy(self.rejected))
        processed = self.processed_before
        if p is not None:
            rejected.update(dict.copy(p.counters.rejected))
            processed += p.counters.processed
        return rejected, Counter(dict.copy(self.quirks)), processed

    @property
    def held(self) -> int:
        return len(self._held)

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
            with self.internal.guard("worker", "a pending series end"):
                self._check_end_pending()
            self._maybe_snapshot()
            if service is not None:
                service.answer_pending(self._pixel_reply, self._pixel_error)
        with self.internal.guard("worker", "the last series' end"):
            self.finish_series(ended=False)

    def handle(self, message) -> None:
        """One message; whatever it raises is counted, never propagated."""
        try:
            if isinstance(message, ImageFrame):
                self._on_image(message)
            elif isinstance(message, SeriesStart):
                self._on_start(message)
            elif isinstance(message, SeriesEnd):
                self._on_end(message)
            elif isinstance(message, PointPositions):
                self._on_positions(message)
            elif isinstance(message, PlanStart):
                self._on_plan_start(message)
            elif isinstance(message, PlanEnd):
                self._on_plan_end(message)
        except HistogramBudgetError as exc:      # no scan of this shape fits: stop the run
            self.rejected["histogram_over_budget"] += 1
            self.on_fatal(exc)
            self._over = True
            self.stop.set()
        except SxdmError as exc:                 # a bad start message, an unwritable file...
            reason = getattr(exc, "reason", "error")
            self.rejected[reason] += 1
            self._report(reason, str(exc), level=logging.ERROR)
        except Exception as exc:                  # a bug of ours: keep running, keep the sums
            self.rejected["internal_error"] += 1
            self.internal.record("worker", exc, f"a {type(message).__name__}")

    def _pixel_reply(self, point: int) -> list[bytes]:
        p, series = self.processor, self.series
        if p is None:
            p, series = self._finished
        return pixel_reply(p, series.series_id if series is not None else None, point)

    def _pixel_error(self, exc: Exception) -> None:
        self.internal.record("pixel service", exc, "a pixel request")

    # ---- the detector's plane -----------------------------------------------------------------
    def _on_start(self, start: SeriesStart) -> None:
        if not _is_id(start.series_id):
            self._reject("malformed", "a start whose series id is not an unsigned 64-bit integer")
            return
        if self.processor is not None and self._continues(start):
            log.info("series %s restarted; continuing its scan", start.series_id)
            self.series, self._resumed = start, False
            return
        self.finish_series(ended=False)
        correlation_id = correlation_id_of(start.sxdm)
        self.series, self._plan = start, self._plans.get(correlation_id)
        self._refused, self._resumed = None, False
        self._index += 1
        self._angles_written = 0
        if self.override is None and self._plan is None and correlation_id is not None \
                and not describes_scan(start.sxdm):
            log.info("series %s waits for the run with correlation id %s to describe its scan",
                     start.series_id, correlation_id)
            return                                # images are held until the run starts
        try:
            self._begin_series()
        except SxdmError as exc:                  # no usable description: nothing is current
            self._refused = (start, _reason(exc))
            self.series, self._plan = None, None
            raise

    def _continues(self, start: SeriesStart) -> bool:
        """Whether ``start`` re-announces the current series: the same unique id, or (stream
        v1 sends none) the resumed series' id with the checkpoint's very scan set-up. A
        resumed checkpoint of another scan set-up is refused: dropped unwritten, counted,
        logged once; ``start`` then begins afresh (:func:`~sxdm_stream.sinks.checkpoint.continues_series`)."""
        from sxdm_stream.sinks.checkpoint import CheckpointError, continues_series
        try:
            return continues_series(self.processor, self.series, start, lambda: setup_for_series(
                start, self.settings.accumulation, self.override), self._resumed)
        except CheckpointError as exc:
            self.rejected[exc.reason] += 1
            self._report(exc.reason, str(exc), level=logging.ERROR)
            self.processor, self.series, self._resumed = None, None, False
            return False

    def _begin_series(self) -> None:
        start, plan = self.series, self._plan
        setup = setup_for_series(start, self.settings.accumulation, self.override,
                                 plan.sxdm if plan is not None else None)
        self.processor = ScanProcessor(setup, self.settings.mask_fraction, self.settings.d_ref)
        self._path = self.paths.path_for(start, self._index)
        self._channels = {**operando_channels(plan.sxdm if plan is not None else None),
                          **operando_channels(start.sxdm)}
        scan = setup.scan
        log.info("series %s (%s): %dx%d map, %d rocking angles, %d frames%s", start.series_id,
                 start.series_unique_id, *scan.shape, scan.n_angles, scan.n_frames,
                 f", joined to run {plan.run_uid}" if plan is not None else "")

    def _on_image(self, image: ImageFrame) -> None:
        if self.first_image_s is None:
            self.first_image_s = image.received_s
        if not (_is_id(image.series_id) and _is_id(image.image_id)):
            self._reject("malformed", "an image whose series or image id is not an unsigned "
                         "64-bit integer")
            return
        if self.series is None:
            self._reject_outside_series(image)
            return
        if not _of_series(image, self.series):
            self._reject("unknown_series", f"image {image.image_id} belongs to series "
                         f"{image.series_id} ({image.series_unique_id}), the current series is "
                         f"{self.series.series_id} ({self.series.series_unique_id})")
            return
        if self.processor is None:                # waiting for the run's description
            for lost in self._held.hold(image):
                self._reject_undescribed(1, f"image {lost.image_id} pushed out of the "
                                         f"{self._held.limit} frames held")
            return
        positions = image.positions
        if positions is None and self._plan is not None:
            positions = self._plan.positions.pop(int(image.image_id), None)
            if positions is None and not self._plan.ended:
                for early in self._held.hold(image):   # positions late: the oldest go by index
                    self._add(early, None)
                return
        self._add(image, positions)

    def _reject_outside_series(self, image: ImageFrame) -> None:
        """An image while no series is current: of a series whose start was refused (counted
        under that start's reason), of the series just ended, or before any start."""
        if self._refused is not None and _of_series(image, self._refused[0]):
            reason = self._refused[1]
            self._reject(reason, f"image {image.image_id} of series {image.series_id}, whose "
                         f"start was refused ({reason})")
        elif _of_series(image, self._last_ended):
            self._reject("image_after_end", f"image {image.image_id} of series "
                         f"{image.series_id} arrived after the series' end")
        else:
            self._reject("image_before_start", f"image {image.image_id} of series "
                         f"{image.series_id} arrived before any series start")

    def _add(self, image: ImageFrame, positions) -> None:
        if positions is None and self._plan is not None:
            self.placed_by_index += 1
            self._report("placed_by_index", f"image {image.image_id}: no positions from run "
                         f"{self._plan.run_uid}; placed by its index")
        if self.processor.add(image.image_id, image.data, monitor=image.monitor,
                              positions=positions):
            self.snapshots.frame_added(image.received_s)
        if self.processor.angles_done > self._angles_written:
            self._angles_written = self.processor.angles_done
            self._schedule_write(ended=False)

    def _reject_undescribed(self, n: int, what: str) -> None:
        correlation_id = correlation_id_of(self.series.sxdm)
        self.rejected["no_scan_description"] += n
        self._report("no_scan_description", f"series {self.series.series_id}: {what}; no run "
                     f"with correlation id {correlation_id} described its scan (was its start "
                     "document missed?): rejected, never mixed into another run")

    def _on_end(self, end: SeriesEnd) -> None:
        series = self.series
        if not _is_id(end.series_id):
            self._reject("malformed", "an end whose series id is not an unsigned 64-bit integer")
            return
        if _of_series(end, series):
            if self._end_pending is not None:
                self._quirk("duplicate_end", f"series {end.series_id} ended twice")
            elif self.processor is None or (len(self._held) and not self._plan.ended):
                self._end_pending = time.monotonic()  # the run's description or positions late
            else:
                self.finish_series(ended=True)
        elif series is None and _of_series(end, self._last_ended):
            self._quirk("duplicate_end", f"series {end.series_id} ended twice")
        elif series is None and self._refused is not None and _of_series(end, self._refused[0]):
            self._refused = None                  # the refused series is over: nothing to do
        elif series is not None and end.series_id == series.series_id:
            self._reject("unknown_series", f"end of series {end.series_id} "
                         f"({end.series_unique_id}) while series {series.series_id} "
                         f"({series.series_unique_id}) runs: not its end, the series goes on")
        else:
            self._reject("unknown_series", f"end of series {end.series_id}, which is not current")

    # ---- the control system's plane -----------------------------------------------------------
    def _on_plan_start(self, message: PlanStart) -> None:
        plan = self._plans.start(message)
        if self.series is None or correlation_id_of(self.series.sxdm) != message.correlation_id:
            return
        self._plan = plan
        if self.processor is None:
            try:
                self._begin_series()
            except SxdmError as exc:              # the run's description is unusable
                series = self.series
                self.finish_series(ended=False)
                self._refused = (series, _reason(exc))
                raise
            for image in self._held.release():
                self._on_image(image)

    def _on_positions(self, message: PointPositions) -> None:
        plan = self._plans.add_positions(message)
        if plan is None:
            self._reject("unknown_run", f"positions of frame {message.frame_index} for correlation "
                         f"id {message.correlation_id}, a run that never started here")
            return
        if plan is self._plan and self.processor is not None:
            image = self._held.claim(message.frame_index)
            if image is not None:
                self._add(image, plan.positions.pop(int(message.frame_index)))

    def _on_plan_end(self, message: PlanEnd) -> None:
        plan = self._plans.end(message)
        if plan is not None and plan is self._plan and self.processor is not None:
            for image, positions in self._held.claim_with_positions(plan):
                self._add(image, positions)

    def _check_end_pending(self) -> None:
        """Finish a series the detector ended once its run caught up, or after the timeout."""
        if self._end_pending is None:
            return
        caught_up = self.processor is not None and (not len(self._held) or self._plan.ended)
        if caught_up or time.monotonic() - self._end_pending > self.settings.join_timeout_s:
            self.finish_series(ended=True)

    # ---- the end of a series ------------------------------------------------------------------
    def finish_series(self, ended: bool) -> None:
        """The current series is over: ``ended`` by the detector, or cut short (a new start,
        stop). Its last snapshot and write go out, complete or not."""
        self._end_pending = None
        if self.processor is None:
            held = self._held.release()
            if held:
                self._reject_undescribed(len(held), f"{len(held)} images")
            if self.series is not None:
                self._refused = (self.series, "no_scan_description")
            self.series, self._plan = None, None
            return
        for image in self._held.release():
            self._add(image, None)
        if self._plan is not None:
            self._plans.discard(self._plan.correlation_id)
            self._plan = None
        p, series = self.processor, self.series
        self._final_snapshot(p, series, final=ended or p.complete)
        if not p.complete:
            log.warning("series %s (%s) %s incomplete: %s", series.series_id,
                        series.series_unique_id, "ended" if ended else "stopped",
                        format_missing(missing_per_angle(p.included, p.setup.scan.n_angles)))
        self._schedule_write(ended=ended, last=True)
        self._finished = (p, series)
        self.processor, self.series = None, None
        self.processed_before += p.counters.processed
        self.rejected.update(p.counters.rejected)
        if ended:
            self._last_ended = series
            self.ended += 1
            if self.max_series is not None and self.ended >= self.max_series:
                self._over = True
                self.stop.set()

    def _final_snapshot(self, p: ScanProcessor, series: SeriesStart, final: bool) -> None:
        try:
            record = self.snapshots.last(p, series, self._index, final, self.stats,
                                         self._channels)
        except Exception as exc:                  # the sums are still written
            self.snapshots.failed()
            self.internal.record("snapshots", exc, f"the final snapshot of series {series.series_id}")
            return
        if record is not None:                    # published; the writer adds it to the file
            self.last_record = record
            self.writer.add_record(record)

    def _schedule_write(self, ended: bool, last: bool = False) -> None:
        if self._path is None and not last:
            return
        self.writer.schedule(self.processor, self.series, ended, last, self._path, self.dropped())

    # ---- snapshots and counting ---------------------------------------------------------------
    def _maybe_snapshot(self) -> None:
        p, series = self.processor, self.series
        if p is None or not self.snapshots.due():
            return
        try:
            self.snapshots.make(p, series, self._index, False, "running", self.stats,
                                self._channels)
        except Exception as exc:                  # a bug in the analysis must not stop the sums
            self.snapshots.failed()
            self.internal.record("snapshots", exc, "a snapshot")

    def _reject(self, reason: str, message: str) -> None:
        self.rejected[reason] += 1
        self._report(reason, message)

    def _quirk(self, kind: str, message: str) -> None:
        self.quirks[kind] += 1
        self._report(kind, f"{message}: accepted", level=logging.INFO)

    def _report(self, reason: str, message: str, level: int = logging.WARNING) -> None:
        if reason not in self._reported:
            self._reported.add(reason)
            log.log(level, "%s (further occurrences of %r are only counted)", message, reason)
