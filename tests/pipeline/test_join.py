"""Two planes joined: a detector stream that knows nothing of the scan, and the control
system's run (description, measured positions) with the same correlation id.

The messages are submitted in the orders a real beamline produces (detector armed before the
run opens, frames overtaking their positions, positions overtaking frames, a start document
missed), and the maps are compared with the in-process reference that had the positions."""

from __future__ import annotations


import numpy as np
import pytest
from conftest import detector_start, plan_start, wait_until

from sxdm_stream.config import Config
from sxdm_stream.core.accumulate import ScanSetup
from sxdm_stream.messages import ImageFrame, PlanEnd, PlanStart, PointPositions, SeriesEnd
from sxdm_stream.pipeline.join import HeldFrames, PlanBook
from sxdm_stream.pipeline.scan_processor import ScanProcessor
from sxdm_stream.runtime.processor import LiveProcessor, LiveSettings
from sxdm_stream.simulators.scenarios import default_scenario
from sxdm_stream.simulators.sender import frame_positions


@pytest.fixture(scope="module")
def scenario():
    return default_scenario(shape=(5, 5), n_angles=4)


def measured_order(scenario):
    """Frame index -> the frame index whose positions it really has: the raster was run with
    its rows reversed, so placement by index alone would put every frame on the wrong row."""
    scan = scenario.scan
    rows, cols = scan.shape
    order = []
    for k in range(scan.n_frames):
        angle, point = scan.locate(k)
        row, col = divmod(point, cols)
        order.append(angle * scan.n_points + (rows - 1 - row) * cols + col)
    return order


def frames_and_positions(scenario, correlation_id, series_id=1):
    """(image, positions message) per frame: frame k shows the sample at the positions of
    ``measured_order[k]``."""
    order = measured_order(scenario)
    sim = scenario.simulator
    pairs = []
    for k, source in enumerate(order):
        angle, point = scenario.scan.locate(source)
        image = ImageFrame(series_id=series_id, image_id=k, data=sim.frame(angle, point),
                           series_unique_id=f"u{series_id}")
        pairs.append((image, PointPositions(correlation_id, k, frame_positions(scenario, source))))
    return pairs


@pytest.fixture(scope="module")
def reference(scenario):
    """In-process: every frame with its measured positions."""
    p = ScanProcessor(ScanSetup(scenario.geometry, scenario.scan))
    for image, pos in frames_and_positions(scenario, "ref"):
        assert p.add(image.image_id, image.data, positions=pos.positions)
    return p


def run_live(messages, settings=None):
    live = LiveProcessor(None, settings=settings or Config(live=LiveSettings(checkpoints=False)),
                         max_series=1)
    live.start()
    try:
        for m in messages:
            live.submit(m)
        assert live.wait(30), live.status()
    finally:
        live.stop()
    return live


def assert_same_sums(live, reference):
    (result,) = live.results
    assert result.complete
    status = live.status()
    assert status.processed == reference.setup.scan.n_frames, status
    assert not status.rejected and status.placed_by_index == 0, status
    np.testing.assert_array_equal(result.maps.intensity, reference.maps().intensity)
    np.testing.assert_allclose(result.maps.com, reference.maps().com, rtol=1e-12, equal_nan=True)


def test_detector_armed_before_the_run_and_frames_before_their_positions(scenario, reference):
    """The real order: series start, then the run; every frame overtakes its positions."""
    pairs = frames_and_positions(scenario, "c1")
    messages = [detector_start(scenario, "c1"), plan_start(scenario, "c1")]
    messages += [image for image, _ in pairs] + [pos for _, pos in pairs]
    messages += [SeriesEnd(1, "u1"), PlanEnd("c1", "success")]
    assert_same_sums(run_live(messages), reference)


def test_frames_before_the_run_describes_the_scan(scenario, reference):
    """Frames arrive before the run's start: they wait for its description (and positions)."""
    pairs = frames_and_positions(scenario, "c2")
    messages = [detector_start(scenario, "c2")] + [image for image, _ in pairs[:30]]
    messages += [plan_start(scenario, "c2")] + [pos for _, pos in pairs]
    messages += [image for image, _ in pairs[30:]] + [PlanEnd("c2"), SeriesEnd(1, "u1")]
    assert_same_sums(run_live(messages), reference)


