"""How the live processor runs, and the scan set-up of each series it receives.

:class:`LiveSettings` gathers what the live processor, the direct file processing and the
demo are told (from a :class:`sxdm_stream.config.Config` with :meth:`LiveSettings.from_config`);
:func:`setup_for_series` decides which scan and geometry a series is accumulated with (the
user's override, the series' own description, or the description of the control-system run
it is joined to).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

from sxdm_stream.analysis.drift import DriftSettings
from sxdm_stream.analysis.particles import ParticleSettings
from sxdm_stream.analysis.scan_analysis import AnalysisSettings
from sxdm_stream.core.accumulate import AccumulationSettings, ScanSetup
from sxdm_stream.core.geometry import Geometry, geometry_from_description
from sxdm_stream.core.maps import DEFAULT_MASK_FRACTION
from sxdm_stream.core.scan import ScanDescription
from sxdm_stream.errors import BadMessageError, ConfigError
from sxdm_stream.messages import SeriesStart
from sxdm_stream.pipeline.join import describes_scan
from sxdm_stream.sources.files.masks import combine_masks, read_mask

log = logging.getLogger(__name__)

POLICIES = ("block", "drop")


@dataclass(frozen=True)
class LiveSettings:
    """How the live processor runs. ``snapshot_hz`` bounds the snapshot rate; snapshots also
    never take more than ~20% of the worker's time (the interval grows on big maps).
    ``hold_frames`` bounds the frames kept waiting for positions from the control system
    (each a full detector frame: 512 Maxipix frames are 0.5 GB); ``join_timeout_s`` is how
    long a series ended by the detector waits for its run's remaining positions.

    The frame queue holds at most ``queue_size`` messages and ``queue_mib`` MiB of decoded
    images; the writer's job queue at most ``writer_queue_jobs`` jobs and ``writer_queue_mib``
    MiB of copied sums (one job bigger than that still passes, alone)."""

    accumulation: AccumulationSettings = field(default_factory=AccumulationSettings)
    mask_fraction: float = DEFAULT_MASK_FRACTION
    d_ref: float | None = None
    policy: str = "block"
    queue_size: int = 256
    queue_mib: float = 512.0
    writer_queue_jobs: int = 4
    writer_queue_mib: float = 4096.0
    snapshot_hz: float = 10.0
    checkpoints: bool = True
    hold_frames: int = 512
    join_timeout_s: float = 10.0
    keep_results: int = 16
    particles: ParticleSettings = field(default_factory=ParticleSettings)
    drift: DriftSettings = field(default_factory=DriftSettings)
    fits: bool = False

    @classmethod
    def from_config(cls, config, **overrides) -> "LiveSettings":
        """The settings a :class:`sxdm_stream.config.Config` asks for (accumulation, maps,
        drift, particles, fits); ``overrides`` (policy, checkpoints...) win."""
        values = dict(accumulation=config.accumulation, mask_fraction=config.maps.mask_fraction,
                      d_ref=config.maps.d_ref_a or None, drift=config.drift,
                      particles=config.particles, fits=config.fits.enabled)
        return cls(**{**values, **overrides})

    @property
    def analysis(self) -> AnalysisSettings:
        """What is derived from the sums at each snapshot and write."""
        return AnalysisSettings(self.mask_fraction, self.d_ref, self.drift, self.particles,
                                self.fits)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ConfigError(f"back-pressure policy {self.policy!r} is not one of {POLICIES}")
        if self.queue_size < 1 or self.snapshot_hz <= 0 or self.hold_frames < 1:
            raise ConfigError("queue_size, snapshot_hz and hold_frames must be positive")
        if self.queue_mib <= 0 or self.writer_queue_jobs < 1 or self.writer_queue_mib <= 0:
            raise ConfigError("queue_mib, writer_queue_jobs and writer_queue_mib must be positive")
        if self.join_timeout_s < 0:
            raise ConfigError("join_timeout_s must not be negative")
        if self.keep_results < 1:
            raise ConfigError("keep_results must be at least 1")


@dataclass(frozen=True)
class ScanOverride:
    """Scan and geometry given by the user (``--scan-file``) for detectors that send none."""

    scan: ScanDescription
    geometry: Geometry


def setup_for_series(start: SeriesStart, settings: AccumulationSettings,
                     override: ScanOverride | None, plan_block=None) -> ScanSetup:
    """The scan set-up of a series: from ``override`` if given, else from the start message's
    sxdm block, else from the joined run's block (``plan_block``).

    The pixel mask is the OR of the detector's (the start's ``pixel_mask``), the scan file's
    and the user's (``settings.pixel_mask``), reported once in the log; counts above the
    detector's announced ``max_valid_counts`` are invalid unless the user set a lower limit.
    A detector that announces another number of images than the scan has frames is refused:
    frames joined by index to the wrong map pixels would make a sheared map.
    """
    if override is not None:
        geometry, scan = override.geometry, override.scan
        scan_file_mask = geometry.detector.mask
    else:
        block = start.sxdm if describes_scan(start.sxdm) else plan_block
        if not describes_scan(block):
            raise BadMessageError(
                f"series {start.series_id} carries no scan description (user_data 'sxdm' block) "
                "and none was given with --scan-file", "no_scan_description")
        scan = ScanDescription.from_description(block["scan"])
        geometry, scan_file_mask = geometry_from_description(block["geometry"]), None
    if start.image_shape is not None and tuple(start.image_shape) != tuple(geometry.detector.shape):
        raise BadMessageError(f"the detector sends {start.image_shape} images, the geometry "
                              f"expects {geometry.detector.shape}", "size_mismatch")
    if start.number_of_images not in (None, scan.n_frames):
        raise BadMessageError(
            f"series {start.series_id}: the detector announces {start.number_of_images} images "
            f"but the scan ({scan.shape[0]}x{scan.shape[1]} map, {scan.n_angles} rocking angles, "
            f"{scan.frames_per_point} frame(s) per point) has {scan.n_frames}: refused (check "
            "the scan description or --scan-file)", "frame_count_mismatch")
    try:
        masks = combine_masks(geometry.detector.shape, {
            "the detector": start.pixel_mask, "the scan file": scan_file_mask,
            settings.pixel_mask: read_mask(settings.pixel_mask) if settings.pixel_mask else None})
    except ConfigError as exc:
        raise BadMessageError(f"series {start.series_id}: {exc}", "size_mismatch") from None
    geometry = Geometry(replace(geometry.detector, mask=masks.mask), geometry.energy_ev,
                        geometry.diffractometer)
    limit = start.max_valid_counts
    if limit is not None and (settings.max_valid_counts is None or limit < settings.max_valid_counts):
        settings = replace(settings, max_valid_counts=float(limit))
    log.info("series %s: %s; %s are invalid (left out and counted)", start.series_id,
             masks.summary(), "counts of 2**bits - 1" if settings.max_valid_counts is None
             else f"counts above {settings.max_valid_counts:g} or of 2**bits - 1")
    return ScanSetup(geometry, scan, settings)
