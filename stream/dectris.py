"""DECTRIS SIMPLON stream messages to and from our messages: a pure codec, no sockets.

:class:`Decoder` turns the parts of one ZeroMQ message into a :class:`SeriesStart`,
:class:`ImageFrame` or :class:`SeriesEnd`, choosing the stream version per message: stream v1
("legacy") is multipart with a JSON first part, stream v2 ("cbor") one frame of CBOR. Every
failure, whatever raised it, comes out as :class:`BadMessageError` with a stable ``reason``:
``malformed``, ``unknown_type``, ``unknown_tag``, ``size_mismatch``, ``truncated_payload``,
``unsupported_encoding``, ``wrong_dtype``, ``wrong_shape`` (an image or mask unlike the start
message's), ``too_large`` (over the byte cap) or, for a bug of ours, ``internal_error``.
Images are checked against the cap and the last start message before any buffer is made
(:func:`sxdm_stream.compression.checked_nbytes`). The ``encode_*`` functions are a compliant
sender (our simulator's). Layouts: ``reference/dectris_stream.md`` beside DESIGN.md; the
image payloads themselves are decoded in :mod:`sxdm_stream.compression`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections import Counter
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, Sequence

import cbor2
import numpy as np
from cbor2 import CBORTag

from .compression import (MAX_IMAGE_BYTES, MAX_IMAGE_SIDE, TYPED_ARRAY_DTYPES, ImageSpec,
                          decode_array, decode_v1_blob, encode_array, encode_v1_blob)
from .errors import BadMessageError, ConfigError
from .messages import ImageFrame, SeriesEnd, SeriesStart, StreamMessage

log = logging.getLogger(__name__)

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
#: the largest count that is valid: v2 ``saturation_value``, v1 (SIMPLON detector config)
#: ``countrate_correction_count_cutoff``; both unsigned 64-bit integers
_SATURATION = ("saturation_value", "countrate_correction_count_cutoff")
_U64_MAX = 2**64 - 1


def _bad(message: str, reason: str = "malformed") -> BadMessageError:
    return BadMessageError(message, reason)


class Decoder:
    """Decodes DECTRIS stream v1 and v2 messages, remembering what the last start declared.

    The state kept between messages, all of it per connection: the last start message's
    channels and image size and dtype (later images must match them), and a stream v1
    header waiting for its detector configuration when the two came as separate messages.

    Parameters
    ----------
    channel : str, optional
        The v2 channel to take from image ``data`` and start ``pixel_mask`` maps. By default
        the first of the last start message's ``channels`` if the map has it, else the map's
        first key.
    max_image_bytes : int
        Largest decoded image (or pixel mask), bytes; default
        :data:`~sxdm_stream.compression.MAX_IMAGE_BYTES` (512 MiB, seven times an EIGER2 16M
        32-bit frame). Larger ones are rejected (``too_large``) before any buffer is made.

    Attributes
    ----------
    channels : tuple of str
        ``channels`` of the last v2 start message.
    declared : ImageSpec or None
        Image size and dtype the last start message declared (None before any start).
    quirks : collections.Counter
        Deviations from the protocol that were accepted, by kind: ``v1_header_split`` (a v1
        header and its detector configuration sent as two ZeroMQ messages, as LiberTEM's
        DECTRIS simulators do), ``v2_without_magic`` (a v2 message without the
        self-describe tag 55799, which DECTRIS' reference C parser stream2.c rejects).
    abandoned : collections.Counter
        Held parts given up, by kind: ``v1_header_without_config`` (a split v1 header whose
        configuration never came; logged as a warning).
    """

    def __init__(self, channel: str | None = None,
                 max_image_bytes: int = MAX_IMAGE_BYTES) -> None:
        if not isinstance(max_image_bytes, int) or isinstance(max_image_bytes, bool) \
                or max_image_bytes <= 0:
            raise ConfigError(f"max_image_bytes must be a positive integer, not "
                              f"{max_image_bytes!r}")
        self.channel = channel
        self.max_image_bytes = max_image_bytes
        self.channels: tuple[str, ...] = ()
        self.declared: ImageSpec | None = None
        self.quirks: Counter = Counter()
        self.abandoned: Counter = Counter()
        self._held_header: bytes | None = None
        self._internal_errors_seen: set[type] = set()

    @property
    def without_magic(self) -> int:
        """v2 messages without the self-describe tag 55799 (``quirks["v2_without_magic"]``)."""
        return self.quirks["v2_without_magic"]

    def decode(self, parts: Sequence[bytes] | bytes,
               received_s: float | None = None) -> StreamMessage | None:
        """Decode one ZeroMQ message.

        Parameters
        ----------
        parts : list of bytes, or bytes
            The message parts as ``recv_multipart`` returns them (or a v2 message's frame).
        received_s : float, optional
            ``time.perf_counter()`` of arrival, stored in :attr:`ImageFrame.received_s`.

        Returns
        -------
        SeriesStart or ImageFrame or SeriesEnd, or None
            None when the message is a stream v1 header whose detector configuration is to
            follow as the next message: it is kept, and that message returns the start.

        Raises
        ------
        BadMessageError
            When the message cannot be decoded; ``reason`` says why. Nothing else: an
            unexpected exception is counted ``internal_error`` (one message must never stop
            the thread that receives them).
        """
        try:
            parts = _as_parts(parts)
            extra = {} if received_s is None else {"received_s": received_s}
            if parts[0][:1] == b"{":
                return self._decode_v1(parts, extra)
            self._abandon_held_header()
            if len(parts) != 1:
                raise _bad(f"message of {len(parts)} parts whose first is not JSON (stream v1) "
                           "and not a single CBOR frame (stream v2)")
            return self._decode_v2(parts[0], extra)
        except BadMessageError:
            raise
        except Exception as exc:  # a bug of ours, or a library's surprise: never fatal
            raise self._internal_error(exc) from exc

    def _internal_error(self, exc: Exception) -> BadMessageError:
        if type(exc) not in self._internal_errors_seen:  # the traceback once per kind
            self._internal_errors_seen.add(type(exc))
            log.warning("unexpected %s decoding a message (counted as 'internal_error')",
                        type(exc).__name__, exc_info=exc)
        return _bad(f"internal error decoding the message: {type(exc).__name__}: {exc!s:.200}",
                    "internal_error")

    def _decode_v2(self, data, extra: dict) -> StreamMessage:
        msg = _load_cbor(data)
        if data[:3] != MAGIC:
            self.quirks["v2_without_magic"] += 1
        kind = _field(msg, "type", str)
        if kind == "image":
            data = self._select(_field(msg, "data", Mapping), "image data")
            return ImageFrame(
                series_id=_field(msg, "series_id", int), image_id=_field(msg, "image_id", int),
                data=decode_array(data, self.max_image_bytes, self.declared),
                series_unique_id=_field(msg, "series_unique_id", str, False),
                user_data=_plain(msg.get("user_data")), real_time_s=_rational(msg, "real_time"),
                **extra)
        if kind == "start":
            return self._declare(self._start_v2(msg))
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
        # bit_depth_image is not a v2 field, but SIMPLON's name for it: our sender adds it
        bits = _bit_depth(msg, range(1, 65), "1 to 64", "malformed")
        if bits is None and dtype is not None and np.dtype(dtype).kind == "u":
            bits = 8 * np.dtype(dtype).itemsize    # NODATA is the unsigned dtype's maximum
        masks = _field(msg, "pixel_mask", Mapping, False)
        mask = None
        if masks:
            mask = decode_array(self._select(masks, "pixel_mask", strict=False),
                                self.max_image_bytes, ImageSpec(fields["image_shape"])) != 0
        return SeriesStart(
            series_id=series_id, series_unique_id=_field(msg, "series_unique_id", str, False),
            image_dtype=dtype, number_of_images=_field(msg, "number_of_images", int, False),
            pixel_mask=mask, user_data=_plain(msg.get("user_data")), stream_version=2,
            **_invalid_values(msg, 2, bits), **fields)

    def _declare(self, start: SeriesStart) -> SeriesStart:
        """Remember what ``start`` declared of its images: later images must match it."""
        shape = start.image_shape
        dtype = None if start.image_dtype is None else np.dtype(start.image_dtype)
        # v1 knows a bit depth only, which announces a float32 series as 32-bit too
        kind = dtype.kind if dtype is not None and start.stream_version == 2 else None
        self.declared = ImageSpec(None if shape is None else tuple(shape),
                                  None if dtype is None else dtype.itemsize, kind)
        return start

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

    def _decode_v1(self, parts: list, extra: dict) -> StreamMessage | None:
        header = _load_json(parts[0], "first part")
        if self._held_header is not None and "htype" not in header:
            return self._complete_held_header(parts)
        self._abandon_held_header()
        htype = _field(header, "htype", str)
        if htype.startswith("dimage-"):
            return _image_v1(header, parts, extra, self.max_image_bytes, self.declared)
        if htype.startswith("dheader-"):
            if len(parts) == 1 and header.get("header_detail") in ("basic", "all"):
                # LiberTEM's DECTRIS simulators send the header and its detector configuration
                # as two messages (LiberTEM-rs sim.rs send_headers, LiberTEM-live sim.py):
                # keep it for the configuration that comes next
                self._held_header = bytes(parts[0])
                return None
            return self._declare(_start_v1(header, parts, self.max_image_bytes))
        # LiberTEM's emulator misspells it "deseries_end-1.0"; ADEiger also matches a prefix
        if htype.startswith(("dseries_end", "deseries_end")):
            return SeriesEnd(_field(header, "series", int))
        raise _bad(f"unknown stream v1 htype {htype!r}", "unknown_type")

    def _complete_held_header(self, parts: list) -> SeriesStart:
        """The held v1 header and ``parts``, its detector configuration [and what follows]."""
        header_part, self._held_header = self._held_header, None
        start = _start_v1(_load_json(header_part, "first part"), [header_part, *parts],
                          self.max_image_bytes)
        self.quirks["v1_header_split"] += 1
        return self._declare(start)

    def _abandon_held_header(self) -> None:
        if self._held_header is None:
            return
        header, self._held_header = self._held_header, None
        self.abandoned["v1_header_without_config"] += 1
        log.warning("a stream v1 header came alone and the next message is not its detector "
                    "configuration: the header is dropped (%.120r)", header)


def decode_message(parts: Sequence[bytes] | bytes, *, channel: str | None = None,
                   received_s: float | None = None) -> StreamMessage | None:
    """Decode one message with a fresh :class:`Decoder` (see :meth:`Decoder.decode`).

    Without a start message seen, a v2 image's channel is ``channel`` or the map's first key,
    and only the byte cap limits its size. A v1 header without its configuration part
    (``header_detail`` basic or all) returns None: it waits for the next message.
    """
    return Decoder(channel).decode(parts, received_s=received_s)


# ---- stream v1 ----------------------------------------------------------------------------------
def _start_v1(header: dict, parts: list, max_bytes: int) -> SeriesStart:
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
    bits = _bit_depth(config, _V1_BIT_DEPTHS, "8, 16 or 32", "wrong_dtype")
    fields = _start_fields(config, 1)
    mask, shape = None, ImageSpec(fields["image_shape"])
    # interpret by count, never by a fixed schema: the manual sends the appendix only after
    # "all", Diamond's EigerFan accepts one after any header_detail
    while len(rest) >= 2 and _v1_header_array(description := _appendix(rest[0])):
        if description["htype"].startswith("dpixelmask"):
            mask = _v1_array(description, rest[1], max_bytes, shape) != 0
        rest = rest[2:]
    if len(rest) > 1:
        raise _bad(f"stream v1 header has {len(rest)} unexpected parts after its end")
    return SeriesStart(
        series_id=series, image_dtype=_V1_BIT_DEPTHS.get(bits),
        number_of_images=_v1_number_of_images(config), pixel_mask=mask,
        user_data=_appendix(rest[0]) if rest else None, stream_version=1,
        **_invalid_values(config, 1, bits), **fields)


def _bit_depth(msg: Mapping, allowed, wording: str, reason: str) -> int | None:
    bits = _field(msg, "bit_depth_image", int, False)
    if bits is not None and bits not in allowed:
        raise _bad(f"bit_depth_image {bits} is not {wording}", reason)
    return bits


def _invalid_values(msg: Mapping, version: int, bits: int | None) -> dict:
    """SeriesStart's ``invalid_pixel_value`` (NODATA, 2**bits - 1) and ``saturation_counts``.

    ``bit_depth_readout`` marks nothing: frames summed over several readouts (Eiger
    auto_summation) legitimately exceed ``2**bit_depth_readout - 1``.
    """
    key = _SATURATION[2 - version]
    saturation = _field(msg, key, int, False)
    if saturation is not None and not 0 <= saturation <= _U64_MAX:
        raise _bad(f"{key} {saturation} is not an unsigned 64-bit integer")
    # a cutoff of 0 would make every count invalid: emulators send it for "not set" (tickit's
    # Eiger defaults countrate_correction_count_cutoff to 0), no detector means it
    return {"invalid_pixel_value": None if bits is None else 2**bits - 1,
            "saturation_counts": saturation or None}


def _start_fields(msg: Mapping, version: int) -> dict:
    """SeriesStart's shape, beam centre and floats from a v2 start or a v1 configuration."""
    fields = {attr: _field(msg, keys[2 - version], float, False)
              for attr, keys in _START_FLOATS.items()}
    fields["image_shape"] = shape = _pair(msg, *_START_SHAPE[2 - version], int)
    if shape is not None and not all(0 <= side <= MAX_IMAGE_SIDE for side in shape):
        raise _bad(f"image size {shape[0]} x {shape[1]} is not 0 to {MAX_IMAGE_SIDE} pixels a "
                   "side")
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


def _v1_array(description: dict, blob, max_bytes: int,
              declared: ImageSpec | None) -> np.ndarray:
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
    return decode_v1_blob(blob, encoding, np.dtype(type_name), (shape[1], shape[0]), max_bytes,
                          declared)


def _image_v1(header: dict, parts: list, extra: dict, max_bytes: int,
              declared: ImageSpec | None) -> ImageFrame:
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
    data = _v1_array(description, parts[2], max_bytes, declared)
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
        What to announce; fields that are None are left out. ``invalid_pixel_value`` goes
        out as ``bit_depth_image`` (SIMPLON's name; DECTRIS' v2 start implies it by
        ``image_dtype``), ``saturation_counts`` as ``saturation_value``.
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
        "saturation_value": start.saturation_counts,
        "bit_depth_image": _bits_of_invalid(start.invalid_pixel_value),
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


def encode_image_v1(frame: ImageFrame, encoding: str = "bslz4") -> list[bytes]:
    """The v1 image message: ``dimage-1.0``, ``dimage_d-1.0``, blob, ``dconfig-1.0`` [, appendix].

    Parameters
    ----------
    frame : ImageFrame
        The frame; ``user_data`` becomes the JSON appendix.
    encoding : {"bslz4", "bs32-lz4<", "bs16-lz4<", "bs8-lz4<", "lz4<", "<"}
        Blob encoding. ``bslz4``: ``bsNN-lz4<`` with NN the frame's bits, the only bitshuffle
        element size a detector sends and our decoder accepts (others raise ValueError).
    """
    data = np.asarray(frame.data)
    if data.ndim != 2:
        raise ValueError(f"cannot send a {data.ndim}-D array as a DECTRIS image")
    if encoding == "bslz4":
        encoding = f"bs{8 * data.itemsize}-lz4<"
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
    config = {**_start_keys(start, 1), "nimages": n,
              "bit_depth_image": bits or _bits_of_invalid(start.invalid_pixel_value,
                                                          _V1_BIT_DEPTHS),
              "countrate_correction_count_cutoff": start.saturation_counts,
              "ntrigger": None if n is None else 1, "trigger_mode": None if n is None else "ints",
              "y_pixel_size": start.pixel_size_m}
    return {k: v for k, v in config.items() if v is not None}


def _bits_of_invalid(value: int | None, allowed=range(1, 65)) -> int | None:
    """``bit_depth_image`` of a NODATA value ``2**bits - 1`` (bits in ``allowed``)."""
    if value is None:
        return None
    bits = (value + 1).bit_length() - 1
    if value < 1 or 2**bits - 1 != value or bits not in allowed:
        raise ValueError(f"invalid_pixel_value {value} is not 2**bits - 1 for bits in "
                         f"{sorted(allowed)[:3]}...: this start message cannot say it")
    return bits


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
