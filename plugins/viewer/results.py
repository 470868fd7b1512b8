"""A results file as the viewer's source: its maps as a snapshot, its q-space histograms.

A live processor rewrites its results file at the end of every rocking angle, atomically
(:func:`sxdm_stream.sinks.results.write_results` moves a complete new file over the old one), so the
viewer may follow a file during a scan: :meth:`ResultsFile.take` reads it again whenever it
changed on disk.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import h5py
import numpy as np
from PySide6.QtCore import QObject, Signal

from sxdm_stream import (MAP_FIELDS, IncompatibleFileError, LiveStatus, PixelReply, Snapshot,
                         SnapshotHeader, SxdmError, read_configuration, read_drift, read_maps,
                         read_particles, read_roi_maps, read_roi_suggestion)

log = logging.getLogger(__name__)


def read_snapshot(path: str | os.PathLike) -> Snapshot:
    """The maps of a results file with a header shaped like a live snapshot's.

    Raises
    ------
    IncompatibleFileError : not an sxdm-stream results file.
    FileNotFoundError : no such file.
    """
    arrays = read_maps(path)
    config = read_configuration(path)
    scan = config.get("scan", {})
    with h5py.File(path, "r") as f:
        attrs = {k: _attr(v) for k, v in f["entry"].attrs.items()}
        process = f["entry/process"]
        d_ref = float(process["d_ref"][()]) if "d_ref" in process else float("nan")
    n_frames = len(scan.get("rocking_angles", ())) * int(np.prod(scan.get("shape", (0, 0))))
    processed = int(attrs.get("frames_processed", 0))
    stats = LiveStatus(received=int(attrs.get("frames_received", processed)),
                       processed=processed, dropped=int(attrs.get("frames_dropped", 0)),
                       rejected={"total": int(attrs.get("frames_rejected", 0))}
                       if attrs.get("frames_rejected") else {},
                       progress=(processed, n_frames) if n_frames else None)
    status = str(attrs.get("status", "complete"))     # "running" while a processor writes it
    order = [roi.get("name") for roi in (config.get("settings") or {}).get("q_rois") or ()]
    analysis_header, analysis_arrays = read_analysis(path, order)
    header = SnapshotHeader(
        time_s=os.stat(path).st_mtime, series_id=attrs.get("series_id"),
        series_unique_id=attrs.get("series_unique_id") or os.fspath(path),
        final=status != "running", status=status,
        frames_missing=int(attrs.get("frames_missing", 0)), scan=scan, stats=stats,
        d_ref_a=d_ref, units={n: u for n, (u, _t) in MAP_FIELDS.items()},
        operando=_json(attrs.get("operando")) or {}, **analysis_header)
    return Snapshot(header, {**arrays, **analysis_arrays})


def read_analysis(path: str | os.PathLike, order: list | tuple = ()
                  ) -> tuple[dict, dict[str, np.ndarray]]:
    """The particles, drift, q-ROIs and ROI suggestion of a results file, as the header fields
    (of :class:`~sxdm_stream.SnapshotHeader`) and arrays of a live snapshot
    (``particle_labels``, ``roi.<name>.<map>``: every map a file holds for a ROI, where a
    snapshot carries only intensity, d, strain, tilt and mask).
    q-ROIs come in the configuration's ``order`` (HDF5 sorts groups by name), others after."""
    header, arrays = {}, {}
    with h5py.File(path, "r") as f:
        entry = f["entry"]
        if "particle_labels" in entry:
            arrays["particle_labels"] = entry["particle_labels/particle_labels"][()]
        has_particles, has_rois = "particles" in entry, "q_rois" in entry
        q_rois = {name: {**(_json(_attr(group.attrs.get("roi"))) or {"name": name}),
                         "d_ref": float(group.attrs.get("d_ref", np.nan))}
                  for name, group in entry["q_rois"].items()} if has_rois else {}
    if has_particles:
        records = read_particles(path)
        header["particles"] = tuple({name: _attr(row[name]) for name in records.dtype.names}
                                    for row in records)
    drift = read_drift(path)
    if drift is not None:
        header["drift"] = {key: value.tolist() if isinstance(value, np.ndarray) else value
                           for key, value in drift.items()}
    if q_rois:
        rank = {name: k for k, name in enumerate(order)}
        header["q_rois"] = dict(sorted(q_rois.items(), key=lambda kv: (rank.get(kv[0], len(rank)),
                                                                        kv[0])))
        for name, maps in read_roi_maps(path).items():
            arrays.update({f"roi.{name}.{key}": a for key, a in maps.items()
                           if key != "intensity_per_angle"})
    suggestion = read_roi_suggestion(path)
    if suggestion is not None:
        header["roi_suggestion"] = suggestion
    return header, arrays


