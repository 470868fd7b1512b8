"""An operando series under bluesky: the electrochemistry read before each map reaches the
processor's record, and the plan stops on the alarm the processor raises (a new particle)."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("bluesky")

from bluesky import RunEngine  # noqa: E402
from ophyd import Signal  # noqa: E402

from sxdm_stream.analysis.alarms import AlarmSettings  # noqa: E402
from sxdm_stream.config import Config  # noqa: E402
from sxdm_stream.plugins.bluesky import (LiveFeedback, SxdmCallback, sim_sxdm_devices,  # noqa: E402
                                         sxdm_operando_maps)
from sxdm_stream.runtime.processor import LiveProcessor, LiveSettings  # noqa: E402
from sxdm_stream.simulators.sample import Particle  # noqa: E402
from sxdm_stream.simulators.scenarios import default_scenario  # noqa: E402

SHAPE, STEP = (10, 14), 0.2
LEFT = Particle(center_um=(0.9, 0.8), semi_axes_um=(0.6, 0.45), strain_amplitude=1e-4,
                n_domains=1, max_tilt_deg=0.01, counts=2e5, seed=1)
RIGHT = Particle(center_um=(0.9, 1.9), semi_axes_um=(0.6, 0.45), strain_amplitude=1e-4,
                 n_domains=1, max_tilt_deg=0.01, counts=2e5, seed=2)


def world(*particles):
    return default_scenario(shape=SHAPE, step_um=STEP, n_angles=7, particles=particles)


@pytest.fixture
def beamline():
    loop = asyncio.new_event_loop()
    RE = RunEngine({}, loop=loop, context_managers=[], call_returns_result=True)
    config = Config(live=LiveSettings(checkpoints=False),
                    alarms=AlarmSettings(particle_appears=True, fraction_crossings=()))
    live = LiveProcessor(None, settings=config).start()
    first = world(LEFT)
    callback = SxdmCallback(live, pixel_mask=first.geometry.detector.mask)
    RE.subscribe(callback)
    feedback = LiveFeedback(live, callback, timeout=60)
    dev = sim_sxdm_devices(first)
    yield RE, live, feedback, dev, first
    live.stop()
    loop.call_soon_threadsafe(loop.stop)
    RE._th.join(10)
    loop.close()


def test_the_series_stops_on_the_alarm_of_a_new_particle(beamline):
    RE, live, feedback, dev, first = beamline
    worlds = [first, first, world(LEFT, RIGHT), world(LEFT, RIGHT)]
    voltage = Signal(name="voltage", value=3.6)

    maps_done = []

    def next_world(name, doc):
        """Between maps the sample evolves: the detector sees the next world, the cell charges."""
        if name == "stop":
            maps_done.append(doc["run_start"])
            dev.det.scenario = worlds[min(len(maps_done), len(worlds) - 1)]
            voltage.put(voltage.get() + 0.1)

    RE.subscribe(next_world)
    scan = first.scan
    (r0, r1), (c0, c1) = scan.extents_um
    result = RE(sxdm_operando_maps(
        [dev.det], dev.piy, r0, r1, scan.shape[0], dev.pix, c0, c1, scan.shape[1], dev.eta,
        scan.rocking_angles, geometry=first.geometry, feedback=feedback, max_maps=4,
        electrochemistry={"voltage": (voltage, "V")}, stop_on=("appeared",),
        fixed_angles=scan.fixed_angles))
    uids, stopped = result.plan_result
    assert result.exit_status == "success"
    assert len(uids) == 3 and stopped == "appeared"            # the third map found it
    assert feedback.alarms.get() == 1 and feedback.alarm_rules.get() == "appeared"
    assert feedback.n_particles.get() == 2
    record = live.last_record
    assert record.series_unique_id == uids[-1]
    assert record.channels["voltage"] == pytest.approx((3.8, "V"))
    new = [e for e in record.events if e["kind"] == "appear"]
    assert len(new) == 1 and feedback.alarm_particles.get() == str(new[0]["particle_ids"][0])
    # the particle that stayed kept its id through the three maps
    ids = sorted(int(i) for i in record.particles["particle_id"])
    assert ids[0] == 1 and len(ids) == 2
