"""The analysis tab: the particles found in the maps, the drift of the sample per rocking angle
and the q-ROIs (those in use and the processor's suggestion for the next scan).

Everything comes from the snapshot's header (a few kB), so a redraw is cheap; it is still done
only while the tab is in front, and only when what it shows changed. Clicking a particle's row
highlights the particle on the maps and selects its centroid pixel for the pixel inspector.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtWidgets

from sxdm_stream import PARTICLE_FIELDS

from . import derived
from .model import ViewerModel

#: colours of the drift components (row = slow motor, col = fast motor)
_ROW_COLOUR, _COL_COLOUR, _DOUBT_COLOUR = "#1f77b4", "#ff7f0e", "#d62728"


class AnalysisPanel(QtWidgets.QWidget):
    """Particle table, drift plot and q-ROI text, following the model's snapshots."""

    def __init__(self, model: ViewerModel, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = model
        self.fields = list(PARTICLE_FIELDS)
        self.table = QtWidgets.QTableWidget(0, len(self.fields))
        self.table.setHorizontalHeaderLabels([derived.particle_header(f) for f in self.fields])
        self.table.verticalHeader().hide()
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QtWidgets.QAbstractItemView.SelectionMode.SingleSelection)
        self.table.itemSelectionChanged.connect(self._row_selected)
        self.particle_note = QtWidgets.QLabel("no particles yet")
        self.drift_plot = self._build_drift_plot()
        self.drift_note = QtWidgets.QLabel("no drift correction in this scan")
        self.roi_text = QtWidgets.QPlainTextEdit()
        self.roi_text.setReadOnly(True)
        self.roi_text.setLineWrapMode(QtWidgets.QPlainTextEdit.LineWrapMode.NoWrap)
        self._build_layout()
        self._shown: tuple | None = None
        model.mapsChanged.connect(self.refresh)

    def _build_drift_plot(self) -> pg.PlotWidget:
        plot = pg.PlotWidget()
        plot.setLabel("left", "sample shift (µm)")
        plot.setLabel("bottom", "rocking angle (°)")
        plot.showGrid(x=True, y=True, alpha=0.3)
        plot.getAxis("left").enableAutoSIPrefix(False)
        plot.setMinimumHeight(160)
        plot.addLegend(offset=(5, 5))
        self.row_curve = plot.plot([], [], pen=pg.mkPen(_ROW_COLOUR, width=2), symbol="o",
                                   symbolSize=6, symbolBrush=_ROW_COLOUR, symbolPen=None,
                                   name="row")
        self.col_curve = plot.plot([], [], pen=pg.mkPen(_COL_COLOUR, width=2), symbol="s",
                                   symbolSize=6, symbolBrush=_COL_COLOUR, symbolPen=None,
                                   name="col")
        self.doubtful = pg.ScatterPlotItem(symbol="x", size=13, pen=pg.mkPen(_DOUBT_COLOUR,
                                                                              width=2),
                                           brush=None, name="low confidence")
        plot.addItem(self.doubtful)
        return plot

    def _build_layout(self) -> None:
        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(_bold("particles (click a row to show it on the maps)"))
        layout.addWidget(self.particle_note)
        layout.addWidget(self.table, 3)
        layout.addWidget(_bold("drift of the sample per rocking angle (maps are corrected)"))
        layout.addWidget(self.drift_note)
        layout.addWidget(self.drift_plot, 3)
        layout.addWidget(_bold("q-space ROIs"))
        layout.addWidget(self.roi_text, 2)

    # ---- updates ------------------------------------------------------------------------------
    def showEvent(self, event) -> None:
        super().showEvent(event)
        self.refresh()

    def refresh(self) -> None:
        """Show the newest snapshot's analysis (only while visible, only what changed)."""
        state = self.model.state
        if state is None or not self.isVisible():
            return
        header = state.header
        key = (header.particles, header.drift, header.q_rois, header.roi_suggestion,
               state.rocking_angles.tolist())
        if key == self._shown:
            return
        self._shown = key
        self.show_particles(derived.particles(state))
        self.show_drift(derived.drift(state))
        text = "\n\n".join(t for t in (derived.roi_text(state), derived.suggestion_text(state))
                           if t)
        self.roi_text.setPlainText(text or "no q-ROI in use and no suggestion yet (the "
                                           "suggestion comes at the end of a scan)")

    def show_particles(self, records: list[dict]) -> None:
        """Fill the table, keeping the selected particle selected."""
        selected = self.model.particle
        self.table.blockSignals(True)
        self.table.setRowCount(len(records))
        for row, record in enumerate(records):
            for col, name in enumerate(self.fields):
                item = QtWidgets.QTableWidgetItem(
                    derived.format_particle_value(name, record.get(name)))
                item.setTextAlignment(QtCore.Qt.AlignmentFlag.AlignRight
                                      | QtCore.Qt.AlignmentFlag.AlignVCenter)
                item.setData(QtCore.Qt.ItemDataRole.UserRole, record.get("label"))
                self.table.setItem(row, col, item)
            if record.get("label") == selected:
                self.table.selectRow(row)
        self.table.blockSignals(False)
        self.table.resizeColumnsToContents()
        labels = {r.get("label") for r in records}
        if selected is not None and selected not in labels:
            self.model.select_particle(None)
        self.particle_note.setText(f"{len(records)} particle(s)" if records else
                                   "no particle found (yet)")

    def show_drift(self, drift: dict | None) -> None:
        """Row and col shift per rocking angle; low-confidence angles crossed in red."""
        if drift is None:
            for item in (self.row_curve, self.col_curve):
                item.setData([], [])
            self.doubtful.setData([], [])
            self.drift_note.setText("no drift correction in this scan")
            return
        angles, shifts, confident = drift["angles"], drift["shifts_um"], drift["confident"]
        self.row_curve.setData(angles, shifts[:, 0])
        self.col_curve.setData(angles, shifts[:, 1])
        doubt = ~confident
        self.doubtful.setData(np.concatenate([angles[doubt], angles[doubt]]),
                              np.concatenate([shifts[doubt, 0], shifts[doubt, 1]]))
        self.drift_note.setText(f"{drift['mode']} drift against rocking angle "
                                f"{drift['reference_angle']}; {int(doubt.sum())} of "
                                f"{len(angles)} angles of low confidence (red ×)")

    def selected_label(self) -> int | None:
        """The label of the particle whose row is selected, None if none."""
        items = self.table.selectedItems()
        return None if not items else items[0].data(QtCore.Qt.ItemDataRole.UserRole)

    def _row_selected(self) -> None:
        label = self.selected_label()
        self.model.select_particle(label)
        state = self.model.state
        if label is not None and state is not None:
            pixel = derived.particle_pixel(state, label)
            if pixel is not None:
                self.model.select_pixel(*pixel)


def _bold(text: str) -> QtWidgets.QLabel:
    label = QtWidgets.QLabel(text)
    label.setStyleSheet("font-weight: bold")
    return label
