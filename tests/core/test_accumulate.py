"""ScanSetup and Accumulator: the create / append / combine contract.

Property tests (hypothesis, derandomized) check what makes the accumulator a reduction: the
result does not depend on how frames are split between accumulators nor on their order, and the
histogram holds exactly the unmasked ROI counts. Plain tests check the refusals: bad frames,
foreign accumulators, histograms over budget, a rocking axis that moves the detector.
"""

from __future__ import annotations

import functools
import re

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

from sxdm_stream.core.accumulate import AccumulationSettings, Accumulator, ScanSetup
from sxdm_stream.core.geometry import Detector, Geometry
from sxdm_stream.core.scan import ScanDescription
from sxdm_stream.errors import BadFrameError, ConfigError, HistogramBudgetError

#: not square, so that a transposed frame has the wrong shape
FULL_SHAPE = (56, 64)
ROI = (8, 48, 10, 58)  # 40 x 48
SCAN_SHAPE = (3, 4)
N_POINTS = SCAN_SHAPE[0] * SCAN_SHAPE[1]
N_ANGLES = 5
BINS = (5, 6, 7)
S2_PAIRS = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))
N_FRAMES = 10

PROPERTY = settings(derandomize=True, deadline=None, max_examples=60, database=None)


# ---- set-up ---------------------------------------------------------------------------------
def make_mask(seed: int = 3, fraction: float = 0.05) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = rng.random(FULL_SHAPE) < fraction
    mask[20, :] = True  # a module gap crossing the ROI
    return mask


def make_geometry(roi=ROI, mask=None, energy_ev=9000.0) -> Geometry:
    detector = Detector(shape=FULL_SHAPE, pixel_size_m=55e-6, distance_m=0.5,
                        beam_center=(28.5, 33.0), roi=roi, mask=mask)
    return Geometry(detector, energy_ev=energy_ev)


def make_scan(rocking_angles=None, **kw) -> ScanDescription:
    if rocking_angles is None:
        rocking_angles = tuple(17.0 + np.linspace(-0.4, 0.4, N_ANGLES))
    kw.setdefault("fixed_angles", {"phi": 3.0, "nu": 1.2, "delta": 34.0})
    return ScanDescription(shape=SCAN_SHAPE, extents_um=((0.0, 1.0), (0.0, 1.5)),
                           rocking_axis=kw.pop("rocking_axis", "eta"),
                           rocking_angles=rocking_angles, **kw)


@functools.cache
def standard_setup() -> ScanSetup:
    return ScanSetup(make_geometry(mask=make_mask()), make_scan(),
                     AccumulationSettings(histogram_bins=BINS))


@functools.cache
def frame_pool():
    """N_FRAMES integer-count frames and their (angle, point), with repeated cells."""
    rng = np.random.default_rng(11)
    frames = rng.poisson(4.0, size=(N_FRAMES, *FULL_SHAPE)).astype(np.uint16)
    angles = rng.integers(0, N_ANGLES, N_FRAMES)
    points = rng.integers(0, N_POINTS, N_FRAMES)
    angles[1], points[1] = angles[0], points[0]
    return frames, angles, points


def moment_scale(setup: ScanSetup, moments: np.ndarray) -> np.ndarray:
    """Per-cell bound on |terms| of each moment: S0 times max|dq| to the moment's order."""
    qs = np.stack([setup.geometry.q(setup.scan.angles(a)) for a in range(setup.scan.n_angles)])
    dq_max = np.abs(qs - setup.q_ref).max(axis=(0, 1, 2))
    per_unit = np.concatenate([[1.0], dq_max, [dq_max[a] * dq_max[b] for a, b in S2_PAIRS]])
    return np.abs(moments[..., :1]) * per_unit


def assert_same_sums(actual: Accumulator, expected: Accumulator, rtol=1e-12):
    scale = moment_scale(expected.setup, expected.moments)
    err = np.abs(actual.moments - expected.moments)
    assert np.all(err <= rtol * (np.abs(expected.moments) + scale)), (
        f"moments differ by up to {np.max(err / (np.abs(expected.moments) + scale + 1e-300))} "
        f"relative"
    )
    np.testing.assert_array_equal(actual.histogram, expected.histogram)
    np.testing.assert_array_equal(actual.frame_count, expected.frame_count)


