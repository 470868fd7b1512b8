"""Drift between rocking angles: estimated from the per-angle intensity maps of a simulated
drifting sample, applied to the per-angle moments, checked against the simulator's truth."""

import dataclasses
import json

import numpy as np
import pytest
from conftest import process_scenario
from scipy import ndimage

from sxdm_stream.analysis.drift import (DriftSettings, drift_corrected_maps, drift_for_scan,
                                        estimate_drift, format_drift, given_drift, map_step_um,
                                        shift_moments)
from sxdm_stream.analysis.registration import (correlation_shape, cross_correlation_shift,
                                               padded_spectrum, shift_bilinear)
from sxdm_stream.config import config_from_dict
from sxdm_stream.errors import ConfigError
from sxdm_stream.simulators.analysis_scenarios import drifting_scenario, truth_at_angle
from sxdm_stream.simulators.validation import accuracy_report, format_report

N_ANGLES = 31


def simulated_drift_um() -> np.ndarray:
    """3.6 pixels along rows, 2.4 along columns with a wobble: not a straight line."""
    k = np.arange(N_ANGLES) - N_ANGLES // 2
    return np.stack([0.012 * k, -0.008 * k + 0.05 * np.sin(k / 4.0)], axis=1)


@pytest.fixture(scope="module")
def drifting_scan():
    """The default particle (40 x 40 map, 0.1 um steps) drifting over the rocking series."""
    return process_scenario(drifting_scenario(simulated_drift_um(), n_angles=N_ANGLES))


@pytest.fixture(scope="module")
def estimate(drifting_scan):
    return drift_for_scan(drifting_scan.processor.accumulator.moments, drifting_scan.scenario.scan,
                          DriftSettings(mode="auto"))


def true_shifts_px(reference: int) -> np.ndarray:
    drift = simulated_drift_um()
    return (drift - drift[reference]) / 0.1


def test_drift_of_several_pixels_is_recovered_within_a_tenth_of_a_pixel(estimate, capsys):
    truth = true_shifts_px(estimate.reference_angle)
    assert np.ptp(truth[estimate.confident], axis=0).max() > 1.5   # pixels moved within the data
    assert np.ptp(truth, axis=0)[0] >= 3.5                           # and over the whole series
    error = estimate.shifts_px - truth
    with capsys.disabled():
        print(f"\ndrift: {estimate.confident.sum()} confident angles of {N_ANGLES}; error max "
              f"{np.abs(error[estimate.confident]).max():.3f} px, RMS "
              f"{np.sqrt(np.mean(error[estimate.confident] ** 2)):.3f} px")
    assert estimate.confident.sum() >= 15            # every angle with >= 5% of the peak's counts
    assert np.abs(error[estimate.confident]).max() <= 0.1
    np.testing.assert_allclose(estimate.shifts_px[estimate.reference_angle], 0.0)
    np.testing.assert_allclose(estimate.shifts_um, estimate.shifts_px * 0.1)


def test_corrected_strain_meets_the_core_accuracy_and_uncorrected_does_not(drifting_scan,
                                                                           estimate, capsys):
    setup, acc = drifting_scan.setup, drifting_scan.processor.accumulator
    truth = truth_at_angle(drifting_scan.scenario.simulator, estimate.reference_angle)
    corrected = accuracy_report(drift_corrected_maps(acc.moments, setup.q_ref, setup.scan.shape,
                                                     estimate), truth)
    uncorrected = accuracy_report(drifting_scan.maps, truth)
    with capsys.disabled():
        print("\ndrift corrected " + format_report(corrected))
        print("uncorrected " + format_report(uncorrected))
    assert corrected["pixels"] > 400
    assert corrected["strain_rms_error"] <= 2 * corrected["strain_limit"]
    assert corrected["strain_rms_error"] <= 10.0
    assert uncorrected["strain_rms_error"] > 2 * uncorrected["strain_limit"]


