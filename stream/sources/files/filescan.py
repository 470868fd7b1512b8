"""A scan that a beamline already wrote to HDF5, read back frame by frame.

The readers of beamline layouts (:mod:`sxdm_stream.sources.files.id01`: an ESRF ID01 BLISS scan set;
:mod:`sxdm_stream.sources.files.xsocs`: an XSOCS master file) describe what they found as a
:class:`FileScan`: the scan (map, rocking angles), the geometry (from the file's metadata,
with the user's :class:`GeometryOverrides`), and one :class:`FileEntry` per rocking angle
(where its frames are, the measured positions of every frame). Frames are then read in blocks
by :class:`FrameReader`, one per thread. The acquisition order is the files' order: rocking
angle, then map point, which :class:`sxdm_stream.core.scan.ScanDescription` maps to frame indices.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import h5py
import numpy as np
from h5py import h5s

from sxdm_stream.core.geometry import Detector, Geometry
from sxdm_stream.core.scan import ScanDescription
from sxdm_stream.errors import ConfigError, IncompatibleFileError
from sxdm_stream.sources.files.masks import combine_masks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GeometryOverrides:
    """Values given by the user that replace what a file says (None: keep the file's).

    Units: eV, metres, pixels (row, col); ``roi`` is (row_start, row_stop, col_start,
    col_stop); ``mask`` is boolean (rows, cols), True = excluded, and is added to the file's
    (logical OR; the pixels of each are logged once).
    """

    energy_ev: float | None = None
    distance_m: float | None = None
    pixel_size_m: float | None = None
    beam_center: tuple[float, float] | None = None
    roi: tuple[int, int, int, int] | None = None
    mask: np.ndarray | None = field(default=None, repr=False)

    def apply(self, geometry: Geometry) -> Geometry:
        """``geometry`` with these values in place of its own."""
        det = geometry.detector
        changes = {k: v for k, v in (("distance_m", self.distance_m),
                                     ("pixel_size_m", self.pixel_size_m),
                                     ("beam_center", self.beam_center), ("roi", self.roi))
                   if v is not None}
        if "beam_center" in changes:
            changes["beam_center"] = tuple(float(v) for v in changes["beam_center"])
        if "roi" in changes:
            changes["roi"] = tuple(int(v) for v in changes["roi"])
        if self.mask is not None:
            masks = combine_masks(det.shape, {"the file": det.mask, "--mask": self.mask})
            log.info("%s", masks.summary())
            changes["mask"] = masks.mask
        detector = replace(det, **changes) if changes else det
        energy = self.energy_ev if self.energy_ev is not None else geometry.energy_ev
        return Geometry(detector, energy, geometry.diffractometer)


@dataclass(frozen=True)
class FileEntry:
    """The frames of one rocking angle: ``dataset`` in ``path`` (n_points, rows, cols), the
    measured positions of every frame (micrometres), by motor name, and the monitor counter
    of every frame (None: no monitor asked for)."""

    name: str
    path: Path
    dataset: str
    positions: Mapping[str, np.ndarray] = field(default_factory=dict, repr=False)
    monitor: np.ndarray | None = field(default=None, repr=False)


@dataclass(frozen=True)
class FileScan:
    """A scan read from files: what the processor needs, and where the frames are.

    ``frame_period_s`` is the time between frames at acquisition (None if the file does not
    say); ``kind`` names the layout ("id01", "xsocs").
    """

    path: Path
    kind: str
    scan: ScanDescription
    geometry: Geometry
    entries: tuple[FileEntry, ...]
    image_dtype: str = "uint32"
    frame_period_s: float | None = None

    def positions(self, frame_index: int) -> dict[str, float]:
        """Measured positions of a frame (map motors) and its rocking angle."""
        scan = self.scan
        angle, point = divmod(frame_index // scan.frames_per_point, scan.n_points)
        entry = self.entries[angle]
        found = {m: float(entry.positions[m][point]) for m in scan.motors if m in entry.positions}
        if len(found) < 2:                       # no measured positions: the nominal grid
            row, col = divmod(point, scan.shape[1])
            found = {scan.motors[0]: float(scan.axis_um(0)[row]),
                     scan.motors[1]: float(scan.axis_um(1)[col])}
        found[scan.rocking_axis] = scan.rocking_angles[angle]
        return found

    def monitor(self, frame_index: int) -> float | None:
        """The monitor counter of a frame (the counts are divided by it), or None."""
        scan = self.scan
        angle, point = divmod(frame_index // scan.frames_per_point, scan.n_points)
        values = self.entries[angle].monitor
        return None if values is None else float(values[point])

    def open(self) -> "FrameReader":
        return FrameReader(self)


class FrameReader:
    """Reads the frames of a :class:`FileScan` (one reader per thread)."""

    def __init__(self, file_scan: FileScan) -> None:
        self.file_scan = file_scan
        self._files: dict[Path, h5py.File] = {}
        self._vds_maps: dict[tuple, list | None] = {}

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def __enter__(self) -> "FrameReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def read(self, angle_index: int, start: int, stop: int) -> np.ndarray:
        """Frames ``start`` to ``stop`` (map points) of rocking angle ``angle_index``."""
        entry = self.file_scan.entries[angle_index]
        dataset = self._dataset(entry)
        try:
            return dataset[start:stop]
        except (OSError, RuntimeError) as exc:  # a missing external or virtual source file
            raise IncompatibleFileError(
                f"cannot read frames {start}..{stop} of {entry.path}:{entry.dataset}: {exc}"
            ) from None

    def read_bslz4(self, angle_index: int, start: int, stop: int) -> list[bytes] | None:
        """The frames ``start`` to ``stop`` as their bitshuffle-LZ4 chunks, read without
        decompressing (``read_direct_chunk``, through a virtual dataset to its sources);
        None when the frames are not stored one per chunk with that filter."""
        entry = self.file_scan.entries[angle_index]
        out = []
        for index in range(start, stop):
            located = self._chunk_source(entry, index)
            if located is None:
                return None
            source, source_index = located
            mask, chunk = source.id.read_direct_chunk((source_index, 0, 0))
            if mask:                             # the filter was skipped for this chunk
                return None
            out.append(chunk)
        return out

    def _chunk_source(self, entry: FileEntry, index: int):
        """(dataset holding frame ``index`` as a bslz4 chunk, its index there) or None."""
        key = (entry.path, entry.dataset)
        if key not in self._vds_maps:
            self._vds_maps[key] = self._virtual_map(entry)
        mapping = self._vds_maps[key]
        if mapping is None:
            return None
        for v0, v1, path, name, s0 in mapping:
            if v0 <= index <= v1:
                f = self._files.get(path)
                if f is None:
                    f = self._files[path] = open_hdf5(path)
                dataset = f[name]
                return (dataset, s0 + index - v0) if _one_bslz4_frame_per_chunk(dataset) else None
        return None

    def _virtual_map(self, entry: FileEntry) -> list | None:
        """[(first, last frame, file, dataset, first source frame)] of an entry's frames:
        the sources of a virtual dataset, or the dataset itself."""
        dataset = self._dataset(entry)
        if not dataset.is_virtual:
            return [(0, len(dataset) - 1, entry.path, dataset.name, 0)]
        try:
            plist = dataset.id.get_create_plist()
            mapping = []
            for j in range(plist.get_virtual_count()):
                vspace, source = plist.get_virtual_vspace(j), plist.get_virtual_srcspace(j)
                (v0, *_), (v1, *_) = (((0,), (len(dataset) - 1,))
                                      if vspace.get_select_type() == h5s.SEL_ALL
                                      else vspace.get_select_bounds())
                s0 = 0 if source.get_select_type() == h5s.SEL_ALL else source.get_select_bounds()[0][0]
                name = plist.get_virtual_filename(j)
                path = entry.path if name == "." else entry.path.parent / name
                mapping.append((v0, v1, path, plist.get_virtual_dsetname(j), s0))
            return mapping
        except (ValueError, RuntimeError, OSError):   # an unusual mapping: decompress instead
            return None

    def blocks(self, block_size: int = 64) -> Iterator[tuple[int, np.ndarray]]:
        """(first frame index, frames) in acquisition order."""
        scan = self.file_scan.scan
        for angle in range(scan.n_angles):
            for start in range(0, scan.n_points, block_size):
                stop = min(start + block_size, scan.n_points)
                yield angle * scan.n_points + start, self.read(angle, start, stop)

    def _dataset(self, entry: FileEntry) -> h5py.Dataset:
        f = self._files.get(entry.path)
        if f is None:
            f = self._files[entry.path] = open_hdf5(entry.path)
        return f[entry.dataset]


def _one_bslz4_frame_per_chunk(dataset: h5py.Dataset) -> bool:
    """True if every chunk of a (frames, rows, cols) dataset is one frame compressed by the
    bitshuffle filter (HDF5 filter 32008) with LZ4 (its fifth parameter, 2) alone."""
    filters, chunks = dataset._filters, dataset.chunks
    return ("32008" in filters and len(filters) == 1 and chunks is not None
            and dataset.ndim == 3 and chunks[0] == 1 and chunks[1:] == dataset.shape[1:]
            and tuple(filters["32008"])[4:5] == (2,))


def open_hdf5(path: str | os.PathLike) -> h5py.File:
    """Open an HDF5 file for reading; IncompatibleFileError if it is not one.

    The compression filters of detector files (bitshuffle-LZ4 of Eiger and Lima, LZ4,
    Blosc...) are registered with HDF5 by importing ``hdf5plugin`` here: without it such
    frames cannot be read at all."""
    import hdf5plugin  # noqa: F401  (registers the filters with HDF5)

    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise IncompatibleFileError(f"cannot open {path} as HDF5: {exc}") from None


def read_entry(path: Path, entry: h5py.Group, frames_name: str, n_points: int,
               position_names: Mapping[str, Sequence[str]], shape_from: str,
               monitor: str | None = None) -> FileEntry:
    """The :class:`FileEntry` of one rocking angle, checked.

    Parameters
    ----------
    path : the file the entry was opened from.
    entry : the entry's group; frames at ``measurement/<frames_name>``.
    n_points : frames the map calls for.
    position_names : per map motor, the measurement counters that may hold its positions.
    shape_from : where the map shape was read (for the error message).
    monitor : the measurement counter that monitors the beam (None: no normalisation).
    """
    meas = require(entry, "measurement", "the measurement")
    frames = require(meas, frames_name, f"the frames ({frames_name})")
    if not isinstance(frames, h5py.Dataset) or frames.ndim != 3 or frames.shape[0] != n_points:
        raise IncompatibleFileError(
            f"{path}:{entry.name}/measurement/{frames_name} has shape "
            f"{getattr(frames, 'shape', None)}; {shape_from} call for ({n_points}, rows, cols) "
            "flattened frames")
    check_virtual_sources(frames)
    positions = {}
    for motor, names in position_names.items():
        for name in names:
            if name in meas and meas[name].shape == (n_points,):
                positions[motor] = meas[name][()].astype(float)
                break
    return FileEntry(entry.name.strip("/"), path, f"{entry.name}/measurement/{frames_name}",
                     positions, None if monitor is None else _monitor(meas, monitor, n_points))


def _monitor(meas: h5py.Group, name: str, n_points: int) -> np.ndarray:
    """The counter ``measurement/<name>``, one value per frame, checked."""
    node = meas.get(name)
    if not isinstance(node, h5py.Dataset) or node.shape != (n_points,):
        counters = sorted(k for k, v in meas.items()
                          if isinstance(v, h5py.Dataset) and v.shape == (n_points,))
        raise IncompatibleFileError(
            f"{meas.file.filename}:{meas.name} has no monitor counter {name!r} of {n_points} "
            f"values (shape {getattr(node, 'shape', None)}); counters of that length: {counters}")
    return node[()].astype(float)


def check_virtual_sources(dataset: h5py.Dataset) -> None:
    """Refuse a virtual dataset whose source files are missing.

    HDF5 fills the frames of a missing source with zeros without a word: a scan set copied
    without its ``scanNNNN/`` Lima files would be processed as empty frames.
    """
    if not dataset.is_virtual:
        return
    base = Path(dataset.file.filename).parent
    missing = sorted({s.file_name for s in dataset.virtual_sources()
                      if s.file_name != "." and not (base / s.file_name).exists()
                      and not Path(s.file_name).exists()})
    if missing:
        raise IncompatibleFileError(f"{dataset.file.filename}:{dataset.name} is a virtual dataset "
                                    f"over files that are missing: {missing[:3]}"
                                    f"{' ...' if len(missing) > 3 else ''}")


def require(group: h5py.Group, name: str, what: str) -> h5py.Dataset | h5py.Group:
    """``group[name]``, or IncompatibleFileError saying what is missing and where."""
    try:
        node = group.get(name)
    except (KeyError, OSError) as exc:        # a dangling external link
        raise IncompatibleFileError(f"{group.file.filename}:{group.name}/{name} ({what}) "
                                    f"cannot be opened: {exc}") from None
    if node is None:
        raise IncompatibleFileError(f"{group.file.filename} lacks {group.name}/{name} ({what})")
    return node


def scalar(group: h5py.Group, name: str, what: str) -> float:
    """A number stored at ``group[name]`` (a scalar, or the first value of an array)."""
    value = np.asarray(require(group, name, what)[()])
    try:
        return float(value.reshape(-1)[0])
    except (IndexError, ValueError, TypeError):
        raise IncompatibleFileError(f"{group.file.filename}:{group.name}/{name} ({what}) is "
                                    f"not a number: {value!r:.60}") from None


def text(group: h5py.Group, name: str, default: str = "") -> str:
    node = group.get(name)
    if node is None:
        return default
    value = node[()]
    return value.decode() if isinstance(value, bytes) else str(value)


def check_overrides(overrides: GeometryOverrides | None) -> GeometryOverrides:
    overrides = overrides or GeometryOverrides()
    for name in ("energy_ev", "distance_m", "pixel_size_m"):
        value = getattr(overrides, name)
        if value is not None and not value > 0:
            raise ConfigError(f"{name} must be positive, got {value}")
    return overrides


def detector_from_file(shape, pixel_size_m: float, distance_m: float, beam_center, mask,
                       name: str) -> Detector:
    """A :class:`Detector` from file values, with a clear error if they make no sense."""
    try:
        return Detector(tuple(int(v) for v in shape), float(pixel_size_m), float(distance_m),
                        tuple(float(v) for v in beam_center), mask=mask, name=name)
    except ConfigError as exc:
        raise IncompatibleFileError(f"the detector calibration in the file is unusable: {exc}") from None
