"""Phases along |Q| from the q-shell moments: two LiNiO2 phases coexisting in one particle
(H2 at d = 4.817 A, H3 at 4.600 A) measured by the simulator, a single-phase scan, the rules
on a profile, phase ids across a series, the results file and the configuration."""

from __future__ import annotations

import numpy as np
import pytest

from sxdm_stream.analysis.phases import (PhaseSettings, analyse_phases, assign_phase_ids,
                                         find_phase_ranges)
from sxdm_stream.analysis.scan_analysis import AnalysisSettings, analyse
from sxdm_stream.config import config_from_dict
from sxdm_stream.core.accumulate import AccumulationSettings, Accumulator, ScanSetup
from sxdm_stream.core.scan import ScanDescription
from sxdm_stream.errors import ConfigError
from sxdm_stream.simulators.detectors import DETECTOR_MODELS
from sxdm_stream.simulators.frames import ScanSimulator
from sxdm_stream.simulators.sample import Particle, Sample
from sxdm_stream.simulators.scenarios import bragg_angle_deg, default_scenario
from sxdm_stream.sinks.results import read_phases, write_results

D_H2, D_H3 = 4.817, 4.600
#: counts of the H2 component over those of both: the truth of the phase fraction
H2_SHARE = 0.35
ENERGY_EV = 8330.0
SHAPE = (12, 12)
STEP_UM = 0.1


def two_phase_particles(counts: float = 4e5) -> tuple[Particle, Particle]:
    """Two components of one footprint (overlapping particles add their peaks): H2 and H3 in
    every map pixel of the particle, H2 holding ``H2_SHARE`` of the counts. Small tilts, so
    the rocking range below covers both peaks whole."""
    size = (SHAPE[0] - 1) * STEP_UM
    common = dict(center_um=(0.5 * size, 0.5 * size), semi_axes_um=(0.42 * size, 0.36 * size),
                  rotation_deg=20.0, strain_period_um=0.8 * size, n_domains=3,
                  max_tilt_deg=0.03, bend_deg=0.01)
    return (Particle(d_spacing_a=D_H2, counts=H2_SHARE * counts, seed=1, **common),
            Particle(d_spacing_a=D_H3, counts=(1 - H2_SHARE) * counts, seed=2, **common))


def two_phase_simulator(n_angles: int = 25, half_range_deg: float = 0.55):
    """(processing geometry, simulator): the 003 peaks of both phases (~0.42 degree apart in
    theta, ~160 detector pixels apart) in one ROI and one rocking scan centred between them."""
    theta_h2, theta_h3 = bragg_angle_deg(D_H2, ENERGY_EV), bragg_angle_deg(D_H3, ENERGY_EV)
    centre = 0.5 * (theta_h2 + theta_h3)
    geometry = default_scenario(shape=SHAPE, step_um=STEP_UM, n_angles=3,
                                roi_half_size=110).geometry
    extents = ((0.0, (SHAPE[0] - 1) * STEP_UM), (0.0, (SHAPE[1] - 1) * STEP_UM))
    scan = ScanDescription(
        shape=SHAPE, extents_um=extents, motors=("piy", "pix"), rocking_axis="eta",
        rocking_angles=tuple(centre + np.linspace(-half_range_deg, half_range_deg, n_angles)),
        fixed_angles={"phi": 0.0, "nu": 0.0, "delta": theta_h2 + theta_h3}, scan_id="two-phase")
    return geometry, ScanSimulator(Sample(two_phase_particles()),
                                   DETECTOR_MODELS["maxipix_2x2"](), geometry, scan,
                                   background_rate=2e-5, seed=3)


def accumulate(geometry, sim: ScanSimulator, q_shells: int = 64) -> Accumulator:
    setup = ScanSetup(geometry, sim.scan,
                      AccumulationSettings(histogram_bins=(0, 0, 0), q_shells=q_shells))
    acc = Accumulator(setup)
    for _index, angle, point, frame in sim.frames(reuse_buffer=True):
        acc.add_frame(frame, angle, point)
    return acc


