"""XSOCS master files: entries by external link, one complete map per rocking angle.

The layout XSOCS reads (``xsocs.io.XsocsH5``; ``docs/reference/id01_and_xsocs.md`` section a)::

    /<entry>  -> ExternalLink("<prefix>_<entry>.h5", "/<entry>")     NX_class NXentry
      instrument/detector/  beam_energy (eV), center_chan_dim0/1 (direct-beam row, column),
                            chan_per_deg_dim0/1, image_roi_offset (row, col) [optional]
      instrument/positioners/  eta, phi, nu, del (scalars; "del" is SPEC's delta)
      measurement/image/data   (n_points, rows, cols)
      measurement/adcX, adcY   piezo read-backs: pix is adcY, piy is adcX (XSOCS MOTORCOLS)
      scan/motor_0 (fast), motor_0_start, motor_0_end, motor_0_steps, motor_1..., delay

XSOCS knows no detector distance nor pixel size, only channels per degree, which
xrayutilities turns into a pixel of ``2 tan(0.5 deg) / chan_per_deg`` at distance 1: only
their ratio matters, so the distance is 1 m unless ``--distance-m`` is given. The pixel mask
is not in the file (XSOCS takes it at conversion): give it with ``--mask``.
"""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np

from sxdm_stream.core.geometry import Diffractometer, Geometry
from sxdm_stream.core.scan import ScanDescription
from sxdm_stream.errors import IncompatibleFileError
from sxdm_stream.sources.files.filescan import (FileEntry, FileScan, GeometryOverrides,
                                                check_overrides, detector_from_file, open_hdf5,
                                                read_entry, require, scalar, text)

#: where XSOCS reads the piezo positions of a motor (xsocs.io.XsocsH5.MOTORCOLS)
MOTOR_COUNTERS = {"pix": "adcY", "piy": "adcX", "piz": "adcZ"}
#: XSOCS' positioner names for our diffractometer axes
POSITIONER_NAMES = {"delta": "del"}


def is_xsocs_master(f: h5py.File) -> bool:
    """True if the file's entries look like XSOCS entries (detector calibration + image)."""
    for name in f.keys():
        try:
            entry = f[name]
        except (KeyError, OSError):
            continue
        if isinstance(entry, h5py.Group) and "instrument/detector/center_chan_dim0" in entry:
            return True
    return False


def _entry_sort_key(name: str):
    # numeric padding, as XsocsH5._update_entries sorts them ("2.1" before "10.1")
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def read_xsocs_master(path, overrides: GeometryOverrides | None = None,
                      diffractometer: Diffractometer | None = None,
                      rocking_axis: str = "eta", monitor: str | None = None) -> FileScan:
    """Describe an XSOCS master file as one SXDM scan.

    Parameters
    ----------
    path : the master file (entries are external links to per-angle files).
    overrides : geometry values that replace the file's (distance, mask...).
    diffractometer : circles and senses (default ID01, XSOCS' own convention).
    rocking_axis : the sample circle stepped between entries.
    monitor : the counter of ``measurement/`` that monitors the beam; frames are normalised
        by it (None: not normalised).

    Raises
    ------
    IncompatibleFileError : no entries, a dangling link, a missing dataset, or entries that
        do not form one rocking series.
    """
    path = Path(path)
    overrides = check_overrides(overrides)
    diffractometer = diffractometer or Diffractometer()
    with open_hdf5(path) as f:
        names = sorted((n for n in f.keys() if _is_entry(f, n)), key=_entry_sort_key)
        if not names:
            raise IncompatibleFileError(f"{path} holds no XSOCS entries (NXentry groups)")
        first = f[names[0]]
        shape, motors, extents, delay = _raster(first)
        angles = [_angles(f[n], diffractometer) for n in names]
        fixed = {a: angles[0][a] for a in diffractometer.axis_names if a != rocking_axis}
        for n, a in zip(names, angles):
            moved = [k for k in fixed if abs(a[k] - fixed[k]) > 1e-9]
            if moved:
                raise IncompatibleFileError(f"{path}: entry {n} moves {moved}; only "
                                            f"{rocking_axis} may change between entries")
        entries = tuple(_entry(path, f[n], shape, motors, monitor) for n in names)
        dtype = str(f[entries[0].dataset].dtype)
        geometry = _geometry(first, overrides, diffractometer)
    scan = ScanDescription(shape=shape, extents_um=extents, motors=motors,
                           rocking_axis=rocking_axis,
                           rocking_angles=tuple(a[rocking_axis] for a in angles),
                           fixed_angles=fixed, scan_id=f"{path.stem}:{names[0]}-{names[-1]}")
    return FileScan(path, "xsocs", scan, geometry, entries, dtype, delay)


