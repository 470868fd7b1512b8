"""Operando series: a simulated charge of 50 maps through the live processor, with the
sample drifting between maps, particles changing, one appearing midway and the H2-H3
two-phase transition moving through the particles. Each map adds a record (summary, tracked
particles, phases, registration, events, alarms, electrochemistry) to one time-series file and
to the published stream; every figure is checked against the simulator's truth."""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import pytest
import zmq

from sxdm_stream.analysis.operando import map_summary, operando_channels, operando_record
from sxdm_stream.config import Config
from sxdm_stream.core.accumulate import AccumulationSettings
from sxdm_stream.errors import IncompatibleFileError
from sxdm_stream.messages import ImageFrame, SeriesEnd
from sxdm_stream.runtime.processor import LiveProcessor, LiveSettings
from sxdm_stream.simulators.operando import H3, SOLID_SOLUTION, OperandoSeries, operando_sequence
from sxdm_stream.simulators.sender import series_start, with_operando
from sxdm_stream.sinks.publish import OPERANDO_TOPIC, decode_operando_record
from sxdm_stream.sinks.timeseries import OperandoSeriesFile, read_operando

N_SCANS = 50
Q_SHELLS = 64


def submit_scan(live, scan, series_id):
    sc = scan.scenario
    live.submit(with_operando(series_start(sc, series_id, f"op-{series_id}",
                                           f"charge-{series_id}"), scan.channels))
    for index, _, _, frame in sc.simulator.frames():
        live.submit(ImageFrame(series_id, index, frame, series_unique_id=f"op-{series_id}"))
    live.submit(SeriesEnd(series_id, f"op-{series_id}"))


class RecordListener:
    """A SUB socket collecting the published operando records in a thread."""

    def __init__(self, endpoint):
        self.socket = zmq.Context.instance().socket(zmq.SUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SUBSCRIBE, OPERANDO_TOPIC)
        self.socket.connect(endpoint)
        self.records, self._stop = [], threading.Event()
        self.thread = threading.Thread(target=self._run, name="test-records")
        self.thread.start()

    def _run(self):
        while not self._stop.is_set():
            if self.socket.poll(50):
                self.records.append(decode_operando_record(self.socket.recv_multipart()))

    def close(self):
        self._stop.set()
        self.thread.join(10)
        self.socket.close()


def operando_config(**live):
    return Config(accumulation=AccumulationSettings(q_shells=Q_SHELLS),
                  live=LiveSettings(checkpoints=False, **live))


@pytest.fixture(scope="module")
def charged(tmp_path_factory):
    """50 maps of a charge through the live processor (submit: no encoding, same worker)."""
    path = tmp_path_factory.mktemp("operando") / "series.h5"
    series = OperandoSeries(N_SCANS, shape=(24, 28), n_angles=5)
    live = LiveProcessor(None, publish="tcp://127.0.0.1:*", operando=path,
                         settings=operando_config(keep_results=4), max_series=N_SCANS)
    listener = RecordListener(live.publish_endpoint)
    live.start()
    truths = []
    try:
        time.sleep(0.3)                       # the subscriber joins before the first record
        for k in range(N_SCANS):
            scan = series.scan(k)
            truths.append(dataclasses.replace(scan, scenario=None))   # keep the truth only
            submit_scan(live, scan, k + 1)
        assert live.wait(600), live.status()
    finally:
        live.stop()
        listener.close()
    return live, series, truths, read_operando(path), listener.records, path


def ids_of_truth(series_file, truths, tolerance_um=0.4):
    """For every scan and truth particle present, the id of the record's particle whose piezo
    centroid is nearest (None when none is within ``tolerance_um``)."""
    table = series_file["particles"]
    found = {}
    for k, scan in enumerate(truths):
        rows = table["record"] == k
        centroids = np.stack([table["centroid_row_um"][rows], table["centroid_col_um"][rows]], 1)
        for p in scan.truth.particles:
            if not p.present:
                continue
            distance = np.hypot(*(centroids - p.centroid_piezo_um).T)
            best = int(np.argmin(distance)) if distance.size else -1
            found[(k, p.index)] = (int(table["particle_id"][rows][best])
                                   if best >= 0 and distance[best] < tolerance_um else None)
    return found


def test_every_scan_adds_a_record_with_its_electrochemistry(charged):
    live, _, truths, series, published, _ = charged
    assert series["records"] == N_SCANS
    assert list(series["summary"]["series_id"]) == list(range(1, N_SCANS + 1))
    assert series["summary"]["complete"].all()
    voltage, units = series["electrochemistry"]["voltage"]
    assert units == "V"
    np.testing.assert_allclose(voltage, [s.channels["voltage"]["value"] for s in truths])
    assert np.all(np.diff(series["summary"]["time"]) >= 0)
    assert len(live.results) == 4                       # bounded, whatever the number of scans
    assert live.status().completed == N_SCANS
    assert [r["series_id"] for r in published] == list(range(1, N_SCANS + 1))
    last = published[-1]
    assert last["operando"]["voltage"]["units"] == "V"
    assert {p["particle_id"] for p in last["particles"]} == {1, 2, 3, 4}
    assert all(p["phases"] for p in last["particles"])


