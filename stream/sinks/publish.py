"""Map snapshots for viewers, over ZeroMQ PUB/SUB. No pickle: a JSON header and raw buffers.

Wire format (one multipart message)::

    part 0   b"sxdm.snapshot"                              topic, for SUB filtering
    part 1   JSON header (UTF-8 object): SnapshotHeader.to_wire() plus
             "arrays": [{"name", "dtype", "shape"}, ...]
    part 2.. one raw C-order little-endian buffer per entry of "arrays", in that order

The header's fields, their units and versions are those of
:class:`~sxdm_stream.messages.SnapshotHeader` (the processor's status under ``"stats"``:
:class:`~sxdm_stream.messages.LiveStatus`). Array names are those of
:func:`sxdm_stream.core.maps.map_arrays` (the same as in results files), plus
``particle_labels`` (int32) and, per q-ROI, ``roi.<name>.<map>`` for intensity, d_spacing,
strain, tilt_altitude and mask.

Operando records (one per completed map, :mod:`sxdm_stream.analysis.operando`) go out on the same
socket as ``[b"sxdm.operando", JSON]`` with the record's ``to_json()`` object plus
``"format": "sxdm.operando", "version": 1``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from sxdm_stream.core.maps import MAP_FIELDS, MapSet, map_arrays
from sxdm_stream.errors import BadMessageError, format_untrusted
from sxdm_stream.messages import SNAPSHOT_FORMAT, SNAPSHOT_VERSION, SnapshotHeader

TOPIC = b"sxdm.snapshot"
FORMAT = SNAPSHOT_FORMAT
#: version of the pixel and operando messages (a snapshot's: SNAPSHOT_VERSION)
VERSION = 1
#: dtypes a snapshot may carry (anything else is refused on decode: no object arrays)
ALLOWED_DTYPES = {"<f8", "<f4", "|u1", "|b1", "<i8", "<u4", "<i4"}


@dataclass(frozen=True)
class Snapshot:
    """One snapshot of the maps: its header and its arrays by name."""

    header: SnapshotHeader
    arrays: dict[str, np.ndarray]

    def to_wire(self) -> list[bytes]:
        """The multipart message of this snapshot."""
        return _encode_message(self.header.to_wire(), self.arrays)

    @classmethod
    def from_wire(cls, parts: list[bytes]) -> "Snapshot":
        """The snapshot of a multipart message (:func:`decode_snapshot`)."""
        return decode_snapshot(parts)


@dataclass(frozen=True)
class PixelReply:
    """The processor's answer about one map pixel: its header (``point``, ``grid``,
    ``com``...: see the pixel protocol below) and its arrays by name."""

    header: dict[str, Any]
    arrays: dict[str, np.ndarray]


def encode_snapshot(maps: MapSet, info: dict[str, Any],
                    extra_arrays: dict[str, np.ndarray] | None = None) -> list[bytes]:
    """The multipart message of one snapshot; ``info`` adds header fields (seq, stats...),
    ``extra_arrays`` more arrays (q-ROI maps ``roi.<name>.<map>``, ``particle_labels``)."""
    arrays = map_arrays(maps)
    arrays["mask"] = arrays["mask"].astype(np.uint8)
    arrays.update(extra_arrays or {})
    header = {
        "format": SNAPSHOT_FORMAT, "version": SNAPSHOT_VERSION, "time": time.time(),
        "d_ref": maps.d_ref, "mean_direction": np.asarray(maps.mean_direction).tolist(),
        "azimuth_reference": np.asarray(maps.azimuth_reference).tolist(),
        "mask_fraction": maps.mask_fraction,
        "units": {name: unit for name, (unit, _title) in MAP_FIELDS.items()},
        **info,
    }
    return _encode_message(header, arrays)


def _encode_message(header: dict[str, Any], arrays: dict[str, np.ndarray]) -> list[bytes]:
    specs, buffers = [], []
    for name, array in arrays.items():
        a = np.ascontiguousarray(array)
        a = a.astype(a.dtype.newbyteorder("<")) if a.dtype.byteorder == ">" else a
        specs.append({"name": name, "dtype": a.dtype.str, "shape": list(a.shape)})
        buffers.append(a.tobytes())
    body = {**header, "arrays": specs}
    return [TOPIC, json.dumps(body, allow_nan=True).encode()] + buffers


def decode_snapshot(parts: list[bytes]) -> Snapshot:
    """Parse a snapshot message; BadMessageError if it is not one or is inconsistent."""
    if len(parts) < 2 or bytes(parts[0]) != TOPIC:
        raise BadMessageError("not an sxdm snapshot (wrong topic or too few parts)", "malformed")
    body = _json_object(parts[1], SNAPSHOT_FORMAT, "snapshot header")
    header = SnapshotHeader.from_wire(body)
    return Snapshot(header, _arrays(body.get("arrays", []), parts[2:], "snapshot"))


def _arrays(specs: Any, buffers: list[bytes], what: str) -> dict[str, np.ndarray]:
    """The arrays a message's ``"arrays"`` describes, one buffer each."""
    if not isinstance(specs, list) or not all(isinstance(s, dict) for s in specs):
        raise BadMessageError(f"{what} header lists no arrays", "malformed")
    if len(specs) != len(buffers):
        raise BadMessageError(f"{what} lists {len(specs)} arrays but carries {len(buffers)}",
                              "size_mismatch")
    return {_array_name(spec, what): _array(spec, bytes(buf), what)
            for spec, buf in zip(specs, buffers)}


