"""The sections of the configuration tree that belong to no other layer (simulation, live,
output), :class:`Config` itself, and what each key allows.

The other sections are defined beside the code that reads them (``AccumulationSettings`` in
:mod:`sxdm_stream.core.accumulate`, ``MapSettings``, ``FitSettings`` and
``RoiSuggestionSettings`` in :mod:`sxdm_stream.analysis.scan_analysis`, ``DriftSettings``,
``ParticleSettings`` and ``PhaseSettings`` in :mod:`sxdm_stream.analysis`); every key is
listed, with its unit and default, in :mod:`sxdm_stream.config`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from sxdm_stream.analysis.alarms import AlarmSettings
from sxdm_stream.analysis.drift import DRIFT_MODES, DriftSettings
from sxdm_stream.analysis.particles import ParticleSettings
from sxdm_stream.analysis.phases import PhaseSettings
from sxdm_stream.analysis.tracking import TrackingSettings
from sxdm_stream.analysis.scan_analysis import (AnalysisSettings, FitSettings, MapSettings,
                                                RoiSuggestionSettings)
from sxdm_stream.core.accumulate import AccumulationSettings
from sxdm_stream.errors import ConfigError
from sxdm_stream.sources.files.masks import read_mask

#: what the live processor does when its frame queue is full
POLICIES = ("block", "drop")


@dataclass(frozen=True)
class SimulationSettings:
    """Section ``[simulation]``: the built-in simulated experiment
    (:func:`sxdm_stream.simulators.scenarios.default_scenario`; units in the module docstring)."""

    detector: str = "maxipix_2x2"
    shape: tuple[int, int] = (40, 40)
    step_um: float = 0.1
    n_angles: int = 31
    rocking_half_range_deg: float = 0.3
    counts: float = 2.0e5
    background_rate: float = 2e-5
    drift_um_per_angle: tuple[float, float] = (0.0, 0.0)
    seed: int = 0


@dataclass(frozen=True)
class LiveSettings:
    """Section ``[live]``: how the live processor runs
    (:class:`sxdm_stream.runtime.processor.LiveProcessor`).

    Parameters
    ----------
    policy : when the frame queue is full, "block" slows the detector's PUSH socket (no image
        lost) and "drop" drops images (counted).
    frame_queue_messages : messages (images, series starts and ends) waiting for the worker.
    frame_queue_mib : MiB of decoded images waiting for the worker.
    writer_queue_jobs : results writes waiting for the writer thread.
    writer_queue_mib : MiB of copied sums waiting for the writer (one job bigger than that
        still passes, alone).
    hold_frames : frames kept waiting for their positions from the control system, each a full
        detector frame (512 Maxipix 2x2 frames are 0.5 GB); older ones are placed by index.
    join_timeout_s : seconds a series ended by the detector waits for the remaining positions
        of its control-system run.
    snapshot_max_hz : snapshots per second, at most; snapshots also never take more than ~20%
        of the worker's time (the interval grows on big maps).
    checkpoints : write a checkpoint beside the results file at the end of each rocking angle
        (``process --resume`` continues from it).
    keep_results : finished series kept in memory (``LiveProcessor.results``), and failed
        final writes retried, at most.
    decode_threads : threads decompressing the images' pixels beside the receiver thread,
        which reads and checks every message (1: the receiver thread decompresses too; 0: one
        per core, at most 4). Images are handed on in arrival order whatever the count.
    """

    policy: str = "block"
    frame_queue_messages: int = 256
    frame_queue_mib: float = 512.0
    writer_queue_jobs: int = 4
    writer_queue_mib: float = 4096.0
    hold_frames: int = 512
    join_timeout_s: float = 10.0
    snapshot_max_hz: float = 10.0
    checkpoints: bool = True
    keep_results: int = 16
    decode_threads: int = 1

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check_value(f"live.{f.name}", getattr(self, f.name))


@dataclass(frozen=True)
class OutputSettings:
    """Section ``[output]``: where the demo writes (``process`` takes ``--out``)."""

    directory: str = "results"


@dataclass(frozen=True)
class Config:
    """The whole configuration: one section per TOML table (see the module docstring)."""

    simulation: SimulationSettings = field(default_factory=SimulationSettings)
    accumulation: AccumulationSettings = field(default_factory=AccumulationSettings)
    maps: MapSettings = field(default_factory=MapSettings)
    drift: DriftSettings = field(default_factory=DriftSettings)
    particles: ParticleSettings = field(default_factory=ParticleSettings)
    fits: FitSettings = field(default_factory=FitSettings)
    roi_suggestion: RoiSuggestionSettings = field(default_factory=RoiSuggestionSettings)
    phases: PhaseSettings = field(default_factory=PhaseSettings)
    tracking: TrackingSettings = field(default_factory=TrackingSettings)
    alarms: AlarmSettings = field(default_factory=AlarmSettings)
    live: LiveSettings = field(default_factory=LiveSettings)
    output: OutputSettings = field(default_factory=OutputSettings)

    @property
    def analysis(self) -> AnalysisSettings:
        """The sections :func:`sxdm_stream.analysis.analyse` reads."""
        return AnalysisSettings(self.maps, self.drift, self.particles, self.fits,
                                self.roi_suggestion, self.phases)


# ---- what each key allows: checked when a file is loaded (LiveSettings checks itself with
# the same rules; the other sections' own checks guard their use from Python) ----------------
_ALLOWED = {
    "simulation.detector": ("maxipix_2x2", "eiger2_500k"),
    "accumulation.histogram_dtype": ("float32", "float64"),
    "drift.mode": DRIFT_MODES,
    "particles.connectivity": (1, 2),
    "live.policy": POLICIES,
}
_POSITIVE = {"simulation.step_um", "simulation.n_angles", "simulation.counts",
             "accumulation.histogram_max_bins", "accumulation.histogram_budget_mib",
             "accumulation.max_valid_counts", "maps.d_ref_a", "particles.min_pixels",
             "particles.domain_misorientation_deg", "particles.min_domain_pixels",
             "drift.smoothing_angles", "phases.max_phases", "phases.min_separation",
             "phases.continuity_tolerance", "live.frame_queue_messages", "live.frame_queue_mib",
             "live.writer_queue_jobs", "live.writer_queue_mib", "live.hold_frames",
             "live.snapshot_max_hz", "live.keep_results"}
_NOT_NEGATIVE = {"accumulation.threshold", "accumulation.q_shells", "simulation.background_rate",
                 "live.join_timeout_s", "phases.smoothing", "live.decode_threads"}
#: keys that count something: whole numbers (a file's 2.0 is read as 2 before this check)
_WHOLE = {"live.decode_threads"}
_FRACTIONS = {"maps.mask_fraction", "drift.min_intensity_fraction", "drift.min_correlation",
              "phases.min_fraction", "phases.mixed_fraction", "phases.prominence",
              "phases.tail_fraction", "phases.min_spacing", "tracking.outline_fraction",
              "tracking.reference_weight", "tracking.min_overlap_fraction",
              "tracking.ambiguous_overlap_ratio"}


def check_value(key: str, value: Any) -> None:
    """ConfigError naming ``key`` and what it allows, if ``value`` is outside it."""
    if value is None:                             # "not set" (d_ref_a, max_valid_counts...)
        return
    if key in _ALLOWED and value not in _ALLOWED[key]:
        allowed = ", ".join(str(v) for v in _ALLOWED[key])
        raise ConfigError(f"{key} = {value!r} is not one of {allowed}")
    if key in _POSITIVE and not value > 0:
        raise ConfigError(f"{key} must be positive, got {value!r}")
    if key in _WHOLE and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key} must be a whole number, got {value!r}")
    if key in _NOT_NEGATIVE and not value >= 0:
        raise ConfigError(f"{key} must not be negative, got {value!r}")
    if key in _FRACTIONS and not 0.0 <= value <= 1.0:
        raise ConfigError(f"{key} must lie between 0 and 1, got {value!r}")
    if key == "accumulation.pixel_mask" and value:
        try:
            read_mask(value)                      # a missing or unreadable mask fails now
        except ConfigError as exc:
            raise ConfigError(f"{key}: {exc}") from None