def feed(acc: Accumulator, order, batch: bool) -> None:
    frames, angles, points = frame_pool()
    order = list(order)
    if not order:
        return
    if batch:
        acc.add_frames(frames[order], angles[order], points[order])
    else:
        for k in order:
            acc.add_frame(frames[k], int(angles[k]), int(points[k]))


@functools.cache
def all_frames_accumulator() -> Accumulator:
    acc = Accumulator(standard_setup())
    feed(acc, range(N_FRAMES), batch=False)
    return acc


def snapshot(acc: Accumulator) -> dict[str, np.ndarray]:
    return {name: arr.copy() for name, arr in acc.state().items()}


def assert_unchanged(acc: Accumulator, before: dict[str, np.ndarray]) -> None:
    for name, arr in acc.state().items():
        np.testing.assert_array_equal(arr, before[name], err_msg=f"{name} changed")


# ---- properties -------------------------------------------------------------------------------
@PROPERTY
@given(parts=st.lists(st.integers(0, 2), min_size=N_FRAMES, max_size=N_FRAMES),
       batch=st.lists(st.booleans(), min_size=3, max_size=3))
def test_merge_equals_one_accumulator_fed_all_frames(parts, batch):
    setup = standard_setup()
    accs = [Accumulator(setup) for _ in range(3)]
    for k, acc in enumerate(accs):
        feed(acc, [f for f in range(N_FRAMES) if parts[f] == k], batch[k])
    merged = accs[0].merge(accs[1]).merge(accs[2])
    assert merged is accs[0]
    assert_same_sums(merged, all_frames_accumulator())
    assert merged.frame_count.sum() == N_FRAMES


@PROPERTY
@given(order=st.permutations(range(N_FRAMES)), batch=st.booleans())
def test_frame_order_does_not_matter(order, batch):
    acc = Accumulator(standard_setup())
    feed(acc, order, batch)
    assert_same_sums(acc, all_frames_accumulator())


def test_merge_across_separately_built_setups_of_the_same_scan():
    """Workers build their own ScanSetup from the same description: those accumulators merge."""
    first = Accumulator(standard_setup())
    second = Accumulator(ScanSetup(make_geometry(mask=make_mask()), make_scan(),
                                   AccumulationSettings(histogram_bins=BINS)))
    feed(first, range(0, N_FRAMES, 2), batch=False)
    feed(second, range(1, N_FRAMES, 2), batch=True)
    before = snapshot(second)
    first.merge(second)
    assert_same_sums(first, all_frames_accumulator())
    assert_unchanged(second, before)


@PROPERTY
@given(r0=st.integers(0, 40), height=st.integers(4, 30), c0=st.integers(0, 50),
       width=st.integers(4, 30), mask_fraction=st.sampled_from([0.0, 0.1, 0.4]),
       seed=st.integers(0, 2**16), bins=st.tuples(*[st.integers(2, 6)] * 3),
       batch=st.booleans())
