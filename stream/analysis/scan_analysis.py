"""Everything derived from a scan's sums, in one call: drift-corrected maps, q-ROI maps,
particles, and at the end of the scan the q-ROI suggestion and the Gaussian fits.

The live processor, the direct file processing and the results file all go through
:func:`analyse`, so a map means the same thing wherever it is shown. Pure computation: it
reads the accumulator's arrays and returns new ones.

Order of the steps:

1. drift (:mod:`sxdm_stream.analysis.drift`): estimated from the per-angle intensity maps (or given),
   applied to the per-angle moments and to the per-angle q-ROI moments alike;
2. maps (:func:`sxdm_stream.core.maps.derive_maps`) of the corrected moments;
3. q-ROI maps (:func:`sxdm_stream.core.qroi.roi_maps`), each ROI with its own mask and d_ref;
4. particles (:func:`sxdm_stream.analysis.particles.find_particles`) of the corrected maps;
4b. phases (:func:`sxdm_stream.analysis.phases.analyse_phases`), when the accumulator keeps q
   shells: per-phase d and fraction per map pixel and per particle, in the mask and with the
   particle labels of the corrected maps (the shells themselves are per map pixel, not per
   angle, so not drift-corrected);
5. ``final`` only, when the q histogram is kept: the ROI suggestion from the summed
   histogram (:func:`sxdm_stream.analysis.roi_suggest.suggest_rois`) and, when asked for, the Gaussian
   fits of every masked pixel's projections (:func:`sxdm_stream.analysis.fits.fit_projections`). The
   histogram is per map pixel, not per angle, so these two are not drift-corrected.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sxdm_stream.analysis.drift import DriftEstimate, DriftSettings, drift_for_scan, shift_moments
from sxdm_stream.analysis.fits import ProjectionFits, fit_projections
from sxdm_stream.analysis.particles import ParticleSettings, ParticleTable, find_particles
from sxdm_stream.analysis.phases import PhaseAnalysis, PhaseSettings, analyse_phases
from sxdm_stream.analysis.roi_suggest import RoiSuggestion, suggest_rois
from sxdm_stream.core.accumulate import Accumulator
from sxdm_stream.core.maps import DEFAULT_MASK_FRACTION, MapSet, derive_maps
from sxdm_stream.core.qroi import roi_maps
from sxdm_stream.errors import ConfigError


@dataclass(frozen=True)
class MapSettings:
    """Section ``[maps]`` of the configuration: how maps are derived from the moments.

    Parameters
    ----------
    mask_fraction : map pixels whose integrated intensity reaches this fraction of the
        map's maximum are in the mask (0 to 1); each q-ROI's mask uses its own maximum.
    d_ref_a : the d-spacing (Angstrom) strain is measured against; None = the mean d over
        the mask (each q-ROI: its own mean).
    """

    mask_fraction: float = DEFAULT_MASK_FRACTION
    d_ref_a: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.mask_fraction <= 1.0:
            raise ConfigError(f"maps.mask_fraction must lie between 0 and 1, "
                              f"got {self.mask_fraction}")
        if self.d_ref_a is not None and not self.d_ref_a > 0:
            raise ConfigError(f"maps.d_ref_a must be positive (Angstrom; leave it out for the "
                              f"mean d over the mask), got {self.d_ref_a}")


@dataclass(frozen=True)
class FitSettings:
    """Section ``[fits]``: Gaussian fits of every masked pixel's q projections at the end of a
    scan (~1 s per 10,000 map pixels); they need the q histogram."""

    enabled: bool = False


@dataclass(frozen=True)
class RoiSuggestionSettings:
    """Section ``[roi_suggestion]``: the q-ROI suggestion from the summed histogram at the end
    of a scan (``sxdm-stream rois`` prints it as configuration); it needs the q histogram."""

    enabled: bool = True


@dataclass(frozen=True)
class AnalysisSettings:
    """What is derived from the sums (see the module docstring): the sections of the
    configuration that :func:`analyse` reads (``Config.analysis`` gathers them)."""

    maps: MapSettings = field(default_factory=MapSettings)
    drift: DriftSettings = field(default_factory=DriftSettings)
    particles: ParticleSettings = field(default_factory=ParticleSettings)
    fits: FitSettings = field(default_factory=FitSettings)
    roi_suggestion: RoiSuggestionSettings = field(default_factory=RoiSuggestionSettings)
    phases: PhaseSettings = field(default_factory=PhaseSettings)


@dataclass(frozen=True)
class ScanAnalysis:
    """The derived results of one scan (or of the part measured so far)."""

    maps: MapSet
    drift: DriftEstimate | None
    roi_maps: dict[str, MapSet]
    particles: ParticleTable
    roi_suggestion: RoiSuggestion | None = None
    fits: ProjectionFits | None = None
    rois: tuple = ()                  # the QRoi of each entry of roi_maps, in order
    phases: PhaseAnalysis | None = None   # with q shells (and phases.enabled) only


def analyse(accumulator: Accumulator, settings: AnalysisSettings | None = None,
            angles_done: int | None = None, final: bool = False,
            drift: DriftEstimate | None = None,
            previous_phases: tuple[tuple[int, float], ...] | None = None) -> ScanAnalysis:
    """Derive everything from an accumulator's sums.

    Parameters
    ----------
    accumulator : the sums of one scan (moments per angle, q-ROI moments, histogram).
    settings : what to derive.
    angles_done : rocking angles fully measured, for the drift estimate during a scan
        (None: all).
    final : the scan is over: also the ROI suggestion and the fits.
    drift : a drift estimate already made for these sums (the live processor estimates once
        per finished rocking angle); None: estimated here as configured.
    previous_phases : the previous scan's ``PhaseAnalysis.phase_list()`` ((phase_id, d)
        pairs), so that a phase keeps its id across a series; None: ids from 0.
    """
    s = settings or AnalysisSettings()
    setup = accumulator.setup
    scan = setup.scan
    moments, rois = accumulator.moments, setup.q_rois
    roi_moments = accumulator.roi_moments if rois else None
    estimate = drift if drift is not None else drift_for_scan(moments, scan, s.drift, angles_done)
    if estimate is not None:
        drop = s.drift.drop_incomplete
        moments, _ = shift_moments(moments, estimate.shifts_px, scan.shape, drop)
        if roi_moments is not None:
            roi_moments = np.stack([shift_moments(roi_moments[:, :, k], estimate.shifts_px,
                                                  scan.shape, drop)[0]
                                    for k in range(len(rois))], axis=2)
    maps = derive_maps(moments, setup.q_ref, scan.shape, s.maps.mask_fraction, s.maps.d_ref_a)
    by_roi = (roi_maps(roi_moments, rois, setup.q_ref, scan.shape, s.maps.mask_fraction,
                       s.maps.d_ref_a)
              if roi_moments is not None else {})
    particles = find_particles(maps, scan, s.particles)
    phases = None
    if setup.shells is not None and s.phases.enabled:
        phases = analyse_phases(accumulator.shell_moments, setup.shells, setup.q_ref, maps.mask,
                                particles.labels, s.phases, previous_phases)
    suggestion = fits = None
    if final and setup.keep_histogram:
        if s.roi_suggestion.enabled:
            suggestion = suggest_rois(accumulator.histogram.sum(axis=0), setup.grid)
        if s.fits.enabled:
            fits = fit_projections(accumulator.histogram, setup.grid, points=maps.mask.ravel())
    return ScanAnalysis(maps, estimate, by_roi, particles, suggestion, fits, tuple(rois),
                        phases)
