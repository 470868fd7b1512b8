"""Which series is current, and what becomes of every message: the series state machine.

:class:`SeriesMachine` takes the detector's messages (:class:`~sxdm_stream.messages.SeriesStart`,
:class:`~sxdm_stream.messages.ImageFrame`, :class:`~sxdm_stream.messages.SeriesEnd`) and the
control system's (:class:`~sxdm_stream.messages.PlanStart`,
:class:`~sxdm_stream.messages.PointPositions`, :class:`~sxdm_stream.messages.PlanEnd`) one at a
time and returns what happened as events (:mod:`.series_events`). No threads, sockets or
files, and no clock: the caller passes the time, so that the timeout of a join can be tested.

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
* ids are unsigned 64-bit integers: the messages refuse any other when they are made;
* an exception of ours on one message is an :class:`~.series_events.InternalError` event, and
  the machine goes on.

Two planes (:mod:`.join`): a series whose start carries only a correlation id waits for the
run with that id to describe its scan, holding its images (at most ``hold_frames``); its
frames take their measured positions by index, waiting for them while the run goes on. When
the detector ends such a series before the run caught up, the end waits (:meth:`tick`) until
it has, or ``join_timeout_s`` has passed; frames whose positions never came are placed by
index (:class:`~.series_events.PlacedByIndex`).
"""

from __future__ import annotations

from typing import Callable, Mapping

from sxdm_stream.core.accumulate import ScanSetup
from sxdm_stream.core.maps import DEFAULT_MASK_FRACTION
from sxdm_stream.errors import CheckpointError, HistogramBudgetError, SxdmError, format_untrusted
from sxdm_stream.messages import (ImageFrame, PlanEnd, PlanStart, PointPositions, SeriesEnd,
                                  SeriesStart)
from sxdm_stream.pipeline.join import HeldFrames, PlanBook, correlation_id_of, describes_scan
from sxdm_stream.pipeline.scan_processor import ScanProcessor
from sxdm_stream.pipeline.series_events import (AngleDone, CheckpointRefused, FrameAccepted,
                                                FrameRejected, InternalError, MessageRejected,
                                                PlacedByIndex, Quirk, SeriesContinued,
                                                SeriesFinished, SeriesRefused, SeriesStarted,
                                                SeriesTally, SeriesWaiting)

#: the set-up of a series from its start and the joined run's ``sxdm`` block (None: not
#: joined); raises an SxdmError (with a ``reason``) when it cannot be set up
SetupFor = Callable[[SeriesStart, Mapping | None], ScanSetup]
#: whether a start continues the current series:
#: ``(processor, series, start, setup_of, resumed) -> bool``, raising CheckpointError when a
#: resumed checkpoint is of another scan (:func:`sxdm_stream.sinks.checkpoint.continues_series`)
Continues = Callable[[ScanProcessor, SeriesStart | None, SeriesStart, Callable[[], ScanSetup],
                      bool], bool]


def same_unique(a: str | None, b: str | None) -> bool:
    """Unique ids that do not tell two series apart (v1 sends none)."""
    return a is None or b is None or a == b


def of_series(message, series: SeriesStart | None) -> bool:
    """Whether an image or end ``message`` belongs to ``series``."""
    return series is not None and message.series_id == series.series_id and \
        same_unique(message.series_unique_id, series.series_unique_id)


def refusal_reason(exc: SxdmError) -> str:
    """The reason a series' start (and so its images) is refused."""
    if isinstance(exc, HistogramBudgetError):
        return "histogram_over_budget"
    return getattr(exc, "reason", "error")


def _shown(value) -> str:
    """A name from outside (a unique or correlation id) for the log: as it is when it is a
    short string, else cut (:func:`~sxdm_stream.errors.format_untrusted`)."""
    return value if isinstance(value, str) and len(value) <= 64 else format_untrusted(value)


def _named(series_id, unique_id) -> str:
    return f"{series_id} ({_shown(unique_id)})"