def read_pixel(path: str | os.PathLike, point: int) -> PixelReply:
    """The q-space histogram of map pixel ``point`` from /entry/qspace, as a pixel reply.

    Raises
    ------
    IncompatibleFileError : the file holds no q-space histograms, or ``point`` is outside.
    """
    with h5py.File(path, "r") as f:
        if "qspace" not in f.get("entry", {}):
            raise IncompatibleFileError(f"{os.fspath(path)} holds no q-space histograms "
                                        "(written without an accumulator or with moments only)")
        qspace = f["entry/qspace"]
        n_points = qspace["histogram"].shape[0]
        if not 0 <= point < n_points:
            raise IncompatibleFileError(f"map pixel {point} is outside 0..{n_points - 1}")
        histogram = qspace["histogram"][point]          # one chunk: one pixel
        axes = [qspace[a][()] for a in ("qx", "qy", "qz")]
    grid = {"lo": [float(a[0]) for a in axes],
            "step": [float(a[1] - a[0]) if len(a) > 1 else 1.0 for a in axes],
            "bins": [len(a) for a in axes]}
    return PixelReply({"point": int(point), "grid": grid}, {"histogram": histogram})


class ResultsFile(QObject):
    """A results file as a snapshot source for the viewer (see :class:`SnapshotFeed`).

    Signals
    -------
    arrived() : the file changed and was read again (emitted from :meth:`take`).
    """

    arrived = Signal()

    def __init__(self, path: str | os.PathLike, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.path = Path(path)
        self._seen: tuple | None = None
        self._reported = False

    @property
    def connected(self) -> bool | None:
        """A file is "connected" while it exists."""
        return self.path.exists()

    def describe(self) -> str:
        return os.fspath(self.path)

    def start(self) -> "ResultsFile":
        return self

    def stop(self) -> None:
        """Nothing runs in the background."""

    def take(self) -> list[tuple[Snapshot, float]]:
        """The file's maps if it changed since the last call, else nothing."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return []
        key = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if key == self._seen:
            return []
        try:
            snapshot = read_snapshot(self.path)
        except (OSError, KeyError, SxdmError) as exc:
            if not self._reported:
                log.warning("cannot read %s: %s", self.path, exc)
                self._reported = True
            return []
        self._seen, self._reported = key, False
        self.arrived.emit()
        return [(snapshot, time.monotonic())]


class FileHistograms(QObject):
    """The q-space histograms of a results file, with the signals of :class:`PixelService`."""

    replied = Signal(int, object)
    failed = Signal(int, str)

    def __init__(self, path: str | os.PathLike, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.path = Path(path)

    def describe(self) -> str:
        return f"/entry/qspace of {self.path.name}"

    def start(self) -> "FileHistograms":
        return self

    def stop(self) -> None:
        """Nothing runs in the background."""

    def request(self, point: int) -> None:
        """Read the histogram of map pixel ``point`` (one compressed chunk: milliseconds)."""
        try:
            reply = read_pixel(self.path, point)
        except (OSError, KeyError, SxdmError) as exc:
            self.failed.emit(int(point), str(exc))
            return
        self.replied.emit(int(point), reply)


def _attr(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _json(value):
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return None
