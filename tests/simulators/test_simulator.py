"""The frame simulator: determinism, detector layouts, counts, drift and ground truth."""

import numpy as np
import pytest

from sxdm_stream.simulators.detectors import eiger2_500k, maxipix_2x2
from sxdm_stream.simulators.sample import Particle, Sample, tilted_normals
from sxdm_stream.simulators.scenarios import bragg_angle_deg, default_scenario


def test_frames_are_seeded_and_independent_of_order(small_scenario):
    sim = small_scenario.simulator
    a = sim.frame(7, 70).copy()
    _ = sim.frame(3, 5)
    np.testing.assert_array_equal(sim.frame(7, 70), a)
    assert a.dtype == np.uint32 and a.shape == (516, 516)
    other = default_scenario(shape=(12, 12), n_angles=15, seed=1).simulator
    assert not np.array_equal(other.frame(7, 70), a)


def test_expected_counts_sum_to_the_particle_intensity(small_scenario):
    sim = small_scenario.simulator
    truth = sim.truth()
    point = int(np.nanargmax(truth.intensity))
    total = sum(int(sim.frame(k, point)[sim.model.detector.mask == 0].sum())
                for k in range(small_scenario.scan.n_angles))
    expected = truth.intensity.ravel()[point]
    # Poisson noise sqrt(N) plus the tails of the peak beyond the rocking range
    assert total == pytest.approx(expected, rel=0.03)


def test_maxipix_gaps_big_pixels_and_defects():
    model = maxipix_2x2()
    det = model.detector
    assert det.shape == (516, 516) and det.pixel_size_m == 55e-6
    assert det.mask[255:261, :].all() and det.mask[:, 255:261].all()
    assert model.physical_row[256] == 255 and model.physical_row[259] == 260
    for r, c in np.concatenate([model.dead_pixels, model.hot_pixels]):
        assert det.mask[r, c]
    sc = default_scenario(shape=(4, 4), n_angles=3, background_rate=0.05)
    frame = sc.simulator.frame(1, 5)
    assert frame[256:260, :].sum() == 0 and frame[:, 256:260].sum() == 0   # gaps never count
    assert frame[255, :].sum() > 2 * frame[100, :].sum() * 0.9            # big pixels: 3x area
    hot = model.hot_pixels
    assert frame[hot[:, 0], hot[:, 1]].min() > 300
    assert frame[model.dead_pixels[:, 0], model.dead_pixels[:, 1]].max() == 0


def test_eiger2_500k_layout():
    det = eiger2_500k().detector
    assert det.shape == (514, 1030) and det.pixel_size_m == 75e-6
    assert det.mask[256:258].all() and det.mask[:, 514:516].all()
    sc = default_scenario(shape=(6, 6), n_angles=5, detector="eiger2_500k")
    truth = sc.simulator.truth()
    point = int(np.nanargmax(truth.intensity))
    assert sum(sc.simulator.frame(k, point).sum() for k in range(5)) > 1000


def test_truth_strain_and_tilts_are_those_of_the_particle():
    p = Particle(strain_amplitude=5e-4, max_tilt_deg=0.12, n_domains=5)
    fields = p.fields(np.array([2.0]), np.array([1.9]))
    peaks = Sample((p,)).peaks(np.array([2.0]), np.array([1.9]))
    np.testing.assert_allclose(2 * np.pi / np.linalg.norm(peaks["q"][0]), fields["d_spacing"][0])
    tilt = np.hypot(fields["tilt_x"][0], fields["tilt_y"][0])
    direction = peaks["q"][0] / np.linalg.norm(peaks["q"][0])
    assert np.rad2deg(np.arccos(direction[2])) == pytest.approx(tilt, rel=1e-6)
    assert np.all(np.abs(p.fields(np.linspace(0, 4, 50), np.full(50, 1.9))["d_spacing"] / p.d_spacing_a - 1) <= 5e-4 + 1e-12)


def test_tilt_about_x_moves_q_towards_minus_y():
    n = tilted_normals(np.array([0.0, 0.0, 1.0]), np.array([[0.1, 0.0]]))[0]
    assert n[1] < 0 and n[0] == 0.0


def test_drift_moves_the_sample_under_the_beam():
    still = default_scenario(shape=(20, 20), n_angles=5)
    drifting = default_scenario(shape=(20, 20), n_angles=5, drift_um_per_angle=(0.0, 0.2))
    col_um = still.scan.axis_um(1)
    # at the last angle the sample sits 2 x 0.2 um further: point (r, c) sees (r, c + 0.4 um);
    # _peaks[angle][particle]
    row, col = 10, 8
    a = drifting.simulator._peaks[4][0]["intensity"].reshape(20, 20)[row, col]
    b = still.simulator._peaks[4][0]["intensity"].reshape(20, 20)[row, col + int(round(0.4 / (col_um[1] - col_um[0])))]
    assert a == pytest.approx(b)
    np.testing.assert_array_equal(drifting.simulator.truth().intensity, still.simulator.truth().intensity)


def test_default_geometry_is_linio2_003_at_8_33_kev():
    sc = default_scenario(shape=(4, 4))
    theta = bragg_angle_deg(14.2 / 3, 8330.0)
    assert theta == pytest.approx(9.05, abs=0.01)
    assert sc.scan.n_angles == 31 and sc.scan.fixed_angles["delta"] == pytest.approx(2 * theta)
    assert min(sc.scan.rocking_angles) < theta < max(sc.scan.rocking_angles)