def test_histogram_total_is_the_unmasked_roi_counts(r0, height, c0, width, mask_fraction, seed,
                                                    bins, batch):
    roi = (r0, min(r0 + height, FULL_SHAPE[0]), c0, min(c0 + width, FULL_SHAPE[1]))
    mask = make_mask(seed, mask_fraction)
    geometry = make_geometry(roi=roi, mask=mask)
    scan = make_scan()
    # bounds over every ROI pixel at every angle: extreme pixels fall on bin centres
    qs = np.stack([geometry.q(scan.angles(a)) for a in range(N_ANGLES)])
    bounds = (tuple(qs.min(axis=(0, 1, 2))), tuple(qs.max(axis=(0, 1, 2))))
    setup = ScanSetup(geometry, scan, AccumulationSettings(histogram_bins=bins,
                                                           histogram_bounds=bounds))
    rng = np.random.default_rng(seed)
    frames = rng.poisson(4.0, size=(4, *FULL_SHAPE)).astype(np.uint32)
    inside = np.zeros(FULL_SHAPE, dtype=bool)
    inside[roi[0]:roi[1], roi[2]:roi[3]] = True
    frames[:, ~inside] += 1000  # the rest of the detector is bright, and must not count
    angles, points = rng.integers(0, N_ANGLES, 4), rng.integers(0, N_POINTS, 4)
    acc = Accumulator(setup)
    if batch:
        acc.add_frames(frames, angles, points)
    else:
        for f, a, p in zip(frames, angles, points):
            acc.add_frame(f, int(a), int(p))
    counted = inside & ~mask
    per_point = np.zeros(N_POINTS)
    np.add.at(per_point, points, frames[:, counted].sum(axis=1, dtype=np.float64))
    np.testing.assert_array_equal(acc.histogram.sum(axis=1, dtype=np.float64), per_point)
    np.testing.assert_array_equal(acc.totals()[:, 0], per_point)


# ---- bad frames ---------------------------------------------------------------------------------
def good_frame() -> np.ndarray:
    return frame_pool()[0][0]


def bad(make_frame, angle, point, monitor, message, reason, name):
    return pytest.param(make_frame, angle, point, monitor, message, reason, id=name)


def cropped():
    return good_frame()[ROI[0]:ROI[1], ROI[2]:ROI[3]].copy()


POSITIVE = "is not a positive finite number"
BAD_FRAMES = [
    bad(cropped, 0, 0, None, r"frame shape \(40, 48\) differs from the detector's \(56, 64\)",
        "wrong_shape", "roi-cropped"),
    bad(lambda: good_frame().T.copy(), 0, 0, None, r"frame shape \(64, 56\)", "wrong_shape",
        "transposed"),
    bad(lambda: good_frame()[None], 0, 0, None, "not a 2D array", "not_2d", "3d"),
    bad(lambda: good_frame().ravel(), 0, 0, None, "not a 2D array", "not_2d", "1d"),
    bad(lambda: good_frame().tolist(), 0, 0, None, "not a 2D array", "not_2d", "list"),
    bad(lambda: good_frame().astype(object), 0, 0, None, "dtype object is not numeric",
        "wrong_dtype", "object"),
    bad(lambda: good_frame().astype(str), 0, 0, None, "is not numeric", "wrong_dtype", "str"),
    bad(lambda: good_frame().astype(complex), 0, 0, None, "is not numeric", "wrong_dtype",
        "complex"),
    bad(good_frame, -1, 0, None, r"rocking angle index -1 outside 0\.\.4", "index_out_of_range",
        "angle-negative"),
    bad(good_frame, N_ANGLES, 0, None, r"rocking angle index 5 outside 0\.\.4",
        "index_out_of_range", "angle-too-big"),
    bad(good_frame, 0, -1, None, r"map pixel index -1 outside 0\.\.11", "index_out_of_range",
        "point-negative"),
    bad(good_frame, 0, N_POINTS, None, r"map pixel index 12 outside 0\.\.11", "index_out_of_range",
        "point-too-big"),
    bad(good_frame, 0, 0, float("nan"), f"monitor value nan {POSITIVE}", "bad_monitor",
        "monitor-nan"),
    bad(good_frame, 0, 0, 0.0, f"monitor value 0.0 {POSITIVE}", "bad_monitor", "monitor-zero"),
    bad(good_frame, 0, 0, -3.0, f"monitor value -3.0 {POSITIVE}", "bad_monitor",
        "monitor-negative"),
    bad(good_frame, 0, 0, float("inf"), f"monitor value inf {POSITIVE}", "bad_monitor",
        "monitor-inf"),
]


def started_accumulator() -> Accumulator:
    acc = Accumulator(standard_setup())
    feed(acc, [2, 3], batch=False)
    return acc


