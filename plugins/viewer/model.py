"""The viewer's model: the maps of the latest snapshot, its statistics, whether the processor is
reachable, the operando history and the selected map pixel, announced by Qt signals.

No widgets here. Sources (the subscriber thread, a results file) hand snapshots to the window's
refresh timer, which gives them to :meth:`ViewerModel.show_snapshots`, and operando records to
:meth:`ViewerModel.add_operando_records`; panels listen to the signals and redraw only what
changed.

The operando history has two origins. A processor publishes one operando record per completed
map (per particle and phase, with events and alarms): those are what the operando panel plots.
A source without records (a results file, an older processor) still gives one
:class:`OperandoPoint` per final snapshot, from the maps of its header; the panel plots those
only as long as no record has arrived, since a processor that sends records sends both for
every map. Both histories are bounded (:data:`MAX_OPERANDO`): memory stays flat over days.
"""

from __future__ import annotations

import collections
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np
from PySide6.QtCore import QObject, Signal

from sxdm_stream import MAP_FIELDS, LiveStatus, Snapshot, SnapshotHeader

from .operando_history import OperandoEntry, parse_record

log = logging.getLogger(__name__)

#: completed maps kept for the operando plots (a map every few minutes: weeks of a run)
MAX_OPERANDO = 10_000

#: how the units of :data:`sxdm_stream.core.maps.MAP_FIELDS` are written on axes and colour bars
UNIT_LABELS = {"angstrom": "Å", "1/angstrom": "Å⁻¹", "degree": "°", "microstrain": "µstrain",
               "counts": "counts", "": ""}

#: the values listed for a map pixel: (map, label, standard error map or None)
PIXEL_VALUES: tuple[tuple[str, str, str | None], ...] = (
    ("intensity", "intensity", None),
    ("d_spacing", "d", None),
    ("strain", "strain", "strain_stderr"),
    ("tilt_altitude", "tilt", "tilt_stderr"),
    ("tilt_azimuth", "tilt direction", None),
    ("q_abs", "|Q|", None),
    ("qx", "Qx", None), ("qy", "Qy", None), ("qz", "Qz", None),
    ("fwhm_qx", "FWHM qx", None), ("fwhm_qy", "FWHM qy", None), ("fwhm_qz", "FWHM qz", None),
)


def unit_label(units: str) -> str:
    """How ``units`` (as in MAP_FIELDS) is written for a reader: "angstrom" -> "Å"."""
    return UNIT_LABELS.get(units, units)


