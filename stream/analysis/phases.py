"""Phases of a scan from its q-shell moments: per-phase d and fraction, per map pixel and per
particle, and where the single centre of mass averages two phases. Pure, no I/O.

During the H2 -> H3 transition of LiNiO2 two phases coexist inside one particle: a map
pixel's diffraction holds two peaks ~4.5 % apart along |Q|, and the centre of mass of all its
counts gives one d that neither phase has. The accumulator's q shells
(:mod:`sxdm_stream.core.shells`: S0 and S1 of dq = q - q_ref per |Q| slice and map pixel)
separate them exactly: summing a phase's slices gives the moments of that phase's counts
alone, over raw detector pixels (no binning bias).

The rules:

* **profile**: counts per slice, summed over the map pixels of the intensity mask;
* **peaks**: maxima of the profile smoothed by a Gaussian of ``smoothing`` slices, with a
  prominence of at least ``prominence`` times the highest smoothed value, at least
  ``min_separation`` slices apart; the ``max_phases`` most prominent are kept;
* **ranges**: neighbouring peaks are split at the smallest smoothed value between them; from
  its peak, a phase's range extends on each side while the smoothed profile stays above
  ``background + tail_fraction * (peak - background)`` (background: the 10th percentile of the
  smoothed profile), and never past a split. Slices outside every range are background and
  belong to no phase (their counts still count in a pixel's total, so in the fractions);
* a phase must hold at least ``min_fraction`` of the profile's counts: weaker ones are dropped
  and the ranges of the others found again without them;
* **per map pixel**, for each phase: intensity (S0 of its slices), fraction (that S0 over the
  S0 of all the pixel's slices) and d = 2 pi / |q_ref + S1/S0|; d is NaN outside the mask and
  where the phase holds less than ``min_fraction`` of the pixel's counts. ``mixed``: pixels of
  the mask where at least two phases each hold ``mixed_fraction`` of the counts: there the
  single-COM maps average two phases;
* **per particle** (the labels of :mod:`sxdm_stream.analysis.particles`), for each phase: d
  from the moments summed over the particle's pixels (the exact centre of mass of that
  phase's counts in the particle), its intensity and fraction of the particle's counts (d NaN
  below ``min_fraction``);
* **continuity across a series** (:func:`assign_phase_ids`): each phase takes the
  ``phase_id`` of the previous scan's phase nearest in d within ``continuity_tolerance``
  (relative), else a new id, so a phase keeps its id while its peak moves. The caller keeps
  the previous scan's :meth:`PhaseAnalysis.phase_list`.

The q shells are per map pixel, not per rocking angle: the phase maps are not
drift-corrected (like the q histogram).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.signal import find_peaks

from sxdm_stream.core.shells import QShells
from sxdm_stream.errors import ConfigError

#: columns of the per-particle phase table (one row per particle and phase): name -> (dtype, units)
PARTICLE_PHASE_FIELDS: dict[str, tuple[str, str]] = {
    "label": ("i4", ""),
    "phase_id": ("i4", ""),
    "d_a": ("f8", "angstrom"),
    "fraction": ("f8", ""),
    "intensity": ("f8", "counts"),
}
PARTICLE_PHASE_DTYPE = np.dtype([(n, t) for n, (t, _u) in PARTICLE_PHASE_FIELDS.items()])
#: background level of the profile: this percentile of its smoothed values
_BACKGROUND_PERCENTILE = 10.0


@dataclass(frozen=True)
class PhaseSettings:
    """Section ``[phases]``: phases from the q-shell moments (needs
    ``accumulation.q_shells > 0``; the rules in :mod:`sxdm_stream.analysis.phases`).

    Parameters
    ----------
    enabled : derive the phases when the accumulator has q shells.
    max_phases : at most this many phases.
    min_fraction : a phase holds at least this fraction of the counts (of the masked map to
        exist; of a map pixel or particle for its d there).
    mixed_fraction : a map pixel is mixed when two phases each hold this fraction of its counts.
    min_separation : peaks closer than this many slices are one phase.
    min_spacing : peaks whose d differ by less than this (relative) are one phase too: the
        particles of one solid solution at slightly different compositions (a particle that
        lags) give neighbouring peaks, while a first-order transition is a jump (4.5 % in d
        for H2 -> H3 of LiNiO2); 0 keeps only ``min_separation``.
    prominence : a peak rises at least this fraction of the highest peak above its surroundings.
    smoothing : sigma of the Gaussian smoothing of the profile, slices (0: none).
    tail_fraction : a phase's range ends where the smoothed profile falls to this fraction of
        its peak height above the background.
    continuity_tolerance : relative d difference (|d - d_previous| / d_previous) up to which a
        phase keeps the id of the previous scan's phase.
    """

    enabled: bool = True
    max_phases: int = 3
    min_fraction: float = 0.03
    mixed_fraction: float = 0.1
    min_separation: int = 3
    min_spacing: float = 0.01
    prominence: float = 0.05
    smoothing: float = 1.0
    tail_fraction: float = 0.002
    continuity_tolerance: float = 0.01

    def __post_init__(self) -> None:
        if self.max_phases < 1 or self.min_separation < 1:
            raise ConfigError("phases.max_phases and phases.min_separation must be at least 1")
        for name in ("min_fraction", "mixed_fraction", "prominence", "tail_fraction",
                     "min_spacing"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"phases.{name} must lie between 0 and 1, "
                                  f"got {getattr(self, name)}")
        if self.smoothing < 0 or not self.continuity_tolerance > 0:
            raise ConfigError("phases.smoothing must be >= 0 and continuity_tolerance positive")


@dataclass(frozen=True)
class Phase:
    """One phase of a map: slices ``first_shell <= k < stop_shell``, |Q| from ``q_lo`` to
    ``q_hi`` (1/Angstrom); ``d_a`` (Angstrom) and ``fraction`` of the masked map's counts from
    the summed moments of its slices; ``intensity`` its counts."""

    phase_id: int
    first_shell: int
    stop_shell: int
    peak_shell: int
    q_lo: float
    q_hi: float
    d_a: float
    fraction: float
    intensity: float


@dataclass(frozen=True)
class PhaseAnalysis:
    """The phases of one scan; per-phase maps are (n_phases, rows, cols), in the order of
    ``phases`` (increasing |Q|)."""

    shells: QShells
    profile: np.ndarray          # (n_shells,) counts per slice over the masked map
    phases: tuple[Phase, ...]
    intensity: np.ndarray        # counts of each phase, every map pixel
    fraction: np.ndarray         # of the pixel's counts; NaN outside the mask
    d_spacing: np.ndarray        # Angstrom; NaN outside the mask and below min_fraction
    mixed: np.ndarray            # (rows, cols) bool
    particles: np.ndarray        # PARTICLE_PHASE_DTYPE, one row per particle and phase

    @property
    def n_mixed(self) -> int:
        """Map pixels whose single centre of mass averages two phases."""
        return int(np.count_nonzero(self.mixed))

    def phase_list(self) -> tuple[tuple[int, float], ...]:
        """(phase_id, d_a) of each phase: the ``previous`` of the next scan's analysis."""
        return tuple((p.phase_id, p.d_a) for p in self.phases)


