"""What the processor derives beyond the maps, read from a snapshot: particles, drift, q-ROI maps
and the q-ROI suggestion. No widgets here: the analysis tab and the map panels show these.

A snapshot carries them in its header (``particles``, ``drift``, ``q_rois``,
``roi_suggestion``) and arrays (``particle_labels``, ``roi.<name>.<map>``): see
:mod:`sxdm_stream.sinks.publish`. A results file gives the same through
:func:`~.results.read_snapshot`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from sxdm_stream import PARTICLE_FIELDS

from .model import MapState, unit_label

#: the maps a q-ROI snapshot carries (``roi.<name>.<map>``); a file has them all
ROI_PREFIX = "roi."
#: how the particle table writes the units of PARTICLE_FIELDS
_PARTICLE_UNITS = {"um^2": "µm²", "um": "µm", "pixels": "px"}
#: particle table headers: field -> short label (units are added from PARTICLE_FIELDS)
PARTICLE_LABELS = {
    "label": "#", "area_px": "area", "area_um2": "area", "centroid_row_um": "centroid row",
    "centroid_col_um": "centroid col", "intensity": "intensity", "mean_d_a": "mean d",
    "mean_strain": "mean strain", "strain_std": "strain std", "max_tilt_deg": "max tilt",
    "mean_tilt_deg": "mean tilt", "mean_tilt_azimuth_deg": "tilt direction",
    "tilt_spread_deg": "tilt spread", "n_domains": "domains"}


def particle_header(name: str) -> str:
    """The column header of a particle field, with its units: ``mean d (Å)``."""
    units = PARTICLE_FIELDS.get(name, ("", ""))[1]
    units = _PARTICLE_UNITS.get(units, unit_label(units))
    label = PARTICLE_LABELS.get(name, name)
    return f"{label} ({units})" if units else label


def particles(state: MapState) -> list[dict[str, Any]]:
    """The particle table of a snapshot: one dict per particle (None for a missing value)."""
    return [dict(record) for record in state.header.particles]


def format_particle_value(name: str, value) -> str:
    """A table cell: integers as they are, floats to a precision that fits the field."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if PARTICLE_FIELDS.get(name, ("f8",))[0].startswith("i"):
        return str(int(value))
    if name == "mean_d_a":
        return f"{value:.5f}"
    return f"{value:.4g}"


def drift(state: MapState) -> dict[str, np.ndarray] | None:
    """The drift estimate of a snapshot as arrays (shifts_um (angles, 2), confident (angles,),
    angles (angles,) in degrees, or indices when the scan gives no angles), None without."""
    entry = state.header.drift
    if not entry or entry.get("shifts_um") is None:
        return None
    shifts = np.asarray(entry["shifts_um"], float).reshape(-1, 2)
    confident = np.asarray(entry.get("confident") or [True] * len(shifts), bool)
    angles = np.asarray(state.scan.get("rocking_angles") or [], float)
    if angles.shape != (len(shifts),):
        angles = np.arange(len(shifts), dtype=float)
    return {"angles": angles, "shifts_um": shifts, "confident": confident,
            "reference_angle": int(entry.get("reference_angle", 0)),
            "mode": str(entry.get("mode", ""))}


def roi_names(state: MapState) -> list[str]:
    """The q-ROIs whose maps the snapshot carries, in the header's order."""
    names = list(state.header.q_rois)
    present = {key.split(".")[1] for key in state.arrays if key.startswith(ROI_PREFIX)}
    return [n for n in names if n in present] + sorted(present - set(names))


def roi_state(state: MapState, name: str) -> MapState:
    """The maps of q-ROI ``name`` as a MapState (the snapshot's header, the ROI's own d_ref);
    maps the ROI does not carry are absent (panels show them blank)."""
    prefix = f"{ROI_PREFIX}{name}."
    arrays = {key[len(prefix):]: a for key, a in state.arrays.items() if key.startswith(prefix)}
    if "mask" in arrays:
        arrays["mask"] = np.asarray(arrays["mask"]).astype(bool)
    if "intensity_per_angle" in state.arrays and "intensity_per_angle" not in arrays:
        arrays["intensity_per_angle"] = state.arrays["intensity_per_angle"]
    d_ref = state.header.q_rois.get(name, {}).get("d_ref")
    header = state.header if not isinstance(d_ref, (int, float)) else dataclasses.replace(
        state.header, d_ref_a=float(d_ref))
    return MapState(header, arrays, state.received_s, map_source=name)


def particle_pixel(state: MapState, label: int) -> tuple[int, int] | None:
    """The map pixel of a particle's centroid (the particle's own pixel nearest to it)."""
    record = next((p for p in particles(state) if p.get("label") == label), None)
    labels = state.arrays.get("particle_labels")
    if record is None or labels is None:
        return None
    rows, cols = np.nonzero(np.asarray(labels) == label)
    if rows.size == 0:
        return None
    x0, y0, sx, sy = state.pixel_grid()
    y, x = record.get("centroid_row_um"), record.get("centroid_col_um")
    if y is None or x is None:
        return int(rows[0]), int(cols[0])
    distance = ((y0 + rows * sy - y) / sy) ** 2 + ((x0 + cols * sx - x) / sx) ** 2
    k = int(np.argmin(distance))
    return int(rows[k]), int(cols[k])


def particle_region(state: MapState, label: int | None) -> np.ndarray | None:
    """Boolean map of the pixels of particle ``label``; None when there is none."""
    labels = state.arrays.get("particle_labels")
    if label is None or labels is None:
        return None
    region = np.asarray(labels) == label
    return region if region.any() else None


def suggestion_text(state: MapState) -> str:
    """The q-ROI suggestion as the processor prints it; empty when the snapshot has none."""
    entry = state.header.roi_suggestion
    if not entry:
        return ""
    return str(entry.get("text") or entry)


def roi_text(state: MapState) -> str:
    """One line per q-ROI in use: name, shape, bounds (1/Å) and d_ref (Å)."""
    lines = []
    for name, d in state.header.q_rois.items():
        lo = ", ".join(f"{v:.5f}" for v in d.get("lo", ()))
        hi = ", ".join(f"{v:.5f}" for v in d.get("hi", ()))
        d_ref = d.get("d_ref")
        ref = f", d_ref {d_ref:.5f} Å" if isinstance(d_ref, (int, float)) else ""
        lines.append(f"{name}: {d.get('shape', 'box')} lo ({lo}) hi ({hi}) Å⁻¹{ref}")
    return "\n".join(lines)
