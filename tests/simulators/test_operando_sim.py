"""The operando simulator: the LiNiO2 phase diagram, the two-phase particle, the series' ground
truth (lag, moving fronts, a particle that appears, drift), and a coexistence scan processed
by the accumulator against that truth."""

import numpy as np
import pytest

from sxdm_stream.core import kernels
from sxdm_stream.core.accumulate import AccumulationSettings, Accumulator, ScanSetup
from sxdm_stream.core.geometry import wavelength_angstrom
from sxdm_stream.core.qroi import QRoi
from sxdm_stream.simulators.operando import (COEXISTENCE, H3, PHASES, SIGMA_RADIAL,
                                             SIGMA_TRANSVERSE, SOLID_SOLUTION, OperandoSeries,
                                             charge_state, operando_sequence, voltage_on_charge)
from sxdm_stream.simulators.sample import Particle, Sample
from sxdm_stream.simulators.scenarios import DEFAULT_ENERGY_EV, bragg_angle_deg

#: d ranges of the phases (Angstrom), widened by the strain field (1.5e-4) and tilts
D_RANGE = {SOLID_SOLUTION: (14.19 / 3 * (1 - 3e-4), 14.45 / 3 * (1 + 3e-4)),
           H3: (13.75 / 3 * (1 - 3e-4), 13.80 / 3 * (1 + 3e-4))}


@pytest.fixture(scope="module")
def series():
    return OperandoSeries()


@pytest.fixture(scope="module")
def scans(series):
    return list(series)


def test_charge_state_is_the_linio2_phase_diagram():
    pristine, h2, h3_alone = charge_state(0.0), charge_state(COEXISTENCE[0]), charge_state(0.95)
    assert pristine.phases == (SOLID_SOLUTION,) and pristine.mean_c_a == pytest.approx(14.19)
    assert h2.phases == (SOLID_SOLUTION,) and h2.solid_solution_c_a == pytest.approx(14.45)
    assert h3_alone.phases == (H3,) and 13.75 <= h3_alone.h3_c_a < 13.80
    both = charge_state(np.mean(COEXISTENCE))
    assert both.phases == PHASES and both.h3_fraction == pytest.approx(0.5)
    d_h2, d_h3 = both.c_a(SOLID_SOLUTION) / 3, both.c_a(H3) / 3
    assert d_h3 / d_h2 - 1 == pytest.approx(-0.045, abs=0.003)
    theta_gap = bragg_angle_deg(d_h3, DEFAULT_ENERGY_EV) - bragg_angle_deg(d_h2, DEFAULT_ENERGY_EV)
    assert 0.38 < theta_gap < 0.46
    pixels = 0.6 * np.tan(np.deg2rad(2 * theta_gap)) / 55e-6         # Maxipix at 0.6 m
    assert 140 < pixels < 170
    x = np.linspace(0, 1, 401)
    fractions = [charge_state(v).h3_fraction for v in x]
    assert np.all(np.diff(fractions) >= 0) and fractions[0] == 0 and fractions[-1] == 1
    volts = voltage_on_charge(x)
    assert np.all(np.diff(volts) >= 0)
    inside = (x > COEXISTENCE[0]) & (x < COEXISTENCE[1])
    assert np.all((volts[inside] >= 4.15) & (volts[inside] <= 4.20))
    assert volts[0] < 3.7 and volts[-1] > 4.25