class SeriesMachine:
    """The series and plan state of one processor: feed it messages, act on its events.

    Parameters
    ----------
    setup_for : the scan set-up of a series (the user's override, its own description, or
        the joined run's); raises SxdmError to refuse the series.
    continues : whether a start continues the current series (see :data:`Continues`).
    hold_frames : frames held at most while waiting for the run's description or positions.
    join_timeout_s : how long a series the detector ended waits for its run to catch up.
    mask_fraction, d_ref : of each scan's maps (:class:`~.scan_processor.ScanProcessor`).
    user_scan : the user gave the scan (``--scan-file``): never wait for a run to describe it.

    Attributes read by other threads: :attr:`processor`, :attr:`series` (each read once),
    :attr:`tally` (copies), :attr:`held`.
    """

    def __init__(self, setup_for: SetupFor, continues: Continues, *, hold_frames: int = 512,
                 join_timeout_s: float = 10.0, mask_fraction: float = DEFAULT_MASK_FRACTION,
                 d_ref: float | None = None, user_scan: bool = False) -> None:
        self._setup_for, self._continues_fn = setup_for, continues
        self.join_timeout_s, self.user_scan = join_timeout_s, user_scan
        self._mask_fraction, self._d_ref = mask_fraction, d_ref
        self.tally = SeriesTally()
        self.processor: ScanProcessor | None = None
        self.series: SeriesStart | None = None
        self.index = 0                            # of the current series in this run
        self._resumed = False                     # the current series came from a checkpoint
        self._refused: tuple[SeriesStart, str] | None = None   # a start that failed, why
        self._last_ended: SeriesStart | None = None
        self._angles_written = 0
        self._plans = PlanBook()
        self._plan = None                         # the control-system run joined to the series
        self._held = HeldFrames(hold_frames)
        self._end_pending: float | None = None    # when the detector ended a series still joining
        self._events: list = []
        self._now_s = 0.0                         # the time of the message handled (the caller's)
        self._handlers = tuple((kind, handler, f"a {kind.__name__}") for kind, handler in (
            (ImageFrame, self._on_image), (SeriesStart, self._on_start), (SeriesEnd, self._on_end),
            (PointPositions, self._on_positions), (PlanStart, self._on_plan_start),
            (PlanEnd, self._on_plan_end)))

    @property
    def held(self) -> int:
        """Frames held, waiting for their run's description or positions."""
        return len(self._held)

    def resume(self, processor: ScanProcessor, series_id: int,
               series_unique_id: str | None) -> None:
        """Continue a checkpoint's series (before any message)."""
        self.processor = processor
        self.series = SeriesStart(series_id=series_id, series_unique_id=series_unique_id)
        self.index, self._resumed = 1, True
        self._angles_written = processor.angles_done

    # ---- what the caller does -------------------------------------------------------------
    def feed(self, message, now_s: float) -> list:
        """Handle one message received at ``now_s`` (monotonic seconds); its events."""
        self._now_s = now_s
        for kind, handler, what in self._handlers:   # images first: nearly every message
            if isinstance(message, kind):
                return self._run(lambda: handler(message), what)
        return []

    def tick(self, now_s: float) -> list:
        """Finish a series the detector ended once its run caught up, or once
        ``join_timeout_s`` has passed since its end (call it now and then)."""
        self._now_s = now_s
        return self._run(self._check_end_pending, "a pending series end")

    def finish(self, ended: bool) -> list:
        """The current series is over: ``ended`` by the detector, or cut short (the run
        stops). Nothing happens when no series is current."""
        return self._run(lambda: self._finish(ended), "the end of a series")

    def _run(self, call: Callable[[], None], what: str) -> list:
        try:
            call()
        except Exception as exc:                  # a bug of ours: keep the sums, go on
            self._emit(InternalError(what, exc))
        events, self._events = self._events, []
        return events

    def _emit(self, event) -> None:
        self.tally.count(event)
        self._events.append(event)

    # ---- the detector's plane -------------------------------------------------------------
    def _on_start(self, start: SeriesStart) -> None:
        if self.processor is not None and self._continues(start):
            self.series, self._resumed = start, False
            self._emit(SeriesContinued(start))
            return
        self._finish(ended=False)
        correlation_id = correlation_id_of(start.sxdm)
        self.series, self._plan = start, self._plans.get(correlation_id)
        self._refused, self._resumed = None, False
        self.index += 1
        self._angles_written = 0
        if not self.user_scan and self._plan is None and correlation_id is not None \
                and not describes_scan(start.sxdm):
            self._emit(SeriesWaiting(start, correlation_id))
            return                                # images are held until the run starts
        error = self._begin_series()
        if error is not None:                     # no usable description: nothing is current
            self._refuse(start, error)
            self.series, self._plan = None, None

    def _continues(self, start: SeriesStart) -> bool:
        """Whether ``start`` re-announces the current series; a resumed checkpoint of
        another scan set-up is dropped (and ``start`` then begins afresh)."""
        try:
            return self._continues_fn(self.processor, self.series, start,
                                      lambda: self._setup_for(start, None), self._resumed)
        except CheckpointError as exc:
            self.processor, self.series, self._resumed = None, None, False
            self._emit(CheckpointRefused(start, str(exc)))
            return False

    def _begin_series(self) -> SxdmError | None:
        """Set up the current series' scan; the error if it cannot be."""
        start, plan = self.series, self._plan
        try:
            setup = self._setup_for(start, plan.sxdm if plan is not None else None)
        except SxdmError as exc:
            return exc
        self.processor = ScanProcessor(setup, self._mask_fraction, self._d_ref)
        self._emit(SeriesStarted(start, self.processor, self.index, plan))
        return None

    def _refuse(self, start: SeriesStart, error: SxdmError) -> None:
        reason = refusal_reason(error)
        self._refused = (start, reason)
        self._emit(SeriesRefused(start, reason, str(error), error))

    def _on_image(self, image: ImageFrame) -> None:
        if self.series is None:
            self._reject_outside_series(image)
            return
        if not of_series(image, self.series):
            self._reject_frame(image, "unknown_series", f"image {image.image_id} belongs to "
                               f"series {_named(image.series_id, image.series_unique_id)}, the "
                               f"current series is "
                               f"{_named(self.series.series_id, self.series.series_unique_id)}")
            return
        if self.processor is None:                # waiting for the run's description
            for lost in self._held.hold(image):
                self._reject_undescribed(lost, f"image {lost.image_id} pushed out of the "
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
        if self._refused is not None and of_series(image, self._refused[0]):
            reason = self._refused[1]
            self._reject_frame(image, reason, f"image {image.image_id} of series "
                               f"{image.series_id}, whose start was refused ({reason})")
        elif of_series(image, self._last_ended):
            self._reject_frame(image, "image_after_end", f"image {image.image_id} of series "
                               f"{image.series_id} arrived after the series' end")
        else:
            self._reject_frame(image, "image_before_start", f"image {image.image_id} of series "
                               f"{image.series_id} arrived before any series start")

    def _add(self, image: ImageFrame, positions) -> None:
        p = self.processor
        if positions is None and self._plan is not None:
            self._emit(PlacedByIndex(image.image_id, self._plan.run_uid))
        rejected_before = dict(p.counters.rejected)
        if p.add(image.image_id, image.data, monitor=image.monitor, positions=positions):
            self._emit(FrameAccepted(image.image_id, image.received_s))
        else:
            reason = next((r for r, n in p.counters.rejected.items()
                           if n > rejected_before.get(r, 0)), "error")
            self._emit(FrameRejected(image.image_id, reason, f"image {image.image_id} refused "
                                     f"by the scan ({reason})", by_scan=True))
        if p.angles_done > self._angles_written:
            self._angles_written = p.angles_done
            self._emit(AngleDone(self.series, p, p.angles_done))

    def _reject_undescribed(self, image: ImageFrame, what: str) -> None:
        self._reject_frame(image, "no_scan_description", f"series {self.series.series_id}: "
                           f"{what}; no run with correlation id "
                           f"{_shown(correlation_id_of(self.series.sxdm))} described "
                           "its scan (was its start document missed?): rejected, never mixed "
                           "into another run")

    def _on_end(self, end: SeriesEnd) -> None:
        series = self.series
        if of_series(end, series):
            if self._end_pending is not None:
                self._emit(Quirk("duplicate_end", f"series {end.series_id} ended twice: accepted"))
            elif self.processor is None or (len(self._held) and not self._plan.ended):
                self._end_pending = self._now_s   # the run's description or positions late
            else:
                self._finish(ended=True)
        elif series is None and of_series(end, self._last_ended):
            self._emit(Quirk("duplicate_end", f"series {end.series_id} ended twice: accepted"))
        elif series is None and self._refused is not None and of_series(end, self._refused[0]):
            self._refused = None                  # the refused series is over: nothing to do
        elif series is not None and end.series_id == series.series_id:
            self._reject("unknown_series", f"end of series "
                         f"{_named(end.series_id, end.series_unique_id)} while series "
                         f"{_named(series.series_id, series.series_unique_id)} runs: not its "
                         "end, the series goes on")
        else:
            self._reject("unknown_series", f"end of series {end.series_id}, which is not current")

    # ---- the control system's plane -------------------------------------------------------
    def _on_plan_start(self, message: PlanStart) -> None:
        plan = self._plans.start(message)
        if self.series is None or correlation_id_of(self.series.sxdm) != message.correlation_id:
            return
        self._plan = plan
        if self.processor is None:
            error = self._begin_series()
            if error is not None:                 # the run's description is unusable
                series = self.series
                self._finish(ended=False)
                self._refuse(series, error)
                return
            for image in self._held.release():
                self._on_image(image)

    def _on_positions(self, message: PointPositions) -> None:
        plan = self._plans.add_positions(message)
        if plan is None:
            self._reject("unknown_run", f"positions of frame {message.frame_index} for "
                         f"correlation id {_shown(message.correlation_id)}, a run "
                         "that never started here")
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
        if self._end_pending is None:
            return
        caught_up = self.processor is not None and (not len(self._held) or self._plan.ended)
        if caught_up or self._now_s - self._end_pending > self.join_timeout_s:
            self._finish(ended=True)

    # ---- the end of a series --------------------------------------------------------------
    def _finish(self, ended: bool) -> None:
        self._end_pending = None
        if self.processor is None:                # never described: its held images go
            for image in self._held.release():
                self._reject_undescribed(image, f"image {image.image_id} held")
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
        self.processor, self.series = None, None
        if ended:
            self._last_ended = series
        self._emit(SeriesFinished(series, p, self.index, ended))

    def _reject(self, reason: str, detail: str) -> None:
        self._emit(MessageRejected(reason, detail))

    def _reject_frame(self, image: ImageFrame, reason: str, detail: str) -> None:
        self._emit(FrameRejected(image.image_id, reason, detail))
