"""Reading results files back: the maps, the scan set-up and the accumulator's sums.

The layout is :mod:`sxdm_stream.sinks.results`; :data:`FORMAT_VERSION` is the newest layout
this version reads (and writes).
"""

from __future__ import annotations

import contextlib
import json
import os

import h5py
import numpy as np

from sxdm_stream.analysis.phases import PARTICLE_PHASE_DTYPE
from sxdm_stream.core.maps import MAP_FIELDS
from sxdm_stream.errors import IncompatibleFileError
from sxdm_stream.version import __version__

#: layout version written into every file; readers refuse files newer than they know
FORMAT_VERSION = 1

#: every map name :func:`read_maps` returns
MAP_NAMES: tuple[str, ...] = tuple(MAP_FIELDS) + ("intensity_per_angle",)

#: the maps of each phase under ``/entry/phases/phase_<id>``: name -> (units, title)
PHASE_MAP_FIELDS: dict[str, tuple[str, str]] = {
    "intensity": ("counts", "counts of the phase"),
    "fraction": ("", "fraction of the map pixel's counts"),
    "d_spacing": ("angstrom", "d-spacing of the phase's centre of mass"),
}


# ---- reading ------------------------------------------------------------------------------
@contextlib.contextmanager
def open_results(path):
    """Open a results file for reading (``with open_results(path) as f``);
    IncompatibleFileError unless sxdm-stream wrote it."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no results file {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise IncompatibleFileError(f"{path} is not an HDF5 file: {exc}") from None
    with f:
        creator = str(f.attrs.get("creator", ""))
        version = f.attrs.get("sxdm_stream_format")
        if not creator.startswith("sxdm-stream") or version is None or "entry" not in f:
            raise IncompatibleFileError(
                f"{path} is not an sxdm-stream results file (creator {creator!r})")
        if int(version) > FORMAT_VERSION:
            raise IncompatibleFileError(
                f"{path} has results format {int(version)}; this sxdm-stream "
                f"({__version__}) reads up to format {FORMAT_VERSION}: upgrade sxdm-stream")
        yield f


def read_maps(path, group: str = "entry") -> dict[str, np.ndarray]:
    """The maps of a results file, by name (see :data:`MAP_NAMES` and :func:`map_arrays`).

    Parameters
    ----------
    path : str or os.PathLike, a file written by :func:`write_results`.
    group : the group holding the maps: ``entry``, or a q-ROI's ``entry/q_rois/<name>``.

    Returns
    -------
    dict of name -> array; ``mask`` is bool, ``misorientation`` (rows, cols, 3),
    ``intensity_per_angle`` (angles, rows, cols); the others (rows, cols), NaN outside the mask.

    Raises
    ------
    IncompatibleFileError : the file is not an sxdm-stream results file.
    """
    with open_results(path) as f:
        if group not in f:
            raise IncompatibleFileError(f"{os.fspath(path)} has no group {group}")
        entry = f[group]
        missing = [name for name in MAP_NAMES if name not in entry]
        if missing:
            raise IncompatibleFileError(f"{os.fspath(path)} lacks the maps {missing}")
        maps = {name: entry[name][name][()] for name in MAP_NAMES}
    maps["mask"] = maps["mask"].astype(bool)
    return maps


def read_configuration(path) -> dict:
    """The scan setup description (:meth:`ScanSetup.describe`) stored in a results file."""
    with open_results(path) as f:
        return json.loads(f["entry/process/configuration"].asstr()[()])


def read_accumulator_state(path) -> dict:
    """The accumulator arrays of a results file, as :meth:`Accumulator.state` gives them.

    Parameters
    ----------
    path : str or os.PathLike, a file written by :func:`write_results` with an accumulator.

    Returns
    -------
    dict with ``moments`` (angles, points, 10), ``histogram`` (points, n_bins) flat as the
    accumulator holds it ((points, 0) when no histogram was kept), ``frame_count``
    (angles, points), ``fingerprint`` (str, of the scan setup) and, when stored, ``hits``
    (bx, by, bz). ``Accumulator.from_state(setup, state)`` restores the accumulator.

    Raises
    ------
    IncompatibleFileError : not an sxdm-stream file, or written without an accumulator.
    """
    with open_results(path) as f:
        if "accumulator" not in f["entry"]:
            raise IncompatibleFileError(
                f"{os.fspath(path)} holds maps only: it was written without an accumulator")
        group = f["entry/accumulator"]
        state = {"moments": group["moments"][()], "frame_count": group["frame_count"][()],
                 "fingerprint": str(group.attrs["fingerprint"])}
        for name in ("roi_moments", "shell_moments"):
            if name in group:
                state[name] = group[name][()]
        n_points = state["moments"].shape[1]
        if group.attrs["keep_histogram"]:
            hist = f["entry/qspace/histogram"][()]
            state["histogram"] = hist.reshape(n_points, -1)
            if "hits" in f["entry/qspace"]:
                state["hits"] = f["entry/qspace/hits"][()]
        else:
            state["histogram"] = np.zeros((n_points, 0), str(group.attrs["histogram_dtype"]))
    return state


def read_phases(path) -> dict | None:
    """The phase analysis of a results file, or None when it has none (no q shells).

    Returns
    -------
    dict with ``q_abs`` (slice centres, 1/Angstrom) and ``profile`` (counts per slice),
    ``phases`` (column name -> array: phase_id, d_a, fraction, intensity, first_shell,
    stop_shell, peak_shell, q_lo, q_hi), ``maps`` (phase_id -> {intensity, fraction,
    d_spacing}), ``mixed`` (bool map), ``mixed_pixels`` (int) and ``particles`` (structured
    array, :data:`sxdm_stream.analysis.phases.PARTICLE_PHASE_DTYPE`).
    """
    with open_results(path) as f:
        if "phases" not in f["entry"]:
            return None
        group = f["entry/phases"]
        table = {name: ds[()] for name, ds in group["phase_table"].items()}
        maps = {int(pid): {name: group[f"phase_{int(pid)}/{name}/{name}"][()]
                           for name in PHASE_MAP_FIELDS}
                for pid in table["phase_id"]}
        particles = np.zeros(int(group["particles"].attrs["count"]), PARTICLE_PHASE_DTYPE)
        for name in PARTICLE_PHASE_DTYPE.names:
            particles[name] = group["particles"][name][()]
        return {"q_abs": group["q_profile/q_abs"][()], "profile": group["q_profile/counts"][()],
                "phases": table, "maps": maps, "mixed": group["mixed/mixed"][()].astype(bool),
                "mixed_pixels": int(group.attrs["mixed_pixels"]), "particles": particles}
