"""The bluesky plugin: a real RunEngine runs sxdm_map on simulated ophyd devices, and the maps
recovered through the callback match the simulation's ground truth."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("bluesky")
pytest.importorskip("ophyd")

import bluesky.plans as bp  # noqa: E402
from bluesky import RunEngine  # noqa: E402

from sxdm_stream.config import Config  # noqa: E402
from sxdm_stream.plugins.bluesky import (SxdmCallback, scan_from_start,  # noqa: E402
                                         sim_sxdm_devices, sxdm_block, sxdm_map)
from sxdm_stream.runtime.processor import LiveProcessor, LiveSettings  # noqa: E402
from sxdm_stream.simulators.scenarios import default_scenario  # noqa: E402
from sxdm_stream.simulators.validation import accuracy_report  # noqa: E402


@pytest.fixture
def run_engine():
    """A RunEngine on its own event loop, whose thread is stopped at the end of the test."""
    loop = asyncio.new_event_loop()
    RE = RunEngine({}, loop=loop, context_managers=[])
    yield RE
    loop.call_soon_threadsafe(loop.stop)
    RE._th.join(10)
    loop.close()


@pytest.fixture
def live():
    processor = LiveProcessor(None, settings=Config(live=LiveSettings(checkpoints=False)),
                              max_series=1).start()
    yield processor
    processor.stop()


def run_map(RE, devices, scenario, **kwargs):
    scan = scenario.scan
    (r0, r1), (c0, c1) = scan.extents_um
    return RE(sxdm_map([devices.det], devices.piy, r0, r1, scan.shape[0], devices.pix, c0, c1,
                       scan.shape[1], devices.eta, scan.rocking_angles, geometry=scenario.geometry,
                       fixed_angles=scan.fixed_angles, **kwargs))


def finished_maps(live):
    assert live.wait(60), f"the processor did not finish the run: {live.status()}"
    (result,) = live.results
    assert result.complete
    return result.maps


def assert_accurate(maps, scenario):
    report = accuracy_report(maps, scenario.simulator.truth())
    assert report["pixels"] > 10
    assert report["strain_rms_error"] <= 2 * report["strain_limit"], report
    assert report["tilt_rms_error_deg"] <= 2 * report["tilt_limit_deg"], report


def test_sxdm_map_in_process_matches_truth(run_engine, live, small_scenario):
    devices = sim_sxdm_devices(small_scenario)
    callback = SxdmCallback(live, pixel_mask=small_scenario.geometry.detector.mask)
    docs = []
    run_engine.subscribe(callback)
    run_engine.subscribe(lambda name, doc: docs.append((name, doc)) if name == "start" else None)
    (uid,) = run_map(run_engine, devices, small_scenario)
    maps = finished_maps(live)
    status = live.status()
    assert status.processed == small_scenario.scan.n_frames and not status.rejected
    assert not callback.rejected
    start = docs[0][1]
    assert start["uid"] == uid and start["plan_name"] == "sxdm_map"
    assert list(start["shape"]) == [15, 12, 12] and list(start["motors"]) == ["eta", "piy", "pix"]
    described = scan_from_start(start)
    assert described.shape == (12, 12) and described.motors == ("piy", "pix")
    assert described.rocking_angles == small_scenario.scan.rocking_angles
    assert start["sxdm"]["correlation_id"]
    assert_accurate(maps, small_scenario)


def test_plain_grid_scan_with_sxdm_metadata(run_engine, live, small_scenario):
    """A user's own 3-axis grid_scan (eta outermost, snaked) plus md={"sxdm": ...} works too:
    the scan comes from the standard keys, snaked frames are placed by measured positions."""
    scan = small_scenario.scan
    devices = sim_sxdm_devices(small_scenario)
    run_engine.subscribe(SxdmCallback(live, pixel_mask=small_scenario.geometry.detector.mask))
    (r0, r1), (c0, c1) = scan.extents_um
    md = {"sxdm": sxdm_block(small_scenario.geometry, fixed_angles=scan.fixed_angles)}
    run_engine(bp.grid_scan([devices.det], devices.eta, scan.rocking_angles[0],
                            scan.rocking_angles[-1], scan.n_angles, devices.piy, r0, r1,
                            scan.shape[0], devices.pix, c0, c1, scan.shape[1], snake_axes=True,
                            md=md))
    maps = finished_maps(live)
    assert live.status().processed == scan.n_frames
    assert_accurate(maps, small_scenario)


def test_frames_by_reference_give_the_same_maps(run_engine, tmp_path):
    """AD_HDF5 resource/datum documents, frames read back from the file: same maps as inline."""
    small_scenario = default_scenario(shape=(6, 6), n_angles=9)
    mask = small_scenario.geometry.detector.mask
    results = []
    for write_path in (None, tmp_path):
        live = LiveProcessor(None, settings=Config(live=LiveSettings(checkpoints=False)),
                             max_series=1).start()
        try:
            devices = sim_sxdm_devices(small_scenario, write_path=write_path)
            names = []
            token = run_engine.subscribe(SxdmCallback(live, pixel_mask=mask))
            token2 = run_engine.subscribe(lambda name, doc: names.append(name))
            run_map(run_engine, devices, small_scenario)
            run_engine.unsubscribe(token)
            run_engine.unsubscribe(token2)
            results.append((finished_maps(live), names))
        finally:
            live.stop()
    (inline, inline_names), (by_reference, ref_names) = results
    assert "datum" not in inline_names
    assert ref_names.count("resource") == 1
    assert ref_names.count("datum") == small_scenario.scan.n_frames
    assert list(tmp_path.glob("*.h5"))
    np.testing.assert_array_equal(inline.intensity, by_reference.intensity)
    np.testing.assert_allclose(inline.com, by_reference.com, equal_nan=True)


def test_runs_without_sxdm_metadata_are_ignored(run_engine, live, small_scenario):
    devices = sim_sxdm_devices(small_scenario)
    callback = SxdmCallback(live)
    run_engine.subscribe(callback)
    run_engine(bp.scan([devices.det], devices.pix, 0, 1, 3))
    assert callback.runs_seen == 0 and not callback.rejected
    assert live.status().messages == 0


def test_late_joiner_drops_the_run_and_says_so(live, small_scenario, caplog):
    """Documents of a run whose start was missed are counted and reported, not mixed in."""
    callback = SxdmCallback(live)
    callback("descriptor", {"uid": "d1", "run_start": "r-missed", "time": 0.0, "name": "primary",
                            "data_keys": {"img": {"dtype": "array", "shape": [4, 4], "source": "s"}}})
    for seq in (1, 2):
        callback("event", {"uid": f"e{seq}", "descriptor": "d1", "seq_num": seq, "time": 0.0,
                           "data": {"img": np.zeros((4, 4))}, "timestamps": {"img": 0.0}})
    assert callback.rejected["missed_start"] == 2
    assert "start document was not seen" in caplog.text
    assert live.status().messages == 0


class Collector:
    """A stand-in processor that keeps what it is given."""

    def __init__(self):
        self.messages = []

    def submit(self, message):
        self.messages.append(message)


def test_stream_resource_frames_join_their_events(tmp_path):
    """ophyd-async style: stream_resource/stream_datum point into an HDF5 file; each frame
    is joined to the positions of the event with the same seq_num, whichever comes first."""
    import h5py

    from sxdm_stream.core.scan import ScanDescription
    from sxdm_stream.messages import ImageFrame, SeriesEnd, SeriesStart

    scenario = default_scenario(shape=(2, 2), n_angles=2)
    frames = np.arange(8 * 4 * 4, dtype=np.uint32).reshape(8, 4, 4)
    path = tmp_path / "det.h5"
    with h5py.File(path, "w") as f:
        f["/entry/data/data"] = frames
    scan = ScanDescription(shape=(2, 2), extents_um=((0, 1), (0, 1)), rocking_angles=(1.0, 2.0))
    sink = Collector()
    cb = SxdmCallback(sink)
    cb("start", {"uid": "run1", "time": 0.0, "scan_id": 7,
                 "sxdm": sxdm_block(scenario.geometry, scan)})
    cb("descriptor", {"uid": "d1", "run_start": "run1", "time": 0.0, "name": "primary",
                      "data_keys": {"det": {"dtype": "array", "shape": [4, 4], "source": "x",
                                            "external": "STREAM:"},
                                    "piy": {"dtype": "number", "shape": [], "source": "y"},
                                    "pix": {"dtype": "number", "shape": [], "source": "x"}}})
    cb("stream_resource", {"uid": "sr1", "data_key": "det", "mimetype": "application/x-hdf5",
                           "uri": f"file://localhost{path}", "parameters": {"dataset": "/entry/data/data"},
                           "run_start": "run1"})

    def event(seq):
        row, col = divmod((seq - 1) % 4, 2)
        cb("event", {"uid": f"e{seq}", "descriptor": "d1", "seq_num": seq, "time": 0.0,
                     "data": {"piy": float(row), "pix": float(col)}, "timestamps": {}})

    event(1)                                       # event first, then its frame
    cb("stream_datum", {"uid": "sd1", "stream_resource": "sr1", "descriptor": "d1",
                        "indices": {"start": 0, "stop": 4}, "seq_nums": {"start": 1, "stop": 5}})
    for seq in (2, 3, 4):                          # frames first, then their events
        event(seq)
    cb("stream_datum", {"uid": "sd2", "stream_resource": "sr1", "descriptor": "d1",
                        "indices": {"start": 4, "stop": 8}, "seq_nums": {"start": 5, "stop": 9}})
    cb("stop", {"uid": "s1", "run_start": "run1", "time": 0.0, "exit_status": "success"})
    start, *images, end = sink.messages
    assert isinstance(start, SeriesStart) and start.series_id == 7 and isinstance(end, SeriesEnd)
    assert all(isinstance(m, ImageFrame) for m in images)
    assert sorted(m.image_id for m in images) == list(range(8))
    for m in images:
        np.testing.assert_array_equal(m.data, frames[m.image_id])
    with_positions = {m.image_id for m in images if m.positions}
    assert with_positions == {0, 1, 2, 3}           # events 5..8 never came: placed by index
    assert not cb.rejected


def test_detector_stream_joined_to_bluesky_positions(run_engine, small_scenario):
    """Two planes: a streaming detector sends the frames over a real DECTRIS stream (its start
    carries only the correlation id), the RunEngine's documents carry the scan and the measured
    positions; the processor joins them by correlation id and frame index."""
    from sxdm_stream.plugins.bluesky import StreamingSxdmDetector
    from sxdm_stream.sources.dectris.sender import StreamSender

    sender = StreamSender("tcp://127.0.0.1:*")
    live = LiveProcessor(sender.endpoint, settings=Config(live=LiveSettings(checkpoints=False)),
                         max_series=1)
    live.start()
    try:
        devices = sim_sxdm_devices(small_scenario)
        eiger = StreamingSxdmDetector(small_scenario, devices.motors, sender, name="eiger")
        callback = SxdmCallback(live)            # no mask given: the detector's start brings it
        run_engine.subscribe(callback)
        names = []
        run_engine.subscribe(lambda name, doc: names.append((name, doc)))
        (uid,) = run_map(run_engine, SimpleNamespace(det=eiger, **devices.motors), small_scenario,
                         correlation_id="beamtime-42")
        maps = finished_maps(live)
    finally:
        live.stop()
        sender.close()
    start = names[0][1]
    assert start["sxdm"]["correlation_id"] == "beamtime-42"
    descriptor = next(doc for name, doc in names if name == "descriptor")
    assert not any(len(k.get("shape") or []) >= 2 for k in descriptor["data_keys"].values())
    status = live.status()
    assert status.processed == small_scenario.scan.n_frames, status
    assert not status.rejected and status.placed_by_index == 0, status
    assert not callback.rejected
    assert live.results[0].series_unique_id != uid          # the detector's own series
    assert_accurate(maps, small_scenario)


def test_entry_points_let_bluesky_users_discover_the_plugin():
    from importlib.metadata import entry_points

    import sxdm_stream.plugins.bluesky as plugin
    from sxdm_stream.plugins.bluesky.derived import DerivedRunPublisher

    found = {ep.name: ep.load() for ep in entry_points(group="sxdm_stream.bluesky")}
    assert found["sxdm_map"] is plugin.sxdm_map and found["SxdmCallback"] is plugin.SxdmCallback
    assert found["StreamingSxdmDetector"] is plugin.StreamingSxdmDetector
    assert found["DerivedRunPublisher"] is DerivedRunPublisher
    assert {"sxdm_map_until_peak", "sim_sxdm_devices", "LiveFeedback", "listen"} <= set(found)


def test_operando_channels_given_to_sxdm_map_reach_the_record(run_engine, live, tmp_path):
    """md={"sxdm": {"operando": ...}} is merged into the plan's block (scan, geometry stay)."""
    scenario = default_scenario(shape=(6, 6), n_angles=5)
    devices = sim_sxdm_devices(scenario)
    starts = []
    run_engine.subscribe(SxdmCallback(live, pixel_mask=scenario.geometry.detector.mask))
    run_engine.subscribe(lambda name, doc: starts.append(doc) if name == "start" else None)
    channels = {"voltage": {"value": 4.05, "units": "V"}}
    run_map(run_engine, devices, scenario, md={"sxdm": {"operando": channels}})
    finished_maps(live)
    block = starts[0]["sxdm"]
    assert {"scan", "geometry", "correlation_id"} <= set(block) and block["operando"] == channels
    assert live.last_record.channels == {"voltage": (4.05, "V")}


