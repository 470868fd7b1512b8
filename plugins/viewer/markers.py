"""What is drawn over a map panel's image: the outline of the selected pixel and the highlight
of the selected particle, both in image coordinates (they follow the image's transform)."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtWidgets

#: how much the pixels outside a highlighted particle are veiled in white (0-255)
VEIL_ALPHA = 170


class PixelMarker:
    """A square around one pixel (white under black: visible on any colour)."""

    def __init__(self, image: pg.ImageItem) -> None:
        self.items = []
        for colour, width in (("w", 3.5), ("k", 1.5)):
            item = QtWidgets.QGraphicsRectItem(0, 0, 1, 1, image)
            pen = pg.mkPen(colour, width=width)
            pen.setCosmetic(True)
            item.setPen(pen)
            item.setZValue(10)
            item.hide()
            self.items.append(item)

    def place(self, row: int | None, col: int | None) -> None:
        """Around pixel (row, col), or hidden for None."""
        for item in self.items:
            if row is None:
                item.hide()
            else:
                item.setRect(col, row, 1, 1)
                item.show()


def veil_image(region: np.ndarray) -> np.ndarray:
    """RGBA bytes: white veil outside ``region`` (bool map), a black rim on its border pixels
    (a region pixel with a neighbour outside), clear inside."""
    region = np.asarray(region, bool)
    padded = np.pad(region, 1, constant_values=False)
    inner = (padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
    rim = region & ~inner
    out = np.zeros(region.shape + (4,), np.uint8)
    out[~region] = (255, 255, 255, VEIL_ALPHA)
    out[rim] = (0, 0, 0, 110)
    return out


class RegionHighlight:
    """Veils everything but one region of the map (the selected particle) so it stands out."""

    def __init__(self, image: pg.ImageItem) -> None:
        self.item = pg.ImageItem(axisOrder="row-major")
        self.item.setParentItem(image)
        self.item.setZValue(5)
        self.item.setAcceptedMouseButtons(QtCore.Qt.MouseButton.NoButton)   # clicks: the map's
        self.item.setAcceptHoverEvents(False)
        self.item.hide()

    def show_region(self, region: np.ndarray | None) -> None:
        """Highlight ``region`` (bool map); None removes the highlight."""
        if region is None:
            self.item.hide()
            return
        self.item.setImage(veil_image(region), autoLevels=False, levels=(0, 255))
        self.item.show()
