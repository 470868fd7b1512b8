"""Simulated scans written as the beamline and XSOCS write them: small files for the tests.

* :func:`write_id01_scan_set`: an ESRF ID01 BLISS master file with one ``sxdm`` scan per
  rocking angle (``<n>.1``), its frames in per-scan Lima files reached through a virtual
  dataset (``instrument/<detector>/image``, soft-linked as ``measurement/<detector>``),
  measured piezo positions, ``technique/dim0, dim1``, the detector calibration and the
  monochromator, as in ``docs/reference/id01_and_xsocs.md`` (section 3.2).
* :func:`write_xsocs_master`: an XSOCS master file whose entries are external links to one
  file per rocking angle, laid out as ``xsocs.io.XsocsH5Writer`` writes them (detector
  ``center_chan``/``chan_per_deg``/``beam_energy``, positioners ``eta phi nu del``,
  ``measurement/image/data``, ``adcX/adcY``, ``imgnr``, ``scan/motor_*``).

Frames are gzip-compressed (level 1): simulated frames are sparse, so a 12 x 12 map of 15
rocking angles on a Maxipix takes a few megabytes. Measured positions are the nominal grid
plus a small seeded jitter, as real piezo read-backs are.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from sxdm_stream.core.geometry import HC_EV_ANGSTROM

from .scenarios import Scenario

#: XSOCS reads piezo positions from these counters (``xsocs.io.XsocsH5.MOTORCOLS``)
XSOCS_MOTOR_COUNTERS = {"pix": "adcY", "piy": "adcX", "piz": "adcZ"}
#: how the frames are compressed in the files: gzip (as h5py writes by default), bitshuffle-LZ4
#: (Eiger and Lima at ESRF; needs hdf5plugin to read) or none
FRAME_COMPRESSIONS = ("gzip", "bslz4", "none")


def _compression(name: str) -> dict:
    if name == "gzip":
        return {"compression": "gzip", "compression_opts": 1, "shuffle": True}
    if name == "bslz4":
        import hdf5plugin
        return dict(hdf5plugin.Bitshuffle(cname="lz4"))
    if name == "none":
        return {}
    raise ValueError(f"frame compression {name!r} is not one of {FRAME_COMPRESSIONS}")


def _write_frames(group: h5py.Group, name: str, scenario: Scenario, angle: int,
                  compression: str = "gzip") -> h5py.Dataset:
    """The frames of one rocking angle, (n_points, rows, cols) uint32, written one by one."""
    shape = (scenario.scan.n_points,) + tuple(scenario.geometry.detector.shape)
    ds = group.create_dataset(name, shape=shape, dtype=np.uint32, chunks=(1,) + shape[1:],
                              **_compression(compression))
    buf = np.zeros(shape[1:], np.uint32)
    for point in range(shape[0]):
        buf[...] = 0
        ds[point] = scenario.simulator.frame(angle, point, buf)
    return ds


def _measured(scenario: Scenario, jitter: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) positions in micrometres of every point, nominal + jitter x step."""
    scan = scenario.scan
    rows, cols = np.meshgrid(scan.axis_um(0), scan.axis_um(1), indexing="ij")
    rng = np.random.default_rng(seed)
    steps = [abs(e[1] - e[0]) / max(n - 1, 1) for e, n in zip(scan.extents_um, scan.shape)]
    return (rows.ravel() + jitter * steps[0] * rng.uniform(-1, 1, rows.size),
            cols.ravel() + jitter * steps[1] * rng.uniform(-1, 1, cols.size))


def _title(scenario: Scenario, expo_s: float, bliss: bool) -> str:
    scan = scenario.scan
    (r0, r1), (c0, c1) = scan.extents_um
    slow, fast = scan.motors
    args = [fast, c0, c1, scan.shape[1], slow, r0, r1, scan.shape[0], expo_s]
    if bliss:
        return "sxdm( " + ", ".join(str(a) for a in args) + " )"
    return "kmap " + " ".join(str(a) for a in args)


