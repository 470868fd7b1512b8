"""DECTRIS stream v2 ("cbor"): one ZeroMQ frame of CBOR per message, decoded and encoded.

A message is a CBOR map in the self-describe tag 55799 whose ``type`` is ``start``, ``image``
or ``end``; images and the start's pixel masks are maps of channel name to an RFC 8746 array
(:func:`sxdm_stream.sources.dectris.compression.decode_array`). :func:`decode_v2` reads one message; which
channel it takes is the :class:`ChannelSelection`, and what a start remembers for the next
messages is kept by :class:`sxdm_stream.sources.dectris.codec.Decoder`. The ``encode_*_v2`` functions are a
compliant sender (our simulator's). Layouts: ``docs/reference/dectris_stream.md``.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Sequence

import cbor2
import numpy as np
from cbor2 import CBORTag

from sxdm_stream.errors import format_untrusted
from sxdm_stream.messages import ImageFrame, SeriesEnd, SeriesStart, StreamMessage
from sxdm_stream.sources.dectris.compression import ImageSpec, decode_array, encode_array
from sxdm_stream.sources.dectris.fields import (DTYPE_NAMES, bad_message, bit_depth_of_invalid,
                                                read_bit_depth, read_field, read_invalid_values,
                                                read_rational, read_start_fields, start_keys,
                                                to_builtin)

#: CBOR self-describe tag 55799 as it starts every real v2 message (bytes d9 d9 f7)
MAGIC = b"\xd9\xd9\xf7"
SELF_DESCRIBE_TAG = 55799
#: denominator of the v2 start_time/stop_time/real_time rationals in all captured data
TIME_BASE_HZ = 50_000_000


@dataclass
class ChannelSelection:
    """Which channel of the v2 ``data`` and ``pixel_mask`` maps to read, per connection.

    ``configured`` is the channel asked for (None: the default one); ``announced`` the
    ``channels`` of the last start message, the first of which is the default.
    """

    configured: str | None = None
    announced: tuple[str, ...] = ()

    def select(self, channel_map: Mapping, what: str, strict: bool = True):
        """The configured channel (``strict``: it must be there), else the default one."""
        if not channel_map:
            raise bad_message(f"{what} map has no channel")
        if self.configured is not None and (strict or self.configured in channel_map):
            if self.configured not in channel_map:
                raise bad_message(f"{what} has no channel {self.configured!r} (it has "
                                  f"{format_untrusted(list(channel_map))})")
            return channel_map[self.configured]
        if self.announced and self.announced[0] in channel_map:
            return channel_map[self.announced[0]]
        return next(iter(channel_map.values()))


# ---- decoding -----------------------------------------------------------------------------------
def load_message(data) -> Mapping:
    """The CBOR map of one v2 message (the self-describe tag removed)."""
    stream = io.BytesIO(data)
    try:
        msg = cbor2.CBORDecoder(stream).decode()
    # cbor2 raises CBORDecodeError; hostile nesting or tag content can surface as the others
    except (cbor2.CBORError, ValueError, TypeError, LookupError, RecursionError,
            OverflowError) as exc:
        raise bad_message(f"message is not CBOR: {exc}") from exc
    if stream.tell() != len(data):
        raise bad_message(f"{len(data) - stream.tell()} bytes follow the CBOR message")
    if isinstance(msg, CBORTag) and msg.tag == SELF_DESCRIBE_TAG:  # cbor2 strips it; in case not
        msg = msg.value
    if not isinstance(msg, Mapping):
        raise bad_message(f"CBOR message is a {type(msg).__name__}, not a map")
    return msg


def decode_v2(msg: Mapping, channels: ChannelSelection, max_bytes: int,
              declared: ImageSpec | None, extra: dict, defer: bool = False) -> StreamMessage:
    """The message ``msg`` (from :func:`load_message`) says.

    Parameters
    ----------
    msg : Mapping
        The message's map.
    channels : ChannelSelection
        The channel to read; a start message sets its ``announced`` channels.
    max_bytes : int
        Largest image or pixel mask, bytes.
    declared : ImageSpec or None
        What the last start message declared of its images: an image must match it.
    extra : dict
        More fields of an :class:`ImageFrame` (``received_s``).
    defer : bool
        An image's ``data`` is :class:`~sxdm_stream.sources.dectris.compression.PendingPixels`,
        checked and not decompressed (see :func:`decode_array`).
    """
    kind = read_field(msg, "type", str)
    if kind == "image":
        data = channels.select(read_field(msg, "data", Mapping), "image data")
        return ImageFrame(
            series_id=read_field(msg, "series_id", int),
            image_id=read_field(msg, "image_id", int),
            data=decode_array(data, max_bytes, declared, defer),
            series_unique_id=read_field(msg, "series_unique_id", str, False),
            user_data=_plain(msg.get("user_data")), real_time_s=read_rational(msg, "real_time"),
            **extra)
    if kind == "start":
        return _start_v2(msg, channels, max_bytes)
    if kind == "end":
        return SeriesEnd(read_field(msg, "series_id", int),
                         read_field(msg, "series_unique_id", str, False))
    raise bad_message(f"unknown stream v2 message type {format_untrusted(kind)}",
                      "unknown_type")


def _start_v2(msg: Mapping, channels: ChannelSelection, max_bytes: int) -> SeriesStart:
    series_id = read_field(msg, "series_id", int)
    announced = read_field(msg, "channels", (list, tuple), False) or ()
    if not all(isinstance(c, str) for c in announced):
        raise bad_message(f"start message channels {format_untrusted(announced)} are not all "
                          "strings")
    channels.announced = tuple(announced)
    fields = read_start_fields(msg, 2)
    dtype = read_field(msg, "image_dtype", str, False)
    if dtype is not None and dtype not in DTYPE_NAMES:
        raise bad_message(f"image_dtype {format_untrusted(dtype)} is not one of "
                          f"{sorted(DTYPE_NAMES)}",
                          "wrong_dtype")
    # bit_depth_image is not a v2 field, but SIMPLON's name for it: our sender adds it
    bits = read_bit_depth(msg, range(1, 65), "1 to 64", "malformed")
    if bits is None and dtype is not None and np.dtype(dtype).kind == "u":
        bits = 8 * np.dtype(dtype).itemsize    # NODATA is the unsigned dtype's maximum
    masks = read_field(msg, "pixel_mask", Mapping, False)
    mask = None
    if masks:
        mask = decode_array(channels.select(masks, "pixel_mask", strict=False),
                            max_bytes, ImageSpec(fields["image_shape"])) != 0
    return SeriesStart(
        series_id=series_id, series_unique_id=read_field(msg, "series_unique_id", str, False),
        image_dtype=dtype, number_of_images=read_field(msg, "number_of_images", int, False),
        pixel_mask=mask, user_data=_plain(msg.get("user_data")), stream_version=2,
        **read_invalid_values(msg, 2, bits), **fields)


def _plain(value: Any) -> Any:
    """cbor2 >= 6 returns frozendict and tuples inside tags; hand out plain dicts and lists."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
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
        "number_of_images": start.number_of_images, **start_keys(start, 2),
        "pixel_mask": None if mask is None else {c: encode_array(mask, None) for c in channels},
        "pixel_mask_enabled": mask is not None, "pixel_size_y": start.pixel_size_m,
        "saturation_value": start.saturation_counts,
        "bit_depth_image": bit_depth_of_invalid(start.invalid_pixel_value),
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


def _dumps_v2(msg: dict) -> bytes:
    # fields we do not know are left out rather than sent as null; dicts keep "type" first
    msg = {k: v for k, v in msg.items() if v is not None}
    return cbor2.dumps(CBORTag(SELF_DESCRIBE_TAG, msg),
                       default=lambda encoder, value: encoder.encode(to_builtin(value)))
