"""Results files: every map of a scan as NeXus ``NXdata``, plus what is needed to resume it.

Layout (``silx view`` and other NeXus tools follow the ``default`` attributes to the strain map)::

    /                         NXroot   default="entry", creator="sxdm-stream <version>"
    /entry                    NXentry  default="strain", extra attributes (status, frames...)
    /entry/<map>              NXdata   one per map: intensity, d_spacing, strain, tilt_*, q_abs,
                                       qx, qy, qz (COM), fwhm_q*, misorientation (RGB),
                                       strain_stderr, tilt_stderr, mask (uint8); axes y, x in um
    /entry/intensity_per_angle NXdata  (angles, rows, cols) against rocking angle, y, x
    /entry/instrument         NXinstrument  geometry (NXcollection), detector (NXdetector)
    /entry/process            NXprocess  program, version, date, configuration (JSON),
                                       scan, grid, q_ref, d_ref, mean_direction, ...
    /entry/accumulator        NXcollection  moments (angles, points, 10), frame_count
    /entry/qspace             NXdata   histogram (points, bx, by, bz) against qx, qy, qz; hits
    /entry/drift, particles, particle_labels, q_rois/<roi>/<map>, roi_suggestion, fits/<map>
                              what :func:`sxdm_stream.analysis.scan_analysis.analyse` derived, when given
                              (:mod:`sxdm_stream.sinks.results_analysis`)
    /entry/phases             NXcollection  with q shells: the phases (:func:`_write_phases`);
                              then /entry and its single-COM maps carry ``mixed_phase_pixels``

A file is written to ``path + ".tmp"`` and moved over ``path`` with :func:`os.replace`, so a
reader (a viewer polling the file during the scan) sees either the previous complete file or the
new complete file, never half of one.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime

import h5py
import numpy as np

from sxdm_stream.analysis.phases import PARTICLE_PHASE_FIELDS
from sxdm_stream.core.accumulate import Accumulator, ScanSetup
from sxdm_stream.core.maps import MapSet
from sxdm_stream.core.scan import ScanDescription
from sxdm_stream.errors import ConfigError
from sxdm_stream.sinks.nexus import atomic_h5, create_map_nxdata, json_default, write_map_groups
from sxdm_stream.sinks.results_analysis import write_analysis
# the readers live beside; importing them from here keeps working
from sxdm_stream.sinks.results_read import (FORMAT_VERSION, MAP_NAMES, PHASE_MAP_FIELDS,
                                            open_results, read_accumulator_state,
                                            read_configuration, read_maps, read_phases)
from sxdm_stream.version import __version__

__all__ = ["FORMAT_VERSION", "HISTOGRAM_GZIP_LEVEL", "MAP_NAMES", "open_results",
           "read_accumulator_state", "read_configuration", "read_maps", "read_phases",
           "write_results"]

logger = logging.getLogger(__name__)

#: the single-COM maps that average the phases of a mixed pixel (they get ``mixed_phase_pixels``)
_SINGLE_COM_MAPS = ("d_spacing", "strain", "q_abs", "qx", "qy", "qz", "tilt_altitude",
                    "tilt_azimuth", "misorientation", "fwhm_qx", "fwhm_qy", "fwhm_qz",
                    "strain_stderr", "tilt_stderr")

#: gzip level of the q-space histogram: mostly empty bins compress well even at the fastest level,
#: and the file is rewritten many times during a scan
HISTOGRAM_GZIP_LEVEL = 1


# ---- writing ------------------------------------------------------------------------------
def write_results(path, maps: MapSet, setup: ScanSetup, accumulator: Accumulator | None = None,
                  config: dict | None = None, hits=None, extra_attrs: dict | None = None,
                  analysis=None, compress_histogram: bool = True) -> None:
    """Write (or atomically replace) the results file of one scan.

    Parameters
    ----------
    path : str or os.PathLike, the ``.h5`` file; ``path + ".tmp"`` is used while writing.
    maps : the derived maps (NaN outside the mask).
    setup : the scan setup the maps come from (geometry, scan, grid, q_ref).
    accumulator : if given, its moments, frame counts and (when kept) q-space histograms are
        stored, so a later process can resume or re-derive the maps.
    config : the user's configuration, stored as JSON in ``/entry/process/user_config``.
    hits : (bx, by, bz) unmasked detector pixels per q bin (:meth:`ScanSetup.hits`), stored
        beside the histogram (so only with an accumulator that keeps one).
    extra_attrs : attributes of ``/entry`` such as ``status="running"`` or the frames processed;
        dicts and lists are stored as JSON text. With an accumulator, ``invalid_pixels`` (its
        detector pixels left out for holding no valid count) is one of them.
    analysis : a :class:`sxdm_stream.analysis.scan_analysis.ScanAnalysis` whose ``maps`` are ``maps``: its
        drift, particles, q-ROI maps, ROI suggestion, fits and phases are written too.
    compress_histogram : gzip the q-space histogram (:data:`HISTOGRAM_GZIP_LEVEL`). The live
        processor's writes at rocking-angle ends pass False: re-compressing hundreds of MB at
        every angle kept its writer busy half the time; the series' last write compresses.

    Raises
    ------
    ConfigError : the maps, accumulator or hits do not belong to ``setup``, or
        ``extra_attrs`` would overwrite ``NX_class`` or ``default``. The previous file, if
        any, is left as it was whenever writing fails.
    """
    _check_inputs(maps, setup, accumulator, hits)
    user_config = None if config is None else _to_json(config)
    attrs = dict(extra_attrs or {})
    if accumulator is not None:
        attrs.setdefault("invalid_pixels", accumulator.invalid_pixels)
    with atomic_h5(path) as f:
        entry = _write_entry(f, setup.scan, attrs)
        write_map_groups(entry, maps, setup.scan)
        _write_instrument(entry, setup)
        _write_process(entry, maps, setup, user_config)
        if accumulator is not None:
            _write_accumulator(entry, accumulator, hits, compress_histogram)
        if analysis is not None:
            write_analysis(entry, analysis, setup.scan)
            if analysis.phases is not None:
                _write_phases(entry, analysis.phases, setup.scan)
    logger.debug("wrote results %s", path)


def _check_inputs(maps: MapSet, setup: ScanSetup, accumulator, hits) -> None:
    scan = setup.scan
    if tuple(maps.intensity.shape) != tuple(scan.shape):
        raise ConfigError(f"maps of shape {maps.intensity.shape} do not fit the scan's "
                          f"{tuple(scan.shape)}")
    if accumulator is not None and accumulator.setup.fingerprint != setup.fingerprint:
        raise ConfigError("the accumulator belongs to another scan setup than the maps")
    if hits is not None and tuple(np.shape(hits)) != tuple(setup.grid.bins):
        raise ConfigError(f"hits of shape {np.shape(hits)} do not fit the q grid "
                          f"{tuple(setup.grid.bins)}")


def _to_json(value) -> str:
    return json.dumps(value, default=json_default, indent=2)


def _write_entry(f: h5py.File, scan: ScanDescription, extra_attrs: dict) -> h5py.Group:
    f.attrs.update(NX_class="NXroot", default="entry", creator=f"sxdm-stream {__version__}",
                   sxdm_stream_format=FORMAT_VERSION, file_time=_now(),
                   HDF5_Version=h5py.version.hdf5_version, h5py_version=h5py.version.version)
    entry = f.create_group("entry")
    entry.attrs.update(NX_class="NXentry", default="strain")
    entry["title"] = f"sxdm-stream results {scan.scan_id}".strip()
    for key, value in extra_attrs.items():
        if key in ("NX_class", "default"):
            raise ConfigError(f"extra attribute {key!r} would overwrite the NeXus structure")
        if value is None:
            continue
        entry.attrs[key] = _to_json(value) if isinstance(value, (dict, list, tuple)) else value
    return entry


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def _write_instrument(entry: h5py.Group, setup: ScanSetup) -> None:
    geo, det = setup.geometry, setup.geometry.detector
    described = geo.describe()
    inst = entry.create_group("instrument")
    inst.attrs["NX_class"] = "NXinstrument"
    fields = {
        "energy_ev": (geo.energy_ev, "eV"),
        "wavelength_a": (geo.wavelength_a, "angstrom"),
        "detector_name": (det.name, ""),
        "detector_shape": (list(det.shape), "pixel"),
        "detector_distance_m": (det.distance_m, "m"),
        "pixel_size_m": (det.pixel_size_m, "m"),
        "beam_center": (list(det.beam_center), "pixel (row, col)"),
        "roi": (list(det.roi_bounds), "pixel (row_start, row_stop, col_start, col_stop)"),
        "masked_pixels": (described["detector"]["masked_pixels"], "pixel"),
        "sample_axes": ([" ".join(map(str, a)) for a in described["sample_axes"]], ""),
        "detector_axes": ([" ".join(map(str, a)) for a in described["detector_axes"]], ""),
    }
    _write_collection(inst, "geometry", fields)
    nxdet = inst.create_group("detector")
    nxdet.attrs["NX_class"] = "NXdetector"
    _dataset(nxdet, "local_name", det.name, "")
    _dataset(nxdet, "distance", det.distance_m, "m")
    _dataset(nxdet, "x_pixel_size", det.pixel_size_m, "m")
    _dataset(nxdet, "y_pixel_size", det.pixel_size_m, "m")
    # NeXus beam_center_x runs along the fast (column) axis
    _dataset(nxdet, "beam_center_x", det.beam_center[1], "pixel")
    _dataset(nxdet, "beam_center_y", det.beam_center[0], "pixel")


def _write_collection(parent: h5py.Group, name: str, fields: dict) -> h5py.Group:
    group = parent.create_group(name)
    group.attrs["NX_class"] = "NXcollection"
    for key, (value, units) in fields.items():
        _dataset(group, key, value, units)
    return group


def _dataset(group: h5py.Group, name: str, value, units: str = "") -> h5py.Dataset:
    ds = group.create_dataset(name, data=value)
    if units:
        ds.attrs["units"] = units
    return ds


def _write_process(entry: h5py.Group, maps: MapSet, setup: ScanSetup,
                   user_config: str | None) -> None:
    proc = entry.create_group("process")
    proc.attrs["NX_class"] = "NXprocess"
    proc["program"] = "sxdm-stream"
    proc["version"] = __version__
    proc["date"] = _now()
    proc["configuration"] = _to_json(setup.describe())
    proc["configuration"].attrs["description"] = "ScanSetup.describe() as JSON"
    proc["fingerprint"] = setup.fingerprint
    if user_config is not None:
        proc["user_config"] = user_config
    _dataset(proc, "q_ref", np.asarray(setup.q_ref, float), "1/angstrom")
    _dataset(proc, "d_ref", float(maps.d_ref), "angstrom")
    _dataset(proc, "mean_direction", np.asarray(maps.mean_direction, float))
    e1 = _dataset(proc, "azimuth_reference", np.asarray(maps.azimuth_reference, float))
    e1.attrs["description"] = ("azimuth measured from this unit vector, counter-clockwise "
                               "about mean_direction")
    _dataset(proc, "mask_fraction", float(maps.mask_fraction))
    _write_scan(proc, setup.scan)
    grid = setup.grid
    _write_collection(proc, "grid", {
        "lo": (np.asarray(grid.lo, float), "1/angstrom"),
        "hi": (np.asarray(grid.hi, float), "1/angstrom"),
        "step": (np.asarray(grid.step, float), "1/angstrom"),
        "bins": (np.asarray(grid.bins, np.int64), ""),
        "histogram_kept": (bool(setup.keep_histogram), ""),
    })


def _write_scan(parent: h5py.Group, scan: ScanDescription) -> None:
    group = _write_collection(parent, "scan", {
        "shape": (np.asarray(scan.shape, np.int64), ""),
        "extents_um": (np.asarray(scan.extents_um, float), "um"),
        "motors": (list(scan.motors), ""),
        "rocking_axis": (scan.rocking_axis, ""),
        "rocking_angles": (np.asarray(scan.rocking_angles, float), "degree"),
        "frames_per_point": (scan.frames_per_point, ""),
        "snake": (bool(scan.snake), ""),
        "scan_id": (scan.scan_id, ""),
    })
    _write_collection(group, "fixed_angles",
                      {k: (float(v), "degree") for k, v in scan.fixed_angles.items()})


def _write_accumulator(entry: h5py.Group, acc: Accumulator, hits, compress: bool) -> None:
    setup = acc.setup
    group = entry.create_group("accumulator")
    group.attrs.update(NX_class="NXcollection", keep_histogram=bool(setup.keep_histogram),
                       histogram_dtype=str(setup.histogram_dtype), fingerprint=setup.fingerprint)
    moments = group.create_dataset("moments", data=acc.moments)
    moments.attrs["description"] = ("per rocking angle and map pixel: S0, S1 (x, y, z), "
                                    "S2 (xx, xy, xz, yy, yz, zz) of dq = q - q_ref")
    group.create_dataset("frame_count", data=acc.frame_count)
    if setup.q_rois:
        rois = group.create_dataset("roi_moments", data=acc.roi_moments)
        rois.attrs["description"] = ("per rocking angle, map pixel and q-ROI (in the order of "
                                     "the configuration's q_rois): the 10 moments")
    if setup.shells is not None:
        shells = group.create_dataset("shell_moments", data=acc.shell_moments)
        shells.attrs.update(description="per map pixel and |Q| slice: S0, S1 (x, y, z) of "
                                        "dq = q - q_ref", **_shell_attributes(setup.shells))
    if setup.keep_histogram:
        _write_qspace(entry, acc, hits, compress)


def _shell_attributes(shells) -> dict:
    return {"shells_lo": shells.lo, "shells_step": shells.step, "shells_n": shells.n,
            "shells_units": "1/angstrom"}


def _write_phases(entry: h5py.Group, phases, scan: ScanDescription) -> None:
    """``/entry/phases`` (a :class:`sxdm_stream.analysis.phases.PhaseAnalysis`)::

        phases                NXcollection  count, mixed_pixels, shells_lo/step/n
        phases/q_profile      NXdata   counts per |Q| slice of the masked map against q_abs
                                       (slice centres, 1/angstrom), d_spacing beside
        phases/phase_table    NXcollection  one column per field of Phase (units)
        phases/phase_<id>     NXcollection  NXdata intensity, fraction, d_spacing (maps)
        phases/mixed          NXdata   map pixels where two phases each hold mixed_fraction
        phases/particles      NXcollection  per particle and phase: label, phase_id, d_a,
                                       fraction, intensity
    """
    group = entry.create_group("phases")
    group.attrs.update(NX_class="NXcollection", count=len(phases.phases),
                       mixed_pixels=phases.n_mixed, default="q_profile",
                       description="phases along |Q| from the q-shell moments "
                                   "(sxdm_stream.analysis.phases)", **_shell_attributes(phases.shells))
    profile = group.create_group("q_profile")
    profile.attrs.update(NX_class="NXdata", signal="counts", axes=["q_abs"], q_abs_indices=0,
                         auxiliary_signals=["d_spacing"], title="counts per |Q| slice, masked map")
    _dataset(profile, "counts", phases.profile, "counts")
    _dataset(profile, "q_abs", phases.shells.centres, "1/angstrom").attrs["long_name"] = \
        "|Q| (1/angstrom)"
    _dataset(profile, "d_spacing", 2 * np.pi / phases.shells.centres, "angstrom")
    columns = {"phase_id": ("", np.int32), "d_a": ("angstrom", float), "fraction": ("", float),
               "intensity": ("counts", float), "first_shell": ("", np.int32),
               "stop_shell": ("", np.int32), "peak_shell": ("", np.int32),
               "q_lo": ("1/angstrom", float), "q_hi": ("1/angstrom", float)}
    _write_collection(group, "phase_table", {
        name: (np.array([getattr(p, name) for p in phases.phases], dtype), units)
        for name, (units, dtype) in columns.items()})
    for k, phase in enumerate(phases.phases):
        sub = group.create_group(f"phase_{phase.phase_id}")
        sub.attrs.update(NX_class="NXcollection", phase_id=phase.phase_id, d_a=phase.d_a,
                         default="d_spacing")
        for name, (units, title) in PHASE_MAP_FIELDS.items():
            create_map_nxdata(sub, name, getattr(phases, name)[k], units,
                              f"phase {phase.phase_id}: {title}", scan)
    create_map_nxdata(group, "mixed", phases.mixed.astype(np.uint8), "",
                      "map pixels whose counts hold two phases (1): the single-COM maps "
                      "average them there", scan)
    table = group.create_group("particles")
    table.attrs.update(NX_class="NXcollection", count=len(phases.particles))
    for name, (_dtype, units) in PARTICLE_PHASE_FIELDS.items():
        _dataset(table, name, phases.particles[name], units)
    note = "map pixels whose single centre of mass averages two phases (/entry/phases/mixed)"
    for target in [entry] + [entry[n] for n in _SINGLE_COM_MAPS if n in entry]:
        target.attrs.update(mixed_phase_pixels=phases.n_mixed, mixed_phase_note=note)


#: bytes of an array handed to HDF5 in one call: h5py holds the GIL for the whole call
#: (compression included), and the live processor's worker needs it between two frames;
#: gzip takes ~20 ms per MB
HDF5_BLOCK_BYTES = 4 << 20
HDF5_GZIP_BLOCK_BYTES = 1 << 20


def write_in_blocks(ds: h5py.Dataset, data: np.ndarray,
                    block_bytes: int = HDF5_BLOCK_BYTES) -> None:
    """``ds[...] = data``, a block of rows (first axis) of about ``block_bytes`` per HDF5
    call."""
    if data.size == 0:                            # nothing to write (HDF5 refuses empty selections)
        return
    rows = max(1, block_bytes // max(1, data[:1].nbytes))
    for start in range(0, len(data), rows):
        ds[start:start + rows] = data[start:start + rows]


def _write_qspace(entry: h5py.Group, acc: Accumulator, hits, compress: bool = True) -> None:
    grid = acc.setup.grid
    bins = tuple(int(b) for b in grid.bins)
    qspace = entry.create_group("qspace")
    qspace.attrs.update(NX_class="NXdata", signal="histogram", axes=[".", "qx", "qy", "qz"],
                        qx_indices=1, qy_indices=2, qz_indices=3,
                        title="q-space histogram of every map pixel (flat map index first)")
    hist = acc.histogram.reshape((len(acc.histogram),) + bins)
    filters = dict(compression="gzip", compression_opts=HISTOGRAM_GZIP_LEVEL, shuffle=True) \
        if compress else {}
    ds = qspace.create_dataset("histogram", shape=hist.shape, dtype=hist.dtype,
                               chunks=(1,) + bins, **filters)
    write_in_blocks(ds, hist, HDF5_GZIP_BLOCK_BYTES if compress else HDF5_BLOCK_BYTES)
    ds.attrs.update(units="counts", long_name="counts per q bin")
    for i, axis in enumerate(("qx", "qy", "qz")):
        ax = qspace.create_dataset(axis, data=grid.centres(i))
        ax.attrs.update(units="1/angstrom", long_name=f"{axis} (1/angstrom)")
    if hits is not None:
        h = qspace.create_dataset("hits", data=np.asarray(hits))
        h.attrs["long_name"] = "unmasked detector pixels per q bin, over all rocking angles"