def test_a_two_phase_particle_splits_its_intensity_across_a_smooth_front():
    one = Particle(center_um=(2.0, 2.0), semi_axes_um=(1.0, 1.0), front_width_um=0.4)
    two = Particle(center_um=(2.0, 2.0), semi_axes_um=(1.0, 1.0), front_width_um=0.4,
                   second_d_spacing_a=4.6, front_angle_deg=90.0, front_position_um=0.2)
    sample = Sample((one, two))
    assert sample.component_owners() == [(0, 0), (1, 0), (1, 1)]
    cols = np.linspace(0.9, 3.1, 45)
    rows = np.full_like(cols, 2.0)
    first, second_a, second_b = sample.components(rows, cols)
    np.testing.assert_allclose(second_a["intensity"] + second_b["intensity"], first["intensity"])
    fraction = second_b["intensity"] / np.where(first["intensity"] > 0, first["intensity"], 1)
    on = first["intensity"] > 0
    assert np.all(np.diff(fraction[on]) >= 0)            # the second phase beyond the front
    assert fraction[on][0] == 0 and fraction[on][-1] == 1
    partial = on & (fraction > 0.1) & (fraction < 0.9)
    assert 0 < np.ptp(cols[partial]) <= 0.4              # the 10-90 % zone: ~0.6 of the width
    d2 = second_b["d_spacing"][second_b["intensity"] > 0]
    assert np.all(np.abs(d2 / 4.6 - 1) <= one.strain_amplitude + 1e-12)
    peaks = sample.peaks(rows, cols)
    np.testing.assert_allclose(peaks["intensity"][on], first["intensity"][on])


def test_phases_fractions_and_d_of_every_particle(scans):
    for scan in scans:
        truth = scan.truth
        for p in truth.particles:
            if not p.present:
                assert p.counts == 0 and not p.phases
                continue
            assert sum(ph.fraction for ph in p.phases.values()) == pytest.approx(1.0)
            assert sum(ph.counts for ph in p.phases.values()) == pytest.approx(p.counts)
            for name, ph in p.phases.items():
                lo, hi = D_RANGE[name]
                assert lo < ph.d_a < hi, (scan.index, p.index, name, ph.d_a)
            if len(p.phases) == 2:       # the pixel share follows the volume fraction
                assert p.phases[H3].fraction == pytest.approx(p.h3_fraction, abs=0.03)
            assert min(ph.d_a for ph in p.phases.values()) <= p.d_a <= max(ph.d_a for ph in p.phases.values())
        assert sum(ph.fraction for ph in truth.phases.values()) == pytest.approx(1.0)
        np.testing.assert_allclose(sum(truth.phase_counts.values()), truth.particle_counts.sum(0))
        assert truth.counts == pytest.approx(sum(p.counts for p in truth.particles))
        np.testing.assert_array_equal(np.isnan(scan.particle_d), [not p.present for p in truth.particles])


