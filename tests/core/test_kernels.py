"""The numba kernels against a plain-numpy reference.

The reference shares nothing with the kernels but their inputs: q comes from the public
``Geometry.q`` (not the kernels' rotated-k_f formula), the ROI is cut from the full frame with
the detector's ``roi_bounds`` and the mask from the full-detector mask, and the histogram is
``np.histogramdd`` on absolute bin edges (not the kernels' flat index relative to q_ref).
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from sxdm_stream.core import accumulate, kernels
from sxdm_stream.core.accumulate import (AccumulationSettings, Accumulator, ScanSetup,
                                         max_valid_for)
from sxdm_stream.core.geometry import Detector, Geometry
from sxdm_stream.core.scan import ScanDescription
from sxdm_stream.errors import BadFrameError

FULL_SHAPE = (64, 64)
#: 40 x 48 pixels, offset on both axes so that an ignored or swapped origin shows
ROI = (10, 50, 6, 54)
#: distinct per axis so that swapped q axes or a transposed flat index change the result
BINS = (5, 6, 7)
SCAN_SHAPE = (3, 4)
N_ANGLES = 5
#: (row, col) rows of the S2 moments in the order xx, xy, xz, yy, yz, zz
S2_PAIRS = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))


# ---- set-up ---------------------------------------------------------------------------------
def make_mask(seed: int = 7) -> np.ndarray:
    """A full-detector mask with a gap row and column crossing the ROI, hot pixels, and a
    masked block outside the ROI."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(FULL_SHAPE, dtype=bool)
    mask[23, :] = True
    mask[:, 31] = True
    mask[0:6, 0:6] = True
    mask[rng.integers(0, FULL_SHAPE[0], 40), rng.integers(0, FULL_SHAPE[1], 40)] = True
    return mask


def make_geometry(roi=ROI, mask=None) -> Geometry:
    detector = Detector(shape=FULL_SHAPE, pixel_size_m=55e-6, distance_m=0.5,
                        beam_center=(30.5, 33.0), roi=roi, mask=mask)
    return Geometry(detector, energy_ev=9000.0)


def make_scan() -> ScanDescription:
    # nu and phi away from zero so that all three q components vary across the detector
    return ScanDescription(
        shape=SCAN_SHAPE, extents_um=((0.0, 1.0), (0.0, 1.5)), rocking_axis="eta",
        rocking_angles=tuple(17.0 + np.linspace(-0.4, 0.4, N_ANGLES)),
        fixed_angles={"phi": 3.0, "nu": 1.2, "delta": 34.0},
    )


def make_setup(roi=ROI, mask=None, **settings) -> ScanSetup:
    settings.setdefault("histogram_bins", BINS)
    return ScanSetup(make_geometry(roi, mask), make_scan(), AccumulationSettings(**settings))


def make_frames(n: int, dtype, seed: int) -> np.ndarray:
    """Frames of Poisson counts with many zeros inside the ROI and large counts outside it, so
    that reading outside the ROI or dropping the zero test shows."""
    rng = np.random.default_rng(seed)
    frames = rng.poisson(3.0, size=(n, *FULL_SHAPE)).astype(np.float64)
    r0, r1, c0, c1 = ROI
    outside = np.ones(FULL_SHAPE, dtype=bool)
    outside[r0:r1, c0:c1] = False
    frames[:, outside] += 500.0
    if np.dtype(dtype).kind == "f":
        frames += rng.uniform(-0.7, 0.7, size=frames.shape)  # fractional and negative counts
    return frames.astype(dtype)


# ---- the reference --------------------------------------------------------------------------
def bin_edges(grid) -> list[np.ndarray]:
    return [grid.edges_lo[k] + grid.step[k] * np.arange(grid.bins[k] + 1) for k in range(3)]


def reference(geometry: Geometry, frame, angles, q_ref, grid, scale=1.0, threshold=0.0):
    """(moments (10,), |moments| bound (10,), histogram (bx, by, bz) or None) of one frame."""
    r0, r1, c0, c1 = geometry.detector.roi_bounds
    counts = np.asarray(frame, dtype=np.float64)[r0:r1, c0:c1]
    if geometry.detector.mask is None:
        excluded = np.zeros(counts.shape, dtype=bool)
    else:
        excluded = np.asarray(geometry.detector.mask, dtype=bool)[r0:r1, c0:c1]
    keep = (counts != 0) & (counts >= threshold) & ~excluded
    w = counts[keep] * scale
    q = geometry.q(angles)[keep]
    dq = q - np.asarray(q_ref)
    dq2 = np.stack([dq[:, a] * dq[:, b] for a, b in S2_PAIRS], axis=1)
    moments = np.concatenate([[w.sum()], w @ dq, w @ dq2])
    # the sum of |terms|: the scale against which rounding of a cancelling sum is judged
    bound = np.concatenate([[np.abs(w).sum()], np.abs(w) @ np.abs(dq), np.abs(w) @ np.abs(dq2)])
    hist = None
    if grid is not None:
        hist, _ = np.histogramdd(q, bins=bin_edges(grid), weights=w)
    return moments, bound, hist


