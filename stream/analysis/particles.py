"""Particles of a map: segmentation of the masked map and a per-particle table. Pure, no I/O.

A particle is a connected region of the intensity mask (4-connected by default) of at least
``min_pixels`` map pixels. For each, over its map pixels:

* area (pixels and square micrometres), centroid (micrometres, motor coordinates), total
  intensity;
* mean d-spacing (plain mean over the pixels, as the map's d_ref), mean and standard deviation
  of the strain (microstrain, against the map's d_ref);
* tilt: ``max_tilt_deg`` is the largest altitude (angle to the map's mean direction Qbar) of
  its pixels; ``mean_tilt_deg`` and ``mean_tilt_azimuth_deg`` are the altitude and azimuth of
  the particle's mean direction (the mean of its unit vectors Q/|Q|), i.e. the circular mean
  of the pixels' azimuths weighted by their tilt, in the maps' azimuth convention;
  ``tilt_spread_deg`` is the largest angle between a pixel's Q and the particle's own mean
  direction: the extent of misorientation inside the particle, whatever the others do;
* ``n_domains``: tilt sub-domains, the connected regions left when neighbouring pixels whose
  Q directions differ by more than ``domain_misorientation_deg`` are separated, counting those
  of at least ``min_domain_pixels`` pixels. Inside a domain neighbours differ by the counting
  noise and gentle bending (~1e-3 degree per pixel on the simulated particles); between
  domains by tens of millidegrees.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from sxdm_stream.core.maps import MapSet
from sxdm_stream.core.scan import ScanDescription
from sxdm_stream.errors import ConfigError

#: columns of the particle table: name -> (dtype, units)
PARTICLE_FIELDS: dict[str, tuple[str, str]] = {
    "label": ("i4", ""),
    "area_px": ("i8", "pixels"),
    "area_um2": ("f8", "um^2"),
    "centroid_row_um": ("f8", "um"),
    "centroid_col_um": ("f8", "um"),
    "intensity": ("f8", "counts"),
    "mean_d_a": ("f8", "angstrom"),
    "mean_strain": ("f8", "microstrain"),
    "strain_std": ("f8", "microstrain"),
    "max_tilt_deg": ("f8", "degree"),
    "mean_tilt_deg": ("f8", "degree"),
    "mean_tilt_azimuth_deg": ("f8", "degree"),
    "tilt_spread_deg": ("f8", "degree"),
    "n_domains": ("i4", ""),
}
PARTICLE_DTYPE = np.dtype([(name, dtype) for name, (dtype, _units) in PARTICLE_FIELDS.items()])


@dataclass(frozen=True)
class ParticleSettings:
    """How particles and their tilt sub-domains are found.

    Parameters
    ----------
    min_pixels : smallest particle, map pixels.
    connectivity : 1 = pixels sharing an edge are connected, 2 = corners too.
    domain_misorientation_deg : neighbouring pixels whose Q directions differ by more than
        this belong to different tilt sub-domains.
    min_domain_pixels : smallest sub-domain counted.
    """

    min_pixels: int = 10
    connectivity: int = 1
    domain_misorientation_deg: float = 0.01
    min_domain_pixels: int = 5

    def __post_init__(self) -> None:
        if self.min_pixels < 1 or self.min_domain_pixels < 1:
            raise ConfigError("min_pixels and min_domain_pixels must be at least 1")
        if self.connectivity not in (1, 2):
            raise ConfigError(f"connectivity must be 1 or 2, got {self.connectivity}")
        if not self.domain_misorientation_deg > 0:
            raise ConfigError("domain_misorientation_deg must be positive")


@dataclass(frozen=True)
class ParticleTable:
    """The particles of one map.

    ``records`` is a structured array (one row per particle, columns :data:`PARTICLE_FIELDS`);
    ``labels`` (rows, cols) gives each map pixel's particle label, 0 = none.
    """

    records: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.records)

    def to_records(self) -> list[dict]:
        """One JSON-able dict per particle (NaN becomes None)."""
        out = []
        for row in self.records:
            rec = {}
            for name in PARTICLE_DTYPE.names:
                value = row[name].item()
                rec[name] = None if isinstance(value, float) and not np.isfinite(value) else value
            out.append(rec)
        return out


def label_particles(mask: np.ndarray, min_pixels: int = 10, connectivity: int = 1) -> np.ndarray:
    """Connected regions of ``mask`` with at least ``min_pixels`` pixels, labelled 1..n in
    order of first appearance (row by row); 0 elsewhere."""
    structure = ndimage.generate_binary_structure(2, connectivity)
    labels, n = ndimage.label(np.asarray(mask, dtype=bool), structure=structure)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_pixels
    keep[0] = False
    relabel = np.zeros(n + 1, dtype=np.int32)
    relabel[keep] = np.arange(1, int(keep.sum()) + 1)
    return relabel[labels]


def count_tilt_domains(com: np.ndarray, region: np.ndarray, threshold_deg: float,
                       min_pixels: int) -> int:
    """Tilt sub-domains of one region: pixels joined to their edge neighbours whose Q
    directions differ by less than ``threshold_deg``; components of >= ``min_pixels`` counted.

    Parameters
    ----------
    com : (rows, cols, 3) centre of mass Q.
    region : (rows, cols) bool, the particle's pixels (finite ``com`` there).
    """
    index = np.full(region.shape, -1)
    index[region] = np.arange(int(region.sum()))
    unit = com / np.linalg.norm(com, axis=-1, keepdims=True)
    pairs = []
    for a, b in (((slice(None), slice(None, -1)), (slice(None), slice(1, None))),
                 ((slice(None, -1), slice(None)), (slice(1, None), slice(None)))):
        both = region[a] & region[b]
        ua, ub = unit[a][both], unit[b][both]
        angle = np.rad2deg(np.arctan2(np.linalg.norm(np.cross(ua, ub), axis=-1),
                                      np.sum(ua * ub, axis=-1)))
        close = angle < threshold_deg
        pairs.append((index[a][both][close], index[b][both][close]))
    src = np.concatenate([p[0] for p in pairs])
    dst = np.concatenate([p[1] for p in pairs])
    n = int(region.sum())
    graph = coo_matrix((np.ones(len(src)), (src, dst)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    return int(np.sum(np.bincount(component) >= min_pixels))


def _direction_angles(unit: np.ndarray, maps: MapSet) -> tuple[float, float]:
    """Altitude and azimuth (degrees) of a unit vector in the maps' tilt convention."""
    qbar, e1 = maps.mean_direction, maps.azimuth_reference
    e2 = np.cross(qbar, e1)
    cos_alt = float(np.clip(unit @ qbar, -1.0, 1.0))
    perp = unit - cos_alt * qbar
    altitude = float(np.rad2deg(np.arctan2(np.linalg.norm(perp), cos_alt)))
    azimuth = float(np.rad2deg(np.arctan2(unit @ e2, unit @ e1)) % 360.0)
    return altitude, azimuth