@pytest.fixture(scope="module")
def two_phase():
    geometry, sim = two_phase_simulator()
    acc = accumulate(geometry, sim)
    return sim, acc, analyse(acc, final=True)


def true_particle_phases(sim: ScanSimulator, region: np.ndarray) -> list[tuple[float, float]]:
    """(d, share of the counts) of each component over ``region``: d = 2 pi / |sum A q / sum A|,
    the centre of mass of the expected counts (A the component's integrated counts, q its
    peak centre at each map pixel)."""
    rows, cols = np.meshgrid(sim.scan.axis_um(0), sim.scan.axis_um(1), indexing="ij")
    components = sim.sample.components(rows, cols)
    total = sum(c["intensity"][region].sum() for c in components)
    out = []
    for c in components:
        a = c["intensity"][region]
        com = (a[:, None] * c["q"][region]).sum(axis=0) / a.sum()
        out.append((2 * np.pi / np.linalg.norm(com), a.sum() / total))
    return out


# ---- physics with the simulator --------------------------------------------------------------
def test_two_phases_per_particle_exact(two_phase):
    sim, acc, analysis = two_phase
    phases = analysis.phases
    assert phases is not None and len(phases.phases) == 2
    # increasing |Q|: H2 (larger d) first
    h2, h3 = phases.phases
    assert h2.d_a == pytest.approx(D_H2, abs=5e-3) and h3.d_a == pytest.approx(D_H3, abs=5e-3)
    assert (h2.phase_id, h3.phase_id) == (0, 1)
    labels = analysis.particles.labels
    assert labels.max() == 1                      # both components share one footprint
    truth = true_particle_phases(sim, labels == 1)
    table = phases.particles
    assert list(table["phase_id"]) == [0, 1]
    for row, (d_true, share) in zip(table, truth):
        assert abs(row["d_a"] - d_true) < 1e-4, (row, d_true)
        assert abs(row["fraction"] - share) < 0.05, (row, share)
    # the map-level phases are of the masked map's counts
    assert h2.fraction == pytest.approx(H2_SHARE, abs=0.05)
    assert h2.fraction + h3.fraction == pytest.approx(1.0, abs=0.01)   # little background


def test_two_phase_maps_and_mixed_pixels(two_phase):
    sim, acc, analysis = two_phase
    phases, maps = analysis.phases, analysis.maps
    mask = maps.mask
    # every masked pixel holds both phases: mixed, and the single COM lies between them
    assert mask.sum() >= 20 and np.array_equal(phases.mixed, mask)
    assert phases.n_mixed == int(mask.sum())
    np.testing.assert_allclose(phases.fraction[0][mask], H2_SHARE, atol=0.05)
    np.testing.assert_allclose(phases.fraction[:, mask].sum(axis=0), 1.0, atol=0.02)
    rows, cols = np.meshgrid(sim.scan.axis_um(0), sim.scan.axis_um(1), indexing="ij")
    for k, component in enumerate(sim.sample.components(rows, cols)):
        d_true = component["d_spacing"][mask]
        assert np.nanmax(np.abs(phases.d_spacing[k][mask] - d_true)) < 2e-3
    single = maps.d_spacing[mask]
    assert np.all((single > D_H3 + 0.05) & (single < D_H2 - 0.05))   # a d no phase has
    assert np.all(np.isnan(phases.d_spacing[:, ~mask]))
    np.testing.assert_allclose(phases.intensity.sum(axis=0)[mask],
                               acc.shell_moments[..., 0].sum(axis=1).reshape(SHAPE)[mask],
                               rtol=0.02)


