"""The analysis groups of a results file: drift, particles, q-ROI maps, ROI suggestion, fits.

Written beside the maps by :func:`sxdm_stream.sinks.results.write_results` when it is given a
:class:`sxdm_stream.analysis.scan_analysis.ScanAnalysis`::

    /entry/drift              NXcollection  mode, reference_angle, shifts_px (angles, 2) and
                                            shifts_um (row, col), confident, correlation
    /entry/particles          NXcollection  one column per field of the particle table (units)
    /entry/particle_labels    NXdata        map of particle labels (0 = none)
    /entry/q_rois             NXcollection  one NXcollection per ROI (attributes ``roi``, its
                                            description as JSON, and ``d_ref``) with its maps
                                            as NXdata (the layout of /entry)
    /entry/roi_suggestion     text          JSON of the suggested q-ROIs (peaks, boxes, d)
    /entry/fits               NXcollection  NXdata per Gaussian-fit map (fit_qx, fit_fwhm_qx...)

Readers: :func:`read_particles`, :func:`read_drift`, :func:`read_roi_maps`,
:func:`read_roi_suggestion`.
"""

from __future__ import annotations

import json
import os

import h5py
import numpy as np

from sxdm_stream.analysis.fits import fit_map_arrays
from sxdm_stream.analysis.particles import PARTICLE_DTYPE, PARTICLE_FIELDS
from sxdm_stream.analysis.roi_suggest import format_roi_suggestion
from sxdm_stream.core.scan import ScanDescription
from sxdm_stream.errors import IncompatibleFileError
from sxdm_stream.sinks.nexus import create_map_nxdata, json_default, write_map_groups
from sxdm_stream.sinks.results_read import open_results, read_maps

_FIT_UNITS = {"fit_d_spacing": "angstrom"}


def write_analysis(entry: h5py.Group, analysis, scan: ScanDescription) -> None:
    """Write the groups of ``analysis`` (a ScanAnalysis) under ``entry``."""
    if analysis.drift is not None:
        _write_drift(entry, analysis.drift)
    _write_particles(entry, analysis.particles, scan)
    if analysis.roi_maps:
        rois = entry.create_group("q_rois")
        rois.attrs["NX_class"] = "NXcollection"
        for roi in analysis.rois:
            maps = analysis.roi_maps[roi.name]
            group = rois.create_group(roi.name)
            group.attrs.update(NX_class="NXcollection", d_ref=maps.d_ref, default="strain",
                               roi=json.dumps(roi.describe(), default=json_default))
            write_map_groups(group, maps, scan)
    if analysis.roi_suggestion is not None:
        ds = entry.create_dataset("roi_suggestion", data=json.dumps(
            analysis.roi_suggestion.describe(), default=json_default))
        ds.attrs["text"] = format_roi_suggestion(analysis.roi_suggestion)
    if analysis.fits is not None:
        fits = entry.create_group("fits")
        fits.attrs["NX_class"] = "NXcollection"
        for name, data in fit_map_arrays(analysis.fits, scan.shape).items():
            units = _FIT_UNITS.get(name, "counts" if "amplitude" in name else "1/angstrom")
            create_map_nxdata(fits, name, data, units, f"Gaussian fit of the projections: {name}",
                              scan)


def _write_drift(entry: h5py.Group, estimate) -> None:
    group = entry.create_group("drift")
    group.attrs.update(NX_class="NXcollection", mode=estimate.mode,
                       reference_angle=int(estimate.reference_angle),
                       description="shift of the sample at each rocking angle against the "
                                   "reference angle (sxdm_stream.analysis.drift); maps are corrected")
    group.create_dataset("shifts_px", data=estimate.shifts_px).attrs["units"] = "pixel (row, col)"
    group.create_dataset("shifts_um", data=estimate.shifts_um).attrs["units"] = "um (row, col)"
    group.create_dataset("confident", data=np.asarray(estimate.confident, bool))
    group.create_dataset("correlation", data=np.asarray(estimate.correlation, float))


def _write_particles(entry: h5py.Group, table, scan: ScanDescription) -> None:
    group = entry.create_group("particles")
    group.attrs.update(NX_class="NXcollection", count=len(table))
    for name, (_dtype, units) in PARTICLE_FIELDS.items():
        ds = group.create_dataset(name, data=table.records[name])
        if units:
            ds.attrs["units"] = units
    create_map_nxdata(entry, "particle_labels", np.asarray(table.labels, np.int32), "",
                      "particle label of each map pixel (0 = none)", scan)


def read_particles(path) -> np.ndarray:
    """The particle table of a results file, as a structured array."""
    with open_results(path) as f:
        entry = f["entry"]
        if "particles" not in entry:
            raise IncompatibleFileError(f"{os.fspath(path)} has no particle table")
        group = entry["particles"]
        n = int(group.attrs["count"])
        out = np.zeros(n, PARTICLE_DTYPE)
        for name in PARTICLE_DTYPE.names:
            out[name] = group[name][()]
        return out


def read_drift(path) -> dict | None:
    """The drift of a results file: dict of its arrays and attributes, or None (off)."""
    with open_results(path) as f:
        entry = f["entry"]
        if "drift" not in entry:
            return None
        group = entry["drift"]
        return {"mode": str(group.attrs["mode"]), "reference_angle": int(group.attrs["reference_angle"]),
                **{name: group[name][()] for name in ("shifts_px", "shifts_um", "confident",
                                                      "correlation")}}


def read_roi_maps(path) -> dict[str, dict[str, np.ndarray]]:
    """ROI name -> its maps (the names of :func:`sxdm_stream.sinks.results.read_maps`)."""
    with open_results(path) as f:
        entry = f["entry"]
        if "q_rois" not in entry:
            return {}
        names = list(entry["q_rois"])
    return {name: read_maps(path, group=f"entry/q_rois/{name}") for name in names}


def read_roi_suggestion(path) -> dict | None:
    """The q-ROI suggestion of a results file (``RoiSuggestion.describe()`` plus its printout
    under ``text``), or None when none was made."""
    with open_results(path) as f:
        entry = f["entry"]
        if "roi_suggestion" not in entry:
            return None
        ds = entry["roi_suggestion"]
        return {**json.loads(ds.asstr()[()]), "text": str(ds.attrs.get("text", ""))}
