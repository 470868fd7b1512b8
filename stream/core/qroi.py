"""Regions of interest in q-space: boxes or ellipsoids that get their own exact moments and maps.

Several crystals in the beam diffract at different q in the same map pixels; the moments of
the whole detector ROI then mix them. A q-ROI keeps, per rocking angle and map pixel, the
moments (S0, S1, S2 of dq = q - q_ref, the layout of :mod:`sxdm_stream.core.kernels`) of the
detector pixels whose q falls inside it, summed over raw pixels by the accumulate kernel:
exact, additive, and as small as the whole-detector moments. Each ROI's moments give a full
:class:`~sxdm_stream.core.maps.MapSet` through :func:`~sxdm_stream.core.maps.derive_maps`.

A ROI is an axis-aligned box ``lo <= q < hi`` (1/Angstrom, sample frame, the frame of the
moments), or the ellipsoid inscribed in that box (centre ``(lo + hi) / 2``, semi-axes
``(hi - lo) / 2``). Lower faces are inclusive and upper faces exclusive, as histogram bins
are: a box whose faces lie on bin edges holds exactly the counts of the bins inside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sxdm_stream.core.kernels import N_MOMENTS
from sxdm_stream.core.maps import DEFAULT_MASK_FRACTION, MapSet, derive_maps, map_arrays
from sxdm_stream.errors import ConfigError

ROI_SHAPES = ("box", "ellipsoid")
#: columns of the kernel's ROI table: box lo (3), box hi (3), ellipsoid centre (3), 1/semi-axes (3)
ROI_TABLE_COLUMNS = 12


@dataclass(frozen=True)
class QRoi:
    """One region of interest in q.

    Parameters
    ----------
    name : label of the ROI (results-file group and snapshot key); letters, digits, ``_``, ``-``.
    lo, hi : lower and upper corner of the box, (qx, qy, qz) in 1/Angstrom, sample frame.
    shape : "box", or "ellipsoid" for the axis-aligned ellipsoid inscribed in the box.
    """

    name: str
    lo: tuple[float, float, float]
    hi: tuple[float, float, float]
    shape: str = "box"

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "_-" for c in self.name):
            raise ConfigError(f"q ROI name {self.name!r} must be non-empty letters, digits, _ or -")
        try:
            lo = tuple(float(v) for v in self.lo)
            hi = tuple(float(v) for v in self.hi)
        except (TypeError, ValueError):
            raise ConfigError(f"q ROI {self.name!r}: lo and hi must be three numbers each") from None
        if len(lo) != 3 or len(hi) != 3 or not all(np.isfinite(lo + hi)):
            raise ConfigError(f"q ROI {self.name!r}: lo and hi must be three finite numbers each")
        if not all(h > low for low, h in zip(lo, hi)):
            raise ConfigError(f"q ROI {self.name!r}: hi {hi} must exceed lo {lo} on every axis")
        if self.shape not in ROI_SHAPES:
            raise ConfigError(f"q ROI {self.name!r}: shape {self.shape!r} is not one of "
                              f"{', '.join(ROI_SHAPES)}")
        object.__setattr__(self, "lo", lo)
        object.__setattr__(self, "hi", hi)

    @property
    def centre(self) -> np.ndarray:
        return 0.5 * (np.asarray(self.lo) + np.asarray(self.hi))

    def contains(self, q: np.ndarray) -> np.ndarray:
        """True for each q (..., 3) inside the ROI: the numpy statement of the kernel's test."""
        q = np.asarray(q, float)
        lo, hi = np.asarray(self.lo), np.asarray(self.hi)
        inside = np.all((q >= lo) & (q < hi), axis=-1)
        if self.shape == "ellipsoid":
            inside &= np.sum(((q - self.centre) / (0.5 * (hi - lo))) ** 2, axis=-1) <= 1.0
        return inside

    def describe(self) -> dict:
        """JSON-able description; :meth:`from_description` rebuilds the ROI."""
        return {"name": self.name, "shape": self.shape, "lo": list(self.lo), "hi": list(self.hi)}

    @classmethod
    def from_description(cls, d) -> "QRoi":
        if isinstance(d, QRoi):
            return d
        if not isinstance(d, dict):
            raise ConfigError(f"a q ROI must be a table with name, lo, hi (and shape), got {d!r}")
        unknown = set(d) - {"name", "lo", "hi", "shape"}
        if unknown:
            raise ConfigError(f"q ROI keys {sorted(unknown)} unknown; allowed: name, lo, hi, shape")
        try:
            return cls(str(d["name"]), d["lo"], d["hi"], d.get("shape", "box"))
        except KeyError as exc:
            raise ConfigError(f"q ROI {d!r} lacks the key {exc.args[0]!r}") from None


