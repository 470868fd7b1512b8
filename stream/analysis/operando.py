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

from sxdm_stream.analysis.alarms import Alarm, AlarmSettings, check_alarms
from sxdm_stream.analysis.tracking import SeriesTracker, TrackingSettings, map_grid
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
    particle, see :mod:`sxdm_stream.analysis.particles`; with ``particle_id`` and the
    sample-frame centroid when the series is tracked) or None. ``phases`` are the map's
    phases ({phase_id, d_a, fraction}); ``particle_phases`` each particle's
    ({particle_id, phase_id, d_a, fraction}); ``registration`` where this map lies against
    the series ({shift_px, drift_px, drift_um, correlation, reference}); ``events`` the
    tracker's ({kind, particle_ids, message}); ``alarms`` those the thresholds raised;
    ``mixed_pixels`` the map pixels whose single centre of mass averages two phases.
    """

    time_s: float
    series_id: int
    series_unique_id: str | None
    correlation_id: str | None
    complete: bool
    summary: dict[str, float]
    channels: dict[str, tuple[float, str]] = field(default_factory=dict)
    particles: np.ndarray | None = field(default=None, repr=False)
    phases: tuple[dict, ...] = ()
    particle_phases: tuple[dict, ...] = ()
    registration: dict | None = None
    events: tuple[dict, ...] = ()
    alarms: tuple[Alarm, ...] = ()
    mixed_pixels: int = 0

    def particle_rows(self) -> list[dict[str, Any]]:
        """One JSON-able dict per particle (NaN as None), each with its ``phases``."""
        if self.particles is None:
            return []
        rows = []
        for row in self.particles:
            out = {name: _clean(row[name].item()) for name in self.particles.dtype.names}
            pid = out.get("particle_id")
            out["phases"] = [{k: _clean(v) for k, v in p.items() if k != "particle_id"}
                             for p in self.particle_phases
                             if pid is not None and p["particle_id"] == pid]
            rows.append(out)
        return rows

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (NaN as None), as published."""
        return {"time": self.time_s, "series_id": self.series_id,
                "series_unique_id": self.series_unique_id, "correlation_id": self.correlation_id,
                "complete": self.complete,
                "summary": {k: _clean(v) for k, v in self.summary.items()},
                "units": dict(SUMMARY_FIELDS),
                "operando": {k: {"value": v, "units": u} for k, (v, u) in self.channels.items()},
                "particles": self.particle_rows() if self.particles is not None else None,
                "phases": [{k: _clean(v) for k, v in p.items()} for p in self.phases],
                "registration": _clean_tree(self.registration),
                "events": [dict(e) for e in self.events],
                "alarms": [a.to_json() for a in self.alarms],
                "mixed_pixels": int(self.mixed_pixels)}


