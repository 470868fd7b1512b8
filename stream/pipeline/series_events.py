"""What the series state machine (:class:`~.series.SeriesMachine`) says happened, and the
counts it keeps of it.

Each message fed to the machine returns a list of these events, in the order they happened;
the live worker acts on them (snapshots, writes, the log) and tests assert them. Every event
that refuses something carries a ``reason``: the stable key it is counted under in
:class:`SeriesTally` (and in the processor's status). ``detail`` is one line for the log.

==========================  ==================================================================
event                       the driver
==========================  ==================================================================
:class:`SeriesStarted`      names the results file, reads the operando channels
:class:`SeriesWaiting`      logs: images are held until the run describes the scan
:class:`SeriesContinued`    logs: a start re-announced the current series
:class:`SeriesRefused`      logs (or stops the run: no histogram fits the memory budget)
:class:`CheckpointRefused`  logs: the resumed checkpoint was dropped unwritten
:class:`FrameAccepted`      counts the frame towards the next snapshot
:class:`FrameRejected`      logs the first of each reason
:class:`MessageRejected`    logs the first of each reason
:class:`PlacedByIndex`      logs the first
:class:`Quirk`              logs the first of each kind
:class:`AngleDone`          schedules an intermediate write
:class:`SeriesFinished`     the last snapshot (the final analysis), the last write
:class:`InternalError`      records a bug of ours (the machine goes on)
==========================  ==================================================================
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from sxdm_stream.messages import SeriesStart
from sxdm_stream.pipeline.join import PlanRun
from sxdm_stream.pipeline.scan_processor import ScanProcessor


@dataclass(frozen=True)
class SeriesStarted:
    """A series' scan is described: its frames now go into ``processor``."""

    series: SeriesStart
    processor: ScanProcessor
    index: int                     # of the series in this run, from 1
    plan: PlanRun | None = None    # the control system's run it is joined to


@dataclass(frozen=True)
class SeriesWaiting:
    """A series whose start carries only a correlation id: its images are held until the run
    with that id describes the scan."""

    series: SeriesStart
    correlation_id: str


@dataclass(frozen=True)
class SeriesContinued:
    """A start that re-announces the current series (a restarted detector, a stream v1
    resume): its frames go on into the same sums."""

    series: SeriesStart


@dataclass(frozen=True)
class SeriesRefused:
    """A series whose scan cannot be set up (no description, sizes that disagree, no
    histogram within the memory budget...): nothing is current; its images are refused under
    ``reason``."""

    series: SeriesStart
    reason: str
    detail: str
    error: Exception


@dataclass(frozen=True)
class CheckpointRefused:
    """The checkpoint resumed is of another scan set-up than ``series``, now starting: its
    sums are dropped, never written; ``series`` begins afresh."""

    series: SeriesStart
    detail: str
    reason: str = "checkpoint_refused"


@dataclass(frozen=True)
class FrameAccepted:
    """A frame is in the sums (``received_s``: when it arrived, perf_counter)."""

    image_id: int
    received_s: float = 0.0


@dataclass(frozen=True)
class FrameRejected:
    """A frame is not in the sums. ``by_scan``: refused by the scan itself (a duplicate, a
    position outside the grid...), counted (and logged) by its
    :class:`~.scan_processor.ScanProcessor`; otherwise refused by the machine (which series?
    which run?) and counted in :class:`SeriesTally`."""

    image_id: object
    reason: str
    detail: str
    by_scan: bool = False


@dataclass(frozen=True)
class MessageRejected:
    """A start, end or positions message that is refused (malformed ids, another series'
    end, positions of a run that never started here)."""

    reason: str
    detail: str


@dataclass(frozen=True)
class PlacedByIndex:
    """A frame of a joined series goes in without measured positions: placed by its index."""

    image_id: int
    run_uid: str
    reason: str = "placed_by_index"

    @property
    def detail(self) -> str:
        return f"image {self.image_id}: no positions from run {self.run_uid}; placed by its index"


@dataclass(frozen=True)
class Quirk:
    """Something accepted although not as specified (a duplicated end)."""

    kind: str
    detail: str

    @property
    def reason(self) -> str:
        return self.kind


@dataclass(frozen=True)
class AngleDone:
    """The acquisition moved past rocking angle ``angles_done - 1``."""

    series: SeriesStart
    processor: ScanProcessor
    angles_done: int


@dataclass(frozen=True)
class SeriesFinished:
    """A series is over: ``ended`` by its detector, or cut short (a new start, the run
    stopped). ``processor`` holds its sums, no frame is added to them any more."""

    series: SeriesStart
    processor: ScanProcessor
    index: int
    ended: bool

    @property
    def complete(self) -> bool:
        """Every frame of the scan is in the sums."""
        return self.processor.complete

    @property
    def missing(self) -> np.ndarray:
        """Frames not in the sums, per rocking angle."""
        return self.processor.missing_per_angle()

    @property
    def final(self) -> bool:
        """The scan is over: its final analysis is due (ended, or every frame in)."""
        return self.ended or self.complete


@dataclass(frozen=True)
class InternalError:
    """An exception of ours while handling ``what``: counted (``internal_error``); the
    machine goes on with the next message."""

    what: str
    error: Exception


@dataclass
class SeriesTally:
    """What the machine counted, outside the current scan's own counters: rejections (of
    messages, of frames it refused, and of every finished scan), quirks, frames placed by
    index, frames processed by the finished scans, series ended by their detector.

    Only :meth:`count` writes it (on the thread feeding the machine); a reader on another
    thread takes copies (``dict.copy`` of a Counter is atomic)."""

    rejected: Counter = field(default_factory=Counter)
    quirks: Counter = field(default_factory=Counter)
    placed_by_index: int = 0
    processed_before: int = 0
    ended: int = 0

    def count(self, event) -> None:
        if isinstance(event, FrameAccepted):     # nearly every event: nothing to count
            return
        if isinstance(event, FrameRejected):
            if not event.by_scan:
                self.rejected[event.reason] += 1
        elif isinstance(event, (MessageRejected, SeriesRefused, CheckpointRefused)):
            self.rejected[event.reason] += 1
        elif isinstance(event, InternalError):
            self.rejected["internal_error"] += 1
        elif isinstance(event, Quirk):
            self.quirks[event.kind] += 1
        elif isinstance(event, PlacedByIndex):
            self.placed_by_index += 1
        elif isinstance(event, SeriesFinished):
            self.processed_before += event.processor.counters.processed
            self.rejected.update(event.processor.counters.rejected)
            self.ended += int(event.ended)
