"""Vectorised Gaussian fits against scipy.optimize.curve_fit and against known peaks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import curve_fit

from sxdm_stream.analysis.fits import fit_gaussians, fit_map_arrays, fit_projections, gaussian_model
from sxdm_stream.core.grid import QGrid
from sxdm_stream.core.qroi import QRoi


def test_fits_match_curve_fit_on_noisy_peaks():
    rng = np.random.default_rng(0)
    x = np.linspace(-1.0, 1.0, 32)
    n = 200
    truth = np.column_stack([rng.uniform(50, 500, n), rng.uniform(-0.4, 0.4, n),
                             rng.uniform(0.05, 0.3, n), rng.uniform(0, 10, n)])
    y = rng.poisson(gaussian_model(x[None], *(truth[:, k:k + 1] for k in range(4)))).astype(float)
    fit = fit_gaussians(x, y)
    assert fit["converged"].all()
    ref = np.array([curve_fit(gaussian_model, x, row, p0=t)[0] for row, t in zip(y, truth)])
    ours = np.column_stack([fit[k] for k in ("amplitude", "centre", "sigma", "background")])
    np.testing.assert_allclose(ours[:, :3], ref[:, :3], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ours[:, 3], ref[:, 3], atol=1e-2)


def test_empty_and_flat_rows_give_nan():
    fit = fit_gaussians(np.arange(8.0), np.array([np.zeros(8), np.ones(8), np.exp(-0.5 * (np.arange(8.0) - 3.3) ** 2)]))
    assert np.isnan(fit["centre"][:2]).all() and not fit["converged"][:2].any()
    assert fit["converged"][2] and fit["centre"][2] == pytest.approx(3.3, abs=1e-6)


GRID = QGrid.from_bounds((-0.01, -0.01, 1.31), (0.01, 0.01, 1.35), (20, 20, 40))


def peak(centre, sigma, counts):
    axes = np.meshgrid(*(GRID.centres(a) for a in range(3)), indexing="ij")
    g = np.exp(-0.5 * sum(((x - c) / s) ** 2 for x, c, s in zip(axes, centre, sigma)))
    return (counts * g / g.sum()).ravel()


def test_projection_fits_recover_each_pixels_peak_and_a_rois_peak():
    centres = np.array([[0.001, -0.002, 1.320], [-0.003, 0.001, 1.330], [0.0, 0.0, 1.325]])
    sigma = (2e-3, 1.5e-3, 2.5e-3)
    hist = np.stack([peak(c, sigma, 1e5) for c in centres] + [np.zeros(GRID.n_bins)])
    fits = fit_projections(hist.astype(np.float32), GRID)
    np.testing.assert_allclose(fits.centre[:3], centres, atol=1e-6)
    np.testing.assert_allclose(fits.fwhm[:3], np.broadcast_to(2.3548 * np.array(sigma), (3, 3)), rtol=1e-3)
    # the counts under each fitted projection are the pixel's counts
    counts = fits.amplitude[:3] * fits.fwhm[:3] / 2.3548 * np.sqrt(2 * np.pi) / np.asarray(GRID.step)
    np.testing.assert_allclose(counts, 1e5, rtol=1e-3)
    assert np.isnan(fits.centre[3]).all()
    # two crystals in one pixel: the fit inside a ROI finds the one in it
    low, high = np.array([0.001, -0.002, 1.315]), np.array([-0.003, 0.001, 1.335])
    both = peak(low, sigma, 1e5) + peak(high, sigma, 6e4)
    roi = QRoi("high", (-0.01, -0.01, 1.325), (0.01, 0.01, 1.35))
    fit = fit_projections(both[None], GRID, roi=roi)
    np.testing.assert_allclose(fit.centre[0], high, atol=2e-5)
    mixed = fit_projections(both[None], GRID)
    assert abs(mixed.centre[0, 2] - high[2]) > 1e-2 or np.isnan(mixed.centre[0, 2])
    maps = fit_map_arrays(fits, (2, 2))
    assert maps["fit_d_spacing"][0, 0] == pytest.approx(2 * np.pi / np.linalg.norm(centres[0]), rel=1e-6)
    selected = fit_projections(hist, GRID, points=np.array([False, True, False, False]))
    assert np.isnan(selected.centre[0]).all()
    np.testing.assert_allclose(selected.centre[1], centres[1], atol=1e-6)