def test_single_phase_scan_has_one_phase_and_no_mixed_pixels():
    scenario = default_scenario(shape=(10, 10), n_angles=15)
    setup = ScanSetup(scenario.geometry, scenario.scan,
                      AccumulationSettings(histogram_bins=(0, 0, 0), q_shells=64))
    acc = Accumulator(setup)
    for _index, angle, point, frame in scenario.simulator.frames(reuse_buffer=True):
        acc.add_frame(frame, angle, point)
    analysis = analyse(acc)
    phases = analysis.phases
    assert len(phases.phases) == 1 and phases.n_mixed == 0
    truth = scenario.simulator.truth()
    assert phases.phases[0].d_a == pytest.approx(np.nanmean(truth.d_spacing), abs=2e-3)
    mask = analysis.maps.mask
    # one phase: its d map is the single-COM map, up to the background outside its slices
    np.testing.assert_allclose(phases.d_spacing[0][mask], analysis.maps.d_spacing[mask],
                               atol=2e-4)
    assert phases.fraction[0][mask].min() > 0.95


def test_no_shells_no_phases(small_processed):
    assert analyse(small_processed.accumulator).phases is None


# ---- the rules on a profile -------------------------------------------------------------------
def gaussian_profile(centres, heights, sigma=1.5, n=64, background=2.0):
    k = np.arange(n)
    return background + sum(h * np.exp(-0.5 * ((k - c) / sigma) ** 2)
                            for c, h in zip(centres, heights))


def test_profile_rules_split_at_minimum_and_drop_weak_phases():
    profile = gaussian_profile((15, 40), (1000.0, 2000.0))
    (a0, b0, p0), (a1, b1, p1) = find_phase_ranges(profile)
    assert (p0, p1) == (15, 40)
    assert b0 <= a1 and 20 < b0 < 35                  # background between them is in neither
    assert profile[:a0].max() < 10 and profile[b1:].max() < 10
    # a peak with 2 % of the counts is not a phase; with max_phases=1 only the strongest is
    weak = gaussian_profile((15, 40), (1000.0, 25.0), background=0.0)
    assert [r[2] for r in find_phase_ranges(weak)] == [15]
    assert [r[2] for r in find_phase_ranges(profile, PhaseSettings(max_phases=1))] == [40]
    # touching peaks: split at the minimum between them, every slice in one of the two
    close = gaussian_profile((30, 38), (1000.0, 1000.0), background=0.0)
    (a0, b0, _), (a1, b1, _) = find_phase_ranges(close)
    assert b0 == a1 == 35 and a0 < 30 and b1 > 38
    assert find_phase_ranges(np.zeros(64)) == []
    # a peak in the first slice counts
    assert [r[2] for r in find_phase_ranges(gaussian_profile((0,), (100.0,)))] == [0]


def test_phase_maps_from_synthetic_shell_moments():
    """Two pixels of known moments: the arithmetic of fractions, d and mixed."""
    from sxdm_stream.core.shells import QShells

    shells = QShells(1.0, 0.01, 10)
    q_ref = np.array([0.0, 0.0, 1.05])
    sm = np.zeros((2, 10, 4))
    sm[:, 2, 0] = (80.0, 100.0)                          # phase at |Q| ~ 1.025
    sm[:, 2, 3] = sm[:, 2, 0] * (1.025 - 1.05)
    sm[:, 7, 0] = (20.0, 0.0)                            # phase at |Q| ~ 1.075
    sm[:, 7, 3] = sm[:, 7, 0] * (1.075 - 1.05)
    mask = np.array([[True, True]])
    out = analyse_phases(sm, shells, q_ref, mask, settings=PhaseSettings(smoothing=0.0))
    assert [(p.first_shell, p.stop_shell) for p in out.phases] == [(2, 3), (7, 8)]
    np.testing.assert_allclose(out.fraction[:, 0], [[0.8, 1.0], [0.2, 0.0]])
    np.testing.assert_allclose(out.d_spacing[0, 0], 2 * np.pi / 1.025)
    assert out.d_spacing[1, 0, 0] == pytest.approx(2 * np.pi / 1.075)
    assert np.isnan(out.d_spacing[1, 0, 1])              # no counts of that phase there
    np.testing.assert_array_equal(out.mixed, [[True, False]])
    assert out.phases[0].fraction == pytest.approx(180 / 200)


