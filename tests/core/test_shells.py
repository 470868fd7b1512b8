"""q shells: the slicing of |Q|, the kernel's shell moments against a numpy reference, and the
shell moments through merge, state, checkpoints and set-up descriptions.

The reference shares nothing with the kernel but its inputs: q comes from the public
``Geometry.q`` of each rocking angle (the kernel looks up a slice computed once from
|k_f - k_i|), the ROI is cut from the full frame and the mask from the full-detector mask.
"""

from __future__ import annotations

import numpy as np
import pytest

from sxdm_stream.core.accumulate import (AccumulationSettings, Accumulator, ScanSetup,
                                         setup_from_description)
from sxdm_stream.core.geometry import Detector, Geometry
from sxdm_stream.core.scan import ScanDescription
from sxdm_stream.core.shells import QShells, shells_for_scan
from sxdm_stream.errors import ConfigError
from sxdm_stream.pipeline.scan_processor import ScanProcessor
from sxdm_stream.sinks.checkpoint import read_checkpoint, write_checkpoint

FULL_SHAPE = (64, 64)
ROI = (10, 50, 6, 54)
N_SHELLS = 9
N_ANGLES = 5
SCAN_SHAPE = (3, 4)


def make_mask() -> np.ndarray:
    rng = np.random.default_rng(7)
    mask = np.zeros(FULL_SHAPE, dtype=bool)
    mask[23, :] = True
    mask[:, 31] = True
    mask[rng.integers(0, 64, 40), rng.integers(0, 64, 40)] = True
    return mask


def make_setup(q_shells: int = N_SHELLS, **settings) -> ScanSetup:
    # nu and phi away from zero so that all three q components vary across the detector
    detector = Detector(shape=FULL_SHAPE, pixel_size_m=55e-6, distance_m=0.5,
                        beam_center=(30.5, 33.0), roi=ROI, mask=make_mask())
    scan = ScanDescription(shape=SCAN_SHAPE, extents_um=((0.0, 1.0), (0.0, 1.5)),
                           rocking_axis="eta",
                           rocking_angles=tuple(17.0 + np.linspace(-0.4, 0.4, N_ANGLES)),
                           fixed_angles={"phi": 3.0, "nu": 1.2, "delta": 34.0})
    settings.setdefault("histogram_bins", (4, 5, 6))
    return ScanSetup(Geometry(detector, 9000.0), scan,
                     AccumulationSettings(q_shells=q_shells, **settings))


def make_frames(n: int, dtype, seed: int) -> np.ndarray:
    """Poisson frames with zeros, fractional and negative counts for floats, and large counts
    outside the ROI (reading outside it shows)."""
    rng = np.random.default_rng(seed)
    frames = rng.poisson(3.0, size=(n, *FULL_SHAPE)).astype(np.float64)
    outside = np.ones(FULL_SHAPE, dtype=bool)
    outside[ROI[0]:ROI[1], ROI[2]:ROI[3]] = False
    frames[:, outside] += 500.0
    if np.dtype(dtype).kind == "f":
        frames += rng.uniform(-0.7, 0.7, size=frames.shape)
    return frames.astype(dtype)


def assignments(n: int, seed: int):
    rng = np.random.default_rng(seed)
    return rng.integers(0, N_ANGLES, n), rng.integers(0, SCAN_SHAPE[0] * SCAN_SHAPE[1], n)


def reference_shell_moments(setup: ScanSetup, frame, angle: int, scale: float = 1.0):
    """(moments (n_shells, 4), |terms| bound (n_shells, 4)) of one frame."""
    geometry = setup.geometry
    r0, r1, c0, c1 = geometry.detector.roi_bounds
    counts = np.asarray(frame, dtype=np.float64)[r0:r1, c0:c1]
    excluded = np.asarray(geometry.detector.mask, dtype=bool)[r0:r1, c0:c1]
    keep = (counts != 0) & (counts >= setup.settings.threshold) & ~excluded
    q = geometry.q(setup.scan.angles(angle))[keep]
    w = counts[keep] * scale
    shell = setup.shells.index(np.linalg.norm(q, axis=-1))
    dq = q - setup.q_ref
    terms = np.column_stack([w, w[:, None] * dq])
    out, bound = np.zeros((setup.shells.n, 4)), np.zeros((setup.shells.n, 4))
    inside = shell >= 0
    np.add.at(out, shell[inside], terms[inside])
    np.add.at(bound, shell[inside], np.abs(terms[inside]))
    return out, bound


def test_shells_cover_every_unmasked_pixel_at_every_angle():
    setup = make_setup()
    shells = setup.shells
    assert shells == shells_for_scan(setup.geometry, setup.scan, N_SHELLS)
    keep = ~setup.mask
    for a in range(N_ANGLES):
        q_abs = np.linalg.norm(setup.geometry.q(setup.scan.angles(a)), axis=-1)[keep]
        index = shells.index(q_abs)
        assert index.min() >= 0 and index.max() == N_SHELLS - 1
        # the kernel's table, from |kf - ki|, is the slice of |q| at every rocking angle
        np.testing.assert_array_equal(setup.shell_of[keep], index)
        # no pixel within rounding of an edge (there, the slice would be a matter of rounding)
        edges = shells.edges
        assert np.min(np.abs(q_abs[:, None] - edges[None, :])) > 1e-12
    assert np.all(setup.shell_of[setup.mask] == -1)
    np.testing.assert_allclose(shells.centres, 0.5 * (shells.edges[1:] + shells.edges[:-1]))
    assert QShells(**shells.describe()) == shells
    with pytest.raises(ConfigError):
        QShells(1.0, 0.01, 0)
    with pytest.raises(ConfigError, match="q_shells"):
        AccumulationSettings(q_shells=-1)


