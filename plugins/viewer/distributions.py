"""Distributions over the masked map: the tilts as a pole figure, histograms of d and strain.

The pole figure is a polar scatter, one point per map pixel inside the mask, at angle = tilt
direction and radius = tilt magnitude (as the pole plots of the SXDM literature), coloured as in
the misorientation map. These widgets redraw only while they are visible: a hidden tab costs
nothing, and shows the newest maps when it is opened.
"""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6 import QtWidgets

from .model import MapState, ViewerModel
from .panels import nice_length

#: at most this many points in the pole figure (a strided sample of a bigger map)
MAX_POLE_POINTS = 4000
#: colours of the points are quantised to this many hues x saturations (few brushes: fast)
_HUES, _SATURATIONS = 36, 4


def pole_points(state: MapState, max_points: int = MAX_POLE_POINTS):
    """(x, y, colour index) of the pole figure: x = tilt cos(direction), y = tilt sin(direction).

    ``colour index`` = hue bin * saturations + saturation bin, into :func:`_palette`.
    """
    tilt = np.asarray(state.arrays["tilt_altitude"], float).ravel()
    direction = np.asarray(state.arrays["tilt_azimuth"], float).ravel()
    keep = np.flatnonzero(np.isfinite(tilt) & np.isfinite(direction))
    keep = keep[::max(1, len(keep) // max_points)]
    tilt, direction = tilt[keep], direction[keep]
    rad = np.deg2rad(direction)
    top = float(tilt.max()) if tilt.size else 0.0
    hue = np.floor(direction / 360.0 * _HUES).astype(int) % _HUES
    sat = np.minimum((tilt / top * _SATURATIONS).astype(int) if top > 0
                     else np.zeros(len(tilt), int), _SATURATIONS - 1)
    return tilt * np.cos(rad), tilt * np.sin(rad), hue * _SATURATIONS + sat


def _palette() -> list:
    """One brush per (hue, saturation) bin, HSV as in the misorientation map."""
    brushes = []
    for h in range(_HUES):
        for s in range(_SATURATIONS):
            colour = pg.hsvColor((h + 0.5) / _HUES, sat=(s + 0.5) / _SATURATIONS, val=1.0)
            brushes.append(pg.mkBrush(colour))
    return brushes


class PoleFigure(pg.PlotWidget):
    """Tilts as a polar scatter (direction, magnitude) with a polar grid in degrees."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAspectLocked(True)
        self.hideAxis("left")
        self.hideAxis("bottom")
        self.setTitle("tilts: direction (angle) and magnitude (radius, °)", size="10pt")
        self.points = pg.ScatterPlotItem(size=5, pen=pg.mkPen(0, 0, 0, 60))
        self.addItem(self.points)
        self._brushes = _palette()
        self._grid_items: list = []
        self._rim = None

    def show_state(self, state: MapState) -> None:
        """Draw the tilts of ``state``."""
        x, y, colour = pole_points(state)
        self._draw_grid(float(np.max(np.hypot(x, y))) if len(x) else 0.0)
        self.points.setData(x, y, brush=[self._brushes[i] for i in colour])

    def _draw_grid(self, radius: float) -> None:
        step = nice_length(radius * 4.0 / 3.0) if radius > 0 else 0.1
        rim = step * max(1, math.ceil(radius / step)) if radius > 0 else step
        if rim == self._rim:
            return
        self._rim = rim
        for item in self._grid_items:
            self.removeItem(item)
        self._grid_items = []
        pen = pg.mkPen("#999", width=1)
        t = np.linspace(0, 2 * np.pi, 181)
        for r in np.arange(step, rim + step / 2, step):
            self._add(pg.PlotCurveItem(r * np.cos(t), r * np.sin(t), pen=pen))
            self._add(pg.TextItem(f"{r:g}°", color="#555", anchor=(0, 1)), r * 0.71, r * 0.71)
        for angle in range(0, 360, 30):
            a = np.deg2rad(angle)
            self._add(pg.PlotCurveItem([0, rim * np.cos(a)], [0, rim * np.sin(a)], pen=pen))
            anchor = (0.5 - 0.5 * np.cos(a), 0.5 + 0.5 * np.sin(a))
            self._add(pg.TextItem(f"{angle}°", color="k", anchor=anchor),
                      1.04 * rim * np.cos(a), 1.04 * rim * np.sin(a))
        self.setRange(xRange=(-1.2 * rim, 1.2 * rim), yRange=(-1.2 * rim, 1.2 * rim), padding=0)

    def _add(self, item, x: float | None = None, y: float | None = None) -> None:
        if x is not None:
            item.setPos(x, y)
        item.setZValue(-1)
        self.addItem(item)
        self._grid_items.append(item)


class ValueHistogram(pg.PlotWidget):
    """Histogram of one map over the mask, with its mean and standard deviation."""

    def __init__(self, name: str, label: str, colour: str,
                 parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.name, self.label = name, label
        self.setLabel("left", "map pixels")
        for side in ("left", "bottom"):
            self.getAxis(side).enableAutoSIPrefix(False)
        self.showGrid(x=True, y=True, alpha=0.3)
        self.curve = self.plot([0, 1], [0], stepMode="center", fillLevel=0,
                               brush=pg.mkBrush(colour), pen=pg.mkPen("k", width=1))

    def show_state(self, state: MapState) -> None:
        """Draw the histogram of this map in ``state``."""
        values = np.asarray(state.arrays[self.name], float)
        values = values[np.isfinite(values)]
        units = state.units(self.name)
        self.setLabel("bottom", f"{self.label} ({units})")
        if values.size == 0:
            self.curve.setData([0, 1], [0])
            self.setTitle(f"{self.label}: no pixel inside the mask", size="10pt")
            return
        bins = int(np.clip(np.sqrt(values.size), 10, 100))
        lo, hi = float(values.min()), float(values.max())
        if not hi > lo:
            lo, hi = lo - 0.5 * (abs(lo) * 1e-6 or 1.0), hi + 0.5 * (abs(hi) * 1e-6 or 1.0)
        counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
        self.curve.setData(edges, counts)
        std = float(values.std())
        decimals = max(0, 1 - math.floor(math.log10(std))) if std > 0 else 6
        mean = round(float(values.mean()), decimals) + 0.0          # no "-0"
        self.setTitle(f"{self.label}: mean {mean:.{decimals}f}, std {std:.{decimals}f} {units} "
                      f"({values.size} pixels)", size="10pt")


class Distributions(QtWidgets.QWidget):
    """Pole figure of the tilts and histograms of d and strain, following the model."""

    def __init__(self, model: ViewerModel, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = model
        self.pole = PoleFigure()
        self.d_histogram = ValueHistogram("d_spacing", "d-spacing", "#9467bd")
        self.strain_histogram = ValueHistogram("strain", "strain", "#d62728")
        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(self.pole, 3)
        layout.addWidget(self.d_histogram, 1)
        layout.addWidget(self.strain_histogram, 1)
        self._dirty = False
        self.redraws = 0
        model.mapsChanged.connect(self.refresh)

    def refresh(self) -> None:
        """Redraw now if visible, else when shown."""
        if not self.isVisible():
            self._dirty = True
            return
        state = self.model.state
        if state is None:
            return
        self._dirty = False
        self.redraws += 1
        self.pole.show_state(state)
        self.d_histogram.show_state(state)
        self.strain_histogram.show_state(state)

    def showEvent(self, event) -> None:
        super().showEvent(event)
        if self._dirty:
            self.refresh()
