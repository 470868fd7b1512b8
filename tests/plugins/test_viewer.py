"""The viewer's window offscreen: fed by a snapshot publisher the test drives, or by a file."""

from __future__ import annotations

import os
import subprocess
import sys

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pytest
from PySide6 import QtCore

from sxdm_stream.plugins.viewer import app
from sxdm_stream.plugins.viewer.results import FileHistograms, ResultsFile
from sxdm_stream.plugins.viewer.subscriber import SnapshotFeed
from sxdm_stream.plugins.viewer.window import ViewerWindow
from sxdm_stream.sinks.publish import encode_snapshot
from sxdm_stream.sinks.results import write_results

WAIT_MS = 20_000


@pytest.fixture
def processed(small_processed):
    return small_processed


@pytest.fixture
def window(qtbot, publisher):
    w = ViewerWindow(SnapshotFeed(publisher.endpoint), refresh_hz=20, stale_after_s=2.0)
    qtbot.addWidget(w)
    w.show()
    w.start()
    yield w
    w.stop()


def publish_until(qtbot, publisher, window, processor, seq: int, **info) -> None:
    """Publish snapshot ``seq`` until the window shows it (SUB sockets join late)."""
    info = {"series_id": 1, "complete": False, "scan": processor.setup.scan.describe(),
            "stats": {"received": 10, "processed": 9, "rejected": {"bad_position": 1},
                      "dropped": 0, "queued": 2, "frames_per_s": 321.0,
                      "latency_p50_s": 0.02, "latency_p99_s": 0.2, "progress": [9, 10]},
            **info, "seq": seq}
    parts = encode_snapshot(processor.maps(), info)

    def shown() -> bool:
        state = window.model.state
        if state is None or state.header.seq != seq:
            publisher.send(parts)
            return False
        return True

    qtbot.waitUntil(shown, timeout=WAIT_MS)


def click_pixel(qtbot, window, row: int, col: int, panel: str = "strain") -> None:
    image = window.maps.panels[panel].image
    scene_point = image.mapToScene(QtCore.QPointF(col + 0.5, row + 0.5))
    view_point = window.maps.mapFromScene(scene_point)
    qtbot.mouseClick(window.maps.viewport(), QtCore.Qt.MouseButton.LeftButton, pos=view_point)


def test_maps_are_drawn_into_the_existing_panels(qtbot, window, publisher, processed):
    publish_until(qtbot, publisher, window, processed, seq=1)
    panels = window.maps.panels
    images = {key: panel.image for key, panel in panels.items()}
    strain = window.model.state.arrays["strain"]
    np.testing.assert_array_equal(panels["strain"].image.image, strain)
    lo, hi = panels["strain"].colour_bar.levels()
    assert lo == pytest.approx(-hi) and hi > 0, "strain is centred on zero"
    assert panels["tilt_azimuth"].colour_bar.levels() == (0.0, 360.0)
    assert panels["misorientation"].image.image.shape == strain.shape + (4,)
    publish_until(qtbot, publisher, window, processed, seq=2)
    assert {key: panel.image for key, panel in panels.items()} == images, "no new items"
    texts = window.status_panel.texts()
    assert "321 frames/s" in texts["rate"] and "p99 200 ms" in texts["lag"]
    assert "rejected 1 (bad_position 1)" in texts["counts"] and "9 / 10" in texts["progress"]
    assert window.banner.isHidden()


def test_status_bar_says_whether_a_finished_scan_is_complete(qtbot, window, publisher,
                                                             processed):
    publish_until(qtbot, publisher, window, processed, seq=1, status="running",
                  frames_missing=50)
    assert "series 1 · running · snapshot 1" in window.status_panel.texts()["series"]
    publish_until(qtbot, publisher, window, processed, seq=2, complete=True,
                  status="incomplete", frames_missing=37)
    series = window.status_panel.texts()["series"]
    assert "incomplete (37 frames missing)" in series and "· complete" not in series
    assert window.model.state.final and len(window.model.operando) == 1, \
        "an operando point all the same"
    publish_until(qtbot, publisher, window, processed, seq=3, series_id=2, complete=True,
                  status="complete", frames_missing=0)
    assert "series 2 · complete · snapshot 3" in window.status_panel.texts()["series"]