def _array_name(spec: dict, what: str) -> str:
    name = spec.get("name")
    if not isinstance(name, str):
        raise BadMessageError(f"{what} array name {format_untrusted(name)} is not a string",
                              "malformed")
    return name


def _array(spec: dict, buf: bytes, what: str) -> np.ndarray:
    name, dtype = format_untrusted(spec.get("name")), spec.get("dtype")
    shape = spec.get("shape", [])
    if not isinstance(dtype, str) or dtype not in ALLOWED_DTYPES:
        raise BadMessageError(f"{what} array {name} has dtype {format_untrusted(dtype)}",
                              "wrong_dtype")
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
        raise BadMessageError(f"{what} array {name} has shape {format_untrusted(shape)}",
                              "malformed")
    if math.prod(shape) * np.dtype(dtype).itemsize != len(buf):
        raise BadMessageError(f"{what} array {name}: {len(buf)} bytes for shape "
                              f"{format_untrusted(shape)} of {dtype}", "size_mismatch")
    return np.frombuffer(buf, dtype=dtype).reshape(shape)


OPERANDO_TOPIC = b"sxdm.operando"
OPERANDO_FORMAT = "sxdm.operando"


def encode_operando_record(record: dict[str, Any]) -> list[bytes]:
    """The message of one operando record (``OperandoRecord.to_json()``)."""
    body = {"format": OPERANDO_FORMAT, "version": VERSION, **record}
    return [OPERANDO_TOPIC, json.dumps(body, allow_nan=False).encode()]


def decode_operando_record(parts: list[bytes]) -> dict[str, Any]:
    """Parse an operando record message; BadMessageError if it is not one."""
    if len(parts) != 2 or bytes(parts[0]) != OPERANDO_TOPIC:
        raise BadMessageError("not an sxdm operando record (topic or part count)", "malformed")
    return _json_object(parts[1], OPERANDO_FORMAT, "operando record")


def _json_object(part: bytes, fmt: str, what: str) -> dict[str, Any]:
    """The JSON object of a message part, whose ``format`` must be ``fmt``."""
    try:
        body = json.loads(bytes(part))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:   # ValueError: huge integers
        raise BadMessageError(f"{what} is not JSON: {exc}", "malformed") from None
    if not isinstance(body, dict) or body.get("format") != fmt:
        raise BadMessageError(f"{what} is not an {fmt} object", "malformed")
    return body


