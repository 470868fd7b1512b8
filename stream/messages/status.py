"""What the live processor tells its viewers, on the wire: :class:`LiveStatus` (the status
every snapshot carries and ``LiveProcessor.status()`` returns) and :class:`SnapshotHeader`
(the JSON header of a published snapshot, :mod:`sxdm_stream.sinks.publish`).

A viewer may be older or newer than the processor it listens to. A version is "major.minor"
(or a bare major): a reader refuses another major version, ignores the fields a newer minor
added and gives the fields an older one lacked their default. A null for a field that cannot
be null reads as absent.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from sxdm_stream.errors import BadMessageError, format_untrusted
from sxdm_stream.messages.stages import U64_MAX

#: version of :class:`LiveStatus` on the wire
LIVE_STATUS_VERSION = "1.0"
#: format and (major) version of a snapshot header (:mod:`sxdm_stream.sinks.publish`)
SNAPSHOT_FORMAT = "sxdm.snapshot"
SNAPSHOT_VERSION = 1


@dataclass(frozen=True)
class LiveStatus:
    """What a live processor says about itself at one moment
    (``LiveProcessor.status()``), and what every snapshot header carries under ``"stats"``.

    Counts are numbers of messages or images since the processor started, over every series;
    counts by reason map a short stable key (``"bad_position"``) to a number. Fields are read
    as attributes (``status.processed``).
    """

    #: messages received, from the detector stream and through ``submit``
    messages: int = 0
    #: images among them
    received: int = 0
    #: images whose frame is in the sums of a scan
    processed: int = 0
    #: images and messages refused, by reason
    rejected: Mapping[str, int] = field(default_factory=dict)
    #: images dropped because the frame queue was full (``policy="drop"``)
    dropped: int = 0
    #: messages waiting in the frame queue now
    queued: int = 0
    #: bytes of decoded images waiting in the frame queue now
    queued_bytes: int = 0
    #: images processed per second since the first image arrived
    frames_per_s: float = 0.0
    #: median of the time from a frame's arrival to the snapshot holding it, seconds (None
    #: before the first snapshot)
    latency_p50_s: float | None = None
    #: 99th percentile of the same, seconds
    latency_p99_s: float | None = None
    #: the detector's id of the current (or last) series, None before any
    series_id: int | None = None
    #: the detector's unique id of that series, None when it gives none
    series_unique_id: str | None = None
    #: (frames in the sums, frames of the scan) of the current scan, None before any scan
    progress: tuple[int, int] | None = None
    #: images waiting now for their positions from the control system
    held: int = 0
    #: images placed on the map by their index because their positions never came
    placed_by_index: int = 0
    #: series written with every frame of their scan in the sums
    completed: int = 0
    #: series the detector ended (complete or not)
    ended: int = 0
    #: messages accepted although not as their protocol specifies, by kind
    quirks: Mapping[str, int] = field(default_factory=dict)
    #: exceptions caught inside a thread's loop, by loop (``receiver``, ``worker``, ``writer``)
    internal_errors: Mapping[str, int] = field(default_factory=dict)
    #: messages handed in once the run was over (not processed)
    after_stop: int = 0
    #: why the run stopped by itself (a thread died, no scan could be processed), else None
    failure: str | None = None

    def to_wire(self) -> dict[str, Any]:
        """A JSON-able dict: ``"version"`` (:data:`LIVE_STATUS_VERSION`) and every field."""
        return {"version": LIVE_STATUS_VERSION, **_wire_fields(self, {})}

    @classmethod
    def from_wire(cls, body: Mapping[str, Any]) -> "LiveStatus":
        """The status that :meth:`to_wire` sent, from a processor of the same major version.

        A body without ``"version"`` is the unversioned status of processors before 1.0 (the
        same fields). Raises BadMessageError for another major version, a body that is not an
        object or a field of the wrong type."""
        return cls(**_read_fields(cls, body, "live status", {}))


@dataclass(frozen=True)
class SnapshotHeader:
    """What a snapshot of the maps says besides its arrays (:mod:`sxdm_stream.sinks.publish`):
    which series and how far it is, the processor's status, the conventions of the maps and
    what the analysis found.

    On the wire (a JSON object, with ``"format"`` :data:`SNAPSHOT_FORMAT` and ``"version"``)
    fields keep their names, but for three named before units were: ``final`` is sent as
    ``"complete"``, ``time_s`` as ``"time"`` and ``d_ref_a`` as ``"d_ref"``.
    """

    #: number of the snapshot from its processor, from 1 (0: not from a processor, a file)
    seq: int = 0
    #: unix time when the snapshot was made, seconds (None: unknown)
    time_s: float | None = None
    #: the detector's id of the series (None: unknown)
    series_id: int | None = None
    #: the detector's unique id of the series (None when it gives none)
    series_unique_id: str | None = None
    #: the last snapshot of a series that is over: every final snapshot is a point of an
    #: operando history, whether or not its scan is complete (see ``status``)
    final: bool = False
    #: ``"running"`` (the scan goes on), ``"complete"`` (every frame of the scan is in the
    #: sums) or ``"incomplete"`` (the scan is over with ``frames_missing`` frames missing)
    status: str = "running"
    #: frames of the scan not in the sums (while the scan runs: those still to come)
    frames_missing: int = 0
    #: the scan (``ScanDescription.describe()``: shape, extents_um, motors, rocking_angles...)
    scan: Mapping[str, Any] = field(default_factory=dict)
    #: the processor's status when the snapshot was made
    stats: LiveStatus = field(default_factory=LiveStatus)
    #: strain reference d-spacing, angstrom (NaN: unknown)
    d_ref_a: float = float("nan")
    #: unit vector of the mean scattering vector over the mask (lab frame), None if unknown
    mean_direction: tuple[float, float, float] | None = None
    #: unit vector e1 from which the tilt azimuth is counted, None if unknown
    azimuth_reference: tuple[float, float, float] | None = None
    #: map pixels below this fraction of the largest intensity are outside the mask
    mask_fraction: float | None = None
    #: units of each map, by map name (as in ``MAP_FIELDS``)
    units: Mapping[str, str] = field(default_factory=dict)
    #: the particle table: one record per particle (``PARTICLE_FIELDS``)
    particles: tuple[Mapping[str, Any], ...] = ()
    #: the drift estimate (``DriftEstimate.to_dict()``), None when not estimated
    drift: Mapping[str, Any] | None = None
    #: the q-ROIs in use: name -> ``QRoi.describe()`` plus its ``d_ref`` (angstrom)
    q_rois: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: the q-ROIs suggested at the end of a scan (``RoiSuggestion.describe()`` and its
    #: printout under ``text``), None before
    roi_suggestion: Mapping[str, Any] | None = None
    #: the run's electrochemistry channels: name -> {"value", "units"} (or a bare number)
    operando: Mapping[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        """The JSON-able header object (without the ``"arrays"`` a message adds)."""
        return {"format": SNAPSHOT_FORMAT, "version": SNAPSHOT_VERSION,
                **_wire_fields(self, _SNAPSHOT_WIRE_NAMES)}

    @classmethod
    def from_wire(cls, body: Mapping[str, Any]) -> "SnapshotHeader":
        """The header a processor sent (see :meth:`LiveStatus.from_wire` for versions). A
        header without ``"status"`` (before it was sent) says ``complete`` when final."""
        values = _read_fields(cls, body, "snapshot header", _SNAPSHOT_WIRE_NAMES)
        values.setdefault("status", "complete" if values.get("final") else "running")
        return cls(**values)


#: field -> its name on the wire, where they differ
_SNAPSHOT_WIRE_NAMES = {"final": "complete", "time_s": "time", "d_ref_a": "d_ref"}
_WIRE_MAJOR = {LiveStatus: int(LIVE_STATUS_VERSION.split(".")[0]),
               SnapshotHeader: SNAPSHOT_VERSION}


def _wire_fields(obj, names: Mapping[str, str]) -> dict[str, Any]:
    return {names.get(f.name, f.name): _to_json(getattr(obj, f.name)) for f in fields(obj)}


def _to_json(value: Any) -> Any:
    if isinstance(value, LiveStatus):
        return value.to_wire()
    if isinstance(value, Mapping):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_to_json(v) for v in value]
    return value


def _read_fields(cls, body: Any, what: str, names: Mapping[str, str]) -> dict[str, Any]:
    """The fields of ``cls`` in ``body``, each checked by the reader of its annotation."""
    if not isinstance(body, Mapping):
        raise BadMessageError(f"{what} is not a JSON object: {format_untrusted(body)}")
    _check_major(body.get("version"), _WIRE_MAJOR[cls], what)
    values = {}
    for f in fields(cls):
        key = names.get(f.name, f.name)
        value = body.get(key)
        if value is not None or (key in body and f.type.endswith("| None")):
            values[f.name] = _READERS[f.type](value, f"{what} field {key!r}")
    return values


def _check_major(version: Any, major: int, what: str) -> None:
    """Refuse another major version than ``major`` (None: unversioned, read as ``major``)."""
    if version is None or (type(version) is int and version == major):
        return
    head, _, minor = version.partition(".") if isinstance(version, str) else ("", "", "")
    known = (head.isascii() and head.isdigit() and len(head) < 10
             and (not minor or (minor.isascii() and minor.isdigit())))
    if not known or int(head) != major:
        raise BadMessageError(f"{what} has version {format_untrusted(version)}; this reader "
                              f"knows major version {major} only (a newer sxdm-stream reads "
                              "newer versions)", "unsupported_version")


def _bad(what: str, value: Any, expected: str) -> BadMessageError:
    return BadMessageError(f"{what} should be {expected}, not {format_untrusted(value)}")


def _int(value: Any, what: str) -> int:
    if type(value) is not int or abs(value) > U64_MAX:
        raise _bad(what, value, "an integer")
    return value


def _float(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, int) and abs(value) > U64_MAX):
        raise _bad(what, value, "a number")
    return float(value)


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise _bad(what, value, "a string")
    return value


def _bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise _bad(what, value, "true or false")
    return value


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise _bad(what, value, "an object")
    return dict(value)


def _mapping_of(read):
    return lambda value, what: {k: read(v, f"{what}[{k!r}]")
                                for k, v in _object(value, what).items()}


def _tuple_of(read, length: int | None = None):
    def read_all(value: Any, what: str) -> tuple:
        if not isinstance(value, (list, tuple)) or length not in (None, len(value)):
            raise _bad(what, value, f"a list of {length or 'any number of'} items")
        return tuple(read(v, f"{what}[{k}]") for k, v in enumerate(value))
    return read_all


def _optional(read):
    return lambda value, what: None if value is None else read(value, what)


#: how a field is read from the wire, by its annotation
_READERS = {
    "int": _int, "int | None": _optional(_int), "float": _float, "float | None": _optional(_float),
    "str": _str, "str | None": _optional(_str), "bool": _bool,
    "Mapping[str, int]": _mapping_of(_int), "Mapping[str, str]": _mapping_of(_str),
    "Mapping[str, Any]": _object, "Mapping[str, Any] | None": _optional(_object),
    "Mapping[str, Mapping[str, Any]]": _mapping_of(_object),
    "tuple[int, int] | None": _optional(_tuple_of(_int, 2)),
    "tuple[float, float, float] | None": _optional(_tuple_of(_float, 3)),
    "tuple[Mapping[str, Any], ...]": _tuple_of(_object),
    "LiveStatus": lambda value, what: LiveStatus.from_wire(value),
}