def test_corrected_tilt_is_at_the_counting_limit_away_from_walls_and_rims(drifting_scan,
                                                                         estimate, capsys):
    """Within the drift (up to 2 pixels here) plus one pixel of interpolation of a tilt-domain
    wall, a map pixel saw both domains at different angles, and near the particle's rim it
    saw the particle at some angles only (a truncated rocking curve): there the tilt is a
    blend, which no shift of the sums can undo. Elsewhere it is at the counting limit."""
    setup, acc, sim = drifting_scan.setup, drifting_scan.processor.accumulator, \
        drifting_scan.scenario.simulator
    ref = estimate.reference_angle
    maps = drift_corrected_maps(acc.moments, setup.q_ref, setup.scan.shape, estimate)
    rows, cols = np.meshgrid(setup.scan.axis_um(0) + sim.drift_um[ref, 0],
                             setup.scan.axis_um(1) + sim.drift_um[ref, 1], indexing="ij")
    domain = sim.sample.particles[0].fields(rows, cols)["domain"]
    near_wall = ndimage.maximum_filter(domain, size=7) != ndimage.minimum_filter(domain, size=7)
    inner = ndimage.binary_erosion(maps.mask, iterations=3) & ~near_wall
    truth = truth_at_angle(sim, ref)
    inside = accuracy_report(dataclasses.replace(maps, mask=inner), truth)
    everywhere = accuracy_report(maps, truth)
    with capsys.disabled():
        print(f"\ncorrected tilt RMS error: {inside['tilt_rms_error_deg']:.6f} deg over "
              f"{inside['pixels']} pixels >= 3 px from domain walls and the rim (counting limit "
              f"{inside['tilt_limit_deg']:.6f}); {everywhere['tilt_rms_error_deg']:.6f} over all")
    assert inside["pixels"] > 100
    assert inside["tilt_rms_error_deg"] <= 2 * inside["tilt_limit_deg"]