class Expected:
    """Reference sums of a whole accumulator, built frame by frame."""

    def __init__(self, setup: ScanSetup, with_histogram: bool = True) -> None:
        self.setup = setup
        scan = setup.scan
        self.moments = np.zeros((scan.n_angles, scan.n_points, 10))
        self.bound = np.zeros_like(self.moments)
        self.hist = np.zeros((scan.n_points, *setup.grid.bins)) if with_histogram else None
        self.frame_count = np.zeros((scan.n_angles, scan.n_points), dtype=np.int64)

    def add(self, frame, angle_index, point_index, monitor=None) -> float:
        s = self.setup
        scale = 1.0 if monitor is None else 1.0 / monitor
        m, b, h = reference(s.geometry, frame, s.scan.angles(angle_index), s.q_ref,
                            s.grid if self.hist is not None else None, scale,
                            s.settings.threshold)
        self.moments[angle_index, point_index] += m
        self.bound[angle_index, point_index] += b
        if self.hist is not None:
            self.hist[point_index] += h
        self.frame_count[angle_index, point_index] += 1
        return m[0]


def assert_moments_match(actual, expected: Expected, rtol=1e-10):
    err = np.abs(actual - expected.moments)
    limit = rtol * expected.bound
    worst = np.unravel_index(np.argmax(err - limit), err.shape)
    assert np.all(err <= limit), (
        f"moments differ at {worst}: {actual[worst]} vs reference {expected.moments[worst]}"
    )


def assert_histogram_match(acc: Accumulator, expected: Expected, rtol=0.0):
    hist = acc.histogram.reshape(expected.hist.shape).astype(np.float64)
    if rtol == 0.0:
        np.testing.assert_array_equal(hist, expected.hist)
    else:
        # empty reference bins must stay exactly empty
        np.testing.assert_allclose(hist, expected.hist, rtol=rtol, atol=0.0)


