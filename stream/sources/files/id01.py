"""ESRF ID01 BLISS scan sets: one ``sxdm`` scan per rocking angle, read as one SXDM scan.

What the beamline writes (``docs/reference/id01_and_xsocs.md``, section 3.2)::

    /<n>.1/title                          "sxdm( pix, 0, 10, 100, piy, 0, 10, 100, 0.01 )"
    /<n>.1/technique/dim0, dim1           points along the fast, then the slow motor
    /<n>.1/measurement/<detector>         frames, flattened (dim0*dim1, rows, cols), often a
                                          virtual dataset over Lima files
    /<n>.1/measurement/<motor>            measured piezo positions (um), or <motor>_position
    /<n>.1/instrument/positioners/<axis>  diffractometer angles (eta, phi, nu, delta)
    /<n>.1/instrument/<detector>/         beam_center_x/y (col/row, pixels), distance (m),
                                          x/y_pixel_size (m), pixel_mask (non-zero = bad)
    /<n>.1/instrument/monochromator/      WaveLength (m) or Energy (keV)

The rocking angle is the sample circle whose value changes from scan to scan (eta unless
the scans say otherwise); every other angle must stay put.
"""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np

from sxdm_stream.core.geometry import HC_EV_ANGSTROM, Diffractometer, Geometry
from sxdm_stream.core.scan import ScanDescription
from sxdm_stream.errors import IncompatibleFileError
from sxdm_stream.sources.files.filescan import (FileEntry, FileScan, GeometryOverrides,
                                                check_overrides, detector_from_file, open_hdf5,
                                                read_entry, require, scalar, text)

#: detector names ID01 uses (as xsocs.io.bliss and cdiutils know them)
DETECTOR_NAMES = ("mpx1x4", "mpxgaas", "eiger2M", "eiger2_1m", "detector", "merlin")
#: scan commands that are SXDM maps
SXDM_COMMANDS = ("sxdm", "asxdm", "kmap", "mesh", "amesh", "dmesh")
_SCAN_KEY = re.compile(r"^(\d+)\.1$")
_TOKENS = re.compile(r"[\s,()]+")


def is_id01_scan_set(f: h5py.File) -> bool:
    """True if the file holds BLISS scans (``<n>.1`` groups with a ``technique``)."""
    return any(_SCAN_KEY.match(k) and "technique" in f[k] for k in f.keys())


def read_id01_scan_set(path, detector: str | None = None, scans: list[int] | None = None,
                       overrides: GeometryOverrides | None = None,
                       diffractometer: Diffractometer | None = None,
                       monitor: str | None = None) -> FileScan:
    """Describe an ID01 scan set as one SXDM scan.

    Parameters
    ----------
    path : the BLISS master (dataset) file.
    detector : the detector's name; default: the one of :data:`DETECTOR_NAMES` present.
    scans : scan numbers to use, in acquisition order; default every SXDM scan of the file.
    overrides : geometry values that replace the file's.
    diffractometer : circles and senses (default ID01).
    monitor : the counter of ``measurement/`` that monitors the beam (e.g. ``mon``); frames
        are normalised by it (None: not normalised).

    Raises
    ------
    IncompatibleFileError : no SXDM scans, a missing dataset, or scans that do not form one
        rocking series (different maps, detectors or fixed angles).
    """
    path = Path(path)
    overrides = check_overrides(overrides)
    diffractometer = diffractometer or Diffractometer()
    with open_hdf5(path) as f:
        names = _scan_names(f, scans)
        detector = detector or _find_detector(f[names[0]])
        first = f[names[0]]
        shape, motors, extents, expo_s = _raster(first)
        angles = [_angles(f[name], diffractometer) for name in names]
        rocking_axis, rocking, fixed = _rocking(angles, diffractometer, path)
        entries = tuple(_entry(path, f[name], detector, shape, motors, monitor)
                        for name in names)
        dtype = str(f[entries[0].dataset].dtype)
        geometry = overrides.apply(Geometry(_detector(first, detector), _energy_ev(first),
                                            diffractometer))
    scan = ScanDescription(shape=shape, extents_um=extents, motors=motors,
                           rocking_axis=rocking_axis, rocking_angles=tuple(rocking),
                           fixed_angles=fixed, scan_id=f"{path.stem}:{names[0]}-{names[-1]}")
    return FileScan(path, "id01", scan, geometry, entries, dtype, expo_s)


