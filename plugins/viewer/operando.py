"""The operando panel: per particle, how each completed map moved it, against time or the
electrochemistry.

For an operando run (a battery cycled for hours while the same area is mapped every few minutes)
the questions are per particle: the d-spacing of each of its phases, how far a new phase has
grown, the spread of the strain, the tilt and the intensity; which particle lags, which has
started to transform; and whether anything changes faster than expected (the record's alarms).

One colour per particle (the particle list, with its check boxes, is the legend), one line style
and symbol per phase; the whole map's mean d, strain spread and tilt in black. A particle absent
from a map leaves a gap. The x axis is the time since the first record (hours) or any
electrochemistry channel the records carry (voltage, capacity...).

Without operando records (a results file, a processor that sends none) the panel plots the
map-level points of the final snapshots instead (see :mod:`.model`).
"""

from __future__ import annotations

import time

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtGui, QtWidgets
from PySide6.QtCore import Signal

from .model import ViewerModel
from .operando_history import NO_PHASE, TIME, OperandoColumns, OperandoEntry

#: the plots, top to bottom: (key, title, units, the particles' field or None, map summary)
PLOTS = (("d", "d-spacing", "Å", None, "mean_d"),
         ("fraction", "phase fraction", "", None, None),
         ("strain_spread", "strain spread", "µstrain", "strain_std", "strain_spread"),
         ("tilt", "mean tilt", "°", "mean_tilt_deg", "mean_tilt"),
         ("intensity", "intensity", "counts", "intensity", None))
#: a particle's colour, in order of first appearance (then hues)
PARTICLE_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
                    "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
MAP_COLOUR = "#000000"
#: a phase's (line style, symbol, how the two are written), in order of first appearance
PHASE_STYLES = ((QtCore.Qt.PenStyle.SolidLine, "o", "── ●"),
                (QtCore.Qt.PenStyle.DashLine, "t", "– – ▼"),
                (QtCore.Qt.PenStyle.DotLine, "s", "··· ■"),
                (QtCore.Qt.PenStyle.DashDotLine, "d", "–· ◆"))
#: symbols are drawn while there are at most this many maps (beyond, lines alone stay fast)
SYMBOLS_UP_TO = 400
#: events and alarms listed (the oldest are dropped)
MAX_NOTICES = 2000
PLOT_HEIGHT_PX = 170

#: a curve: (plot key, particle id or None for the whole map, phase id or None)
CurveKey = tuple[str, "int | None", "int | None"]


def plotted_points(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, object]:
    """The points of a curve that have both x and y, and which of them the line joins.

    A map without the value (a particle absent, a null, a channel missing) is left out and the
    line stops there: a gap, never an interpolation. Left-out points rather than NaN also keep
    pyqtgraph's range finding clear of all-NaN slices.
    """
    where = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
    if not where.size:
        return np.zeros(0), np.zeros(0), "all"
    return x[where], y[where], np.append(np.diff(where) == 1, False)


