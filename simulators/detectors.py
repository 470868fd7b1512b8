"""Detector models for the simulator: Maxipix 2x2 (ID01's default) and Eiger2 500K.

A model knows the layout of its sensor: which physical pixel collects the photons that land
on each position of a regular "virtual" pixel grid (chip edges and gaps), which pixels are
dead or hot, and the pixel mask a real detector ships with its data.

Maxipix 2x2 (516 x 516, 55 um): four 256 x 256 chips. The edge pixels next to the cross-shaped
gap are three pixels wide, so in the 516-pixel image row/column 255 collects the photons of
virtual positions 255-257, 260 those of 258-260, and 256-259 never count (what XSOCS' "Maxipix
gap correction" undoes by spreading them). The default mask excludes 255-260.

Eiger2 500K (514 x 1030, 75 um): 2 x 4 chips of 256 x 256 with 2-pixel (rows) and 2-pixel
(columns) inter-chip lines that the firmware fills from double-size edge pixels; we model it
as a uniform grid whose inter-chip lines are masked, as the detector's own pixel mask does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sxdm_stream.core.geometry import Detector


@dataclass(frozen=True, eq=False)
class DetectorModel:
    """A detector plus the defects the simulator reproduces.

    ``physical_row[v]`` / ``physical_col[v]`` is the image row / column that collects virtual
    position v (-1: never counts). ``hot_rate`` is the mean counts per frame of a hot pixel.
    """

    detector: Detector
    physical_row: np.ndarray = field(repr=False)
    physical_col: np.ndarray = field(repr=False)
    dead_pixels: np.ndarray = field(repr=False)   # (n, 2) row, col
    hot_pixels: np.ndarray = field(repr=False)    # (n, 2) row, col
    hot_rate: float = 500.0


def _defects(shape, n_dead, n_hot, seed, forbidden) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    picks = []
    while len(picks) < n_dead + n_hot:
        r, c = int(rng.integers(shape[0])), int(rng.integers(shape[1]))
        if not forbidden[r, c] and (r, c) not in picks:
            picks.append((r, c))
    arr = np.array(picks, dtype=np.int64).reshape(-1, 2)
    return arr[:n_dead], arr[n_dead:]


def _model(shape, pixel_size_m, distance_m, beam_center, roi, phys_row, phys_col,
           gap_mask, n_dead, n_hot, seed, name) -> DetectorModel:
    dead, hot = _defects(shape, n_dead, n_hot, seed, gap_mask)
    mask = gap_mask.copy()
    for r, c in np.concatenate([dead, hot]):
        mask[r, c] = True
    det = Detector(shape=shape, pixel_size_m=pixel_size_m, distance_m=distance_m,
                   beam_center=beam_center, roi=roi, mask=mask, name=name)
    return DetectorModel(det, phys_row, phys_col, dead, hot)


def maxipix_2x2(distance_m: float = 0.6, beam_center=(128.0, 388.0), roi=None,
                n_dead: int = 40, n_hot: int = 12, seed: int = 7) -> DetectorModel:
    """ID01's Maxipix 2x2: 516 x 516 pixels of 55 um, big edge pixels at the chip gaps."""
    n = 516
    phys = np.arange(n)
    phys[256:258] = 255
    phys[258:260] = 260
    gap = np.zeros((n, n), dtype=bool)
    gap[255:261, :] = True
    gap[:, 255:261] = True
    return _model((n, n), 55e-6, distance_m, beam_center, roi, phys, phys.copy(), gap,
                  n_dead, n_hot, seed, "maxipix_2x2")


def eiger2_500k(distance_m: float = 0.8, beam_center=(128.0, 384.0), roi=None,
                n_dead: int = 60, n_hot: int = 20, seed: int = 7) -> DetectorModel:
    """Eiger2 500K: 514 x 1030 pixels of 75 um, inter-chip lines masked."""
    shape = (514, 1030)
    gap = np.zeros(shape, dtype=bool)
    gap[256:258, :] = True
    for c in (256, 514, 772):
        gap[:, c:c + 2] = True
    return _model(shape, 75e-6, distance_m, beam_center, roi, np.arange(shape[0]),
                  np.arange(shape[1]), gap, n_dead, n_hot, seed, "eiger2_500k")


DETECTOR_MODELS = {"maxipix_2x2": maxipix_2x2, "eiger2_500k": eiger2_500k}
