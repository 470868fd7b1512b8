"""Maps derived from the accumulated sums: pure functions, no I/O.

From the moments of every map pixel (S0 = sum I, S1 = sum I dq, S2 = sum I dq dq^T with
dq = q - q_ref):

* COM ``Q = q_ref + S1/S0`` (exact over raw pixels: no binning involved);
* covariance ``C = S2/S0 - (S1/S0)(S1/S0)^T``, FWHM_i = 2 sqrt(2 ln 2 C_ii);
* d = 2 pi / |Q|; strain (microstrain) = (d - d_ref) / d_ref * 1e6, d_ref = mean d over the
  mask unless given;
* tilt against the mean direction Qbar (mean of the unit vectors Q/|Q| over the mask):
  altitude = angle(Q, Qbar); azimuth = angle of Q's component perpendicular to Qbar, measured
  from ``e1`` = the sample-frame x axis projected onto the plane perpendicular to Qbar
  (y if x is within 1 degree of Qbar), counter-clockwise about Qbar towards e2 = Qbar x e1.
  For the ID01 symmetric reflection (Qbar along z) e1 is x (the beam at eta = 0), e2 is y.
* misorientation colour: hue = azimuth / 360, saturation = altitude / max altitude, value 1;
* standard errors from counting statistics: the COM of N counts drawn from a peak of
  covariance C has covariance C / S0 (the Poisson limit of any centroid estimate).

Map pixels with S0 below ``mask_fraction`` of the maximum are outside the mask: their derived
values are NaN (shown blank) and they take no part in means.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sxdm_stream.core.kernels import S0, S1X, S1Z, S2XX, S2XY, S2XZ, S2YY, S2YZ, S2ZZ

DEFAULT_MASK_FRACTION = 0.2
_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


#: the 2D maps: name -> (units, title). The names are those of results files
#: and published snapshots.
MAP_FIELDS: dict[str, tuple[str, str]] = {
    "intensity": ("counts", "integrated intensity"),
    "d_spacing": ("angstrom", "d-spacing 2 pi / |Q|"),
    "strain": ("microstrain", "strain (d - d_ref) / d_ref"),
    "tilt_altitude": ("degree", "tilt: angle between Q and the mean direction"),
    "tilt_azimuth": ("degree", "tilt azimuth about the mean direction"),
    "q_abs": ("1/angstrom", "|Q| of the centre of mass"),
    "qx": ("1/angstrom", "centre of mass Qx (sample frame)"),
    "qy": ("1/angstrom", "centre of mass Qy (sample frame)"),
    "qz": ("1/angstrom", "centre of mass Qz (sample frame)"),
    "fwhm_qx": ("1/angstrom", "FWHM of the peak along qx"),
    "fwhm_qy": ("1/angstrom", "FWHM of the peak along qy"),
    "fwhm_qz": ("1/angstrom", "FWHM of the peak along qz"),
    "misorientation": ("", "misorientation: hue = azimuth, saturation = altitude / max"),
    "strain_stderr": ("microstrain", "strain standard error (counting statistics)"),
    "tilt_stderr": ("degree", "tilt standard error (counting statistics)"),
    "mask": ("", "map pixels inside the intensity mask (1) or outside (0)"),
}


@dataclass(frozen=True)
class MapSet:
    """Every map of a scan, each (rows, cols[, 3]); derived maps are NaN outside the mask.

    ``intensity`` and ``intensity_per_angle`` are given everywhere (they define the mask).
    The arrays are copies: later frames added to the accumulator do not change a MapSet.

    Units: q in 1/Angstrom, d in Angstrom, strain in microstrain, angles in degrees.
    """

    intensity: np.ndarray            # S0, counts (monitor-normalised if a monitor was used); copy
    mask: np.ndarray                 # bool, True = inside the mask (kept)
    com: np.ndarray                  # (rows, cols, 3) Q = (qx, qy, qz)
    q_abs: np.ndarray                # |Q|
    d_spacing: np.ndarray            # 2 pi / |Q|
    strain: np.ndarray               # microstrain against d_ref
    tilt_altitude: np.ndarray        # degrees from the mean direction
    tilt_azimuth: np.ndarray         # degrees in [0, 360) from e1
    misorientation_rgb: np.ndarray   # (rows, cols, 3) in [0, 1], NaN outside the mask
    fwhm: np.ndarray                 # (rows, cols, 3) along qx, qy, qz
    strain_stderr: np.ndarray        # microstrain, counting-statistics standard error
    tilt_stderr: np.ndarray          # degrees, counting-statistics standard error
    intensity_per_angle: np.ndarray  # (n_angles, rows, cols): the rocking curve of every pixel
    d_ref: float
    mean_direction: np.ndarray       # unit vector Qbar
    azimuth_reference: np.ndarray    # unit vector e1
    mask_fraction: float


def com_and_covariance(totals: np.ndarray, q_ref: np.ndarray):
    """COM (n, 3) and covariance (n, 3, 3) from moments (n, 10); NaN where S0 == 0."""
    s0 = totals[:, S0]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_dq = totals[:, S1X:S1Z + 1] / s0[:, None]
        second = np.empty((len(totals), 3, 3))
        for (i, j), k in {(0, 0): S2XX, (0, 1): S2XY, (0, 2): S2XZ, (1, 1): S2YY,
                          (1, 2): S2YZ, (2, 2): S2ZZ}.items():
            second[:, i, j] = second[:, j, i] = totals[:, k] / s0
    cov = second - mean_dq[:, :, None] * mean_dq[:, None, :]
    mean_dq[s0 <= 0] = np.nan
    cov[s0 <= 0] = np.nan
    return np.asarray(q_ref)[None, :] + mean_dq, cov


def intensity_mask(intensity: np.ndarray, fraction: float = DEFAULT_MASK_FRACTION) -> np.ndarray:
    """True where the intensity reaches ``fraction`` of the map's maximum."""
    peak = np.nanmax(intensity) if intensity.size else 0.0
    if not peak > 0:
        return np.zeros(intensity.shape, dtype=bool)
    return intensity >= fraction * peak


