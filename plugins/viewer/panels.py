"""The map panels: one image per map, all sharing zoom and pan.

Axes are in micrometres (x along the fast motor, y along the slow one, y up as the motor
runs), each panel has a scale bar and a colour bar in its map's units, and masked pixels are
blank (NaN is drawn transparent). Updates are incremental: a new snapshot sets the data of the
existing image items, with levels computed from a sample of the values; the view's zoom, the
transform and the scale bar change only when the scan's geometry does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtGui, QtWidgets
from PySide6.QtCore import Signal

from sxdm_stream import misorientation_rgb

from .legend import ColourWheel
from .markers import PixelMarker, RegionHighlight
from .model import MapState

#: levels come from at most this many values of a map (a strided sample): cheap on any map
LEVEL_SAMPLE = 20_000


def hue_colormap() -> pg.ColorMap:
    """The HSV hue wheel as a colour map: the tilt direction panel uses the very colours of the
    misorientation map and of the pole figure (red = 0 deg, counter-clockwise)."""
    hues = np.linspace(0.0, 1.0, 13)
    rgb = misorientation_rgb(np.ones_like(hues), 360.0 * hues)   # every tilt the largest
    return pg.ColorMap(hues, (rgb * 255).astype(np.uint8))


@dataclass(frozen=True)
class PanelSpec:
    """One map panel: ``key`` names the map, ``levels`` how its colour range is chosen
    (``robust``: 1st-99th percentile; ``zero``: 0 to the 99th; ``symmetric``: centred on 0;
    ``cyclic``: 0-360 degrees; ``rgb``: the map is a colour image)."""

    key: str
    title: str
    colormap: str | None
    levels: str


PANELS: tuple[PanelSpec, ...] = (
    PanelSpec("intensity", "integrated intensity", "viridis", "robust"),
    PanelSpec("d_spacing", "d-spacing", "plasma", "robust"),
    PanelSpec("strain", "strain", "CET-D1A", "symmetric"),
    PanelSpec("fwhm", "FWHM", "cividis", "robust"),
    PanelSpec("tilt_altitude", "tilt magnitude", "inferno", "zero"),
    PanelSpec("tilt_azimuth", "tilt direction", "hue", "cyclic"),
    PanelSpec("misorientation", "misorientation", None, "rgb"),
)


def sample_values(a: np.ndarray) -> np.ndarray:
    """The finite values of a strided sample of ``a`` (at most ~LEVEL_SAMPLE of them)."""
    flat = np.asarray(a).ravel()
    step = max(1, flat.size // LEVEL_SAMPLE)
    sample = flat[::step]
    return sample[np.isfinite(sample)]


def colour_levels(a: np.ndarray, mode: str) -> tuple[float, float]:
    """(low, high) for a map, by ``mode`` (see :class:`PanelSpec`); never an empty range."""
    if mode == "cyclic":
        return 0.0, 360.0
    v = sample_values(a)
    if v.size == 0:
        return (-1.0, 1.0) if mode == "symmetric" else (0.0, 1.0)
    if mode == "symmetric":
        top = float(np.percentile(np.abs(v), 99))
        return (-top, top) if top > 0 else (-1.0, 1.0)
    lo, hi = (float(x) for x in np.percentile(v, [1, 99]))
    if mode == "zero":
        lo = 0.0
    if not hi > lo:
        pad = abs(hi) * 1e-6 or 1.0
        lo, hi = lo - pad, hi + pad
    return lo, hi


def rgba_image(rgb: np.ndarray) -> np.ndarray:
    """(rows, cols, 3) floats in [0, 1], NaN outside the mask -> RGBA bytes, transparent there."""
    rgb = np.asarray(rgb, float)
    valid = np.all(np.isfinite(rgb), axis=-1)
    out = np.zeros(rgb.shape[:2] + (4,), np.uint8)
    out[..., :3] = (np.clip(np.nan_to_num(rgb), 0.0, 1.0) * 255).astype(np.uint8)
    out[..., 3] = np.where(valid, 255, 0)
    return out


def nice_length(span: float) -> float:
    """A 1-2-5 length of about a quarter of ``span`` (for scale bars)."""
    if not span > 0:
        return 1.0
    target = span / 4.0
    base = 10.0 ** math.floor(math.log10(target))
    return max(m * base for m in (1, 2, 5) if m * base <= target)


class PixelImage(pg.ImageItem):
    """An image whose pixels can be clicked: emits (row, col) of the clicked and hovered pixel."""

    pixelClicked = Signal(int, int)
    pixelHovered = Signal(int, int)

    def __init__(self) -> None:
        super().__init__(axisOrder="row-major")

    def _pixel(self, pos: QtCore.QPointF) -> tuple[int, int] | None:
        if self.image is None:
            return None
        row, col = int(math.floor(pos.y())), int(math.floor(pos.x()))
        rows, cols = self.image.shape[:2]
        return (row, col) if 0 <= row < rows and 0 <= col < cols else None

    def hoverEvent(self, ev) -> None:
        if ev.isExit():
            return
        ev.acceptClicks(QtCore.Qt.MouseButton.LeftButton)
        pixel = self._pixel(ev.pos())
        if pixel is not None:
            self.pixelHovered.emit(*pixel)

    def mouseClickEvent(self, ev) -> None:
        if ev.button() != QtCore.Qt.MouseButton.LeftButton:
            super().mouseClickEvent(ev)
            return
        pixel = self._pixel(ev.pos())
        if pixel is not None:
            ev.accept()
            self.pixelClicked.emit(*pixel)


class MapPanel(pg.PlotItem):
    """One map: image, colour bar with units, scale bar, marker of the selected pixel."""

    def __init__(self, spec: PanelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.auto_levels = True
        self.setTitle(spec.title, size="10pt")
        self.getViewBox().setAspectLocked(True)
        self.getViewBox().setBackgroundColor("#ffffff")
        self.hideButtons()                     # the "A" (auto range) button: see Reset zoom
        self.image = PixelImage()
        self.addItem(self.image)
        self.colour_bar = None
        if spec.colormap is not None:
            cmap = hue_colormap() if spec.colormap == "hue" else pg.colormap.get(spec.colormap)
            self.colour_bar = pg.ColorBarItem(colorMap=cmap, width=12, interactive=spec.levels
                                              != "cyclic", colorMapMenu=False, pen="#555",
                                              hoverPen="#c00")
            self.colour_bar.setImageItem(self.image, insert_in=self)
            self.colour_bar.sigLevelsChangeFinished.connect(self._levels_set_by_hand)
            # the title row, above the colour bar (the bar's own axis label would sit beside
            # the next panel's axis and read as if it belonged there)
            self.units_label = pg.LabelItem("", size="9pt")
            self.layout.addItem(self.units_label, 0, 5)
        else:
            self.units_label = None
        self.marker = PixelMarker(self.image)
        self.highlight = RegionHighlight(self.image)
        self.note = ""                         # why the panel is blank (no such map here)
        self.scale_bar: pg.ScaleBar | None = None
        self._grid: tuple | None = None
        self.new_geometry = False
        self.title_text = spec.title
        self.units: str | None = None          # of the map shown (as written on screen)
        for side in ("left", "bottom"):
            self.getAxis(side).enableAutoSIPrefix(False)
        if self.colour_bar is not None:
            self.colour_bar.axis.enableAutoSIPrefix(False)
            self.colour_bar.axis.setWidth(None)         # room for the ticks and the units

    def _levels_set_by_hand(self) -> None:
        self.auto_levels = False

    def set_units(self, units: str, title: str | None = None) -> None:
        """Units above the colour bar and in the title ("strain (µstrain)"), and the note."""
        title = title or self.spec.title
        title = f"{title} ({units})" if units else title
        if self.note:
            title += f" — <i>{self.note}</i>"
        self.setTitle(title, size="10pt")
        if self.units_label is not None:
            self.units_label.setText(units, size="9pt")

    def show_map(self, data: np.ndarray, state: MapState, units: str, note: str = "") -> None:
        """Put new data in the existing image (no new items); rescale only if asked to.
        ``note`` says why the panel is blank (empty: it is not)."""
        if note != self.note:
            self.note = note
            self.set_units(self.units or "", self.title_text)
        self._follow_geometry(state)
        if self.spec.levels == "rgb":
            self.image.setImage(rgba_image(data), autoLevels=False, levels=(0, 255))
        else:
            self._show_values(data, units)

    def _show_values(self, data: np.ndarray, units: str) -> None:
        if self.auto_levels or self.image.image is None:
            levels = colour_levels(data, self.spec.levels)
        else:
            levels = self.colour_bar.levels()
        self.image.setImage(data, autoLevels=False, levels=levels)
        self.colour_bar.rounding = (levels[1] - levels[0]) / 1000.0
        self.colour_bar.setLevels(levels)
        if units != self.units:
            self.units = units
            self.set_units(units, self.title_text)

    def rescale(self) -> None:
        """Back to automatic colour levels."""
        self.auto_levels = True

    def _follow_geometry(self, state: MapState) -> None:
        grid = (state.pixel_grid(), state.shape, state.motor(0), state.motor(1))
        if grid == self._grid:
            return
        self._grid = grid
        (x0, y0, sx, sy), cols = grid[0], grid[1][1]
        transform = QtGui.QTransform()
        transform.translate(x0 - sx / 2.0, y0 - sy / 2.0)
        transform.scale(sx, sy)
        self.image.setTransform(transform)
        self.new_geometry = True
        self.setLabel("bottom", f"{state.motor(1)} (µm)")
        self.setLabel("left", f"{state.motor(0)} (µm)")
        length = nice_length(abs(sx) * cols)
        if self.scale_bar is None:
            self.scale_bar = pg.ScaleBar(length, width=4, brush="k", pen="w", offset=(-12, -12))
            self.scale_bar.setParentItem(self.getViewBox())
        self.scale_bar.size = length
        self.scale_bar.updateBar()
        self.scale_bar.text.setText(f"{length:g} µm", color="k")

    def mark(self, row: int | None, col: int | None) -> None:
        """Outline pixel (row, col); None hides the outline."""
        self.marker.place(row, col)


class MapGrid(pg.GraphicsLayoutWidget):
    """Every map panel in one scene, zoom and pan linked.

    Signals
    -------
    pixelClicked(int, int) : a map pixel (row, col) was clicked in any panel.
    pixelHovered(int, int) : the mouse is over a map pixel (row, col).
    """

    pixelClicked = Signal(int, int)
    pixelHovered = Signal(int, int)

    COLUMNS = 4

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.fwhm_axis = 2
        self.panels: dict[str, MapPanel] = {}
        for i, spec in enumerate(PANELS):
            panel = MapPanel(spec)
            self.addItem(panel, row=i // self.COLUMNS, col=i % self.COLUMNS)
            panel.image.pixelClicked.connect(self.pixelClicked)
            panel.image.pixelHovered.connect(self.pixelHovered)
            self.panels[spec.key] = panel
        self.panels["fwhm"].title_text = f"FWHM along q{'xyz'[self.fwhm_axis]}"
        self.wheel = ColourWheel()
        self.addItem(self.wheel, row=1, col=3)
        self._syncing = False
        for panel in self.panels.values():
            vb = panel.getViewBox()
            vb.sigRangeChangedManually.connect(lambda _mask, vb=vb: self._zoomed_by_hand(vb))
            vb.sigResized.connect(self._follow_resize)
        self.zoomed = False

    @property
    def views(self) -> list[pg.ViewBox]:
        """The view boxes of the map panels."""
        return [panel.getViewBox() for panel in self.panels.values()]

    def share_view(self, source: pg.ViewBox) -> None:
        """Show in every panel what ``source`` shows: same centre, same micrometres per screen
        pixel. (pyqtgraph's axis links fight the locked aspect ratio of panels of different
        widths, so the views are shared by hand.)"""
        if self._syncing:
            return
        (x0, x1), (y0, y1) = source.viewRange()
        width, height = source.width(), source.height()
        if width <= 0 or height <= 0:
            return
        per_pixel = max((x1 - x0) / width, (y1 - y0) / height)
        cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
        self._syncing = True
        try:
            for view in self.views:
                if view is not source and view.width() > 0 and view.height() > 0:
                    hw, hh = per_pixel * view.width() / 2.0, per_pixel * view.height() / 2.0
                    view.setRange(xRange=(cx - hw, cx + hw), yRange=(cy - hh, cy + hh),
                                  padding=0)
        finally:
            self._syncing = False

    def _zoomed_by_hand(self, view: pg.ViewBox) -> None:
        self.zoomed = True
        self.share_view(view)

    def _follow_resize(self, _view: pg.ViewBox) -> None:
        if self._syncing:
            return
        if self.zoomed:
            self.share_view(self.views[0])
        else:
            self.show_whole_map()

    def show_whole_map(self) -> None:
        """Zoom every panel out to the whole map, at one scale (micrometres per screen pixel)
        that fits the map into the smallest panel."""
        first = next(iter(self.panels.values())).image
        if first.image is None:
            return
        self.zoomed = False
        bounds = first.mapRectToView(first.boundingRect())
        sizes = [(view.width(), view.height()) for view in self.views]
        if min(min(size) for size in sizes) <= 0:
            return
        per_pixel = 1.04 * max(max(bounds.width() / w, bounds.height() / h) for w, h in sizes)
        centre = bounds.center()
        self._syncing = True
        try:
            for view, (w, h) in zip(self.views, sizes):
                hw, hh = per_pixel * w / 2.0, per_pixel * h / 2.0
                view.setRange(xRange=(centre.x() - hw, centre.x() + hw),
                              yRange=(centre.y() - hh, centre.y() + hh), padding=0)
        finally:
            self._syncing = False

    def set_fwhm_axis(self, axis: int) -> None:
        """Show the FWHM along qx (0), qy (1) or qz (2)."""
        self.fwhm_axis = int(axis)
        panel = self.panels["fwhm"]
        panel.title_text = f"FWHM along q{'xyz'[self.fwhm_axis]}"
        panel.set_units(panel.units or "", panel.title_text)
        panel.rescale()

    def map_data(self, state: MapState, key: str) -> tuple[np.ndarray, str, str]:
        """The array a panel shows, its units and a note: a map the state lacks (a q-ROI
        snapshot carries only some) is blank (NaN), with a note saying so."""
        name = f"fwhm_q{'xyz'[self.fwhm_axis]}" if key == "fwhm" else key
        if name in state.arrays:
            return state.arrays[name], state.units(name), ""
        shape = state.shape + ((3,) if key == "misorientation" else ())
        source = state.map_source or "this snapshot"
        return np.full(shape, np.nan), state.units(name), f"not in {source}"

    def show_state(self, state: MapState) -> None:
        """Draw a new snapshot into the existing panels."""
        for key, panel in self.panels.items():
            data, units, note = self.map_data(state, key)
            panel.show_map(data, state, units, note)
        first = next(iter(self.panels.values()))
        if first.new_geometry:                      # a new scan: show all of it, once
            for panel in self.panels.values():
                panel.new_geometry = False
            self.show_whole_map()
        tilt = state.arrays["tilt_altitude"]
        finite = np.isfinite(tilt)
        self.wheel.set_max_tilt(float(tilt[finite].max()) if finite.any() else math.nan)

    def mark(self, row: int | None, col: int | None) -> None:
        """Outline pixel (row, col) in every panel."""
        for panel in self.panels.values():
            panel.mark(row, col)

    def highlight(self, region: np.ndarray | None) -> None:
        """Veil every panel but ``region`` (bool map: a particle); None lifts the veil."""
        for panel in self.panels.values():
            panel.highlight.show_region(region)

    def rescale(self) -> None:
        """Automatic colour levels in every panel."""
        for panel in self.panels.values():
            panel.rescale()
