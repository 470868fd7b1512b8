"""Time per viewer update for big maps, offscreen: does a 200 x 200 map at 5 Hz keep the UI free?

What is measured
----------------
A :class:`~.window.ViewerWindow` (1800 x 1000, offscreen) is fed synthetic snapshots of a
``--shape`` map (a particle with strain and tilt patterns that change at every update) through a
source that hands one new snapshot per tick, as the subscriber does. For each update:

* ``decode``: :meth:`sxdm_stream.Snapshot.from_wire` of the encoded message (this runs in
  the subscriber thread, not in the UI thread; shown for completeness);
* ``model+panels``: the model takes the snapshot and every map panel gets its new data and
  levels (``ViewerModel.show_snapshots`` and the slots it triggers);
* ``paint``: Qt paints what changed (``processEvents``: the images are colour-mapped here);
* ``total``: model+panels + paint: the time the UI thread is busy per update.

Four cases: the maps with the pixel inspector tab in front and a pixel selected (the default
view while steering), the same with the distributions tab in front (pole figure and histograms
redrawn at each update too), snapshots with the analysis (particles, drift, two q-ROIs) shown
as a q-ROI's maps with a particle highlighted and the analysis tab in front, and the maps alone
at 40 x 40 for comparison.
"UI busy at 5 Hz" is 5 x the mean total: the share of each second the UI is not free.

Run: ``QT_QPA_PLATFORM=offscreen python -m sxdm_stream.plugins.viewer.bench_viewer [--help]``.
Figures are printed (this is a benchmark script, not library code).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np  # noqa: E402
from PySide6 import QtWidgets  # noqa: E402

from sxdm_stream import (MAP_FIELDS, LiveStatus, Snapshot, SnapshotHeader,  # noqa: E402
                         misorientation_rgb)

from .window import ViewerWindow  # noqa: E402


def synthetic_arrays(shape: tuple[int, int], n_angles: int, k: int) -> dict[str, np.ndarray]:
    """Maps of a round particle whose strain and tilt patterns move with ``k``."""
    rows, cols = shape
    y, x = np.mgrid[0:rows, 0:cols]
    r = np.hypot((y - rows / 2) / (0.4 * rows), (x - cols / 2) / (0.4 * cols))
    intensity = 1e5 * np.clip(1 - r ** 2, 0.02, None)
    mask = r < 0.9
    phase = 0.2 * k
    strain = 300 * np.sin(2 * np.pi * x / cols + phase) * np.cos(2 * np.pi * y / rows)
    d = 4.733 * (1 + strain * 1e-6)
    altitude = 0.1 * r * (1 + 0.1 * np.sin(phase))
    azimuth = (np.degrees(np.arctan2(y - rows / 2, x - cols / 2)) + 10 * k) % 360
    nan = np.where(mask, 1.0, np.nan)
    q = 2 * np.pi / d
    arrays = {"intensity": intensity, "d_spacing": d * nan, "strain": strain * nan,
              "tilt_altitude": altitude * nan, "tilt_azimuth": azimuth * nan, "q_abs": q * nan,
              "qx": 1e-3 * x / cols * nan, "qy": 1e-3 * y / rows * nan, "qz": q * nan,
              "fwhm_qx": 3e-3 + 1e-4 * r * nan, "fwhm_qy": 3e-3 + 1e-4 * r * nan,
              "fwhm_qz": 2e-3 + 1e-4 * r * nan,
              "misorientation": misorientation_rgb(altitude * nan, azimuth * nan),
              "strain_stderr": 2.0 * nan, "tilt_stderr": 2e-4 * nan, "mask": mask}
    angles = np.linspace(-1, 1, n_angles)[:, None, None]
    arrays["intensity_per_angle"] = intensity[None] * np.exp(-angles ** 2 / 0.2) / n_angles
    assert set(arrays) == set(MAP_FIELDS) | {"intensity_per_angle"}
    return arrays


def synthetic_analysis(arrays: dict[str, np.ndarray], n_angles: int,
                       k: int) -> tuple[dict, dict[str, np.ndarray]]:
    """Header fields and arrays of the analysis a live processor adds: two particles (the
    left and right halves of the mask), a drift estimate, two q-ROIs (intensity, d, strain,
    tilt and mask each, as :mod:`sxdm_stream.sinks.publish` describes)."""
    mask = arrays["mask"]
    labels = np.where(mask, 1, 0).astype(np.int32)
    labels[:, mask.shape[1] // 2:] *= 2
    extra = {"particle_labels": labels}
    for name, scale in (("low", 0.999), ("high", 1.001)):
        for field_name in ("intensity", "d_spacing", "strain", "tilt_altitude"):
            extra[f"roi.{name}.{field_name}"] = arrays[field_name] * scale
        extra[f"roi.{name}.mask"] = mask.astype(np.uint8)
    record = {"label": 1, "area_px": int(mask.sum() // 2), "area_um2": 1.0,
              "centroid_row_um": 1.0, "centroid_col_um": 1.0, "intensity": 1e6,
              "mean_d_a": 4.733, "mean_strain": 10.0 * k, "strain_std": 100.0,
              "max_tilt_deg": 0.1, "mean_tilt_deg": 0.05, "mean_tilt_azimuth_deg": 90.0,
              "tilt_spread_deg": 0.02, "n_domains": 3}
    shifts = (0.01 * np.arange(n_angles)[:, None] * [1, -1] + 0.001 * k).tolist()
    header = {"particles": (record, {**record, "label": 2}),
              "drift": {"mode": "auto", "reference_angle": n_angles // 2, "step_um": [0.05, 0.05],
                        "shifts_px": shifts, "shifts_um": shifts,
                        "confident": [True] * n_angles, "correlation": [0.99] * n_angles},
              "q_rois": {name: {"name": name, "shape": "box", "lo": [-0.01, -0.01, 1.3],
                                "hi": [0.01, 0.01, 1.35], "d_ref": 4.733}
                         for name in ("low", "high")}}
    return header, extra


def synthetic_message(shape, n_angles: int, k: int, analysis: bool = False) -> list[bytes]:
    """The wire message of snapshot ``k``, as a processor sends it."""
    arrays = synthetic_arrays(shape, n_angles, k)
    more_header, more_arrays = synthetic_analysis(arrays, n_angles, k) if analysis else ({}, {})
    arrays["mask"] = arrays["mask"].astype(np.uint8)
    arrays.update(more_arrays)
    rows, cols = shape
    header = SnapshotHeader(
        seq=k, time_s=time.time(), series_id=1, mean_direction=(0.0, 0.0, 1.0),
        units={n: u for n, (u, _t) in MAP_FIELDS.items()},
        scan={"shape": [rows, cols], "extents_um": [[0, 0.05 * (rows - 1)],
                                                    [0, 0.05 * (cols - 1)]],
              "motors": ["piy", "pix"], "rocking_axis": "eta",
              "rocking_angles": list(np.linspace(8.7, 9.3, n_angles))},
        stats=LiveStatus(received=k, processed=k, frames_per_s=1000.0, progress=(k, 100)),
        **more_header)
    return Snapshot(header, arrays).to_wire()


class BenchSource:
    """Hands the window one prepared snapshot per call of :meth:`take`."""

    connected = True

    def __init__(self, snapshots: list[Snapshot]) -> None:
        self.snapshots, self.index = snapshots, 0

    def describe(self) -> str:
        return "benchmark"

    def start(self) -> "BenchSource":
        return self

    def stop(self) -> None:
        """Nothing runs in the background."""

    def take(self) -> list[tuple[Snapshot, float]]:
        snapshot = self.snapshots[self.index % len(self.snapshots)]
        self.index += 1
        return [(snapshot, time.monotonic())]


def measure(app, shape, n_angles: int, updates: int, tab: str,
            analysis: bool = False) -> dict[str, list[float]]:
    """Time ``updates`` updates; with ``analysis``, the snapshots carry particles, drift and
    q-ROIs, the panels show q-ROI "low" and particle 1 is highlighted."""
    messages = [synthetic_message(shape, n_angles, k, analysis) for k in range(8)]
    decode = []
    snapshots = []
    for m in messages:
        t0 = time.perf_counter()
        snapshots.append(Snapshot.from_wire(m))
        decode.append(time.perf_counter() - t0)
    window = ViewerWindow(BenchSource(snapshots), refresh_hz=5)
    window.resize(1800, 1000)
    window.show()
    window.tabs.setCurrentWidget(getattr(window, tab))
    app.processEvents()
    window.refresh()
    window.model.select_pixel(shape[0] // 2, shape[1] // 2)
    if analysis:
        window.model.select_map_source("low")
        window.model.select_particle(1)
    app.processEvents()
    times = {"decode": decode, "model+panels": [], "paint": [], "total": []}
    for _ in range(updates):
        t0 = time.perf_counter()
        window.refresh()
        t1 = time.perf_counter()
        app.processEvents()
        t2 = time.perf_counter()
        times["model+panels"].append(t1 - t0)
        times["paint"].append(t2 - t1)
        times["total"].append(t2 - t0)
    window.stop()
    window.close()
    window.deleteLater()
    app.processEvents()
    return times


def report(label: str, times: dict[str, list[float]]) -> None:
    print(f"\n{label}")
    print(f"  {'step':<14}{'median ms':>10}{'p90 ms':>9}{'max ms':>9}")
    for step, values in times.items():
        ms = np.asarray(values) * 1000
        print(f"  {step:<14}{np.median(ms):>10.1f}{np.percentile(ms, 90):>9.1f}{ms.max():>9.1f}")
    busy = 5 * statistics.fmean(times["total"])
    print(f"  UI busy at 5 Hz: {100 * busy:.0f}% of each second")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", type=int, nargs=2, default=(200, 200))
    parser.add_argument("--angles", type=int, default=31, help="rocking angles per snapshot")
    parser.add_argument("--updates", type=int, default=40, help="updates timed per case")
    args = parser.parse_args(argv)
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    shape = tuple(args.shape)
    print(f"viewer update time, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, Qt platform {os.environ['QT_QPA_PLATFORM']}, "
          f"{args.updates} updates per case")
    report(f"{shape[0]}x{shape[1]} maps, {args.angles} angles, inspector in front",
           measure(app, shape, args.angles, args.updates, "inspector"))
    report(f"{shape[0]}x{shape[1]} maps, distributions in front",
           measure(app, shape, args.angles, args.updates, "distributions"))
    report(f"{shape[0]}x{shape[1]} maps with particles, drift and q-ROIs: a q-ROI's maps, a "
           "particle highlighted, analysis in front",
           measure(app, shape, args.angles, args.updates, "analysis", analysis=True))
    report("40x40 maps, inspector in front", measure(app, (40, 40), args.angles, args.updates,
                                                      "inspector"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