class OperandoPanel(QtWidgets.QWidget):
    """Per-particle time series of the completed maps, following the model's
    ``operandoRecorded`` (and ``operandoAppended`` while no record came).

    Redraws only while shown (a hidden panel redraws when it is shown again); the events and
    the alarm indicator follow every record.

    Signals
    -------
    alarmsChanged(int) : alarms received and not yet acknowledged (0: none, or acknowledged).
    """

    alarmsChanged = Signal(int)

    def __init__(self, model: ViewerModel, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = model
        self.axis = TIME
        self.curves: dict[CurveKey, pg.PlotDataItem] = {}
        self.plots: dict[str, pg.PlotItem] = {}
        self.colours: dict[int, QtGui.QColor] = {}
        self.phase_order: dict[int, int] = {}
        self.hidden: set[int] = set()
        self.unacknowledged = 0
        self.redraws = 0
        self._dirty = False
        self._build()
        for key, title, units, *_ in PLOTS:
            self._add_plot(key, title, units)
        model.operandoRecorded.connect(self._recorded)
        model.operandoAppended.connect(self._appended)
        self._say_count(OperandoColumns([]))

    # ---- assembly -----------------------------------------------------------------------------
    def _build(self) -> None:
        self.x_choice = QtWidgets.QComboBox()
        self.x_choice.setToolTip("the x axis of every plot: time, or an electrochemistry channel")
        self.x_choice.addItem("time since the first map (h)", TIME)
        self.x_choice.activated.connect(lambda i: self.set_axis(self.x_choice.itemData(i)))
        self.alarm = QtWidgets.QLabel()
        self.alarm.setStyleSheet("background: #d62728; color: white; font-weight: bold; "
                                 "padding: 2px 6px; border-radius: 3px")
        self.acknowledge = QtWidgets.QPushButton("Acknowledge")
        self.acknowledge.clicked.connect(self.acknowledge_alarms)
        self.note = QtWidgets.QLabel()
        self.graphics = pg.GraphicsLayoutWidget()
        self.scroll = QtWidgets.QScrollArea()         # the plots keep a readable height
        self.scroll.setWidgetResizable(True)
        self.scroll.setWidget(self.graphics)
        self.particle_list = QtWidgets.QTreeWidget()
        self.particle_list.setHeaderLabels(["particle", "new phase", "last seen (h)"])
        self.particle_list.setRootIsDecorated(False)
        self.particle_list.header().setSectionResizeMode(
            QtWidgets.QHeaderView.ResizeMode.ResizeToContents)
        self.particle_list.itemChanged.connect(self._particle_checked)
        self.notices = QtWidgets.QListWidget()
        self.notices.setToolTip("events and alarms of the records, newest first")
        self.notices.setWordWrap(True)
        top = QtWidgets.QHBoxLayout()
        top.addWidget(QtWidgets.QLabel("x axis"))
        top.addWidget(self.x_choice, 1)
        top.addWidget(self.alarm)
        top.addWidget(self.acknowledge)
        lists = QtWidgets.QSplitter(QtCore.Qt.Orientation.Horizontal)
        lists.addWidget(self.particle_list)
        lists.addWidget(self.notices)
        split = QtWidgets.QSplitter(QtCore.Qt.Orientation.Vertical)
        split.addWidget(self.scroll)
        split.addWidget(lists)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 1)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addLayout(top)
        layout.addWidget(self.note)
        layout.addWidget(split, 1)
        self._show_alarms(None)

    def _add_plot(self, key: str, title: str, units: str) -> pg.PlotItem:
        plot = self.graphics.addPlot(row=len(self.plots), col=0)
        plot.setLabel("left", f"{title} ({units})" if units else title)
        plot.getAxis("left").enableAutoSIPrefix(False)
        plot.getAxis("bottom").enableAutoSIPrefix(False)
        plot.showGrid(x=True, y=True, alpha=0.3)
        plot.setLabel("bottom", self.x_choice.currentText())
        if self.plots:
            plot.setXLink(next(iter(self.plots.values())))
        self.plots[key] = plot
        self.graphics.setMinimumHeight(PLOT_HEIGHT_PX * len(self.plots))
        return plot

    # ---- slots --------------------------------------------------------------------------------
    def _recorded(self, entry: OperandoEntry) -> None:
        """Slot: one more operando record."""
        self._list_notices(entry)
        if entry.alarms:
            self.unacknowledged += len(entry.alarms)
            self._show_alarms(entry.alarms[-1].message)
        self._redraw_soon()

    def _appended(self, _point) -> None:
        """Slot: one more final snapshot (plotted only while no record came)."""
        if not self.model.records:
            self._redraw_soon()

    def _redraw_soon(self) -> None:
        self._dirty = True
        if self.isVisible():
            self.redraw()

    def showEvent(self, event: QtGui.QShowEvent) -> None:
        super().showEvent(event)
        if self._dirty:
            self.redraw()

    def set_axis(self, axis: str) -> None:
        """Plot against ``TIME`` (hours since the first map) or an electrochemistry channel."""
        self.axis = axis
        index = self.x_choice.findData(axis)
        if index >= 0 and index != self.x_choice.currentIndex():
            self.x_choice.setCurrentIndex(index)
        for plot in self.plots.values():
            plot.setLabel("bottom", self.x_choice.currentText())
        self.redraw()
        next(iter(self.plots.values())).enableAutoRange()

    def set_particle_shown(self, particle_id: int, shown: bool) -> None:
        """Show or hide every curve of a particle (and tick its box in the list)."""
        (self.hidden.discard if shown else self.hidden.add)(particle_id)
        for (_plot, pid, _phase), curve in self.curves.items():
            if pid == particle_id:
                curve.setVisible(shown)
        item = self._particle_item(particle_id)
        state = QtCore.Qt.CheckState.Checked if shown else QtCore.Qt.CheckState.Unchecked
        if item is not None and item.checkState(0) != state:
            item.setCheckState(0, state)

    def _particle_checked(self, item: QtWidgets.QTreeWidgetItem, column: int) -> None:
        if column == 0:
            self.set_particle_shown(int(item.data(0, QtCore.Qt.ItemDataRole.UserRole)),
                                    item.checkState(0) == QtCore.Qt.CheckState.Checked)

    def acknowledge_alarms(self) -> None:
        """The scientist has seen the alarms: the indicator goes until the next one."""
        self.unacknowledged = 0
        self._show_alarms(None)

    def _show_alarms(self, latest: str | None) -> None:
        n = self.unacknowledged
        self.alarm.setVisible(n > 0)
        self.acknowledge.setVisible(n > 0)
        if n:
            self.alarm.setText(f"⚠ {n} alarm{'s' if n > 1 else ''}")
            self.alarm.setToolTip(f"latest: {latest}" if latest else "")
        self.alarmsChanged.emit(n)

    # ---- drawing ------------------------------------------------------------------------------
    def redraw(self) -> None:
        """Every curve from the model's entries, against the chosen x axis."""
        table = OperandoColumns(self.model.operando_entries())
        self._dirty = False
        self.redraws += 1
        self._follow_channels(table)
        origin = self.model.operando_origin_s
        x = table.x(self.axis, origin if origin is not None else 0.0)
        symbols = table.n <= SYMBOLS_UP_TO
        columns = self._columns(table)
        for key, curve in self.curves.items():
            if key not in columns:
                curve.setData([], [])              # a particle no longer kept
        for key, values in columns.items():
            xs, ys, connect = plotted_points(x, values)
            self._curve(key, symbols).setData(xs, ys, connect=connect)
        self._list_particles(table, {(pid, phase): y for (plot, pid, phase), y
                                     in columns.items() if plot == "fraction"})
        self._say_count(table)

    def _columns(self, table: OperandoColumns) -> dict[CurveKey, np.ndarray]:
        """Every curve's y values, one per entry (NaN: nothing there)."""
        for phase in table.phase_ids():
            self.phase_order.setdefault(phase, len(self.phase_order))
        first = next((p for p in self.phase_order if p != NO_PHASE), None)
        columns: dict[CurveKey, np.ndarray] = {}
        for (pid, phase), d in table.phase("d_a").items():
            columns[("d", pid, phase)] = d
        for (pid, phase), fraction in table.phase("fraction", absent=0.0).items():
            if phase not in (first, NO_PHASE):
                columns[("fraction", pid, phase)] = fraction
        for key, _title, _units, field, summary in PLOTS:
            if field is not None:
                for pid, values in table.particle(field).items():
                    columns[(key, pid, None)] = values
            if summary is not None:
                columns[(key, None, None)] = table.summary(summary)
        for name in table.channel_units():
            columns[(f"channel:{name}", None, None)] = table.channel(name)
        return columns

    def _curve(self, key: CurveKey, symbols: bool) -> pg.PlotDataItem:
        curve = self.curves.get(key)
        plot_key, pid, phase = key
        style, symbol, _text = PHASE_STYLES[self.phase_order.get(phase, 0) % len(PHASE_STYLES)]
        colour = QtGui.QColor(MAP_COLOUR) if pid is None else self._colour(pid)
        if curve is None:
            width = 2 if pid is None else 1.5
            curve = self.plots[plot_key].plot([], [], pen=pg.mkPen(colour, width=width,
                                                                   style=style),
                                              name=self._curve_name(key))
            curve.setVisible(pid not in self.hidden)
            self.curves[key] = curve
        curve.setSymbol(symbol if symbols else None)
        curve.setSymbolSize(5)
        curve.setSymbolBrush(colour)
        curve.setSymbolPen(None)
        return curve

    @staticmethod
    def _curve_name(key: CurveKey) -> str:
        plot_key, pid, phase = key
        if pid is None:
            return plot_key.removeprefix("channel:") if plot_key.startswith("channel:") \
                else "whole map"
        return f"particle {pid}" + ("" if phase in (None, NO_PHASE) else f" · phase {phase}")

    def _colour(self, pid: int) -> QtGui.QColor:
        if pid not in self.colours:
            n = len(self.colours)
            self.colours[pid] = QtGui.QColor(PARTICLE_COLOURS[n]) if n < len(PARTICLE_COLOURS) \
                else pg.intColor(n, hues=17)
        return self.colours[pid]

    def _follow_channels(self, table: OperandoColumns) -> None:
        """A plot and an x-axis choice for every electrochemistry channel, once it appears."""
        for name, units in table.channel_units().items():
            if f"channel:{name}" not in self.plots:
                self._add_plot(f"channel:{name}", name, units)
                self.x_choice.addItem(f"{name} ({units})" if units else name, name)
        title = " ".join(f"phase {p} {PHASE_STYLES[i % len(PHASE_STYLES)][2]}"
                         for p, i in self.phase_order.items() if p != NO_PHASE)
        self.plots["d"].setTitle(title or None, size="8pt")

    # ---- lists --------------------------------------------------------------------------------
    def _particle_item(self, pid: int) -> QtWidgets.QTreeWidgetItem | None:
        for i in range(self.particle_list.topLevelItemCount()):
            item = self.particle_list.topLevelItem(i)
            if item.data(0, QtCore.Qt.ItemDataRole.UserRole) == pid:
                return item
        return None

    def _list_particles(self, table: OperandoColumns,
                        fractions: dict[tuple[int, int], np.ndarray]) -> None:
        """One row per particle: its colour and box, how much of it has transformed (the
        fractions of its phases but the first, in its last map), when it was last seen."""
        origin = self.model.operando_origin_s or 0.0
        self.particle_list.blockSignals(True)
        for pid, here in sorted(table.presence().items()):
            item = self._particle_item(pid)
            if item is None:
                item = QtWidgets.QTreeWidgetItem([f"particle {pid}", "", ""])
                item.setData(0, QtCore.Qt.ItemDataRole.UserRole, pid)
                item.setFlags(item.flags() | QtCore.Qt.ItemFlag.ItemIsUserCheckable)
                item.setCheckState(0, QtCore.Qt.CheckState.Unchecked if pid in self.hidden
                                   else QtCore.Qt.CheckState.Checked)
                pixmap = QtGui.QPixmap(12, 12)
                pixmap.fill(self._colour(pid))
                item.setIcon(0, QtGui.QIcon(pixmap))
                self.particle_list.addTopLevelItem(item)
            last = int(np.flatnonzero(here)[-1])
            grown = float(np.nansum([y[last] for (p, _ph), y in fractions.items() if p == pid]))
            item.setText(1, f"{100 * grown:.0f} %" if fractions else "—")
            item.setText(2, f"{(table.entries[last].time_s - origin) / 3600:.2f}")
        self.particle_list.blockSignals(False)

    def _list_notices(self, entry: OperandoEntry) -> None:
        origin = self.model.operando_origin_s or entry.time_s
        when = (f"{time.strftime('%H:%M:%S', time.localtime(entry.time_s))} "
                f"({(entry.time_s - origin) / 3600:.2f} h)")
        for notice in entry.notices:
            item = QtWidgets.QListWidgetItem(
                f"{when} · scan {entry.series_id} · {'ALARM ' if notice.alarm else ''}"
                f"{notice.kind}: {notice.message}")
            item.setToolTip(item.text())
            if notice.alarm:
                item.setForeground(QtGui.QColor("#d62728"))
                font = item.font()
                font.setBold(True)
                item.setFont(font)
            self.notices.insertItem(0, item)
        while self.notices.count() > MAX_NOTICES:
            self.notices.takeItem(self.notices.count() - 1)

    def notice_texts(self) -> list[str]:
        """The events and alarms as listed, newest first."""
        return [self.notices.item(i).text() for i in range(self.notices.count())]

    def _say_count(self, table: OperandoColumns) -> None:
        n = table.n
        particles = len(table.particle_ids)
        channels = list(table.channel_units())
        extra = (f"; {particles} particles" if particles else "") + \
            (f"; electrochemistry: {', '.join(channels)}" if channels else "")
        self.note.setText(f"one point per completed map: {n} so far{extra}" if n else
                          "one point per completed map: none completed yet")
