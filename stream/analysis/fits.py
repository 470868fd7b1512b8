"""Gaussian fits of the q-histogram projections of every map pixel, vectorised over pixels.

An option next to the exact COM of :mod:`sxdm_stream.core.maps` (XSOCS offers the same fits): for
each map pixel and each q axis, the 1D projection of its histogram (the sum over the other two
axes) is fitted with ``A exp(-(q - mu)^2 / (2 sigma^2)) + b`` by unweighted least squares, as
``scipy.optimize.curve_fit`` would, but for all pixels at once:

* start: the parabola through the logarithms of the highest bin and its two neighbours (the
  closed-form Gaussian through three points), background the lowest bin;
* then Levenberg-Marquardt steps, each a batch of 4x4 linear solves, with a damping per pixel
  that shrinks after an accepted step and grows after a refused one.

Projections are binned, so the fit inherits the binning (centre biases of a fraction of a bin
when the peak is narrower than a bin); the exact COM does not. The fit is what a peak's shape
says, the COM what its counts say: they differ where the peak is skewed or has tails.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sxdm_stream.core.grid import QGrid
from sxdm_stream.core.qroi import QRoi

_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


@dataclass(frozen=True)
class ProjectionFits:
    """Gaussian fits of the projections along (qx, qy, qz), (n_points, 3) each; NaN where a
    pixel's projection has no counts or the fit did not converge.

    ``centre`` (1/Angstrom), ``fwhm`` (1/Angstrom), ``amplitude`` (peak height, counts per bin),
    ``background`` (counts per bin), ``converged`` (bool).
    """

    centre: np.ndarray
    fwhm: np.ndarray
    amplitude: np.ndarray
    background: np.ndarray
    converged: np.ndarray

    @property
    def d_spacing(self) -> np.ndarray:
        """d = 2 pi / |fitted centre|, (n_points,), Angstrom."""
        return 2.0 * np.pi / np.linalg.norm(self.centre, axis=-1)


def gaussian_model(x: np.ndarray, amplitude, centre, sigma, background) -> np.ndarray:
    """``amplitude exp(-(x - centre)^2 / (2 sigma^2)) + background``."""
    return amplitude * np.exp(-0.5 * ((x - centre) / sigma) ** 2) + background


def fit_gaussians(x: np.ndarray, y: np.ndarray, iterations: int = 30) -> dict[str, np.ndarray]:
    """Least-squares Gaussian + constant fit of every row of ``y`` (n, m) on abscissae ``x`` (m,).

    Returns a dict of (n,) arrays: ``amplitude``, ``centre``, ``sigma``, ``background``,
    ``converged`` (a further step would move the centre and the width by less than 1e-4 of
    the width, and the centre lies within the abscissae). Rows with
    no positive value, or fewer than 4 points, give NaN.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    n = len(y)
    out = {k: np.full(n, np.nan) for k in ("amplitude", "centre", "sigma", "background")}
    out["converged"] = np.zeros(n, dtype=bool)
    valid = np.isfinite(y).all(axis=1) & (np.ptp(y, axis=1) > 0 if y.shape[1] else False)
    if len(x) < 4 or not valid.any():
        return out
    yv = y[valid]
    p = _start(x, yv)
    cost = _cost(x, yv, p)
    damping = np.full(len(yv), 1e-3)
    for _ in range(iterations):
        trial = p + _step(x, yv, p, damping)
        trial[:, 2] = np.abs(trial[:, 2])
        new_cost = _cost(x, yv, trial)
        better = np.isfinite(new_cost) & (new_cost <= cost)
        p[better], cost[better] = trial[better], new_cost[better]
        damping = np.where(better, damping / 3.0, damping * 4.0)
    for k, name in enumerate(("amplitude", "centre", "sigma", "background")):
        out[name][valid] = p[:, k]
    with np.errstate(invalid="ignore"):
        last = np.abs(_step(x, yv, p, np.zeros(len(yv))))
        out["converged"][valid] = ((p[:, 2] > 0) & (last[:, 1] < 1e-4 * p[:, 2])
                                   & (last[:, 2] < 1e-4 * p[:, 2])
                                   & (p[:, 1] >= x[0]) & (p[:, 1] <= x[-1]))
    return out