def test_positions_before_frames_and_detector_end_before_run_end(scenario, reference):
    pairs = frames_and_positions(scenario, "c3")
    messages = [plan_start(scenario, "c3"), detector_start(scenario, "c3")]
    for image, pos in pairs:                       # positions a few frames ahead, then behind
        messages += [pos, image] if image.image_id % 7 else [image, pos]
    messages += [SeriesEnd(1, "u1"), PlanEnd("c3")]
    assert_same_sums(run_live(messages), reference)


def test_positions_that_never_come_place_frames_by_index_and_say_so(scenario, caplog):
    pairs = frames_and_positions(scenario, "c4")
    messages = [plan_start(scenario, "c4"), detector_start(scenario, "c4")]
    messages += [image for image, _ in pairs] + [pos for _, pos in pairs[:50]]
    messages += [PlanEnd("c4", "abort"), SeriesEnd(1, "u1")]
    live = run_live(messages)
    status = live.status()
    assert status.processed == scenario.scan.n_frames
    assert status.placed_by_index == scenario.scan.n_frames - 50
    assert "placed by its index" in caplog.text


def test_missed_run_start_rejects_that_series_and_keeps_the_next(scenario, reference, caplog):
    """The run of the first series was never announced (a late joiner): its frames are
    rejected with a clear reason after the join timeout, never mixed into the next series."""
    lost = frames_and_positions(scenario, "lost", series_id=1)
    kept = frames_and_positions(scenario, "c5", series_id=2)
    messages = [detector_start(scenario, "lost", 1)] + [image for image, _ in lost[:20]]
    messages += [SeriesEnd(1, "u1")]
    messages += [detector_start(scenario, "c5", 2), plan_start(scenario, "c5")]
    messages += [m for pair in kept for m in pair] + [PlanEnd("c5"), SeriesEnd(2, "u2")]
    settings = Config(live=LiveSettings(checkpoints=False, join_timeout_s=0.2))
    live = LiveProcessor(None, settings=settings, max_series=1).start()
    try:
        for m in messages[:22]:
            live.submit(m)
        # the detector ended series 1; after the timeout it is given up
        wait_until(lambda: live.status().rejected.get("no_scan_description", 0) >= 20, 10)
        for m in messages[22:]:
            live.submit(m)
        assert live.wait(30)
    finally:
        live.stop()
    status = live.status()
    assert status.rejected == {"no_scan_description": 20}
    assert "correlation id lost" in caplog.text and "start document missed" in caplog.text
    (result,) = [r for r in live.results if r.complete]
    np.testing.assert_array_equal(result.maps.intensity, reference.maps().intensity)


def test_positions_for_an_unknown_run_are_counted(scenario):
    live = LiveProcessor(None, settings=Config(live=LiveSettings(checkpoints=False))).start()
    try:
        live.submit(PointPositions("nobody", 0, {"piy": 0.0, "pix": 0.0}))
        live.submit(PointPositions("nobody", 1, {"piy": 0.0, "pix": 0.0}))
        wait_until(lambda: live.status().rejected.get("unknown_run", 0) >= 2, 10)
    finally:
        live.stop()


def test_held_frames_are_bounded():
    held = HeldFrames(limit=3)
    images = [ImageFrame(1, k, np.zeros((2, 2))) for k in range(5)]
    pushed = [out for image in images for out in held.hold(image)]
    assert [f.image_id for f in pushed] == [0, 1] and len(held) == 3
    assert held.claim(3).image_id == 3 and held.claim(3) is None
    assert [f.image_id for f in held.release()] == [2, 4] and len(held) == 0


def test_plan_book_forgets_the_oldest_runs():
    book = PlanBook(max_plans=2)
    for cid in ("a", "b", "c"):
        book.start(PlanStart(cid, cid, {}))
    assert "a" not in book and "b" in book and "c" in book
    assert book.add_positions(PointPositions("a", 0, {})) is None
    assert book.add_positions(PointPositions("c", 4, {"x": 1.0})).positions == {4: {"x": 1.0}}