# ---- the phases of a profile ---------------------------------------------------------------
def smooth_profile(profile: np.ndarray, sigma: float) -> np.ndarray:
    """The profile smoothed by a Gaussian of ``sigma`` slices (its end values extended, so a
    peak in an end slice stays there)."""
    profile = np.asarray(profile, float)
    return gaussian_filter1d(profile, sigma, mode="nearest") if sigma > 0 else profile.copy()


def _candidate_peaks(smoothed: np.ndarray, s: PhaseSettings) -> np.ndarray:
    top = float(smoothed.max(initial=0.0))
    if not top > 0:
        return np.zeros(0, np.int64)
    padded = np.pad(smoothed, 1)                   # a peak in the first or last slice counts
    peaks, props = find_peaks(padded, prominence=s.prominence * top, distance=s.min_separation)
    strongest = np.argsort(props["prominences"])[::-1][:s.max_phases]
    return np.sort(peaks[strongest] - 1)


def _ranges(smoothed: np.ndarray, peaks: np.ndarray, tail_fraction: float) -> list[tuple[int, int]]:
    """[first, stop) of each peak's range (see the module docstring)."""
    background = float(np.percentile(smoothed, _BACKGROUND_PERCENTILE))
    splits = [int(a + np.argmin(smoothed[a:b + 1])) for a, b in zip(peaks[:-1], peaks[1:])]
    lower = [0] + [m + 1 for m in splits]         # the minimum itself goes to the lower-|Q| phase
    upper = [m + 1 for m in splits] + [len(smoothed)]
    out = []
    for p, lo, hi in zip(peaks, lower, upper):
        floor = background + tail_fraction * (smoothed[p] - background)
        first = p
        while first > lo and smoothed[first - 1] > floor:
            first -= 1
        stop = p + 1
        while stop < hi and smoothed[stop] > floor:
            stop += 1
        out.append((int(first), int(stop)))
    return out


