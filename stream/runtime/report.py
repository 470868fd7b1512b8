"""What the live processor says about its state: the status line, and the analysis fields
and arrays its snapshots carry (see :mod:`sxdm_stream.sinks.publish`)."""

from __future__ import annotations

import numpy as np

from sxdm_stream.analysis.roi_suggest import format_roi_suggestion
from sxdm_stream.analysis.scan_analysis import ScanAnalysis
from sxdm_stream.core.maps import map_arrays
from sxdm_stream.messages import LiveStatus


def format_status(status: LiveStatus) -> str:
    """One progress line from :meth:`LiveProcessor.status`."""
    progress = status.progress
    where = (f"series {status.series_id}: {progress[0]}/{progress[1]} frames "
             f"({100.0 * progress[0] / max(progress[1], 1):.0f}%)" if progress else "waiting for a series")
    lat = status.latency_p99_s
    rejected = sum(status.rejected.values())
    return (f"{where} | {status.frames_per_s:.0f} frames/s | processed {status.processed} "
            f"| rejected {rejected}{' ' + str(dict(status.rejected)) if rejected else ''} "
            f"| dropped {status.dropped} | queued {status.queued}"
            + (f" | latency p99 {1000 * lat:.0f} ms" if lat is not None else "")
            + (f" | waiting for positions {status.held}" if status.held else "")
            + (f" | internal errors {dict(status.internal_errors)}"
               if status.internal_errors else ""))


def format_missing(missing: np.ndarray, limit: int = 8) -> str:
    """``"37 frames missing (rocking angle 4: 30, 9: 7)"``: the angles with frames missing,
    the first ``limit`` of them."""
    missing = np.asarray(missing)
    angles = np.flatnonzero(missing)
    listed = ", ".join(f"{a}: {missing[a]}" for a in angles[:limit])
    more = f", ... {len(angles) - limit} more angles" if len(angles) > limit else ""
    return (f"{int(missing.sum())} frames missing (rocking angle "
            f"{listed}{more})") if len(angles) else "no frame missing"


#: the q-ROI maps a snapshot carries (as ``roi.<name>.<map>``)
SNAPSHOT_ROI_MAPS = ("intensity", "d_spacing", "strain", "tilt_altitude", "mask")


def analysis_header(analysis: ScanAnalysis) -> dict:
    """The snapshot header fields of an analysis (JSON-able; see
    :class:`~sxdm_stream.messages.SnapshotHeader`)."""
    header = {"particles": analysis.particles.to_records(),
              "q_rois": {roi.name: {**roi.describe(), "d_ref": analysis.roi_maps[roi.name].d_ref}
                         for roi in analysis.rois}}
    if analysis.drift is not None:
        header["drift"] = analysis.drift.to_dict()
    if analysis.roi_suggestion is not None:
        header["roi_suggestion"] = {**analysis.roi_suggestion.describe(),
                                    "text": format_roi_suggestion(analysis.roi_suggestion)}
    return header


def analysis_arrays(analysis: ScanAnalysis) -> dict[str, np.ndarray]:
    """The snapshot arrays of an analysis: particle labels and the main q-ROI maps."""
    arrays = {"particle_labels": np.asarray(analysis.particles.labels, np.int32)}
    for name, maps in analysis.roi_maps.items():
        values = map_arrays(maps)
        for field_name in SNAPSHOT_ROI_MAPS:
            value = values[field_name]
            arrays[f"roi.{name}.{field_name}"] = value.astype(np.uint8) if field_name == "mask" else value
    return arrays


def describe_outcome(result) -> str:
    """``complete -> path``, what is missing, or why nothing was written, of a result with
    ``complete``, ``missing`` (frames per rocking angle or None), ``path``, ``written`` and
    ``write_error`` (a live series' or a processed file's)."""
    state = "complete" if result.complete else "incomplete: " + (
        format_missing(result.missing) if result.missing is not None else "frames missing")
    where = ("" if result.path is None else f" -> {result.path}" if result.written
             else f", NOT WRITTEN to {result.path} ({result.write_error})")
    return state + where
