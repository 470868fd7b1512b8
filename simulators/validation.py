"""How well recovered maps match a simulation's ground truth, next to the counting limit.

Errors are taken over the pixels inside the intensity mask that lie on a particle:

* strain: the recovered minus the true strain, after removing the map mean of the difference
  (a constant offset of d is not a strain error), RMS in microstrain;
* tilt: the angle between recovered and true Q directions, after removing the mean difference
  of the unit vectors (a constant misorientation of the whole map is not a tilt error), RMS in
  degrees.

The limits are the RMS over the same pixels of the counting-statistics standard errors that
:func:`sxdm_stream.core.maps.derive_maps` reports (``strain_stderr``, ``tilt_stderr``): what an
ideal centroid of the recorded counts could achieve.
"""

from __future__ import annotations

import numpy as np

from sxdm_stream.core.maps import MapSet

from .frames import GroundTruth


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x)))) if x.size else float("nan")


def accuracy_report(maps: MapSet, truth: GroundTruth) -> dict[str, float]:
    """Strain and tilt RMS errors against the truth, and their counting limits."""
    mask = maps.mask & (truth.particle >= 0)
    strain_err = (maps.strain - truth.strain(mask))[mask]
    strain_err = strain_err - strain_err.mean() if strain_err.size else strain_err
    unit = maps.com / np.linalg.norm(maps.com, axis=-1, keepdims=True)
    unit_true = truth.q / np.linalg.norm(truth.q, axis=-1, keepdims=True)
    diff = (unit - unit_true)[mask]
    diff = diff - diff.mean(axis=0) if diff.size else diff
    tilt_err = np.rad2deg(np.linalg.norm(diff, axis=-1))
    return {
        "pixels": int(mask.sum()),
        "strain_rms_error": _rms(strain_err),
        "strain_limit": _rms(maps.strain_stderr[mask]),
        "tilt_rms_error_deg": _rms(tilt_err),
        "tilt_limit_deg": _rms(maps.tilt_stderr[mask]),
        "true_strain_range": (float(np.min(truth.strain(mask)[mask])) if mask.any() else np.nan,
                              float(np.max(truth.strain(mask)[mask])) if mask.any() else np.nan),
    }


def format_report(report: dict) -> str:
    """Human-readable lines of an :func:`accuracy_report`."""
    return (
        f"accuracy over {report['pixels']} masked map pixels:\n"
        f"  strain RMS error {report['strain_rms_error']:.2f} microstrain "
        f"(counting limit {report['strain_limit']:.2f}; true strain spans "
        f"{report['true_strain_range'][0]:.0f} .. {report['true_strain_range'][1]:.0f})\n"
        f"  tilt   RMS error {report['tilt_rms_error_deg']:.6f} deg "
        f"(counting limit {report['tilt_limit_deg']:.6f})"
    )