def find_phase_ranges(profile: np.ndarray,
                      settings: PhaseSettings | None = None) -> list[tuple[int, int, int]]:
    """(first, stop, peak) slices of each phase of a |Q| profile, by increasing |Q|."""
    s = settings or PhaseSettings()
    profile = np.asarray(profile, float)
    smoothed = smooth_profile(profile, s.smoothing)
    peaks = _candidate_peaks(smoothed, s)
    total = profile.sum()
    while len(peaks):
        ranges = _ranges(smoothed, peaks, s.tail_fraction)
        keep = np.array([profile[a:b].sum() >= s.min_fraction * total for a, b in ranges])
        if keep.all():
            return [(a, b, int(p)) for (a, b), p in zip(ranges, peaks)]
        peaks = peaks[keep]
    return []


def assign_phase_ids(d_a: Sequence[float], previous: Sequence[tuple[int, float]] | None,
                     tolerance: float = 0.01) -> list[int]:
    """Series-wide ids of this scan's phases (d in Angstrom, any order).

    Each phase takes the id of the ``previous`` phase ``(phase_id, d_a)`` nearest in d, if
    within ``tolerance`` relative; pairs are taken closest first and each previous id at most
    once. The others get new ids above every id of ``previous`` and of this scan, by
    decreasing d. Without ``previous``: 0, 1, ... by decreasing d.
    """
    d_a = [float(d) for d in d_a]
    ids: list[int | None] = [None] * len(d_a)
    previous = list(previous or ())
    pairs = sorted((abs(d - dp) / dp, i, j) for i, d in enumerate(d_a)
                   for j, (_id, dp) in enumerate(previous) if np.isfinite(d))
    used = set()
    for gap, i, j in pairs:
        if gap <= tolerance and ids[i] is None and j not in used:
            ids[i] = int(previous[j][0])
            used.add(j)
    next_id = max([int(p[0]) for p in previous] + [-1]) + 1
    for i in sorted(range(len(d_a)), key=lambda k: -d_a[k] if np.isfinite(d_a[k]) else 0.0):
        if ids[i] is None:
            ids[i] = next_id
            next_id += 1
    return [int(i) for i in ids]


# ---- moments of the phases -----------------------------------------------------------------
def phase_moments(shell_moments: np.ndarray, ranges) -> np.ndarray:
    """(n_points, n_phases, 4): the shell moments summed over each phase's slices."""
    out = np.zeros((shell_moments.shape[0], len(ranges), shell_moments.shape[2]))
    for k, (first, stop, *_peak) in enumerate(ranges):
        out[:, k] = shell_moments[:, first:stop].sum(axis=1)
    return out