def test_relative_grid_scan_is_placed_from_the_motor_readings(run_engine, live, small_scenario):
    """``rel_grid_scan`` describes its extents relative to where the motors stood: the scan is
    placed from the first event's readings, so every frame lands on its map pixel and angle."""
    import bluesky.plan_stubs as bps

    scan = small_scenario.scan
    devices = sim_sxdm_devices(small_scenario)
    (r0, r1), (c0, c1) = scan.extents_um
    a0, a1 = scan.rocking_angles[0], scan.rocking_angles[-1]
    eta0, piy0, pix0 = a0 + 0.05, r0 + 0.7, c0 - 0.4     # where the motors stand before the run
    run_engine(bps.mv(devices.eta, eta0, devices.piy, piy0, devices.pix, pix0))
    callback = SxdmCallback(live, pixel_mask=small_scenario.geometry.detector.mask)
    run_engine.subscribe(callback)
    md = {"sxdm": sxdm_block(small_scenario.geometry, fixed_angles=scan.fixed_angles)}
    run_engine(bp.rel_grid_scan([devices.det], devices.eta, a0 - eta0, a1 - eta0, scan.n_angles,
                                devices.piy, r0 - piy0, r1 - piy0, scan.shape[0],
                                devices.pix, c0 - pix0, c1 - pix0, scan.shape[1], md=md))
    maps = finished_maps(live)
    status = live.status()
    assert status.processed == scan.n_frames and not status.rejected, status
    assert not callback.rejected
    placed = callback.last_scan
    np.testing.assert_allclose(placed.extents_um, scan.extents_um, atol=1e-9)
    np.testing.assert_allclose(placed.rocking_angles, scan.rocking_angles, atol=1e-9)
    assert_accurate(maps, small_scenario)


