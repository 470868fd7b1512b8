"""Operando records as the viewer keeps them, and the curves they make. No widgets here.

The processor publishes one record per completed map (``OperandoRecord.to_json()`` under the
``sxdm.operando`` topic). :func:`parse_record` reads one at the edge into an
:class:`OperandoEntry`: the per-particle values in small numpy tables, so that ten thousand
records of a run of days stay a few tens of megabytes. Fields an older record lacks are
empty (NaN, no rows), never an error.

:class:`OperandoColumns` cuts the curves from the kept entries: one value per entry, NaN where a
map has none (a particle absent, a null), which the panel draws as a gap, never interpolated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

#: the x axis "time": hours since the first record
TIME = "time"

#: per-particle values plotted, as named in a record's ``particles`` rows
PARTICLE_FIELDS = ("intensity", "mean_d_a", "mean_strain", "strain_std", "max_tilt_deg",
                   "mean_tilt_deg")
PARTICLE_DTYPE = np.dtype([("particle_id", "<i8")] + [(f, "<f8") for f in PARTICLE_FIELDS])
PHASE_DTYPE = np.dtype([("particle_id", "<i8"), ("phase_id", "<i8"), ("d_a", "<f8"),
                        ("fraction", "<f8")])
#: a record's particle without phases (an older record, no phase analysis) gets one row of
#: this phase id: its mean d
NO_PHASE = -1


@dataclass(frozen=True)
class Notice:
    """An event or an alarm of a record, as listed.

    ``kind`` is the event's kind (appear, disappear, split, merge, grid_changed) or the alarm's
    rule; ``alarm`` tells which.
    """

    kind: str
    message: str
    alarm: bool
    particle_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class OperandoEntry:
    """One completed map's record, as plotted.

    Parameters
    ----------
    time_s : unix time of the map's completion.
    series_id : the detector series (scan) id, None if unknown.
    summary : the whole map's scalars (``mean_d`` in Å, ``strain_spread`` in µstrain,
        ``mean_tilt`` in degrees...), NaN where the record has null.
    channels : electrochemistry, name -> (value, units).
    particles : one row per particle (:data:`PARTICLE_DTYPE`).
    phases : one row per (particle, phase) (:data:`PHASE_DTYPE`).
    notices : the record's events, then its alarms.
    """

    time_s: float
    series_id: int | None
    summary: dict[str, float] = field(default_factory=dict)
    channels: dict[str, tuple[float, str]] = field(default_factory=dict)
    particles: np.ndarray = field(default_factory=lambda: np.zeros(0, PARTICLE_DTYPE),
                                  repr=False)
    phases: np.ndarray = field(default_factory=lambda: np.zeros(0, PHASE_DTYPE), repr=False)
    notices: tuple[Notice, ...] = ()

    @property
    def alarms(self) -> tuple[Notice, ...]:
        return tuple(n for n in self.notices if n.alarm)


def _number(value: Any) -> float:
    """A JSON number as float; NaN for null, booleans and anything else."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return math.nan


