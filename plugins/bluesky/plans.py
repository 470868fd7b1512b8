"""Plans for SXDM as done at ESRF ID01: a raster of two piezo motors at each rocking angle.

:func:`sxdm_map` is a thin layer over ``bluesky.plans.list_grid_scan`` (rocking axis
outermost, then the slow and the fast map motor) that makes the run self-describing: the
start document carries the standard keys (``shape``, ``extents``, ``snaking``, ``motors``,
``hints``) and our ``"sxdm"`` block (scan description, geometry, correlation id), so that
:class:`~.callback.SxdmCallback` or any later reader can process it without side channels.

:func:`sxdm_map_until_peak` steers with the live results: it widens the rocking range until
the rocking curve's tails fall below a threshold (:class:`~.feedback.LiveFeedback`).
"""

from __future__ import annotations

import logging
import uuid
from typing import Mapping, Sequence

import numpy as np
from bluesky import plan_stubs as bps, plans as bp

from sxdm_stream import ScanDescription

from .metadata import sxdm_block

log = logging.getLogger(__name__)


def sxdm_map(detectors, slow_motor, slow_start, slow_stop, slow_num, fast_motor, fast_start,
             fast_stop, fast_num, rocking_motor, rocking_angles, *, geometry,
             fixed_angles: Mapping[str, float] | None = None, snake: bool = False,
             correlation_id: str | None = None, md: dict | None = None):
    """Map a sample: a (slow x fast) raster of the map motors at each rocking angle.

    Parameters
    ----------
    detectors : list of readables (the area detector and anything else to record).
    slow_motor, slow_start, slow_stop, slow_num : map rows (micrometres), outer raster loop.
    fast_motor, fast_start, fast_stop, fast_num : map columns (micrometres), inner loop.
    rocking_motor : the rocking axis (e.g. ``eta``), degrees.
    rocking_angles : the rocking angles, in acquisition order (outermost loop).
    geometry : :class:`sxdm_stream.core.geometry.Geometry` (or its ``describe()`` dict).
    fixed_angles : the other diffractometer circles (degrees), e.g. ``{"phi": 0, "nu": 0,
        "delta": 18.1}``.
    snake : run odd rows' columns backwards (``snaking=[False, False, True]``).
    correlation_id : joins the run to the detector's own stream; a fresh uuid when None.
        Written to every detector with a ``correlation_id`` signal before it is staged (a
        streaming detector puts it in its series start).
    md : extra metadata; keys given here win, but an ``"sxdm"`` dict is merged into the plan's
        block (e.g. ``md={"sxdm": {"operando": {"voltage": {"value": 4.1, "units": "V"}}}}``).

    Yields
    ------
    msg : bluesky messages. Returns the run uid.
    """
    angles = [float(a) for a in rocking_angles]
    correlation_id = correlation_id or uuid.uuid4().hex
    for det in detectors:
        if hasattr(det, "correlation_id"):
            yield from bps.abs_set(det.correlation_id, correlation_id, wait=True)
    slow = np.linspace(slow_start, slow_stop, int(slow_num)).tolist()
    fast = np.linspace(fast_start, fast_stop, int(fast_num)).tolist()
    scan = ScanDescription(
        shape=(int(slow_num), int(fast_num)),
        extents_um=((float(slow_start), float(slow_stop)), (float(fast_start), float(fast_stop))),
        motors=(slow_motor.name, fast_motor.name), rocking_axis=rocking_motor.name,
        rocking_angles=angles, fixed_angles=fixed_angles or {}, snake=snake)
    _md = {
        "plan_name": "sxdm_map",
        "plan_args": {"detectors": [repr(d) for d in detectors], "slow_motor": repr(slow_motor),
                      "slow_start": slow_start, "slow_stop": slow_stop, "slow_num": slow_num,
                      "fast_motor": repr(fast_motor), "fast_start": fast_start,
                      "fast_stop": fast_stop, "fast_num": fast_num,
                      "rocking_motor": repr(rocking_motor), "rocking_angles": angles},
        "extents": [[angles[0], angles[-1]], [slow[0], slow[-1]], [fast[0], fast[-1]]],
        "snaking": [False, False, bool(snake)],
        "hints": {"gridding": "rectilinear",
                  "dimensions": [([slow_motor.name], "primary"), ([fast_motor.name], "primary")]},
        "sxdm": sxdm_block(geometry, scan, correlation_id=correlation_id),
    }
    extra = dict(md or {})
    if isinstance(extra.get("sxdm"), dict):       # add to our block (e.g. "operando"), keep it
        _md["sxdm"] = {**_md["sxdm"], **extra.pop("sxdm")}
    _md.update(extra)
    return (yield from bp.list_grid_scan(
        list(detectors), rocking_motor, angles, slow_motor, slow, fast_motor, fast,
        snake_axes=[fast_motor] if snake else False, md=_md))