@pytest.mark.parametrize("make_frame,angle,point,monitor,message,reason", BAD_FRAMES)
def test_add_frame_refuses_bad_frame_and_changes_nothing(make_frame, angle, point, monitor, message,
                                                         reason):
    acc = started_accumulator()
    before = snapshot(acc)
    with pytest.raises(BadFrameError, match=message) as info:
        acc.add_frame(make_frame(), angle, point, monitor=monitor)
    assert info.value.reason == reason
    assert_unchanged(acc, before)


@pytest.mark.parametrize("make_frame,angle,point,monitor,message,reason",
                         [p for p in BAD_FRAMES if p.id not in ("3d", "1d", "list")])
def test_add_frames_refuses_a_stack_with_one_bad_frame_and_changes_nothing(
        make_frame, angle, point, monitor, message, reason):
    """The stack is checked before the kernel runs: the good frames before the bad one are not
    half-added."""
    acc = started_accumulator()
    before = snapshot(acc)
    frames, angles, points = frame_pool()
    bad = make_frame()
    if bad.shape == FULL_SHAPE and bad.dtype == frames.dtype:
        stack = frames[:4].copy()
        stack[2] = bad
    else:  # a stack of frames of another shape or dtype
        stack = np.stack([bad] * 4)
    angle_index, point_index = angles[:4].copy(), points[:4].copy()
    angle_index[2], point_index[2] = angle, point
    monitors = np.ones(4)
    monitors[2] = 1.0 if monitor is None else monitor
    with pytest.raises(BadFrameError, match=message) as info:
        acc.add_frames(stack, angle_index, point_index, monitors=monitors)
    assert info.value.reason == reason
    assert_unchanged(acc, before)


@pytest.mark.parametrize("n_frames,n_indices,n_monitors", [
    (2, 3, None),  # one index pair more than frames: would count a frame never added
    (3, 2, None),
    (3, 3, 2),
], ids=["more-indices", "fewer-indices", "fewer-monitors"])
def test_add_frames_refuses_index_arrays_of_another_length(n_frames, n_indices, n_monitors):
    acc = started_accumulator()
    before = snapshot(acc)
    frames, angles, points = frame_pool()
    monitors = None if n_monitors is None else np.ones(n_monitors)
    with pytest.raises(BadFrameError):
        acc.add_frames(frames[:n_frames], angles[:n_indices], points[:n_indices], monitors=monitors)
    assert_unchanged(acc, before)


def test_accumulator_still_works_after_a_refused_frame():
    acc = started_accumulator()
    with pytest.raises(BadFrameError):
        acc.add_frame(good_frame(), 0, 0, monitor=0.0)
    feed(acc, [k for k in range(N_FRAMES) if k not in (2, 3)], batch=False)
    assert_same_sums(acc, all_frames_accumulator())


# ---- merge refusals -------------------------------------------------------------------------
OTHER_SETUPS = {
    "rocking-angles": lambda: ScanSetup(
        make_geometry(mask=make_mask()),
        make_scan(rocking_angles=tuple(17.1 + np.linspace(-0.4, 0.4, N_ANGLES))),
        AccumulationSettings(histogram_bins=BINS)),
    "fixed-angle": lambda: ScanSetup(
        make_geometry(mask=make_mask()),
        make_scan(fixed_angles={"phi": 3.0, "nu": 1.2, "delta": 34.5}),
        AccumulationSettings(histogram_bins=BINS)),
    "threshold": lambda: ScanSetup(make_geometry(mask=make_mask()), make_scan(),
                                   AccumulationSettings(histogram_bins=BINS, threshold=2)),
    "bins": lambda: ScanSetup(make_geometry(mask=make_mask()), make_scan(),
                              AccumulationSettings(histogram_bins=(5, 6, 8))),
    "mask": lambda: ScanSetup(make_geometry(mask=make_mask(seed=4)), make_scan(),
                              AccumulationSettings(histogram_bins=BINS)),
    "energy": lambda: ScanSetup(make_geometry(mask=make_mask(), energy_ev=9001.0), make_scan(),
                                AccumulationSettings(histogram_bins=BINS)),
}


