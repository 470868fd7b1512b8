"""Sample drift between rocking angles: estimated from the per-angle intensity maps, or given,
and applied to the per-angle moments, so the maps are corrected without re-reading frames.

Pure computation (no I/O). Conventions:

* the shift of rocking angle k, ``shifts_px[k] = (rows, cols)`` in map pixels, is the drift of
  the sample between the reference angle and angle k: the feature seen at map pixel x at the
  reference angle is seen at ``x - shift`` at angle k. Correcting moves angle k's maps by the
  shift (``corrected_k(x) = maps_k(x - shift_k)``); ``shifts_um`` are the same in motor
  micrometres (pixels times the signed map step), so a sample that moved by +0.1 um along the
  row motor at angle k has ``shifts_um[k, 0] = +0.1``. The reference angle's shift is 0 and the
  corrected maps are those of the sample as it lay at the reference angle.

Estimation (``mode = "auto"``). Each angle's intensity map is the sample's intensity times
the rocking curve of every map pixel: tilt domains and bending light up different parts of the
particle at different angles (on the default simulated particle, cross-correlating the raw
maps is off by up to 4 pixels with no drift at all). What does not change with the angle is
the particle's outline. So every angle's map is clipped at ``outline_fraction`` of its own
maximum (every lit domain becomes 1, the substrate 0), blurred by one pixel so that the
correlation interpolates well between pixels, and these outlines are registered
against the reference angle's by sub-pixel cross-correlation
(:mod:`sxdm_stream.analysis.registration`). A sharp outline is digitised by the map grid, which leaves
errors of a few hundredths of a pixel that vary from angle to angle; drift is slow, so the
shifts are then smoothed by a local straight-line fit over ``smoothing_angles`` neighbouring
confident angles (1 = no smoothing).

Angles with little intensity (below ``min_intensity_fraction`` of the strongest angle) or a
poor match (normalised correlation below ``min_correlation``) are flagged low-confidence and
take the shift interpolated linearly (in angle index) between the nearest confident angles,
the nearest one's beyond the ends. Angles not measured yet are treated alike, so the function
can be called at the end of every rocking angle with the maps done so far.

Correction: each angle's 10 moment maps are shifted by bilinear interpolation (non-negative
weights: the result is still a sum of counts and of their q moments) and summed by
:func:`sxdm_stream.core.maps.derive_maps`. Map pixels whose shifted data would come partly from
outside the map at some measured angle lack part of their rocking curve (a biased COM); they
are emptied (``drop_incomplete``) so they fall outside the mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from threadpoolctl import threadpool_limits

from sxdm_stream.analysis.registration import (correlation_shape, cross_correlation_shift,
                                               padded_spectrum, shift_bilinear)
from sxdm_stream.core.kernels import S0
from sxdm_stream.core.maps import DEFAULT_MASK_FRACTION, MapSet, derive_maps
from sxdm_stream.core.scan import ScanDescription
from sxdm_stream.errors import ConfigError

DRIFT_MODES = ("off", "auto", "given")
_OUTLINE_BLUR_PX = 1.0


@dataclass(frozen=True)
class DriftSettings:
    """How drift between rocking angles is handled.

    Parameters
    ----------
    mode : "off" (no correction), "auto" (estimated from the per-angle intensity maps) or
        "given" (``shifts_um``).
    reference_angle : index of the reference rocking angle; -1 = the angle with the most
        intensity among those measured.
    shifts_um : for ``mode="given"``: (row, col) drift of the sample in micrometres at every
        rocking angle, against the reference angle (see the module docstring for the sign).
    min_intensity_fraction : angles with less total intensity than this fraction of the
        strongest angle are low-confidence.
    min_correlation : angles whose normalised correlation with their template is below this
        are low-confidence.
    outline_fraction : an angle's map is clipped at this fraction of its maximum to give the
        outline that is registered (below the dimmest lit domain, above the noise).
    smoothing_angles : width (in angles) of the local straight-line fit that smooths the
        shifts of the confident angles; 1 = none.
    drop_incomplete : empty map pixels whose corrected data would come partly from outside
        the map.
    """

    mode: str = "off"
    reference_angle: int = -1
    shifts_um: tuple[tuple[float, float], ...] = ()
    min_intensity_fraction: float = 0.05
    min_correlation: float = 0.5
    outline_fraction: float = 0.003
    smoothing_angles: int = 5
    drop_incomplete: bool = True

    def __post_init__(self) -> None:
        if self.mode not in DRIFT_MODES:
            raise ConfigError(f"drift mode {self.mode!r} is not one of {', '.join(DRIFT_MODES)}")
        if self.mode == "given" and not self.shifts_um:
            raise ConfigError("drift mode 'given' needs shifts_um, one (row, col) per angle")
        if not 0.0 <= self.min_intensity_fraction <= 1.0 or not 0.0 <= self.min_correlation <= 1.0:
            raise ConfigError("min_intensity_fraction and min_correlation must lie between 0 and 1")
        if not 0.0 < self.outline_fraction < 1.0:
            raise ConfigError("outline_fraction must lie between 0 and 1 (exclusive)")
        if self.smoothing_angles < 1:
            raise ConfigError("smoothing_angles must be at least 1")
        object.__setattr__(self, "shifts_um",
                           tuple((float(r), float(c)) for r, c in self.shifts_um))


@dataclass(frozen=True)
class DriftEstimate:
    """Shift of every rocking angle against the reference angle.

    ``shifts_px`` and ``shifts_um`` are (n_angles, 2) as (row, col); ``confident`` is False for
    angles whose shift was interpolated (little intensity, poor match, not measured yet);
    ``correlation`` is the normalised correlation with the template (NaN if not registered).
    """

    shifts_px: np.ndarray
    shifts_um: np.ndarray
    reference_angle: int
    confident: np.ndarray
    correlation: np.ndarray
    mode: str
    step_um: tuple[float, float] = field(default=(1.0, 1.0))

    def to_dict(self) -> dict:
        """JSON-able form (results files, published snapshots)."""
        return {"mode": self.mode, "reference_angle": int(self.reference_angle),
                "step_um": [float(s) for s in self.step_um],
                "shifts_px": self.shifts_px.tolist(), "shifts_um": self.shifts_um.tolist(),
                "confident": self.confident.astype(bool).tolist(),
                "correlation": [None if not np.isfinite(c) else float(c) for c in self.correlation]}


def map_step_um(scan: ScanDescription) -> tuple[float, float]:
    """Signed motor step (row, col) of one map pixel, micrometres (1.0 for a single point)."""
    steps = []
    for dim in (0, 1):
        (first, last), n = scan.extents_um[dim], scan.shape[dim]
        steps.append((last - first) / (n - 1) if n > 1 else 1.0)
    return tuple(steps)


def given_drift(shifts_um, step_um: tuple[float, float], reference_angle: int = 0) -> DriftEstimate:
    """A :class:`DriftEstimate` from user-given drift (micrometres, (n_angles, 2)).

    The shifts are taken relative to ``reference_angle`` (its drift is subtracted).
    """
    um = np.asarray(shifts_um, dtype=np.float64).reshape(-1, 2)
    um = um - um[reference_angle]
    n = len(um)
    return DriftEstimate(um / np.asarray(step_um), um, reference_angle, np.ones(n, bool),
                         np.full(n, np.nan), "given", tuple(float(v) for v in step_um))


def estimate_drift(intensity_per_angle: np.ndarray, step_um: tuple[float, float] = (1.0, 1.0),
                   settings: DriftSettings | None = None,
                   angles_done: int | None = None) -> DriftEstimate:
    """Estimate the shift of every rocking angle from the per-angle intensity maps.

    Parameters
    ----------
    intensity_per_angle : (n_angles, rows, cols) S0 of every rocking angle
        (``MapSet.intensity_per_angle`` or ``accumulator.moments[..., 0]`` reshaped).
    step_um : signed map step (row, col) in micrometres (:func:`map_step_um`).
    settings : reference angle and confidence thresholds (``mode`` is not looked at).
    angles_done : only the first ``angles_done`` angles are measured (None = all); the others
        get the shift of the last confident one.

    Returns
    -------
    DriftEstimate, ``mode="auto"``.
    """
    s = settings or DriftSettings()
    maps = np.asarray(intensity_per_angle, dtype=np.float64)
    n = len(maps)
    done = n if angles_done is None else int(np.clip(angles_done, 0, n))
    totals = maps[:done].sum(axis=(1, 2))
    ref = _reference_angle(totals, s.reference_angle)
    shifts = np.zeros((n, 2))
    correlation = np.full(n, np.nan)
    if ref is None:
        return _estimate(shifts, np.zeros(n, bool), correlation, 0, step_um)
    usable = np.zeros(n, bool)
    usable[:done] = totals >= s.min_intensity_fraction * totals.max()
    usable[ref] = True
    outlines = [_outline(maps[k], s.outline_fraction) if usable[k] else None for k in range(n)]
    corr_shape = correlation_shape(maps.shape[1:])
    spectrum = padded_spectrum(outlines[ref], corr_shape)
    norm = float(np.linalg.norm(outlines[ref]))
    # the refinement's small matrix products run 10x slower on a busy machine when OpenBLAS
    # spreads them over threads (measured: 2.4 s instead of 0.24 s for 200 x 200 x 100)
    with threadpool_limits(limits=1, user_api="blas"):
        for k in np.flatnonzero(usable):
            shifts[k], correlation[k] = cross_correlation_shift(spectrum, outlines[k], norm)
    confident = usable & (correlation >= s.min_correlation)
    confident[ref] = True
    shifts = smooth_shifts(shifts, confident, s.smoothing_angles)
    shifts = _fill_low_confidence(shifts - shifts[ref], confident)
    return _estimate(shifts, confident, correlation, ref, step_um)


def _outline(intensity: np.ndarray, fraction: float) -> np.ndarray:
    """The map clipped at ``fraction`` of its maximum (1 wherever a domain is lit), blurred by
    ``_OUTLINE_BLUR_PX``: a clipped outline is nearly binary, and the correlation of binary
    maps interpolates poorly between pixels (errors to 0.18 px on a noise-free 200 x 200
    case, 0.13 px after the blur; RMS 0.047 -> 0.028 px)."""
    clipped = np.clip(intensity / (fraction * intensity.max()), 0.0, 1.0)
    return ndimage.gaussian_filter(clipped, _OUTLINE_BLUR_PX, mode="constant")


def smooth_shifts(shifts: np.ndarray, confident: np.ndarray, width: int) -> np.ndarray:
    """Shifts of the confident angles replaced by a local straight-line fit over ``width``
    neighbouring confident angles (by angle index); other angles are left as they are."""
    good = np.flatnonzero(confident)
    if width <= 1 or len(good) < 3:
        return shifts
    out = shifts.copy()
    half = width // 2
    for k in good:
        near = good[np.abs(good - k) <= half]
        if len(near) < 3:
            continue
        design = np.stack([np.ones(len(near)), near - k], axis=1)
        out[k] = np.linalg.lstsq(design, shifts[near], rcond=None)[0][0]
    return out


def _estimate(shifts, confident, correlation, ref, step_um) -> DriftEstimate:
    return DriftEstimate(shifts, shifts * np.asarray(step_um), int(ref), confident, correlation,
                         "auto", tuple(float(v) for v in step_um))


def _reference_angle(totals: np.ndarray, requested: int) -> int | None:
    if not len(totals) or not totals.max() > 0:
        return None
    if requested < 0:
        return int(np.argmax(totals))
    if requested >= len(totals) or not totals[requested] > 0:
        return int(np.argmax(totals))   # not measured yet: the strongest so far stands in
    return int(requested)


def _fill_low_confidence(shifts: np.ndarray, confident: np.ndarray) -> np.ndarray:
    """Linear interpolation (in angle index) over the confident angles; nearest beyond ends."""
    good = np.flatnonzero(confident)
    out = shifts.copy()
    index = np.arange(len(shifts))
    for axis in (0, 1):
        out[:, axis] = np.interp(index, good, shifts[good, axis])
    return out


def shift_moments(moments: np.ndarray, shifts_px: np.ndarray, shape: tuple[int, int],
                  drop_incomplete: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Per-angle moments with every angle's maps moved by its shift.

    Parameters
    ----------
    moments : (n_angles, n_points, ..., 10) per-angle moments: ``Accumulator.moments``, or
        ``Accumulator.roi_moments`` (n_angles, n_points, n_rois, 10), shifted alike.
    shifts_px : (n_angles, 2) shifts (:attr:`DriftEstimate.shifts_px`).
    shape : (rows, cols) of the map.
    drop_incomplete : empty the map pixels that would take data from outside the map at an
        angle that has counts.

    Returns
    -------
    corrected : same shape as ``moments``, a new array (the input is not changed).
    complete : (rows, cols) bool, map pixels whose corrected data all come from inside the map.
    """
    n_angles = len(moments)
    corrected = np.empty_like(moments, dtype=np.float64)
    complete = np.ones(shape, dtype=bool)
    ones = np.ones(shape)
    for k in range(n_angles):
        grid = moments[k].reshape(shape + moments.shape[2:])
        shift_bilinear(grid, shifts_px[k], out=corrected[k].reshape(grid.shape))
        if np.any(shifts_px[k]) and grid[..., S0].any():
            complete &= shift_bilinear(ones, shifts_px[k]) > 1.0 - 1e-9
    if drop_incomplete:
        corrected[:, ~complete.ravel()] = 0.0
    return corrected, complete


