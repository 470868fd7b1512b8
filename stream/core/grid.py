"""The regular q-space grid that every map pixel's histogram lives on, and its memory budget.

Bin convention follows XSOCS (and xrayutilities' Gridder3D): with ``bins`` bins between
``q_min`` and ``q_max`` the bin *centres* are ``q_min + step * arange(bins)`` with
``step = (q_max - q_min) / (bins - 1)``, so the extreme pixels fall on the centres of the
first and last bins and the edges are ``q_min - step/2 .. q_max + step/2``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sxdm_stream.core.geometry import Geometry
from sxdm_stream.core.scan import ScanDescription
from sxdm_stream.errors import ConfigError, HistogramBudgetError

#: default cap on bins per axis when the grid is derived from the scan's q sampling
DEFAULT_MAX_BINS = 32


@dataclass(frozen=True)
class QGrid:
    """A regular 3D grid in q (1/Angstrom): bin centres ``lo + step * arange(bins)``."""

    lo: tuple[float, float, float]
    step: tuple[float, float, float]
    bins: tuple[int, int, int]

    def __post_init__(self) -> None:
        if len(self.bins) != 3 or min(self.bins) < 1:
            raise ConfigError(f"q grid needs three positive bin counts, got {self.bins}")
        if min(self.step) <= 0:
            raise ConfigError(f"q grid steps must be positive, got {self.step}")

    @property
    def n_bins(self) -> int:
        return int(np.prod(self.bins))

    @property
    def hi(self) -> np.ndarray:
        """Centre of the last bin along each axis."""
        return np.asarray(self.lo) + np.asarray(self.step) * (np.asarray(self.bins) - 1)

    @property
    def edges_lo(self) -> np.ndarray:
        """Lower edge of the first bin along each axis."""
        return np.asarray(self.lo) - 0.5 * np.asarray(self.step)

    def centres(self, axis: int) -> np.ndarray:
        """Bin centres (1/Angstrom) along axis 0 (qx), 1 (qy) or 2 (qz)."""
        return self.lo[axis] + self.step[axis] * np.arange(self.bins[axis])

    @classmethod
    def from_bounds(cls, q_min, q_max, bins) -> "QGrid":
        """Grid whose first and last bin centres are ``q_min`` and ``q_max``."""
        q_min, q_max = np.asarray(q_min, float), np.asarray(q_max, float)
        bins = tuple(int(b) for b in bins)
        span = np.maximum(q_max - q_min, 1e-12)
        single = np.asarray(bins) == 1
        step = np.where(single, span, span / np.maximum(np.asarray(bins) - 1, 1))
        lo = np.where(single, q_min + 0.5 * span, q_min)   # one bin: centred on the range
        return cls(tuple(float(v) for v in lo), tuple(float(s) for s in step), bins)

    def describe(self) -> dict:
        return {"lo": list(self.lo), "step": list(self.step), "bins": list(self.bins)}


def scan_q_bounds(geometry: Geometry, scan: ScanDescription) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """q_min, q_max over the unmasked ROI pixels of every rocking angle, and the sampling step.

    The step along each q axis is the largest change of that component between neighbouring
    samples (detector rows, detector columns, rocking angles): the finest grid the data can
    fill without empty bins (XSOCS' "recommended" grid).
    """
    keep = ~geometry.detector.roi_mask()
    qs = np.stack([geometry.q(scan.angles(k)) for k in range(scan.n_angles)])
    valid = qs[:, keep]  # (angles, pixels, 3)
    q_min, q_max = valid.min(axis=(0, 1)), valid.max(axis=(0, 1))
    steps = [np.abs(np.diff(qs, axis=a)).max(axis=(0, 1, 2)) for a in (1, 2) if qs.shape[a] > 1]
    if qs.shape[0] > 1:
        steps.append(np.abs(np.diff(qs, axis=0)).max(axis=(0, 1, 2)))
    step = np.max(steps, axis=0) if steps else np.full(3, 1e-3)
    return q_min, q_max, step


def grid_for_scan(
    geometry: Geometry, scan: ScanDescription, bins=None, max_bins: int = DEFAULT_MAX_BINS
) -> QGrid:
    """The histogram grid covering the scan's q sampling.

    ``bins=None`` takes, per axis, the number of sampling steps across the covered range
    (so no bin stays empty), capped at ``max_bins``.
    """
    q_min, q_max, step = scan_q_bounds(geometry, scan)
    if bins is None:
        natural = np.floor((q_max - q_min) / np.maximum(step, 1e-12)).astype(int) + 1
        bins = np.clip(natural, 1, max_bins)
    return QGrid.from_bounds(q_min, q_max, bins)


def histogram_bytes(n_points: int, bins, itemsize: int) -> int:
    """Memory of one histogram per map pixel."""
    return int(n_points) * int(np.prod(bins)) * int(itemsize)


def _size(n_bytes: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{int(n_bytes)} B"


def bins_that_fit(bins, max_bins_per_point: int) -> tuple[int, int, int]:
    """The largest bins of the same proportions as ``bins`` with at most that many in all."""
    scale = (max_bins_per_point / float(np.prod(bins))) ** (1.0 / 3.0)
    fit = [max(1, int(b * scale)) for b in bins]
    while int(np.prod(fit)) > max_bins_per_point and max(fit) > 1:
        fit[int(np.argmax(fit))] -= 1          # max(1, ...) may have rounded a small axis up
    return tuple(fit)


def check_histogram_budget(n_points: int, bins, itemsize: int, budget_bytes: int) -> None:
    """Refuse, before the scan starts, a histogram that would not fit ``budget_bytes``.

    The message says which bins would fit, so the user can pick at once.
    """
    need = histogram_bytes(n_points, bins, itemsize)
    if need <= budget_bytes:
        return
    per_point = budget_bytes // max(int(n_points) * int(itemsize), 1)
    bins = tuple(int(b) for b in bins)
    if per_point < 1:
        fits = "not even one bin per map pixel fits"
    else:
        cube = int(np.floor(per_point ** (1.0 / 3.0) + 1e-9))
        fits = (f"at most {per_point} bins per map pixel fit: for example "
                f"{bins_that_fit(bins, per_point)} (same proportions) or {cube}x{cube}x{cube}")
    raise HistogramBudgetError(
        f"a q-space histogram of {bins} bins for {n_points} map pixels needs {_size(need)}, "
        f"over the budget of {_size(budget_bytes)}; {fits}; or raise histogram_budget_mib, "
        f"or set the histogram bins to 0 0 0 to keep moments only"
    )
