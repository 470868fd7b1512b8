"""A one-page PNG overview of a scan's maps, for the logbook and for a quick look mid-scan.

Drawn on a :class:`matplotlib.figure.Figure` with the Agg canvas, never through pyplot, so it
touches no global state and works in worker threads and on machines without a display.
Masked map pixels are NaN in the maps and are drawn transparent (white).
"""

from __future__ import annotations

import logging
import os

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sxdm_stream.core.maps import MapSet, hsv_to_rgb
from sxdm_stream.core.scan import ScanDescription

logger = logging.getLogger(__name__)

_TRANSPARENT = (1.0, 1.0, 1.0, 0.0)


def write_overview_png(path, maps: MapSet, scan: ScanDescription, title: str = "") -> None:
    """Draw every map of a scan on one page and save it as PNG (atomically replaced).

    Panels: integrated intensity, d-spacing, strain (diverging, symmetric about zero), tilt
    altitude, tilt azimuth (cyclic), misorientation colours with their colour wheel, mean FWHM
    and the rocking curve summed over the map.

    Parameters
    ----------
    path : str or os.PathLike, the PNG file; ``path + ".tmp"`` is used while writing.
    maps : the maps of the scan (NaN outside the mask).
    scan : the scan they come from (map axes in micrometres, motor names, rocking angles).
    title : first line of the page title; d_ref and the mean direction are added below it.
    """
    fig = Figure(figsize=(20.0, 9.0), dpi=100)
    FigureCanvasAgg(fig)
    # fixed margins: colour bars and the colour wheel live in insets, which automatic layouts
    # do not make room for
    axes = fig.subplots(2, 4, gridspec_kw=dict(left=0.04, right=0.93, bottom=0.07, top=0.86,
                                                wspace=0.75, hspace=0.35))
    extent = map_extent(scan)
    _draw_map(fig, axes[0, 0], maps.intensity, extent, scan, "integrated intensity", "counts",
              cmap="viridis")
    _draw_map(fig, axes[0, 1], maps.d_spacing, extent, scan, "d-spacing", "Å", cmap="viridis")
    limit = _symmetric_limit(maps.strain)
    _draw_map(fig, axes[0, 2], maps.strain, extent, scan, "strain", "µstrain", cmap="RdBu_r",
              vmin=-limit, vmax=limit)
    _draw_map(fig, axes[0, 3], maps.tilt_altitude, extent, scan, "tilt altitude", "deg",
              cmap="magma")
    _draw_map(fig, axes[1, 0], maps.tilt_azimuth, extent, scan, "tilt azimuth", "deg",
              cmap="twilight", vmin=0.0, vmax=360.0)
    _draw_misorientation(axes[1, 1], maps, extent, scan)
    _draw_map(fig, axes[1, 2], np.mean(maps.fwhm, axis=-1), extent, scan,
              "FWHM (mean of qx, qy, qz)", "1/Å", cmap="cividis")
    _draw_rocking_curve(axes[1, 3], maps, scan)
    fig.suptitle(_page_title(maps, title), fontsize=12)
    path = os.fspath(path)
    tmp = path + ".tmp"
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    logger.debug("wrote overview %s", path)


def map_extent(scan: ScanDescription) -> tuple[float, float, float, float]:
    """imshow ``extent`` (left, right, bottom, top) in micrometres for ``origin="lower"``.

    Pixel centres sit on the nominal motor positions, so the edges are half a step beyond.
    """
    edges = []
    for dim in (1, 0):
        pos = scan.axis_um(dim)
        half = 0.5 * (pos[-1] - pos[0]) / (len(pos) - 1) if len(pos) > 1 else 0.5
        edges += [float(pos[0] - half), float(pos[-1] + half)]
    return tuple(edges)


def _page_title(maps: MapSet, title: str) -> str:
    qbar = ", ".join(f"{v:.4f}" for v in np.asarray(maps.mean_direction, float))
    kept = int(np.count_nonzero(maps.mask))
    line = (f"d_ref = {maps.d_ref:.5f} Å    mean direction Q̄ = ({qbar})    "
            f"mask: {kept}/{maps.mask.size} pixels ≥ {maps.mask_fraction:g} × max intensity")
    return f"{title}\n{line}" if title else line


