"""Cost and accuracy of drift estimation and correction, and of the particle table, on big maps.

What is measured
----------------
Per-angle intensity maps and moments of a 200 x 200 map with 100 rocking angles (the largest
map of DESIGN.md) are made directly from the simulator's sample fields, without frames: the
default particle (4 tilt domains, bending) scaled to the map, drifting by a straight line plus
a wobble (about 6 x 4 pixels over the series); each map pixel's rocking curve is a Gaussian
in angle centred on its tilt about the rocking axis. Then timed (best of ``--repeats``):

* ``estimate_drift``: all angles, as at the end of a scan (the live processor calls it once per
  finished angle with the angles done so far, so this is its worst case);
* ``shift_moments``: applying the shifts to (angles, points, 10) float64 moments;
* ``find_particles``: the particle table of the corrected maps.

The error of the estimated shifts against the drift that made the maps is printed too.
Run ``python benchmarks/bench_drift.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from sxdm_stream.analysis.drift import DriftSettings, estimate_drift, shift_moments
from sxdm_stream.analysis.particles import find_particles, format_particles
from sxdm_stream.core.maps import derive_maps
from sxdm_stream.core.scan import ScanDescription
from sxdm_stream.simulators.sample import Particle, tilted_normals


def synthetic_maps(size: int, n_angles: int, step_um: float):
    """(per-angle S0 maps, per-angle moments, drift in um) of a drifting default particle."""
    extent = (size - 1) * step_um
    base = Particle()
    scale = extent / 3.9
    particle = Particle(center_um=(0.5 * extent, 0.5 * extent),
                        semi_axes_um=tuple(np.array(base.semi_axes_um) * scale),
                        strain_period_um=base.strain_period_um * scale)
    k = np.arange(n_angles) - n_angles // 2
    drift = np.stack([0.06 * step_um * k, -0.04 * step_um * k + 0.5 * step_um * np.sin(k / 8)], 1)
    angles = np.linspace(-0.3, 0.3, n_angles)
    axis = np.arange(size) * step_um
    maps = np.empty((n_angles, size, size))
    moments = np.zeros((n_angles, size * size, 10))
    q0 = 2 * np.pi / particle.d_spacing_a
    for a in range(n_angles):
        rows, cols = np.meshgrid(axis + drift[a, 0], axis + drift[a, 1], indexing="ij")
        f = particle.fields(rows, cols)
        maps[a] = f["intensity"] * np.exp(-0.5 * ((angles[a] - f["tilt_y"]) / 0.065) ** 2)
        s0 = maps[a].ravel()
        tilt = np.stack([f["tilt_x"], f["tilt_y"]], axis=-1).reshape(-1, 2)
        q = (2 * np.pi / f["d_spacing"].ravel())[:, None] * tilted_normals(np.array([0., 0, 1]), tilt)
        dq = q - (0.0, 0.0, q0)
        moments[a, :, 0] = s0
        moments[a, :, 1:4] = s0[:, None] * dq
        for m, (i, j) in zip(range(4, 10), [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]):
            moments[a, :, m] = s0 * (dq[:, i] * dq[:, j] + (1e-6 if i == j else 0.0))
    return maps, moments, drift, q0


def best_of(repeats: int, fn):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=200, help="map rows = cols")
    parser.add_argument("--angles", type=int, default=100, help="rocking angles")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    step = 0.1
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    maps, moments, drift, q0 = synthetic_maps(args.size, args.angles, step)
    settings = DriftSettings(mode="auto")
    t_est, est = best_of(args.repeats, lambda: estimate_drift(maps, (step, step), settings))
    truth = (drift - drift[est.reference_angle]) / step
    err = np.abs(est.shifts_px - truth)[est.confident]
    t_shift, (corrected, complete) = best_of(
        args.repeats, lambda: shift_moments(moments, est.shifts_px, (args.size, args.size)))
    scan = ScanDescription(shape=(args.size, args.size),
                           extents_um=((0.0, (args.size - 1) * step),) * 2,
                           rocking_angles=tuple(np.linspace(-0.3, 0.3, args.angles)))
    corrected_maps = derive_maps(corrected, (0.0, 0.0, q0), scan.shape)
    t_part, table = best_of(args.repeats, lambda: find_particles(corrected_maps, scan))
    mib = moments.nbytes / 2**20
    print(f"map {args.size} x {args.size}, {args.angles} rocking angles, drift span "
          f"{np.ptp(truth[:, 0]):.1f} x {np.ptp(truth[:, 1]):.1f} px")
    print(f"estimate_drift   {t_est * 1e3:8.1f} ms  ({est.confident.sum()} confident angles, "
          f"error max {err.max():.3f} px, RMS {np.sqrt(np.mean(err ** 2)):.3f} px)")
    print(f"shift_moments    {t_shift * 1e3:8.1f} ms  ({mib:.0f} MiB of moments, "
          f"{(~complete).sum()} edge pixels dropped)")
    print(f"find_particles   {t_part * 1e3:8.1f} ms")
    print(format_particles(table))
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