@dataclass(frozen=True)
class MapState:
    """One snapshot as the viewer shows it.

    Parameters
    ----------
    header : the snapshot's header (scan, processor status, units, analysis...).
    arrays : the maps by name (those of :func:`sxdm_stream.map_arrays`).
    received_s : ``time.monotonic()`` when the viewer received it.
    map_source : the q-ROI whose maps ``arrays`` holds (None: the whole detector's).
    """

    header: SnapshotHeader
    arrays: dict[str, np.ndarray]
    received_s: float = field(default_factory=time.monotonic)
    map_source: str | None = None

    @classmethod
    def from_snapshot(cls, snapshot: Snapshot, received_s: float | None = None) -> "MapState":
        """The state of a decoded snapshot (the wire's uint8 mask becomes bool)."""
        arrays = dict(snapshot.arrays)
        if "mask" in arrays:
            arrays["mask"] = np.asarray(arrays["mask"]).astype(bool)
        return cls(snapshot.header, arrays,
                   time.monotonic() if received_s is None else received_s)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the map."""
        return tuple(int(n) for n in self.arrays["intensity"].shape)

    @property
    def scan(self) -> Mapping[str, Any]:
        """The scan description (``ScanDescription.describe()``), empty if not sent."""
        return self.header.scan

    @property
    def stats(self) -> LiveStatus:
        """The processor's status when the snapshot was made (zeros if not sent)."""
        return self.header.stats

    @property
    def final(self) -> bool:
        """True for the last snapshot of a series that is over (complete or not)."""
        return self.header.final

    @property
    def series_key(self) -> tuple:
        """What tells one series from another (unique id when the detector gives one)."""
        return (self.header.series_id, self.header.series_unique_id)

    def motor(self, dim: int) -> str:
        """Name of the motor along map dimension 0 (rows) or 1 (columns)."""
        motors = self.scan.get("motors") or ("row", "col")
        return str(motors[dim])

    def axis_um(self, dim: int) -> np.ndarray:
        """Positions (micrometres) of the pixel centres along ``dim``; indices if unknown."""
        n = self.shape[dim]
        extents = self.scan.get("extents_um")
        if not extents:
            return np.arange(n, dtype=float)
        first, last = (float(v) for v in extents[dim])
        return np.linspace(first, last, n)

    def pixel_grid(self) -> tuple[float, float, float, float]:
        """(x0, y0, sx, sy): the centre of pixel (row, col) is at (x0 + col sx, y0 + row sy) um.

        x runs along the columns (fast motor), y along the rows (slow motor). A step is
        negative when the motor ran backwards; a single pixel along a dimension gets 1 um.
        """
        steps, firsts = [], []
        for dim in (1, 0):
            axis = self.axis_um(dim)
            firsts.append(float(axis[0]))
            steps.append(float(axis[1] - axis[0]) if len(axis) > 1 else 1.0)
        return firsts[0], firsts[1], steps[0], steps[1]

    def position_um(self, row: int, col: int) -> tuple[float, float]:
        """(y, x) of a pixel centre in micrometres."""
        x0, y0, sx, sy = self.pixel_grid()
        return y0 + row * sy, x0 + col * sx

    @property
    def rocking_angles(self) -> np.ndarray:
        """Rocking angle (degree) of each entry of ``intensity_per_angle``."""
        angles = self.scan.get("rocking_angles")
        if angles:
            return np.asarray(angles, float)
        return np.arange(self.arrays["intensity_per_angle"].shape[0], dtype=float)

    @property
    def rocking_axis(self) -> str:
        """Name of the rocking motor (``eta`` at ID01)."""
        return str(self.scan.get("rocking_axis", "rocking angle"))

    def units(self, name: str) -> str:
        """Display units of a map (from the header, else from MAP_FIELDS)."""
        raw = self.header.units.get(name, MAP_FIELDS.get(name, ("", ""))[0])
        return unit_label(raw)

    def values_at(self, row: int, col: int) -> list[tuple[str, float, float | None, str]]:
        """Every map's value at a pixel: (label, value, standard error or None, units)."""
        out = []
        for name, label, stderr in PIXEL_VALUES:
            if name not in self.arrays:
                continue
            err = float(self.arrays[stderr][row, col]) if stderr in self.arrays else None
            out.append((label, float(self.arrays[name][row, col]), err, self.units(name)))
        return out


@dataclass(frozen=True)
class OperandoPoint:
    """What one completed map says about the particle, for plots against time.

    ``mean_d`` (angstrom) is the mean d-spacing over the mask, ``strain_spread`` (microstrain)
    the standard deviation of the strain over the mask, ``max_tilt`` and ``mean_tilt``
    (degree) the largest and the mean tilt. ``channels`` are the run's electrochemistry
    values, name -> (value, units).
    """

    time_s: float
    series_id: Any
    mean_d: float
    strain_spread: float
    max_tilt: float
    channels: dict[str, tuple[float, str]]
    mean_tilt: float = math.nan

    def as_entry(self) -> OperandoEntry:
        """The point as an operando entry with the map's summary only (no particles)."""
        return OperandoEntry(self.time_s, self.series_id if isinstance(self.series_id, int)
                             else None,
                             summary={"mean_d": self.mean_d, "strain_spread": self.strain_spread,
                                      "max_tilt": self.max_tilt, "mean_tilt": self.mean_tilt},
                             channels=dict(self.channels))


def _finite(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, float)
    return a[np.isfinite(a)]


def electrochemistry_channels(header: SnapshotHeader) -> dict[str, tuple[float, str]]:
    """The operando channels of a snapshot header (``header.operando``), name -> (value, units).

    A channel is a number (``{"voltage_V": 4.1}``) or ``{"value": 4.1, "units": "V"}``;
    anything else is ignored (and logged once per name at debug level).
    """
    channels = {}
    for name, entry in header.operando.items():
        value, units = (entry.get("value"), str(entry.get("units", ""))) \
            if isinstance(entry, dict) else (entry, "")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            channels[str(name)] = (float(value), units)
        else:
            log.debug("operando channel %r is not a number: %r", name, entry)
    return channels