def _start(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(n, 4) start: the Gaussian through the top bin and its neighbours (log-parabola)."""
    m = len(x)
    step = (x[-1] - x[0]) / (m - 1)
    background = y.min(axis=1)
    top = np.clip(np.argmax(y, axis=1), 1, m - 2)
    rows = np.arange(len(y))
    with np.errstate(divide="ignore", invalid="ignore"):
        lm, l0, lp = (np.log(np.clip(y[rows, top + k] - background, 1e-300, None)) for k in (-1, 0, 1))
        curvature = lm - 2.0 * l0 + lp
        ok = curvature < 0
        offset = np.where(ok, 0.5 * (lm - lp) / curvature, 0.0)
        sigma = np.where(ok, step * np.sqrt(-1.0 / np.where(ok, curvature, -1.0)), 2.0 * step)
    centre = x[top] + np.clip(offset, -1.0, 1.0) * step
    amplitude = y[rows, top] - background
    return np.column_stack([amplitude, centre, np.clip(sigma, 0.3 * step, m * step), background])


def _cost(x: np.ndarray, y: np.ndarray, p: np.ndarray) -> np.ndarray:
    model = gaussian_model(x[None, :], p[:, :1], p[:, 1:2], p[:, 2:3], p[:, 3:4])
    return np.sum((y - model) ** 2, axis=1)


def _step(x: np.ndarray, y: np.ndarray, p: np.ndarray, damping: np.ndarray) -> np.ndarray:
    """One damped Gauss-Newton (Levenberg-Marquardt) step for every row."""
    a, mu, sigma = p[:, :1], p[:, 1:2], p[:, 2:3]
    u = (x[None, :] - mu) / sigma
    e = np.exp(-0.5 * u * u)
    residual = y - (a * e + p[:, 3:4])
    jac = np.stack([e, a * e * u / sigma, a * e * u * u / sigma, np.ones_like(e)], axis=-1)
    jtj = np.einsum("nmi,nmj->nij", jac, jac)
    jtr = np.einsum("nmi,nm->ni", jac, residual)
    diag = np.diagonal(jtj, axis1=1, axis2=2)
    # damping scales each parameter's own diagonal (Marquardt: parameters of very different
    # scales, counts and 1/A); the tiny floor keeps degenerate rows solvable
    jtj = jtj + np.eye(4)[None] * ((damping[:, None] + 1e-12) * diag + 1e-300)[:, :, None]
    return np.linalg.solve(jtj, jtr[..., None])[..., 0]


def roi_bins(grid: QGrid, roi: QRoi) -> tuple[slice, slice, slice]:
    """The bins whose centres lie inside the ROI's box (its bounding box for an ellipsoid)."""
    out = []
    for a in range(3):
        inside = np.nonzero((grid.centres(a) >= roi.lo[a]) & (grid.centres(a) < roi.hi[a]))[0]
        out.append(slice(int(inside[0]), int(inside[-1]) + 1) if inside.size else slice(0, 0))
    return tuple(out)


def fit_projections(histogram: np.ndarray, grid: QGrid, points=None, roi: QRoi | None = None,
                    iterations: int = 30) -> ProjectionFits:
    """Gaussian fits of the qx, qy, qz projections of each map pixel's histogram.

    Parameters
    ----------
    histogram : (n_points, n_bins) flat histograms (``Accumulator.histogram``).
    grid : their grid.
    points : map pixels to fit (indices or a boolean mask over n_points, e.g. the intensity
        mask raveled); None fits all. The others are NaN.
    roi : fit only the bins inside this q-ROI's box, so that one crystal's peak is fitted where
        several share the map pixel.
    iterations : Levenberg-Marquardt steps.

    Returns
    -------
    ProjectionFits with (n_points, 3) arrays.
    """
    n = len(histogram)
    selected = np.arange(n) if points is None else np.arange(n)[np.asarray(points).ravel()] \
        if np.asarray(points).dtype == bool else np.asarray(points, dtype=np.int64)
    cube = histogram[selected].reshape((len(selected),) + tuple(grid.bins))
    window = roi_bins(grid, roi) if roi is not None else (slice(None),) * 3
    cube = cube[(slice(None),) + window]
    result = {k: np.full((n, 3), np.nan) for k in ("centre", "fwhm", "amplitude", "background")}
    converged = np.zeros((n, 3), dtype=bool)
    for a in range(3):
        x = grid.centres(a)[window[a]]
        projection = cube.sum(axis=tuple(b + 1 for b in range(3) if b != a), dtype=np.float64)
        fit = fit_gaussians(x, projection, iterations)
        ok = fit["converged"]
        result["centre"][selected, a] = np.where(ok, fit["centre"], np.nan)
        result["fwhm"][selected, a] = np.where(ok, _FWHM_PER_SIGMA * fit["sigma"], np.nan)
        result["amplitude"][selected, a] = np.where(ok, fit["amplitude"], np.nan)
        result["background"][selected, a] = np.where(ok, fit["background"], np.nan)
        converged[selected, a] = ok
    return ProjectionFits(converged=converged, **result)


def fit_map_arrays(fits: ProjectionFits, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """The fits as maps (rows, cols) under results-file names: ``fit_q{x,y,z}`` (centres),
    ``fit_fwhm_q{x,y,z}``, ``fit_amplitude_q{x,y,z}``, ``fit_d_spacing``."""
    arrays = {}
    for i, axis in enumerate("xyz"):
        arrays[f"fit_q{axis}"] = fits.centre[:, i].reshape(shape)
        arrays[f"fit_fwhm_q{axis}"] = fits.fwhm[:, i].reshape(shape)
        arrays[f"fit_amplitude_q{axis}"] = fits.amplitude[:, i].reshape(shape)
    arrays["fit_d_spacing"] = fits.d_spacing.reshape(shape)
    return arrays
