"""Operando series: one record per completed map, for experiments followed over hours.

A battery is cycled while the same area is mapped again and again. Each completed map adds an
:class:`OperandoRecord`: when, which scan, the map's summary (mean d, strain spread, largest
tilt...), the per-particle table, and the electrochemistry of that moment. The records go to a
time-series file (:mod:`sxdm_stream.sinks.timeseries`) and to the published stream; nothing of the
maps themselves is kept, so memory stays flat however many scans come.

Electrochemistry travels with the scan: in the ``sxdm`` block of a series start (DECTRIS
``user_data``) or of a bluesky run, under ``"operando"``: ``{name: value}`` or
``{name: {"value": v, "units": "V"}}``, e.g. ``{"voltage": {"value": 4.1, "units": "V"}}``.

Pure computation: no I/O.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from sxdm_stream.core.maps import MapSet

log = logging.getLogger(__name__)

#: the summary of one map: name -> units (computed over the intensity mask)
SUMMARY_FIELDS: dict[str, str] = {
    "mean_d": "angstrom", "d_std": "angstrom", "mean_strain": "microstrain",
    "strain_spread": "microstrain", "max_tilt": "degree", "mean_tilt": "degree",
    "intensity": "counts", "mask_pixels": "",
}


def operando_channels(block: Mapping | None) -> dict[str, tuple[float, str]]:
    """The electrochemistry channels of an ``sxdm`` block: name -> (value, units).

    Entries that are not finite numbers are skipped (and logged at debug level).
    """
    channels: dict[str, tuple[float, str]] = {}
    source = block.get("operando") if isinstance(block, Mapping) else None
    for name, entry in (source or {}).items() if isinstance(source, Mapping) else ():
        value, units = ((entry.get("value"), str(entry.get("units", "")))
                        if isinstance(entry, Mapping) else (entry, ""))
        if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
                and math.isfinite(value):
            channels[str(name)] = (float(value), units)
        else:
            log.debug("operando channel %r is not a finite number: %r", name, entry)
    return channels


def map_summary(maps: MapSet) -> dict[str, float]:
    """The scalars of one map (see :data:`SUMMARY_FIELDS`); NaN when the mask is empty."""
    mask = np.asarray(maps.mask, bool)
    n = int(mask.sum())

    def stat(array, fn) -> float:
        values = np.asarray(array)[mask]
        values = values[np.isfinite(values)]
        return float(fn(values)) if values.size else math.nan

    return {"mean_d": stat(maps.d_spacing, np.mean), "d_std": stat(maps.d_spacing, np.std),
            "mean_strain": stat(maps.strain, np.mean), "strain_spread": stat(maps.strain, np.std),
            "max_tilt": stat(maps.tilt_altitude, np.max),
            "mean_tilt": stat(maps.tilt_altitude, np.mean),
            "intensity": float(np.sum(maps.intensity[mask])) if n else 0.0,
            "mask_pixels": float(n)}


@dataclass(frozen=True)
class OperandoRecord:
    """What one completed map adds to an operando series.

    ``time_s`` is the unix time of completion; ``particles`` a structured array (one row per
    particle, see :mod:`sxdm_stream.analysis.particles`) or None.
    """

    time_s: float
    series_id: int
    series_unique_id: str | None
    correlation_id: str | None
    complete: bool
    summary: dict[str, float]
    channels: dict[str, tuple[float, str]] = field(default_factory=dict)
    particles: np.ndarray | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (NaN as None), as published."""
        def clean(v):
            return None if isinstance(v, float) and not math.isfinite(v) else v

        particles = None
        if self.particles is not None:
            particles = [{name: clean(row[name].item()) for name in self.particles.dtype.names}
                         for row in self.particles]
        return {"time": self.time_s, "series_id": self.series_id,
                "series_unique_id": self.series_unique_id, "correlation_id": self.correlation_id,
                "complete": self.complete,
                "summary": {k: clean(v) for k, v in self.summary.items()},
                "units": dict(SUMMARY_FIELDS),
                "operando": {k: {"value": v, "units": u} for k, (v, u) in self.channels.items()},
                "particles": particles}


def operando_record(maps: MapSet, time_s: float, series_id: int, *,
                    series_unique_id: str | None = None, correlation_id: str | None = None,
                    complete: bool = True, channels: Mapping | None = None,
                    particles: np.ndarray | None = None) -> OperandoRecord:
    """The record of one completed map."""
    return OperandoRecord(float(time_s), int(series_id), series_unique_id, correlation_id,
                          bool(complete), map_summary(maps), dict(channels or {}), particles)
