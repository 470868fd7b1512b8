"""The pixel inspector: what one map pixel holds.

Clicking a pixel shows its rocking curve (intensity per rocking angle, from the snapshot's
``intensity_per_angle``), the three projections of its q-space histogram with the centre of
mass marked (from the processor's pixel service live, from /entry/qspace of a file), and the
value of every map there. Without a histogram source it says so and shows the rest.
"""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtWidgets

from .model import MapState, ViewerModel
from .pixels import histogram_axes, histogram_projections

#: (axes kept, label): the projections of a (qx, qy, qz) histogram, horizontal axis first
PROJECTIONS = (((0, 1), "qx-qy"), ((0, 2), "qx-qz"), ((1, 2), "qy-qz"))
_Q_NAMES = ("qx", "qy", "qz")


def format_value(value: float, error: float | None, units: str) -> str:
    """``4.73291 Å``, ``-123.4 ± 5.6 µstrain``; blank outside the mask."""
    if not math.isfinite(value):
        return "— (masked)"
    text = f"{value:.6g}"
    if error is not None and math.isfinite(error):
        text += f" ± {error:.2g}"
    return f"{text} {units}".strip()


class ProjectionPlot(pg.PlotWidget):
    """One 2D projection of a q-space histogram (log colour scale) with the COM marked."""

    def __init__(self, axes: tuple[int, int], parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.axes = axes
        self.setLabel("bottom", f"{_Q_NAMES[axes[0]]} (Å⁻¹)")
        self.setLabel("left", f"{_Q_NAMES[axes[1]]} (Å⁻¹)")
        for side in ("left", "bottom"):
            self.getAxis(side).enableAutoSIPrefix(False)
        self.image = pg.ImageItem(axisOrder="row-major")
        self.image.setColorMap(pg.colormap.get("viridis"))
        self.addItem(self.image)
        self.com = pg.ScatterPlotItem(symbol="+", size=16, pen=pg.mkPen("r", width=2),
                                      brush=None)
        self.addItem(self.com)
        self.setMinimumSize(160, 140)

    def show_projection(self, projection: np.ndarray, centres: list[np.ndarray],
                        com: np.ndarray) -> None:
        """Show ``projection`` on the bin ``centres`` (1/angstrom), COM (3) marked."""
        ax, ay = self.axes
        x, y = centres[ax], centres[ay]
        sx = float(x[1] - x[0]) if len(x) > 1 else 1.0
        sy = float(y[1] - y[0]) if len(y) > 1 else 1.0
        image = np.log10(1.0 + projection.T)             # rows along the vertical axis
        top = float(image.max()) if image.size else 0.0
        self.image.setImage(image, autoLevels=False, levels=(0.0, top if top > 0 else 1.0))
        self.image.setRect(QtCore.QRectF(x[0] - sx / 2, y[0] - sy / 2, sx * len(x), sy * len(y)))
        if np.all(np.isfinite(com)):
            self.com.setData([com[ax]], [com[ay]])
        else:
            self.com.setData([], [])
        self.autoRange(padding=0)

    def clear_projection(self) -> None:
        """Show nothing (no histogram)."""
        self.image.clear()
        self.com.setData([], [])


class PixelInspector(QtWidgets.QWidget):
    """Rocking curve, q-space projections and map values of the selected pixel.

    Parameters
    ----------
    model : the viewer's model (its ``pixelSelected`` and ``mapsChanged`` drive the inspector).
    pixels : where histograms come from (:class:`~.pixels.PixelService`,
        :class:`~.results.FileHistograms`) or None.
    """

    def __init__(self, model: ViewerModel, pixels=None,
                 parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.model, self.pixels = model, pixels
        self.point: int | None = None
        self.histogram_point: int | None = None
        self.title = QtWidgets.QLabel("Click a map pixel to inspect it.")
        self.title.setStyleSheet("font-weight: bold")
        self.rocking = pg.PlotWidget()
        self.rocking.setLabel("left", "intensity (counts)")
        self.rocking.showGrid(x=True, y=True, alpha=0.3)
        self.rocking.setMinimumHeight(150)
        self.curve = self.rocking.plot([], [], pen=pg.mkPen("#1f77b4", width=2), symbol="o",
                                       symbolSize=5, symbolBrush="#1f77b4")
        self.projections = [ProjectionPlot(axes) for axes, _label in PROJECTIONS]
        self.histogram_note = QtWidgets.QLabel()
        self.histogram_note.setWordWrap(True)
        # two lines always: a word-wrapped label in a box layout gets one line's height
        self.histogram_note.setMinimumHeight(2 * self.fontMetrics().lineSpacing() + 6)
        self.values = QtWidgets.QTableWidget(0, 2)
        self.values.setHorizontalHeaderLabels(["map", "value at this pixel"])
        self.values.horizontalHeader().setStretchLastSection(True)
        self.values.verticalHeader().hide()
        self.values.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self._build_layout()
        model.pixelSelected.connect(self.show_pixel)
        model.mapsChanged.connect(self.refresh)
        if pixels is not None:
            pixels.replied.connect(self.show_histogram)
            pixels.failed.connect(self.show_histogram_failure)
        self._say_no_histogram()

    def _build_layout(self) -> None:
        self.projection_box = QtWidgets.QWidget()
        box = QtWidgets.QVBoxLayout(self.projection_box)
        box.setContentsMargins(0, 0, 0, 0)
        box.addWidget(QtWidgets.QLabel("q-space histogram (log counts), + = centre of mass"))
        row = QtWidgets.QHBoxLayout()
        for plot in self.projections:
            row.addWidget(plot)
        box.addLayout(row)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(self.title)
        layout.addWidget(QtWidgets.QLabel("rocking curve"))
        layout.addWidget(self.rocking, 3)
        layout.addWidget(self.projection_box, 3)
        layout.addWidget(self.histogram_note)
        layout.addWidget(self.values, 3)

    def _say_no_histogram(self) -> None:
        self.projection_box.hide()
        if self.pixels is not None:
            self.histogram_note.setText(f"q-space histograms from {self.pixels.describe()}")
        else:
            self.histogram_note.setText(
                "q-space histogram not available: no histogram source (live: start the viewer "
                "with --serve ENDPOINT, the processor's pixel service).")

    # ---- slots --------------------------------------------------------------------------------
    def show_pixel(self, row: int, col: int, ask_histogram: bool = True) -> None:
        """Show pixel (row, col) of the current maps and ask for its histogram."""
        state = self.model.state
        if state is None:
            return
        self.point = row * state.shape[1] + col
        y, x = state.position_um(row, col)
        self.title.setText(f"pixel row {row}, column {col} (flat {self.point}) at "
                           f"{state.motor(0)} = {y:.3f} µm, {state.motor(1)} = {x:.3f} µm")
        self._show_rocking_curve(state, row, col)
        self._show_values(state, row, col)
        if ask_histogram:
            self._ask_histogram()

    def refresh(self) -> None:
        """New maps: refresh what is shown for the selected pixel (its histogram too, while
        the inspector is on screen: the sums behind it grow during a scan)."""
        if self.model.selected is None:
            return
        self.show_pixel(*self.model.selected, ask_histogram=self.isVisible())

    def show_histogram(self, point: int, reply) -> None:
        """Slot for a histogram reply (:class:`~sxdm_stream.PixelReply`: its arrays hold
        "histogram")."""
        state = self.model.state
        if point != self.point or state is None:
            return
        histogram = reply.arrays.get("histogram")
        if histogram is None or histogram.ndim != 3:
            self.show_histogram_failure(point, "the processor keeps no q-space histograms "
                                               "(moments only)")
            return
        centres = histogram_axes(reply.header, histogram.shape)
        com = np.asarray(reply.header.get("com") or self._com(state, point), float)
        for plot, (axes, _label) in zip(self.projections, PROJECTIONS):
            plot.show_projection(histogram_projections(histogram)[axes], centres, com)
        self.histogram_point = point
        self.projection_box.show()
        self.histogram_note.setText(f"{int(histogram.sum())} counts, from "
                                    f"{self.pixels.describe()}")

    def show_histogram_failure(self, point: int, message: str) -> None:
        """Slot: say why map pixel ``point`` has no histogram."""
        if point != self.point:
            return
        for plot in self.projections:
            plot.clear_projection()
        self.projection_box.hide()
        self.histogram_point = None
        self.histogram_note.setText(f"q-space histogram not available: {message}")

    # ---- parts --------------------------------------------------------------------------------
    def _ask_histogram(self) -> None:
        if self.pixels is None:
            self._say_no_histogram()
        elif self.point is not None:
            self.pixels.request(self.point)

    def _show_rocking_curve(self, state: MapState, row: int, col: int) -> None:
        curve = np.asarray(state.arrays["intensity_per_angle"][:, row, col], float)
        angles = state.rocking_angles[:len(curve)]
        self.curve.setData(angles, curve)
        self.rocking.setLabel("bottom", f"{state.rocking_axis} (°)")

    def _show_values(self, state: MapState, row: int, col: int) -> None:
        values = state.values_at(row, col)
        mask = state.arrays.get("mask")
        inside = bool(mask[row, col]) if mask is not None else True
        rows = [("mask", "inside" if inside else "outside (blank in the maps)")]
        rows += [(label, format_value(v, e, u)) for label, v, e, u in values]
        self.values.setRowCount(len(rows))
        for i, (label, text) in enumerate(rows):
            for j, cell in enumerate((label, text)):
                item = self.values.item(i, j)
                if item is None:
                    item = QtWidgets.QTableWidgetItem()
                    self.values.setItem(i, j, item)
                item.setText(cell)
        self.values.resizeColumnToContents(0)

    @staticmethod
    def _com(state: MapState, point: int) -> list[float]:
        row, col = divmod(point, state.shape[1])
        return [float(state.arrays[q][row, col]) if q in state.arrays else math.nan
                for q in _Q_NAMES]

    def value_texts(self) -> dict[str, str]:
        """What the values table shows, map label -> text (for tests and copy-paste)."""
        return {self.values.item(i, 0).text(): self.values.item(i, 1).text()
                for i in range(self.values.rowCount())}

