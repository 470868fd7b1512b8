"""Operando series: a simulated charge of 50 scans, each map adding a record (summary,
particle table, electrochemistry) to one time-series file and to the published stream.
The per-particle mean d follows the simulated charge curve."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
import zmq

from sxdm_stream.analysis.operando import map_summary, operando_channels, operando_record
from sxdm_stream.config import Config
from sxdm_stream.errors import IncompatibleFileError
from sxdm_stream.messages import ImageFrame, SeriesEnd
from sxdm_stream.runtime.processor import LiveProcessor, LiveSettings
from sxdm_stream.simulators.operando import d_spacing_on_charge, operando_sequence
from sxdm_stream.simulators.sender import series_start, with_operando
from sxdm_stream.sinks.publish import OPERANDO_TOPIC, decode_operando_record
from sxdm_stream.sinks.timeseries import OperandoSeriesFile, read_operando

N_SCANS = 50


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


@pytest.fixture(scope="module")
def charged(tmp_path_factory):
    """50 scans of a charge through the live processor (submit: no encoding, same worker)."""
    path = tmp_path_factory.mktemp("operando") / "series.h5"
    scans = list(operando_sequence(N_SCANS, shape=(10, 14), n_angles=7))
    live = LiveProcessor(None, publish="tcp://127.0.0.1:*", operando=path,
                         settings=Config(live=LiveSettings(checkpoints=False, keep_results=4)),
                         max_series=N_SCANS)
    listener = RecordListener(live.publish_endpoint)
    live.start()
    try:
        import time
        time.sleep(0.3)                       # the subscriber joins before the first record
        for k, scan in enumerate(scans):
            submit_scan(live, scan, k + 1)
        assert live.wait(300), live.status()
    finally:
        live.stop()
        listener.close()
    return live, scans, read_operando(path), listener.records, path


def test_every_scan_adds_a_record_with_its_electrochemistry(charged):
    live, scans, series, published, _ = charged
    assert series["records"] == N_SCANS
    assert list(series["summary"]["series_id"]) == list(range(1, N_SCANS + 1))
    assert series["summary"]["complete"].all()
    voltage, units = series["electrochemistry"]["voltage"]
    assert units == "V"
    np.testing.assert_allclose(voltage, [s.channels["voltage"]["value"] for s in scans])
    assert np.all(np.diff(series["summary"]["time"]) >= 0)
    assert len(live.results) == 4                       # bounded, whatever the number of scans
    assert live.status().completed == N_SCANS


def test_particle_mean_d_follows_the_charge_curve(charged):
    _, scans, series, _, _ = charged
    table = series["particles"]
    truth = np.array([s.particle_d for s in scans])             # (scans, 2)
    for k in range(N_SCANS):
        rows = table["record"] == k
        assert rows.sum() == 2, f"scan {k}: {rows.sum()} particles found"
        order = np.argsort(table["centroid_col_um"][rows])     # left particle first
        measured = table["mean_d_a"][rows][order]
        np.testing.assert_allclose(measured, truth[k], atol=2e-4, err_msg=f"scan {k}")
    # the series has the shape of the charge curve: expansion then collapse
    left = np.array([table["mean_d_a"][(table["record"] == k)][
        np.argmin(table["centroid_col_um"][table["record"] == k])] for k in range(N_SCANS)])
    peak = int(np.argmax(left))
    assert 0.6 * N_SCANS < peak < 0.95 * N_SCANS
    assert left[-1] < left[0] < left[peak]
    assert np.corrcoef(left, truth[:, 0])[0, 1] > 0.99


def test_records_are_published(charged):
    _, scans, _, published, _ = charged
    assert published, "no operando record was published"
    ids = [r["series_id"] for r in published]
    assert ids == sorted(ids) and ids[-1] == N_SCANS
    last = published[-1]
    assert last["operando"]["voltage"]["units"] == "V"
    assert len(last["particles"]) == 2 and last["summary"]["mean_d"] > 4.7


def test_a_restarted_processor_continues_the_series(charged, tmp_path):
    _, scans, _, _, path = charged
    copy = tmp_path / "series.h5"
    copy.write_bytes(path.read_bytes())
    file = OperandoSeriesFile(copy)
    assert len(file) == N_SCANS
    maps = None
    live = LiveProcessor(None, settings=Config(live=LiveSettings(checkpoints=False)), max_series=1).start()
    try:
        submit_scan(live, scans[-1], 99)
        assert live.wait(60)
        maps = live.results[0].maps
    finally:
        live.stop()
    file.append(operando_record(maps, 1e10, 99, channels={"temperature": (25.0, "degC")}))
    back = read_operando(copy)
    assert back["records"] == N_SCANS + 1 and back["summary"]["series_id"][-1] == 99
    temperature, units = back["electrochemistry"]["temperature"]
    assert units == "degC" and np.isnan(temperature[:-1]).all() and temperature[-1] == 25.0
    assert np.isnan(back["electrochemistry"]["voltage"][0][-1])


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


def test_charge_curve_is_physical():
    d = d_spacing_on_charge(np.linspace(0, 1, 101))
    assert d.argmax() in range(60, 90) and d[-1] < d[0]


def test_simulate_and_process_operando_from_the_command_line(tmp_path):
    """`simulate --operando N` and `process --operando SERIES.h5` as two processes."""
    import subprocess
    import sys

    sim = subprocess.Popen([sys.executable, "-m", "sxdm_stream.cli", "simulate", "--bind",
                            "tcp://127.0.0.1:*", "--operando", "3", "--shape", "8", "12",
                            "--angles", "5"], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True)
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


def test_a_nan_channel_is_skipped_and_never_stops_the_processor(tmp_path):
    assert operando_channels({"operando": {"voltage": float("nan"), "current": 0.1}}) == \
        {"current": (0.1, "")}
    scan = next(operando_sequence(1, shape=(6, 6), n_angles=3))
    scan = dataclasses.replace(scan, channels={"voltage": {"value": float("nan"), "units": "V"}})
    live = LiveProcessor(None, publish="tcp://127.0.0.1:*", operando=tmp_path / "s.h5",
                         settings=Config(live=LiveSettings(checkpoints=False)), max_series=1).start()
    try:
        submit_scan(live, scan, 1)
        assert live.wait(60), live.status()
    finally:
        live.stop()
    assert read_operando(tmp_path / "s.h5")["records"] == 1
