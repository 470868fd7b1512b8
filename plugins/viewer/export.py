"""Export of the maps as TIFF, for Fiji/ImageJ and anything else that reads images.

One file per map, ``<stem>_<map>.tif``: 32-bit float values in the map's units (NaN outside the
mask), the misorientation as 8-bit RGB, with the pixel size in micrometres (ImageJ
calibration). Rows are written as the viewer shows them: the top row of the image is the
largest position along the slow motor (y up), so the file looks like the screen.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import tifffile

from sxdm_stream import MAP_FIELDS

from .model import MapState
from .panels import rgba_image

log = logging.getLogger(__name__)


def displayed_rows(a: np.ndarray, state: MapState) -> np.ndarray:
    """``a`` with its rows in screen order (top = largest y), columns left to right."""
    _x0, _y0, sx, sy = state.pixel_grid()
    out = a[::-1] if sy > 0 else a
    return out[:, ::-1] if sx < 0 else out


def export_tiffs(state: MapState, directory: str | Path, stem: str = "sxdm_maps") -> list[Path]:
    """Write every map of ``state`` as a calibrated TIFF; returns the paths written.

    Parameters
    ----------
    state : the maps shown.
    directory : where to write (created if missing).
    stem : file names are ``<stem>_<map>.tif``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _x0, _y0, sx, sy = state.pixel_grid()
    resolution = (1.0 / abs(sx), 1.0 / abs(sy))        # pixels per micrometre
    written = []
    for name, (units, title) in MAP_FIELDS.items():
        if name not in state.arrays:
            continue
        data = displayed_rows(np.asarray(state.arrays[name]), state)
        info = json.dumps({"map": name, "title": title, "units": units,
                           "series_id": state.header.series_id,
                           "scan": state.scan.get("scan_id", "")})
        path = directory / f"{stem}_{name}.tif"
        if name == "misorientation":
            rgb = rgba_image(data)[..., :3]
            tifffile.imwrite(path, rgb, imagej=True, resolution=resolution, photometric="rgb",
                             metadata={"unit": "um", "axes": "YXS", "Info": info})
        else:
            tifffile.imwrite(path, data.astype(np.float32), imagej=True, resolution=resolution,
                             metadata={"unit": "um", "axes": "YX", "Info": info})
        written.append(path)
    log.info("exported %d maps to %s", len(written), directory)
    return written
