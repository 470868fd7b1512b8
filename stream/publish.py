"""Map snapshots for viewers, over ZeroMQ PUB/SUB. No pickle: a JSON header and raw buffers.

Wire format (one multipart message)::

    part 0   b"sxdm.snapshot"                              topic, for SUB filtering
    part 1   JSON header (UTF-8 object):
             {"format": "sxdm.snapshot", "version": 1, "seq": int, "time": unix seconds,
              "series_id": int, "series_unique_id": str | null, "complete": bool,
              "scan": ScanDescription.describe(), "stats": {...}, "d_ref": float,
              "mean_direction": [3], "azimuth_reference": [3], "mask_fraction": float,
              "units": {name: unit}, "arrays": [{"name", "dtype", "shape"}, ...]}
    part 2.. one raw C-order little-endian buffer per entry of "arrays", in that order

Array names are those of :func:`sxdm_stream.maps.map_arrays` (the same as in results files),
plus ``particle_labels`` (int32) and, per q-ROI, ``roi.<name>.<map>`` for intensity,
d_spacing, strain, tilt_altitude and mask. The header may also carry ``drift``
(``DriftEstimate.to_dict()``), ``particles`` (the particle table's records), ``q_rois``
(name -> ROI description and d_ref), ``roi_suggestion`` (at the end of a scan) and
``operando`` (electrochemistry channels).

Operando records (one per completed map, :mod:`sxdm_stream.operando`) go out on the same
socket as ``[b"sxdm.operando", JSON]`` with the record's ``to_json()`` object plus
``"format": "sxdm.operando", "version": 1``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from .errors import BadMessageError
from .maps import MAP_FIELDS, MapSet, map_arrays

TOPIC = b"sxdm.snapshot"
FORMAT = "sxdm.snapshot"
VERSION = 1
#: dtypes a snapshot may carry (anything else is refused on decode: no object arrays)
ALLOWED_DTYPES = {"<f8", "<f4", "|u1", "|b1", "<i8", "<u4", "<i4"}


@dataclass(frozen=True)
class Snapshot:
    header: dict[str, Any]
    arrays: dict[str, np.ndarray]


def encode_snapshot(maps: MapSet, info: dict[str, Any],
                    extra_arrays: dict[str, np.ndarray] | None = None) -> list[bytes]:
    """The multipart message of one snapshot; ``info`` adds header fields (seq, stats...),
    ``extra_arrays`` more arrays (q-ROI maps ``roi.<name>.<map>``, ``particle_labels``)."""
    arrays = map_arrays(maps)
    arrays["mask"] = arrays["mask"].astype(np.uint8)
    arrays.update(extra_arrays or {})
    specs, buffers = [], []
    for name, array in arrays.items():
        a = np.ascontiguousarray(array)
        a = a.astype(a.dtype.newbyteorder("<")) if a.dtype.byteorder == ">" else a
        specs.append({"name": name, "dtype": a.dtype.str, "shape": list(a.shape)})
        buffers.append(a.tobytes())
    header = {
        "format": FORMAT, "version": VERSION, "time": time.time(),
        "d_ref": maps.d_ref, "mean_direction": np.asarray(maps.mean_direction).tolist(),
        "azimuth_reference": np.asarray(maps.azimuth_reference).tolist(),
        "mask_fraction": maps.mask_fraction,
        "units": {name: unit for name, (unit, _title) in MAP_FIELDS.items()},
        **info, "arrays": specs,
    }
    return [TOPIC, json.dumps(header, allow_nan=True).encode()] + buffers


def decode_snapshot(parts: list[bytes]) -> Snapshot:
    """Parse a snapshot message; BadMessageError if it is not one or is inconsistent."""
    if len(parts) < 2 or bytes(parts[0]) != TOPIC:
        raise BadMessageError("not an sxdm snapshot (wrong topic or too few parts)", "malformed")
    header = _json_object(parts[1], FORMAT, "snapshot header")
    if header.get("version", 0) > VERSION:
        raise BadMessageError(f"snapshot version {header.get('version')} is newer than {VERSION}",
                              "unknown_type")
    specs = header.get("arrays", [])
    if len(specs) != len(parts) - 2:
        raise BadMessageError(f"snapshot lists {len(specs)} arrays but carries {len(parts) - 2}",
                              "size_mismatch")
    arrays = {}
    for spec, buf in zip(specs, parts[2:]):
        arrays[spec["name"]] = _array(spec, bytes(buf))
    return Snapshot(header, arrays)


def _array(spec: dict, buf: bytes) -> np.ndarray:
    dtype = str(spec.get("dtype"))
    if dtype not in ALLOWED_DTYPES:
        raise BadMessageError(f"snapshot array {spec.get('name')!r} has dtype {dtype!r}",
                              "wrong_dtype")
    shape = tuple(int(n) for n in spec.get("shape", ()))
    if int(np.prod(shape)) * np.dtype(dtype).itemsize != len(buf):
        raise BadMessageError(f"snapshot array {spec.get('name')!r}: {len(buf)} bytes for shape "
                              f"{shape} of {dtype}", "size_mismatch")
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
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
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


def decode_pixel_request(parts: list[bytes]) -> int:
    """The flat map index asked for; BadMessageError if the request is not one."""
    try:
        request = json.loads(bytes(parts[0])) if len(parts) == 1 else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        request = None
    if not isinstance(request, dict) or request.get("request") != "pixel" \
            or not isinstance(request.get("point"), int):
        raise BadMessageError("a pixel request is one JSON part {'request': 'pixel', 'point': int}",
                              "malformed")
    return request["point"]


def encode_pixel_reply(header: dict[str, Any], arrays: dict[str, np.ndarray]) -> list[bytes]:
    specs, buffers = [], []
    for name, array in arrays.items():
        a = np.ascontiguousarray(array)
        specs.append({"name": name, "dtype": a.dtype.str, "shape": list(a.shape)})
        buffers.append(a.tobytes())
    head = {"format": PIXEL_FORMAT, "version": VERSION, **header, "arrays": specs}
    return [json.dumps(head).encode()] + buffers


def encode_pixel_error(message: str) -> list[bytes]:
    return [json.dumps({"format": PIXEL_FORMAT, "error": message}).encode()]


def decode_pixel_reply(parts: list[bytes]) -> Snapshot:
    """A pixel reply as (header, arrays); BadMessageError for errors and malformed replies."""
    try:
        header = json.loads(bytes(parts[0]))
    except (UnicodeDecodeError, json.JSONDecodeError, IndexError) as exc:
        raise BadMessageError(f"pixel reply header is not JSON: {exc}", "malformed") from None
    if not isinstance(header, dict) or header.get("format") != PIXEL_FORMAT:
        raise BadMessageError("not an sxdm.pixel reply", "malformed")
    if "error" in header:
        raise BadMessageError(f"the processor answered: {header['error']}", "refused")
    specs = header.get("arrays", [])
    if len(specs) != len(parts) - 1:
        raise BadMessageError("pixel reply array count differs from its parts", "size_mismatch")
    return Snapshot(header, {s["name"]: _array(s, bytes(b)) for s, b in zip(specs, parts[1:])})
