"""The series state machine alone: messages in, events out, no threads, no sockets, the clock
passed in. Each test feeds the messages of one situation a detector or a control system
produces and asserts the events, in order, and what was counted."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from sxdm_stream.core.accumulate import AccumulationSettings
from sxdm_stream.messages import (SXDM_KEY, ImageFrame, PlanEnd, PlanStart, PointPositions,
                                  SeriesEnd, SeriesStart)
from sxdm_stream.pipeline.scan_processor import ScanProcessor
from sxdm_stream.pipeline.series import SeriesMachine
from sxdm_stream.pipeline.series_events import (AngleDone, CheckpointRefused, FrameAccepted,
                                                FrameRejected, InternalError, MessageRejected,
                                                PlacedByIndex, Quirk, SeriesContinued,
                                                SeriesFinished, SeriesRefused, SeriesStarted,
                                                SeriesWaiting)
from sxdm_stream.runtime.settings import setup_for_series
from sxdm_stream.simulators.scenarios import default_scenario
from sxdm_stream.simulators.sender import frame_positions, series_start
from sxdm_stream.sinks.checkpoint import continues_series

#: no q histogram: these tests are about which frame goes where, not about q space
MOMENTS_ONLY = AccumulationSettings(histogram_bins=(0, 0, 0))


@pytest.fixture(scope="module")
def scenario():
    """A 2x2 map, 3 rocking angles: 12 frames."""
    return default_scenario(shape=(2, 2), n_angles=3, rocking_half_range_deg=0.2)


@pytest.fixture(scope="module")
def blank(scenario):
    """One detector frame (the counts do not matter here)."""
    return np.zeros(scenario.geometry.detector.shape, np.uint32)


def setup_for(start, plan_block):
    return setup_for_series(start, MOMENTS_ONLY, None, plan_block)


def machine(**kwargs) -> SeriesMachine:
    return SeriesMachine(setup_for, continues_series, **{"hold_frames": 8, **kwargs})


def start_of(scenario, series_id: int = 1, unique: str | None = "u1") -> SeriesStart:
    """A start describing ``scenario``'s scan (``unique`` None: stream v1)."""
    start = series_start(scenario, series_id, unique or "", "c")
    return dataclasses.replace(start, series_unique_id=unique)


def image(blank, index: int, series_id: int = 1, unique: str | None = "u1") -> ImageFrame:
    return ImageFrame(series_id, index, blank, unique, received_s=float(index))


def kinds(events) -> list[str]:
    return [type(e).__name__ for e in events]


def feed_all(m: SeriesMachine, messages, now_s: float = 0.0) -> list:
    return [e for message in messages for e in m.feed(message, now_s)]


# ---- one series, as the detector sends it ------------------------------------------------------
def test_a_clean_series_starts_accepts_every_frame_and_finishes_complete(scenario, blank):
    m = machine()
    n = scenario.scan.n_frames
    (started,) = m.feed(start_of(scenario), 0.0)
    assert isinstance(started, SeriesStarted) and started.index == 1 and started.plan is None
    assert m.processor is started.processor and m.series.series_unique_id == "u1"
    events = feed_all(m, [image(blank, k) for k in range(n)])
    # a rocking angle is done when the first frame of the next one is in
    n_points = scenario.scan.n_points
    expected = []
    for k in range(n):
        expected.append("FrameAccepted")
        if k and k % n_points == 0:
            expected.append("AngleDone")
    assert kinds(events) == expected
    assert [e.angles_done for e in events if isinstance(e, AngleDone)] == [1, 2]
    assert [e.received_s for e in events if isinstance(e, FrameAccepted)] == list(range(n))
    (finished,) = m.feed(SeriesEnd(1, "u1"), 0.0)
    assert isinstance(finished, SeriesFinished)
    assert finished.ended and finished.complete and finished.final and finished.index == 1
    assert finished.processor is started.processor
    np.testing.assert_array_equal(finished.missing, [0, 0, 0])
    assert m.processor is None and m.series is None
    assert m.tally.processed_before == n and not m.tally.rejected and m.tally.ended == 1


