"""The run metadata that makes a bluesky run self-describing for SXDM.

A run's start document carries our ``"sxdm"`` block, the same block a DECTRIS series start
carries in its ``user_data`` (:mod:`sxdm_stream.messages`)::

    {"sxdm": {"version": 1, "scan": ScanDescription.describe(),
              "geometry": Geometry.describe(), "correlation_id": str}}

``scan`` may be left out when the run is a plain 3-axis ``bluesky.plans.grid_scan`` (rocking
axis outermost, then the slow and the fast map motor): the scan is then rebuilt from the
standard start keys ``motors``, ``shape``, ``extents`` and ``snaking``, and the block only
needs ``geometry`` (and, if the diffractometer has other circles, ``fixed_angles``).

A relative plan (``rel_grid_scan``: ``plan_name`` starting with ``rel_``) puts extents
relative to where the motors stood in its start document; the absolute scan is known only
from the first measured readings (:func:`is_relative` and :func:`shift_scan`).
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Mapping

import numpy as np

from sxdm_stream import SXDM_KEY, SXDM_METADATA_VERSION, ConfigError, Geometry, ScanDescription


def sxdm_block(geometry: Geometry | Mapping, scan: ScanDescription | None = None,
               fixed_angles: Mapping[str, float] | None = None,
               correlation_id: str | None = None) -> dict:
    """The ``"sxdm"`` metadata block of a run.

    Parameters
    ----------
    geometry : the diffraction geometry (detector, energy, diffractometer circles), or its
        ``describe()`` dict.
    scan : the scan description; None when the plan's standard metadata describes it
        (a plain 3-axis ``grid_scan``).
    fixed_angles : angles of the circles that do not move (degrees), used when ``scan``
        is None; ignored otherwise (the scan carries its own).
    correlation_id : joins this run to the detector's series; a fresh uuid when None.

    Returns
    -------
    dict : JSON-able, to be put under ``md["sxdm"]``.
    """
    described = dict(geometry) if isinstance(geometry, Mapping) else geometry.describe()
    block = {"version": SXDM_METADATA_VERSION, "geometry": described,
             "correlation_id": correlation_id or uuid.uuid4().hex}
    if scan is not None:
        block["scan"] = scan.describe()
    elif fixed_angles:
        block["fixed_angles"] = {str(k): float(v) for k, v in fixed_angles.items()}
    return block


def scan_from_start(doc: Mapping) -> ScanDescription:
    """The scan of a run, from its start document.

    The ``sxdm.scan`` description wins; otherwise the scan is rebuilt from the standard keys
    of a 3-axis grid scan (rocking axis first). Raises ConfigError saying what is missing.
    """
    block = doc.get(SXDM_KEY)
    if not isinstance(block, Mapping):
        raise ConfigError(f"run {doc.get('uid')} has no {SXDM_KEY!r} metadata block")
    if "scan" in block:
        return ScanDescription.from_description(block["scan"])
    try:
        motors, shape, extents = list(doc["motors"]), list(doc["shape"]), list(doc["extents"])
    except KeyError as exc:
        raise ConfigError(f"run {doc.get('uid')} has neither sxdm.scan nor the standard "
                          f"key {exc.args[0]!r}") from None
    if not (len(motors) == len(shape) == len(extents) == 3):
        raise ConfigError(f"run {doc.get('uid')}: a scan without sxdm.scan must be a 3-axis grid "
                          f"(rocking, slow, fast), got motors {motors} and shape {shape}")
    # snaking[1] (rows reversed at odd rocking steps) cannot be described by a
    # ScanDescription: the measured positions of the map motors place those frames.
    snaking = list(doc.get("snaking") or [False, False, False])
    (a0, a1), rows_ext, cols_ext = extents
    return ScanDescription(
        shape=(int(shape[1]), int(shape[2])),
        extents_um=(tuple(float(v) for v in rows_ext), tuple(float(v) for v in cols_ext)),
        motors=(str(motors[1]), str(motors[2])), rocking_axis=str(motors[0]),
        rocking_angles=tuple(np.linspace(float(a0), float(a1), int(shape[0]))),
        fixed_angles=dict(block.get("fixed_angles", {})),
        snake=bool(snaking[2]) if len(snaking) > 2 else False,
        scan_id=str(doc.get("scan_id", "")),
    )


def correlation_id_of(doc: Mapping) -> str:
    """The run's correlation id: ``sxdm.correlation_id``, else the run uid."""
    block = doc.get(SXDM_KEY)
    if isinstance(block, Mapping) and block.get("correlation_id"):
        return str(block["correlation_id"])
    return str(doc["uid"])


def is_relative(doc: Mapping) -> bool:
    """Whether the run's scan comes from the standard keys of a relative plan (``rel_*``),
    whose extents are offsets from the motors' positions at the start of the run."""
    block = doc.get(SXDM_KEY)
    has_scan = isinstance(block, Mapping) and "scan" in block
    return not has_scan and str(doc.get("plan_name", "")).startswith("rel_")


def shift_scan(scan: ScanDescription, frame_index: int,
               readings: Mapping[str, float]) -> ScanDescription:
    """The absolute scan of a relative plan, from the measured positions of one frame.

    ``scan`` holds the plan's relative extents and angles; ``readings`` the positions of the
    map motors and the rocking axis measured at ``frame_index``. Raises ConfigError when a
    motor's reading is missing or not finite.
    """
    angle, point = scan.locate(frame_index)
    row, col = divmod(point, scan.shape[1])
    planned = {scan.motors[0]: scan.axis_um(0)[row], scan.motors[1]: scan.axis_um(1)[col],
               scan.rocking_axis: scan.rocking_angles[angle]}
    origin = {}
    for motor, relative in planned.items():
        value = readings.get(motor)
        if value is None or not np.isfinite(value):
            raise ConfigError(f"a relative plan needs the reading of {motor!r} in its events "
                              "to place its scan; it is missing")
        origin[motor] = float(value) - float(relative)
    return dataclasses.replace(
        scan,
        extents_um=tuple((a + origin[m], b + origin[m])
                         for m, (a, b) in zip(scan.motors, scan.extents_um)),
        rocking_angles=tuple(a + origin[scan.rocking_axis] for a in scan.rocking_angles))