def _integer(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _rows(value: Any) -> list[Mapping]:
    return [row for row in value if isinstance(row, Mapping)] if isinstance(value, list) else []


def record_channels(block: Any) -> dict[str, tuple[float, str]]:
    """The electrochemistry of a record's ``operando`` block: ``{name: {"value", "units"}}``
    or ``{name: value}``; entries that are not numbers are skipped."""
    channels = {}
    for name, entry in (block.items() if isinstance(block, Mapping) else ()):
        value, units = ((entry.get("value"), str(entry.get("units") or ""))
                        if isinstance(entry, Mapping) else (entry, ""))
        if math.isfinite(_number(value)):
            channels[str(name)] = (float(value), units)
    return channels


def _particle_tables(rows: list[Mapping]) -> tuple[np.ndarray, np.ndarray]:
    particles, phases = [], []
    for row in rows:
        pid = _integer(row.get("particle_id"))
        if pid is None:
            continue
        particles.append((pid, *(_number(row.get(f)) for f in PARTICLE_FIELDS)))
        rows_of_phases = _rows(row.get("phases"))
        if not rows_of_phases:                   # no phase analysis: the particle's mean d
            phases.append((pid, NO_PHASE, _number(row.get("mean_d_a")), 1.0))
        for phase in rows_of_phases:
            phase_id = _integer(phase.get("phase_id"))
            if phase_id is not None:
                phases.append((pid, phase_id, _number(phase.get("d_a")),
                               _number(phase.get("fraction"))))
    return np.array(particles, PARTICLE_DTYPE), np.array(phases, PHASE_DTYPE)


def _notices(body: Mapping) -> tuple[Notice, ...]:
    notices = []
    for event in _rows(body.get("events")):
        kind = str(event.get("kind", "event"))
        ids = tuple(i for i in map(_integer, event.get("particle_ids") or []) if i is not None)
        notices.append(Notice(kind, str(event.get("message") or kind), False, ids))
    for alarm in _rows(body.get("alarms")):
        rule, pid = str(alarm.get("rule", "alarm")), _integer(alarm.get("particle_id"))
        message = alarm.get("message") or (f"{rule}: {_number(alarm.get('value')):.4g} beyond "
                                           f"{_number(alarm.get('threshold')):.4g}")
        notices.append(Notice(rule, str(message), True, () if pid is None else (pid,)))
    return tuple(notices)


def parse_record(body: Mapping) -> OperandoEntry:
    """The entry of one decoded operando record (the JSON object of ``to_json()``).

    Raises ValueError when the record has no time: nothing could place it on a curve.
    """
    time_s = _number(body.get("time"))
    if not math.isfinite(time_s):
        raise ValueError(f"operando record without a time: {str(body.get('time'))[:40]!r}")
    summary = body.get("summary")
    particles, phases = _particle_tables(_rows(body.get("particles")))
    return OperandoEntry(
        time_s=time_s, series_id=_integer(body.get("series_id")),
        summary={str(k): _number(v) for k, v in summary.items()}
        if isinstance(summary, Mapping) else {},
        channels=record_channels(body.get("operando")),
        particles=particles, phases=phases, notices=_notices(body))


# ---- columns over the kept entries --------------------------------------------------------------
class OperandoColumns:
    """The kept entries as columns, one value per entry, from which every curve is cut.

    The entries' small tables are stacked once (one ``np.unique`` per table, not a Python loop
    per entry and curve): redrawing ten thousand maps of thirty particles takes a fraction of
    a second.

    Parameters
    ----------
    entries : the entries, oldest first.
    """

    def __init__(self, entries: Sequence[OperandoEntry]) -> None:
        self.entries = list(entries)
        self.n = len(self.entries)
        self._particles = [e.particles for e in self.entries]
        self._phases = [e.phases for e in self.entries]
        self._particle_at = np.repeat(np.arange(self.n), [len(t) for t in self._particles])
        self._phase_at = np.repeat(np.arange(self.n), [len(t) for t in self._phases])
        self.particle_ids, which = np.unique(self._field(self._particles, "particle_id"),
                                             return_inverse=True)
        self._particle_row = which.ravel()
        #: (particle id, phase id) of every phase curve, sorted
        keys = np.stack([self._field(self._phases, "particle_id"),
                         self._field(self._phases, "phase_id")], axis=1)
        self.phase_keys, which = np.unique(keys, axis=0, return_inverse=True)
        self._phase_row = which.ravel()

    @staticmethod
    def _field(tables: list[np.ndarray], name: str) -> np.ndarray:
        # field by field: concatenating the structured tables themselves is ten times slower
        return np.concatenate([t[name] for t in tables]) if tables else np.zeros(0)

    def x(self, axis: str, t0_s: float) -> np.ndarray:
        """The x of each entry: hours since ``t0_s`` (``axis == TIME``) or the value of the
        electrochemistry channel ``axis`` (NaN where an entry lacks it)."""
        if axis == TIME:
            return (np.array([e.time_s for e in self.entries], float) - t0_s) / 3600.0
        return self.channel(axis)

    def channel(self, name: str) -> np.ndarray:
        """An electrochemistry channel's value per entry, NaN where missing."""
        return np.array([e.channels.get(name, (math.nan, ""))[0] for e in self.entries], float)

    def channel_units(self) -> dict[str, str]:
        """Every electrochemistry channel, in order of appearance -> its units."""
        units: dict[str, str] = {}
        for entry in self.entries:
            for name, (_value, unit) in entry.channels.items():
                units.setdefault(name, unit)
        return units

    def summary(self, key: str) -> np.ndarray:
        """One map-level summary (``mean_d``...) per entry, NaN where missing."""
        return np.array([e.summary.get(key, math.nan) for e in self.entries], float)

    def presence(self) -> dict[int, np.ndarray]:
        """particle id -> whether each entry has it."""
        here = np.zeros((len(self.particle_ids), self.n), bool)
        here[self._particle_row, self._particle_at] = True
        return {int(pid): here[i] for i, pid in enumerate(self.particle_ids)}

    def particle(self, name: str) -> dict[int, np.ndarray]:
        """particle id -> its ``name`` (a :data:`PARTICLE_FIELDS`) per entry, NaN where
        absent."""
        out = np.full((len(self.particle_ids), self.n), np.nan)
        out[self._particle_row, self._particle_at] = self._field(self._particles, name)
        return {int(pid): out[i] for i, pid in enumerate(self.particle_ids)}

    def phase(self, name: str, absent: float = math.nan) -> dict[tuple[int, int], np.ndarray]:
        """(particle id, phase id) -> its ``name`` (``d_a`` or ``fraction``) per entry.

        NaN where the particle is absent; ``absent`` where the particle is there without that
        phase (0 suits a fraction: the phase has not grown there yet; NaN suits a d-spacing).
        """
        here = self.presence()
        out = np.array([np.where(here[int(pid)], absent, np.nan) for pid, _ in self.phase_keys])
        out = out.reshape(len(self.phase_keys), self.n)
        out[self._phase_row, self._phase_at] = self._field(self._phases, name)
        return {(int(pid), int(phase)): out[i] for i, (pid, phase) in enumerate(self.phase_keys)}

    def phase_ids(self) -> list[int]:
        """Every phase id of the entries' particles, in order of first appearance."""
        ids = self._field(self._phases, "phase_id")
        unique, first = np.unique(ids, return_index=True)
        return [int(unique[i]) for i in np.argsort(first)]