def test_panels_share_zoom_and_pan(qtbot, window, publisher, processed):
    publish_until(qtbot, publisher, window, processed, seq=1)
    strain, intensity = (window.maps.panels[k].getViewBox() for k in ("strain", "intensity"))
    strain.scaleBy((0.5, 0.5))
    strain.sigRangeChangedManually.emit([True, True])    # as a mouse wheel does
    (sx0, sx1), (sy0, sy1) = strain.viewRange()
    (ix0, ix1), (iy0, iy1) = intensity.viewRange()
    assert (ix0 + ix1) / 2 == pytest.approx((sx0 + sx1) / 2)
    assert (iy0 + iy1) / 2 == pytest.approx((sy0 + sy1) / 2)
    per_pixel = (sx1 - sx0) / strain.width()
    assert (ix1 - ix0) / intensity.width() == pytest.approx(per_pixel, rel=0.02)


def test_clicking_a_pixel_fills_the_inspector_without_histogram_source(qtbot, window,
                                                                         publisher, processed):
    publish_until(qtbot, publisher, window, processed, seq=1)
    state = window.model.state
    row, col = (int(v) for v in np.argwhere(state.arrays["mask"])[0])
    click_pixel(qtbot, window, row, col)
    qtbot.waitUntil(lambda: window.model.selected == (row, col), timeout=WAIT_MS)
    inspector = window.inspector
    x, y = inspector.curve.getData()
    np.testing.assert_allclose(y, state.arrays["intensity_per_angle"][:, row, col])
    np.testing.assert_allclose(x, processed.setup.scan.rocking_angles)
    values = inspector.value_texts()
    assert values["mask"] == "inside" and values["strain"].endswith("µstrain")
    assert f"{state.arrays['strain'][row, col]:.6g}" in values["strain"]
    assert "not available" in inspector.histogram_note.text()
    assert inspector.projection_box.isHidden()
    marker = window.maps.panels["d_spacing"].marker.items[0]
    assert marker.isVisible() and marker.rect() == QtCore.QRectF(col, row, 1, 1)


def test_completed_maps_make_the_operando_series(qtbot, window, publisher, processed):
    for series, volts in ((1, 3.9), (2, 4.1), (3, 4.3)):
        publish_until(qtbot, publisher, window, processed, seq=series, series_id=series,
                      complete=True, operando={"voltage": {"value": volts, "units": "V"}})
    points = window.model.operando
    assert [p.channels["voltage"][0] for p in points] == [3.9, 4.1, 4.3]
    window.tabs.setCurrentWidget(window.operando)          # a hidden panel does not redraw
    curves = window.operando.curves
    np.testing.assert_allclose(curves[("channel:voltage", None, None)].getData()[1],
                               [3.9, 4.1, 4.3])
    np.testing.assert_allclose(curves[("d", None, None)].getData()[1],
                               [p.mean_d for p in points])
    x = curves[("d", None, None)].getData()[0]
    np.testing.assert_allclose(x, [(p.time_s - points[0].time_s) / 3600 for p in points])
    assert "3 so far" in window.operando.note.text()


def test_distributions_redraw_only_when_shown(qtbot, window, publisher, processed):
    publish_until(qtbot, publisher, window, processed, seq=1)
    assert window.distributions.redraws == 0
    window.tabs.setCurrentWidget(window.distributions)
    qtbot.waitUntil(lambda: window.distributions.redraws == 1, timeout=WAIT_MS)
    n_masked = int(window.model.state.arrays["mask"].sum())
    assert len(window.distributions.pole.points.data) == n_masked
    publish_until(qtbot, publisher, window, processed, seq=2)
    assert window.distributions.redraws == 2


def test_banner_when_the_publisher_goes_away(qtbot, publisher, processed):
    w = ViewerWindow(SnapshotFeed(publisher.endpoint), refresh_hz=20, stale_after_s=1.0)
    qtbot.addWidget(w)
    w.show()
    w.start()
    try:
        publish_until(qtbot, publisher, w, processed, seq=1)
        publisher.close()
        qtbot.waitUntil(lambda: w.banner.isVisible(), timeout=WAIT_MS)
        assert "not reachable" in w.banner.text()
    finally:
        w.stop()