def write_id01_scan_set(scenario: Scenario, directory, name: str = "sample_0001",
                        detector: str = "mpx1x4", expo_s: float = 0.01, jitter: float = 0.02,
                        first_scan: int = 1, seed: int = 0, compression: str = "gzip") -> Path:
    """Write ``scenario`` as an ID01 BLISS scan set; returns the master file's path.

    Parameters
    ----------
    scenario : the simulated experiment (one ``sxdm`` scan per rocking angle).
    directory : where the master file and its ``scanNNNN/`` Lima files go.
    name : stem of the master file.
    detector : the detector's BLISS name (``mpx1x4``, ``mpxgaas``, ``eiger2M``...).
    expo_s : exposure time per frame, in the scan command.
    jitter : measured positions deviate from the grid by up to this fraction of a step.
    first_scan : number of the first scan (``<n>.1``).
    compression : of the Lima image files, one of :data:`FRAME_COMPRESSIONS`.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    master = directory / f"{name}.h5"
    scan, geo = scenario.scan, scenario.geometry
    det = geo.detector
    rows_um, cols_um = _measured(scenario, jitter, seed)
    with h5py.File(master, "w") as f:
        f.attrs.update(NX_class="NXroot", creator="Bliss", publisher="bliss")
        for angle in range(scan.n_angles):
            number = first_scan + angle
            lima = Path(f"scan{number:04d}") / f"{detector}_0000.h5"
            shape, dtype = _write_lima_file(directory / lima, detector, scenario, angle,
                                            compression)
            entry = f.create_group(f"{number}.1")
            entry.attrs["NX_class"] = "NXentry"
            entry["title"] = _title(scenario, expo_s, bliss=True)
            entry["start_time"] = "2026-11-24T10:00:00+01:00"
            inst = entry.create_group("instrument")
            inst.attrs["NX_class"] = "NXinstrument"
            _write_id01_detector(inst, detector, shape, dtype, lima, det, expo_s)
            for motor, values in zip(scan.motors, (rows_um, cols_um)):
                pos = inst.create_group(motor)
                pos.attrs["NX_class"] = "NXpositioner"
                pos["value"] = values
                pos["value"].attrs["units"] = "um"
            angles = scan.angles(angle)
            for group in ("positioners", "positioners_start"):
                g = inst.create_group(group)
                g.attrs["NX_class"] = "NXcollection"
                for axis, value in angles.items():
                    g[axis] = value
                    g[axis].attrs["units"] = "deg"
            mono = inst.create_group("monochromator")
            mono["Energy"] = geo.energy_ev / 1e3
            mono["Energy"].attrs["units"] = "keV"
            mono["WaveLength"] = HC_EV_ANGSTROM / geo.energy_ev * 1e-10
            mono["WaveLength"].attrs["units"] = "m"
            meas = entry.create_group("measurement")
            meas.attrs["NX_class"] = "NXcollection"
            meas[detector] = h5py.SoftLink(f"/{number}.1/instrument/{detector}/image")
            for motor in scan.motors:
                meas[motor] = h5py.SoftLink(f"/{number}.1/instrument/{motor}/value")
            tech = entry.create_group("technique")
            tech["dim0"], tech["dim1"] = scan.shape[1], scan.shape[0]   # fast, then slow
    return master


def _write_lima_file(path: Path, detector: str, scenario: Scenario, angle: int,
                     compression: str = "gzip") -> tuple:
    """A Lima file of one scan's frames; returns the frames' (shape, dtype)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        ds = _write_frames(f, f"entry_0000/instrument/{detector}/data", scenario, angle,
                           compression)
        return ds.shape, ds.dtype