def sxdm_map_until_peak(detectors, slow_motor, slow_start, slow_stop, slow_num, fast_motor,
                        fast_start, fast_stop, fast_num, rocking_motor, rocking_angles, *,
                        geometry, feedback, fixed_angles: Mapping[str, float] | None = None,
                        grow: float = 2.0, max_maps: int = 3, recentre: bool = False,
                        md: dict | None = None):
    """Map, and map again over a wider rocking range until the whole peak is inside.

    After each map the plan triggers ``feedback`` (a :class:`~.feedback.LiveFeedback`); if
    its ``peak_found`` is False (the rocking curve's tails are above the threshold) the
    rocking range is widened by ``grow`` with the same step, around the middle of the range
    (or, with ``recentre``, around the rocking curve's centre of mass), and the map is
    repeated, at most ``max_maps`` maps in all.

    Parameters are those of :func:`sxdm_map`, plus ``feedback``, ``grow``, ``max_maps`` and
    ``recentre``.

    Yields
    ------
    msg : bluesky messages. Returns the list of run uids, one per map.
    """
    angles: Sequence[float] = [float(a) for a in rocking_angles]
    uids = []
    for attempt in range(max_maps):
        uid = yield from sxdm_map(
            detectors, slow_motor, slow_start, slow_stop, slow_num, fast_motor, fast_start,
            fast_stop, fast_num, rocking_motor, angles, geometry=geometry,
            fixed_angles=fixed_angles, md={**(md or {}), "sxdm_attempt": attempt})
        uids.append(uid)
        yield from bps.trigger(feedback, wait=True)
        found = yield from bps.rd(feedback.peak_found)
        if found:
            log.info("rocking curve complete within %.4f..%.4f deg", angles[0], angles[-1])
            break
        centre = (yield from bps.rd(feedback.peak_position)) if recentre else None
        angles = widen_rocking_range(angles, grow, centre)
        log.info("rocking curve tails above threshold: widening to %.4f..%.4f deg (%d steps)",
                 angles[0], angles[-1], len(angles))
    return uids


def widen_rocking_range(angles: Sequence[float], grow: float, centre: float | None = None) -> list[float]:
    """Rocking angles spanning ``grow`` times the range of ``angles``, same step, around
    ``centre`` (default: the middle of ``angles``)."""
    first, last = float(angles[0]), float(angles[-1])
    step = (last - first) / (len(angles) - 1) if len(angles) > 1 else 0.01
    if centre is None or not np.isfinite(centre):
        centre = 0.5 * (first + last)
    half_steps = int(np.ceil(0.5 * grow * (len(angles) - 1)))
    return [centre + k * step for k in range(-half_steps, half_steps + 1)]


def sxdm_operando_maps(detectors, slow_motor, slow_start, slow_stop, slow_num, fast_motor,
                       fast_start, fast_stop, fast_num, rocking_motor, rocking_angles, *,
                       geometry, feedback, max_maps: int,
                       electrochemistry: Mapping[str, tuple] | None = None,
                       stop_on: Sequence[str] = ("disappeared",),
                       fixed_angles: Mapping[str, float] | None = None, md: dict | None = None):
    """Map the same area again and again while a cell cycles, and stop on an alarm.

    Before each map the ``electrochemistry`` signals are read and travel in the run's
    ``sxdm.operando`` block (the processor's operando record and series file carry them);
    after it the plan triggers ``feedback`` (a :class:`~.feedback.LiveFeedback`), whose
    ``alarms`` and ``alarm_rules`` say what the ``[alarms]`` thresholds of the processor
    raised for that map (a particle lost, a phase fraction crossed, a d that jumped...). The
    series stops after the map that raised an alarm whose rule is in ``stop_on`` (all rules:
    ``("*",)``), or after ``max_maps`` maps.

    Parameters are those of :func:`sxdm_map`, plus ``feedback``, ``max_maps``,
    ``electrochemistry`` ({channel: (readable signal, units)}, e.g.
    ``{"voltage": (cell.voltage, "V")}``) and ``stop_on``.

    Yields
    ------
    msg : bluesky messages. Returns (run uids, the alarm rules that stopped the series or "").
    """
    uids, stopped = [], ""
    for k in range(int(max_maps)):
        channels = {}
        for name, (signal, units) in (electrochemistry or {}).items():
            channels[name] = {"value": float((yield from bps.rd(signal))), "units": str(units)}
        extra = dict(md or {})
        block = {**(extra.pop("sxdm", None) or {}), "operando": channels}
        uid = yield from sxdm_map(
            detectors, slow_motor, slow_start, slow_stop, slow_num, fast_motor, fast_start,
            fast_stop, fast_num, rocking_motor, rocking_angles, geometry=geometry,
            fixed_angles=fixed_angles, md={**extra, "sxdm": block, "sxdm_operando_map": k})
        uids.append(uid)
        yield from bps.trigger(feedback, wait=True)
        rules = (yield from bps.rd(feedback.alarm_rules)) or ""
        hit = sorted(r for r in rules.split(",") if r and ("*" in stop_on or r in stop_on))
        if hit:
            stopped = ",".join(hit)
            log.warning("operando series stopped after map %d: alarm %s", k + 1, stopped)
            break
    return uids, stopped
