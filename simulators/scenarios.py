"""Ready-made simulated experiments.

The default is the case the project is built around: a LiNiO2 single-crystal particle, 003
reflection (c = 14.2 A, d = 4.733 A) at 8.33 keV in the symmetric geometry, measured with a
Maxipix 2x2 at 0.6 m on a 40 x 40 map of 100 nm steps and 31 rocking steps of 0.02 degree
covering the peak (+-0.3 degree around the Bragg angle).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sxdm_stream.core.geometry import Detector, Geometry, wavelength_angstrom
from sxdm_stream.core.scan import ScanDescription

from .detectors import DETECTOR_MODELS, DetectorModel
from .frames import ScanSimulator
from .sample import Particle, Sample

LINIO2_003_D = 14.2 / 3.0
DEFAULT_ENERGY_EV = 8330.0


@dataclass(frozen=True)
class Scenario:
    """A simulated experiment: what the processor is told (geometry, scan) and the simulator."""

    geometry: Geometry
    scan: ScanDescription
    simulator: ScanSimulator


def bragg_angle_deg(d_spacing_a: float, energy_ev: float) -> float:
    return float(np.rad2deg(np.arcsin(wavelength_angstrom(energy_ev) / (2.0 * d_spacing_a))))


def default_scenario(
    shape: tuple[int, int] = (40, 40),
    step_um: float = 0.1,
    n_angles: int = 31,
    rocking_half_range_deg: float = 0.3,
    detector: str = "maxipix_2x2",
    energy_ev: float = DEFAULT_ENERGY_EV,
    roi_half_size: int = 48,
    particles: tuple[Particle, ...] | None = None,
    counts: float | None = None,
    background_rate: float = 2e-5,
    drift_um_per_angle: tuple[float, float] = (0.0, 0.0),
    seed: int = 0,
    bragg_d_a: float | None = None,
    roi_half_rows: int | None = None,
) -> Scenario:
    """The default LiNiO2 003 experiment, with every knob a beamline scientist would turn.

    The particle is scaled to the map so a smaller map still shows the whole particle.
    ``drift_um_per_angle`` moves the sample by (row, col) micrometres per rocking step.
    ``bragg_d_a`` is the d-spacing (Angstrom) on whose Bragg angle the detector arm (delta =
    2 theta) and the rocking angles are centred (None: LiNiO2 003). The processing ROI spans
    ``roi_half_size`` pixels either side of the beam centre, or ``roi_half_rows`` along the
    detector rows where given: in this geometry the rows run along 2 theta, so a wider ROI
    there holds peaks of different d at once.
    """
    if detector not in DETECTOR_MODELS:
        raise ValueError(f"detector {detector!r} is not one of {sorted(DETECTOR_MODELS)}")
    theta = bragg_angle_deg(LINIO2_003_D if bragg_d_a is None else bragg_d_a, energy_ev)
    model: DetectorModel = DETECTOR_MODELS[detector]()
    det = model.detector
    c_row, c_col = (int(round(c)) for c in det.beam_center)
    half_rows = roi_half_size if roi_half_rows is None else roi_half_rows
    roi = (max(c_row - half_rows, 0), min(c_row + half_rows, det.shape[0]),
           max(c_col - roi_half_size, 0), min(c_col + roi_half_size, det.shape[1]))
    processing_det = Detector(det.shape, det.pixel_size_m, det.distance_m, det.beam_center,
                              roi=roi, mask=det.mask, name=det.name)
    geometry = Geometry(processing_det, energy_ev)
    rows, cols = shape
    extents = ((0.0, (rows - 1) * step_um), (0.0, (cols - 1) * step_um))
    scan = ScanDescription(
        shape=shape, extents_um=extents, motors=("piy", "pix"), rocking_axis="eta",
        rocking_angles=tuple(theta + np.linspace(-rocking_half_range_deg, rocking_half_range_deg, n_angles)),
        fixed_angles={"phi": 0.0, "nu": 0.0, "delta": 2.0 * theta}, scan_id="sim-linio2-003",
    )
    if particles is None:
        size = np.array([extents[0][1], extents[1][1]])
        base = Particle()
        scale = float(min(size / 3.9))
        particles = (Particle(center_um=tuple(0.5 * size + 0.05 * scale),
                              semi_axes_um=tuple(np.array(base.semi_axes_um) * scale),
                              strain_period_um=base.strain_period_um * scale,
                              counts=counts if counts is not None else base.counts),)
    drift = np.outer(np.arange(n_angles) - n_angles // 2, drift_um_per_angle)
    sim = ScanSimulator(Sample(particles), model, geometry, scan, background_rate=background_rate,
                        seed=seed, drift_um=drift)
    return Scenario(geometry, scan, sim)


def two_particle_scenario(
    shape: tuple[int, int] = (32, 32),
    step_um: float = 0.1,
    n_angles: int = 25,
    d_spacings_a: tuple[float, float] = (4.730, 4.745),
    counts: float = 2.0e5,
    seed: int = 0,
    **kwargs,
) -> Scenario:
    """Two LiNiO2 particles at clearly different d whose footprints overlap in the middle of
    the map: in the overlap both Bragg peaks land on the detector in the same frames, and only
    q-space ROIs tell the particles apart.

    Particle 0 (left) and particle 1 (right) have d-spacings ``d_spacings_a``; their peaks are
    narrower along Q (sigma 6e-4 1/A) than the default's, and their strain fields and tilts
    smaller, so that the two peaks stay separated in q over the whole map (|Q| differs by
    ~4e-3 1/A for 0.015 A). Other keywords go to :func:`default_scenario`. The truth of
    each particle is in ``simulator.truth().particle_d_spacing``.
    """
    rows, cols = shape
    height, width = (rows - 1) * step_um, (cols - 1) * step_um
    particles = tuple(
        Particle(center_um=(0.5 * height, centre * width),
                 semi_axes_um=(0.36 * height, 0.24 * width), rotation_deg=rotation,
                 d_spacing_a=d, strain_amplitude=1.5e-4, strain_period_um=0.6 * width,
                 n_domains=3, max_tilt_deg=0.05, bend_deg=0.02, sigma_radial=6e-4,
                 sigma_transverse=1.2e-3, counts=counts, seed=particle_seed)
        for centre, rotation, d, particle_seed in zip((0.36, 0.64), (15.0, -25.0), d_spacings_a,
                                                      (seed + 1, seed + 2)))
    return default_scenario(shape=shape, step_um=step_um, n_angles=n_angles, particles=particles,
                            seed=seed, **kwargs)
