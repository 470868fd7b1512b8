"""The operando panel: one point per completed map, against time.

For an operando run (a battery cycled while maps are taken one after the other) the question is
how the particle evolves: mean d-spacing, spread of the strain, largest tilt, next to the
electrochemistry the run carries (voltage, current, capacity... from the snapshot header's
``operando`` block). Plots share the time axis; a channel gets its plot when it first appears.
"""

from __future__ import annotations

import pyqtgraph as pg
from PySide6 import QtWidgets

from .model import OperandoPoint, ViewerModel

#: the map summaries plotted for every completed map: (attribute, label, units, colour)
SUMMARIES = (("mean_d", "mean d", "Å", "#9467bd"),
             ("strain_spread", "strain spread (std)", "µstrain", "#d62728"),
             ("max_tilt", "maximum tilt", "°", "#ff7f0e"))
_CHANNEL_COLOURS = ("#2ca02c", "#1f77b4", "#8c564b", "#e377c2", "#7f7f7f", "#17becf")


class OperandoPanel(QtWidgets.QWidget):
    """Time series of the completed maps, following the model's ``operandoAppended``."""

    def __init__(self, model: ViewerModel, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = model
        self.note = QtWidgets.QLabel()
        self.plots = pg.GraphicsLayoutWidget()
        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(self.note)
        layout.addWidget(self.plots)
        self.series: dict[str, tuple[pg.PlotItem, pg.PlotDataItem, list, list]] = {}
        for key, label, units, colour in SUMMARIES:
            self._add_plot(key, label, units, colour)
        model.operandoAppended.connect(self.append)
        self._say_count()

    def _add_plot(self, key: str, label: str, units: str, colour: str) -> None:
        plot = self.plots.addPlot(row=len(self.series), col=0,
                                  axisItems={"bottom": pg.DateAxisItem()})
        plot.setLabel("left", f"{label} ({units})" if units else label)
        plot.showGrid(x=True, y=True, alpha=0.3)
        plot.getAxis("left").enableAutoSIPrefix(False)
        plot.setLabel("bottom", "time")
        if self.series:
            plot.setXLink(next(iter(self.series.values()))[0])
        curve = plot.plot([], [], pen=pg.mkPen(colour, width=2), symbol="o", symbolSize=6,
                          symbolBrush=colour, symbolPen=None)
        self.series[key] = (plot, curve, [], [])

    def append(self, point: OperandoPoint) -> None:
        """Slot: one more completed map."""
        values = {key: getattr(point, key) for key, *_ in SUMMARIES}
        for name, (value, units) in point.channels.items():
            if name not in self.series:
                colour = _CHANNEL_COLOURS[(len(self.series) - len(SUMMARIES))
                                          % len(_CHANNEL_COLOURS)]
                self._add_plot(name, name, units, colour)
            values[name] = value
        for key, value in values.items():
            _plot, curve, times, ys = self.series[key]
            times.append(point.time_s)
            ys.append(value)
            curve.setData(times, ys)
        self._say_count()

    def _say_count(self) -> None:
        n = len(self.model.operando)
        channels = [k for k in self.series if k not in {s[0] for s in SUMMARIES}]
        extra = f"; electrochemistry: {', '.join(channels)}" if channels else ""
        self.note.setText(f"one point per completed map: {n} so far{extra}" if n else
                          "one point per completed map: none completed yet")