def _write_id01_detector(inst: h5py.Group, detector: str, shape: tuple, dtype, lima: Path,
                         det, expo_s: float) -> None:
    g = inst.create_group(detector)
    g.attrs.update(NX_class="NXdetector", type="lima")
    layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
    # BLISS writes the source relative to the master file, as here
    layout[...] = h5py.VirtualSource(str(lima), f"entry_0000/instrument/{detector}/data",
                                     shape=shape)
    g.create_virtual_dataset("image", layout)
    acq = g.create_group("acq_parameters")
    acq["acq_mode"], acq["acq_trigger_mode"] = "ACCUMULATION", "EXTERNAL_TRIGGER_MULTI"
    acq["acq_expo_time"], acq["acq_nb_frames"] = expo_s, shape[0]
    g["beam_center_x"], g["beam_center_y"] = det.beam_center[1], det.beam_center[0]
    g["distance"] = det.distance_m
    g["x_pixel_size"] = g["y_pixel_size"] = det.pixel_size_m
    g["dim_i"], g["dim_j"] = det.shape[1], det.shape[0]
    if det.mask is not None:
        g["pixel_mask"] = np.asarray(det.mask, dtype=np.uint8)


def write_xsocs_master(scenario: Scenario, directory, prefix: str = "sample",
                       expo_s: float = 0.01, jitter: float = 0.02, seed: int = 0) -> Path:
    """Write ``scenario`` as an XSOCS master file and one entry file per rocking angle.

    XSOCS stores no detector distance nor pixel size: the calibration is
    ``chan_per_deg = 2 tan(0.5 deg) D / p`` (exact in xrayutilities' convention) and the
    direct-beam pixel. Returns the master file's path.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    master = directory / f"{prefix}_master.h5"
    scan, geo = scenario.scan, scenario.geometry
    det = geo.detector
    chan_per_deg = 2.0 * np.tan(np.deg2rad(0.5)) * det.distance_m / det.pixel_size_m
    rows_um, cols_um = _measured(scenario, jitter, seed)
    with h5py.File(master, "w") as mf:
        for angle in range(scan.n_angles):
            entry_name = f"{angle + 1}.1"
            entry_file = f"{prefix}_{entry_name}.h5"
            with h5py.File(directory / entry_file, "w") as f:
                entry = f.create_group(entry_name)
                entry.attrs["NX_class"] = "NXentry"
                entry["title"] = _title(scenario, expo_s, bliss=False)
                inst = entry.create_group("instrument")
                inst.attrs["NX_class"] = "NXinstrument"
                d = inst.create_group("detector")
                d.attrs["NX_class"] = "NXdetector"
                d["beam_energy"] = geo.energy_ev
                d["center_chan_dim0"], d["center_chan_dim1"] = det.beam_center
                d["chan_per_deg_dim0"] = d["chan_per_deg_dim1"] = chan_per_deg
                d["image_roi_offset"] = np.array([0, 0])
                pos = inst.create_group("positioners")
                pos.attrs["NX_class"] = "NXcollection"
                for axis, value in scan.angles(angle).items():
                    pos["del" if axis == "delta" else axis] = value   # SPEC's mnemonic
                meas = entry.create_group("measurement")
                meas.attrs["NX_class"] = "NXcollection"
                image = meas.create_group("image")
                image.attrs.update(NX_class="NXcollection", interpretation="image")
                _write_frames(image, "data", scenario, angle)
                image["info"] = d
                d["data"] = h5py.SoftLink(f"/{entry_name}/measurement/image/data")
                for motor, values in zip(scan.motors, (rows_um, cols_um)):
                    meas[XSOCS_MOTOR_COUNTERS.get(motor, motor)] = values
                meas["imgnr"] = np.arange(scan.n_points)
                _write_xsocs_scan_params(entry.create_group("scan"), scenario, expo_s)
            mf[entry_name] = h5py.ExternalLink(entry_file, entry_name)
    return master


def _write_xsocs_scan_params(g: h5py.Group, scenario: Scenario, expo_s: float) -> None:
    scan = scenario.scan
    (r0, r1), (c0, c1) = scan.extents_um
    slow, fast = scan.motors
    # motor_0 is the fast axis; steps are the number of points along it
    for i, (motor, first, last, n) in enumerate(((fast, c0, c1, scan.shape[1]),
                                                 (slow, r0, r1, scan.shape[0]))):
        g[f"motor_{i}"] = motor
        g[f"motor_{i}_start"], g[f"motor_{i}_end"] = float(first), float(last)
        g[f"motor_{i}_steps"] = int(n)
    g["delay"] = expo_s