def assignments(n: int, seed: int):
    """(angle, point) of n frames, with repeated cells."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, N_ANGLES, n), rng.integers(0, SCAN_SHAPE[0] * SCAN_SHAPE[1], n))


# ---- accumulate_frame through Accumulator.add_frame ------------------------------------------
@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.float32])
def test_add_frame_matches_reference_with_roi_and_mask(dtype):
    setup = make_setup(mask=make_mask())
    acc, expected = Accumulator(setup), Expected(setup)
    frames = make_frames(10, dtype, seed=1)
    angles, points = assignments(10, seed=2)
    for frame, a, p in zip(frames, angles, points):
        added = acc.add_frame(frame, int(a), int(p))
        ref_added = expected.add(frame, a, p)
        assert added == pytest.approx(ref_added, rel=1e-12)
    assert_moments_match(acc.moments, expected)
    # integer counts sum exactly in float32; fractional ones to float32 rounding
    assert_histogram_match(acc, expected, rtol=0.0 if dtype != np.float32 else 1e-5)
    np.testing.assert_array_equal(acc.frame_count, expected.frame_count)
    # the data do reach the histogram and the mask does remove counts
    assert expected.hist.sum() > 0.5 * expected.moments[..., 0].sum()
    unmasked = make_setup(mask=None)
    assert not np.allclose(reference(unmasked.geometry, frames[0], setup.scan.angles(0),
                                     setup.q_ref, None)[0][0],
                           reference(setup.geometry, frames[0], setup.scan.angles(0),
                                     setup.q_ref, None)[0][0])


def test_add_frame_full_detector_without_roi():
    setup = make_setup(roi=None, mask=make_mask())
    acc, expected = Accumulator(setup), Expected(setup)
    for k, frame in enumerate(make_frames(4, np.uint32, seed=3)):
        acc.add_frame(frame, k % N_ANGLES, k)
        expected.add(frame, k % N_ANGLES, k)
    assert_moments_match(acc.moments, expected)
    assert_histogram_match(acc, expected)


@pytest.mark.parametrize("histogram_dtype", ["float32", "float64"])
def test_monitor_normalisation(histogram_dtype):
    setup = make_setup(mask=make_mask(), histogram_dtype=histogram_dtype)
    acc, expected = Accumulator(setup), Expected(setup)
    frames = make_frames(6, np.uint16, seed=4)
    angles, points = assignments(6, seed=5)
    monitors = np.random.default_rng(6).uniform(800.0, 1600.0, 6)
    for frame, a, p, mon in zip(frames, angles, points, monitors):
        added = acc.add_frame(frame, int(a), int(p), monitor=float(mon))
        assert added == pytest.approx(expected.add(frame, a, p, monitor=mon), rel=1e-12)
    assert_moments_match(acc.moments, expected)
    assert_histogram_match(acc, expected, rtol=1e-5 if histogram_dtype == "float32" else 1e-12)
    assert acc.histogram.dtype == np.dtype(histogram_dtype)


@pytest.mark.parametrize("dtype,threshold", [(np.uint16, 4), (np.uint32, 2.5), (np.float32, 3.2)])
def test_count_threshold(dtype, threshold):
    setup = make_setup(mask=make_mask(), threshold=threshold)
    acc, expected = Accumulator(setup), Expected(setup)
    frames = make_frames(5, dtype, seed=7)
    angles, points = assignments(5, seed=8)
    for frame, a, p in zip(frames, angles, points):
        acc.add_frame(frame, int(a), int(p))
        expected.add(frame, a, p)
    assert_moments_match(acc.moments, expected)
    assert_histogram_match(acc, expected, rtol=0.0 if dtype != np.float32 else 1e-5)
    # the threshold removes a good share of these counts (Poisson mean 3)
    no_threshold = Expected(make_setup(mask=make_mask()))
    for frame, a, p in zip(frames, angles, points):
        no_threshold.add(frame, a, p)
    assert expected.moments[..., 0].sum() < 0.9 * no_threshold.moments[..., 0].sum()


def test_threshold_keeps_counts_equal_to_it():
    setup = make_setup(threshold=3)
    acc = Accumulator(setup)
    frame = np.zeros(FULL_SHAPE, dtype=np.uint16)
    r0, _, c0, _ = ROI
    frame[r0 + 5, c0 + 7] = 3
    frame[r0 + 6, c0 + 8] = 2
    assert acc.add_frame(frame, 0, 0) == 3.0


def test_explicit_q_ref():
    setup = make_setup(mask=make_mask(), q_ref=(0.01, -0.07, 2.66))
    np.testing.assert_array_equal(setup.q_ref, [0.01, -0.07, 2.66])
    acc, expected = Accumulator(setup), Expected(setup)
    for k, frame in enumerate(make_frames(3, np.uint16, seed=9)):
        acc.add_frame(frame, k, k)
        expected.add(frame, k, k)
    assert_moments_match(acc.moments, expected)
    assert_histogram_match(acc, expected)


def test_histogram_on_a_grid_narrower_than_the_data():
    """Pixels below the first and beyond the last bin edge on each axis are dropped."""
    geometry = make_geometry(mask=make_mask())
    scan = make_scan()
    q = np.stack([geometry.q(scan.angles(a)) for a in range(N_ANGLES)])
    lo, hi = q.min(axis=(0, 1, 2)), q.max(axis=(0, 1, 2))
    span = hi - lo
    bounds = (tuple(lo + 0.3 * span), tuple(hi - 0.25 * span))
    settings = AccumulationSettings(histogram_bins=BINS, histogram_bounds=bounds)
    setup = ScanSetup(geometry, scan, settings)
    acc, expected = Accumulator(setup), Expected(setup)
    for k, frame in enumerate(make_frames(5, np.uint16, seed=10)):
        acc.add_frame(frame, k, k)
        expected.add(frame, k, k)
    assert_histogram_match(acc, expected)
    assert 0 < expected.hist.sum() < 0.8 * expected.moments[..., 0].sum()
    assert_moments_match(acc.moments, expected)  # moments do not depend on the grid


def test_histogram_disabled():
    setup = make_setup(mask=make_mask(), histogram_bins=(0, 0, 0))
    assert not setup.keep_histogram
    acc, expected = Accumulator(setup), Expected(setup, with_histogram=False)
    assert acc.histogram.shape == (setup.scan.n_points, 0)
    frames = make_frames(6, np.uint32, seed=11)
    angles, points = assignments(6, seed=12)
    for frame, a, p in zip(frames, angles, points):
        acc.add_frame(frame, int(a), int(p))
        expected.add(frame, a, p)
    acc.add_frames(frames, angles, points)
    for frame, a, p in zip(frames, angles, points):
        expected.add(frame, a, p)
    assert_moments_match(acc.moments, expected)
    assert acc.histogram.shape == (setup.scan.n_points, 0)
    np.testing.assert_array_equal(acc.frame_count, expected.frame_count)


def test_nan_counts_are_not_accumulated():
    """A NaN count fails ``c >= threshold`` (the kernels' documented rule), so it is skipped:
    float frames from corrected detectors carry NaN in gaps and dead pixels."""
    setup = make_setup()
    acc, expected = Accumulator(setup), Expected(setup)
    frame = make_frames(1, np.float32, seed=13)[0]
    r0, _, c0, _ = ROI
    frame[r0 + 3, c0 + 4] = np.nan
    frame[r0 + 20, :] = np.nan
    acc.add_frame(frame, 1, 2)
    expected.add(frame, 1, 2)
    assert np.all(np.isfinite(acc.moments)), "a NaN count reached the moments"
    assert np.all(np.isfinite(acc.histogram)), "a NaN count reached the histogram"
    assert_moments_match(acc.moments, expected)
    assert_histogram_match(acc, expected, rtol=1e-5)


@pytest.mark.parametrize("dtype", [">u2", "<i4", np.float64, np.float16])
def test_other_numeric_dtypes_are_added_or_refused_cleanly(dtype):
    """Any numeric frame (big-endian from a file, float16 from a corrected stream) is either
    accumulated correctly or refused with BadFrameError, never with a numba error."""
    setup = make_setup(mask=make_mask())
    acc, expected = Accumulator(setup), Expected(setup)
    frame = make_frames(1, np.uint16, seed=14)[0].astype(dtype)
    try:
        acc.add_frame(frame, 0, 0)
    except BadFrameError:
        assert not acc.moments.any() and not acc.histogram.any() and not acc.frame_count.any()
        return
    expected.add(frame, 0, 0)
    assert_moments_match(acc.moments, expected)
    assert_histogram_match(acc, expected)


# ---- accumulate_frames through Accumulator.add_frames ----------------------------------------
@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.float32])
def test_add_frames_matches_reference(dtype):
    setup = make_setup(mask=make_mask(), threshold=1)
    acc, expected = Accumulator(setup), Expected(setup)
    frames = make_frames(12, dtype, seed=15)
    angles, points = assignments(12, seed=16)
    monitors = np.random.default_rng(17).uniform(0.5, 2.0, 12)
    added = acc.add_frames(frames, angles, points, monitors=monitors)
    ref_added = [expected.add(f, a, p, monitor=m)
                 for f, a, p, m in zip(frames, angles, points, monitors)]
    np.testing.assert_allclose(added, ref_added, rtol=1e-12)
    assert_moments_match(acc.moments, expected)
    assert_histogram_match(acc, expected, rtol=1e-5)
    np.testing.assert_array_equal(acc.frame_count, expected.frame_count)
    assert expected.frame_count.max() > 1  # repeated cells are summed, not overwritten


def test_add_frames_equals_add_frame():
    setup = make_setup(mask=make_mask())
    one, many = Accumulator(setup), Accumulator(setup)
    frames = make_frames(8, np.uint16, seed=18)
    angles, points = assignments(8, seed=19)
    for frame, a, p in zip(frames, angles, points):
        one.add_frame(frame, int(a), int(p))
    many.add_frames(frames, angles, points)
    np.testing.assert_allclose(many.moments, one.moments, rtol=1e-13, atol=0.0)
    np.testing.assert_array_equal(many.histogram, one.histogram)
    np.testing.assert_array_equal(many.frame_count, one.frame_count)
    expected = Expected(setup)
    for frame, a, p in zip(frames, angles, points):
        expected.add(frame, a, p)
    assert_histogram_match(many, expected)


# ---- accumulate_frame called directly --------------------------------------------------------
def kernel_arguments(geometry: Geometry, angles, q_ref, grid):
    """The kernel's inputs, built from the public geometry rather than from ScanSetup."""
    r0, _, c0, _ = geometry.detector.roi_bounds
    rot = geometry.sample_matrix(angles)
    offset = -(rot @ geometry.ki) - q_ref
    return dict(
        r0=r0, c0=c0, kf=np.ascontiguousarray(geometry.kf_lab(angles)),
        mask=np.ascontiguousarray(geometry.detector.roi_mask()), rot=rot, offset=offset,
        edge0=grid.edges_lo - q_ref, inv_step=1.0 / np.asarray(grid.step),
        bins=np.asarray(grid.bins, dtype=np.int64),
    )


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.float32])
def test_accumulate_frame_direct(dtype):
    setup = make_setup(mask=make_mask())
    geometry, grid = setup.geometry, setup.grid
    angles = setup.scan.angles(3)
    q_ref = np.array([0.002, -0.08, 2.667])
    a = kernel_arguments(geometry, angles, q_ref, grid)
    frame = make_frames(1, dtype, seed=20)[0]
    moments = np.zeros(kernels.N_MOMENTS)
    hist = np.zeros(grid.n_bins, dtype=np.float64)
    scale, threshold = 1.0 / 3.0, 1.0
    args = (frame, a["r0"], a["c0"], a["kf"], a["mask"], a["rot"], a["offset"], a["edge0"],
            a["inv_step"], a["bins"], scale, threshold, np.inf, moments, hist,
            np.zeros(1, np.int64), None, None)
    added = kernels.accumulate_frame(*args)
    ref_m, ref_b, ref_h = reference(geometry, frame, angles, q_ref, grid, scale, threshold)
    assert added == pytest.approx(ref_m[0], rel=1e-12)
    np.testing.assert_array_less(np.abs(moments - ref_m), 1e-10 * ref_b + 1e-300)
    np.testing.assert_allclose(hist.reshape(grid.bins), ref_h, rtol=1e-12, atol=0.0)
    # the kernel adds into its outputs rather than overwriting them
    kernels.accumulate_frame(*args)
    np.testing.assert_array_less(np.abs(moments - 2 * ref_m), 2e-10 * ref_b + 1e-300)
    np.testing.assert_allclose(hist.reshape(grid.bins), 2 * ref_h, rtol=1e-12, atol=0.0)
    # named moment indices follow the documented order
    named = (kernels.S0, kernels.S1X, kernels.S1Z, kernels.S2XY, kernels.S2YY, kernels.S2ZZ)
    assert named == (0, 1, 3, 5, 7, 9)