# ---- continuity across a series --------------------------------------------------------------
def test_phase_ids_follow_moving_peaks():
    previous = None
    d = np.array([4.817, 4.600])
    for scan in range(6):                     # both peaks move by 0.3 % per scan
        ids = assign_phase_ids(d, previous, tolerance=0.01)
        assert ids == [0, 1], scan
        previous = list(zip(ids, d))
        d = d * (1 - 0.003)
    # a third phase appears: a new id; a phase vanishes: the others keep theirs
    ids = assign_phase_ids([d[0], 4.70, d[1]], previous, 0.01)
    assert ids == [0, 2, 1]
    assert assign_phase_ids([d[1]], [(0, d[0]), (2, 4.70), (1, d[1])], 0.01) == [1]
    # nearest first, each previous id once: two phases near one previous take it and a new one
    assert assign_phase_ids([4.60, 4.61], [(5, 4.605)], 0.01) in ([5, 6], [6, 5])


def test_analyse_passes_previous_phases(two_phase):
    _sim, acc, first = two_phase
    later = analyse(acc, previous_phases=((7, D_H3 * 1.003), (4, D_H2 * 0.997)))
    assert [p.phase_id for p in later.phases.phases] == [4, 7]
    assert list(later.phases.particles["phase_id"]) == [4, 7]
    assert first.phases.phase_list()[0] == (0, first.phases.phases[0].d_a)


# ---- results file and configuration --------------------------------------------------------
def test_results_file_holds_the_phases(two_phase, tmp_path):
    _sim, acc, analysis = two_phase
    path = tmp_path / "two_phase.h5"
    write_results(path, analysis.maps, acc.setup, acc, analysis=analysis)
    back = read_phases(path)
    phases = analysis.phases
    np.testing.assert_array_equal(back["profile"], phases.profile)
    np.testing.assert_allclose(back["q_abs"], phases.shells.centres)
    np.testing.assert_array_equal(back["phases"]["d_a"], [p.d_a for p in phases.phases])
    np.testing.assert_array_equal(back["maps"][1]["d_spacing"], phases.d_spacing[1])
    np.testing.assert_array_equal(back["mixed"], phases.mixed)
    assert back["mixed_pixels"] == phases.n_mixed > 0
    np.testing.assert_array_equal(back["particles"], phases.particles)
    import h5py
    with h5py.File(path, "r") as f:
        assert f["entry"].attrs["mixed_phase_pixels"] == phases.n_mixed
        assert f["entry/d_spacing"].attrs["mixed_phase_pixels"] == phases.n_mixed
        assert f["entry/phases/phase_0/d_spacing/d_spacing"].attrs["units"] == "angstrom"
    from sxdm_stream.sinks.results import read_accumulator_state
    state = read_accumulator_state(path)
    np.testing.assert_array_equal(state["shell_moments"], acc.shell_moments)
    write_results(tmp_path / "maps_only.h5", analysis.maps, acc.setup)
    assert read_phases(tmp_path / "maps_only.h5") is None


def test_phase_settings_from_configuration():
    config = config_from_dict({"accumulation": {"q_shells": 64},
                               "phases": {"max_phases": 2, "mixed_fraction": 0.2}})
    assert config.accumulation.q_shells == 64
    assert config.analysis.phases == PhaseSettings(max_phases=2, mixed_fraction=0.2)
    assert AnalysisSettings().phases.enabled
    with pytest.raises(ConfigError, match="phases.mixed_fraction"):
        config_from_dict({"phases": {"mixed_fraction": 1.5}})
    with pytest.raises(ConfigError, match="accumulation.q_shells"):
        config_from_dict({"accumulation": {"q_shells": -1}})
    with pytest.raises(ConfigError, match="unknown key phases.bins"):
        config_from_dict({"phases": {"bins": 3}})
