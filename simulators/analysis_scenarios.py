"""Simulated experiments for the map analyses: a drifting sample, separate particles.

Both build on :func:`~sxdm_stream.simulators.scenarios.default_scenario` (the LiNiO2 003 case)
and keep its geometry and detector; only the sample and its motion differ.
"""

from __future__ import annotations

import numpy as np

from .frames import GroundTruth, ScanSimulator
from .sample import Particle, Sample
from .scenarios import Scenario, default_scenario


def drifting_scenario(drift_um: np.ndarray, shape: tuple[int, int] = (40, 40),
                      n_angles: int = 31, seed: int = 0, **options) -> Scenario:
    """The default experiment with the sample drifting by ``drift_um`` (n_angles, 2).

    ``drift_um[k] = (row, col)`` micrometres: at rocking step k the beam sees the sample point
    at the nominal motor position plus the drift. Other options go to ``default_scenario``.
    """
    base = default_scenario(shape=shape, n_angles=n_angles, seed=seed, **options)
    drift = np.asarray(drift_um, dtype=np.float64).reshape(n_angles, 2)
    sim = base.simulator
    moved = ScanSimulator(sim.sample, sim.model, base.geometry, base.scan,
                          background_rate=sim.background_rate, seed=seed, drift_um=drift)
    return Scenario(base.geometry, base.scan, moved)


def truth_at_angle(simulator: ScanSimulator, angle_index: int) -> GroundTruth:
    """Ground truth on the map grid as the sample lay at rocking step ``angle_index``
    (nominal positions plus that step's drift): what drift-corrected maps referenced to that
    angle should show."""
    scan = simulator.scan
    rows, cols = np.meshgrid(scan.axis_um(0) + simulator.drift_um[angle_index, 0],
                             scan.axis_um(1) + simulator.drift_um[angle_index, 1], indexing="ij")
    p = simulator.sample.peaks(rows, cols)
    q = np.where((p["particle"] >= 0)[..., None], p["q"], np.nan)
    return GroundTruth(p["intensity"], q, p["d_spacing"], p["particle"])


def separate_particles_scenario(shape: tuple[int, int] = (36, 36), n_angles: int = 21,
                                seed: int = 0, **options) -> Scenario:
    """Three separate particles of different d-spacing, size and tilt domains on one map.

    Step 0.1 um. Particle 0 (upper left, 3 domains), particle 1 (upper right, 1 domain) and
    particle 2 (bottom, 4 domains) differ in d by a few 1e-3 relative, far more than the strain
    inside each, and have the same peak counts so one intensity mask keeps all three.
    """
    rows, cols = shape
    size = np.array([(rows - 1) * 0.1, (cols - 1) * 0.1])
    d0 = 14.2 / 3.0
    particles = (
        Particle(center_um=tuple(size * (0.27, 0.27)), semi_axes_um=tuple(size * (0.18, 0.15)),
                 rotation_deg=30.0, d_spacing_a=d0, n_domains=3, max_tilt_deg=0.12, seed=3,
                 strain_period_um=0.8),
        Particle(center_um=tuple(size * (0.25, 0.75)), semi_axes_um=tuple(size * (0.14, 0.16)),
                 rotation_deg=-10.0, d_spacing_a=d0 * 1.003, n_domains=1, max_tilt_deg=0.05,
                 seed=5, strain_period_um=0.7),
        Particle(center_um=tuple(size * (0.72, 0.5)), semi_axes_um=tuple(size * (0.18, 0.3)),
                 rotation_deg=5.0, d_spacing_a=d0 * 0.998, n_domains=4, max_tilt_deg=0.12,
                 seed=11, strain_period_um=1.0),
    )
    return default_scenario(shape=shape, n_angles=n_angles, particles=particles, seed=seed,
                            **options)