def test_an_end_with_another_unique_id_neither_ends_nor_enters_the_series(scenario, blank):
    m = machine()
    m.feed(start_of(scenario), 0.0)
    feed_all(m, [image(blank, k) for k in range(5)])
    (rejected,) = m.feed(SeriesEnd(1, "u2"), 0.0)
    assert isinstance(rejected, MessageRejected) and rejected.reason == "unknown_series"
    assert "not its end" in rejected.detail
    (other,) = m.feed(image(blank, 5, unique="u2"), 0.0)
    assert isinstance(other, FrameRejected) and other.reason == "unknown_series"
    assert not other.by_scan
    assert m.series.series_unique_id == "u1"         # the series goes on
    events = feed_all(m, [image(blank, k) for k in range(5, scenario.scan.n_frames)])
    assert kinds(events).count("FrameAccepted") == scenario.scan.n_frames - 5
    (finished,) = m.feed(SeriesEnd(1, "u1"), 0.0)
    assert finished.complete
    assert m.tally.rejected == {"unknown_series": 2}


def test_a_duplicated_end_is_a_quirk(scenario, blank):
    m = machine()
    m.feed(start_of(scenario), 0.0)
    feed_all(m, [image(blank, k) for k in range(scenario.scan.n_frames)])
    assert kinds(m.feed(SeriesEnd(1, "u1"), 0.0)) == ["SeriesFinished"]
    (quirk,) = m.feed(SeriesEnd(1, "u1"), 0.0)
    assert isinstance(quirk, Quirk) and quirk.kind == "duplicate_end"
    assert m.tally.quirks == {"duplicate_end": 1} and not m.tally.rejected
    assert m.tally.ended == 1


def test_a_series_cut_short_by_the_next_start_finishes_incomplete(scenario, blank):
    m = machine()
    m.feed(start_of(scenario), 0.0)
    feed_all(m, [image(blank, k) for k in range(3)])
    events = m.feed(start_of(scenario, 2, "u2"), 0.0)
    assert kinds(events) == ["SeriesFinished", "SeriesStarted"]
    finished, started = events
    assert not finished.ended and not finished.complete and not finished.final
    np.testing.assert_array_equal(finished.missing, [1, 4, 4])
    assert started.index == 2 and started.series.series_id == 2
    assert m.tally.ended == 0 and m.tally.processed_before == 3


# ---- images outside a series --------------------------------------------------------------------
def test_images_before_the_start_after_the_end_and_of_a_refused_series(scenario, blank):
    m = machine()
    (before,) = m.feed(image(blank, 0), 0.0)
    assert isinstance(before, FrameRejected) and before.reason == "image_before_start"
    m.feed(start_of(scenario), 0.0)
    feed_all(m, [image(blank, k) for k in range(scenario.scan.n_frames)])
    m.feed(SeriesEnd(1, "u1"), 0.0)
    (after,) = m.feed(image(blank, 3), 0.0)
    assert isinstance(after, FrameRejected) and after.reason == "image_after_end"

    # a start that announces more images than its scan has: refused, and so are its images
    wrong = dataclasses.replace(start_of(scenario, 2, "u2"), number_of_images=99)
    (refused,) = m.feed(wrong, 0.0)
    assert isinstance(refused, SeriesRefused) and refused.reason == "frame_count_mismatch"
    assert m.series is None and m.processor is None
    (of_refused,) = m.feed(image(blank, 0, 2, "u2"), 0.0)
    assert of_refused.reason == "frame_count_mismatch"
    assert m.feed(SeriesEnd(2, "u2"), 0.0) == []       # the refused series is over
    (later,) = m.feed(image(blank, 1, 2, "u2"), 0.0)
    assert later.reason == "image_before_start"

    # a start with neither a scan description nor a correlation id
    bare = SeriesStart(3, "u3", image_shape=tuple(scenario.geometry.detector.shape))
    (undescribed,) = m.feed(bare, 0.0)
    assert undescribed.reason == "no_scan_description"
    assert m.feed(image(blank, 0, 3, "u3"), 0.0)[0].reason == "no_scan_description"
    assert m.tally.rejected == {"image_before_start": 2, "image_after_end": 1,
                                "frame_count_mismatch": 2, "no_scan_description": 2}