def test_exports(qtbot, window, publisher, processed, tmp_path):
    publish_until(qtbot, publisher, window, processed, seq=1)
    png = window.export_png(tmp_path / "view.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    paths = window.export_tiff(tmp_path / "tiff")
    assert (tmp_path / "tiff" / "sxdm_maps_strain.tif") in paths


@pytest.fixture
def results_file(processed, tmp_path):
    path = tmp_path / "results.h5"
    write_results(path, processed.maps(), processed.setup, processed.accumulator,
                  extra_attrs={"status": "complete", "series_id": 7, "frames_received": 2160,
                               "frames_processed": 2160, "frames_rejected": 0,
                               "frames_dropped": 0, "operando": {"voltage_V": 4.05}})
    return path


def test_results_file_shows_maps_and_histograms(qtbot, results_file, processed):
    w = ViewerWindow(ResultsFile(results_file), FileHistograms(results_file), refresh_hz=20)
    qtbot.addWidget(w)
    w.show()
    w.start()
    try:
        qtbot.waitUntil(lambda: w.model.state is not None, timeout=WAIT_MS)
        state = w.model.state
        np.testing.assert_array_equal(state.arrays["strain"], processed.maps().strain)
        assert state.final and state.header.series_id == 7
        assert w.model.operando[0].channels == {"voltage_V": (4.05, "")}
        row, col = (int(v) for v in np.argwhere(state.arrays["mask"])[0])
        click_pixel(qtbot, w, row, col, panel="intensity")
        qtbot.waitUntil(lambda: w.inspector.histogram_point == row * state.shape[1] + col,
                        timeout=WAIT_MS)
        histogram = processed.accumulator.histogram[row * state.shape[1] + col]
        shown = w.inspector.projections[0].image.image               # log10(1 + qx-qy).T
        expected = histogram.reshape(processed.setup.grid.bins).sum(axis=2).T
        np.testing.assert_allclose(shown, np.log10(1 + expected), rtol=1e-5)
        assert w.inspector.projection_box.isVisible()
        assert "/entry/qspace" in w.inspector.histogram_note.text()
        assert w.banner.isHidden()
    finally:
        w.stop()


def test_file_without_histograms_says_so(qtbot, processed, tmp_path):
    path = tmp_path / "maps_only.h5"
    write_results(path, processed.maps(), processed.setup)
    w = ViewerWindow(ResultsFile(path), FileHistograms(path))
    qtbot.addWidget(w)
    w.show()
    w.start()
    try:
        qtbot.waitUntil(lambda: w.model.state is not None, timeout=WAIT_MS)
        w.model.select_pixel(0, 0)
        assert "no q-space histograms" in w.inspector.histogram_note.text()
        assert np.isfinite(w.inspector.curve.getData()[1]).all()
    finally:
        w.stop()


def test_command_line(tmp_path, results_file):
    with pytest.raises(SystemExit):
        app.parse_args([])
    with pytest.raises(SystemExit):
        app.parse_args([str(results_file), "--connect", "tcp://127.0.0.1:5560"])
    with pytest.raises(SystemExit):
        app.parse_args([str(results_file), "--serve", "tcp://127.0.0.1:5561"])
    with pytest.raises(SystemExit):
        app.parse_args([str(tmp_path / "missing.h5")])
    args = app.parse_args(["--connect", "tcp://h:5560", "--serve", "tcp://h:5561"])
    assert args.connect == "tcp://h:5560" and args.serve == "tcp://h:5561"


def test_view_command_takes_a_screenshot_of_a_file_and_exits(results_file, tmp_path):
    """The real thing, in a process of its own (its own QApplication and event loop; the exit
    status also tells whether Qt shut down cleanly)."""
    shot = tmp_path / "shot.png"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    done = subprocess.run([sys.executable, "-m", "sxdm_stream.plugins.viewer.app",
                           str(results_file), "--screenshot", str(shot)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert shot.read_bytes()[:4] == b"\x89PNG"