def _scan_names(f: h5py.File, scans: list[int] | None) -> list[str]:
    if scans is not None:
        names = [f"{int(n)}.1" for n in scans]
        missing = [n for n in names if n not in f]
        if missing:
            raise IncompatibleFileError(f"{f.filename} has no scans {missing}")
        return names
    numbered = sorted((int(m.group(1)), k) for k in f.keys() if (m := _SCAN_KEY.match(k)))
    names = [k for _, k in numbered if "technique" in f[k] and _command(f[k]) in SXDM_COMMANDS]
    if not names:
        raise IncompatibleFileError(f"{f.filename} holds no SXDM scans ({', '.join(SXDM_COMMANDS)} "
                                    "with a technique/dim0, dim1)")
    return names


def _command(entry: h5py.Group) -> str:
    tokens = [t for t in _TOKENS.split(text(entry, "title")) if t]
    return tokens[0] if tokens else ""


def _find_detector(entry: h5py.Group) -> str:
    found = [d for d in DETECTOR_NAMES if d in entry.get("measurement", {})]
    if not found:
        raise IncompatibleFileError(f"{entry.file.filename}:{entry.name}/measurement has none of "
                                    f"the detectors {DETECTOR_NAMES}: name it with --detector")
    return found[0]


def _raster(entry: h5py.Group):
    """(shape, motors, extents, exposure) from technique/dim0, dim1 and the scan command."""
    tech = require(entry, "technique", "the map shape")
    fast_n = int(scalar(tech, "dim0", "points along the fast motor"))
    slow_n = int(scalar(tech, "dim1", "points along the slow motor"))
    title = text(entry, "title")
    tokens = [t for t in _TOKENS.split(title) if t]
    try:
        fast, f0, f1, _fn, slow, s0, s1, _sn, expo = tokens[1:10]
        extents = ((float(s0), float(s1)), (float(f0), float(f1)))
        expo_s = float(expo)
    except ValueError:
        raise IncompatibleFileError(f"{entry.file.filename}:{entry.name}/title {title!r} is not "
                                    "an SXDM command (sxdm fast start stop n slow start stop n "
                                    "expo)") from None
    return (slow_n, fast_n), (slow, fast), extents, expo_s


def _angles(entry: h5py.Group, diffractometer: Diffractometer) -> dict[str, float]:
    inst = require(entry, "instrument", "the instrument")
    group = inst.get("positioners_start") or require(inst, "positioners", "the angles")
    return {axis: scalar(group, axis, f"the {axis} angle") for axis in diffractometer.axis_names}


def _rocking(angles: list[dict[str, float]], diffractometer: Diffractometer, path: Path):
    names = diffractometer.axis_names
    moving = [a for a in names if np.ptp([s[a] for s in angles]) > 1e-9]
    sample = [a.name for a in diffractometer.sample_axes]
    if len(moving) > 1 or (moving and moving[0] not in sample):
        raise IncompatibleFileError(f"{path}: the scans change {moving}; an SXDM rocking series "
                                    f"changes one sample circle of {sample} only")
    axis = moving[0] if moving else sample[0]
    fixed = {a: angles[0][a] for a in names if a != axis}
    return axis, [s[axis] for s in angles], fixed


def _entry(path: Path, entry: h5py.Group, detector: str, shape, motors,
           monitor: str | None) -> FileEntry:
    names = {m: (m, f"{m}_position") for m in motors}      # newer, older BLISS counters
    return read_entry(path, entry, detector, shape[0] * shape[1], names,
                      "the scan's technique/dim0, dim1", monitor)


def _detector(entry: h5py.Group, detector: str):
    g = require(entry, f"instrument/{detector}", "the detector calibration")
    frames = entry[f"measurement/{detector}"]
    mask = g["pixel_mask"][()] != 0 if "pixel_mask" in g else None
    if mask is not None and mask.shape != frames.shape[1:]:
        mask = None
    return detector_from_file(
        frames.shape[1:], scalar(g, "x_pixel_size", "the pixel size (m)"),
        scalar(g, "distance", "the detector distance (m)"),
        (scalar(g, "beam_center_y", "the direct-beam row"),
         scalar(g, "beam_center_x", "the direct-beam column")), mask, detector)


def _energy_ev(entry: h5py.Group) -> float:
    mono = require(entry, "instrument/monochromator", "the beam energy")
    if "WaveLength" in mono:
        return HC_EV_ANGSTROM / (scalar(mono, "WaveLength", "the wavelength (m)") * 1e10)
    return scalar(mono, "Energy", "the beam energy (keV)") * 1e3