def d_from_moments(moments: np.ndarray, q_ref) -> np.ndarray:
    """d = 2 pi / |q_ref + S1/S0| (Angstrom) of moments (..., 4); NaN where S0 <= 0."""
    s0 = moments[..., 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        com = np.asarray(q_ref, float) + moments[..., 1:4] / s0[..., None]
        d = 2.0 * np.pi / np.linalg.norm(com, axis=-1)
    return np.where(s0 > 0, d, np.nan)


def _fractions(part: np.ndarray, total: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, part / total, np.nan)


def particle_phase_table(moments: np.ndarray, totals: np.ndarray, labels: np.ndarray,
                         phase_ids: Sequence[int], q_ref, min_fraction: float) -> np.ndarray:
    """One row per (particle, phase): d of the phase's summed moments over the particle's
    pixels, its fraction of the particle's counts (NaN d below ``min_fraction``), counts.

    Parameters
    ----------
    moments : (n_points, n_phases, 4) per-pixel phase moments.
    totals : (n_points,) counts of every slice of each pixel.
    labels : (rows, cols) particle labels, 0 = none.
    """
    flat = np.asarray(labels).ravel()
    rows = []
    for label in range(1, int(flat.max(initial=0)) + 1):
        region = flat == label
        summed = moments[region].sum(axis=0)                   # (n_phases, 4)
        fraction = _fractions(summed[:, 0], totals[region].sum())
        d = np.where(fraction >= min_fraction, d_from_moments(summed, q_ref), np.nan)
        rows += [(label, pid, d[k], fraction[k], summed[k, 0]) for k, pid in enumerate(phase_ids)]
    return np.array(rows, dtype=PARTICLE_PHASE_DTYPE)


def analyse_phases(shell_moments: np.ndarray, shells: QShells, q_ref, mask: np.ndarray,
                   labels: np.ndarray | None = None, settings: PhaseSettings | None = None,
                   previous: Sequence[tuple[int, float]] | None = None) -> PhaseAnalysis:
    """The phases of one scan from its q-shell moments.

    Parameters
    ----------
    shell_moments : (n_points, n_shells, 4) ``Accumulator.shell_moments``.
    shells : their slices (``ScanSetup.shells``).
    q_ref : the reference q of the moments (``ScanSetup.q_ref``), 1/Angstrom.
    mask : (rows, cols) bool, the intensity mask of the maps.
    labels : (rows, cols) particle labels (``ParticleTable.labels``); None: no particles.
    settings : the rules (:class:`PhaseSettings`).
    previous : the previous scan's ``PhaseAnalysis.phase_list()`` for the phase ids.
    """
    s = settings or PhaseSettings()
    # min_spacing (relative d, so relative |Q|) in slices at the middle of the shells
    spacing = int(np.ceil(s.min_spacing * float(np.mean(shells.centres)) / shells.step))
    if spacing > s.min_separation:
        s = replace(s, min_separation=spacing)
    shape = mask.shape
    keep = np.asarray(mask, bool).ravel()
    totals = shell_moments[..., 0].sum(axis=1)
    summed = shell_moments[keep].sum(axis=0)                    # (n_shells, 4)
    profile = summed[:, 0].copy()
    ranges = find_phase_ranges(profile, s)
    moments = phase_moments(shell_moments, ranges)              # (n_points, n_phases, 4)
    map_moments = phase_moments(summed[None], ranges)[0]
    map_d = d_from_moments(map_moments, q_ref)
    ids = assign_phase_ids(map_d, previous, s.continuity_tolerance)
    total = profile.sum()
    edges = shells.edges
    phases = tuple(Phase(pid, a, b, p, float(edges[a]), float(edges[b]), float(d),
                         float(m[0] / total), float(m[0]))
                   for pid, (a, b, p), d, m in zip(ids, ranges, map_d, map_moments))
    fraction = _fractions(moments[..., 0], totals[:, None])     # (n_points, n_phases)
    fraction[~keep] = np.nan
    d = np.where(fraction >= s.min_fraction, d_from_moments(moments, q_ref), np.nan)
    mixed = keep & (np.sum(fraction >= s.mixed_fraction, axis=1) >= 2)
    table = particle_phase_table(moments, totals, labels if labels is not None
                                 else np.zeros(shape, np.int32), ids, q_ref, s.min_fraction)

    def per_phase(a: np.ndarray) -> np.ndarray:
        return np.moveaxis(a, 1, 0).reshape((len(ranges),) + tuple(shape))

    return PhaseAnalysis(shells, profile, phases, per_phase(moments[..., 0]), per_phase(fraction),
                         per_phase(d), mixed.reshape(shape), table)


def format_phases(analysis: PhaseAnalysis) -> str:
    """The phases of a map and of its particles as text lines."""
    lines = [f"{len(analysis.phases)} phase(s), {analysis.n_mixed} map pixel(s) mixed:"]
    lines += [f"  phase {p.phase_id}: d {p.d_a:.5f} A, {p.fraction:6.1%} of the counts, "
              f"|Q| {p.q_lo:.4f}..{p.q_hi:.4f} 1/A" for p in analysis.phases]
    lines += [f"  particle {r['label']:2d} phase {r['phase_id']}: d {r['d_a']:.5f} A, "
              f"{r['fraction']:6.1%}" for r in analysis.particles]
    return "\n".join(lines)
