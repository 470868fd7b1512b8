"""How well an operando series file matches the simulated charge it came from.

Compared, scan by scan (the truth from :class:`~.operando.OperandoSeries`, the measurement
from :func:`sxdm_stream.sinks.timeseries.read_operando`):

* identity: each simulated particle present is matched to the record's particle whose piezo
  centroid is nearest (within ``tolerance_um``); a particle present from the first map keeps
  its identity when it is found in every map with one and the same id, and the newcomer when
  it has one id from the map where it appears, announced by an ``appear`` event there;
* drift: the registration's shift between consecutive maps against the simulated drift
  (map pixels), and the drift since the first map;
* phases: each map's phases (d, fraction) against the simulated ones, matched by d;
* mixed pixels: maps flagged as averaging two phases against the simulated two-phase pixels.
"""

from __future__ import annotations

import numpy as np


def _match_ids(series: dict, truths: list, tolerance_um: float) -> dict:
    table = series["particles"]
    found = {}
    for k, scan in enumerate(truths):
        rows = table["record"] == k
        centroids = np.stack([table["centroid_row_um"][rows], table["centroid_col_um"][rows]], 1)
        ids = table["particle_id"][rows] if "particle_id" in table else np.full(rows.sum(), np.nan)
        for p in scan.truth.particles:
            if p.present:
                distance = np.hypot(*(centroids - p.centroid_piezo_um).T)
                best = int(np.argmin(distance)) if distance.size else -1
                found[(k, p.index)] = (int(ids[best]) if best >= 0 and distance[best] < tolerance_um
                                       and np.isfinite(ids[best]) else None)
    return found


def operando_accuracy(series: dict, truths: list, appears_at, tolerance_um: float = 0.4) -> dict:
    """The figures of an operando series against its truth.

    Parameters
    ----------
    series : :func:`~sxdm_stream.sinks.timeseries.read_operando` of the series file.
    truths : the :class:`~.operando.OperandoScan` of every map, in order (their ``truth``,
        ``drift_px``; the scenario is not needed).
    appears_at : map index where each simulated particle first diffracts (0: from the start).
    """
    n = len(truths)
    found = _match_ids(series, truths, tolerance_um)
    staying = [i for i, at in enumerate(appears_at) if at == 0]
    kept = sum(len({found.get((k, i)) for k in range(n)} - {None}) == 1
               and all(found.get((k, i)) is not None for k in range(n)) for i in staying)
    events = series["events"]
    appear = set()
    if "kind" in events:
        appear = {(int(r), ids) for r, kind, ids in zip(events["record"], events["kind"],
                                                        events["particle_ids"]) if kind == "appear"}
    newcomers = [(i, at) for i, at in enumerate(appears_at) if 0 < at < n]
    announced = sum(len({found.get((k, i)) for k in range(at, n)}) == 1
                    and (at, str(found.get((at, i)))) in appear for i, at in newcomers)
    true_drift = np.array([s.drift_px for s in truths], float)
    reg = series["registration"]
    shift_error = (np.abs(reg["shift_px"][1:] - np.diff(true_drift, axis=0)).max()
                   if n > 1 else float("nan"))
    drift_error = np.abs(reg["drift_px"] - (true_drift - true_drift[0])).max()
    phases = series["phases"]
    d_errors, fraction_errors = [], []
    for k, scan in enumerate(truths):
        rows = phases["record"] == k if "record" in phases else np.zeros(0, bool)
        for truth in scan.truth.phases.values():
            if truth.fraction < 0.05 or not rows.any():
                continue
            j = int(np.argmin(np.abs(phases["d_a"][rows] - truth.d_a)))
            d_errors.append(abs(phases["d_a"][rows][j] - truth.d_a))
            fraction_errors.append(abs(phases["fraction"][rows][j] - truth.fraction))
    fronts = np.array([s.truth.two_phases.sum() for s in truths])
    mixed = np.asarray(series["summary"].get("mixed_pixels", np.zeros(n)), float)
    return {"maps": n, "particles_staying": len(staying), "identities_kept": int(kept),
            "newcomers": len(newcomers), "newcomers_announced": int(announced),
            "shift_error_px": float(shift_error), "drift_error_px": float(drift_error),
            "drift_range_px": float(np.ptp(true_drift, axis=0).max()),
            "phase_d_error_a": float(max(d_errors)) if d_errors else float("nan"),
            "phase_fraction_error": float(max(fraction_errors)) if fraction_errors else float("nan"),
            "two_phase_pixels_true": int(fronts.sum()), "mixed_pixels_flagged": int(mixed.sum()),
            "alarms": int(len(series["alarms"].get("rule", [])))}


def format_operando_report(report: dict) -> str:
    """Human-readable lines of an :func:`operando_accuracy` report."""
    r = report
    return (f"operando series of {r['maps']} maps against the simulated truth:\n"
            f"  identities kept: {r['identities_kept']} of {r['particles_staying']} particles "
            f"that stay; newcomers announced: {r['newcomers_announced']} of {r['newcomers']}\n"
            f"  drift between maps: largest error {r['shift_error_px']:.3f} map pixel "
            f"(drift since the first map: largest error {r['drift_error_px']:.3f} of a "
            f"{r['drift_range_px']:.1f}-pixel range)\n"
            f"  phases of each map: largest d error {r['phase_d_error_a']:.2e} A, largest "
            f"fraction error {r['phase_fraction_error']:.3f}\n"
            f"  two-phase map pixels: {r['mixed_pixels_flagged']} flagged, "
            f"{r['two_phase_pixels_true']} simulated; alarms raised: {r['alarms']}")
