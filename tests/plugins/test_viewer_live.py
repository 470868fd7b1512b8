"""The viewer against a real live processor fed by the simulated detector, over loopback.

The window is grabbed as an image and read back: the colours of the strain panel, turned into
values through its colour bar, must follow the simulator's ground truth.
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import logging
import shutil
import threading

import numpy as np
import pytest
import zmq
from PySide6 import QtCore, QtGui

from sxdm_stream.plugins.viewer.pixels import PixelService
from sxdm_stream.plugins.viewer.subscriber import SnapshotFeed
from sxdm_stream.plugins.viewer.window import ViewerWindow
from sxdm_stream.runtime.processor import LiveProcessor
from sxdm_stream.simulators.scenarios import default_scenario
from sxdm_stream.simulators.sender import SimulatedDetector

WAIT_MS = 120_000
#: a copy of the screenshot, for people to look at
SCREENSHOT_COPY = "/tmp/sxdm_viewer_screenshot.png"


@pytest.fixture(scope="module")
def scenario():
    """A 24 x 24 map: big enough to look like a particle, small enough for a test."""
    return default_scenario(shape=(24, 24), n_angles=15, rocking_half_range_deg=0.3)


class Beamline:
    """A simulated detector and a live processor, started and stopped by the test."""

    def __init__(self, scenario, publish="tcp://127.0.0.1:*", serve=None) -> None:
        self.detector = SimulatedDetector(scenario, "tcp://127.0.0.1:*")
        try:
            self.processor = LiveProcessor(self.detector.endpoint, publish=publish, serve=serve)
        except zmq.ZMQError:
            self.detector.close()
            raise
        self.processor.start()
        self.senders: list[threading.Thread] = []
        self.abort = threading.Event()

    def send(self, **kwargs) -> None:
        t = threading.Thread(target=self.detector.send_series, daemon=True,
                             kwargs={**kwargs, "stop": self.abort})
        t.start()
        self.senders.append(t)

    def stop(self) -> None:
        """Stop the processor (its sockets close: viewers see it go) and the detector."""
        self.processor.stop()
        self.abort.set()
        for t in self.senders:
            t.join(60)
        self.detector.close()


def restarted(scenario, publish: str) -> Beamline | None:
    """A new beamline publishing on ``publish`` once its port is free again (None before)."""
    try:
        return Beamline(scenario, publish=publish)
    except zmq.ZMQError:
        return None


def window_for(qtbot, publish: str, serve: str | None = None) -> ViewerWindow:
    pixels = PixelService(serve) if serve else None
    w = ViewerWindow(SnapshotFeed(publish), pixels, refresh_hz=10, stale_after_s=2.0)
    qtbot.addWidget(w)
    w.resize(1800, 1000)
    w.show()
    w.start()
    return w


def displayed_values(window: ViewerWindow, key: str, image: QtGui.QImage, ratio: float):
    """Read a map back from a grab of the window, through the panel's colour bar.

    Returns the values (NaN where the screen shows no colour of the colour map: blank) and
    the RGB of every map pixel's centre on screen.
    """
    panel = window.maps.panels[key]
    lut = panel.colour_bar.colorMap().getLookupTable(nPts=256, alpha=False).astype(float)
    lo, hi = panel.colour_bar.levels()
    rows, cols = window.model.state.shape
    values, rgb = np.full((rows, cols), np.nan), np.zeros((rows, cols, 3))
    viewport = window.maps.viewport()
    for row in range(rows):
        for col in range(cols):
            scene = panel.image.mapToScene(QtCore.QPointF(col + 0.5, row + 0.5))
            where = viewport.mapTo(window, window.maps.mapFromScene(scene))
            colour = image.pixelColor(int(where.x() * ratio), int(where.y() * ratio))
            rgb[row, col] = colour.red(), colour.green(), colour.blue()
            distance = np.sum((lut - rgb[row, col]) ** 2, axis=1)
            if distance.min() < 3 * 6 ** 2:
                values[row, col] = lo + (hi - lo) * np.argmin(distance) / 255.0
    return values, rgb


def click_pixel(qtbot, window: ViewerWindow, row: int, col: int) -> None:
    scene = window.maps.panels["strain"].image.mapToScene(QtCore.QPointF(col + 0.5, row + 0.5))
    qtbot.mouseClick(window.maps.viewport(), QtCore.Qt.MouseButton.LeftButton,
                     pos=window.maps.mapFromScene(scene))


def test_strain_on_screen_follows_the_ground_truth(qtbot, scenario, tmp_path):
    beamline = Beamline(scenario, serve="tcp://127.0.0.1:*")
    window = window_for(qtbot, beamline.processor.publish_endpoint,
                        beamline.processor.serve_endpoint)
    try:
        # no end message: the series stays open, so the pixel service can still answer
        beamline.send(series_id=1, send_end=False)
        n_frames = scenario.scan.n_frames
        qtbot.waitUntil(lambda: window.model.state is not None and
                        window.model.state.stats.progress == (n_frames, n_frames),
                        timeout=WAIT_MS)
        state = window.model.state
        mask = state.arrays["mask"]
        truth = scenario.simulator.truth().strain(mask)

        row, col = (int(v) for v in np.argwhere(mask)[len(np.argwhere(mask)) // 2])
        click_pixel(qtbot, window, row, col)
        point = row * state.shape[1] + col
        qtbot.waitUntil(lambda: window.inspector.histogram_point == point, timeout=WAIT_MS)
        qtbot.waitUntil(lambda: window.inspector.projection_box.isVisible(), timeout=WAIT_MS)
        np.testing.assert_allclose(window.inspector.curve.getData()[1],
                                   state.arrays["intensity_per_angle"][:, row, col])
        assert window.inspector.value_texts()["mask"] == "inside"
        assert "pixel service" in window.inspector.histogram_note.text()

        pixmap = window.grab()
        ratio = pixmap.devicePixelRatio()
        shot = tmp_path / "viewer.png"
        assert pixmap.save(str(shot), "PNG")
        try:
            shutil.copyfile(shot, SCREENSHOT_COPY)
        except OSError as exc:                         # a convenience, not part of the test
            logging.getLogger(__name__).warning("could not copy the screenshot: %s", exc)
        shown, rgb = displayed_values(window, "strain", pixmap.toImage(), ratio)
        visible = np.isfinite(shown)
        assert visible[mask].mean() > 0.95, "masked-in pixels show colours of the strain map"
        outside = ~mask & ~((np.arange(mask.shape[0])[:, None] == row)
                            & (np.arange(mask.shape[1])[None, :] == col))
        assert (rgb[outside] > 250).all(), "masked pixels are blank (white)"
        both = visible & mask
        r = np.corrcoef(shown[both], truth[both])[0, 1]
        assert r > 0.95, f"strain on screen vs ground truth: r = {r:.3f}"
    finally:
        window.stop()
        beamline.stop()


def test_banner_when_the_processor_dies_and_recovery(qtbot, small_scenario):
    first = Beamline(small_scenario)
    endpoint = first.processor.publish_endpoint
    window = window_for(qtbot, endpoint)
    second = None
    try:
        first.send(series_id=1)
        qtbot.waitUntil(lambda: window.model.state is not None and window.model.state.final,
                        timeout=WAIT_MS)
        assert window.banner.isHidden()
        first.stop()                                   # the processor goes away
        qtbot.waitUntil(lambda: window.banner.isVisible(), timeout=WAIT_MS)
        assert "not reachable" in window.banner.text() and not window.model.reachable

        beamlines = []                                 # it comes back, on the same endpoint
        qtbot.waitUntil(lambda: beamlines.append(restarted(small_scenario, endpoint))
                        or beamlines[-1] is not None, timeout=WAIT_MS)
        second = beamlines[-1]
        second.send(series_id=2)
        qtbot.waitUntil(lambda: window.model.state.header.series_id == 2, timeout=WAIT_MS)
        qtbot.waitUntil(lambda: window.banner.isHidden(), timeout=WAIT_MS)
        assert window.model.reachable
    finally:
        window.stop()
        first.stop()
        if second is not None:
            second.stop()
