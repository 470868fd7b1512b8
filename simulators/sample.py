"""Simulated SXDM sample: crystalline particles with strain fields and tilt sub-domains.

Every field is a continuous function of the sample position (micrometres), so a drifting
sample and a finer or coarser map sample the same object.

Each particle has an elliptical footprint whose thickness (hence diffracted intensity) falls
smoothly to zero at the rim, a base d-spacing, a smooth strain field (a radial term plus a
plane wave), and tilt sub-domains: Voronoi cells around seeds inside the footprint, each with
its own misorientation of the lattice planes, plus a gentle bending across the particle. The
Bragg peak of a map point is a 3D Gaussian in q centred on the local scattering vector, with
separate widths along Q (radial: finite size and strain gradients) and across Q (transverse:
mosaicity).

A particle may hold two phases (a two-phase transition, such as LiNiO2's H2-H3 on charge):
its second phase, of another d-spacing, lies beyond a planar front crossing the footprint,
smoothed over ``front_width_um`` so that the map pixels on the front hold both. Each phase is
a peak component of its own whose intensity is the particle's times the local phase fraction;
a particle without a second phase is one component, as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Particle:
    """One single-crystal particle.

    Parameters
    ----------
    center_um : (row, col) position of the footprint centre, micrometres.
    semi_axes_um : semi-axes of the elliptical footprint along rotated (row, col).
    rotation_deg : rotation of the footprint.
    d_spacing_a : unstrained d-spacing of the reflection, Angstrom.
    strain_amplitude : amplitude of the strain field (relative, 4e-4 = 400 microstrain).
    strain_period_um : period of the plane-wave part of the strain field.
    n_domains : number of tilt sub-domains.
    max_tilt_deg : largest misorientation of a sub-domain.
    bend_deg : extra tilt from bending, from one edge of the particle to the other.
    sigma_radial : Gaussian sigma of the peak along Q, 1/Angstrom.
    sigma_transverse : Gaussian sigma of the peak across Q, 1/Angstrom.
    counts : integrated counts of the thickest point over the whole rocking scan.
    seed : seeds the domain layout and tilts.
    """

    center_um: tuple[float, float] = (2.0, 1.9)
    semi_axes_um: tuple[float, float] = (1.55, 1.25)
    rotation_deg: float = 20.0
    d_spacing_a: float = 14.2 / 3.0
    strain_amplitude: float = 4e-4
    strain_period_um: float = 2.2
    n_domains: int = 4
    max_tilt_deg: float = 0.1
    bend_deg: float = 0.03
    sigma_radial: float = 1.0e-3
    sigma_transverse: float = 1.5e-3
    counts: float = 2.0e5
    seed: int = 1
    second_d_spacing_a: float | None = None
    front_angle_deg: float = 0.0
    front_position_um: float = 0.0
    front_width_um: float = 0.4

    def local_frame(self, rows_um: np.ndarray, cols_um: np.ndarray):
        """Coordinates in the footprint's frame, scaled so the rim is at radius 1."""
        a = np.deg2rad(self.rotation_deg)
        dr, dc = rows_um - self.center_um[0], cols_um - self.center_um[1]
        u = (np.cos(a) * dr + np.sin(a) * dc) / self.semi_axes_um[0]
        v = (-np.sin(a) * dr + np.cos(a) * dc) / self.semi_axes_um[1]
        return u, v

    def domain_seeds(self) -> tuple[np.ndarray, np.ndarray]:
        """Seeds (n, 2) in the unit-disk frame and their tilts (n, 2) in degrees (about x, y)."""
        rng = np.random.default_rng(self.seed)
        radius = np.sqrt(rng.uniform(0.0, 0.8, self.n_domains))
        angle = rng.uniform(0.0, 2 * np.pi, self.n_domains)
        seeds = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
        direction = rng.uniform(0.0, 2 * np.pi, self.n_domains)
        magnitude = self.max_tilt_deg * np.sqrt(rng.uniform(0.2, 1.0, self.n_domains))
        tilts = np.stack([magnitude * np.cos(direction), magnitude * np.sin(direction)], axis=1)
        return seeds, tilts

    def second_phase_fraction(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Local fraction of the second phase at footprint-frame coordinates (u, v) (see
        :meth:`local_frame`): a C1 smooth step across the front, exactly 0 and 1 away from it
        (0 everywhere without a second phase)."""
        if self.second_d_spacing_a is None:
            return np.zeros(np.shape(u))
        a = np.deg2rad(self.front_angle_deg)
        along = np.cos(a) * u * self.semi_axes_um[0] + np.sin(a) * v * self.semi_axes_um[1]
        s = np.clip((along - self.front_position_um) / self.front_width_um + 0.5, 0.0, 1.0)
        return s * s * (3.0 - 2.0 * s)

    def fields(self, rows_um: np.ndarray, cols_um: np.ndarray) -> dict[str, np.ndarray]:
        """Intensity (counts), d-spacing (A), tilt about x and y (deg) at the given positions,
        and the local fraction of the second phase (``second_fraction``, 0 without one)."""
        u, v = self.local_frame(np.asarray(rows_um, float), np.asarray(cols_um, float))
        r2 = u * u + v * v
        thickness = np.sqrt(np.clip(1.0 - r2, 0.0, None))
        strain = self.strain_amplitude * (
            0.6 * np.cos(np.pi * r2) + 0.4 * np.sin(2 * np.pi * (u * self.semi_axes_um[0]) / self.strain_period_um)
        )
        seeds, tilts = self.domain_seeds()
        dist = (u[..., None] - seeds[:, 0]) ** 2 + (v[..., None] - seeds[:, 1]) ** 2
        domain = np.argmin(dist, axis=-1)
        tilt = tilts[domain] + self.bend_deg * 0.5 * np.stack([u, v], axis=-1)
        return {
            "intensity": self.counts * thickness,
            "d_spacing": self.d_spacing_a * (1.0 + strain),
            "tilt_x": tilt[..., 0],
            "tilt_y": tilt[..., 1],
            "domain": domain,
            "second_fraction": self.second_phase_fraction(u, v),
            "strain": strain,
        }


@dataclass(frozen=True)
class Sample:
    """Particles on a substrate.

    Footprints may overlap: particles stacked through the beam (at different depths, or one
    on another) each diffract their own Bragg peak, and their counts add (:meth:`components`).
    :meth:`peaks` describes one peak per position, that of the last particle there.

    ``plane_normal`` is the sample-frame direction of the lattice-plane normal of the measured
    reflection for an untilted particle (z: planes parallel to the surface, the symmetric case).
    """

    particles: tuple[Particle, ...] = (Particle(),)
    plane_normal: tuple[float, float, float] = (0.0, 0.0, 1.0)

    def component_owners(self) -> list[tuple[int, int]]:
        """(particle index, phase index) of each entry of :meth:`components`, in order: one
        phase (0) per particle, two (0 then 1) for a particle with a second phase."""
        return [(i, phase) for i, p in enumerate(self.particles)
                for phase in range(1 if p.second_d_spacing_a is None else 2)]

    def components(self, rows_um: np.ndarray, cols_um: np.ndarray) -> list[dict[str, np.ndarray]]:
        """The peak of every particle phase at positions (any shape S), one dict per entry of
        :meth:`component_owners`.

        Each dict holds ``intensity`` S (integrated counts, 0 off the particle or the phase),
        ``q`` S+(3,) (1/A), ``precision`` S+(3, 3) (inverse covariance of the Gaussian peak,
        1/A^-2), ``d_spacing`` S (NaN where the intensity is 0), ``sigma_radial`` and
        ``sigma_transverse`` S.
        """
        rows_um = np.asarray(rows_um, float)
        normal = np.asarray(self.plane_normal, float)
        out = []
        for p in self.particles:
            f = p.fields(rows_um, cols_um)
            unit = tilted_normals(normal, np.stack([f["tilt_x"], f["tilt_y"]], -1))
            outer = unit[..., :, None] * unit[..., None, :]
            precision = outer / p.sigma_radial ** 2 + (np.eye(3) - outer) / p.sigma_transverse ** 2
            if p.second_d_spacing_a is None:
                phases = [(f["intensity"], f["d_spacing"])]
            else:   # both phases share the particle's strain field and tilts
                second = f["second_fraction"]
                phases = [(f["intensity"] * (1.0 - second), f["d_spacing"]),
                          (f["intensity"] * second, p.second_d_spacing_a * (1.0 + f["strain"]))]
            for intensity, d in phases:
                out.append({"intensity": intensity, "q": (2 * np.pi / d)[..., None] * unit,
                            "precision": precision,
                            "d_spacing": np.where(intensity > 0, d, np.nan),
                            "sigma_radial": np.full(rows_um.shape, p.sigma_radial),
                            "sigma_transverse": np.full(rows_um.shape, p.sigma_transverse)})
        return out

    def peaks(self, rows_um: np.ndarray, cols_um: np.ndarray) -> dict[str, np.ndarray]:
        """Peak parameters at positions (any shape S): those of the last particle there (of
        its phase with the most counts there; the intensity is that of all its phases).

        Returns ``intensity`` S (integrated counts, 0 off the particles), ``q`` S+(3,) (1/A),
        ``precision`` S+(3, 3) (inverse covariance of the Gaussian peak, 1/A^-2),
        ``d_spacing`` S and ``particle`` S (index, -1 = none).
        """
        rows_um = np.asarray(rows_um, float)
        shape = rows_um.shape
        untilted = tilted_normals(np.asarray(self.plane_normal, float), np.zeros(shape + (2,)))
        peaks = {"intensity": np.zeros(shape), "q": untilted * 2 * np.pi,
                 "precision": np.broadcast_to(np.eye(3), shape + (3, 3)).copy(),
                 "d_spacing": np.full(shape, np.nan), "particle": np.full(shape, -1),
                 "sigma_radial": np.ones(shape), "sigma_transverse": np.ones(shape)}
        components = self.components(rows_um, cols_um)
        owners = [owner for owner, _phase in self.component_owners()]
        for index in range(len(self.particles)):
            mine = [c for c, owner in zip(components, owners) if owner == index]
            intensities = np.stack([c["intensity"] for c in mine])
            total = intensities.sum(axis=0)
            inside = total > 0
            dominant = np.argmax(intensities, axis=0)
            for phase, component in enumerate(mine):
                here = inside & (dominant == phase)
                for name, value in component.items():
                    peaks[name][here] = value[here]
            peaks["intensity"][inside] = total[inside]
            peaks["particle"][inside] = index
        return peaks


def tilted_normals(normal: np.ndarray, tilt_deg: np.ndarray) -> np.ndarray:
    """Rotate ``normal`` about sample x by tilt[..., 0] then about y by tilt[..., 1] (degrees)."""
    ax, ay = np.deg2rad(tilt_deg[..., 0]), np.deg2rad(tilt_deg[..., 1])
    n = normal / np.linalg.norm(normal)
    # R_y(ay) . R_x(ax) . n, right-handed
    y1 = np.cos(ax) * n[1] - np.sin(ax) * n[2]
    z1 = np.sin(ax) * n[1] + np.cos(ax) * n[2]
    x1 = np.broadcast_to(n[0], ax.shape)
    x2 = np.cos(ay) * x1 + np.sin(ay) * z1
    z2 = -np.sin(ay) * x1 + np.cos(ay) * z1
    return np.stack([x2, y1, z2], axis=-1)