def test_accumulate_frame_direct_without_histogram():
    setup = make_setup()
    geometry, grid = setup.geometry, setup.grid
    angles = setup.scan.angles(0)
    a = kernel_arguments(geometry, angles, setup.q_ref, grid)
    frame = make_frames(1, np.uint16, seed=21)[0]
    moments = np.zeros(kernels.N_MOMENTS)
    kernels.accumulate_frame(frame, a["r0"], a["c0"], a["kf"], a["mask"], a["rot"], a["offset"],
                             a["edge0"], a["inv_step"], a["bins"], 1.0, 0.0, np.inf, moments,
                             np.zeros(0, dtype=np.float32), np.zeros(1, np.int64), None, None)
    ref_m, ref_b, _ = reference(geometry, frame, angles, setup.q_ref, None)
    np.testing.assert_array_less(np.abs(moments - ref_m), 1e-10 * ref_b + 1e-300)


# ---- count_hits through ScanSetup.hits --------------------------------------------------------
def reference_hits(setup: ScanSetup) -> np.ndarray:
    keep = ~np.asarray(setup.geometry.detector.mask if setup.geometry.detector.mask is not None
                       else np.zeros(FULL_SHAPE, dtype=bool), dtype=bool)
    r0, r1, c0, c1 = setup.geometry.detector.roi_bounds
    keep = keep[r0:r1, c0:c1]
    hits = np.zeros(setup.grid.bins)
    for a in range(setup.scan.n_angles):
        q = setup.geometry.q(setup.scan.angles(a))[keep]
        hits += np.histogramdd(q, bins=bin_edges(setup.grid))[0]
    return hits


