"""Export the per-map-pixel q-space histograms as an XSOCS ``qspace.h5``.

So users can open our histograms in XSOCS' fitting and GUI. The layout is the one
``xsocs.io.QSpaceH5.QSpaceH5Writer`` writes (XSOCS 2026.2.0)::

    /Data      NXdata, signal "qspace", axes [".", "qx", "qy", "qz"]
      qspace      (n_points, bx, by, bz) float32, gzip   counts summed per bin (not / hits)
      histo       (bx, by, bz) int32                      detector pixels per bin, all angles
      qx, qy, qz  bin centres (1/Angstrom) float64
      qspace_sum  (n_points,) float32                     total counts per map pixel
      sample_x, sample_y (n_points,) float64              positions of the fast, slow motor
    /Params    direct_beam, channels_per_degree, medfilt_dims, sample_roi,
               maxipix_correction, image_normalizer, beam_energy
    /params/entries  selected, discarded, has_shift, has_grid_shift

Points are in our flat map order (row * cols + col), which is XSOCS' (motor_0, the fast
motor, runs fastest). XSOCS' own bin convention is ours (:mod:`sxdm_stream.core.grid`): its
``bin_centers_to_range_step`` gives back our bin edges.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from sxdm_stream.core.grid import QGrid
from sxdm_stream.core.scan import ScanDescription
from sxdm_stream.errors import ConfigError, IncompatibleFileError
from sxdm_stream.sinks.results import read_accumulator_state, read_configuration

#: channels per degree from a pixel at a distance, exact in xrayutilities' convention
#: (``pw = 2 tan(0.5 deg) / chpdeg`` at distance 1)
_TAN_HALF_DEGREE = np.tan(np.deg2rad(0.5))


def channels_per_degree(distance_m: float, pixel_size_m: float) -> float:
    """XSOCS' detector calibration for a pixel of ``pixel_size_m`` at ``distance_m``."""
    return 2.0 * _TAN_HALF_DEGREE * distance_m / pixel_size_m


def write_xsocs_qspace(path, histogram: np.ndarray, hits: np.ndarray, grid: QGrid,
                       scan: ScanDescription, geometry: dict,
                       entries: Sequence[str] | None = None) -> Path:
    """Write an XSOCS ``qspace.h5``.

    Parameters
    ----------
    path : the file to write (replaced if it exists).
    histogram : (n_points, n_bins) or (n_points, bx, by, bz) counts per bin.
    hits : (bx, by, bz) unmasked detector pixels per bin over all rocking angles.
    grid : the q grid of the histograms.
    scan : the scan (positions of the map pixels).
    geometry : :meth:`Geometry.describe` of the scan (direct beam, calibration, energy).
    entries : names of the rocking angles used (default ``<axis>=<angle>``).
    """
    bins = tuple(int(b) for b in grid.bins)
    histogram = np.asarray(histogram).reshape((scan.n_points,) + bins)
    if np.shape(hits) != bins:
        raise ConfigError(f"hits of shape {np.shape(hits)} for a grid of {bins} bins")
    rows, cols = np.meshgrid(scan.axis_um(0), scan.axis_um(1), indexing="ij")
    det = geometry["detector"]
    entries = list(entries) if entries is not None else [
        f"{scan.rocking_axis}={a:.5f}" for a in scan.rocking_angles]
    path = Path(path)
    with h5py.File(path, "w") as f:
        data = f.create_group("Data")
        data.attrs.update(NX_class="NXdata", signal="qspace", axes=[".", "qx", "qy", "qz"])
        data.create_dataset("qspace", data=histogram.astype(np.float32), compression="gzip",
                            chunks=(1,) + tuple(max(1, b // 4) for b in bins))
        data.create_dataset("histo", data=np.asarray(hits).astype(np.int32))
        for axis, name in enumerate(("qx", "qy", "qz")):
            data.create_dataset(name, data=grid.centres(axis).astype(np.float64))
        data.create_dataset("qspace_sum", data=histogram.reshape(scan.n_points, -1)
                            .sum(axis=1, dtype=np.float64).astype(np.float32))
        data.create_dataset("sample_x", data=cols.ravel().astype(np.float64))
        data.create_dataset("sample_y", data=rows.ravel().astype(np.float64))
        _write_params(f.create_group("Params"), det, float(geometry["energy_ev"]))
        _write_entries(f.create_group("params/entries"), entries)
    return path


def _write_params(params: h5py.Group, det: dict, energy_ev: float) -> None:
    params["direct_beam"] = np.asarray(det["beam_center"], dtype=np.float64)
    cpd = channels_per_degree(float(det["distance_m"]), float(det["pixel_size_m"]))
    params["channels_per_degree"] = np.array([cpd, cpd])
    params["medfilt_dims"] = np.array([1, 1])          # no median filter
    params["sample_roi"] = np.full(4, np.nan)          # every map pixel
    params["maxipix_correction"] = 0
    params["image_normalizer"] = "None"
    params["beam_energy"] = energy_ev


def _write_entries(group: h5py.Group, entries: list[str]) -> None:
    utf8 = h5py.string_dtype("utf-8")
    group.create_dataset("selected", data=np.array(entries, dtype=object), dtype=utf8)
    group.create_dataset("discarded", data=np.array([], dtype=object), dtype=utf8)
    group["has_shift"] = False
    group["has_grid_shift"] = False


def export_results(results_path, out) -> Path:
    """Write the XSOCS ``qspace.h5`` of an sxdm-stream results file.

    Raises
    ------
    IncompatibleFileError : the results file kept no histogram, or no hit counts (a file
        written during the scan; the final one has them).
    """
    config = read_configuration(results_path)
    state = read_accumulator_state(results_path)
    if config.get("grid") is None or state["histogram"].shape[1] == 0:
        raise IncompatibleFileError(f"{results_path} kept moments only (histogram bins 0 0 0): "
                                    "there is no q-space histogram to export")
    if "hits" not in state:
        raise IncompatibleFileError(f"{results_path} has no hit counts (it was written during "
                                    "the scan): export the final results file")
    g = config["grid"]
    grid = QGrid(tuple(g["lo"]), tuple(g["step"]), tuple(g["bins"]))
    scan = ScanDescription.from_description(config["scan"])
    return write_xsocs_qspace(out, state["histogram"], state["hits"], grid, scan,
                              config["geometry"])