def _symmetric_limit(values: np.ndarray) -> float:
    """99th percentile of |values| over finite pixels (1 if there is none or it is 0)."""
    finite = np.abs(values[np.isfinite(values)])
    limit = float(np.percentile(finite, 99)) if finite.size else 0.0
    return limit if limit > 0 else 1.0


def _decorate(ax, scan: ScanDescription, title: str) -> None:
    ax.set_title(title)
    ax.set_xlabel(f"{scan.motors[1]} (µm)")
    ax.set_ylabel(f"{scan.motors[0]} (µm)")


def _draw_map(fig: Figure, ax, data: np.ndarray, extent, scan: ScanDescription, title: str,
              units: str, cmap: str, vmin=None, vmax=None) -> None:
    """One scalar map with its colour bar; NaN pixels transparent."""
    colours = colormaps[cmap].with_extremes(bad=_TRANSPARENT)
    masked = np.ma.masked_invalid(np.asarray(data, dtype=float))
    if masked.count() == 0 and (vmin is None or vmax is None):
        vmin, vmax = 0.0, 1.0  # nothing to scale on yet (scan just started)
    image = ax.imshow(masked, origin="lower", extent=extent, cmap=colours, vmin=vmin,
                      vmax=vmax, interpolation="nearest", aspect="equal")
    # the bar sits in an inset so that it follows the image box of an aspect-locked map
    bar = fig.colorbar(image, cax=ax.inset_axes([1.04, 0.0, 0.05, 1.0]))
    bar.set_label(units)
    bar.formatter.set_useOffset(False)  # d-spacing ticks read 4.7566, not +4.756 offsets
    _decorate(ax, scan, title)


def _rgba_from_rgb(rgb: np.ndarray) -> np.ndarray:
    """RGB with NaN outside the mask -> RGBA, transparent there."""
    rgb = np.asarray(rgb, dtype=float)
    valid = np.all(np.isfinite(rgb), axis=-1)
    rgba = np.ones(rgb.shape[:-1] + (4,))
    rgba[..., :3] = np.clip(np.where(valid[..., None], rgb, 1.0), 0.0, 1.0)
    rgba[..., 3] = valid
    return rgba


def colour_wheel(size: int = 101) -> np.ndarray:
    """RGBA legend of the misorientation colours: hue = azimuth (counter-clockwise from +x,
    i.e. from e1), saturation = radius (altitude / max altitude); transparent outside."""
    u = np.linspace(-1.0, 1.0, size)
    x, y = np.meshgrid(u, u)
    radius = np.hypot(x, y)
    hue = (np.rad2deg(np.arctan2(y, x)) % 360.0) / 360.0
    rgb = hsv_to_rgb(hue, np.clip(radius, 0.0, 1.0), np.ones_like(radius))
    rgba = np.concatenate([rgb, (radius <= 1.0)[..., None].astype(float)], axis=-1)
    return rgba


def _draw_misorientation(ax, maps: MapSet, extent, scan: ScanDescription) -> None:
    ax.imshow(_rgba_from_rgb(maps.misorientation_rgb), origin="lower", extent=extent,
              interpolation="nearest", aspect="equal")
    _decorate(ax, scan, "misorientation")
    # the legend sits beside the map (where the other panels have their colour bar)
    wheel = ax.inset_axes([1.04, 0.0, 0.4, 0.4])
    wheel.imshow(colour_wheel(), origin="lower", extent=(-1, 1, -1, 1))
    wheel.set_axis_off()
    wheel.text(1.08, 0.0, "e1", fontsize=8, va="center")
    finite = maps.tilt_altitude[np.isfinite(maps.tilt_altitude)]
    top = f"{finite.max():.3g}°" if finite.size else "n/a"
    wheel.text(-1.0, 1.15, f"hue: azimuth\nsaturation: altitude\nedge: {top}", fontsize=8,
               va="bottom")