def test_particles_keep_their_identity_while_the_sample_drifts(charged):
    _, series, truths, file, _, _ = charged
    found = ids_of_truth(file, truths)
    stay = [i for i, at in enumerate(series.appears_at) if at == 0]
    for i in stay:
        ids = [found[(k, i)] for k in range(N_SCANS)]
        assert None not in ids, f"particle {i} not found in scans {[k for k, v in enumerate(ids) if v is None]}"
        assert len(set(ids)) == 1, f"particle {i} changed id: {ids}"
    assert len({found[(0, i)] for i in stay}) == len(stay)
    # the newcomer: an appear event at the map where it comes, and one id from then on
    new = next(i for i, at in enumerate(series.appears_at) if at > 0)
    at = series.appears_at[new]
    new_ids = {found[(k, new)] for k in range(at, N_SCANS)}
    assert len(new_ids) == 1 and None not in new_ids
    events = file["events"]
    appear = [(int(r), ids) for r, kind, ids in zip(events["record"], events["kind"],
                                                    events["particle_ids"]) if kind == "appear"]
    first = {int(r) for r in events["record"][events["kind"] == "appear"]}
    assert (at, str(new_ids.pop())) in appear and first == {0, at}, appear
    assert not set(events["kind"]) & {"disappear", "split", "merge"}, list(zip(
        events["record"], events["kind"], events["message"]))


def test_drift_between_maps_is_recovered(charged):
    _, _, truths, file, _, _ = charged
    true_drift = np.array([s.drift_px for s in truths])
    measured = file["registration"]["drift_px"]
    shift = file["registration"]["shift_px"]
    np.testing.assert_allclose(shift[1:], np.diff(true_drift, axis=0), atol=0.2)
    np.testing.assert_allclose(measured, true_drift - true_drift[0], atol=0.3)
    assert np.ptp(true_drift, axis=0).max() > 4            # the sample moved more than a micron
    # in the sample's frame a particle stays where it is
    table = file["particles"]
    for pid in (1, 2, 3):
        rows = table["particle_id"] == pid
        assert np.std(table["sample_row_um"][rows]) < 0.04
        assert np.std(table["sample_col_um"][rows]) < 0.04
        assert np.ptp(table["centroid_row_um"][rows]) + np.ptp(table["centroid_col_um"][rows]) > 0.5


def test_phases_follow_the_transition(charged):
    _, _, truths, file, _, _ = charged
    phases = file["phases"]
    per_record = [sorted(zip(phases["d_a"][phases["record"] == k],
                             phases["phase_id"][phases["record"] == k]), reverse=True)
                  for k in range(N_SCANS)]
    mixed = file["summary"]["mixed_pixels"]
    solid_ids, h3_ids = set(), set()
    for k, scan in enumerate(truths):
        names = [name for name, p in scan.truth.phases.items() if p.fraction > 0.05]
        assert len(per_record[k]) == len(names), (k, per_record[k], names)
        for (d, pid), name in zip(per_record[k], sorted(names, key=lambda n: -scan.truth.phases[n].d_a)):
            assert abs(d - scan.truth.phases[name].d_a) < 3e-4, (k, name, d)
            (solid_ids if name == SOLID_SOLUTION else h3_ids).add(int(pid))
        if len(names) == 1:
            assert mixed[k] == 0, k
    assert len(solid_ids) == 1 and len(h3_ids) == 1 and solid_ids != h3_ids
    # the maps are flagged where the simulated particles hold a front (the flag needs both
    # phases at 10% of a pixel inside the intensity mask; the truth's two-phase pixels are
    # counted over the whole map)
    fronts = np.array([s.truth.two_phases.sum() for s in truths])
    print("two-phase pixels, truth vs flagged:", list(zip(fronts, mixed.astype(int))))
    assert np.all(mixed[fronts == 0] == 0)
    assert np.all(mixed[fronts >= 8] > 0)
    assert 0.5 < mixed.sum() / fronts.sum() < 1.5


def test_alarms_say_when_particles_cross_half_transformed(charged):
    _, _, truths, file, _, _ = charged
    found = ids_of_truth(file, truths)
    alarms = file["alarms"]
    crossed = alarms["rule"] == "fraction_crossed"
    for i in range(3):
        h3 = np.array([s.truth.particles[i].h3_fraction for s in truths])
        k = int(np.argmax(h3 >= 0.5))
        pid = found[(k, i)]
        at = alarms["record"][crossed & (alarms["particle_id"] == pid)]
        assert at.size and abs(int(at.min()) - k) <= 1, (i, k, at)


