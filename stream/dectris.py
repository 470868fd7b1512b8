"""DECTRIS SIMPLON stream messages to and from our messages: a pure codec, no sockets.

:class:`Decoder` turns the parts of one ZeroMQ message into a :class:`SeriesStart`,
:class:`ImageFrame` or :class:`SeriesEnd`, choosing the stream version per message: stream v1
("legacy") is multipart with a JSON first part, stream v2 ("cbor") one frame of CBOR. Every
failure raises :class:`BadMessageError` with a stable ``reason``: ``malformed``,
``unknown_type``, ``unknown_tag``, ``size_mismatch``, ``truncated_payload``,
``unsupported_encoding`` or ``wrong_dtype``. The ``encode_*`` functions are a compliant
sender (our simulator's). Layouts: ``reference/dectris_stream.md`` beside DESIGN.md; the
image payloads themselves are decoded in :mod:`sxdm_stream.compression`.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, Sequence

import cbor2
import numpy as np
from cbor2 import CBORTag

from .compression import (TYPED_ARRAY_DTYPES, decode_array, decode_v1_blob, encode_array,
                          encode_v1_blob)
from .errors import BadMessageError
from .messages import ImageFrame, SeriesEnd, SeriesStart, StreamMessage

#: CBOR self-describe tag 55799 as it starts every real v2 message (bytes d9 d9 f7)
MAGIC = b"\xd9\xd9\xf7"
SELF_DESCRIBE_TAG = 55799
#: denominator of the v2 start_time/stop_time/real_time rationals in all captured data
TIME_BASE_HZ = 50_000_000
_DTYPE_NAMES = {d.name for d in TYPED_ARRAY_DTYPES.values()}
_V1_BIT_DEPTHS = {8: "uint8", 16: "uint16", 32: "uint32"}
_V1_HEADER_ARRAYS = ("dflatfield-1.0", "dpixelmask-1.0", "dcountrate_table-1.0")
#: start fields named differently in v2 and in the v1 detector configuration (SIMPLON names):
#: SeriesStart attribute -> (v2 key, v1 key); all in SI units but energy (eV), wavelength (A)
_START_FLOATS = {"energy_ev": ("incident_energy", "photon_energy"),
                 "wavelength_a": ("incident_wavelength", "wavelength"),
                 "pixel_size_m": ("pixel_size_x", "x_pixel_size"),
                 "detector_distance_m": ("detector_distance", "detector_distance")}
_START_SHAPE = (("image_size_y", "image_size_x"), ("y_pixels_in_detector", "x_pixels_in_detector"))


def _bad(message: str, reason: str = "malformed") -> BadMessageError:
    return BadMessageError(message, reason)


class Decoder:
    """Decodes DECTRIS stream v1 and v2 messages, remembering the channels of the last start.

    Parameters
    ----------
    channel : str, optional
        The v2 channel to take from image ``data`` and start ``pixel_mask`` maps. By default
        the first of the last start message's ``channels`` if the map has it, else the map's
        first key.

    Attributes
    ----------
    channels : tuple of str
        ``channels`` of the last v2 start message.
    without_magic : int
        v2 messages without the self-describe tag 55799: accepted, although DECTRIS'
        reference C parser (stream2.c) rejects them.
    """

    def __init__(self, channel: str | None = None) -> None:
        self.channel = channel
        self.channels: tuple[str, ...] = ()
        self.without_magic = 0

    def decode(self, parts: Sequence[bytes] | bytes,
               received_s: float | None = None) -> StreamMessage:
        """Decode one ZeroMQ message.

        Parameters
        ----------
        parts : list of bytes, or bytes
            The message parts as ``recv_multipart`` returns them (or a v2 message's frame).
        received_s : float, optional
            ``time.perf_counter()`` of arrival, stored in :attr:`ImageFrame.received_s`.

        Returns
        -------
        SeriesStart or ImageFrame or SeriesEnd

        Raises
        ------
        BadMessageError
            When the message cannot be decoded; ``reason`` says why.
        """
        parts = _as_parts(parts)
        extra = {} if received_s is None else {"received_s": received_s}
        if parts[0][:1] == b"{":
            return self._decode_v1(parts, extra)
        if len(parts) != 1:
            raise _bad(f"message of {len(parts)} parts whose first is not JSON (stream v1) and "
                       "not a single CBOR frame (stream v2)")
        return self._decode_v2(parts[0], extra)

    def _decode_v2(self, data, extra: dict) -> StreamMessage:
        msg = _load_cbor(data)
        if data[:3] != MAGIC:
            self.without_magic += 1
        kind = _field(msg, "type", str)
        if kind == "image":
            return ImageFrame(
                series_id=_field(msg, "series_id", int), image_id=_field(msg, "image_id", int),
                data=decode_array(self._select(_field(msg, "data", Mapping), "image data")),
                series_unique_id=_field(msg, "series_unique_id", str, False),
                user_data=_plain(msg.get("user_data")), real_time_s=_rational(msg, "real_time"),
                **extra)
        if kind == "start":
            return self._start_v2(msg)
        if kind == "end":
            return SeriesEnd(_field(msg, "series_id", int),
                             _field(msg, "series_unique_id", str, False))
        raise _bad(f"unknown stream v2 message type {kind!r}", "unknown_type")

    def _start_v2(self, msg: Mapping) -> SeriesStart:
        series_id = _field(msg, "series_id", int)
        channels = _field(msg, "channels", (list, tuple), False) or ()
        if not all(isinstance(c, str) for c in channels):
            raise _bad(f"start message channels {channels!r:.80} are not all strings")
        self.channels = tuple(channels)
        fields = _start_fields(msg, 2)
        dtype = _field(msg, "image_dtype", str, False)
        if dtype is not None and dtype not in _DTYPE_NAMES:
            raise _bad(f"image_dtype {dtype!r} is not one of {sorted(_DTYPE_NAMES)}", "wrong_dtype")
        masks = _field(msg, "pixel_mask", Mapping, False)
        mask = decode_array(self._select(masks, "pixel_mask", strict=False)) != 0 if masks else None
        return SeriesStart(
            series_id=series_id, series_unique_id=_field(msg, "series_unique_id", str, False),
            image_dtype=dtype, number_of_images=_field(msg, "number_of_images", int, False),
            pixel_mask=_checked_mask(mask, fields["image_shape"]),
            user_data=_plain(msg.get("user_data")), stream_version=2, **fields)

    def _select(self, channel_map: Mapping, what: str, strict: bool = True):
        """The configured channel (``strict``: it must be there), else the default one."""
        if not channel_map:
            raise _bad(f"{what} map has no channel")
        if self.channel is not None and (strict or self.channel in channel_map):
            if self.channel not in channel_map:
                raise _bad(f"{what} has no channel {self.channel!r} (it has {list(channel_map)})")
            return channel_map[self.channel]
        if self.channels and self.channels[0] in channel_map:
            return channel_map[self.channels[0]]
        return next(iter(channel_map.values()))

    def _decode_v1(self, parts: list, extra: dict) -> StreamMessage:
        header = _load_json(parts[0], "first part")
        htype = _field(header, "htype", str)
        if htype.startswith("dimage-"):
            return _image_v1(header, parts, extra)
        if htype.startswith("dheader-"):
            return _start_v1(header, parts)
        # LiberTEM's emulator misspells it "deseries_end-1.0"; ADEiger also matches a prefix
        if htype.startswith(("dseries_end", "deseries_end")):
            return SeriesEnd(_field(header, "series", int))
        raise _bad(f"unknown stream v1 htype {htype!r}", "unknown_type")


def decode_message(parts: Sequence[bytes] | bytes, *, channel: str | None = None,
                   received_s: float | None = None) -> StreamMessage:
    """Decode one message with a fresh :class:`Decoder` (see :meth:`Decoder.decode`).

    Without a start message seen, a v2 image's channel is ``channel`` or the map's first key.
    """
    return Decoder(channel).decode(parts, received_s=received_s)


# ---- stream v1 ----------------------------------------------------------------------------------
def _start_v1(header: dict, parts: list) -> SeriesStart:
    """``dheader-1.0`` [+ config (basic, all)] [+ 3 header/blob pairs (all)] [+ appendix]."""
    series = _field(header, "series", int)
    detail = _field(header, "header_detail", str)
    if detail not in ("all", "basic", "none"):
        raise _bad(f"header_detail {detail!r} is not all, basic or none")
    rest, config = list(parts[1:]), {}
    if detail != "none":
        if not rest:
            raise _bad(f"stream v1 header ({detail}) lacks its detector configuration part")
        config = _load_json(rest.pop(0), "detector configuration")
    mask = None
    # interpret by count, never by a fixed schema: the manual sends the appendix only after
    # "all", Diamond's EigerFan accepts one after any header_detail
    while len(rest) >= 2 and _v1_header_array(description := _appendix(rest[0])):
        if description["htype"].startswith("dpixelmask"):
            mask = _v1_array(description, rest[1]) != 0
        rest = rest[2:]
    if len(rest) > 1:
        raise _bad(f"stream v1 header has {len(rest)} unexpected parts after its end")
    bits = _field(config, "bit_depth_image", int, False)
    if bits is not None and bits not in _V1_BIT_DEPTHS:
        raise _bad(f"bit_depth_image {bits} is not 8, 16 or 32", "wrong_dtype")
    fields = _start_fields(config, 1)
    return SeriesStart(
        series_id=series, image_dtype=_V1_BIT_DEPTHS.get(bits),
        number_of_images=_v1_number_of_images(config),
        pixel_mask=_checked_mask(mask, fields["image_shape"]),
        user_data=_appendix(rest[0]) if rest else None, stream_version=1, **fields)


def _start_fields(msg: Mapping, version: int) -> dict:
    """SeriesStart's shape, beam centre and floats from a v2 start or a v1 configuration."""
    fields = {attr: _field(msg, keys[2 - version], float, False)
              for attr, keys in _START_FLOATS.items()}
    fields["image_shape"] = _pair(msg, *_START_SHAPE[2 - version], int)
    fields["beam_center"] = _pair(msg, "beam_center_y", "beam_center_x", float)
    return fields


def _start_keys(start: SeriesStart, version: int) -> dict:
    """The inverse of :func:`_start_fields` (None where unknown)."""
    rows, cols = start.image_shape or (None, None)
    center_row, center_col = start.beam_center or (None, None)
    keys = {names[2 - version]: getattr(start, attr) for attr, names in _START_FLOATS.items()}
    (rows_key, cols_key) = _START_SHAPE[2 - version]
    return {**keys, rows_key: rows, cols_key: cols, "beam_center_y": center_row,
            "beam_center_x": center_col}


def _v1_number_of_images(config: dict) -> int | None:
    nimages = _field(config, "nimages", int, False)
    ntrigger = _field(config, "ntrigger", int, False) or 1
    # one image per trigger in the "enable" trigger modes (LiberTEM DetectorConfig::get_num_images)
    if config.get("trigger_mode") in ("inte", "exte"):
        return ntrigger
    return None if nimages is None else nimages * ntrigger


def _v1_header_array(value: Any) -> bool:
    return isinstance(value, dict) and value.get("htype") in _V1_HEADER_ARRAYS


def _v1_array(description: dict, blob) -> np.ndarray:
    shape = description.get("shape")
    if not (isinstance(shape, list) and len(shape) == 2
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
        raise _bad(f"stream v1 shape {shape!r:.60} is not [width, height]", "size_mismatch")
    type_name = _field(description, "type", str)
    if type_name not in _DTYPE_NAMES:
        raise _bad(f"stream v1 type {type_name!r} is not one of {sorted(_DTYPE_NAMES)}",
                   "wrong_dtype")
    encoding = description.get("encoding", "<")
    if not isinstance(encoding, str):
        raise _bad(f"stream v1 encoding {encoding!r:.60} is not a string")
    # shape is [x, y] = [width, height]: the opposite order to numpy's (and to v2 dims)
    return decode_v1_blob(blob, encoding, np.dtype(type_name), (shape[1], shape[0]))


def _image_v1(header: dict, parts: list, extra: dict) -> ImageFrame:
    """``dimage-1.0``, ``dimage_d-1.0``, blob, ``dconfig-1.0`` [, appendix]."""
    if not 4 <= len(parts) <= 5:
        raise _bad(f"stream v1 image message has {len(parts)} parts, expected 4 or 5")
    series, frame = _field(header, "series", int), _field(header, "frame", int)
    description = _load_json(parts[1], "image description")
    if not str(description.get("htype", "")).startswith("dimage_d-"):
        raise _bad(f"second part of a stream v1 image is {description.get('htype')!r:.40}, "
                   "not dimage_d-1.0")
    size = description.get("size")
    if isinstance(size, int) and size != len(parts[2]):
        raise _bad(f"image blob has {len(parts[2])} bytes, its description says {size}",
                   "truncated_payload")
    data = _v1_array(description, parts[2])
    real_time_ns = _field(_load_json(parts[3], "image timing"), "real_time", float, False)
    # the hash (md5 of the description per the manual) is not checked: emulators disagree
    return ImageFrame(series_id=series, image_id=frame, data=data,
                      user_data=_appendix(parts[4]) if len(parts) == 5 else None,
                      real_time_s=None if real_time_ns is None else real_time_ns * 1e-9, **extra)


def _appendix(part) -> Any:
    """A v1 appendix is a string set over REST; we read it as JSON when it parses as such."""
    try:
        text = bytes(part).decode()
    except UnicodeDecodeError:
        return bytes(part)
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


# ---- fields -------------------------------------------------------------------------------------
def _as_parts(parts) -> list:
    buffers = (bytes, bytearray, memoryview)
    parts = [parts] if isinstance(parts, buffers) else parts
    parts = list(parts) if isinstance(parts, Sequence) else []
    if not parts or not all(isinstance(p, buffers) for p in parts):
        raise _bad("a message must be a non-empty list of bytes")
    return parts


def _field(msg: Mapping, key: str, kind, required: bool = True):
    """``msg[key]`` of type ``kind`` (int never accepts bool; float accepts int), or None."""
    value = msg.get(key)
    if value is None:
        if required:
            raise _bad(f"message lacks the required field {key!r}")
        return None
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if not ok:
        raise _bad(f"field {key!r} = {value!r:.60} is not {getattr(kind, '__name__', kind)}")
    return _ratio(value, 1, key) if kind is float else value


def _pair(msg: Mapping, first: str, second: str, kind) -> tuple | None:
    a, b = _field(msg, first, kind, False), _field(msg, second, kind, False)
    return (a, b) if a is not None and b is not None else None


def _rational(msg: Mapping, key: str) -> float | None:
    value = msg.get(key)
    if value is None:
        return None
    if (isinstance(value, (list, tuple)) and len(value) == 2 and value[1] != 0
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        return _ratio(value[0], value[1], key)
    raise _bad(f"field {key!r} = {value!r:.60} is not a rational [ticks, hz]")


def _ratio(numerator, denominator, key: str) -> float:
    try:
        return numerator / denominator
    except OverflowError as exc:  # CBOR and JSON integers are unbounded
        raise _bad(f"field {key!r} is out of range: {exc}") from exc


def _checked_mask(mask: np.ndarray | None, shape: tuple | None) -> np.ndarray | None:
    if mask is not None and shape is not None and mask.shape != tuple(shape):
        raise _bad(f"pixel mask of shape {mask.shape} for images of {shape}", "size_mismatch")
    return mask


def _plain(value: Any) -> Any:
    """cbor2 >= 6 returns frozendict and tuples inside tags; hand out plain dicts and lists."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _load_cbor(data) -> Mapping:
    stream = io.BytesIO(data)
    try:
        msg = cbor2.CBORDecoder(stream).decode()
    # cbor2 raises CBORDecodeError; hostile nesting or tag content can surface as the others
    except (cbor2.CBORError, ValueError, TypeError, LookupError, RecursionError,
            OverflowError) as exc:
        raise _bad(f"message is not CBOR: {exc}") from exc
    if stream.tell() != len(data):
        raise _bad(f"{len(data) - stream.tell()} bytes follow the CBOR message")
    if isinstance(msg, CBORTag) and msg.tag == SELF_DESCRIBE_TAG:  # cbor2 strips it; in case not
        msg = msg.value
    if not isinstance(msg, Mapping):
        raise _bad(f"CBOR message is a {type(msg).__name__}, not a map")
    return msg


def _load_json(part, what: str) -> dict:
    try:
        value = json.loads(bytes(part))
    except (ValueError, RecursionError) as exc:
        raise _bad(f"stream v1 {what} is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise _bad(f"stream v1 {what} is JSON {type(value).__name__}, not an object")
    return value


# ---- encoding: a compliant sender ---------------------------------------------------------------
def encode_start_v2(start: SeriesStart, channels: Sequence[str] = ("threshold_1",),
                    arm_date: datetime | None = None) -> bytes:
    """The v2 ``start`` message (CBOR in tag 55799, first key ``type``), as sent at arm.

    Parameters
    ----------
    start : SeriesStart
        What to announce; fields that are None are left out.
    channels : sequence of str
        Image channels; the pixel mask (tag 40 + u32 tag 70) is sent for each.
    arm_date : datetime, optional
        Sent as ``arm_date`` (tag 0); default now.
    """
    mask = None if start.pixel_mask is None else np.asarray(start.pixel_mask).astype("<u4")
    return _dumps_v2({
        "type": "start", "series_id": start.series_id, "series_unique_id": start.series_unique_id,
        "arm_date": CBORTag(0, (arm_date or datetime.now(timezone.utc)).isoformat()),
        "channels": list(channels), "countrate_correction_enabled": False,
        "flatfield_enabled": False, "image_dtype": start.image_dtype,
        "number_of_images": start.number_of_images, **_start_keys(start, 2),
        "pixel_mask": None if mask is None else {c: encode_array(mask, None) for c in channels},
        "pixel_mask_enabled": mask is not None, "pixel_size_y": start.pixel_size_m,
        "user_data": start.user_data})


def encode_image_v2(frame: ImageFrame, compression: str | None = "bslz4",
                    channel: str = "threshold_1", encoded: CBORTag | None = None) -> bytes:
    """The v2 ``image`` message of one frame.

    Parameters
    ----------
    frame : ImageFrame
        The frame; ``real_time_s`` (default 0) gives the rationals over 50 MHz, start and stop
        times assume back-to-back frames.
    compression : {"bslz4", "lz4", None}
        Compression of the image bytes (tag 56500).
    channel : str
        Key of the image in the ``data`` map.
    encoded : CBORTag, optional
        The image already encoded by :func:`compression.encode_array` (replay, benchmarks):
        sent as is, ``frame.data`` and ``compression`` are then not used.
    """
    ticks = round((frame.real_time_s or 0.0) * TIME_BASE_HZ)
    return _dumps_v2({
        "type": "image", "series_id": frame.series_id, "series_unique_id": frame.series_unique_id,
        "image_id": frame.image_id, "start_time": [frame.image_id * ticks, TIME_BASE_HZ],
        "stop_time": [(frame.image_id + 1) * ticks, TIME_BASE_HZ],
        "real_time": [ticks, TIME_BASE_HZ], "user_data": frame.user_data,
        "data": {channel: encoded if encoded is not None else encode_array(frame.data, compression)}})


def encode_end_v2(end: SeriesEnd) -> bytes:
    """The v2 ``end`` message of a series."""
    return _dumps_v2({"type": "end", "series_id": end.series_id,
                      "series_unique_id": end.series_unique_id})


def encode_start_v1(start: SeriesStart, header_detail: str = "basic",
                    appendix: Any = None) -> list[bytes]:
    """The v1 global header of a series: ``dheader-1.0`` and the parts ``header_detail`` adds.

    Parameters
    ----------
    start : SeriesStart
        What to announce.
    header_detail : {"basic", "all", "none"}
        ``basic`` adds the detector configuration, ``all`` also flatfield, pixel mask and
        count-rate table.
    appendix : optional
        The ``header_appendix`` part (str, or JSON-encoded); default ``start.user_data``.
    """
    if header_detail not in ("basic", "all", "none"):
        raise ValueError(f"header_detail {header_detail!r} is not basic, all or none")
    parts = [_json({"htype": "dheader-1.0", "series": start.series_id,
                    "header_detail": header_detail})]
    if header_detail != "none":
        parts.append(_json(_v1_config(start)))
    if header_detail == "all":
        rows, cols = start.image_shape or (0, 0)
        mask = start.pixel_mask if start.pixel_mask is not None else np.zeros((rows, cols))
        # a simulator corrects nothing: unit flatfield, empty count-rate table
        for htype, array in zip(_V1_HEADER_ARRAYS, (np.ones((rows, cols), "<f4"),
                                                    np.asarray(mask).astype("<u4"),
                                                    np.zeros((0, 2), "<f4"))):
            parts += [_json({"htype": htype, "shape": [array.shape[1], array.shape[0]],
                             "type": array.dtype.name}), array.tobytes()]
    text = _appendix_bytes(start.user_data if appendix is None else appendix)
    return parts + [text] if text else parts


def encode_image_v1(frame: ImageFrame, encoding: str = "bs32-lz4<") -> list[bytes]:
    """The v1 image message: ``dimage-1.0``, ``dimage_d-1.0``, blob, ``dconfig-1.0`` [, appendix].

    Parameters
    ----------
    frame : ImageFrame
        The frame; ``user_data`` becomes the JSON appendix.
    encoding : {"bs32-lz4<", "bs16-lz4<", "bs8-lz4<", "lz4<", "<"}
        Blob encoding; the bitshuffle element size must divide the frame's byte count.
    """
    data = np.asarray(frame.data)
    if data.ndim != 2:
        raise ValueError(f"cannot send a {data.ndim}-D array as a DECTRIS image")
    blob = encode_v1_blob(data, encoding)
    description = _json({"htype": "dimage_d-1.0", "shape": [data.shape[1], data.shape[0]],
                         "type": data.dtype.name, "encoding": encoding, "size": len(blob)})
    ns = round((frame.real_time_s or 0.0) * 1e9)
    parts = [_json({"htype": "dimage-1.0", "series": frame.series_id, "frame": frame.image_id,
                    "hash": hashlib.md5(description).hexdigest()}), description, blob,
             _json({"htype": "dconfig-1.0", "start_time": frame.image_id * ns,
                    "stop_time": (frame.image_id + 1) * ns, "real_time": ns})]
    text = _appendix_bytes(frame.user_data)
    return parts + [text] if text else parts


def encode_end_v1(end: SeriesEnd) -> list[bytes]:
    """The v1 end-of-series message."""
    return [_json({"htype": "dseries_end-1.0", "series": end.series_id})]


def _v1_config(start: SeriesStart) -> dict:
    """Detector configuration part, keys named as SIMPLON detector config parameters.

    ``bit_depth_image`` cannot say "float": a float32 series is announced as 32-bit (the
    images themselves carry their ``type``)."""
    bits = None if start.image_dtype is None else np.dtype(start.image_dtype).itemsize * 8
    n = start.number_of_images
    config = {**_start_keys(start, 1), "bit_depth_image": bits, "nimages": n,
              "ntrigger": None if n is None else 1, "trigger_mode": None if n is None else "ints",
              "y_pixel_size": start.pixel_size_m}
    return {k: v for k, v in config.items() if v is not None}


def _to_builtin(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot send a {type(value).__name__} in user_data")


def _dumps_v2(msg: dict) -> bytes:
    # fields we do not know are left out rather than sent as null; dicts keep "type" first
    msg = {k: v for k, v in msg.items() if v is not None}
    return cbor2.dumps(CBORTag(SELF_DESCRIBE_TAG, msg),
                       default=lambda encoder, value: encoder.encode(_to_builtin(value)))


def _json(value: dict) -> bytes:
    return json.dumps(value, separators=(",", ":"), default=_to_builtin).encode()


def _appendix_bytes(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return value.encode() if isinstance(value, str) else _json(value)