def test_frames_the_scan_refuses_are_told_and_counted_by_the_scan(scenario, blank):
    m = machine()
    m.feed(start_of(scenario), 0.0)
    m.feed(image(blank, 0), 0.0)
    (duplicate,) = m.feed(image(blank, 0), 0.0)
    (beyond,) = m.feed(image(blank, scenario.scan.n_frames), 0.0)
    assert (duplicate.reason, duplicate.by_scan) == ("duplicate_image", True)
    assert beyond.by_scan and beyond.reason != "duplicate_image"
    assert not m.tally.rejected                      # the scan counts them, not the tally
    assert m.processor.counters.rejected["duplicate_image"] == 1
    (finished,) = m.finish(ended=False)
    assert m.tally.rejected == finished.processor.counters.rejected


def test_an_exception_of_ours_is_an_event_and_the_machine_goes_on(scenario, blank):
    def broken(start, block):
        raise RuntimeError("a bug")

    m = SeriesMachine(broken, continues_series)
    (error,) = m.feed(start_of(scenario), 0.0)
    assert isinstance(error, InternalError) and isinstance(error.error, RuntimeError)
    assert m.tally.rejected == {"internal_error": 1}
    assert m.feed("not a message", 0.0) == []


# ---- two planes: the detector's frames joined to the control system's run ----------------------
def detector_start(scenario, correlation_id: str = "run-a") -> SeriesStart:
    det = scenario.geometry.detector
    return SeriesStart(1, "u1", image_shape=tuple(det.shape),
                       user_data={SXDM_KEY: {"version": 1, "correlation_id": correlation_id}})


def plan_start(scenario, correlation_id: str = "run-a") -> PlanStart:
    block = {"version": 1, "scan": scenario.scan.describe(),
             "geometry": scenario.geometry.describe(), "correlation_id": correlation_id}
    return PlanStart(correlation_id, f"uid-{correlation_id}", block)


def positions(scenario, index: int, correlation_id: str = "run-a") -> PointPositions:
    return PointPositions(correlation_id, index, frame_positions(scenario, index))


def test_the_join_holds_frames_until_the_late_run_and_its_positions(scenario, blank):
    m = machine()
    n = scenario.scan.n_frames
    (waiting,) = m.feed(detector_start(scenario), 0.0)
    assert isinstance(waiting, SeriesWaiting) and waiting.correlation_id == "run-a"
    assert feed_all(m, [image(blank, k) for k in range(4)]) == []    # held: no description yet
    assert m.held == 4 and m.processor is None

    # the run opens: the series is set up, its frames now wait for their positions
    (started,) = m.feed(plan_start(scenario), 0.0)
    assert isinstance(started, SeriesStarted) and started.plan.run_uid == "uid-run-a"
    assert m.held == 4
    events = feed_all(m, [positions(scenario, k) for k in range(3)])
    assert kinds(events) == ["FrameAccepted"] * 3 and [e.image_id for e in events] == [0, 1, 2]
    # positions before their frame: the frame goes in at once
    m.feed(positions(scenario, 4), 0.0)
    assert kinds(m.feed(image(blank, 4), 0.0)) == ["FrameAccepted", "AngleDone"]
    assert m.held == 1                                # frame 3 still waits

    # the detector ends while the run still goes on: the end waits for the run
    assert m.feed(SeriesEnd(1, "u1"), 5.0) == []
    assert m.tick(6.0) == [] and m.series is not None
    assert m.feed(PlanEnd("run-a", "success"), 7.0) == []   # frame 3's positions never came
    events = m.tick(7.0)
    assert kinds(events) == ["PlacedByIndex", "FrameAccepted", "SeriesFinished"]
    assert events[0].image_id == 3 and events[0].run_uid == "uid-run-a"
    finished = events[-1]
    assert finished.ended and not finished.complete
    np.testing.assert_array_equal(finished.missing, [0, 3, 4])
    assert finished.processor.counters.processed == 5
    assert m.tally.placed_by_index == 1 and m.tally.processed_before == 5
    assert n == 12