def test_relative_plan_without_readings_is_dropped_with_its_reason(live, small_scenario):
    """A relative plan whose events lack a motor's reading cannot be placed: the run is
    ignored under a reason, never processed at the plan's relative positions."""
    scan = small_scenario.scan
    callback = SxdmCallback(live)
    (r0, r1), (c0, c1) = scan.extents_um
    start = {"uid": "rel-run", "time": 0.0, "plan_name": "rel_grid_scan", "scan_id": 7,
             "motors": ["eta", "piy", "pix"], "shape": [scan.n_angles, *scan.shape],
             "extents": [[-0.1, 0.1], [r0, r1], [c0, c1]], "snaking": [False, False, False],
             "sxdm": sxdm_block(small_scenario.geometry, fixed_angles=scan.fixed_angles)}
    callback("start", start)
    callback("descriptor", {"uid": "d", "run_start": "rel-run", "name": "primary", "time": 0.0,
                            "data_keys": {"img": {"dtype": "array", "shape": [4, 4], "source": "s"},
                                          "piy": {"dtype": "number", "shape": [], "source": "s"}}})
    callback("event", {"uid": "e", "descriptor": "d", "seq_num": 1, "time": 0.0,
                       "data": {"img": np.zeros((4, 4)), "piy": r0}, "timestamps": {}})
    callback("stop", {"uid": "s", "run_start": "rel-run", "time": 0.0, "exit_status": "success"})
    assert callback.rejected == {"relative_without_readings": 1}
    assert live.status().messages == 0