def test_hits_match_numpy():
    setup = make_setup(mask=make_mask())
    hits = setup.hits()
    assert hits.shape == BINS
    assert hits.dtype.kind == "i"
    np.testing.assert_array_equal(hits, reference_hits(setup))
    # the derived grid puts the extreme pixels on bin centres: every unmasked pixel is a hit
    n_unmasked = np.count_nonzero(~setup.geometry.detector.roi_mask())
    assert n_unmasked < 40 * 48
    assert hits.sum() == n_unmasked * N_ANGLES


def test_hits_on_a_narrow_grid_match_numpy():
    geometry = make_geometry(mask=make_mask())
    scan = make_scan()
    q = np.stack([geometry.q(scan.angles(a)) for a in range(N_ANGLES)])
    lo, hi = q.min(axis=(0, 1, 2)), q.max(axis=(0, 1, 2))
    span = hi - lo
    setup = ScanSetup(geometry, scan, AccumulationSettings(
        histogram_bins=(7, 4, 9),
        histogram_bounds=(tuple(lo + 0.2 * span), tuple(hi - 0.35 * span))))
    hits = setup.hits()
    expected = reference_hits(setup)
    np.testing.assert_array_equal(hits, expected)
    assert 0 < hits.sum() < 0.8 * np.count_nonzero(~geometry.detector.roi_mask()) * N_ANGLES