@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_shell_moments_match_reference(batch, dtype):
    setup = make_setup(threshold=1.0)
    acc = Accumulator(setup)
    frames = make_frames(8, dtype, seed=40)
    angles, points = assignments(8, seed=41)
    monitors = np.random.default_rng(42).uniform(0.5, 2.0, 8)
    if batch:
        acc.add_frames(frames, angles, points, monitors=monitors)
    else:
        for frame, a, p, m in zip(frames, angles, points, monitors):
            acc.add_frame(frame, int(a), int(p), monitor=float(m))
    ref = np.zeros(acc.shell_moments.shape)
    bound = np.zeros_like(ref)
    for frame, a, p, m in zip(frames, angles, points, monitors):
        r, b = reference_shell_moments(setup, frame, a, 1.0 / m)
        ref[p] += r
        bound[p] += b
    err = np.abs(acc.shell_moments - ref) - 1e-10 * bound
    worst = np.unravel_index(np.argmax(err), err.shape)
    assert err[worst] <= 0, (worst, acc.shell_moments[worst], ref[worst])
    # every slice gets counts; the shells change nothing else
    assert np.all(ref[..., 0].sum(axis=0) > 0)
    plain = Accumulator(make_setup(q_shells=0, threshold=1.0))
    plain.add_frames(frames, angles, points, monitors=monitors)
    np.testing.assert_array_equal(plain.moments, acc.moments)
    np.testing.assert_array_equal(plain.histogram, acc.histogram)
    assert plain.shell_moments.shape == (SCAN_SHAPE[0] * SCAN_SHAPE[1], 0, 4)


def test_counts_conserved_between_shells_and_moments():
    """Every unmasked pixel lies inside the shells, so the shells hold every count; and their
    S1 sums to the moments' S1."""
    setup = make_setup()
    acc = Accumulator(setup)
    angles, points = assignments(10, seed=43)
    acc.add_frames(make_frames(10, np.uint32, seed=44), angles, points)
    totals = acc.totals()
    np.testing.assert_allclose(acc.shell_moments[..., 0].sum(axis=1), totals[:, 0], rtol=1e-12)
    np.testing.assert_allclose(acc.shell_moments[..., 1:].sum(axis=1), totals[:, 1:4],
                               rtol=1e-9, atol=1e-9 * np.abs(totals[:, 1:4]).max())


def test_merge_state_copy_and_checkpoint_keep_the_shells(tmp_path):
    setup = make_setup()
    frames = make_frames(12, np.uint16, seed=45)
    angles, points = assignments(12, seed=46)
    whole, halves = Accumulator(setup), [Accumulator(setup), Accumulator(setup)]
    whole.add_frames(frames, angles, points)
    for f in range(12):
        halves[f % 2].add_frame(frames[f], int(angles[f]), int(points[f]))
    merged = halves[0].copy().merge(halves[1])
    np.testing.assert_allclose(merged.shell_moments, whole.shell_moments, rtol=1e-12,
                               atol=1e-12 * np.abs(whole.shell_moments).max())
    restored = Accumulator.from_state(setup, merged.state())
    np.testing.assert_array_equal(restored.shell_moments, merged.shell_moments)
    into = Accumulator(setup)
    np.testing.assert_array_equal(merged.copy(into).shell_moments, merged.shell_moments)
    # a state without shells is refused where shells are kept, accepted where they are not
    without = {k: v for k, v in merged.state().items() if k != "shell_moments"}
    with pytest.raises(ConfigError, match="shell_moments"):
        Accumulator.from_state(setup, without)
    plain = make_setup(q_shells=0)
    old = {k: v for k, v in Accumulator(plain).state().items() if k != "shell_moments"}
    assert Accumulator.from_state(plain, old).shell_moments.size == 0
    # checkpoints
    processor = ScanProcessor(setup)
    processor.accumulator = merged
    path = tmp_path / "scan.checkpoint.h5"
    write_checkpoint(path, processor, 1, None)
    back = read_checkpoint(path, 0.2, None).processor.accumulator
    np.testing.assert_array_equal(back.shell_moments, merged.shell_moments)


def test_description_rebuilds_shells_and_keeps_old_fingerprints():
    setup = make_setup()
    rebuilt = setup_from_description(setup.describe(), make_mask())
    assert rebuilt.fingerprint == setup.fingerprint and rebuilt.shells == setup.shells
    assert setup.describe()["shells"] == setup.shells.describe()
    plain = make_setup(q_shells=0)
    # shells off: the description is that of a set-up from before shells existed
    assert "q_shells" not in plain.describe()["settings"] and "shells" not in plain.describe()
    assert plain.fingerprint != setup.fingerprint
