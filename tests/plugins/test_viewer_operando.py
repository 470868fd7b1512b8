"""The operando panel, fed operando records through a real PUB socket and the viewer's own
subscriber, as a processor publishes them: what it plots, lists and signals."""

from __future__ import annotations

import math
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pytest
from PySide6 import QtCore, QtGui

from sxdm_stream.plugins.viewer.model import MAX_OPERANDO, ViewerModel
from sxdm_stream.plugins.viewer.operando import PARTICLE_COLOURS, OperandoPanel
from sxdm_stream.plugins.viewer.operando_history import NO_PHASE, TIME
from sxdm_stream.plugins.viewer.subscriber import SnapshotFeed, SnapshotMailbox
from sxdm_stream.plugins.viewer.window import ViewerWindow
from sxdm_stream.sinks.publish import encode_operando_record, encode_snapshot

WAIT_MS = 20_000
T0 = 1_700_000_000.0          # unix time of the first map
N_RECORDS = 20
APPEARS = 10                  # particle 5 appears in this record
TRANSFORMS = 12               # particle 2 has a second phase from this record on
ALARM_AT = 15
ALARM = "particle 2: d of phase 2 changes 3x faster than expected"


def particle(pid: int, i: int) -> dict:
    """Particle ``pid`` in record ``i``: values that tell particle, record and phase apart."""
    phases = [{"phase_id": 1, "d_a": 2.0 + 0.01 * pid + 1e-4 * i, "fraction": 1.0}]
    if pid == 2 and i >= TRANSFORMS:
        grown = 0.1 * (i - TRANSFORMS + 1)
        phases = [{"phase_id": 1, "d_a": 2.02 + 1e-4 * i, "fraction": 1 - grown},
                  {"phase_id": 2, "d_a": 1.95 - 1e-4 * i, "fraction": grown}]
    return {"particle_id": pid, "label": pid, "area_um2": 1.5, "centroid_row_um": pid,
            "centroid_col_um": 2.0, "sample_row_um": pid, "sample_col_um": 2.0,
            "intensity": 1000.0 * pid + i, "mean_d_a": phases[0]["d_a"],
            "mean_strain": 10.0 * i,
            "strain_std": None if (pid, i) == (1, 3) else 100.0 + 10 * pid + i,
            "max_tilt_deg": 0.2 * pid, "mean_tilt_deg": 0.1 * pid + 0.01 * i,
            "mean_tilt_azimuth_deg": 45.0, "tilt_spread_deg": 0.01, "n_domains": len(phases),
            "phases": phases}


def record(i: int) -> dict:
    """Record ``i`` as the processor publishes it (``OperandoRecord.to_json()``)."""
    pids = [1, 2] + ([5] if i >= APPEARS else [])
    return {
        "time": T0 + 600.0 * i, "series_id": 100 + i, "series_unique_id": f"u{i}",
        "correlation_id": None, "complete": True,
        "summary": {"mean_d": 2.0 + 1e-4 * i, "d_std": 0.001, "mean_strain": 1.0,
                    "strain_spread": 120.0 + i, "max_tilt": 0.5, "mean_tilt": 0.2 + 0.001 * i,
                    "intensity": 5e4, "mask_pixels": 80.0},
        "units": {"mean_d": "angstrom"},
        "operando": {"voltage": {"value": 3.0 + 0.05 * i, "units": "V"},
                     "capacity": {"value": 0.1 * i, "units": "mAh"}},
        "registration": {"shift_px": [0, 0], "drift_px": [0, 0], "drift_um": [0.0, 0.0],
                         "correlation": 0.99},
        "phases": [{"phase_id": 1, "d_a": 2.0, "fraction": 0.9}],
        "particles": [particle(pid, i) for pid in pids],
        "mixed_pixels": 0,
        "events": [{"kind": "appear", "particle_ids": [5], "message": "particle 5 appeared"}]
        if i == APPEARS else [],
        "alarms": [{"rule": "d_rate", "particle_id": 2, "phase_id": 2, "value": 0.003,
                    "threshold": 0.001, "message": ALARM}] if i == ALARM_AT else [],
    }


def hours(n: int = N_RECORDS) -> np.ndarray:
    return 600.0 * np.arange(n) / 3600.0


def column(values) -> np.ndarray:
    return np.array([math.nan if v is None else v for v in values], float)