def test_a_restarted_processor_continues_the_series(charged, tmp_path):
    _, _, truths, _, _, path = charged
    copy = tmp_path / "series.h5"
    copy.write_bytes(path.read_bytes())
    file = OperandoSeriesFile(copy)
    assert len(file) == N_SCANS
    live = LiveProcessor(None, settings=Config(live=LiveSettings(checkpoints=False)), max_series=1).start()
    try:
        submit_scan(live, next(operando_sequence(1, n_angles=5)), 99)
        assert live.wait(60)
        maps, particles = live.results[0].maps, live.results[0].analysis.particles.records
    finally:
        live.stop()
    file.append(operando_record(maps, 1e10, 99, channels={"temperature": (25.0, "degC")},
                                particles=particles))
    back = read_operando(copy)
    assert back["records"] == N_SCANS + 1 and back["summary"]["series_id"][-1] == 99
    temperature, units = back["electrochemistry"]["temperature"]
    assert units == "degC" and np.isnan(temperature[:-1]).all() and temperature[-1] == 25.0
    assert np.isnan(back["electrochemistry"]["voltage"][0][-1])
    # the record made alone (no tracking) still lands, its particle ids missing (NaN)
    rows = back["particles"]["record"] == N_SCANS
    assert rows.sum() >= 1 and np.isnan(back["particles"]["particle_id"][rows]).all()
    assert np.isnan(back["registration"]["drift_px"][-1]).all()


def test_a_file_that_is_not_a_series_is_refused(tmp_path):
    import h5py
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["x"] = 1
    with pytest.raises(IncompatibleFileError, match="not an operando series"):
        OperandoSeriesFile(path)


def test_channels_and_summary_helpers(small_processed):
    assert operando_channels({"operando": {"voltage": 4.1, "current": {"value": 0.2, "units": "mA"},
                                           "note": "text"}}) == \
        {"voltage": (4.1, ""), "current": (0.2, "mA")}
    assert operando_channels(None) == {}
    maps = small_processed.maps()
    summary = map_summary(maps)
    assert summary["mean_d"] == pytest.approx(np.nanmean(maps.d_spacing[maps.mask]))
    assert summary["mask_pixels"] == maps.mask.sum()


def test_simulate_and_process_operando_from_the_command_line(tmp_path):
    """`simulate --operando N` and `process --operando SERIES.h5` as two processes."""
    import subprocess
    import sys

    sim = subprocess.Popen([sys.executable, "-m", "sxdm_stream.cli", "simulate", "--bind",
                            "tcp://127.0.0.1:*", "--operando", "3", "--angles", "5"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    endpoint = sim.stdout.readline().split(": ", 1)[1].strip()
    proc = subprocess.run([sys.executable, "-m", "sxdm_stream.cli", "process", "--connect", endpoint,
                           "--out", str(tmp_path / "maps.h5"), "--operando",
                           str(tmp_path / "series.h5"), "--series", "3"],
                          capture_output=True, text=True, timeout=300)
    sim.communicate(timeout=60)
    assert proc.returncode == 0 and sim.returncode == 0, proc.stderr
    series = read_operando(tmp_path / "series.h5")
    assert series["records"] == 3
    voltage, units = series["electrochemistry"]["voltage"]
    assert units == "V" and np.all(np.diff(voltage) > 0)        # charging
    assert "particle(s)" in proc.stderr
    assert sorted(set(series["particles"]["particle_id"])) == [1, 2, 3, 4]   # one appears
    assert len(series["phases"]["record"]) >= 3                 # process --operando keeps shells


def test_a_nan_channel_is_skipped_and_never_stops_the_processor(tmp_path):
    assert operando_channels({"operando": {"voltage": float("nan"), "current": 0.1}}) == \
        {"current": (0.1, "")}
    scan = next(operando_sequence(1, n_angles=3))
    scan = dataclasses.replace(scan, channels={"voltage": {"value": float("nan"), "units": "V"}})
    live = LiveProcessor(None, publish="tcp://127.0.0.1:*", operando=tmp_path / "s.h5",
                         settings=Config(live=LiveSettings(checkpoints=False)), max_series=1).start()
    try:
        submit_scan(live, scan, 1)
        assert live.wait(60), live.status()
    finally:
        live.stop()
    assert read_operando(tmp_path / "s.h5")["records"] == 1


def test_the_charge_curve_is_physical():
    from sxdm_stream.simulators.operando import charge_state
    assert charge_state(0.0).phases == (SOLID_SOLUTION,)
    assert charge_state(0.7).phases == (SOLID_SOLUTION, H3)
    assert charge_state(1.0).phases == (H3,)
