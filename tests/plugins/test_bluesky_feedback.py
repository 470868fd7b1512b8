"""Live results as an ophyd device, and a plan that changes course on them."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

pytest.importorskip("bluesky")

from bluesky import RunEngine  # noqa: E402

from sxdm_stream.config import Config  # noqa: E402
from sxdm_stream.plugins.bluesky import (LiveFeedback, SxdmCallback, sim_sxdm_devices,  # noqa: E402
                                         sxdm_map_until_peak, widen_rocking_range)
from sxdm_stream.runtime.processor import LiveProcessor, LiveSettings  # noqa: E402
from sxdm_stream.simulators.scenarios import default_scenario  # noqa: E402


@pytest.fixture(scope="module")
def wide_scenario():
    """The simulated world: a 6x6 map whose simulator knows a wide, fine rocking range
    (61 angles, +-0.6 deg around the Bragg angle); plans scan parts of it."""
    return default_scenario(shape=(6, 6), n_angles=61, rocking_half_range_deg=0.6)


@pytest.fixture
def beamline(wide_scenario):
    """RunEngine, live processor, callback and feedback device; all stopped afterwards."""
    loop = asyncio.new_event_loop()
    RE = RunEngine({}, loop=loop, context_managers=[])
    live = LiveProcessor(None, settings=Config(live=LiveSettings(checkpoints=False))).start()
    callback = SxdmCallback(live, pixel_mask=wide_scenario.geometry.detector.mask)
    RE.subscribe(callback)
    feedback = LiveFeedback(live, callback, tail_fraction=0.1, timeout=60)
    yield RE, live, feedback, sim_sxdm_devices(wide_scenario)
    live.stop()
    loop.call_soon_threadsafe(loop.stop)
    RE._th.join(10)
    loop.close()


def run_adaptive(beamline, scenario, half_steps):
    RE, live, feedback, dev = beamline
    scan = scenario.scan
    mid = scan.n_angles // 2
    angles = scan.rocking_angles[mid - half_steps: mid + half_steps + 1]
    (r0, r1), (c0, c1) = scan.extents_um
    seen = []
    uids = RE(sxdm_map_until_peak([dev.det], dev.piy, r0, r1, scan.shape[0], dev.pix, c0, c1,
                                  scan.shape[1], dev.eta, angles, geometry=scenario.geometry,
                                  feedback=feedback, fixed_angles=scan.fixed_angles, grow=3.0,
                                  max_maps=3, md={"purpose": "test"}),
              lambda name, doc: seen.append(doc) if name == "start" else None)
    return uids, seen, live, feedback


def test_narrow_rocking_range_is_widened_until_the_peak_is_inside(beamline, wide_scenario):
    uids, starts, live, feedback = run_adaptive(beamline, wide_scenario, half_steps=5)
    assert len(starts) == 2, [len(s["sxdm"]["scan"]["rocking_angles"]) for s in starts]
    first, second = (s["sxdm"]["scan"]["rocking_angles"] for s in starts)
    assert len(first) == 11 and len(second) == 31
    np.testing.assert_allclose(second[15], first[5])            # widened around the middle
    assert feedback.peak_found.get() is True
    assert [r.series_unique_id for r in live.results] == [s["uid"] for s in starts]
    bragg = wide_scenario.scan.rocking_angles[30]
    assert abs(feedback.peak_position.get() - bragg) < 0.05
    assert np.isfinite(feedback.mean_d.get()) and abs(feedback.mean_d.get() - 4.733) < 0.01
    assert feedback.strain_spread.get() > 0 and feedback.max_tilt.get() > 0


def test_wide_enough_rocking_range_is_kept(beamline, wide_scenario):
    uids, starts, live, feedback = run_adaptive(beamline, wide_scenario, half_steps=15)
    assert len(starts) == 1
    assert feedback.peak_found.get() is True


def test_widen_rocking_range_keeps_the_step():
    wider = widen_rocking_range([1.0, 1.1, 1.2], 3.0)
    np.testing.assert_allclose(wider, [0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4])