def test_count_hits_direct_adds_into_hits():
    setup = make_setup(mask=make_mask())
    hits = np.zeros(setup.grid.n_bins, dtype=np.int64)
    a = kernel_arguments(setup.geometry, setup.scan.angles(2), setup.q_ref, setup.grid)
    for _ in range(2):
        kernels.count_hits(a["kf"], a["mask"], a["rot"], a["offset"], a["edge0"], a["inv_step"],
                           a["bins"], hits)
    keep = ~setup.geometry.detector.roi_mask()
    q = setup.geometry.q(setup.scan.angles(2))[keep]
    np.testing.assert_array_equal(hits.reshape(BINS),
                                  2 * np.histogramdd(q, bins=bin_edges(setup.grid))[0])


# ---- q-space ROI moments ------------------------------------------------------------------------
def reference_roi_moments(geometry: Geometry, frame, angles, q_ref, rois, scale=1.0, threshold=0.0):
    """(moments (n_rois, 10), bound (n_rois, 10)): the reference restricted to each ROI,
    membership decided by ``QRoi.contains`` on the public ``Geometry.q``."""
    r0, r1, c0, c1 = geometry.detector.roi_bounds
    counts = np.asarray(frame, dtype=np.float64)[r0:r1, c0:c1]
    excluded = (np.zeros(counts.shape, dtype=bool) if geometry.detector.mask is None
                else np.asarray(geometry.detector.mask, dtype=bool)[r0:r1, c0:c1])
    keep = (counts != 0) & (counts >= threshold) & ~excluded
    q = geometry.q(angles)
    out, bound = np.zeros((len(rois), 10)), np.zeros((len(rois), 10))
    for k, roi in enumerate(rois):
        inside = keep & roi.contains(q)
        w, dq = counts[inside] * scale, q[inside] - np.asarray(q_ref)
        dq2 = np.stack([dq[:, a] * dq[:, b] for a, b in S2_PAIRS], axis=1)
        out[k] = np.concatenate([[w.sum()], w @ dq, w @ dq2])
        bound[k] = np.concatenate([[np.abs(w).sum()], np.abs(w) @ np.abs(dq),
                                   np.abs(w) @ np.abs(dq2)])
    return out, bound


def split_rois(setup: ScanSetup):
    """Three ROIs over the scan's q range: a box on bin edges, an ellipsoid, and a box that
    overlaps both (a pixel may count in several ROIs). No face passes through a pixel's q
    (the extreme pixels sit on bin centres): there, membership would be a matter of rounding."""
    from sxdm_stream.core.qroi import QRoi

    g = setup.grid
    edges = bin_edges(g)
    lo, hi = np.array([e[0] for e in edges]), np.array([e[-1] for e in edges])
    cut = np.array([edges[0][2], edges[1][3], edges[2][3]])
    return (QRoi("low", tuple(lo), tuple(cut)),
            QRoi("egg", tuple(lo + 0.2 * (hi - lo)), tuple(hi - 0.1 * (hi - lo)), "ellipsoid"),
            QRoi("wide", tuple(lo + 0.13 * (hi - lo)), tuple(hi)))


@pytest.mark.parametrize("batch", [False, True])
def test_roi_moments_match_reference(batch):
    setup = make_setup(mask=make_mask(), threshold=1)
    rois = split_rois(setup)
    setup = make_setup(mask=make_mask(), threshold=1, q_rois=rois)
    acc, expected = Accumulator(setup), Expected(setup)
    frames = make_frames(8, np.float32, seed=30)
    angles, points = assignments(8, seed=31)
    monitors = np.random.default_rng(32).uniform(0.5, 2.0, 8)
    if batch:
        acc.add_frames(frames, angles, points, monitors=monitors)
    else:
        for frame, a, p, m in zip(frames, angles, points, monitors):
            acc.add_frame(frame, int(a), int(p), monitor=float(m))
    ref = np.zeros(acc.roi_moments.shape)
    bound = np.zeros_like(ref)
    for frame, a, p, m in zip(frames, angles, points, monitors):
        expected.add(frame, a, p, monitor=m)
        r, b = reference_roi_moments(setup.geometry, frame, setup.scan.angles(a), setup.q_ref,
                                     rois, 1.0 / m, threshold=1)
        ref[a, p] += r
        bound[a, p] += b
    err = np.abs(acc.roi_moments - ref) - 1e-10 * bound
    worst = np.unravel_index(np.argmax(err), err.shape)
    assert err[worst] <= 0, (worst, acc.roi_moments[worst], ref[worst], bound[worst])
    assert_moments_match(acc.moments, expected)     # the ROIs change nothing else
    s0 = ref[..., 0].sum(axis=(0, 1))
    total = expected.moments[..., 0].sum()
    # each ROI holds a real share of the counts, the overlapping ones count pixels twice
    assert np.all(s0 > 0.05 * total) and np.all(s0 < total) and s0.sum() > total


