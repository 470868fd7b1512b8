"""The viewer's analysis tab and q-ROI map source, fed by a real live processor (over loopback
ZeroMQ) and by the results file such a processor writes: particle table, drift plot, ROI text,
and the d panel showing a q-ROI's d-spacing."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pytest
from PySide6 import QtCore

from sxdm_stream.analysis.drift import DriftSettings
from sxdm_stream.config import Config
from sxdm_stream.core.accumulate import AccumulationSettings
from sxdm_stream.core.qroi import QRoi
from sxdm_stream.messages import ImageFrame, SeriesEnd
from sxdm_stream.plugins.viewer import derived
from sxdm_stream.plugins.viewer.markers import veil_image
from sxdm_stream.plugins.viewer.model import ALL_Q
from sxdm_stream.plugins.viewer.results import FileHistograms, ResultsFile
from sxdm_stream.plugins.viewer.subscriber import SnapshotFeed
from sxdm_stream.plugins.viewer.window import ViewerWindow
from sxdm_stream.runtime.processor import LiveProcessor, LiveSettings
from sxdm_stream.simulators.scenarios import two_particle_scenario
from sxdm_stream.simulators.sender import series_start
from sxdm_stream.sinks.results_analysis import read_drift, read_particles, read_roi_maps

WAIT_MS = 120_000
#: the two particles' Bragg peaks (d = 4.730 and 4.745 Å: |Q| = 1.3283 and 1.3241 1/Å) split
ROIS = (QRoi("small_d", (-0.03, -0.03, 1.3262), (0.03, 0.03, 1.34)),
        QRoi("large_d", (-0.03, -0.03, 1.31), (0.03, 0.03, 1.3262)))


@pytest.fixture(scope="module")
def scenario():
    return two_particle_scenario(shape=(16, 16), n_angles=13)


def settings() -> Config:
    return Config(live=LiveSettings(checkpoints=False), drift=DriftSettings(mode="auto"),
                  accumulation=AccumulationSettings(q_rois=ROIS))


def submit_scan(live: LiveProcessor, scenario) -> None:
    live.submit(series_start(scenario, 1, "s1", "c1"))
    for index, _, _, frame in scenario.simulator.frames():
        live.submit(ImageFrame(1, index, frame, "s1"))
    live.submit(SeriesEnd(1, "s1"))
    assert live.wait(120), live.status()


@pytest.fixture(scope="module")
def results_file(scenario, tmp_path_factory):
    path = tmp_path_factory.mktemp("analysis") / "results.h5"
    live = LiveProcessor(None, out=path, settings=settings(), max_series=1).start()
    try:
        submit_scan(live, scenario)
    finally:
        live.stop()
    return path


def show(qtbot, window: ViewerWindow) -> ViewerWindow:
    qtbot.addWidget(window)
    window.resize(1800, 1000)
    window.show()
    window.start()
    return window


def click_row(qtbot, window: ViewerWindow, row: int) -> None:
    table = window.analysis.table
    rect = table.visualRect(table.model().index(row, 1))
    qtbot.mouseClick(table.viewport(), QtCore.Qt.MouseButton.LeftButton, pos=rect.center())


def check_particle_table(qtbot, window: ViewerWindow, particles: list[dict]) -> None:
    window.tabs.setCurrentWidget(window.analysis)
    table = window.analysis.table
    qtbot.waitUntil(lambda: table.rowCount() == len(particles), timeout=WAIT_MS)
    assert len(particles) >= 1
    headers = [table.horizontalHeaderItem(c).text() for c in range(table.columnCount())]
    assert "mean d (Å)" in headers and "area (µm²)" in headers and "max tilt (°)" in headers
    for row, record in enumerate(particles):
        for col, name in enumerate(window.analysis.fields):
            assert table.item(row, col).text() == derived.format_particle_value(name,
                                                                                record[name])
    click_row(qtbot, window, 0)
    label = particles[0]["label"]
    qtbot.waitUntil(lambda: window.model.particle == label, timeout=WAIT_MS)
    state = window.model.state
    row, col = window.model.selected
    assert state.arrays["particle_labels"][row, col] == label, "the centroid pixel is selected"
    highlight = window.maps.panels["strain"].highlight.item
    assert highlight.isVisible()
    np.testing.assert_array_equal(highlight.image,
                                  veil_image(state.arrays["particle_labels"] == label))


def check_drift_plot(window: ViewerWindow, shifts_um: np.ndarray, confident: np.ndarray,
                     angles: np.ndarray) -> None:
    x, row_um = window.analysis.row_curve.getData()
    _, col_um = window.analysis.col_curve.getData()
    assert len(x) == len(angles) == len(shifts_um), "one point per rocking angle"
    np.testing.assert_allclose(x, angles)
    np.testing.assert_allclose(row_um, shifts_um[:, 0])
    np.testing.assert_allclose(col_um, shifts_um[:, 1])
    assert len(window.analysis.doubtful.data) == 2 * int(np.sum(~confident))


def check_roi_maps(qtbot, window: ViewerWindow, roi_maps: dict, blank: str | None) -> None:
    choice = window.source_choice
    assert [choice.itemText(i) for i in range(choice.count())] == [ALL_Q, "small_d", "large_d"]
    panel = window.maps.panels["d_spacing"]
    for name in ("small_d", "large_d"):
        choice.textActivated.emit(name)                # as picking it in the combo box does
        expected = roi_maps[name]["d_spacing"]
        np.testing.assert_array_equal(panel.image.image, expected)
        assert choice.currentText() == name
        if blank is not None:
            other = window.maps.panels[blank]
            assert np.isnan(other.image.image).all() and other.note == f"not in {name}"
    d = roi_maps["small_d"]["d_spacing"]
    assert abs(np.nanmean(d) - 4.730) < 2e-3 and abs(np.nanmean(roi_maps["large_d"]
                                                                  ["d_spacing"]) - 4.745) < 2e-3
    choice.textActivated.emit(ALL_Q)
    np.testing.assert_array_equal(panel.image.image, window.model.state.arrays["d_spacing"])
    assert all(not p.note for p in window.maps.panels.values())


def test_live_processor_particles_drift_and_q_roi_maps(qtbot, scenario):
    live = LiveProcessor(None, publish="tcp://127.0.0.1:*", settings=settings(),
                         max_series=1).start()
    window = show(qtbot, ViewerWindow(SnapshotFeed(live.publish_endpoint), refresh_hz=20))
    try:
        qtbot.waitUntil(lambda: window.source.connected is True, timeout=WAIT_MS)
        submit_scan(live, scenario)
        qtbot.waitUntil(lambda: window.model.state is not None and window.model.state.final,
                        timeout=WAIT_MS)
        (result,) = live.results
        header = window.model.state.header
        assert list(header.particles) == result.analysis.particles.to_records()
        check_particle_table(qtbot, window, list(header.particles))
        drift = result.analysis.drift
        check_drift_plot(window, drift.shifts_um, drift.confident,
                         np.asarray(scenario.scan.rocking_angles))
        assert "q-space ROI suggestion" in window.analysis.roi_text.toPlainText()
        assert "small_d: box" in window.analysis.roi_text.toPlainText()
        check_roi_maps(qtbot, window, {name: {"d_spacing": maps.d_spacing}
                                       for name, maps in result.analysis.roi_maps.items()},
                       blank="tilt_azimuth")
    finally:
        window.stop()
        live.stop()


def test_results_file_particles_drift_and_q_roi_maps(qtbot, results_file, scenario):
    window = show(qtbot, ViewerWindow(ResultsFile(results_file), FileHistograms(results_file)))
    try:
        qtbot.waitUntil(lambda: window.model.state is not None, timeout=WAIT_MS)
        records = read_particles(results_file)
        particles = [{n: r[n].item() for n in records.dtype.names} for r in records]
        check_particle_table(qtbot, window, particles)
        drift = read_drift(results_file)
        check_drift_plot(window, drift["shifts_um"], drift["confident"],
                         np.asarray(scenario.scan.rocking_angles))
        assert "peak0" in window.analysis.roi_text.toPlainText()
        check_roi_maps(qtbot, window, read_roi_maps(results_file), blank=None)
    finally:
        window.stop()


def test_without_analysis_the_tab_says_so(qtbot, tmp_path, small_processed):
    from sxdm_stream.sinks.results import write_results
    path = tmp_path / "plain.h5"
    write_results(path, small_processed.maps(), small_processed.setup)
    window = show(qtbot, ViewerWindow(ResultsFile(path)))
    try:
        qtbot.waitUntil(lambda: window.model.state is not None, timeout=WAIT_MS)
        window.tabs.setCurrentWidget(window.analysis)
        qtbot.waitUntil(lambda: "no drift" in window.analysis.drift_note.text(), timeout=WAIT_MS)
        assert window.analysis.row_curve.getData()[0] is None or \
            len(window.analysis.row_curve.getData()[0]) == 0
        assert window.source_choice.count() == 1
    finally:
        window.stop()