def plotted(panel, key) -> tuple[np.ndarray, np.ndarray]:
    """The points a curve draws: the maps that have the value."""
    x, y = panel.curves[key].getData()
    return np.asarray(x if x is not None else [], float), np.asarray(y if y is not None else [],
                                                                     float)


def joined(panel, key) -> list[bool]:
    """Whether the line goes from each drawn point to the next."""
    return list(panel.curves[key].opts["connect"])


@pytest.fixture
def window(qtbot, publisher):
    w = ViewerWindow(SnapshotFeed(publisher.endpoint), refresh_hz=20, stale_after_s=2.0)
    qtbot.addWidget(w)
    w.resize(1366, 768)
    w.show()
    w.tabs.setCurrentWidget(w.operando)
    w.start()
    yield w
    w.stop()


def subscribe(qtbot, publisher, window, processor) -> None:
    """Publish a running snapshot until the window shows it: the viewer's SUB socket has then
    joined (its two subscriptions travel together), so no record sent afterwards is lost."""
    parts = encode_snapshot(processor.maps(), {"seq": 1, "series_id": 1, "complete": False,
                                               "scan": processor.setup.scan.describe()})

    def joined() -> bool:
        if window.model.state is None:
            publisher.send(parts)
            return False
        return True

    qtbot.waitUntil(joined, timeout=WAIT_MS)


def publish_records(qtbot, publisher, window, records) -> None:
    """Publish records one by one, each once the previous one is in, as maps complete."""
    for body in records:
        n = len(window.model.records)
        publisher.send(encode_operando_record(body))
        qtbot.waitUntil(lambda: len(window.model.records) == n + 1, timeout=WAIT_MS)


@pytest.fixture
def fed(qtbot, publisher, window, small_processed):
    subscribe(qtbot, publisher, window, small_processed)
    publish_records(qtbot, publisher, window, [record(i) for i in range(N_RECORDS)])
    return window


def test_curves_are_the_records_values_per_particle_and_phase(fed):
    panel, records = fed.operando, [record(i) for i in range(N_RECORDS)]
    by_id = [{p["particle_id"]: p for p in r["particles"]} for r in records]
    x, y = plotted(panel, ("d", 1, 1))
    np.testing.assert_allclose(x, hours())
    assert all(joined(panel, ("d", 1, 1))[:-1])
    np.testing.assert_allclose(y, [p[1]["phases"][0]["d_a"] for p in by_id])
    x, y = plotted(panel, ("strain_spread", 1, None))
    expected = column(p[1]["strain_std"] for p in by_id)
    np.testing.assert_allclose(x, np.delete(hours(), 3))
    np.testing.assert_allclose(y, np.delete(expected, 3))
    assert joined(panel, ("strain_spread", 1, None)) == [True] * 2 + [False] + [True] * 15 + \
        [False], "a null in a record is a gap: the line stops, no interpolation"
    np.testing.assert_allclose(plotted(panel, ("tilt", 2, None))[1],
                               [p[2]["mean_tilt_deg"] for p in by_id])
    np.testing.assert_allclose(plotted(panel, ("intensity", 2, None))[1],
                               [p[2]["intensity"] for p in by_id])
    np.testing.assert_allclose(plotted(panel, ("d", None, None))[1],
                               [r["summary"]["mean_d"] for r in records])
    np.testing.assert_allclose(plotted(panel, ("channel:capacity", None, None))[1],
                               [r["operando"]["capacity"]["value"] for r in records])
    assert panel.curves[("d", 1, 1)].name() == "particle 1 · phase 1"
    assert "20 so far; 3 particles; electrochemistry: voltage, capacity" in panel.note.text()


