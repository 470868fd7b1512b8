"""The operando time-series file: one row per completed map, in one HDF5 file for the whole
experiment.

Layout (NeXus; ``silx view`` opens the summary plot against elapsed time)::

    /operando                  NXentry   default="summary", records=N
    /operando/summary          NXdata    signal mean_d, axes elapsed_s; time (unix s), series_id,
                                         complete, series_unique_id, correlation_id,
                                         mixed_pixels, n_particles and every field of
                                         :data:`sxdm_stream.analysis.operando.SUMMARY_FIELDS`
    /operando/electrochemistry NXcollection  one dataset per channel (units attribute), NaN for
                                         records that did not carry it
    /operando/registration     NXcollection  shift_px (N, 2): against the previous map;
                                         drift_px, drift_um (N, 2): since the first map;
                                         correlation (N); NaN where not registered
    /operando/particles        NXcollection  the particle tables of every record, stacked:
                                         ``record`` (row of the summary) + one column per field
                                         (``particle_id`` is the series-wide identity)
    /operando/phases           NXcollection  the map's phases: record, phase_id, d_a, fraction
    /operando/particle_phases  NXcollection  each particle's phases: record, particle_id,
                                         phase_id, d_a, fraction
    /operando/events           NXcollection  record, kind, particle_ids ("3,5"), message
    /operando/alarms           NXcollection  record, rule, particle_id, phase_id (-1: none),
                                         value, threshold, message
    /operando/by_particle/particle_<id>  NXdata  one per particle: its curves against
                                         elapsed_s (d, strain spread, tilt, intensity, and
                                         d_phase_<k>, fraction_phase_<k> per phase), NaN when it
                                         was not seen

The file is rewritten whole (atomically, :func:`sxdm_stream.sinks.nexus.atomic_h5`) at each
record: it is small (about a kilobyte per map) and a reader never sees half of it. A processor
restarted on an existing file continues its series.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import h5py
import numpy as np

from sxdm_stream.analysis.operando import SUMMARY_FIELDS, OperandoRecord
from sxdm_stream.errors import IncompatibleFileError
from sxdm_stream.sinks.nexus import atomic_h5

log = logging.getLogger(__name__)

_IDS = ("time", "series_id", "complete")
_TEXT = ("series_unique_id", "correlation_id")
_COUNTS = {"mixed_pixels": "pixels", "n_particles": ""}
#: the per-particle curves of /operando/by_particle: particle field -> units
_CURVES = {"mean_d_a": "angstrom", "strain_std": "microstrain", "mean_tilt_deg": "degree",
           "intensity": "counts", "area_um2": "um^2", "sample_row_um": "um", "sample_col_um": "um"}
_TABLE_TEXT = {"kind", "particle_ids", "message", "rule"}


class _Table:
    """Columns of equal length, a row at a time; a field a row lacks is NaN (text: "")."""

    def __init__(self) -> None:
        self.columns: dict[str, list] = {}
        self.rows = 0

    def add(self, row: dict) -> None:
        for name in row:
            if name not in self.columns:
                self.columns[name] = [_missing(name)] * self.rows
        for name, column in self.columns.items():
            value = row.get(name)
            column.append(_missing(name) if value is None else value)
        self.rows += 1

    def write(self, group: h5py.Group) -> None:
        for name, column in self.columns.items():
            if name in _TABLE_TEXT:
                group[name] = np.asarray([str(v) for v in column], dtype=h5py.string_dtype())
            else:
                group[name] = np.asarray(column)

    def load(self, columns: dict[str, np.ndarray]) -> None:
        self.columns = {name: list(values) for name, values in columns.items()}
        self.rows = len(next(iter(self.columns.values()))) if self.columns else 0


def _missing(name: str):
    return "" if name in _TABLE_TEXT else math.nan


class OperandoSeriesFile:
    """Appends :class:`OperandoRecord` s to the time-series file at ``path``."""

    def __init__(self, path) -> None:
        self.path = Path(path)
        self.columns: dict[str, list] = {k: [] for k in (*_IDS, *_TEXT, *SUMMARY_FIELDS, *_COUNTS)}
        self.channels: dict[str, list[float]] = {}
        self.channel_units: dict[str, str] = {}
        self.registration: dict[str, list] = {"shift_px": [], "drift_px": [], "drift_um": [],
                                              "correlation": []}
        self.tables = {name: _Table() for name in ("particles", "phases", "particle_phases",
                                                   "events", "alarms")}
        if self.path.exists():
            self._load()

    def __len__(self) -> int:
        return len(self.columns["time"])

    def append(self, record: OperandoRecord) -> None:
        """Add a record and rewrite the file."""
        n = len(self)
        n_particles = len(record.particles) if record.particles is not None else 0
        values = {"time": record.time_s, "series_id": record.series_id,
                  "complete": record.complete, "series_unique_id": record.series_unique_id or "",
                  "correlation_id": record.correlation_id or "", **record.summary,
                  "mixed_pixels": record.mixed_pixels, "n_particles": n_particles}
        for name, column in self.columns.items():
            column.append(values.get(name, np.nan))
        for name, (value, units) in record.channels.items():
            self.channels.setdefault(name, [np.nan] * n).append(value)
            self.channel_units.setdefault(name, units)
        for name, column in self.channels.items():
            if len(column) == n:
                column.append(np.nan)
        reg = record.registration or {}
        for name in ("shift_px", "drift_px", "drift_um"):
            self.registration[name].append(_pair(reg.get(name)))
        self.registration["correlation"].append(_float(reg.get("correlation")))
        if record.particles is not None:
            for row in record.particles:
                self.tables["particles"].add({"record": n, **{k: row[k].item()
                                                              for k in row.dtype.names}})
        for phase in record.phases:
            self.tables["phases"].add({"record": n, **phase})
        for phase in record.particle_phases:
            self.tables["particle_phases"].add({"record": n, **phase})
        for event in record.events:
            self.tables["events"].add({"record": n, "kind": event.get("kind", ""),
                                       "particle_ids": ",".join(str(i) for i in
                                                                event.get("particle_ids") or ()),
                                       "message": event.get("message", "")})
        for alarm in record.alarms:
            self.tables["alarms"].add({"record": n, "rule": alarm.rule,
                                       "particle_id": _id(alarm.particle_id),
                                       "phase_id": _id(alarm.phase_id), "value": alarm.value,
                                       "threshold": alarm.threshold, "message": alarm.message})
        self._write()

    def _write(self) -> None:
        with atomic_h5(self.path) as f:
            f.attrs.update(NX_class="NXroot", default="operando")
            entry = f.create_group("operando")
            entry.attrs.update(NX_class="NXentry", default="summary", records=len(self))
            summary = entry.create_group("summary")
            summary.attrs.update(NX_class="NXdata", signal="mean_d", axes="elapsed_s")
            times = np.asarray(self.columns["time"], float)
            elapsed = times - times[0] if times.size else times
            summary["elapsed_s"] = elapsed
            summary["elapsed_s"].attrs["units"] = "s"
            for name, column in self.columns.items():
                if name in _TEXT:
                    summary[name] = np.asarray(column, dtype=h5py.string_dtype())
                else:
                    summary[name] = np.asarray(column, dtype=bool if name == "complete" else float
                                               if name != "series_id" else np.int64)
                    summary[name].attrs["units"] = {**SUMMARY_FIELDS, **_COUNTS}.get(
                        name, "s" if name == "time" else "")
            echem = _collection(entry, "electrochemistry")
            for name, column in self.channels.items():
                echem[name] = np.asarray(column, float)
                echem[name].attrs["units"] = self.channel_units.get(name, "")
            reg = _collection(entry, "registration")
            for name, column in self.registration.items():
                reg[name] = np.asarray(column, float).reshape((len(self), 2) if name != "correlation"
                                                              else (len(self),))
                reg[name].attrs["units"] = {"drift_um": "um", "correlation": ""}.get(name, "pixels")
            for name, table in self.tables.items():
                table.write(_collection(entry, name))
            self._write_curves(entry, elapsed)

    def _write_curves(self, entry: h5py.Group, elapsed: np.ndarray) -> None:
        """One NXdata per particle id: its curves against elapsed time (NaN when unseen)."""
        particles = self.tables["particles"].columns
        if "particle_id" not in particles:
            return
        group = _collection(entry, "by_particle")
        records = np.asarray(particles["record"], int)
        ids = np.asarray(particles["particle_id"], float)
        phases = self.tables["particle_phases"].columns
        for pid in sorted({int(i) for i in ids if np.isfinite(i)}):
            curves = group.create_group(f"particle_{pid}")
            curves.attrs.update(NX_class="NXdata", signal="mean_d_a", axes="elapsed_s")
            curves["elapsed_s"] = elapsed
            curves["elapsed_s"].attrs["units"] = "s"
            rows = ids == pid
            for name, units in _CURVES.items():
                if name in particles:
                    curve = np.full(len(self), np.nan)
                    curve[records[rows]] = np.asarray(particles[name], float)[rows]
                    curves[name] = curve
                    curves[name].attrs["units"] = units
            if phases:
                mine = np.asarray(phases["particle_id"], float) == pid
                for phase in sorted({int(p) for p in np.asarray(phases["phase_id"])[mine]}):
                    sel = mine & (np.asarray(phases["phase_id"]) == phase)
                    at = np.asarray(phases["record"], int)[sel]
                    for name, units in (("d_a", "angstrom"), ("fraction", "")):
                        curve = np.full(len(self), np.nan)
                        curve[at] = np.asarray(phases[name], float)[sel]
                        key = f"{'d' if name == 'd_a' else 'fraction'}_phase_{phase}"
                        curves[key] = curve
                        curves[key].attrs["units"] = units

    def _load(self) -> None:
        try:
            columns = read_operando(self.path)
        except (OSError, KeyError) as exc:
            raise IncompatibleFileError(f"{self.path} is not an operando series file: {exc}") from None
        n = columns["records"]
        for name in self.columns:
            self.columns[name] = list(columns["summary"].get(name, [np.nan] * n))
        for name, (values, units) in columns["electrochemistry"].items():
            self.channels[name], self.channel_units[name] = list(values), units
        for name in self.registration:
            default = np.full((n,) if name == "correlation" else (n, 2), np.nan)
            self.registration[name] = [np.asarray(v).tolist() for v in
                                       columns["registration"].get(name, default)]
        for name, table in self.tables.items():
            table.load(columns.get(name, {}))
        log.info("continuing the operando series in %s (%d records)", self.path, len(self))


def _pair(value) -> list[float]:
    if value is None:
        return [math.nan, math.nan]
    return [_float(v) for v in value]


def _float(value) -> float:
    return math.nan if value is None else float(value)


def _id(value) -> int:
    return -1 if value is None else int(value)


def _collection(entry: h5py.Group, name: str) -> h5py.Group:
    group = entry.create_group(name)
    group.attrs["NX_class"] = "NXcollection"
    return group


def read_operando(path) -> dict:
    """The columns of an operando series file.

    Returns
    -------
    dict with ``records`` (int), ``summary`` {name: array}, ``electrochemistry``
    {name: (array, units)}, ``registration`` {name: array}, and the tables ``particles``,
    ``phases``, ``particle_phases``, ``events``, ``alarms`` as {column: array} (``record`` =
    summary row; a file from before a table existed reads it as {}).
    """
    with h5py.File(os.fspath(path), "r") as f:
        entry = f["operando"]
        summary = {}
        for name, ds in entry["summary"].items():
            summary[name] = ds.asstr()[()] if name in _TEXT else ds[()]
        echem = {name: (ds[()], ds.attrs.get("units", "")) for name, ds in
                 entry["electrochemistry"].items()}
        out = {"records": int(entry.attrs["records"]), "summary": summary,
               "electrochemistry": echem,
               "registration": {name: ds[()] for name, ds in
                                entry.get("registration", {}).items()}}
        for table in ("particles", "phases", "particle_phases", "events", "alarms"):
            group = entry.get(table, {})
            out[table] = {name: (ds.asstr()[()] if name in _TABLE_TEXT else ds[()])
                          for name, ds in group.items()}
        return out