@pytest.mark.parametrize("which", sorted(OTHER_SETUPS))
def test_merge_of_different_scans_is_refused(which):
    acc = started_accumulator()
    other_setup = OTHER_SETUPS[which]()
    other = Accumulator(other_setup)
    if other.moments.shape == acc.moments.shape and other.histogram.shape == acc.histogram.shape:
        feed(other, [4], batch=False)
    before = snapshot(acc)
    with pytest.raises(ConfigError, match="cannot merge accumulators of different scans"):
        acc.merge(other)
    assert_unchanged(acc, before)


# ---- state ------------------------------------------------------------------------------------
def test_state_round_trip_through_a_file(tmp_path):
    acc = started_accumulator()
    path = tmp_path / "state.npz"
    np.savez(path, **acc.state())
    with np.load(path) as stored:
        restored = Accumulator.from_state(standard_setup(), dict(stored))
    assert set(restored.state()) == {"moments", "histogram", "frame_count", "roi_moments",
                                     "shell_moments"}
    for name, arr in acc.state().items():
        np.testing.assert_array_equal(restored.state()[name], arr)
        assert restored.state()[name].dtype == arr.dtype
    # a restored accumulator goes on accumulating like the original
    rest = [k for k in range(N_FRAMES) if k not in (2, 3)]
    feed(restored, rest, batch=True)
    assert_same_sums(restored, all_frames_accumulator())


def test_from_state_copies():
    acc = started_accumulator()
    before = snapshot(acc)
    restored = Accumulator.from_state(acc.setup, acc.state())
    feed(restored, [5], batch=False)
    assert_unchanged(acc, before)


@pytest.mark.parametrize("name", ["moments", "histogram", "frame_count"])
def test_from_state_refuses_arrays_of_another_scan(name):
    state = snapshot(started_accumulator())
    state[name] = state[name][:-1]
    with pytest.raises(ConfigError, match=f"state array '{name}' has shape"):
        Accumulator.from_state(standard_setup(), state)


# ---- histogram budget -------------------------------------------------------------------------
BUDGET_MIB = 0.05  # 1092 float32 bins (546 float64) per map pixel for 12 map pixels


def suggested_bins(message: str) -> list[tuple[int, int, int]]:
    proportional = re.search(r"for example \((\d+), (\d+), (\d+)\)", message, re.IGNORECASE)
    cube = re.search(r"(\d+)x(\d+)x(\d+)", message)
    assert proportional and cube, f"no bins suggested in: {message}"
    return [tuple(int(v) for v in m.groups()) for m in (proportional, cube)]


def assert_refused_with_bins_that_fit(bins, dtype, budget_mib):
    geometry, scan = make_geometry(mask=make_mask()), make_scan()
    budget_bytes = int(budget_mib * 2**20)
    itemsize = np.dtype(dtype).itemsize
    with pytest.raises(HistogramBudgetError) as info:
        ScanSetup(geometry, scan, AccumulationSettings(
            histogram_bins=bins, histogram_dtype=dtype, histogram_budget_mib=budget_mib))
    message = str(info.value)
    assert str(tuple(bins)) in message
    at_most = int(re.search(r"at most (\d+) bins per map pixel", message, re.IGNORECASE).group(1))
    assert at_most == budget_bytes // (N_POINTS * itemsize)
    for suggestion in suggested_bins(message):
        assert N_POINTS * int(np.prod(suggestion)) * itemsize <= budget_bytes, (
            f"suggested bins {suggestion} do not fit the budget: {message}"
        )
        setup = ScanSetup(geometry, scan, AccumulationSettings(
            histogram_bins=suggestion, histogram_dtype=dtype, histogram_budget_mib=budget_mib))
        assert setup.grid.bins == suggestion
        assert Accumulator(setup).histogram.nbytes <= budget_bytes


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("bins", [(24, 24, 24), (48, 32, 16), (80, 60, 2), (100, 100, 1)])
def test_histogram_over_budget_is_refused_with_bins_that_fit(bins, dtype):
    assert_refused_with_bins_that_fit(bins, dtype, BUDGET_MIB)


