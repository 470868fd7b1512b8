"""Map derivation from moments: COM, d, strain, tilt, FWHM, mask, colours, XSOCS-style COM."""

import numpy as np
import pytest

from sxdm_stream.core.grid import QGrid
from sxdm_stream.core.kernels import N_MOMENTS
from sxdm_stream.core.maps import (azimuth_reference, derive_maps, histogram_com, hsv_to_rgb,
                                   intensity_mask)

Q0 = np.array([0.0, 0.0, 2 * np.pi / 4.7333])


def moments_of_samples(points: list[np.ndarray], weights: list[np.ndarray], q_ref) -> np.ndarray:
    """Per-pixel moments (1 angle, n, 10) of explicit weighted q samples."""
    out = np.zeros((1, len(points), N_MOMENTS))
    for n, (q, w) in enumerate(zip(points, weights)):
        dq = q - q_ref
        out[0, n, 0] = w.sum()
        out[0, n, 1:4] = w @ dq
        for k, (i, j) in enumerate([(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]):
            out[0, n, 4 + k] = np.sum(w * dq[:, i] * dq[:, j])
    return out


def gaussian_cloud(centre, sigma, n, rng):
    return centre + rng.normal(size=(n, 3)) * sigma


def test_com_d_strain_and_fwhm_of_known_peaks():
    rng = np.random.default_rng(3)
    strains = np.array([-5e-4, 0.0, 5e-4, 1e-3])
    centres = [Q0 / (1 + e) for e in strains]          # d = d0 (1 + e)
    sigma = np.array([1.5e-3, 1.5e-3, 1e-3])
    pts = [gaussian_cloud(c, sigma, 200_000, rng) for c in centres]
    w = [np.ones(len(p)) for p in pts]
    m = derive_maps(moments_of_samples(pts, w, Q0 + 1e-3), Q0 + 1e-3, (2, 2), d_ref=4.7333)
    com = m.com.reshape(-1, 3)
    np.testing.assert_allclose(com, [p.mean(axis=0) for p in pts], rtol=0, atol=1e-12)
    np.testing.assert_allclose(m.strain.ravel(), strains * 1e6, atol=6.0)  # ~1/sqrt(2e5) noise
    np.testing.assert_allclose(m.d_spacing.ravel(), 2 * np.pi / np.linalg.norm(com, axis=1))
    np.testing.assert_allclose(m.fwhm.reshape(-1, 3), np.tile(2.3548 * sigma, (4, 1)), rtol=0.01)
    # counting-statistics error along Q: sigma_z / sqrt(N) / |Q|
    np.testing.assert_allclose(m.strain_stderr.ravel(),
                               1e-3 / np.sqrt(2e5) / np.linalg.norm(com, axis=1) * 1e6, rtol=0.02)


def test_strain_reference_defaults_to_masked_mean_d():
    pts = [np.array([Q0 * f]) for f in (1.0, 1.001, 0.999, 1.01)]
    w = [np.array([10.0]), np.array([10.0]), np.array([10.0]), np.array([1.0])]  # last: masked
    m = derive_maps(moments_of_samples(pts, w, Q0), Q0, (2, 2))
    assert m.mask.tolist() == [[True, True], [True, False]]
    d = 2 * np.pi / (np.linalg.norm(Q0) * np.array([1.0, 1.001, 0.999]))
    assert m.d_ref == pytest.approx(d.mean(), rel=1e-14)
    assert np.isnan(m.strain[1, 1]) and np.isnan(m.tilt_altitude[1, 1])
    assert np.nanmean(m.strain) == pytest.approx(0.0, abs=1e-9)


def rotated(vec, about, deg):
    a = np.deg2rad(deg)
    u = np.asarray(about, float) / np.linalg.norm(about)
    return (vec * np.cos(a) + np.cross(u, vec) * np.sin(a) + u * np.dot(u, vec) * (1 - np.cos(a)))


def test_tilt_altitude_and_azimuth_against_the_mean_direction():
    # tilts of 0.1 deg towards +x, +y, -x, -y around Q0 (mean direction stays along z)
    tilted = [rotated(Q0, [0, 1, 0], 0.1), rotated(Q0, [-1, 0, 0], 0.1),
              rotated(Q0, [0, -1, 0], 0.1), rotated(Q0, [1, 0, 0], 0.1)]
    m = derive_maps(moments_of_samples([t[None] for t in tilted], [np.ones(1)] * 4, Q0), Q0, (2, 2))
    np.testing.assert_allclose(m.mean_direction, [0, 0, 1], atol=1e-15)
    np.testing.assert_allclose(m.azimuth_reference, [1, 0, 0], atol=1e-15)
    np.testing.assert_allclose(m.tilt_altitude.ravel(), 0.1, rtol=1e-9)
    np.testing.assert_allclose(m.tilt_azimuth.ravel(), [0.0, 90.0, 180.0, 270.0], atol=1e-6)
    # misorientation colour: full saturation for all (same altitude), hue from azimuth
    np.testing.assert_allclose(m.misorientation_rgb[0, 0], [1, 0, 0], atol=1e-9)   # red at 0 deg
    np.testing.assert_allclose(m.misorientation_rgb[1, 0], [0, 1, 1], atol=1e-9)   # cyan at 180


def test_azimuth_reference_falls_back_to_y_when_x_is_along_the_mean():
    np.testing.assert_allclose(azimuth_reference(np.array([1.0, 0, 0])), [0, 1, 0])


def test_mask_fraction_of_maximum():
    inten = np.array([[0.0, 19.9], [20.0, 100.0]])
    assert intensity_mask(inten, 0.2).tolist() == [[False, False], [True, True]]
    assert not intensity_mask(np.zeros((2, 2))).any()


def test_hsv_to_rgb_primaries():
    h = np.array([0.0, 1 / 3, 2 / 3, 0.5])
    rgb = hsv_to_rgb(h, np.ones(4), np.ones(4))
    np.testing.assert_allclose(rgb, [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 1, 1]], atol=1e-12)
    np.testing.assert_allclose(hsv_to_rgb(h, np.zeros(4), np.ones(4)), np.ones((4, 3)))


def test_histogram_com_is_the_xsocs_centroid_of_hit_normalised_projections():
    rng = np.random.default_rng(5)
    centre = Q0 + np.array([1e-4, -2e-4, 3e-4])
    pts = gaussian_cloud(centre, np.array([1.5e-3, 1.5e-3, 1e-3]), 400_000, rng)
    bins = 24
    grid = QGrid.from_bounds(Q0 - 0.006, Q0 + 0.006, (bins,) * 3)
    edges = [grid.edges_lo[a] + grid.step[a] * np.arange(bins + 1) for a in range(3)]
    hist, _ = np.histogramdd(pts, bins=edges)
    hits = rng.integers(1, 5, size=(bins,) * 3)
    hits[0] = 0                                   # a slab no pixel reaches
    com = histogram_com(hist.reshape(1, -1), hits, grid)[0]
    expected = []
    for a in range(3):
        other = tuple(b for b in range(3) if b != a)
        norm = hits.sum(axis=other)
        p = np.divide(hist.sum(axis=other), norm, out=np.zeros(bins), where=norm > 0)
        expected.append(np.sum(p * grid.centres(a)) / p.sum())
    np.testing.assert_allclose(com, expected, rtol=1e-13)
    # with uniform hits and fine bins it is close to the exact centroid of the samples
    flat = histogram_com(hist.reshape(1, -1), np.ones((bins,) * 3), grid)[0]
    np.testing.assert_allclose(flat, pts.mean(axis=0), atol=3e-5)