def test_roi_on_bin_edges_holds_exactly_its_bins_counts():
    """Faces on bin edges, lower inclusive and upper exclusive as bins are: the ROI's S0 is the
    sum of the histogram bins inside it."""
    setup = make_setup(mask=make_mask())
    low = split_rois(setup)[0]
    setup = make_setup(mask=make_mask(), q_rois=(low,))
    acc = Accumulator(setup)
    frames = make_frames(6, np.uint16, seed=33)
    angles, points = assignments(6, seed=34)
    acc.add_frames(frames, angles, points)
    hist = acc.histogram.reshape(-1, *BINS).astype(np.float64)
    np.testing.assert_allclose(acc.roi_moments[..., 0, 0].sum(axis=0),
                               hist[:, :2, :3, :3].sum(axis=(1, 2, 3)), rtol=1e-12)


def test_kernel_with_empty_roi_table_equals_kernel_without_rois():
    setup = make_setup(mask=make_mask())
    a = kernel_arguments(setup.geometry, setup.scan.angles(1), setup.q_ref, setup.grid)
    frame = make_frames(1, np.uint32, seed=35)[0]
    results = []
    for rois, roi_moments in ((None, None), (np.zeros((0, 12)), np.zeros((0, 10)))):
        moments, hist = np.zeros(10), np.zeros(setup.grid.n_bins)
        kernels.accumulate_frame(frame, a["r0"], a["c0"], a["kf"], a["mask"], a["rot"],
                                 a["offset"], a["edge0"], a["inv_step"], a["bins"], 1.0, 0.0,
                                 np.inf, moments, hist, np.zeros(1, np.int64), rois, roi_moments)
        results.append((moments, hist))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
    assert results[0][0][0] > 0


# ---- the table kernel (what the accumulator runs) against the per-hit kernel ------------------
def many_rois(setup: ScanSetup, n: int):
    """n boxes, slabs of the q range along x (six slabs, overlapping, repeated): more than one
    64-bit word of ROI bits, every word with counts."""
    from sxdm_stream.core.qroi import QRoi

    lo = np.asarray(setup.grid.edges_lo)
    hi = lo + np.asarray(setup.grid.step) * np.asarray(setup.grid.bins)
    xs = np.linspace(lo[0], hi[0], 7)
    return tuple(QRoi(f"r{k}", (xs[k % 6], lo[1], lo[2]),
                      (xs[k % 6 + 1] + 0.3 * (xs[1] - xs[0]), hi[1], hi[2])) for k in range(n))


def per_hit_sums(setup: ScanSetup, frames, angles, points, monitors):
    """The sums of :func:`kernels.accumulate_frame` (dq and bins computed per hit), one call
    per frame in order, into arrays laid out as the accumulator's."""
    ref = Accumulator(setup)
    rois = setup.roi_table if setup.q_rois else None
    for frame, a, p, monitor in zip(frames, angles, points, monitors):
        frame, scale = ref.check_frame(frame, a, p, monitor)
        kernels.accumulate_frame(
            frame, setup.roi_origin[0], setup.roi_origin[1], setup.kf, setup.mask, setup.rots[a],
            setup.offsets[a], setup.edge0, setup.inv_step, setup.bins, scale,
            setup.settings.threshold, max_valid_for(frame.dtype, setup.max_valid),
            ref.moments[a, p], ref.histogram[p], ref._invalid,
            rois, ref.roi_moments[a, p] if rois is not None else None,
            setup.shell_of, ref.shell_moments[p] if setup.shell_of is not None else None)
        ref.frame_count[a, p] += 1
    return ref


def spoiled_frames(n: int, dtype, seed: int) -> np.ndarray:
    """Frames with the detector's invalid mark (uint) or NaN (float) on some pixels, and
    counts of 700 (over a ``max_valid_counts`` of 600) on others."""
    frames = make_frames(n, dtype, seed)
    rng = np.random.default_rng(seed + 1)
    rows, cols = rng.integers(0, FULL_SHAPE[0], 60), rng.integers(0, FULL_SHAPE[1], 60)
    frames[:, rows[:30], cols[:30]] = np.iinfo(dtype).max if np.dtype(dtype).kind == "u" else np.nan
    frames[:, rows[30:], cols[30:]] = 700
    return frames


