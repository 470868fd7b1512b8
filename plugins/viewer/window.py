"""The main window: map panels on the left; pixel inspector, distributions, operando plots and
the analysis (particles, drift, q-ROIs) in tabs on the right; the connection banner on top and the processing status below.

A timer at ``refresh_hz`` is the only thing that moves data into the UI: each tick takes what
the source delivered since the last one (the newest snapshot, and any completed maps) and hands
it to the model, which redraws once. Snapshots arriving faster than that are skipped, so a
fast processor can never flood the UI.
"""

from __future__ import annotations

import collections
import logging
import math
import time
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtGui, QtWidgets

from . import derived
from .analysis import AnalysisPanel
from .distributions import Distributions
from .export import export_tiffs
from .inspector import PixelInspector, format_value
from .model import ALL_Q, MapState, ViewerModel
from .operando import OperandoPanel
from .panels import MapGrid
from .status import ConnectionBanner, StatusPanel

log = logging.getLogger(__name__)

DEFAULT_REFRESH_HZ = 8.0
DEFAULT_STALE_AFTER_S = 5.0


def configure_pyqtgraph() -> None:
    """Black on white, as figures are printed; blank (masked) pixels show as white."""
    pg.setConfigOptions(background="w", foreground="k", antialias=True)


class ViewerWindow(QtWidgets.QMainWindow):
    """The viewer.

    Parameters
    ----------
    source : where snapshots come from: a :class:`~.subscriber.SnapshotFeed` (live) or a
        :class:`~.results.ResultsFile`; anything with ``start``, ``stop``, ``take``,
        ``describe`` and ``connected``.
    pixels : where q-space histograms come from (:class:`~.pixels.PixelService`,
        :class:`~.results.FileHistograms`), or None.
    refresh_hz : UI refresh rate: at most this many redraws per second.
    stale_after_s : silence after which the banner warns.
    """

    def __init__(self, source, pixels=None, refresh_hz: float = DEFAULT_REFRESH_HZ,
                 stale_after_s: float = DEFAULT_STALE_AFTER_S,
                 parent: QtWidgets.QWidget | None = None) -> None:
        configure_pyqtgraph()
        super().__init__(parent)
        self.source, self.pixels = source, pixels
        self.model = ViewerModel(source.describe(), stale_after_s, parent=self)
        self.maps = MapGrid()
        self.inspector = PixelInspector(self.model, pixels)
        self.distributions = Distributions(self.model)
        self.operando = OperandoPanel(self.model)
        self.analysis = AnalysisPanel(self.model)
        self.banner = ConnectionBanner()
        self.status_panel = StatusPanel(source.describe())
        self.tabs = QtWidgets.QTabWidget()
        #: seconds spent drawing each of the last snapshots (maps and visible widgets)
        self.draw_times: collections.deque = collections.deque(maxlen=1000)
        self._fwhm_chosen = False
        self._build()
        self._connect()
        self.timer = QtCore.QTimer(self)
        self.timer.setInterval(int(1000 / refresh_hz))
        self.timer.timeout.connect(self.refresh)
        self.setWindowTitle(f"sxdm-stream viewer — {source.describe()}")
        self.resize(1800, 1000)

    # ---- assembly -----------------------------------------------------------------------------
    def _build(self) -> None:
        self.tabs.addTab(self.inspector, "Pixel")
        self.tabs.addTab(self.distributions, "Distributions")
        self.tabs.addTab(self.operando, "Operando")
        self.tabs.addTab(self.analysis, "Analysis")
        splitter = QtWidgets.QSplitter(QtCore.Qt.Orientation.Horizontal)
        splitter.addWidget(self.maps)
        splitter.addWidget(self.tabs)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([1300, 500])
        central = QtWidgets.QWidget()
        layout = QtWidgets.QVBoxLayout(central)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.banner)
        layout.addWidget(splitter, 1)
        layout.addWidget(self.status_panel)
        self.setCentralWidget(central)
        self._build_toolbar()

    def _build_toolbar(self) -> None:
        bar = self.addToolBar("view")
        bar.setMovable(False)
        for text, tip, slot in (
                ("Save view as PNG…", "the map panels as they are shown", self._ask_png),
                ("Export maps as TIFF…", "every map as a calibrated 32-bit TIFF", self._ask_tiff),
                ("Auto levels", "back to automatic colour ranges", self.maps.rescale),
                ("Reset zoom", "show the whole map", self.reset_zoom)):
            action = QtGui.QAction(text, self)
            action.setToolTip(tip)
            action.triggered.connect(slot)
            bar.addAction(action)
        bar.addSeparator()
        bar.addWidget(QtWidgets.QLabel(" FWHM along "))
        self.fwhm_choice = QtWidgets.QComboBox()
        self.fwhm_choice.addItems(["qx", "qy", "qz"])
        self.fwhm_choice.setCurrentIndex(self.maps.fwhm_axis)
        self.fwhm_choice.activated.connect(self._fwhm_chosen_by_hand)
        bar.addWidget(self.fwhm_choice)
        bar.addSeparator()
        bar.addWidget(QtWidgets.QLabel(" maps of "))
        self.source_choice = QtWidgets.QComboBox()
        self.source_choice.setToolTip("the whole detector (all q) or one q-space ROI")
        self.source_choice.addItem(ALL_Q)
        self.source_choice.setSizeAdjustPolicy(
            QtWidgets.QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.source_choice.textActivated.connect(self.model.select_map_source)
        bar.addWidget(self.source_choice)

    def _connect(self) -> None:
        self.model.mapsChanged.connect(self._draw_maps)
        self.model.connectionChanged.connect(self.banner.show_connection)
        self.model.pixelSelected.connect(self.maps.mark)
        self.model.mapSourceChanged.connect(self._map_source_changed)
        self.model.particleSelected.connect(self._highlight_particle)
        self.operando.alarmsChanged.connect(self._show_operando_alarms)
        self.maps.pixelClicked.connect(self._pixel_clicked)
        self.maps.pixelHovered.connect(self._pixel_hovered)

    # ---- life cycle ---------------------------------------------------------------------------
    def start(self) -> "ViewerWindow":
        """Start the source, the pixel service and the refresh timer."""
        self.source.start()
        if self.pixels is not None:
            self.pixels.start()
        self.timer.start()
        self.refresh()
        return self

    def stop(self) -> None:
        """Stop the timer and every thread (idempotent)."""
        self.timer.stop()
        self.source.stop()
        if self.pixels is not None:
            self.pixels.stop()

    def closeEvent(self, event: QtGui.QCloseEvent) -> None:
        self.stop()
        super().closeEvent(event)

    # ---- slots --------------------------------------------------------------------------------
    def refresh(self) -> None:
        """One tick: take what the source delivered, update the model, check the connection."""
        snapshots = self.source.take()
        if snapshots:
            self.model.show_snapshots(snapshots)
        take_records = getattr(self.source, "take_records", None)   # a file sends none
        if take_records is not None:
            self.model.add_operando_records(take_records())
        self.model.check_connection(self.source.connected)
        self.status_panel.tick()

    def _draw_maps(self) -> None:
        state = self.model.state
        t0 = time.perf_counter()
        if not self._fwhm_chosen:
            self._follow_mean_direction(state.header.mean_direction)
        self._follow_roi_names(state)
        self.maps.show_state(self.shown_state())
        self.maps.mark(*(self.model.selected or (None, None)))
        if self.model.particle is not None:
            self.maps.highlight(derived.particle_region(state, self.model.particle))
        self.status_panel.show_state(state)
        self.draw_times.append(time.perf_counter() - t0)

    def shown_state(self) -> MapState:
        """The maps the panels show: the whole detector's, or the selected q-ROI's."""
        state = self.model.state
        if self.model.map_source not in derived.roi_names(state):
            return state
        return derived.roi_state(state, self.model.map_source)

    def _follow_roi_names(self, state: MapState) -> None:
        """Offer the q-ROIs of the snapshot; a ROI that is gone falls back to all of q."""
        names = [ALL_Q] + derived.roi_names(state)
        offered = [self.source_choice.itemText(i) for i in range(self.source_choice.count())]
        if names == offered:
            return
        self.source_choice.blockSignals(True)
        self.source_choice.clear()
        self.source_choice.addItems(names)
        self.source_choice.blockSignals(False)
        if self.model.map_source not in names:
            self.model.map_source = ALL_Q               # redrawn by the caller
        self.source_choice.setCurrentText(self.model.map_source)

    def _map_source_changed(self, name: str) -> None:
        if self.source_choice.currentText() != name:
            self.source_choice.setCurrentText(name)
        self.maps.rescale()                             # other maps: their own colour range
        if self.model.state is not None:
            self._draw_maps()

    def _show_operando_alarms(self, n: int) -> None:
        """The operando tab says, in red, how many alarms wait to be acknowledged."""
        index = self.tabs.indexOf(self.operando)
        self.tabs.setTabText(index, f"Operando ⚠ {n}" if n else "Operando")
        colour = QtGui.QColor("#d62728") if n else self.tabs.palette().color(
            QtGui.QPalette.ColorRole.WindowText)
        self.tabs.tabBar().setTabTextColor(index, colour)

    def _highlight_particle(self, label) -> None:
        state = self.model.state
        self.maps.highlight(None if state is None else derived.particle_region(state, label))

    def _follow_mean_direction(self, direction) -> None:
        """FWHM along the q axis closest to the mean scattering vector (the radial width)."""
        if direction is None or not np.all(np.isfinite(direction)):
            return
        axis = int(np.argmax(np.abs(direction)))
        if axis != self.maps.fwhm_axis:
            self.maps.set_fwhm_axis(axis)
            self.fwhm_choice.setCurrentIndex(axis)

    def _fwhm_chosen_by_hand(self, axis: int) -> None:
        self._fwhm_chosen = True
        self.maps.set_fwhm_axis(axis)
        if self.model.state is not None:
            self._draw_maps()

    def _pixel_clicked(self, row: int, col: int) -> None:
        self.tabs.setCurrentWidget(self.inspector)
        self.model.select_pixel(row, col)

    def _pixel_hovered(self, row: int, col: int) -> None:
        state = self.model.state
        if state is None or row >= state.shape[0] or col >= state.shape[1]:
            return
        y, x = state.position_um(row, col)
        values = {label: (v, e, u) for label, v, e, u in state.values_at(row, col)}
        shown = " · ".join(f"{label} {format_value(*values[label])}"
                           for label in ("intensity", "d", "strain", "tilt") if label in values)
        self.statusBar().showMessage(f"row {row}, col {col} ({state.motor(0)} {y:.3f} µm, "
                                     f"{state.motor(1)} {x:.3f} µm): {shown}")

    def reset_zoom(self) -> None:
        """Show the whole map in every panel."""
        self.maps.show_whole_map()

    # ---- export -------------------------------------------------------------------------------
    def export_png(self, path: str | Path, whole_window: bool = False) -> Path:
        """Save the map panels (or the whole window) as shown, as PNG."""
        path = Path(path)
        widget = self if whole_window else self.maps
        if not widget.grab().save(str(path), "PNG"):
            raise OSError(f"could not write {path}")
        log.info("saved %s", path)
        return path

    def export_tiff(self, directory: str | Path, stem: str = "sxdm_maps") -> list[Path]:
        """Write every map of the current snapshot as TIFF (see :mod:`.export`)."""
        if self.model.state is None:
            raise RuntimeError("no maps to export yet")
        return export_tiffs(self.model.state, directory, stem)

    def _ask_png(self) -> None:
        path, _ = QtWidgets.QFileDialog.getSaveFileName(self, "Save view as PNG",
                                                        "sxdm_view.png", "PNG (*.png)")
        if path:
            self.export_png(path)

    def _ask_tiff(self) -> None:
        if self.model.state is None:
            self.statusBar().showMessage("no maps to export yet", 5000)
            return
        directory = QtWidgets.QFileDialog.getExistingDirectory(self, "Export maps as TIFF into")
        if directory:
            paths = self.export_tiff(directory)
            self.statusBar().showMessage(f"wrote {len(paths)} TIFF files to {directory}", 5000)

    def mean_draw_ms(self) -> float:
        """Mean time of the recent redraws, in milliseconds (NaN before the first)."""
        return 1000 * float(np.mean(self.draw_times)) if self.draw_times else math.nan
