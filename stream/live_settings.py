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

from .accumulate import AccumulationSettings, ScanSetup
from .analysis import AnalysisSettings
from .drift import DriftSettings
from .errors import BadMessageError, ConfigError
from .geometry import Geometry, geometry_from_description
from .join import describes_scan
from .maps import DEFAULT_MASK_FRACTION
from .messages import SeriesStart
from .particles import ParticleSettings
from .scan import ScanDescription

log = logging.getLogger(__name__)

POLICIES = ("block", "drop")


@dataclass(frozen=True)
class LiveSettings:
    """How the live processor runs. ``snapshot_hz`` bounds the snapshot rate; snapshots also
    never take more than ~20% of the worker's time (the interval grows on big maps).
    ``hold_frames`` bounds the frames kept waiting for positions from the control system
    (each a full detector frame: 512 Maxipix frames are 0.5 GB); ``join_timeout_s`` is how
    long a series ended by the detector waits for its run's remaining positions."""

    accumulation: AccumulationSettings = field(default_factory=AccumulationSettings)
    mask_fraction: float = DEFAULT_MASK_FRACTION
    d_ref: float | None = None
    policy: str = "block"
    queue_size: int = 256
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
    sxdm block, else from the joined run's block (``plan_block``); the detector's pixel mask
    is used unless the geometry brings its own."""
    if override is not None:
        geometry, scan = override.geometry, override.scan
        if geometry.detector.mask is None and start.pixel_mask is not None:
            geometry = Geometry(replace(geometry.detector, mask=start.pixel_mask),
                                geometry.energy_ev, geometry.diffractometer)
    else:
        block = start.sxdm if describes_scan(start.sxdm) else plan_block
        if not describes_scan(block):
            raise BadMessageError(
                f"series {start.series_id} carries no scan description (user_data 'sxdm' block) "
                "and none was given with --scan-file", "no_scan_description")
        scan = ScanDescription.from_description(block["scan"])
        geometry = geometry_from_description(block["geometry"], start.pixel_mask)
    if start.image_shape is not None and tuple(start.image_shape) != tuple(geometry.detector.shape):
        raise BadMessageError(f"the detector sends {start.image_shape} images, the geometry "
                              f"expects {geometry.detector.shape}", "size_mismatch")
    if start.number_of_images not in (None, scan.n_frames):
        log.warning("the detector announces %s images, the scan has %d frames",
                    start.number_of_images, scan.n_frames)
    return ScanSetup(geometry, scan, settings)