@PROPERTY
@given(bins=st.tuples(*[st.integers(1, 300)] * 3), per_point=st.integers(1, 4000),
       dtype=st.sampled_from(["float32", "float64"]))
def test_every_budget_refusal_suggests_bins_that_fit(bins, per_point, dtype):
    assume(int(np.prod(bins)) > per_point)
    # a budget of exactly per_point bins per map pixel (exact in binary: a power-of-2 division)
    budget_mib = per_point * N_POINTS * np.dtype(dtype).itemsize / 2**20
    assert_refused_with_bins_that_fit(bins, dtype, budget_mib)


def test_histogram_within_budget_and_moments_only_are_accepted():
    geometry, scan = make_geometry(), make_scan()
    ScanSetup(geometry, scan, AccumulationSettings(histogram_bins=(10, 10, 10),
                                                   histogram_budget_mib=BUDGET_MIB))
    # moments only: no histogram, so no budget to exceed
    setup = ScanSetup(geometry, scan, AccumulationSettings(histogram_bins=(0, 0, 0),
                                                           histogram_budget_mib=BUDGET_MIB))
    assert Accumulator(setup).histogram.size == 0


# ---- configuration refusals -------------------------------------------------------------------
def test_rocking_axis_must_be_a_sample_circle():
    scan = make_scan(rocking_axis="delta", rocking_angles=(33.8, 34.0, 34.2),
                     fixed_angles={"eta": 17.0, "phi": 3.0, "nu": 1.2})
    with pytest.raises(ConfigError, match=r"rocking axis 'delta' is not a sample circle"):
        ScanSetup(make_geometry(), scan)


def test_every_diffractometer_axis_needs_an_angle():
    scan = make_scan(fixed_angles={"phi": 3.0, "delta": 34.0})
    with pytest.raises(ConfigError, match=r"no angle for diffractometer axes \['nu'\]"):
        ScanSetup(make_geometry(), scan)


@pytest.mark.parametrize("kwargs,message", [
    ({"histogram_dtype": "int32"}, "histogram_dtype 'int32' is not one of"),
    ({"threshold": -1.0}, "threshold must be >= 0"),
    ({"histogram_budget_mib": 0.0}, "histogram_budget_mib must be positive"),
])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        AccumulationSettings(**kwargs)


def test_copy_into_a_spare_reuses_its_arrays_and_is_independent(small_processed):
    acc = small_processed.accumulator
    spare = acc.copy()
    arrays = (spare.moments, spare.histogram)
    again = acc.copy(into=spare)
    assert again is spare and again.moments is arrays[0] and again.histogram is arrays[1]
    np.testing.assert_array_equal(again.moments, acc.moments)
    again.moments[0, 0, 0] += 1.0
    assert again.moments[0, 0, 0] != acc.moments[0, 0, 0]


def test_threads_sharing_a_setup_and_its_pixel_tables_give_the_serial_sums(monkeypatch):
    """Two threads add frames of changing rocking angles into one accumulator, sharded by map
    pixel, with room for one pixel table only: every frame misses the cache and refills it
    while the other thread reads its own. Same bits as one thread."""
    import threading

    from sxdm_stream.core import accumulate

    monkeypatch.setattr(accumulate, "PIXEL_TABLE_BUDGET_BYTES", 1)
    setup = standard_setup()
    frames = frame_pool()[0]
    rng = np.random.default_rng(11)
    angles = rng.integers(0, N_ANGLES, 4 * N_POINTS)
    points = np.arange(4 * N_POINTS) % N_POINTS
    serial, shared = Accumulator(setup), Accumulator(ScanSetup(setup.geometry, setup.scan,
                                                               setup.settings))
    for k in range(len(points)):
        serial.add_frame(frames[k % len(frames)], angles[k], points[k])
    errors = []

    def add_shard(shard: int) -> None:
        try:
            for k in range(shard, len(points), 2):   # points[k] % 2 == shard
                shared.add_frame(frames[k % len(frames)], angles[k], points[k])
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=add_shard, args=(t,)) for t in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for name, arr in serial.state().items():
        np.testing.assert_array_equal(shared.state()[name], arr, err_msg=name)