def _particle_row(label: int, region: np.ndarray, maps: MapSet, rows_um: np.ndarray,
                  cols_um: np.ndarray, pixel_um2: float, settings: ParticleSettings) -> tuple:
    com = maps.com[region]
    unit = com / np.linalg.norm(com, axis=-1, keepdims=True)
    mean_unit = unit.mean(axis=0)
    mean_unit /= np.linalg.norm(mean_unit)
    spread = np.rad2deg(np.arctan2(np.linalg.norm(np.cross(unit, mean_unit), axis=-1),
                                   unit @ mean_unit))
    mean_tilt, mean_azimuth = _direction_angles(mean_unit, maps)
    strain = maps.strain[region]
    n_domains = count_tilt_domains(maps.com, region, settings.domain_misorientation_deg,
                                   settings.min_domain_pixels)
    return (label, int(region.sum()), float(region.sum()) * pixel_um2,
            float(rows_um[region].mean()), float(cols_um[region].mean()),
            float(maps.intensity[region].sum()), float(maps.d_spacing[region].mean()),
            float(strain.mean()), float(strain.std()), float(np.max(maps.tilt_altitude[region])),
            mean_tilt, mean_azimuth, float(spread.max()), n_domains)


def find_particles(maps: MapSet, scan: ScanDescription,
                   settings: ParticleSettings | None = None) -> ParticleTable:
    """Segment the masked map into particles and tabulate them.

    Parameters
    ----------
    maps : the maps of one scan (drift-corrected or not).
    scan : gives the map's motor positions (micrometres).
    settings : minimum sizes and the sub-domain threshold.

    Returns
    -------
    ParticleTable, particles labelled 1..n row by row.
    """
    s = settings or ParticleSettings()
    valid = maps.mask & np.all(np.isfinite(maps.com), axis=-1)
    labels = label_particles(valid, s.min_pixels, s.connectivity)
    rows_um, cols_um = np.meshgrid(scan.axis_um(0), scan.axis_um(1), indexing="ij")
    steps = [np.ptp(scan.axis_um(d)) / (scan.shape[d] - 1) if scan.shape[d] > 1 else 0.0
             for d in (0, 1)]
    pixel_um2 = float(steps[0] * steps[1])
    rows = [_particle_row(label, labels == label, maps, rows_um, cols_um, pixel_um2, s)
            for label in range(1, int(labels.max()) + 1)]
    return ParticleTable(np.array(rows, dtype=PARTICLE_DTYPE), labels)


def format_particles(table: ParticleTable) -> str:
    """The particle table as aligned text lines."""
    head = (" #  area px   area um2  centroid um (row, col)   mean d (A)   strain ue (std)"
            "   max tilt  mean tilt (azim)  spread  domains")
    lines = [f"{len(table)} particle(s):", head]
    for r in table.records:
        lines.append(
            f"{r['label']:2d} {r['area_px']:8d} {r['area_um2']:10.3f}  ({r['centroid_row_um']:7.3f}, "
            f"{r['centroid_col_um']:7.3f})      {r['mean_d_a']:10.6f}  {r['mean_strain']:7.1f} "
            f"({r['strain_std']:5.1f})  {r['max_tilt_deg']:8.4f}  {r['mean_tilt_deg']:7.4f} "
            f"({r['mean_tilt_azimuth_deg']:5.1f})  {r['tilt_spread_deg']:6.4f}  {r['n_domains']:7d}")
    return "\n".join(lines)