def _clean(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _clean_tree(value):
    if isinstance(value, dict):
        return {k: _clean_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean_tree(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    return _clean(value)


def operando_record(maps: MapSet, time_s: float, series_id: int, *,
                    series_unique_id: str | None = None, correlation_id: str | None = None,
                    complete: bool = True, channels: Mapping | None = None,
                    particles: np.ndarray | None = None) -> OperandoRecord:
    """The record of one completed map, alone (no tracking, phases or alarms: see
    :class:`OperandoMonitor` for a map within its series)."""
    return OperandoRecord(float(time_s), int(series_id), series_unique_id, correlation_id,
                          bool(complete), map_summary(maps), dict(channels or {}), particles)


def with_identity(records: np.ndarray, particle_ids, sample_centroids_um) -> np.ndarray:
    """The particle table with ``particle_id`` (series-wide) and the sample-frame centroid
    (``sample_row_um``, ``sample_col_um``: piezo centroid minus the series' drift) added."""
    extra = [("particle_id", "i4"), ("sample_row_um", "f8"), ("sample_col_um", "f8")]
    out = np.zeros(len(records), dtype=records.dtype.descr + extra)
    for name in records.dtype.names:
        out[name] = records[name]
    centroids = np.asarray(sample_centroids_um, float).reshape(len(records), 2)
    out["particle_id"] = np.asarray(particle_ids, int)
    out["sample_row_um"], out["sample_col_um"] = centroids[:, 0], centroids[:, 1]
    return out


class OperandoMonitor:
    """What an operando series keeps from one map to the next, and the record of each map.

    One object follows one experiment: the particle tracker (registration to the series and
    stable ids, :class:`~sxdm_stream.analysis.tracking.SeriesTracker`), the phases of the
    previous map (their ids follow the peaks: :meth:`previous_phases` goes to the next
    :func:`~sxdm_stream.analysis.scan_analysis.analyse`), and the previous map's per-particle
    values the alarms compare with. Its state is bounded (the tracker's reference maps and
    the last map's rows): memory stays flat however many maps come. Pure: no I/O; not
    thread-safe (one owner, the live processor's worker).
    """

    def __init__(self, tracking: TrackingSettings | None = None,
                 alarms: AlarmSettings | None = None) -> None:
        self.tracker = SeriesTracker(tracking)
        self.alarm_settings = alarms or AlarmSettings()
        self._phases: tuple[tuple[int, float], ...] | None = None
        self._rows: list[dict] | None = None

    @property
    def previous_phases(self) -> tuple[tuple[int, float], ...] | None:
        """(phase_id, d_a) of the previous map's phases, for the next analysis."""
        return self._phases

    def reset(self) -> None:
        """A new experiment: forget the tracked particles, the phases and the last values."""
        self.tracker.reset()
        self._phases, self._rows = None, None

    def record(self, analysis, scan, time_s: float, series_id: int, *,
               series_unique_id: str | None = None, correlation_id: str | None = None,
               complete: bool = True, channels: Mapping | None = None) -> OperandoRecord:
        """Track the particles of a completed map, follow its phases, check the alarms, and
        make its record.

        Parameters
        ----------
        analysis : the map's final :class:`~sxdm_stream.analysis.scan_analysis.ScanAnalysis`
            (made with :attr:`previous_phases`).
        scan : its :class:`~sxdm_stream.core.scan.ScanDescription`.
        """
        step = self.tracker.update(analysis.maps, analysis.particles, scan)
        table = with_identity(analysis.particles.records, step.particle_ids,
                              step.sample_centroids_um)
        ids = {int(label): int(pid) for label, pid in zip(table["label"], table["particle_id"])}
        phases, particle_phases, mixed = (), (), 0
        if analysis.phases is not None:
            pa = analysis.phases
            phases = tuple({"phase_id": p.phase_id, "d_a": p.d_a, "fraction": p.fraction}
                           for p in pa.phases)
            particle_phases = tuple(
                {"particle_id": ids[int(r["label"])], "phase_id": int(r["phase_id"]),
                 "d_a": float(r["d_a"]), "fraction": float(r["fraction"])}
                for r in pa.particles if int(r["label"]) in ids)
            mixed = pa.n_mixed
            self._phases = pa.phase_list()
        rows = [{"particle_id": pid, "phases": [p for p in particle_phases
                                                if p["particle_id"] == pid]}
                for pid in ids.values()]
        events = tuple(e.to_json() for e in step.events)
        registration = step.registration.to_json()
        shift_um = np.asarray(step.registration.shift_px, float) * np.abs(map_grid(scan).step_um)
        alarms = tuple(check_alarms(self.alarm_settings, self._rows, rows, events,
                                    shift_um if np.all(np.isfinite(shift_um)) else None))
        self._rows = rows
        return OperandoRecord(float(time_s), int(series_id), series_unique_id, correlation_id,
                              bool(complete), map_summary(analysis.maps), dict(channels or {}),
                              table, phases, particle_phases, registration, events, alarms,
                              mixed)