def test_particles_lag_and_fronts_move_monotonically(scans):
    n = len(scans[0].truth.particles)
    soc = np.array([s.state_of_charge for s in scans])
    assert np.all(np.diff(soc, axis=0) >= 0)
    assert len({tuple(np.round(row, 6)) for row in soc[len(scans) // 2:]}) > 1
    # at some scan one particle is all solid solution while another holds a front
    assert any(any(len(p.phases) == 1 and SOLID_SOLUTION in p.phases for p in s.truth.particles)
               and any(len(p.phases) == 2 for p in s.truth.particles) for s in scans)
    for i in range(n):
        h3 = np.array([s.truth.particles[i].h3_fraction for s in scans])
        assert np.all(np.diff(h3) >= 0) and h3[0] == 0 and h3[-1] == 1
        front = np.array([s.truth.particles[i].front_position_um for s in scans
                          if len(s.truth.particles[i].phases) == 2])
        assert len(front) >= 3 and np.all(np.diff(front) < 0), (i, front)
    coexisting = [s for s in scans if s.truth.two_phases.any()]
    assert coexisting
    for s in coexisting:        # pixels with both phases belong to a particle with a front
        owners = set(s.truth.particle[s.truth.two_phases].tolist())
        assert all(len(s.truth.particles[o].phases) == 2 for o in owners)


def test_a_particle_appears_halfway_and_stays(series, scans):
    late = [i for i, k in enumerate(series.appears_at) if k > 0]
    assert len(late) == 1 and len(series.appears_at) == 4
    i, start = late[0], series.appears_at[late[0]]
    assert start == len(scans) // 2
    for s in scans:
        p = s.truth.particles[i]
        assert p.present == (s.index >= start)
        assert (p.counts > 0) == p.present and (s.truth.particle_counts[i].sum() > 0) == p.present
    assert all(p.present for s in scans for j, p in enumerate(s.truth.particles) if j != i)


def test_particles_stay_inside_the_map_and_apart(series, scans):
    step = series.step_um
    height, width = (np.asarray(series.shape) - 1) * step
    for s in scans:
        support = s.truth.particle_counts > 0
        for p in s.truth.particles:
            a, b = p.semi_axes_um
            r = np.deg2rad(p.rotation_deg)
            half = np.array([np.hypot(a * np.cos(r), b * np.sin(r)),
                             np.hypot(a * np.sin(r), b * np.cos(r))])
            assert np.all(p.centre_piezo_um - half > 0) and p.centre_piezo_um[0] + half[0] < height
            assert p.centre_piezo_um[1] + half[1] < width
        assert not support[:, [0, -1], :].any() and not support[:, :, [0, -1]].any()
        grown = np.pad(support, ((0, 0), (1, 1), (1, 1)))
        grown = np.max([grown[:, 1 + dr:grown.shape[1] - 1 + dr, 1 + dc:grown.shape[2] - 1 + dc]
                        for dr in (-1, 0, 1) for dc in (-1, 0, 1)], axis=0)
        for i in range(len(support)):
            for j in range(len(support)):
                assert i == j or not (grown[i] & support[j]).any(), (s.index, i, j)


def test_sizes_and_intensities_change_over_the_charge(scans):
    for i in range(3):
        area = np.array([s.truth.particles[i].area_um2 for s in scans])
        counts = np.array([s.truth.particles[i].counts for s in scans])
        assert 0.02 < np.ptp(area) / area[0] < 0.12
        assert 0.6 < counts[-1] / counts[0] < 0.85


def test_drift_is_bounded_and_recovered_from_the_particle_positions(series, scans):
    drift = np.array([s.drift_um for s in scans])
    np.testing.assert_array_equal(drift[0], 0.0)
    np.testing.assert_allclose(np.array([s.drift_px for s in scans]), drift / series.step_um)
    assert 1.0 < np.linalg.norm(drift[-1]) < 2.5 and np.abs(drift).max() < 2.5
    jumps = np.linalg.norm(np.diff(drift, axis=0), axis=1)
    assert jumps.max() < 0.3
    first = scans[0].truth.particles
    for s in scans:
        moved = [p.centroid_piezo_um - first[p.index].centroid_piezo_um
                 for p in s.truth.particles if p.present and first[p.index].present]
        np.testing.assert_allclose(np.mean(moved, axis=0), s.drift_um, atol=0.04)
        for p in s.truth.particles:
            np.testing.assert_allclose(p.centre_sample_um, series.particles[p.index].center_um,
                                       atol=1e-12)


def test_each_scan_follows_the_peaks(series, scans):
    deltas = [s.scenario.scan.fixed_angles["delta"] for s in scans]
    assert np.ptp(deltas) > 0.3
    fixed = OperandoSeries(n_scans=3, follow_peak=False)
    assert len({fixed.scan(k).scenario.scan.fixed_angles["delta"] for k in range(3)}) == 1
    for s in scans:
        scan = s.scenario.scan
        assert scan.fixed_angles["delta"] == pytest.approx(2 * np.mean(
            [scan.rocking_angles[0], scan.rocking_angles[-1]]))
        assert s.channels["voltage"]["units"] == "V" and s.channels["capacity"]["units"] == "mAh"
    volts = [s.channels["voltage"]["value"] for s in scans]
    assert np.all(np.diff(volts) >= 0)


def test_both_peaks_of_a_coexistence_are_inside_the_roi_and_the_rocking_range(series, scans):
    scan = max(scans, key=lambda s: s.truth.two_phases.sum())
    geometry, desc = scan.scenario.geometry, scan.scenario.scan
    k = 2 * np.pi / wavelength_angstrom(geometry.energy_ev)
    q_per_pixel = k * geometry.detector.pixel_size_m / geometry.detector.distance_m
    sigma_deg = np.rad2deg(SIGMA_TRANSVERSE * wavelength_angstrom(geometry.energy_ev) / (2 * np.pi))
    rows, cols = geometry.detector.roi_shape
    for name, phase in scan.truth.phases.items():
        theta = bragg_angle_deg(phase.d_a, geometry.energy_ev)
        assert desc.rocking_angles[0] + 4 * sigma_deg < theta < desc.rocking_angles[-1] - 4 * sigma_deg
        q = geometry.q({**desc.fixed_angles, desc.rocking_axis: theta})
        miss = np.linalg.norm(q - [0.0, 0.0, 2 * np.pi / phase.d_a], axis=-1)
        row, col = np.unravel_index(np.argmin(miss), miss.shape)
        assert miss[row, col] < q_per_pixel
        margin = 6 * SIGMA_RADIAL / q_per_pixel
        assert margin < row < rows - margin and margin < col < cols - margin, (name, row, col)


def test_a_coexistence_scan_through_the_accumulator_matches_the_truth():
    series = OperandoSeries(n_angles=15)        # rocking steps finer than the peak: no aliasing
    k = min(range(series.n_scans),
            key=lambda k: abs(series.particle_state(0, k)[1].h3_fraction - 0.5))
    scan = series.scan(k)
    truth = scan.truth
    assert set(truth.phases) == set(PHASES) and truth.two_phases.sum() > 5
    split = np.pi * (3 / 14.45 + 3 / 13.80)     # |Q| halfway between the two phases' peaks
    rois = (QRoi("H2", (-0.1, -0.1, 1.2), (0.1, 0.1, split)),
            QRoi("H3", (-0.1, -0.1, split), (0.1, 0.1, 1.5)))
    setup = ScanSetup(scan.scenario.geometry, scan.scenario.scan,
                      AccumulationSettings(histogram_bins=(0, 0, 0), q_rois=rois))
    acc = Accumulator(setup)
    for _index, angle, point, frame in scan.scenario.simulator.frames(reuse_buffer=True):
        acc.add_frame(frame, angle, point)

    def counts_and_d(moments):
        com = setup.q_ref + moments[kernels.S1X:kernels.S1Z + 1] / moments[kernels.S0]
        return moments[kernels.S0], 2 * np.pi / np.linalg.norm(com)

    def check(moments, expected_counts, expected_d):
        counts, d = counts_and_d(moments)
        # Poisson, plus 0.1 % for the masked pixels and the tails beyond the rocking range
        assert counts == pytest.approx(expected_counts, abs=4 * np.sqrt(expected_counts)
                                       + 1e-3 * expected_counts)
        assert d == pytest.approx(expected_d, abs=1e-4)

    check(acc.moments.sum(axis=(0, 1)), truth.counts, truth.d_a)
    per_roi = acc.roi_moments.sum(axis=(0, 1))
    for r, name in enumerate(PHASES):
        check(per_roi[r], truth.phases[name].counts, truth.phases[name].d_a)


def test_the_command_line_call_still_works():
    scans = list(operando_sequence(2, shape=(10, 14), n_angles=7, counts=1e5, seed=3))
    assert [s.index for s in scans] == [0, 1] and scans[1].time_s == pytest.approx(360.0)
    s = scans[0]
    assert s.scenario.scan.shape == (10, 14) and s.scenario.scan.n_angles == 7
    assert len(s.particle_d) == len(s.state_of_charge) == len(s.truth.particles) == 4
    assert set(s.channels) == {"voltage", "current", "capacity"}
    assert s.truth.particle_counts.shape == (4, 10, 14)