class SnapshotPublisher:
    """Binds a PUB socket (loopback unless told) and sends snapshots without ever blocking:
    a slow viewer loses old snapshots, never slows the processor."""

    def __init__(self, endpoint: str, context: zmq.Context | None = None, hwm: int = 4) -> None:
        self._context = context or zmq.Context.instance()
        self.socket = self._context.socket(zmq.PUB)
        self.socket.setsockopt(zmq.SNDHWM, hwm)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(endpoint)
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def send(self, parts: list[bytes]) -> bool:
        try:
            self.socket.send_multipart(parts, flags=zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False

    def close(self) -> None:
        self.socket.close()


class SnapshotSubscriber:
    """Connects a SUB socket to a processor's snapshot endpoint."""

    def __init__(self, endpoint: str, context: zmq.Context | None = None) -> None:
        self._context = context or zmq.Context.instance()
        self.socket = self._context.socket(zmq.SUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.RCVHWM, 4)
        self.socket.setsockopt(zmq.SUBSCRIBE, TOPIC)
        self.socket.connect(endpoint)

    def receive(self, timeout_ms: int = 1000) -> Snapshot | None:
        """The next snapshot, or None after ``timeout_ms``. Malformed ones raise BadMessageError."""
        if not self.socket.poll(timeout_ms):
            return None
        return decode_snapshot(self.socket.recv_multipart())

    def close(self) -> None:
        self.socket.close()


# ---- pixel details on request (REQ/REP) ---------------------------------------------------------
# A viewer asks for what is too big to publish for every pixel: the q-space histogram of one
# map pixel. Request: one JSON part {"request": "pixel", "point": flat map index}. Reply:
# part 0 JSON header {"format": "sxdm.pixel", "version": 1, "point": int, "series_id",
# "grid": QGrid.describe() or null, "q_ref": [3], "com": [3] (1/A, NaN if empty),
# "rocking_angles": [...], "arrays": [{"name", "dtype", "shape"}...]} then the raw arrays:
# "histogram" (bx, by, bz), "rocking_curve" (n_angles,), "moments" (10,). An error reply is
# a single JSON part {"format": "sxdm.pixel", "error": "..."}.
PIXEL_FORMAT = "sxdm.pixel"


def encode_pixel_request(point: int) -> list[bytes]:
    return [json.dumps({"request": "pixel", "point": int(point)}).encode()]


#: longest pixel request read (a real one is ~40 bytes): longer ones are refused unparsed,
#: so neither deep nesting nor a number of thousands of digits reaches the JSON parser
MAX_PIXEL_REQUEST_BYTES = 1024
#: the REP socket drops (disconnects) a peer sending more than this in one message
MAX_PIXEL_MESSAGE_BYTES = 1 << 20


def decode_pixel_request(parts: list[bytes]) -> int:
    """The flat map index asked for; BadMessageError if the request is not one.

    The index must be a JSON integer (``true`` is not one) between 0 and 2**53; whether it
    lies on the map is for the processor to say."""
    usage = "a pixel request is one JSON part {'request': 'pixel', 'point': int}"
    if len(parts) != 1:
        raise BadMessageError(f"{usage}, not {len(parts)} parts", "malformed")
    if len(parts[0]) > MAX_PIXEL_REQUEST_BYTES:
        raise BadMessageError(f"{usage}; this one has {len(parts[0])} bytes", "malformed")
    try:
        request = json.loads(bytes(parts[0]))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BadMessageError(f"{usage}; this one is not JSON", "malformed") from None
    if not isinstance(request, dict) or request.get("request") != "pixel":
        raise BadMessageError(usage, "malformed")
    point = request.get("point")
    if type(point) is not int or not 0 <= point <= 2**53:
        raise BadMessageError(f"{usage}; its point {str(point)[:40]!r} is not a map pixel index",
                              "malformed")
    return point


def encode_pixel_reply(header: dict[str, Any], arrays: dict[str, np.ndarray]) -> list[bytes]:
    specs, buffers = [], []
    for name, array in arrays.items():
        a = np.ascontiguousarray(array)
        specs.append({"name": name, "dtype": a.dtype.str, "shape": list(a.shape)})
        buffers.append(a.tobytes())
    head = {"format": PIXEL_FORMAT, "version": VERSION, **header, "arrays": specs}
    return [json.dumps(head).encode()] + buffers


def pixel_reply(processor, series_id: int, point: int) -> list[bytes]:
    """The reply about map pixel ``point`` of ``processor`` (a ScanProcessor; None: no scan
    yet): its q histogram, rocking curve and moments, or an error reply."""
    if processor is None:
        return encode_pixel_error("no scan received yet")
    setup = processor.setup
    scan, acc = setup.scan, processor.accumulator
    if not 0 <= point < scan.n_points:
        return encode_pixel_error(f"map pixel {point} is outside 0..{scan.n_points - 1}")
    moments = acc.moments[:, point].sum(axis=0)
    com = setup.q_ref + (moments[1:4] / moments[0] if moments[0] > 0 else np.nan)
    header = {"point": point, "series_id": series_id, "q_ref": setup.q_ref.tolist(),
              "grid": setup.grid.describe() if setup.keep_histogram else None,
              "com": np.asarray(com, float).tolist(), "rocking_angles": list(scan.rocking_angles),
              "rocking_axis": scan.rocking_axis}
    arrays = {"rocking_curve": acc.moments[:, point, 0].copy(), "moments": moments}
    if setup.keep_histogram:
        arrays["histogram"] = acc.histogram[point].reshape(setup.grid.bins).copy()
    return encode_pixel_reply(header, arrays)


def encode_pixel_error(message: str) -> list[bytes]:
    return [json.dumps({"format": PIXEL_FORMAT, "error": message}).encode()]


def decode_pixel_reply(parts: list[bytes]) -> PixelReply:
    """A pixel reply; BadMessageError for error replies and malformed ones."""
    if not parts:
        raise BadMessageError("an empty pixel reply", "malformed")
    header = _json_object(parts[0], PIXEL_FORMAT, "pixel reply")
    if "error" in header:
        raise BadMessageError(f"the processor answered: {header['error']}", "refused")
    return PixelReply(header, _arrays(header.get("arrays", []), parts[1:], "pixel reply"))


class PixelService:
    """Answers pixel requests on a REP socket, from the thread that owns the sums.

    Every request gets one reply (REP must answer before it can receive again): the pixel's
    arrays, or an error reply for a request that is not valid and, counted by ``on_error``,
    for one whose answer failed.

    Parameters
    ----------
    endpoint : REP endpoint to bind, e.g. "tcp://127.0.0.1:5561" (port 0 or * for any).
    context : the ZeroMQ context.
    """

    def __init__(self, endpoint: str, context: zmq.Context | None = None) -> None:
        self._context = context or zmq.Context.instance()
        self.socket = self._context.socket(zmq.REP)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.MAXMSGSIZE, MAX_PIXEL_MESSAGE_BYTES)
        try:
            self.socket.bind(endpoint)
        except zmq.ZMQError:
            self.socket.close()
            raise
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def answer_pending(self, reply_for, on_error) -> int:
        """Answer every request waiting now; returns how many.

        Parameters
        ----------
        reply_for : ``reply_for(point) -> list[bytes]``, the reply to a valid request.
        on_error : ``on_error(exc)``, told of an exception ``reply_for`` raised (the
            requester then gets an error reply).
        """
        answered = 0
        while self.socket.poll(0):
            parts = self.socket.recv_multipart()
            try:
                reply = reply_for(decode_pixel_request(parts))
            except BadMessageError as exc:
                reply = encode_pixel_error(str(exc))
            except Exception as exc:              # a bug of ours must not stop the service
                on_error(exc)
                reply = encode_pixel_error("internal error answering this request (see the "
                                           "processor's log)")
            self.socket.send_multipart(reply)
            answered += 1
        return answered

    def close(self) -> None:
        self.socket.close()