def azimuth_reference(mean_direction: np.ndarray) -> np.ndarray:
    """e1: the sample x axis projected perpendicular to Qbar (y if x is within 1 deg of Qbar)."""
    for axis in (np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])):
        perp = axis - np.dot(axis, mean_direction) * mean_direction
        if np.linalg.norm(perp) > np.sin(np.deg2rad(1.0)):
            return perp / np.linalg.norm(perp)
    raise AssertionError("x and y cannot both be parallel to a unit vector")


def tilt_angles(com: np.ndarray, mask: np.ndarray):
    """Altitude and azimuth (degrees) of each Q against the masked mean direction.

    Returns (altitude, azimuth, Qbar, e1); altitude and azimuth are NaN outside ``mask``.
    """
    unit = com / np.linalg.norm(com, axis=-1, keepdims=True)
    if not mask.any():
        nan = np.full(mask.shape, np.nan)
        return nan, nan.copy(), np.array([np.nan] * 3), np.array([np.nan] * 3)
    mean = unit[mask].mean(axis=0)
    mean /= np.linalg.norm(mean)
    e1 = azimuth_reference(mean)
    e2 = np.cross(mean, e1)
    cos_alt = np.clip(unit @ mean, -1.0, 1.0)
    # arctan2 of (|perp|, parallel) keeps precision at the micro-radian tilts we care about
    perp = unit - cos_alt[..., None] * mean
    altitude = np.rad2deg(np.arctan2(np.linalg.norm(perp, axis=-1), cos_alt))
    azimuth = np.rad2deg(np.arctan2(unit @ e2, unit @ e1)) % 360.0
    altitude[~mask] = np.nan
    azimuth[~mask] = np.nan
    return altitude, azimuth, mean, e1


def hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB, all in [0, 1]; NaN propagates."""
    i = np.floor(h * 6.0)
    f = h * 6.0 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = np.nan_to_num(i, nan=0).astype(int) % 6
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    rgb = np.zeros(h.shape + (3,))
    for k, (r, g, b) in enumerate(choices):
        sel = i == k
        rgb[sel] = np.stack([r[sel], g[sel], b[sel]], axis=-1)
    rgb[np.isnan(h) | np.isnan(s)] = np.nan
    return rgb


def misorientation_rgb(altitude: np.ndarray, azimuth: np.ndarray) -> np.ndarray:
    """Colour per pixel: hue = azimuth, saturation = altitude / max altitude, value = 1."""
    top = np.nanmax(altitude) if np.isfinite(altitude).any() else 0.0
    sat = altitude / top if top > 0 else np.zeros_like(altitude)
    return hsv_to_rgb(azimuth / 360.0, sat, np.ones_like(altitude))


def derive_maps(moments: np.ndarray, q_ref, shape: tuple[int, int],
                mask_fraction: float = DEFAULT_MASK_FRACTION, d_ref: float | None = None) -> MapSet:
    """All maps from per-angle moments ``(n_angles, n_points, 10)``.

    ``d_ref`` (Angstrom) is the strain reference; None = mean d over the mask.
    """
    rows, cols = shape
    totals = moments.sum(axis=0)
    com, cov = com_and_covariance(totals, np.asarray(q_ref, float))
    intensity = totals[:, S0].reshape(shape)
    mask = intensity_mask(intensity, mask_fraction)
    flat_mask = mask.ravel()
    com[~flat_mask] = np.nan
    cov[~flat_mask] = np.nan
    q_abs = np.linalg.norm(com, axis=-1)
    d = 2.0 * np.pi / q_abs
    if d_ref is None:
        d_ref = float(np.mean(d[flat_mask])) if flat_mask.any() else float("nan")
    strain = (d - d_ref) / d_ref * 1e6
    altitude, azimuth, mean_dir, e1 = tilt_angles(com.reshape(rows, cols, 3), mask)
    with np.errstate(invalid="ignore"):
        fwhm = _FWHM_PER_SIGMA * np.sqrt(np.clip(np.diagonal(cov, axis1=1, axis2=2), 0, None))
    strain_se, tilt_se = counting_errors(com, cov, totals[:, S0])
    return MapSet(
        intensity=intensity,
        mask=mask,
        com=com.reshape(rows, cols, 3),
        q_abs=q_abs.reshape(shape),
        d_spacing=d.reshape(shape),
        strain=strain.reshape(shape),
        tilt_altitude=altitude,
        tilt_azimuth=azimuth,
        misorientation_rgb=misorientation_rgb(altitude, azimuth),
        fwhm=fwhm.reshape(rows, cols, 3),
        strain_stderr=strain_se.reshape(shape),
        tilt_stderr=tilt_se.reshape(shape),
        intensity_per_angle=moments[:, :, S0].reshape(-1, rows, cols).copy(),
        d_ref=d_ref,
        mean_direction=mean_dir,
        azimuth_reference=e1,
        mask_fraction=mask_fraction,
    )


def counting_errors(com: np.ndarray, cov: np.ndarray, s0: np.ndarray):
    """Standard errors of strain (microstrain) and of tilt direction (degrees) from counts.

    The COM of S0 counts has covariance C / S0. Along Q that is a |Q| (hence d) error; across
    Q, the two perpendicular components are the error of the direction (their quadrature sum).
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        q_abs = np.linalg.norm(com, axis=-1)
        unit = com / q_abs[:, None]
        var_par = np.einsum("ni,nij,nj->n", unit, cov, unit) / s0
        var_perp = (np.trace(cov, axis1=1, axis2=2) / s0) - var_par
        strain_se = np.sqrt(np.clip(var_par, 0, None)) / q_abs * 1e6
        tilt_se = np.rad2deg(np.sqrt(np.clip(var_perp, 0, None)) / q_abs)
    return strain_se, tilt_se


def histogram_com(histogram: np.ndarray, hits: np.ndarray, grid) -> np.ndarray:
    """COM the way XSOCS computes it, for comparison: three 1D centroids of hit-normalised
    projections of the binned histogram (biased by the binning). Returns (n_points, 3).

    ``histogram`` is (n_points, n_bins) flat, ``hits`` (bx, by, bz).
    """
    h = histogram.reshape((len(histogram),) + tuple(grid.bins)).astype(np.float64)
    com = np.full((len(h), 3), np.nan)
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        norm = hits.sum(axis=other).astype(np.float64)
        proj = h.sum(axis=tuple(a + 1 for a in other))
        with np.errstate(invalid="ignore", divide="ignore"):
            proj = np.where(norm > 0, proj / np.where(norm > 0, norm, 1), 0.0)
            total = proj.sum(axis=1)
            com[:, axis] = (proj @ grid.centres(axis)) / total
    return com


def map_arrays(maps: MapSet) -> dict[str, np.ndarray]:
    """The arrays of a :class:`MapSet` under the names used in results files.

    Parameters
    ----------
    maps : the maps of one scan.

    Returns
    -------
    dict of name -> array, the same names and values :func:`read_maps` gives back
    (``mask`` as bool, ``misorientation`` (rows, cols, 3), ``intensity_per_angle``
    (angles, rows, cols)).
    """
    com, fwhm = np.asarray(maps.com), np.asarray(maps.fwhm)
    arrays = dict(intensity=maps.intensity, d_spacing=maps.d_spacing, strain=maps.strain,
                  tilt_altitude=maps.tilt_altitude, tilt_azimuth=maps.tilt_azimuth,
                  q_abs=maps.q_abs)
    arrays.update({f"q{axis}": com[..., i] for i, axis in enumerate("xyz")})
    arrays.update({f"fwhm_q{axis}": fwhm[..., i] for i, axis in enumerate("xyz")})
    arrays.update(misorientation=maps.misorientation_rgb, strain_stderr=maps.strain_stderr,
                  tilt_stderr=maps.tilt_stderr, mask=np.asarray(maps.mask, dtype=bool),
                  intensity_per_angle=maps.intensity_per_angle)
    return {name: np.asarray(value) for name, value in arrays.items()}