def test_given_shifts_correct_the_maps_as_well(drifting_scan):
    setup, acc = drifting_scan.setup, drifting_scan.processor.accumulator
    settings = DriftSettings(mode="given", reference_angle=N_ANGLES // 2,
                             shifts_um=tuple(map(tuple, simulated_drift_um())))
    given = drift_for_scan(acc.moments, setup.scan, settings)
    np.testing.assert_allclose(given.shifts_px, true_shifts_px(N_ANGLES // 2), atol=1e-12)
    maps = drift_corrected_maps(acc.moments, setup.q_ref, setup.scan.shape, given)
    report = accuracy_report(maps, truth_at_angle(drifting_scan.scenario.simulator, N_ANGLES // 2))
    assert report["strain_rms_error"] <= 2 * report["strain_limit"]


def test_a_still_sample_gives_no_drift(small_processed):
    acc, scan = small_processed.accumulator, small_processed.setup.scan
    est = drift_for_scan(acc.moments, scan, DriftSettings(mode="auto"))
    assert est.confident.sum() >= 7
    assert np.abs(est.shifts_px).max() < 0.05


def test_estimate_with_the_angles_done_so_far_holds_the_last_shift(drifting_scan):
    moments = drifting_scan.processor.accumulator.moments
    per_angle = moments[..., 0].reshape((N_ANGLES, 40, 40))
    done = 18
    partial = per_angle.copy()
    partial[done:] = 0.0                            # not measured yet
    est = estimate_drift(partial, (0.1, 0.1), DriftSettings(), angles_done=done)
    assert not est.confident[done:].any()
    np.testing.assert_allclose(est.shifts_px[done:], np.broadcast_to(est.shifts_px[done - 1], (N_ANGLES - done, 2)))
    error = est.shifts_px - true_shifts_px(est.reference_angle)
    assert np.abs(error[est.confident]).max() <= 0.1


def test_shifting_moments_moves_counts_and_drops_pixels_that_lack_angles():
    rng = np.random.default_rng(1)
    shape, n = (10, 12), 3
    moments = np.zeros((n, shape[0] * shape[1], 10))
    grid = np.zeros(shape + (10,))
    grid[3:7, 4:8] = rng.uniform(1, 2, (4, 4, 10))
    for k in range(n):
        moments[k] = grid.reshape(-1, 10)
    shifts = np.array([[0.0, 0.0], [1.0, -2.0], [0.5, 0.25]])
    corrected, complete = shift_moments(moments, shifts, shape, drop_incomplete=False)
    # an integer shift moves every sum to its new pixel; out(x) = in(x - shift)
    np.testing.assert_allclose(corrected[1].reshape(shape + (10,))[4:8, 2:6], grid[3:7, 4:8])
    np.testing.assert_allclose(corrected.sum(axis=1), moments.sum(axis=1))   # nothing lost
    assert not complete[0].any() and not complete[:, -1].any() and complete[5, 5]
    dropped, _ = shift_moments(moments, shifts, shape, drop_incomplete=True)
    assert not dropped[:, ~complete.ravel()].any()
    # q-ROI moments (angles, points, rois, 10) move like the whole-detector moments
    rois = np.stack([moments, 2.0 * moments], axis=2)
    shifted_rois, _ = shift_moments(rois, shifts, shape, drop_incomplete=True)
    np.testing.assert_allclose(shifted_rois[:, :, 1], 2.0 * dropped)


def test_bilinear_shift_matches_scipy_and_registration_finds_sub_pixel_shifts():
    rows, cols = np.mgrid[:48, :40]
    blob = np.exp(-((rows - 22.0) ** 2 / 40.0 + (cols - 19.0) ** 2 / 25.0))
    for shift in [(0.37, -1.62), (-2.81, 3.05)]:
        moved = shift_bilinear(blob, shift)
        np.testing.assert_allclose(moved, ndimage.shift(blob, shift, order=1, mode="grid-constant"),
                                   atol=1e-12)
        exact = ndimage.shift(blob, shift, order=5, mode="constant")
        spectrum = padded_spectrum(blob, correlation_shape(blob.shape))
        found, corr = cross_correlation_shift(spectrum, exact, float(np.linalg.norm(blob)))
        np.testing.assert_allclose(found, np.negative(shift), atol=0.01)   # undoes the shift
        assert corr > 0.999


def test_drift_settings_and_configuration():
    assert drift_for_scan(np.zeros((2, 4, 10)), _tiny_scan(), DriftSettings()) is None
    with pytest.raises(ConfigError, match="mode"):
        DriftSettings(mode="sometimes")
    with pytest.raises(ConfigError, match="shifts_um"):
        DriftSettings(mode="given")
    with pytest.raises(ConfigError, match="2 rocking angles"):
        drift_for_scan(np.zeros((2, 4, 10)), _tiny_scan(),
                       DriftSettings(mode="given", shifts_um=((0, 0),)))
    config = config_from_dict({"drift": {"mode": "given", "shifts_um": [[0, 0], [0.1, -0.05]]}})
    assert config.drift.shifts_um == ((0.0, 0.0), (0.1, -0.05))
    with pytest.raises(ConfigError, match="drift.mode"):
        config_from_dict({"drift": {"mode": "on"}})


def test_estimate_prints_and_serialises(estimate):
    text = format_drift(estimate)
    assert len(text.splitlines()) == N_ANGLES + 2
    record = json.loads(json.dumps(estimate.to_dict()))
    assert record["reference_angle"] == estimate.reference_angle
    assert len(record["shifts_um"]) == N_ANGLES
    g = given_drift([[0.0, 0.0], [0.2, -0.1]], map_step_um(_tiny_scan()))
    np.testing.assert_allclose(g.shifts_px, [[0, 0], [2, -1]])


def _tiny_scan():
    from sxdm_stream.core.scan import ScanDescription
    return ScanDescription(shape=(2, 2), extents_um=((0.0, 0.1), (0.0, 0.1)),
                           rocking_angles=(9.0, 9.1), fixed_angles={"phi": 0.0, "nu": 0.0,
                                                                    "delta": 18.0})


def test_before_any_angle_is_measured_the_estimate_is_empty_not_an_error():
    estimate = estimate_drift(np.zeros((5, 6, 7)), (0.1, 0.1), DriftSettings(mode="auto"),
                              angles_done=0)
    assert not estimate.confident.any() and not estimate.shifts_px.any()
