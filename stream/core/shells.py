"""q shells: the slicing of a scan's |Q| range into equal slices, each with its own exact moments.

Two phases of one crystal (LiNiO2 H2 and H3 during cycling) diffract at |Q| a few percent
apart in the same map pixel; the moments of the whole detector ROI then average them into one
d that no phase has. The accumulate kernel can keep, per map pixel, the moments
``[S0, S1x, S1y, S1z]`` (S1 of dq = q - q_ref, as the other moments) of the counts whose |Q|
falls in each slice; summing a phase's slices gives the exact centre of mass of its counts
(:mod:`sxdm_stream.analysis.phases`), free of the binning bias of the 3D histogram.

|Q| = |k_f - k_i| does not depend on the rocking angle (the sample rotation keeps lengths):
each detector pixel stays in one slice for the whole scan, so its slice index is computed once
(:func:`shell_index`) and the kernel only looks it up. The slices span the smallest to the
largest |Q| an unmasked ROI pixel reaches, padded by :data:`SHELL_PAD` of that span on either
side so that rounding never puts an extreme pixel outside.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sxdm_stream.errors import ConfigError

#: padding of the |Q| range on either side, as a fraction of the range
SHELL_PAD = 1e-6
#: most slices (the kernel's slice table is int16)
MAX_SHELLS = 32767
#: moments kept per slice: S0 and S1 (x, y, z) of dq = q - q_ref
N_SHELL_MOMENTS = 4


@dataclass(frozen=True)
class QShells:
    """``n`` equal slices of |Q| (1/Angstrom): slice k holds ``lo + k step <= |Q| < lo + (k+1) step``."""

    lo: float
    step: float
    n: int

    def __post_init__(self) -> None:
        if not 1 <= self.n <= MAX_SHELLS:
            raise ConfigError(f"q shells need 1 to {MAX_SHELLS} slices, got {self.n}")
        if not self.step > 0 or not np.isfinite(self.lo):
            raise ConfigError(f"q shells need a finite lo and a positive step, got "
                              f"lo {self.lo}, step {self.step}")

    @property
    def edges(self) -> np.ndarray:
        """(n + 1,) slice edges in |Q|, 1/Angstrom."""
        return self.lo + self.step * np.arange(self.n + 1)

    @property
    def centres(self) -> np.ndarray:
        """(n,) slice centres in |Q|, 1/Angstrom."""
        return self.lo + self.step * (np.arange(self.n) + 0.5)

    def index(self, q_abs) -> np.ndarray:
        """Slice index of each |Q| (1/Angstrom); -1 outside the slices: the kernel's rule."""
        f = np.floor((np.asarray(q_abs, float) - self.lo) / self.step)
        return np.where((f >= 0) & (f < self.n), f, -1).astype(np.int64)

    def describe(self) -> dict:
        return {"lo": float(self.lo), "step": float(self.step), "n": int(self.n)}


def shells_for_pixels(kf: np.ndarray, ki: np.ndarray, mask: np.ndarray, n: int) -> QShells:
    """``n`` slices over the |Q| = |k_f - k_i| of the unmasked pixels.

    Parameters
    ----------
    kf : (rows, cols, 3) outgoing wave vectors of the ROI pixels, lab frame, 1/Angstrom
        (``Geometry.kf_lab``, as ``ScanSetup.kf``).
    ki : (3,) incident wave vector, 1/Angstrom.
    mask : (rows, cols) True = excluded pixel.
    n : number of slices.
    """
    q_abs = np.linalg.norm(np.asarray(kf, float) - np.asarray(ki, float), axis=-1)[~mask]
    if q_abs.size == 0:
        raise ConfigError("q shells: every pixel of the detector ROI is masked")
    lo, hi = float(q_abs.min()), float(q_abs.max())
    pad = SHELL_PAD * max(hi - lo, 1e-6 * hi)
    return QShells(lo - pad, (hi - lo + 2 * pad) / n, int(n))


def shells_for_scan(geometry, scan, n: int) -> QShells:
    """``n`` slices over the |Q| the unmasked ROI pixels of ``geometry`` reach during ``scan``
    (a :class:`~sxdm_stream.core.geometry.Geometry` and a
    :class:`~sxdm_stream.core.scan.ScanDescription`)."""
    kf = geometry.kf_lab(scan.angles(0))
    return shells_for_pixels(kf, geometry.ki, geometry.detector.roi_mask(), n)


def shell_index(shells: QShells, kf: np.ndarray, ki: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(rows, cols) slice of every ROI pixel (-1 for masked pixels): the kernel's table.

    int16 (at most :data:`MAX_SHELLS` slices): the kernel reads it beside k_f for every
    counting pixel, and a table a quarter the size of int64 stays in cache.
    """
    q_abs = np.linalg.norm(np.asarray(kf, float) - np.asarray(ki, float), axis=-1)
    return np.ascontiguousarray(np.where(mask, -1, shells.index(q_abs)), dtype=np.int16)