def test_an_appearing_particle_and_a_new_phase_leave_gaps_before(fed):
    panel = fed.operando
    x, y = plotted(panel, ("d", 5, 1))
    np.testing.assert_allclose(x, hours()[APPEARS:]), "nothing before it appeared"
    np.testing.assert_allclose(y, [2.05 + 1e-4 * i for i in range(APPEARS, N_RECORDS)])
    for key in (("strain_spread", 5, None), ("intensity", 5, None)):
        np.testing.assert_allclose(plotted(panel, key)[0], hours()[APPEARS:])
    x, y = plotted(panel, ("d", 2, 2))
    np.testing.assert_allclose(x, hours()[TRANSFORMS:])
    np.testing.assert_allclose(y, [1.95 - 1e-4 * i for i in range(TRANSFORMS, N_RECORDS)])
    x, fraction = plotted(panel, ("fraction", 2, 2))
    np.testing.assert_allclose(x, hours())
    expected = [0.0] * TRANSFORMS + [0.1 * (i - TRANSFORMS + 1)
                                     for i in range(TRANSFORMS, N_RECORDS)]
    np.testing.assert_allclose(fraction, expected)
    assert ("fraction", 2, 1) not in panel.curves, "the first phase has no fraction curve"
    rows = {panel.particle_list.topLevelItem(i).text(0): panel.particle_list.topLevelItem(i)
            for i in range(panel.particle_list.topLevelItemCount())}
    assert set(rows) == {"particle 1", "particle 2", "particle 5"}
    assert rows["particle 2"].text(1) == "80 %" and rows["particle 1"].text(1) == "0 %"


def test_x_axis_follows_an_electrochemistry_channel(fed):
    panel = fed.operando
    voltages = [record(i)["operando"]["voltage"]["value"] for i in range(N_RECORDS)]
    assert [panel.x_choice.itemData(i) for i in range(panel.x_choice.count())] == \
        [TIME, "voltage", "capacity"]
    panel.x_choice.setCurrentIndex(1)
    panel.x_choice.activated.emit(1)                     # as a choice by hand does
    for key in (("fraction", 2, 2), ("d", None, None), ("tilt", 1, None)):
        np.testing.assert_allclose(plotted(panel, key)[0], voltages)
    np.testing.assert_allclose(plotted(panel, ("d", 5, 1))[0], voltages[APPEARS:])
    assert panel.plots["d"].getAxis("bottom").labelText == "voltage (V)"
    panel.set_axis(TIME)
    np.testing.assert_allclose(plotted(panel, ("d", 5, 1))[0], hours()[APPEARS:])


def test_alarms_are_listed_newest_first_and_flagged(qtbot, fed):
    panel, tabs = fed.operando, fed.tabs
    texts = panel.notice_texts()
    assert len(texts) == 2 and ALARM in texts[0] and "particle 5 appeared" in texts[1]
    assert "scan 115" in texts[0] and "ALARM d_rate" in texts[0] and "(2.50 h)" in texts[0]
    assert panel.alarm.isVisible() and panel.alarm.text() == "⚠ 1 alarm"
    assert tabs.tabText(tabs.indexOf(panel)) == "Operando ⚠ 1"
    qtbot.mouseClick(panel.acknowledge, QtCore.Qt.MouseButton.LeftButton)
    assert not panel.alarm.isVisible() and tabs.tabText(tabs.indexOf(panel)) == "Operando"


def colour_pixels(widget, colour: str) -> int:
    """How many pixels of a grab of ``widget`` have ``colour`` (give or take antialiasing)."""
    image = widget.grab().toImage().convertToFormat(QtGui.QImage.Format.Format_RGB888)
    ptr = image.constBits()
    rgb = np.frombuffer(ptr, np.uint8).reshape(image.height(), image.bytesPerLine())
    rgb = rgb[:, :3 * image.width()].reshape(image.height(), image.width(), 3).astype(int)
    target = QtGui.QColor(colour)
    distance = np.abs(rgb - [target.red(), target.green(), target.blue()]).sum(axis=2)
    return int((distance < 12).sum())


def test_hiding_a_particle_hides_its_curves(qtbot, fed):
    panel = fed.operando
    shown_before = colour_pixels(panel.graphics, PARTICLE_COLOURS[1])     # particle 2's
    assert shown_before > 50, "particle 2 is on screen"
    item = next(panel.particle_list.topLevelItem(i)
                for i in range(panel.particle_list.topLevelItemCount())
                if panel.particle_list.topLevelItem(i).text(0) == "particle 2")
    item.setCheckState(0, QtCore.Qt.CheckState.Unchecked)                # as a click does
    mine = [c for (_plot, pid, _phase), c in panel.curves.items() if pid == 2]
    others = [c for (_plot, pid, _phase), c in panel.curves.items() if pid != 2]
    assert len(mine) == 6 and not any(c.isVisible() for c in mine)
    assert all(c.isVisible() for c in others)
    assert colour_pixels(panel.graphics, PARTICLE_COLOURS[1]) == 0
    panel.set_particle_shown(2, True)
    assert all(c.isVisible() for c in mine) and item.checkState(0) == QtCore.Qt.CheckState.Checked


