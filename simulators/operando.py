"""A simulated operando experiment: a LiNiO2 cathode charged while the same area is mapped
again and again.

Two particles sit apart on the map. As the cell charges, lithium leaves the layers and the
003 d-spacing follows the charge curve (expanding first, then collapsing above ~4.1 V, the
H2-H3 transition); the second particle lags behind the first (a worse electrical contact).
Each scan of the sequence carries the cell's voltage, current and capacity in its ``sxdm``
block under ``"operando"``, as a beamline control system would add them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterator

import numpy as np

from .scenarios import LINIO2_003_D, Scenario, default_scenario
from .sample import Particle

#: charge of the simulated cell, mAh (capacity at full charge)
FULL_CAPACITY_MAH = 0.25


def d_spacing_on_charge(state_of_charge: np.ndarray | float, d0: float = LINIO2_003_D) -> np.ndarray:
    """003 d-spacing of Li(1-x)NiO2 against the state of charge x in [0, 1], Angstrom: an
    expansion of +0.3% towards x = 0.7, then the H2-H3 collapse, to -0.5% at full charge.
    (The real collapse is larger; it is scaled down so the peak stays on the detector's ROI
    without moving delta between scans.)"""
    x = np.clip(np.asarray(state_of_charge, float), 0.0, 1.0)
    return d0 * (1.0 + 0.009 * x - 0.006 * x ** 2 - 0.008 * np.clip(x - 0.7, 0.0, None) ** 2 / 0.09)


def voltage_on_charge(state_of_charge: np.ndarray | float) -> np.ndarray:
    """Open-circuit voltage of the cell against the state of charge, V."""
    x = np.clip(np.asarray(state_of_charge, float), 0.0, 1.0)
    return 3.55 + 0.55 * x + 0.12 * np.tanh((x - 0.85) * 12.0)


@dataclass(frozen=True)
class OperandoScan:
    """One scan of the sequence: the scenario to send, what the run carries, the truth."""

    index: int
    time_s: float
    scenario: Scenario
    channels: dict[str, dict]            # name -> {"value", "units"}: the sxdm "operando" block
    particle_d: tuple[float, ...]        # true unstrained d of each particle, Angstrom
    state_of_charge: tuple[float, ...]


def operando_sequence(n_scans: int = 50, shape: tuple[int, int] = (12, 16), n_angles: int = 9,
                      minutes_per_scan: float = 6.0, lag: float = 0.8,
                      counts: float = 2.0e5, seed: int = 0) -> Iterator[OperandoScan]:
    """The scans of a constant-current charge, one map per ``minutes_per_scan``.

    Parameters
    ----------
    n_scans : number of maps; the charge goes from 0 to 1 over the sequence.
    shape, n_angles : size of each map and rocking scan (kept small: hundreds of them).
    lag : state of charge of the second particle relative to the first.
    counts, seed : as in :func:`~.scenarios.default_scenario` (the seed varies per scan).
    """
    rows, cols = shape
    step = 0.1
    height, width = (rows - 1) * step, (cols - 1) * step
    base = (Particle(center_um=(0.5 * height, 0.27 * width), semi_axes_um=(0.33 * height, 0.2 * width),
                     rotation_deg=10.0, strain_amplitude=1.5e-4, n_domains=2, max_tilt_deg=0.04,
                     strain_period_um=0.5 * width, counts=counts, seed=seed + 1),
            Particle(center_um=(0.5 * height, 0.73 * width), semi_axes_um=(0.3 * height, 0.19 * width),
                     rotation_deg=-20.0, strain_amplitude=1.5e-4, n_domains=3, max_tilt_deg=0.04,
                     strain_period_um=0.5 * width, counts=counts, seed=seed + 2))
    current_ma = FULL_CAPACITY_MAH / (n_scans * minutes_per_scan / 60.0)
    for k in range(n_scans):
        x = k / max(n_scans - 1, 1)
        socs = (x, lag * x)
        ds = tuple(float(d) for d in d_spacing_on_charge(np.array(socs)))
        particles = tuple(replace(p, d_spacing_a=d) for p, d in zip(base, ds))
        scenario = default_scenario(shape=shape, step_um=step, n_angles=n_angles,
                                    rocking_half_range_deg=0.4, particles=particles,
                                    seed=seed + 1000 * k)
        channels = {"voltage": {"value": float(voltage_on_charge(x)), "units": "V"},
                    "current": {"value": current_ma, "units": "mA"},
                    "capacity": {"value": x * FULL_CAPACITY_MAH, "units": "mAh"}}
        yield OperandoScan(k, k * minutes_per_scan * 60.0, scenario, channels, ds, socs)