def drift_corrected_maps(moments: np.ndarray, q_ref, shape: tuple[int, int],
                         estimate: DriftEstimate, mask_fraction: float = DEFAULT_MASK_FRACTION,
                         d_ref: float | None = None, drop_incomplete: bool = True) -> MapSet:
    """:func:`sxdm_stream.core.maps.derive_maps` of the drift-corrected per-angle moments."""
    corrected, _ = shift_moments(moments, estimate.shifts_px, shape, drop_incomplete)
    return derive_maps(corrected, q_ref, shape, mask_fraction, d_ref)


def drift_for_scan(moments: np.ndarray, scan: ScanDescription, settings: DriftSettings,
                   angles_done: int | None = None) -> DriftEstimate | None:
    """The drift of a scan as configured: None when off, given or estimated otherwise.

    Parameters
    ----------
    moments : (n_angles, n_points, 10) per-angle moments.
    scan : the scan (map shape and step).
    settings : the drift configuration.
    angles_done : rocking angles fully measured (None = all).
    """
    step = map_step_um(scan)
    if settings.mode == "off":
        return None
    if settings.mode == "given":
        if len(settings.shifts_um) != scan.n_angles:
            raise ConfigError(f"drift.shifts_um has {len(settings.shifts_um)} entries, the scan "
                              f"{scan.n_angles} rocking angles")
        return given_drift(settings.shifts_um, step, max(settings.reference_angle, 0))
    per_angle = moments[..., S0].reshape((scan.n_angles,) + tuple(scan.shape))
    return estimate_drift(per_angle, step, settings, angles_done)


def format_drift(estimate: DriftEstimate) -> str:
    """Human-readable table of the shift of every rocking angle."""
    lines = [f"drift ({estimate.mode}) against rocking angle {estimate.reference_angle}:",
             "  angle   row px   col px    row um    col um   corr  confident"]
    for k, (px, um) in enumerate(zip(estimate.shifts_px, estimate.shifts_um)):
        corr = estimate.correlation[k]
        lines.append(f"  {k:5d} {px[0]:8.3f} {px[1]:8.3f} {um[0]:9.4f} {um[1]:9.4f} "
                     f"{corr if np.isfinite(corr) else float('nan'):6.3f}  "
                     f"{'yes' if estimate.confident[k] else 'no'}")
    return "\n".join(lines)