def check_roi_names(rois) -> None:
    """Refuse two ROIs of one name (their maps would overwrite each other)."""
    names = [r.name for r in rois]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"q ROI names must be unique; repeated: {', '.join(repeated)}")


def roi_table(rois, q_ref) -> np.ndarray:
    """The kernel's ROI table (n_rois, 12), relative to ``q_ref`` (the kernel works on dq).

    A box has 1/semi-axes 0, so its ellipsoid term is 0 and only the box test counts; an
    ellipsoid's box is its bounding box, a cheap first test.
    """
    table = np.zeros((len(rois), ROI_TABLE_COLUMNS))
    q_ref = np.asarray(q_ref, float)
    for k, roi in enumerate(rois):
        lo, hi = np.asarray(roi.lo) - q_ref, np.asarray(roi.hi) - q_ref
        table[k, 0:3], table[k, 3:6] = lo, hi
        table[k, 6:9] = 0.5 * (lo + hi)
        if roi.shape == "ellipsoid":
            table[k, 9:12] = 2.0 / (hi - lo)
    return table


def roi_maps(roi_moments: np.ndarray, rois, q_ref, shape: tuple[int, int],
             mask_fraction: float = DEFAULT_MASK_FRACTION,
             d_ref: float | None = None) -> dict[str, MapSet]:
    """The maps of every ROI from the accumulator's ``roi_moments``.

    Parameters
    ----------
    roi_moments : (n_angles, n_points, n_rois, 10) moments per rocking angle, map pixel and ROI.
    rois : the ROIs, in the order of axis 2.
    q_ref : the reference q of the moments (``ScanSetup.q_ref``), 1/Angstrom.
    shape : map (rows, cols).
    mask_fraction : each ROI's mask keeps the map pixels reaching this fraction of *its* maximum.
    d_ref : strain reference (Angstrom) for every ROI; None = each ROI's own mean d over its mask.

    Returns
    -------
    dict ROI name -> MapSet (``MapSet.d_ref`` is the ROI's mean d over its mask when
    ``d_ref`` is None).
    """
    if roi_moments.shape[2] != len(rois) or roi_moments.shape[3] != N_MOMENTS:
        raise ValueError(f"roi_moments {roi_moments.shape} do not match {len(rois)} ROIs")
    return {roi.name: derive_maps(roi_moments[:, :, k, :], q_ref, shape, mask_fraction, d_ref)
            for k, roi in enumerate(rois)}


def roi_map_arrays(maps_by_roi: dict[str, MapSet]) -> dict[str, dict[str, np.ndarray]]:
    """ROI name -> the arrays of :func:`~sxdm_stream.core.maps.map_arrays` (results-file names)."""
    return {name: map_arrays(maps) for name, maps in maps_by_roi.items()}


def histogram_roi_moments(histogram: np.ndarray, grid, rois, q_ref) -> np.ndarray:
    """Approximate ROI moments from the binned histograms, for ROIs chosen after the frames.

    Each bin whose centre lies inside a ROI adds its counts at its centre: binned, so biased as
    the XSOCS centroid is (the exact moments need the ROIs in the settings before the frames
    arrive), but available at once for the scan in hand.

    Parameters
    ----------
    histogram : (n_points, n_bins) flat histograms (``Accumulator.histogram``).
    grid : their :class:`~sxdm_stream.core.grid.QGrid`.
    rois : the ROIs.
    q_ref : reference q of the returned moments, 1/Angstrom.

    Returns
    -------
    (1, n_points, n_rois, 10): the layout of ``Accumulator.roi_moments`` with one "angle".
    """
    centres = np.stack(np.meshgrid(*(grid.centres(a) for a in range(3)), indexing="ij"), axis=-1)
    dq = centres.reshape(-1, 3) - np.asarray(q_ref, float)
    pairs = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))
    basis = np.column_stack([np.ones(len(dq)), dq] + [dq[:, a] * dq[:, b] for a, b in pairs])
    out = np.zeros((1, len(histogram), len(rois), N_MOMENTS))
    for k, roi in enumerate(rois):
        inside = roi.contains(centres.reshape(-1, 3))
        out[0, :, k, :] = histogram[:, inside].astype(np.float64) @ basis[inside]
    return out
