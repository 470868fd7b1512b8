"""Suggest q-space ROIs from the peaks of the q histogram summed over the map.

Several crystals in the beam show up as separate peaks of the summed histogram (what XSOCS
shows as the "QSpace" of the whole map). Peaks are the local maxima of the lightly smoothed
sum that stand out of the valleys towards every stronger peak; every voxel is given to the
peak it reaches by steepest ascent on the smoothed sum (a maximum that is only a shoulder
passes its voxels to the stronger peak it is not separated from). Each peak then gets a box of
``margin_sigma`` standard deviations (of its voxels, per axis) around its centre of mass, faces
snapped outwards to bin edges. Where two boxes overlap, they are cut apart along the axis on
which the peaks are best separated, at the point between the centres weighted by their widths
(snapped to a bin edge): the boxes of a suggestion never overlap, so no count is given to two
crystals. An ellipsoid suggestion is the largest axis-aligned ellipsoid centred on the peak
inside its box, at most ``margin_sigma`` standard deviations.

Pure computation on the histogram: the live processor calls :func:`suggest_rois` on the summed
histogram of a snapshot, prints :func:`format_roi_suggestion` and publishes
:meth:`RoiSuggestion.describe`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from sxdm_stream.core.grid import QGrid
from sxdm_stream.core.qroi import ROI_SHAPES, QRoi
from sxdm_stream.errors import ConfigError


@dataclass(frozen=True)
class QPeak:
    """One peak of the summed histogram and the ROI suggested for it.

    Parameters
    ----------
    roi : the suggested ROI.
    centre : (qx, qy, qz) centre of mass of the peak's voxels, 1/Angstrom.
    sigma : standard deviation of the peak's voxels along qx, qy, qz, 1/Angstrom.
    maximum : q of the highest (smoothed) bin, 1/Angstrom.
    counts : counts of the peak's voxels (summed over the map).
    fraction_in_roi : share of ``counts`` that lies in the ROI's bins.
    """

    roi: QRoi
    centre: tuple[float, float, float]
    sigma: tuple[float, float, float]
    maximum: tuple[float, float, float]
    counts: float
    fraction_in_roi: float

    @property
    def d_spacing(self) -> float:
        """d = 2 pi / |centre|, Angstrom."""
        return float(2.0 * np.pi / np.linalg.norm(self.centre))

    def describe(self) -> dict:
        return {"roi": self.roi.describe(), "centre": list(self.centre), "sigma": list(self.sigma),
                "maximum": list(self.maximum), "counts": self.counts,
                "fraction_in_roi": self.fraction_in_roi, "d_spacing": self.d_spacing}


@dataclass(frozen=True)
class RoiSuggestion:
    """The peaks found, highest (smoothed) maximum first, each with its ROI."""

    peaks: tuple[QPeak, ...]
    total_counts: float

    @property
    def rois(self) -> tuple[QRoi, ...]:
        """The ROIs, ready for ``AccumulationSettings(q_rois=...)``."""
        return tuple(p.roi for p in self.peaks)

    def describe(self) -> dict:
        """JSON-able: what is published and written beside the maps."""
        return {"total_counts": self.total_counts, "peaks": [p.describe() for p in self.peaks]}


def suggest_rois(summed: np.ndarray, grid: QGrid, shape: str = "box", min_fraction: float = 0.05,
                 valley_fraction: float = 0.7, margin_sigma: float = 4.0,
                 smoothing_bins: float = 0.5, max_rois: int = 8,
                 name_prefix: str = "peak") -> RoiSuggestion:
    """Find the separated peaks of a summed q histogram and a ROI around each.

    Parameters
    ----------
    summed : the histogram summed over map pixels, (bx, by, bz) or flat (n_bins,)
        (``Accumulator.histogram.sum(axis=0)``).
    grid : the histogram's grid.
    shape : "box" or "ellipsoid".
    min_fraction : a peak's smoothed height must reach this fraction of the highest.
    valley_fraction : a peak is kept only if, on the straight line to every stronger kept
        peak, the smoothed histogram falls below this fraction of the lower of the two heights
        (otherwise it is a shoulder of the stronger one).
    margin_sigma : half-width of a box in standard deviations of its peak's voxels.
    smoothing_bins : Gaussian smoothing (bins) before peaks are looked for (0: none).
    max_rois : at most this many peaks, the strongest.
    name_prefix : ROIs are named ``{prefix}0``, ``{prefix}1``, ... strongest first.

    Returns
    -------
    RoiSuggestion, with no peaks if the histogram is empty.
    """
    if shape not in ROI_SHAPES:
        raise ConfigError(f"ROI shape {shape!r} is not one of {', '.join(ROI_SHAPES)}")
    hist = np.asarray(summed, dtype=np.float64).reshape(grid.bins)
    smooth = ndimage.gaussian_filter(hist, smoothing_bins, mode="nearest") if smoothing_bins else hist
    if not smooth.max() > 0:
        return RoiSuggestion((), 0.0)
    maxima, owner = _separated_maxima(smooth, min_fraction, valley_fraction)
    maxima = maxima[:max_rois]
    labels = _ascent_labels(smooth, maxima, owner, min_fraction)
    edges = [grid.edges_lo[a] + grid.step[a] * np.arange(grid.bins[a] + 1) for a in range(3)]
    centres = [grid.centres(a) for a in range(3)]
    stats = [_voxel_stats(hist, labels == k + 1, centres) for k in range(len(maxima))]
    boxes = [_margin_box(mean, sigma, margin_sigma, edges) for mean, sigma, _ in stats]
    _cut_overlaps(boxes, stats, edges)
    peaks = []
    for k, ((mean, sigma, counts), box) in enumerate(zip(stats, boxes)):
        lo = np.array([edges[a][box[a, 0]] for a in range(3)])
        hi = np.array([edges[a][box[a, 1]] for a in range(3)])
        if shape == "ellipsoid":
            half = np.minimum(margin_sigma * sigma, np.minimum(mean - lo, hi - mean))
            lo, hi = mean - half, mean + half
        roi = QRoi(f"{name_prefix}{k}", tuple(lo), tuple(hi), shape)
        in_box = hist[box[0, 0]:box[0, 1], box[1, 0]:box[1, 1], box[2, 0]:box[2, 1]]
        mine = (labels == k + 1)[box[0, 0]:box[0, 1], box[1, 0]:box[1, 1], box[2, 0]:box[2, 1]]
        peaks.append(QPeak(roi, tuple(mean), tuple(sigma),
                           tuple(centres[a][maxima[k][a]] for a in range(3)), counts,
                           float(in_box[mine].sum() / counts) if counts > 0 else 0.0))
    return RoiSuggestion(tuple(peaks), float(hist.sum()))


def _separated_maxima(smooth: np.ndarray, min_fraction: float, valley_fraction: float):
    """Local maxima, strongest first, separated by a valley from every stronger one; and, for
    every local maximum above ``min_fraction``, the index of the kept peak that owns it."""
    is_max = (smooth == ndimage.maximum_filter(smooth, size=3, mode="nearest"))
    is_max &= smooth >= min_fraction * smooth.max()
    candidates = sorted(zip(*np.nonzero(is_max)), key=lambda idx: -smooth[idx])
    kept: list[tuple[int, int, int]] = []
    owner: dict[tuple[int, int, int], int] = {}
    for cand in candidates:
        cand = tuple(int(i) for i in cand)
        joined = [k for k, other in enumerate(kept)
                  if _valley(smooth, cand, other) >= valley_fraction * min(smooth[cand], smooth[other])]
        owner[cand] = joined[0] if joined else len(kept)
        if not joined:
            kept.append(cand)
    return kept, owner


def _valley(smooth: np.ndarray, a, b) -> float:
    """The lowest value of ``smooth`` on the straight line between voxels a and b."""
    n = 2 * int(np.max(np.abs(np.subtract(a, b)))) + 2
    t = np.linspace(0.0, 1.0, n)
    points = np.asarray(a, float)[:, None] + np.subtract(b, a)[:, None] * t[None, :]
    return float(ndimage.map_coordinates(smooth, points, order=1, mode="nearest").min())


def _ascent_labels(smooth: np.ndarray, maxima, owner, min_fraction: float) -> np.ndarray:
    """Label (1..n, the index in ``maxima`` + 1) of the peak each voxel reaches by steepest
    ascent; 0 for voxels reaching no peak, or below ``min_fraction**2`` of the top (background
    far from every peak takes no part in the peaks' widths)."""
    shape = np.array(smooth.shape)
    padded = np.pad(smooth, 1, mode="constant", constant_values=-np.inf)
    index = np.indices(smooth.shape)
    parent, best = np.arange(smooth.size).reshape(smooth.shape), smooth.copy()
    for offset in np.ndindex(3, 3, 3):
        shifted = padded[tuple(slice(o, o + n) for o, n in zip(offset, shape))]
        target = np.ravel_multi_index(tuple(np.clip(index[a] + offset[a] - 1, 0, shape[a] - 1)
                                            for a in range(3)), smooth.shape)
        higher = shifted > best
        best = np.where(higher, shifted, best)
        parent = np.where(higher, target, parent)
    parent = parent.ravel()
    while True:                      # pointer jumping: every voxel to the top of its climb
        jumped = parent[parent]
        if np.array_equal(jumped, parent):
            break
        parent = jumped
    label_of_root = np.zeros(smooth.size, dtype=np.int32)
    for cand, k in owner.items():
        if k < len(maxima):
            label_of_root[np.ravel_multi_index(cand, smooth.shape)] = k + 1
    labels = label_of_root[parent].reshape(smooth.shape)
    labels[smooth < min_fraction ** 2 * smooth.max()] = 0
    return labels


def _voxel_stats(hist: np.ndarray, mine: np.ndarray, centres) -> tuple[np.ndarray, np.ndarray, float]:
    """(centre of mass, standard deviation per axis, counts) of the voxels ``mine``."""
    weights = np.where(mine, hist, 0.0)
    counts = float(weights.sum())
    mean, sigma = np.zeros(3), np.zeros(3)
    for a in range(3):
        profile = weights.sum(axis=tuple(b for b in range(3) if b != a))
        mean[a] = profile @ centres[a] / counts
        sigma[a] = np.sqrt(max(profile @ (centres[a] - mean[a]) ** 2 / counts, 0.0))
    return mean, sigma, counts


def _margin_box(mean, sigma, margin_sigma: float, edges) -> np.ndarray:
    """(3, 2) bin-edge indices [lo, hi) of mean -+ margin_sigma * sigma, at least one bin each
    side of the bin holding the mean, snapped outwards and clipped to the grid."""
    box = np.zeros((3, 2), dtype=int)
    for a in range(3):
        step = edges[a][1] - edges[a][0]
        half = max(margin_sigma * sigma[a], 1.5 * step)
        box[a, 0] = np.searchsorted(edges[a], mean[a] - half, side="right") - 1
        box[a, 1] = np.searchsorted(edges[a], mean[a] + half, side="left")
        box[a] = np.clip(box[a], 0, len(edges[a]) - 1)
    return box


def _cut_overlaps(boxes: list[np.ndarray], stats, edges) -> None:
    """Cut overlapping boxes apart, stronger pairs first; boxes only shrink, so one pass
    over the pairs leaves none overlapping."""
    order = sorted(range(len(boxes)), key=lambda k: -stats[k][2])
    for i_pos, i in enumerate(order):
        for j in order[i_pos + 1:]:
            a, b = boxes[i], boxes[j]
            if np.all((a[:, 0] < b[:, 1]) & (b[:, 0] < a[:, 1])):
                _cut(a, b, stats[i], stats[j], edges)


def _cut(a: np.ndarray, b: np.ndarray, sa, sb, edges) -> None:
    (ma, sga, _), (mb, sgb, _) = sa, sb
    separation = np.abs(mb - ma) / np.maximum(sga + sgb, 1e-12)
    axis = int(np.argmax(separation))
    split = ma[axis] + (mb[axis] - ma[axis]) * sga[axis] / max(sga[axis] + sgb[axis], 1e-12)
    edge = int(np.clip(np.argmin(np.abs(edges[axis] - split)), 1, len(edges[axis]) - 2))
    low, high = (a, b) if ma[axis] <= mb[axis] else (b, a)
    low[axis, 1] = min(low[axis, 1], edge)
    high[axis, 0] = max(high[axis, 0], edge)


def format_roi_suggestion(suggestion: RoiSuggestion) -> str:
    """Human-readable lines: one per peak, with its d-spacing, share of the counts and ROI."""
    if not suggestion.peaks:
        return "q-space ROI suggestion: no peak found in the summed histogram"
    lines = [f"q-space ROI suggestion: {len(suggestion.peaks)} peak(s) in the summed histogram "
             f"({suggestion.total_counts:.4g} counts)"]
    for p in suggestion.peaks:
        share = p.counts / suggestion.total_counts if suggestion.total_counts > 0 else 0.0
        lo = ", ".join(f"{v:.5f}" for v in p.roi.lo)
        hi = ", ".join(f"{v:.5f}" for v in p.roi.hi)
        lines.append(f"  {p.roi.name}: d = {p.d_spacing:.5f} A, Q = ("
                     + ", ".join(f"{v:.5f}" for v in p.centre) + ") 1/A, "
                     f"{share:.1%} of the counts ({p.fraction_in_roi:.1%} of them in the ROI); "
                     f"{p.roi.shape} lo ({lo}) hi ({hi})")
    return "\n".join(lines)