def test_fits_a_small_screen(fed):
    hint = fed.minimumSizeHint()
    assert hint.width() <= 1366 and hint.height() <= 768
    panel = fed.operando
    assert fed.width() <= 1366 and fed.height() <= 768
    viewport = panel.scroll.viewport()
    assert viewport.height() >= 300 and viewport.width() >= 400, "room for the plots"
    assert panel.graphics.height() >= 170 * len(panel.plots), "each plot readable (scrolled)"
    assert panel.particle_list.height() >= 60 and panel.notices.height() >= 60


def test_a_hidden_panel_draws_when_shown(qtbot, publisher, window, small_processed):
    window.tabs.setCurrentWidget(window.inspector)
    subscribe(qtbot, publisher, window, small_processed)
    publish_records(qtbot, publisher, window, [record(i) for i in range(3)])
    panel = window.operando
    assert panel.redraws == 0 and ("d", 1, 1) not in panel.curves
    window.tabs.setCurrentWidget(panel)
    np.testing.assert_allclose(plotted(panel, ("d", 1, 1))[0], hours(3))


def test_the_model_keeps_a_bounded_history_and_skips_records_without_time(caplog):
    model = ViewerModel("test")
    announced = []
    model.operandoRecorded.connect(announced.append)
    model.add_operando_records([{"time": T0 + i, "series_id": i}
                                for i in range(MAX_OPERANDO + 50)])
    assert len(model.records) == MAX_OPERANDO and len(announced) == MAX_OPERANDO + 50
    assert model.records[0].series_id == 50 and model.operando_origin_s == T0
    model.add_operando_records([{"series_id": 1}])
    assert len(announced) == MAX_OPERANDO + 50 and "without a time" in caplog.text
    entry = model.records[-1]
    assert entry.particles.size == 0 and entry.summary == {} and entry.channels == {}


def test_records_replace_the_points_of_final_snapshots(small_processed):
    from sxdm_stream.sinks.publish import decode_snapshot
    model = ViewerModel("test")
    final = decode_snapshot(encode_snapshot(small_processed.maps(), {
        "seq": 1, "series_id": 1, "complete": True, "time": T0 - 5,
        "operando": {"voltage": {"value": 3.9, "units": "V"}}}))
    model.show_snapshots([(final, 0.0)])
    assert [e.channels for e in model.operando_entries()] == [{"voltage": (3.9, "V")}]
    assert model.operando_origin_s == T0 - 5
    model.add_operando_records([record(0), record(1)])
    assert [e.series_id for e in model.operando_entries()] == [100, 101]
    assert model.operando_origin_s == T0, "time zero is the first record"


def test_older_records_plot_what_they_carry(qtbot):
    """A record of an older processor: particles without ``particle_id`` (skipped: their
    label is not stable across maps) or without phases (their mean d), no events, nulls."""
    model = ViewerModel("test")
    panel = OperandoPanel(model)
    qtbot.addWidget(panel)
    panel.show()
    old = {"time": T0, "series_id": 1, "complete": True, "summary": {"mean_d": None},
           "operando": {"voltage": 4.0}, "particles": None}
    rows = [{"label": 1, "intensity": 5.0, "mean_d_a": 2.1},
            {"particle_id": 7, "intensity": 6.0, "mean_d_a": 2.2, "strain_std": 50.0,
             "phases": []}]
    model.add_operando_records([old, {**old, "time": T0 + 3600, "particles": rows}])
    assert [list(v) for v in plotted(panel, ("d", 7, NO_PHASE))] == [[1.0], [2.2]]
    assert plotted(panel, ("d", None, None))[1].size == 0, "a summary all null: nothing"
    assert panel.curves[("d", 7, NO_PHASE)].name() == "particle 7"
    assert not any(key[0] == "fraction" for key in panel.curves)
    assert {key[1] for key in panel.curves} == {None, 7}
    np.testing.assert_allclose(plotted(panel, ("channel:voltage", None, None))[1], [4.0, 4.0])
    assert panel.notice_texts() == [] and not panel.alarm.isVisible()


def test_mailbox_keeps_every_record_until_taken():
    mailbox = SnapshotMailbox(max_records=3)
    for i in range(4):
        mailbox.put_record(record(i))
    assert [r["series_id"] for r in mailbox.take_records()] == [101, 102, 103]
    assert mailbox.take_records() == [] and mailbox.take() == []