def assert_same_bits(actual: Accumulator, expected: Accumulator) -> None:
    for name, arr in expected.state().items():
        np.testing.assert_array_equal(actual.state()[name], arr, err_msg=name)
    assert actual.invalid_pixels == expected.invalid_pixels


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.float32])
@pytest.mark.parametrize("batch", [False, True])
def test_table_kernel_equals_per_hit_kernel_bit_for_bit(dtype, batch):
    """Mask, threshold, monitor, invalid pixels, 3 ROIs and q shells: the accumulator (pixel
    tables) gives the same bits as the per-hit kernel, frame by frame or as a stack whose
    rocking angles change from frame to frame."""
    rois = split_rois(make_setup(mask=make_mask()))
    setup = make_setup(mask=make_mask(), threshold=1, q_rois=rois, q_shells=9,
                       max_valid_counts=600)
    frames = spoiled_frames(12, dtype, seed=40)
    angles, points = assignments(12, seed=41)
    monitors = np.random.default_rng(42).uniform(0.5, 2.0, 12)
    acc = Accumulator(setup)
    if batch:
        acc.add_frames(frames, angles, points, monitors)
    else:
        for frame, a, p, m in zip(frames, angles, points, monitors):
            acc.add_frame(frame, a, p, m)
    expected = per_hit_sums(setup, frames, angles, points, monitors)
    assert_same_bits(acc, expected)
    assert acc.invalid_pixels > 0 and np.all(acc.roi_moments[..., 0].sum(axis=(0, 1)) > 0)


@pytest.mark.parametrize("settings", [dict(histogram_bins=(0, 0, 0)), dict(q_shells=5),
                                      dict(histogram_dtype="float64")])
def test_table_kernel_specialisations_equal_per_hit_kernel(settings):
    """Without histogram, with shells only, with a float64 histogram (no ROIs)."""
    setup = make_setup(mask=make_mask(), **settings)
    frames = make_frames(6, np.uint32, seed=43)
    angles, points = assignments(6, seed=44)
    acc = Accumulator(setup)
    acc.add_frames(frames, angles, points)
    assert_same_bits(acc, per_hit_sums(setup, frames, angles, points, [None] * 6))


def test_table_kernel_with_more_rois_than_a_word_holds():
    """70 ROIs: their bits span two 64-bit words; ROI 64 onward must count too."""
    setup = make_setup(mask=make_mask())
    setup = make_setup(mask=make_mask(), q_rois=many_rois(setup, 70))
    frames = make_frames(4, np.uint16, seed=45)
    angles, points = assignments(4, seed=46)
    acc = Accumulator(setup)
    acc.add_frames(frames, angles, points)
    assert_same_bits(acc, per_hit_sums(setup, frames, angles, points, [None] * 4))
    assert acc.roi_moments[..., 64:, 0].sum() > 0


def test_pixel_tables_keep_a_bounded_few(monkeypatch):
    """A budget of one table: every angle change refills it, the sums do not change; the
    tables are the per-hit kernel's dq and bins."""
    setup = make_setup(mask=make_mask())
    monkeypatch.setattr(accumulate, "PIXEL_TABLE_BUDGET_BYTES", 1)
    frames = make_frames(8, np.uint16, seed=47)
    angles, points = assignments(8, seed=48)
    acc = Accumulator(setup)
    acc.add_frames(frames, angles, points)
    assert len(setup._tables) == 1
    assert_same_bits(acc, per_hit_sums(setup, frames, angles, points, [None] * 8))
    table, bits = setup.pixel_tables(2)
    assert bits is None and table.shape == (*setup.mask.shape, kernels.PIXEL_TABLE_COLUMNS)
    q = setup.geometry.q(setup.scan.angles(2))
    np.testing.assert_allclose(table[..., :3], q - setup.q_ref, rtol=0, atol=1e-12)
    assert np.all(table[..., 3][setup.mask] == kernels.MASKED)
    assert np.all(table[..., 3][~setup.mask] >= kernels.OFF_GRID)


def test_scan_setup_pickles_without_its_tables():
    setup = make_setup(mask=make_mask())
    setup.pixel_tables(0)
    again = pickle.loads(pickle.dumps(setup))
    assert again.fingerprint == setup.fingerprint and len(again._tables) == 0
    frames = make_frames(2, np.uint16, seed=49)
    one, two = Accumulator(setup), Accumulator(again)
    one.add_frames(frames, [0, 1], [0, 1])
    two.add_frames(frames, [0, 1], [0, 1])
    assert_same_bits(two, one)
