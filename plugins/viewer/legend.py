"""The legend of the misorientation map: a colour wheel (hue = tilt direction, counter-clockwise
from the azimuth reference e1, saturation = tilt magnitude from 0 at the centre to the largest
tilt of the map at the rim), coloured by the very function that colours the map."""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore

from sxdm_stream import misorientation_rgb


def wheel_rgba(size: int) -> np.ndarray:
    """(size, size, 4) RGBA bytes of the wheel, transparent outside it; row 0 at the bottom."""
    y, x = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    radius = np.hypot(x, y)
    azimuth = np.degrees(np.arctan2(y, x)) % 360.0
    rgb = misorientation_rgb(np.clip(radius, 0, 1), azimuth)   # the rim is the largest tilt
    out = np.zeros((size, size, 4), np.uint8)
    out[..., :3] = (np.clip(rgb, 0, 1) * 255).astype(np.uint8)
    out[..., 3] = np.where(radius <= 1, 255, 0)
    return out


class ColourWheel(pg.PlotItem):
    """Legend of the misorientation map: hue = tilt direction, saturation = tilt magnitude."""

    def __init__(self, size: int = 129) -> None:
        super().__init__()
        self.setTitle("misorientation legend", size="10pt")
        self.hideAxis("left")
        self.hideAxis("bottom")
        self.setMouseEnabled(False, False)
        self.setMenuEnabled(False)
        self.getViewBox().setAspectLocked(True)
        wheel = pg.ImageItem(wheel_rgba(size), axisOrder="row-major")
        wheel.setRect(QtCore.QRectF(-1, -1, 2, 2))
        self.addItem(wheel)
        for text, (x0, y0), anchor in (("0°", (1.05, 0), (0, 0.5)), ("90°", (0, 1.05), (0.5, 1)),
                                       ("180°", (-1.05, 0), (1, 0.5)),
                                       ("270°", (0, -1.05), (0.5, 0))):
            label = pg.TextItem(text, color="k", anchor=anchor)
            label.setPos(x0, y0)
            self.addItem(label)
        self.caption = pg.TextItem("", color="k", anchor=(0.5, 0))
        self.caption.setPos(0, -1.3)
        self.addItem(self.caption)
        self.setXRange(-1.5, 1.5, padding=0)
        self.setYRange(-1.6, 1.3, padding=0)

    def set_max_tilt(self, degrees: float) -> None:
        """Say which tilt the rim of the wheel stands for."""
        text = f"centre 0°, rim {degrees:.3f}°" if math.isfinite(degrees) else "no tilt yet"
        self.caption.setText(f"hue: direction; saturation: magnitude\n{text}")
