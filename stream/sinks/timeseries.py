"""The operando time-series file: one row per completed map, in one HDF5 file for the whole
experiment.

Layout (NeXus; ``silx view`` opens the summary plot against elapsed time)::

    /operando                 NXentry   default="summary", records=N
    /operando/summary         NXdata    signal mean_d, axes elapsed_s; time (unix s), series_id,
                                        complete, series_unique_id, correlation_id and every
                                        field of :data:`sxdm_stream.analysis.operando.SUMMARY_FIELDS`
    /operando/electrochemistry NXcollection  one dataset per channel (units attribute), NaN for
                                        records that did not carry it
    /operando/particles       NXcollection  the particle tables of every record, stacked:
                                        ``record`` (row of the summary) + one column per field

The file is rewritten whole (atomically, :func:`sxdm_stream.sinks.results.atomic_h5`) at each record:
it is small (a few hundred bytes per map) and a reader never sees half of it. A processor
restarted on an existing file continues its series.
"""

from __future__ import annotations

import logging
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


class OperandoSeriesFile:
    """Appends :class:`OperandoRecord` s to the time-series file at ``path``."""

    def __init__(self, path) -> None:
        self.path = Path(path)
        self.columns: dict[str, list] = {k: [] for k in (*_IDS, *_TEXT, *SUMMARY_FIELDS)}
        self.channels: dict[str, list[float]] = {}
        self.channel_units: dict[str, str] = {}
        self.particles: dict[str, list] = {}
        if self.path.exists():
            self._load()

    def __len__(self) -> int:
        return len(self.columns["time"])

    def append(self, record: OperandoRecord) -> None:
        """Add a record and rewrite the file."""
        n = len(self)
        values = {"time": record.time_s, "series_id": record.series_id,
                  "complete": record.complete, "series_unique_id": record.series_unique_id or "",
                  "correlation_id": record.correlation_id or "", **record.summary}
        for name, column in self.columns.items():
            column.append(values.get(name, np.nan))
        for name, (value, units) in record.channels.items():
            self.channels.setdefault(name, [np.nan] * n).append(value)
            self.channel_units.setdefault(name, units)
        for name, column in self.channels.items():
            if len(column) == n:
                column.append(np.nan)
        if record.particles is not None and len(record.particles):
            table = record.particles
            self.particles.setdefault("record", []).extend([n] * len(table))
            for name in table.dtype.names:
                self.particles.setdefault(name, []).extend(table[name].tolist())
        self._write()

    def _write(self) -> None:
        with atomic_h5(self.path) as f:
            f.attrs.update(NX_class="NXroot", default="operando")
            entry = f.create_group("operando")
            entry.attrs.update(NX_class="NXentry", default="summary", records=len(self))
            summary = entry.create_group("summary")
            summary.attrs.update(NX_class="NXdata", signal="mean_d", axes="elapsed_s")
            times = np.asarray(self.columns["time"], float)
            summary["elapsed_s"] = times - times[0] if times.size else times
            summary["elapsed_s"].attrs["units"] = "s"
            for name, column in self.columns.items():
                if name in _TEXT:
                    summary[name] = np.asarray(column, dtype=h5py.string_dtype())
                else:
                    summary[name] = np.asarray(column, dtype=bool if name == "complete" else float
                                               if name != "series_id" else np.int64)
                    summary[name].attrs["units"] = SUMMARY_FIELDS.get(name, "s" if name == "time" else "")
            echem = entry.create_group("electrochemistry")
            echem.attrs["NX_class"] = "NXcollection"
            for name, column in self.channels.items():
                echem[name] = np.asarray(column, float)
                echem[name].attrs["units"] = self.channel_units.get(name, "")
            particles = entry.create_group("particles")
            particles.attrs["NX_class"] = "NXcollection"
            for name, column in self.particles.items():
                particles[name] = np.asarray(column)

    def _load(self) -> None:
        try:
            columns = read_operando(self.path)
        except (OSError, KeyError) as exc:
            raise IncompatibleFileError(f"{self.path} is not an operando series file: {exc}") from None
        for name in self.columns:
            self.columns[name] = list(columns["summary"].get(name, [np.nan] * columns["records"]))
        for name, (values, units) in columns["electrochemistry"].items():
            self.channels[name], self.channel_units[name] = list(values), units
        self.particles = {k: list(v) for k, v in columns["particles"].items()}
        log.info("continuing the operando series in %s (%d records)", self.path, len(self))


def read_operando(path) -> dict:
    """The columns of an operando series file.

    Returns
    -------
    dict with ``records`` (int), ``summary`` {name: array}, ``electrochemistry``
    {name: (array, units)} and ``particles`` {name: array} (``record`` = summary row).
    """
    with h5py.File(os.fspath(path), "r") as f:
        entry = f["operando"]
        summary = {}
        for name, ds in entry["summary"].items():
            summary[name] = ds.asstr()[()] if name in _TEXT else ds[()]
        echem = {name: (ds[()], ds.attrs.get("units", "")) for name, ds in
                 entry["electrochemistry"].items()}
        particles = {name: ds[()] for name, ds in entry["particles"].items()}
        return {"records": int(entry.attrs["records"]), "summary": summary,
                "electrochemistry": echem, "particles": particles}