def operando_point(state: MapState) -> OperandoPoint:
    """The summary of one completed map (NaN where the mask is empty)."""
    d = _finite(state.arrays["d_spacing"])
    strain = _finite(state.arrays["strain"])
    tilt = _finite(state.arrays["tilt_altitude"])
    return OperandoPoint(
        time_s=state.header.time_s if state.header.time_s is not None else time.time(),
        series_id=state.header.series_id,
        mean_d=float(d.mean()) if d.size else math.nan,
        strain_spread=float(strain.std()) if strain.size else math.nan,
        max_tilt=float(tilt.max()) if tilt.size else math.nan,
        channels=electrochemistry_channels(state.header),
        mean_tilt=float(tilt.mean()) if tilt.size else math.nan,
    )


#: the map source that shows the whole detector (every q), as the selector names it
ALL_Q = "all q"

#: connection levels, from good to bad: what the banner shows
OK, IDLE, STALE, LOST = "ok", "idle", "stale", "lost"


class ViewerModel(QObject):
    """The state every widget of the viewer shows.

    Signals
    -------
    mapsChanged() : a newer snapshot replaced the maps (``state``).
    connectionChanged(str, str) : level (``ok``, ``idle``, ``stale``, ``lost``) and a message
        for the banner; emitted when either changes.
    operandoAppended(object) : an :class:`OperandoPoint` for a newly completed map (from its
        final snapshot).
    operandoRecorded(object) : an :class:`~.operando_history.OperandoEntry` for a newly
        received operando record.
    pixelSelected(int, int) : the map pixel (row, col) whose details are shown.
    mapSourceChanged(str) : the map panels show another q-ROI's maps (``ALL_Q``: all of q).
    particleSelected(object) : the particle label highlighted on the maps (None: none).
    """

    mapsChanged = Signal()
    connectionChanged = Signal(str, str)
    operandoAppended = Signal(object)
    operandoRecorded = Signal(object)
    pixelSelected = Signal(int, int)
    mapSourceChanged = Signal(str)
    particleSelected = Signal(object)

    def __init__(self, source: str = "", stale_after_s: float = 5.0,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.source = source
        self.stale_after_s = stale_after_s
        self.state: MapState | None = None
        self.updates = 0
        self.operando: collections.deque[OperandoPoint] = collections.deque(maxlen=MAX_OPERANDO)
        self.records: collections.deque[OperandoEntry] = collections.deque(maxlen=MAX_OPERANDO)
        #: unix time of the first operando record (or point): time zero of the operando plots
        self.operando_origin_s: float | None = None
        self.connection: tuple[str, str] = (IDLE, f"waiting for {source}")
        self.selected: tuple[int, int] | None = None
        self.map_source = ALL_Q
        self.particle: int | None = None
        self._completed: set[tuple] = set()
        self._started_s = time.monotonic()
        self._lost_since: float | None = None

    @property
    def reachable(self) -> bool:
        """False while the banner says the processor cannot be reached."""
        return self.connection[0] != LOST

    def show_snapshots(self, snapshots: Iterable[tuple[Snapshot, float]]) -> None:
        """Take snapshots (oldest first, with their monotonic arrival time); show the newest.

        Every final one adds an operando point; only the newest is drawn, once.
        """
        newest = None
        for snapshot, received_s in snapshots:
            newest = MapState.from_snapshot(snapshot, received_s)
            if newest.final and newest.series_key not in self._completed:
                self._completed.add(newest.series_key)
                point = operando_point(newest)
                self.operando.append(point)
                if self.operando_origin_s is None:
                    self.operando_origin_s = point.time_s
                self.operandoAppended.emit(point)
        if newest is None:
            return
        if self.selected is not None and not _inside(self.selected, newest.shape):
            self.selected = None
        self.state = newest
        self.updates += 1
        self._lost_since = None
        self._set_connection(OK, f"receiving from {self.source}")
        self.mapsChanged.emit()

    def check_connection(self, connected: bool | None, now_s: float | None = None) -> str:
        """Decide what the banner says; returns the level.

        Parameters
        ----------
        connected : whether the source's transport is connected (ZeroMQ's socket monitor),
            None when unknown: then only the silence of the source tells.
        now_s : ``time.monotonic()`` (default: now).

        A lost connection, or ``stale_after_s`` without any snapshot while no connection is
        known, means the processor is not reachable. Silence while connected is ``stale``
        during a scan and ``idle`` after a complete one (a finished processor sends nothing).
        """
        now_s = time.monotonic() if now_s is None else now_s
        last = self.state.received_s if self.state is not None else self._started_s
        silent = now_s - last
        if connected is False:
            self._lost_since = now_s if self._lost_since is None else self._lost_since
            self._set_connection(LOST, f"processor not reachable at {self.source} (connection "
                                       f"lost {now_s - self._lost_since:.0f} s ago); "
                                       "reconnecting by itself")
        elif silent <= self.stale_after_s and self.state is not None:
            self._lost_since = None
            self._set_connection(OK, f"receiving from {self.source}")
        elif silent <= self.stale_after_s and connected is None:
            self._set_connection(IDLE, f"connecting to {self.source}")
        elif connected is None and (self.state is None or not self.state.final):
            what = "no snapshot" if self.state is None else "no new snapshot"
            self._set_connection(LOST, f"processor not reachable at {self.source}: {what} for "
                                       f"{silent:.0f} s; reconnecting by itself")
        elif self.state is None:
            self._set_connection(IDLE, f"connected to {self.source}; waiting for a scan")
        elif self.state.final:
            self._set_connection(OK, f"scan {self.state.header.status}; waiting for the next one "
                                     f"from {self.source}")
        else:
            self._set_connection(STALE, f"no new snapshot for {silent:.0f} s: the processor is "
                                        "connected but receives no frames")
        return self.connection[0]

    def _set_connection(self, level: str, message: str) -> None:
        if (level, message) == self.connection:
            return
        if level != self.connection[0]:
            log.log(logging.WARNING if level == LOST else logging.INFO, "%s", message)
        self.connection = (level, message)
        self.connectionChanged.emit(level, message)

    def select_pixel(self, row: int, col: int) -> None:
        """Show the details of map pixel (row, col); ignored outside the map."""
        if self.state is None or not _inside((row, col), self.state.shape):
            return
        self.selected = (int(row), int(col))
        self.pixelSelected.emit(int(row), int(col))

    def select_map_source(self, name: str) -> None:
        """Show the maps of q-ROI ``name`` in the map panels (``ALL_Q``: the whole detector)."""
        if name != self.map_source:
            self.map_source = str(name)
            self.mapSourceChanged.emit(self.map_source)

    def select_particle(self, label: int | None) -> None:
        """Highlight particle ``label`` on the maps (None: none)."""
        label = None if label is None else int(label)
        if label != self.particle:
            self.particle = label
            self.particleSelected.emit(label)

    def add_operando_records(self, bodies: Iterable[Mapping]) -> None:
        """Keep operando records (decoded JSON objects, oldest first); announce each one.

        A record without a time is logged and skipped. Time zero is the first record's time.
        """
        for body in bodies:
            try:
                entry = parse_record(body)
            except ValueError as exc:
                log.warning("ignored an operando record: %s", exc)
                continue
            if not self.records:                  # records replace points, time zero too
                self.operando_origin_s = entry.time_s
            self.records.append(entry)
            self.operandoRecorded.emit(entry)

    def operando_entries(self) -> list[OperandoEntry]:
        """What the operando plots show: the records, or the points while none came."""
        if self.records:
            return list(self.records)
        return [point.as_entry() for point in self.operando]

    def reset_operando(self) -> None:
        """Forget the operando history (a new experiment)."""
        self.operando.clear()
        self.records.clear()
        self.operando_origin_s = None
        self._completed.clear()


def _inside(pixel: tuple[int, int], shape: tuple[int, int]) -> bool:
    return 0 <= pixel[0] < shape[0] and 0 <= pixel[1] < shape[1]
