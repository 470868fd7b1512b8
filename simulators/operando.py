"""A simulated operando experiment: a LiNiO2 cathode charged while the same area is mapped
again and again, with the ground truth of every scan.

The material (:func:`charge_state`): the 003 reflection of Li(1-x)NiO2 (d = c / 3) at 8.33 keV.
On charge c grows from 14.19 A (pristine, H1) through a solid solution to 14.45 A (H2); then
H2 and H3 (c = 13.80 A, d 4.5 % shorter: the two 003 peaks 0.42 degree apart in theta, ~155
Maxipix pixels apart on the detector at 0.6 m) coexist while the H3 fraction grows (lever
rule), on the cell's 4.15-4.20 V plateau; beyond, H3 alone keeps shrinking slightly.

The sample (:class:`OperandoSeries`): three particles diffract from the start and a fourth
appears halfway (it comes into the Bragg condition: before, it gives no counts). Each particle
lags behind the cell's state of charge by its own amount (worse contact, longer paths), so at
one scan a particle can be in H2 while another holds a moving H2/H3 front. The front is planar
in the particle's frame, a smooth step about 1.6 map pixels wide, placed so that the particle's
intensity-weighted H3 fraction is its transformed fraction. Particles grow and shrink with c
(a few %) and lose 20 % of their intensity over the charge. The sample drifts under the beam,
a settling trend of ~1.7 um plus per-scan jitter of 30 nm; the map is large enough that every
footprint stays inside it and apart from the others.

Each scan is a new scan description: with ``follow_peak`` the detector arm and the rocking
angles are re-centred on the phases present, as a beamline scientist would, and the processing
ROI is tall enough along 2 theta (detector rows) for both peaks of a coexistence. Each scan's
voltage, current and capacity go in its ``sxdm`` block under ``"operando"``, as a beamline
control system adds them. Scans are built one at a time (:meth:`OperandoSeries.scan`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterator

import numpy as np

from sxdm_stream.core.geometry import wavelength_angstrom

from .detectors import DETECTOR_MODELS
from .sample import Particle
from .scenarios import DEFAULT_ENERGY_EV, Scenario, bragg_angle_deg, default_scenario

#: names of the phases: the solid solution from the pristine state to H2, and H3
SOLID_SOLUTION, H3 = "H1/H2", "H3"
PHASES = (SOLID_SOLUTION, H3)
#: lattice parameter c (Angstrom): pristine, at H2 (onset of H3), H3 at nucleation, at full charge
PRISTINE_C_A, H2_C_A, H3_C_A, H3_FULL_CHARGE_C_A = 14.19, 14.45, 13.80, 13.75
#: state of charge where H3 appears and where H2 is gone
COEXISTENCE = (0.55, 0.80)
#: charge of the simulated cell, mAh (capacity at full charge)
FULL_CAPACITY_MAH = 0.25
#: the series is laid out on this map (rows, cols at 0.25 um) and scaled to other maps
LAYOUT_EXTENT_UM = (5.75, 6.75)
#: how the footprint follows c (relative size change per relative change of c) and how much
#: intensity a particle loses over the charge
SIZE_PER_C, INTENSITY_LOSS = 1.0, 0.2
#: widths of every particle's peak, 1/A: along Q, and across Q (mosaicity, ~0.11 degree)
SIGMA_RADIAL, SIGMA_TRANSVERSE = 1.0e-3, 2.5e-3
#: particles of the layout map: centre (um), semi-axes (um), rotation (deg), state-of-charge
#: lag behind the cell, front normal (deg), True for the one that appears halfway
LAYOUT = (((1.05, 1.10), (0.85, 0.70), 20.0, 0.00, 30.0, False),
          ((1.10, 4.15), (0.80, 0.65), -35.0, 0.06, 200.0, False),
          ((4.00, 1.20), (0.75, 0.80), 60.0, 0.12, 110.0, False),
          ((3.95, 4.15), (0.70, 0.60), -10.0, 0.03, 290.0, True))


@dataclass(frozen=True)
class ChargeState:
    """The phases of Li(1-x)NiO2 at one state of charge: c of each (Angstrom) and the H3 fraction."""

    solid_solution_c_a: float
    h3_c_a: float
    h3_fraction: float

    @property
    def phases(self) -> tuple[str, ...]:
        """Names of the phases present, solid solution first."""
        return tuple(name for name, there in ((SOLID_SOLUTION, self.h3_fraction < 1.0),
                                              (H3, self.h3_fraction > 0.0)) if there)

    def c_a(self, phase: str) -> float:
        return self.solid_solution_c_a if phase == SOLID_SOLUTION else self.h3_c_a

    def fraction(self, phase: str) -> float:
        return self.h3_fraction if phase == H3 else 1.0 - self.h3_fraction

    @property
    def mean_c_a(self) -> float:
        """Volume-weighted c over the phases."""
        return float(sum(self.fraction(p) * self.c_a(p) for p in PHASES))


def charge_state(state_of_charge: float) -> ChargeState:
    """The phases of LiNiO2 at state of charge x in [0, 1] (fraction of the charge's lithium
    removed), the one place that says what the simulated material does.

    * x <= 0.55: one phase, solid solution H1 -> M -> H2; c rises from 14.19 A to 14.45 A,
      flattening towards H2 (zero slope at the onset of H3).
    * 0.55 < x < 0.80: H2 (c = 14.45 A) and H3 (c = 13.80 A) coexist; each keeps its
      composition, the H3 fraction grows linearly (lever rule).
    * x >= 0.80: H3 alone, c shrinking on to 13.75 A at x = 1.
    """
    x = float(np.clip(state_of_charge, 0.0, 1.0))
    start, end = COEXISTENCE
    u = min(x / start, 1.0)
    solid = PRISTINE_C_A + (H2_C_A - PRISTINE_C_A) * u * (2.0 - u)
    h3 = H3_C_A - (H3_C_A - H3_FULL_CHARGE_C_A) * max(x - end, 0.0) / (1.0 - end)
    return ChargeState(solid, h3, float(np.clip((x - start) / (end - start), 0.0, 1.0)))


def voltage_on_charge(state_of_charge: np.ndarray | float) -> np.ndarray:
    """Cell voltage against its state of charge, V: a sloping rise to 4.15 V, the H2-H3
    plateau (4.15 -> 4.20 V over the coexistence), then a steeper rise to 4.30 V."""
    x = np.clip(np.asarray(state_of_charge, float), 0.0, 1.0)
    start, end = COEXISTENCE
    rise = 3.60 + 0.55 * (np.minimum(x, start) / start) ** 0.8
    plateau = 0.05 * np.clip((x - start) / (end - start), 0.0, 1.0)
    beyond = 0.10 * (np.clip(x - end, 0.0, None) / (1.0 - end)) ** 1.5
    return rise + plateau + beyond


def d_spacing_on_charge(state_of_charge: np.ndarray | float) -> np.ndarray:
    """Volume-weighted mean 003 d-spacing (Angstrom) against the state of charge."""
    x = np.atleast_1d(np.asarray(state_of_charge, float))
    d = np.array([charge_state(v).mean_c_a / 3.0 for v in x.ravel()]).reshape(x.shape)
    return d if np.ndim(state_of_charge) else d[0]


def second_phase_front_um(particle: Particle, fraction: float, n: int = 96) -> float:
    """Front position (``Particle.front_position_um``) at which the intensity-weighted fraction
    of the second phase over the footprint is ``fraction`` (0 < fraction < 1), by bisection
    on a fine grid of the footprint (independent of the map's sampling)."""
    u, v = np.meshgrid(np.linspace(-1, 1, n), np.linspace(-1, 1, n), indexing="ij")
    weight = np.sqrt(np.clip(1.0 - u * u - v * v, 0.0, None))   # thickness, as Particle.fields
    reach = max(particle.semi_axes_um) + particle.front_width_um
    lo, hi = -reach, reach          # the second phase's share falls as the front moves up
    for _ in range(48):
        mid = 0.5 * (lo + hi)
        share = replace(particle, front_position_um=mid).second_phase_fraction(u, v)
        if np.sum(weight * share) > fraction * np.sum(weight):
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class PhaseTruth:
    """One phase of a particle (or of the whole map) in one scan.

    ``d_a`` is what an exact centre of mass measures over the map pixels,
    2 pi / |sum_m A_m q_m / sum_m A_m| with A_m the phase's expected counts at map pixel m and
    q_m its peak centre; ``c_a`` the unstrained lattice parameter (Angstrom); ``counts`` the
    expected counts; ``fraction`` the phase's share of the counts.
    """

    name: str
    d_a: float
    c_a: float
    counts: float
    fraction: float


@dataclass(frozen=True)
class ParticleTruth:
    """One particle of the population in one scan (``index``: stable over the series).

    Positions are (row, col) micrometres: ``*_piezo_um`` in the frame of the map motors,
    ``*_sample_um`` in the sample's own (piezo minus drift; equal at scan 0). ``centre`` is the
    footprint centre, ``centroid`` the counts-weighted mean over the map pixels (NaN while
    absent). ``counts`` are the expected integrated counts over the map, ``area_um2`` the
    footprint's. ``h3_fraction`` is the transformed (volume) fraction; ``front_position_um``
    the front's distance from the centre along ``front_angle_deg`` (NaN unless two phases).
    ``d_a`` is the centre-of-mass d of all its counts, ``phases`` the phases present.
    """

    index: int
    present: bool
    state_of_charge: float
    centre_piezo_um: np.ndarray
    centre_sample_um: np.ndarray
    centroid_piezo_um: np.ndarray
    centroid_sample_um: np.ndarray
    counts: float
    area_um2: float
    semi_axes_um: tuple[float, float]
    rotation_deg: float
    h3_fraction: float
    front_angle_deg: float
    front_position_um: float
    d_a: float
    phases: dict[str, PhaseTruth]


@dataclass(frozen=True)
class OperandoTruth:
    """The truth of one scan on its map grid (rows, cols).

    ``phase_counts[name]`` and ``particle_counts[i]`` are expected counts per map pixel;
    ``particle`` is the index of the particle with the most counts at each pixel (-1: none);
    ``two_phases`` marks the pixels where both phases hold at least 10 % of the counts.
    ``phases`` are the whole map's (d, counts, fraction of every phase present), ``d_a`` the
    centre-of-mass d of all the map's counts and ``counts`` their sum.
    """

    particles: tuple[ParticleTruth, ...]
    phase_counts: dict[str, np.ndarray]
    particle_counts: np.ndarray
    particle: np.ndarray
    two_phases: np.ndarray
    phases: dict[str, PhaseTruth]
    d_a: float
    counts: float


@dataclass(frozen=True)
class OperandoScan:
    """One scan of the sequence: the scenario to send, what the run carries, the truth.

    ``channels``: name -> {"value", "units"}, the sxdm "operando" block (voltage V, current mA,
    capacity mAh). ``particle_d``: each particle's centre-of-mass d (Angstrom, NaN while absent);
    ``state_of_charge``: each particle's. ``drift_um`` / ``drift_px``: (row, col) displacement of
    the sample under the beam since scan 0, micrometres / map pixels.
    """

    index: int
    time_s: float
    scenario: Scenario
    channels: dict[str, dict]
    particle_d: tuple[float, ...]
    state_of_charge: tuple[float, ...]
    drift_um: np.ndarray
    drift_px: np.ndarray
    cell_state_of_charge: float
    truth: OperandoTruth


class OperandoSeries:
    """The particles, drift and scans of a constant-current charge; :meth:`scan` builds one.

    Parameters
    ----------
    n_scans : number of maps; the cell's charge goes from 0 to 1 over the sequence.
    shape, step_um : map size and step; the layout (particles, drift) is that of a
        ``LAYOUT_EXTENT_UM`` map, scaled to this one.
    n_angles : rocking steps per scan.
    minutes_per_scan : time between maps.
    counts : integrated counts of a particle's thickest point, pristine.
    follow_peak : re-centre delta and the rocking angles on the phases present in each scan
        (False: one setting for the whole charge).
    drift_total_um : (row, col) trend of the drift over the series; ``drift_jitter_um`` the
        per-scan jitter (standard deviation).
    rocking_margin_deg : rocking range beyond the Bragg angles of the phases present.
    background_rate, seed : as in :func:`~.scenarios.default_scenario` (the seed varies per scan).
    """

    def __init__(self, n_scans: int = 50, shape: tuple[int, int] = (24, 28), step_um: float = 0.25,
                 n_angles: int = 9, minutes_per_scan: float = 6.0, counts: float = 2.0e5,
                 follow_peak: bool = True, drift_total_um: tuple[float, float] = (0.7, 1.5),
                 drift_jitter_um: float = 0.03, rocking_margin_deg: float = 0.55,
                 background_rate: float = 2e-5, energy_ev: float = DEFAULT_ENERGY_EV,
                 seed: int = 0) -> None:
        self.n_scans, self.shape, self.step_um = int(n_scans), tuple(shape), float(step_um)
        self.n_angles, self.minutes_per_scan, self.counts = n_angles, minutes_per_scan, counts
        self.follow_peak, self.rocking_margin_deg = follow_peak, rocking_margin_deg
        self.background_rate, self.energy_ev, self.seed = background_rate, energy_ev, seed
        extent = (np.asarray(self.shape) - 1) * self.step_um
        self.scale = float(min(extent / np.asarray(LAYOUT_EXTENT_UM)))
        self.particles = tuple(
            Particle(center_um=tuple(self.scale * np.asarray(c)),
                     semi_axes_um=tuple(self.scale * np.asarray(a)), rotation_deg=rot,
                     strain_amplitude=1.5e-4, strain_period_um=1.2 * self.scale, n_domains=3,
                     max_tilt_deg=0.04, bend_deg=0.03, sigma_radial=SIGMA_RADIAL,
                     sigma_transverse=SIGMA_TRANSVERSE, counts=counts, seed=seed + 1 + i,
                     front_angle_deg=front, front_width_um=1.6 * self.step_um)
            for i, (c, a, rot, _lag, front, _new) in enumerate(LAYOUT))
        self.lags = tuple(lag for *_, lag, _front, _new in LAYOUT)
        self.appears_at = tuple(self.n_scans // 2 if new else 0 for *_, new in LAYOUT)
        self.drift_um = self._drift(np.asarray(drift_total_um, float) * self.scale,
                                    drift_jitter_um)
        #: detector rows either side of the beam centre in the processing ROI
        self.roi_half_rows = self._roi_half_rows()

    def _drift(self, total_um: np.ndarray, jitter_um: float) -> np.ndarray:
        """(n_scans, 2) drift since scan 0: thermal settling (fast first) plus jitter."""
        t = np.arange(self.n_scans) / max(self.n_scans - 1, 1)
        trend = (1.0 - np.exp(-2.5 * t)) / (1.0 - np.exp(-2.5))
        jitter = np.random.default_rng([self.seed, 77]).normal(0.0, jitter_um, (self.n_scans, 2))
        drift = trend[:, None] * total_um + jitter
        return drift - drift[0]

    def cell_state_of_charge(self, k: int) -> float:
        return k / max(self.n_scans - 1, 1)

    def particle_state(self, index: int, k: int) -> tuple[float, ChargeState, Particle]:
        """(state of charge, phases, the particle as it is at scan ``k`` in the piezo frame)."""
        soc = float(np.clip(self.cell_state_of_charge(k) - self.lags[index], 0.0, 1.0))
        state = charge_state(soc)
        base = self.particles[index]
        size = 1.0 + SIZE_PER_C * (state.mean_c_a / PRISTINE_C_A - 1.0)
        phases = state.phases
        particle = replace(
            base, center_um=tuple(np.asarray(base.center_um) + self.drift_um[k]),
            semi_axes_um=tuple(size * np.asarray(base.semi_axes_um)),
            counts=self.counts * (1.0 - INTENSITY_LOSS * soc),
            d_spacing_a=state.c_a(phases[0]) / 3.0,
            second_d_spacing_a=state.h3_c_a / 3.0 if len(phases) == 2 else None)
        if len(phases) == 2:
            particle = replace(particle, front_position_um=second_phase_front_um(
                particle, state.h3_fraction))
        return soc, state, particle

    def centre_d_a(self, states: list[ChargeState]) -> tuple[float, float]:
        """(d on which delta and the rocking are centred, rocking half range in degrees)."""
        if self.follow_peak:
            ds = [s.c_a(p) / 3.0 for s in states for p in s.phases]
        else:   # the whole charge
            ds = [H2_C_A / 3.0, H3_FULL_CHARGE_C_A / 3.0]
        thetas = [bragg_angle_deg(d, self.energy_ev) for d in ds]
        centre = 0.5 * (max(thetas) + min(thetas))
        d = wavelength_angstrom(self.energy_ev) / (2.0 * np.sin(np.deg2rad(centre)))
        return d, 0.5 * (max(thetas) - min(thetas)) + self.rocking_margin_deg

    def _roi_half_rows(self) -> int:
        """Detector rows either side of the centre that hold both peaks of any scan: half the
        largest 2 theta spread, plus 6 sigma of the peak along Q and a margin."""
        lo, hi = (H3_C_A / 3.0, H2_C_A / 3.0) if self.follow_peak else \
            (H3_FULL_CHARGE_C_A / 3.0, H2_C_A / 3.0)
        spread = np.deg2rad(bragg_angle_deg(lo, self.energy_ev) - bragg_angle_deg(hi, self.energy_ev))
        det = DETECTOR_MODELS["maxipix_2x2"]().detector
        k = 2 * np.pi / wavelength_angstrom(self.energy_ev)
        sigma_px = SIGMA_RADIAL / (k * det.pixel_size_m / det.distance_m)
        return int(np.ceil(det.distance_m * np.tan(spread) / det.pixel_size_m + 6 * sigma_px + 8))

    def scan(self, k: int) -> OperandoScan:
        """Scan ``k`` of the series, built now (its scenario's frames are drawn on demand)."""
        states = [self.particle_state(i, k) for i in range(len(self.particles))]
        present = [k >= self.appears_at[i] for i in range(len(self.particles))]
        d_centre, half_range = self.centre_d_a([s for (_x, s, _p), on in zip(states, present) if on])
        scenario = default_scenario(
            shape=self.shape, step_um=self.step_um, n_angles=self.n_angles,
            rocking_half_range_deg=half_range, energy_ev=self.energy_ev,
            particles=tuple(p for (_x, _s, p), on in zip(states, present) if on),
            background_rate=self.background_rate, seed=self.seed + 1000 * k,
            bragg_d_a=d_centre, roi_half_rows=self.roi_half_rows)
        truth = scan_truth(scenario, states, present, self.drift_um[k])
        x = self.cell_state_of_charge(k)
        current_ma = FULL_CAPACITY_MAH / (self.n_scans * self.minutes_per_scan / 60.0)
        channels = {"voltage": {"value": float(voltage_on_charge(x)), "units": "V"},
                    "current": {"value": current_ma, "units": "mA"},
                    "capacity": {"value": x * FULL_CAPACITY_MAH, "units": "mAh"}}
        return OperandoScan(k, k * self.minutes_per_scan * 60.0, scenario, channels,
                            tuple(p.d_a for p in truth.particles),
                            tuple(soc for soc, _s, _p in states), self.drift_um[k].copy(),
                            self.drift_um[k] / self.step_um, x, truth)

    def __iter__(self) -> Iterator[OperandoScan]:
        return (self.scan(k) for k in range(self.n_scans))


def operando_sequence(n_scans: int = 50, shape: tuple[int, int] = (24, 28), n_angles: int = 9,
                      minutes_per_scan: float = 6.0, counts: float = 2.0e5, seed: int = 0,
                      **kwargs) -> Iterator[OperandoScan]:
    """The scans of a constant-current charge, one map per ``minutes_per_scan``, built one at
    a time. Other keywords (``step_um``, ``follow_peak``, ``drift_total_um``...) go to
    :class:`OperandoSeries`."""
    yield from OperandoSeries(n_scans, shape=shape, n_angles=n_angles,
                              minutes_per_scan=minutes_per_scan, counts=counts, seed=seed, **kwargs)


# ---- ground truth ---------------------------------------------------------------------------

def _com_d(counts: np.ndarray, weighted_q: np.ndarray) -> float:
    """2 pi / |sum_m A_m q_m / sum_m A_m| from the map pixels' counts A_m and their A_m q_m:
    the d an exact centre of mass measures (NaN without counts)."""
    total = counts.sum()
    if not total > 0:
        return float("nan")
    return float(2 * np.pi / np.linalg.norm(weighted_q.reshape(-1, 3).sum(axis=0) / total))


def _phase_truths(counts: dict[str, np.ndarray], weighted_q: dict[str, np.ndarray],
                  c: dict[str, float]) -> dict[str, PhaseTruth]:
    total = sum(a.sum() for a in counts.values())
    return {name: PhaseTruth(name, _com_d(a, weighted_q[name]), c[name], float(a.sum()),
                             float(a.sum() / total))
            for name, a in counts.items() if a.sum() > 0}


def scan_truth(scenario: Scenario, states: list, present: list[bool],
               drift_um: np.ndarray) -> OperandoTruth:
    """The truth of a scan from its simulator's (``states``: (soc, ChargeState, Particle) of
    every particle of the population; the scenario's sample holds the present ones in order)."""
    g = scenario.simulator.truth()
    scan = scenario.scan
    rows, cols = np.meshgrid(scan.axis_um(0), scan.axis_um(1), indexing="ij")
    positions = np.stack([rows, cols], axis=-1)
    sample_index = np.cumsum(present) - 1            # population index -> sample index
    phase_counts = {name: np.zeros(scan.shape) for name in PHASES}
    phase_q = {name: np.zeros(scan.shape + (3,)) for name in PHASES}
    phase_c = dict.fromkeys(PHASES, 0.0)             # counts-weighted c, summed
    particle_counts = np.zeros((len(states),) + scan.shape)
    particles = []
    for i, ((soc, state, p), on) in enumerate(zip(states, present)):
        counts, weighted = {}, {}
        owned = np.flatnonzero(g.component_owner[:, 0] == sample_index[i]) if on else []
        for component, name in zip(owned, state.phases):   # solid solution first, as built
            counts[name] = g.component_intensity[component]
            weighted[name] = counts[name][..., None] * g.component_q[component]
            phase_counts[name] += counts[name]
            phase_q[name] += weighted[name]
            phase_c[name] += counts[name].sum() * state.c_a(name)
        particle_counts[i] = sum(counts.values()) if counts else 0.0
        particles.append(_particle_truth(i, on, soc, state, p, counts, weighted, positions,
                                         drift_um))
    all_counts = sum(phase_counts.values())
    two = np.all([phase_counts[n] >= 0.1 * all_counts for n in PHASES], axis=0) & (all_counts > 0)
    particle = np.where(particle_counts.max(axis=0) > 0, np.argmax(particle_counts, axis=0), -1)
    mean_c = {n: phase_c[n] / phase_counts[n].sum() if phase_counts[n].sum() > 0 else float("nan")
              for n in PHASES}
    return OperandoTruth(tuple(particles), phase_counts, particle_counts, particle, two,
                         _phase_truths(phase_counts, phase_q, mean_c),
                         _com_d(all_counts, sum(phase_q.values())), float(all_counts.sum()))


def _particle_truth(i: int, on: bool, soc: float, state: ChargeState, p: Particle,
                    counts: dict[str, np.ndarray], weighted_q: dict[str, np.ndarray],
                    positions: np.ndarray, drift_um: np.ndarray) -> ParticleTruth:
    centre = np.asarray(p.center_um, float)
    total = sum(counts.values()) if counts else np.zeros(positions.shape[:2])
    if total.sum() > 0:
        centroid = np.einsum("ij,ijx->x", total, positions) / total.sum()
    else:
        centroid = np.full(2, np.nan)
    two = p.second_d_spacing_a is not None
    return ParticleTruth(
        index=i, present=bool(on), state_of_charge=soc, centre_piezo_um=centre,
        centre_sample_um=centre - drift_um, centroid_piezo_um=centroid,
        centroid_sample_um=centroid - drift_um, counts=float(total.sum()),
        area_um2=float(np.pi * p.semi_axes_um[0] * p.semi_axes_um[1]),
        semi_axes_um=tuple(float(a) for a in p.semi_axes_um), rotation_deg=p.rotation_deg,
        h3_fraction=state.h3_fraction, front_angle_deg=p.front_angle_deg,
        front_position_um=p.front_position_um if two else float("nan"),
        d_a=_com_d(total, sum(weighted_q.values())) if counts else float("nan"),
        phases=_phase_truths(counts, weighted_q, {n: state.c_a(n) for n in counts}))
