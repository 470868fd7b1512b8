"""The viewer's parts that hold no widget: model, mailbox, summaries, levels, exports."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pytest
import tifffile
from PySide6 import QtGui

from sxdm_stream.core.maps import MAP_FIELDS
from sxdm_stream.plugins.viewer.distributions import pole_points
from sxdm_stream.plugins.viewer.export import export_tiffs
from sxdm_stream.plugins.viewer.inspector import format_value
from sxdm_stream.plugins.viewer.model import (IDLE, LOST, OK, STALE, MapState, ViewerModel,
                                              electrochemistry_channels, operando_point)
from sxdm_stream.plugins.viewer.panels import colour_levels, nice_length, rgba_image
from sxdm_stream.plugins.viewer.pixels import histogram_axes, histogram_projections
from sxdm_stream.plugins.viewer.status import format_rejected, format_seconds
from sxdm_stream.plugins.viewer.subscriber import SnapshotMailbox
from sxdm_stream.messages import SnapshotHeader
from sxdm_stream.sinks.publish import Snapshot, decode_snapshot, encode_snapshot


@pytest.fixture
def processed(small_processed):
    return small_processed


def snapshot(processor, **info) -> Snapshot:
    """A snapshot as a processor publishes it (encoded and decoded: the real wire format)."""
    info = {"seq": 1, "series_id": 1, "complete": False,
            "scan": processor.setup.scan.describe(), "stats": {}, **info}
    return decode_snapshot(encode_snapshot(processor.maps(), info))


def test_map_state_places_pixels_in_micrometres(processed):
    state = MapState.from_snapshot(snapshot(processed))
    scan = processed.setup.scan
    x0, y0, sx, sy = state.pixel_grid()
    assert state.shape == scan.shape
    assert (x0, y0) == (scan.extents_um[1][0], scan.extents_um[0][0])
    assert sx == pytest.approx(np.diff(scan.axis_um(1))[0])
    assert sy == pytest.approx(np.diff(scan.axis_um(0))[0])
    assert state.position_um(3, 5) == pytest.approx((scan.axis_um(0)[3], scan.axis_um(1)[5]))
    assert state.motor(0) == "piy" and state.motor(1) == "pix"
    np.testing.assert_allclose(state.rocking_angles, scan.rocking_angles)
    assert state.units("strain") == "µstrain" and state.units("d_spacing") == "Å"


def test_values_at_a_pixel_carry_errors_and_units(processed):
    state = MapState.from_snapshot(snapshot(processed))
    row, col = np.argwhere(state.arrays["mask"])[0]
    values = {label: (v, e, u) for label, v, e, u in state.values_at(row, col)}
    assert values["strain"][0] == pytest.approx(state.arrays["strain"][row, col])
    assert values["strain"][1] == pytest.approx(state.arrays["strain_stderr"][row, col])
    assert values["d"][2] == "Å" and values["tilt"][2] == "°"
    assert format_value(*values["strain"]).endswith("µstrain") and "±" in format_value(
        *values["strain"])
    assert format_value(float("nan"), None, "Å") == "— (masked)"


def test_operando_point_summarises_a_completed_map(processed):
    header = {"operando": {"voltage": {"value": 4.2, "units": "V"}, "current_mA": 0.5,
                           "note": "ignored", "flag": True}}
    state = MapState.from_snapshot(snapshot(processed, complete=True, **header))
    point = operando_point(state)
    mask = state.arrays["mask"]
    assert point.mean_d == pytest.approx(np.mean(state.arrays["d_spacing"][mask]))
    assert point.strain_spread == pytest.approx(np.std(state.arrays["strain"][mask]))
    assert point.max_tilt == pytest.approx(np.nanmax(state.arrays["tilt_altitude"]))
    assert point.channels == {"voltage": (4.2, "V"), "current_mA": (0.5, "")}
    assert electrochemistry_channels(SnapshotHeader()) == {}


def test_model_adds_one_operando_point_per_completed_series(processed):
    model = ViewerModel("test")
    appended, drawn = [], []
    model.operandoAppended.connect(appended.append)
    model.mapsChanged.connect(lambda: drawn.append(model.state.header.seq))
    running = snapshot(processed, seq=1)
    done = snapshot(processed, seq=2, complete=True)
    again = snapshot(processed, seq=3, complete=True)          # the same series, sent twice
    nxt = snapshot(processed, seq=4, series_id=2)
    model.show_snapshots([(running, 0.0), (done, 0.0), (again, 0.0), (nxt, 0.0)])
    assert len(appended) == 1 and list(model.operando) == appended
    assert drawn == [4], "only the newest snapshot is drawn, once"
    model.show_snapshots([(snapshot(processed, seq=5, series_id=2, complete=True), 0.0)])
    assert [p.series_id for p in model.operando] == [1, 2]


def test_connection_levels(processed):
    model = ViewerModel("tcp://x:1", stale_after_s=5.0)
    levels = []
    model.connectionChanged.connect(lambda level, _m: levels.append(level))
    t0 = model._started_s
    assert model.check_connection(None, t0 + 1) == IDLE     # nothing to say yet
    assert model.check_connection(True, t0 + 6) == IDLE     # connected, waiting for a scan
    assert model.check_connection(None, t0 + 6) == LOST     # silent and no connection known
    model.show_snapshots([(snapshot(processed), t0 + 7)])
    assert model.connection[0] == OK and model.reachable
    assert model.check_connection(True, t0 + 8) == OK
    assert model.check_connection(True, t0 + 13) == STALE   # connected, mid-scan, silent
    assert model.check_connection(False, t0 + 13) == LOST   # the connection dropped
    assert "not reachable" in model.connection[1] and not model.reachable
    model.show_snapshots([(snapshot(processed, complete=True), t0 + 20)])
    assert model.check_connection(True, t0 + 40) == OK      # a finished scan is silent
    assert LOST in levels and levels[-1] == OK


def test_select_pixel_ignores_pixels_outside_the_map(processed):
    model = ViewerModel("test")
    selected = []
    model.pixelSelected.connect(lambda r, c: selected.append((r, c)))
    model.select_pixel(1, 1)                                # no maps yet
    model.show_snapshots([(snapshot(processed), 0.0)])
    model.select_pixel(99, 0)
    model.select_pixel(2, 3)
    assert selected == [(2, 3)] and model.selected == (2, 3)


def test_mailbox_keeps_the_newest_and_every_completed_map():
    box = SnapshotMailbox()
    snaps = [Snapshot(SnapshotHeader(seq=i, final=i in (2, 4)), {}) for i in range(6)]
    for s in snaps:
        box.put(s, float(s.header.seq))
    assert [s.header.seq for s, _t in box.take()] == [2, 4, 5]
    assert box.take() == []
    box.put(snaps[4], 0.0)
    assert [s.header.seq for s, _t in box.take()] == [4], "not twice"


def test_colour_levels():
    a = np.linspace(-50.0, 200.0, 1001)
    a[::7] = np.nan
    lo, hi = colour_levels(a, "robust")
    assert -50 < lo < -45 and 195 < hi < 200
    lo, hi = colour_levels(a, "symmetric")
    assert lo == -hi and 195 < hi < 200
    assert colour_levels(a, "zero")[0] == 0.0
    assert colour_levels(a, "cyclic") == (0.0, 360.0)
    assert colour_levels(np.full((3, 3), np.nan), "robust") == (0.0, 1.0)
    lo, hi = colour_levels(np.full((3, 3), 4.7), "robust")
    assert lo < 4.7 < hi
    big = np.random.default_rng(0).normal(size=(1000, 1000))
    lo, hi = colour_levels(big, "robust")
    assert lo == pytest.approx(-2.33, abs=0.1) and hi == pytest.approx(2.33, abs=0.1)


def test_rgba_image_makes_masked_pixels_transparent():
    rgb = np.array([[[1.0, 0.5, 0.0], [np.nan, np.nan, np.nan]]])
    out = rgba_image(rgb)
    assert out.dtype == np.uint8 and out.shape == (1, 2, 4)
    assert tuple(out[0, 0]) == (255, 127, 0, 255) and out[0, 1, 3] == 0


def test_nice_length():
    assert nice_length(3.9) == 0.5
    assert nice_length(40) == 10
    assert nice_length(9) == 2
    assert nice_length(0) == 1.0


def test_pole_points_follow_tilt_and_direction(processed):
    state = MapState.from_snapshot(snapshot(processed))
    x, y, colour = pole_points(state)
    mask = np.isfinite(state.arrays["tilt_altitude"])
    assert len(x) == mask.sum()
    np.testing.assert_allclose(np.hypot(x, y), state.arrays["tilt_altitude"][mask])
    np.testing.assert_allclose(np.degrees(np.arctan2(y, x)) % 360,
                               state.arrays["tilt_azimuth"][mask], atol=1e-9)
    assert colour.min() >= 0 and colour.max() < 36 * 4
    assert len(pole_points(state, max_points=10)[0]) <= 20


def test_histogram_projections_and_axes():
    h = np.zeros((4, 5, 6))
    h[1, 2, 3] = 7.0
    proj = histogram_projections(h)
    assert proj[(0, 1)].shape == (4, 5) and proj[(0, 1)][1, 2] == 7
    assert proj[(0, 2)][1, 3] == 7 and proj[(1, 2)][2, 3] == 7
    axes = histogram_axes({"grid": {"lo": [1, 2, 3], "step": [0.1, 0.2, 0.5], "bins": [4, 5, 6]}},
                          h.shape)
    np.testing.assert_allclose(axes[2], 3 + 0.5 * np.arange(6))
    assert [len(a) for a in histogram_axes({}, h.shape)] == [4, 5, 6]


def test_tiff_export_is_calibrated_and_oriented_as_shown(processed, tmp_path):
    state = MapState.from_snapshot(snapshot(processed))
    paths = export_tiffs(state, tmp_path, "scan")
    assert {p.name for p in paths} == {f"scan_{n}.tif" for n in MAP_FIELDS}
    with tifffile.TiffFile(tmp_path / "scan_strain.tif") as tif:
        data = tif.asarray()
        assert tif.imagej_metadata["unit"] == "um"
        xres = tif.pages[0].tags["XResolution"].value
    _x0, _y0, sx, _sy = state.pixel_grid()
    assert xres[0] / xres[1] == pytest.approx(1 / sx, rel=1e-4)
    np.testing.assert_array_equal(data, state.arrays["strain"][::-1].astype(np.float32))
    with tifffile.TiffFile(tmp_path / "scan_misorientation.tif") as tif:
        assert tif.asarray().shape == state.shape + (3,)


def test_status_formatting():
    assert format_rejected({}) == "0"
    assert format_rejected({"bad_position": 2, "wrong_dtype": 1}) == \
        "3 (bad_position 2, wrong_dtype 1)"
    assert format_seconds(None) == "–" and format_seconds(0.0123) == "12 ms"
    assert format_seconds(3.25) == "3.2 s" and format_seconds(600) == "10 min"


def test_installed_pyside_keeps_reference_counts(qapp):
    """PySide6 6.12.0 drops a reference to None in every QPainter.setPen: pyqtgraph calls it on
    every repaint, and Python < 3.12 aborts ("deallocating None") once None's count runs out,
    at the latest at exit. pyproject pins PySide6-Essentials below 6.12 for this."""
    image = QtGui.QImage(8, 8, QtGui.QImage.Format.Format_ARGB32)
    painter = QtGui.QPainter(image)
    pen = QtGui.QPen(QtGui.QColor("red"))
    before = sys.getrefcount(None)
    for _ in range(2000):
        painter.setPen(pen)
    painter.end()
    assert sys.getrefcount(None) > before - 100, "this PySide6 loses references to None"