def test_a_series_ended_while_its_run_is_silent_finishes_after_the_join_timeout(scenario, blank):
    m = machine(join_timeout_s=10.0)
    m.feed(detector_start(scenario), 0.0)
    m.feed(plan_start(scenario), 0.0)
    m.feed(image(blank, 0), 0.0)                     # waits for positions that never come
    assert m.feed(SeriesEnd(1, "u1"), 100.0) == []
    (quirk,) = m.feed(SeriesEnd(1, "u1"), 101.0)      # the end, sent twice while waiting
    assert quirk.kind == "duplicate_end"
    assert m.tick(110.0) == []                        # not yet: the clock is the caller's
    assert kinds(m.tick(110.5)) == ["PlacedByIndex", "FrameAccepted", "SeriesFinished"]


def test_frames_of_a_run_that_never_described_the_scan_are_rejected(scenario, blank):
    m = machine(hold_frames=2)
    m.feed(detector_start(scenario, "lost"), 0.0)
    (pushed_out,) = feed_all(m, [image(blank, k) for k in range(3)])
    assert pushed_out.reason == "no_scan_description" and pushed_out.image_id == 0
    assert "lost" in pushed_out.detail
    (unknown,) = m.feed(positions(scenario, 0, "other"), 0.0)
    assert isinstance(unknown, MessageRejected) and unknown.reason == "unknown_run"
    assert m.feed(SeriesEnd(1, "u1"), 0.0) == []      # waits for the description...
    events = m.tick(60.0)                             # ...in vain: the held frames go
    assert kinds(events) == ["FrameRejected", "FrameRejected"]
    assert {e.reason for e in events} == {"no_scan_description"}
    assert m.series is None
    assert m.feed(image(blank, 3), 0.0)[0].reason == "no_scan_description"
    assert m.tally.rejected == {"no_scan_description": 4, "unknown_run": 1}


# ---- resume from a checkpoint --------------------------------------------------------------------
def half_scan(scenario, blank, start: SeriesStart) -> ScanProcessor:
    processor = ScanProcessor(setup_for(start, None))
    for k in range(scenario.scan.n_frames // 2):
        assert processor.add(k, blank)
    return processor


def test_a_stream_v1_start_continues_the_resumed_series(scenario, blank):
    v1 = start_of(scenario, 4, None)
    m = machine()
    m.resume(half_scan(scenario, blank, v1), 4, None)
    (continued,) = m.feed(v1, 0.0)
    assert isinstance(continued, SeriesContinued) and continued.series is v1
    events = feed_all(m, [image(blank, k, 4, None) for k in range(scenario.scan.n_frames)])
    half = scenario.scan.n_frames // 2
    rejected = [e for e in events if isinstance(e, FrameRejected)]
    assert [e.image_id for e in rejected] == list(range(half))
    assert {(e.reason, e.by_scan) for e in rejected} == {("duplicate_image", True)}
    assert kinds(events).count("FrameAccepted") == half
    (finished,) = m.feed(SeriesEnd(4, None), 0.0)
    assert finished.complete and finished.index == 1


def test_a_resumed_checkpoint_of_another_scan_is_dropped(scenario, blank):
    other = default_scenario(shape=(3, 2), n_angles=2, rocking_half_range_deg=0.2)
    m = machine()
    m.resume(half_scan(scenario, blank, start_of(scenario, 4, None)), 4, None)
    events = m.feed(start_of(other, 4, None), 0.0)
    assert kinds(events) == ["CheckpointRefused", "SeriesStarted"]
    refused, started = events
    assert isinstance(refused, CheckpointRefused) and "another scan" in refused.detail
    assert started.index == 2 and started.processor.setup.scan == other.scan
    assert m.tally.rejected == {"checkpoint_refused": 1}
    assert m.tally.processed_before == 0              # the checkpoint's frames went nowhere


def test_every_event_is_one_of_the_documented_kinds(scenario, blank):
    documented = {SeriesStarted, SeriesWaiting, SeriesContinued, SeriesRefused,
                  CheckpointRefused, FrameAccepted, FrameRejected, MessageRejected,
                  PlacedByIndex, Quirk, AngleDone, SeriesFinished, InternalError}
    m = machine()
    events = m.feed(start_of(scenario), 0.0) + feed_all(
        m, [image(blank, k) for k in range(scenario.scan.n_frames)]) + m.feed(
        SeriesEnd(1, "u1"), 0.0)
    assert {type(e) for e in events} <= documented