def _is_entry(f: h5py.File, name: str) -> bool:
    try:
        node = f[name]
    except (KeyError, OSError) as exc:
        raise IncompatibleFileError(f"{f.filename}: entry {name!r} cannot be opened (its "
                                    f"external file is missing?): {exc}") from None
    nx_class = node.attrs.get("NX_class", b"")
    nx_class = nx_class.decode() if isinstance(nx_class, bytes) else str(nx_class)
    return isinstance(node, h5py.Group) and nx_class == "NXentry"


def _raster(entry: h5py.Group):
    scan = require(entry, "scan", "the scan parameters")
    motors, starts, ends, steps = [], [], [], []
    for i in (0, 1):
        motors.append(text(scan, f"motor_{i}") or None)
        starts.append(scalar(scan, f"motor_{i}_start", "the raster start"))
        ends.append(scalar(scan, f"motor_{i}_end", "the raster end"))
        steps.append(int(scalar(scan, f"motor_{i}_steps", "the raster points")))
    if None in motors:
        raise IncompatibleFileError(f"{entry.file.filename}:{entry.name}/scan lacks motor names")
    delay = scalar(scan, "delay", "the exposure") if "delay" in scan else None
    # motor_0 is the fast axis: rows follow motor_1
    shape = (steps[1], steps[0])
    return shape, (motors[1], motors[0]), ((starts[1], ends[1]), (starts[0], ends[0])), delay


def _angles(entry: h5py.Group, diffractometer: Diffractometer) -> dict[str, float]:
    group = require(entry, "instrument/positioners", "the angles")
    return {axis: scalar(group, POSITIONER_NAMES.get(axis, axis), f"the {axis} angle")
            for axis in diffractometer.axis_names}


def _entry(path: Path, entry: h5py.Group, shape, motors, monitor: str | None) -> FileEntry:
    names = {m: tuple(n for n in (MOTOR_COUNTERS.get(m), m) if n) for m in motors}
    return read_entry(path, entry, "image/data", shape[0] * shape[1], names,
                      "scan/motor_*_steps", monitor)


def _geometry(entry: h5py.Group, overrides: GeometryOverrides,
              diffractometer: Diffractometer) -> Geometry:
    det = require(entry, "instrument/detector", "the detector calibration")
    frames = entry["measurement/image/data"]
    cpd = np.array([scalar(det, "chan_per_deg_dim0", "channels per degree (rows)"),
                    scalar(det, "chan_per_deg_dim1", "channels per degree (columns)")])
    if abs(cpd[0] - cpd[1]) > 1e-6 * cpd.max():
        raise IncompatibleFileError(f"{entry.file.filename}: channels per degree differ between "
                                    f"rows and columns {tuple(cpd)}: non-square pixels are not "
                                    "supported")
    offset = det["image_roi_offset"][()] if "image_roi_offset" in det else np.zeros(2)
    center = (scalar(det, "center_chan_dim0", "the direct-beam row") - float(offset[0]),
              scalar(det, "center_chan_dim1", "the direct-beam column") - float(offset[1]))
    distance = overrides.distance_m or 1.0
    pixel = distance * 2.0 * np.tan(np.deg2rad(0.5)) / float(cpd.mean())
    detector = detector_from_file(frames.shape[1:], pixel, distance, center, None, "detector")
    energy = scalar(det, "beam_energy", "the beam energy (eV)")
    return overrides.apply(Geometry(detector, energy, diffractometer))