def _draw_rocking_curve(ax, maps: MapSet, scan: ScanDescription) -> None:
    per_angle = np.asarray(maps.intensity_per_angle, dtype=float)
    angles = np.asarray(scan.rocking_angles, dtype=float)
    ax.plot(angles, per_angle.sum(axis=(1, 2)), "o-", ms=3, label="whole map")
    inside = np.asarray(maps.mask, dtype=bool)
    if inside.any():
        ax.plot(angles, per_angle[:, inside].sum(axis=1), "s--", ms=3, label="inside mask")
    ax.set_title("rocking curve (sum over the map)")
    ax.set_xlabel(f"{scan.rocking_axis} (deg)")
    ax.set_ylabel("counts")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def write_operando_png(path, series: dict, title: str = "") -> None:
    """Draw the per-particle curves of an operando series file on one page (PNG, atomically
    replaced): d of each phase, the fraction of every phase but the first (highest d) against
    the cell voltage when the series carries one (else time), strain spread, and the
    electrochemistry, each against the time since the first map (hours, or minutes for a
    series shorter than two hours).

    Parameters
    ----------
    path : str or os.PathLike, the PNG file.
    series : :func:`sxdm_stream.sinks.timeseries.read_operando` of the series file.
    title : the page title.
    """
    times = np.asarray(series["summary"]["time"], float)
    elapsed = times - times[0] if times.size else times
    # hours for a series of hours, minutes for a short one (a test, a demo)
    unit, scale = ("h", 3600.0) if elapsed.size and elapsed[-1] >= 7200 else ("min", 60.0)
    hours = elapsed / scale
    since = f"time since the first map ({unit})"
    particles, phases = series["particles"], series["particle_phases"]
    echem = series["electrochemistry"]
    voltage = echem.get("voltage", (None, ""))[0]
    fig = Figure(figsize=(16.0, 9.0), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    colours = colormaps["tab10"]
    ids = sorted({int(i) for i in particles.get("particle_id", []) if np.isfinite(i)})
    first_phase = None
    if series["phases"].get("phase_id") is not None and len(series["phases"]["phase_id"]):
        table = series["phases"]
        first_phase = int(table["phase_id"][np.argmax(table["d_a"])])
    styles = ("-", "--", ":", "-.")
    for n, pid in enumerate(ids):
        colour = colours(n % 10)
        mine = np.asarray(phases.get("particle_id", []), float) == pid
        for k, phase in enumerate(sorted({int(p) for p in np.asarray(phases.get("phase_id", []))[mine]})):
            sel = mine & (np.asarray(phases["phase_id"]) == phase)
            at = np.asarray(phases["record"], int)[sel]
            d = _curve(len(hours), at, phases["d_a"][sel])
            axes[0, 0].plot(hours, d, styles[k % 4], color=colour, marker=".",
                            label=f"particle {pid}, phase {phase}")
            if phase != first_phase:
                x = voltage if voltage is not None else hours
                axes[0, 1].plot(x, _curve(len(hours), at, phases["fraction"][sel]),
                                styles[k % 4], color=colour, marker=".",
                                label=f"particle {pid}, phase {phase}")
        rows = np.asarray(particles["particle_id"], float) == pid
        axes[1, 0].plot(hours, _curve(len(hours), np.asarray(particles["record"], int)[rows],
                                      particles["strain_std"][rows]), color=colour, marker=".",
                        label=f"particle {pid}")
    axes[0, 0].set(xlabel=since, ylabel="d (Å)",
                   title="d of each phase, per particle")
    axes[0, 1].set(xlabel="cell voltage (V)" if voltage is not None else "time (h)",
                   ylabel="fraction", ylim=(-0.05, 1.05),
                   title="fraction of the new phase(s), per particle")
    axes[1, 0].set(xlabel=since, ylabel="strain spread (µstrain)",
                   title="strain spread inside each particle (single centre of mass: it "
                         "jumps where two phases coexist)")
    for name, (values, units) in echem.items():
        axes[1, 1].plot(hours, values, marker=".", label=f"{name} ({units})" if units else name)
    axes[1, 1].set(xlabel=since, title="electrochemistry")
    for ax in axes.ravel():
        if ax.has_data():
            ax.legend(fontsize=7, loc="best")
        ax.grid(alpha=0.3)
    fig.suptitle(title or "operando series")
    fig.tight_layout()
    tmp = os.fspath(path) + ".tmp"
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)


def _curve(n: int, at: np.ndarray, values) -> np.ndarray:
    """Values placed at record indices ``at`` of an n-long curve, NaN elsewhere (gaps)."""
    curve = np.full(n, np.nan)
    curve[np.asarray(at, int)] = np.asarray(values, float)
    return curve
