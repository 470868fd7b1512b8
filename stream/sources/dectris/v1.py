"""DECTRIS stream v1 ("legacy"): multipart messages with a JSON first part, decoded and encoded.

A message's first part names its ``htype``: ``dheader-1.0`` (the global header, followed by as
many parts as its ``header_detail`` asks for), ``dimage-1.0`` (an image: description, blob,
timing [, appendix]) or ``dseries_end-1.0``. Images are blobs in an ``encoding``
(:func:`sxdm_stream.sources.dectris.compression.decode_v1_blob`). :func:`decode_v1` reads one message; a
header sent alone, its configuration to follow (:func:`is_lone_header`), is held by
:class:`sxdm_stream.sources.dectris.codec.Decoder`, which also remembers what the header declared. The
``encode_*_v1`` functions are a compliant sender (our simulator's). Layouts:
``docs/reference/dectris_stream.md``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from sxdm_stream.errors import format_untrusted
from sxdm_stream.messages import ImageFrame, SeriesEnd, SeriesStart, StreamMessage
from sxdm_stream.sources.dectris.compression import ImageSpec, decode_v1_blob, encode_v1_blob
from sxdm_stream.sources.dectris.fields import (DTYPE_NAMES, bad_message, bit_depth_of_invalid,
                                                read_bit_depth, read_field, read_invalid_values,
                                                read_start_fields, start_keys, to_builtin)

_V1_BIT_DEPTHS = {8: "uint8", 16: "uint16", 32: "uint32"}
_V1_HEADER_ARRAYS = ("dflatfield-1.0", "dpixelmask-1.0", "dcountrate_table-1.0")


# ---- decoding -----------------------------------------------------------------------------------
def load_json(part, what: str) -> dict:
    """The JSON object of one part of a v1 message (``what`` names it in errors)."""
    try:
        value = json.loads(bytes(part))
    except (ValueError, RecursionError) as exc:
        raise bad_message(f"stream v1 {what} is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise bad_message(f"stream v1 {what} is JSON {type(value).__name__}, not an object")
    return value


def is_lone_header(header: dict, parts: list) -> bool:
    """Whether the message is a global header alone, its detector configuration to follow as
    the next message (as LiberTEM's simulators send it: the Decoder holds it till then)."""
    return (read_field(header, "htype", str).startswith("dheader-") and len(parts) == 1
            and header.get("header_detail") in ("basic", "all"))


def decode_v1(header: dict, parts: list, max_bytes: int, declared: ImageSpec | None,
              extra: dict, defer: bool = False) -> StreamMessage:
    """The message of ``parts`` whose first part is ``header`` (from :func:`load_json`).

    Parameters
    ----------
    header : dict
        The first part.
    parts : list of bytes-like
        All the parts, the first included.
    max_bytes : int
        Largest image or pixel mask, bytes.
    declared : ImageSpec or None
        What the last start message declared of its images: an image must match it.
    extra : dict
        More fields of an :class:`ImageFrame` (``received_s``).
    defer : bool
        An image's ``data`` is :class:`~sxdm_stream.sources.dectris.compression.PendingPixels`,
        checked and not decompressed (see :func:`decode_v1_blob`).
    """
    htype = read_field(header, "htype", str)
    if htype.startswith("dimage-"):
        return _image_v1(header, parts, extra, max_bytes, declared, defer)
    if htype.startswith("dheader-"):
        return decode_start_v1(header, parts, max_bytes)
    # LiberTEM's emulator misspells it "deseries_end-1.0"; ADEiger also matches a prefix
    if htype.startswith(("dseries_end", "deseries_end")):
        return SeriesEnd(read_field(header, "series", int))
    raise bad_message(f"unknown stream v1 htype {format_untrusted(htype)}", "unknown_type")


def decode_start_v1(header: dict, parts: list, max_bytes: int) -> SeriesStart:
    """``dheader-1.0`` [+ config (basic, all)] [+ 3 header/blob pairs (all)] [+ appendix]."""
    series = read_field(header, "series", int)
    detail = read_field(header, "header_detail", str)
    if detail not in ("all", "basic", "none"):
        raise bad_message(f"header_detail {format_untrusted(detail)} is not all, basic or none")
    rest, config = list(parts[1:]), {}
    if detail != "none":
        if not rest:
            raise bad_message(f"stream v1 header ({detail}) lacks its detector configuration "
                              "part")
        config = load_json(rest.pop(0), "detector configuration")
    bits = read_bit_depth(config, _V1_BIT_DEPTHS, "8, 16 or 32", "wrong_dtype")
    fields = read_start_fields(config, 1)
    mask, shape = None, ImageSpec(fields["image_shape"])
    # interpret by count, never by a fixed schema: the manual sends the appendix only after
    # "all", Diamond's EigerFan accepts one after any header_detail
    while len(rest) >= 2 and _v1_header_array(description := _appendix(rest[0])):
        if description["htype"].startswith("dpixelmask"):
            mask = _v1_array(description, rest[1], max_bytes, shape) != 0
        rest = rest[2:]
    if len(rest) > 1:
        raise bad_message(f"stream v1 header has {len(rest)} unexpected parts after its end")
    return SeriesStart(
        series_id=series, image_dtype=_V1_BIT_DEPTHS.get(bits),
        number_of_images=_v1_number_of_images(config), pixel_mask=mask,
        user_data=_appendix(rest[0]) if rest else None, stream_version=1,
        **read_invalid_values(config, 1, bits), **fields)


def _v1_number_of_images(config: dict) -> int | None:
    nimages = read_field(config, "nimages", int, False)
    ntrigger = read_field(config, "ntrigger", int, False) or 1
    # one image per trigger in the "enable" trigger modes (LiberTEM DetectorConfig::get_num_images)
    if config.get("trigger_mode") in ("inte", "exte"):
        return ntrigger
    return None if nimages is None else nimages * ntrigger


def _v1_header_array(value: Any) -> bool:
    return isinstance(value, dict) and value.get("htype") in _V1_HEADER_ARRAYS


def _v1_array(description: dict, blob, max_bytes: int, declared: ImageSpec | None,
              defer: bool = False):
    shape = description.get("shape")
    # sides of any size pass here: the byte cap refuses big ones as too_large
    if not (isinstance(shape, list) and len(shape) == 2
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
        raise bad_message(f"stream v1 shape {format_untrusted(shape)} is not [width, height]",
                          "size_mismatch")
    type_name = read_field(description, "type", str)
    if type_name not in DTYPE_NAMES:
        raise bad_message(f"stream v1 type {format_untrusted(type_name)} is not one of "
                          f"{sorted(DTYPE_NAMES)}",
                          "wrong_dtype")
    encoding = description.get("encoding", "<")
    if not isinstance(encoding, str):
        raise bad_message(f"stream v1 encoding {format_untrusted(encoding)} is not a string")
    # shape is [x, y] = [width, height]: the opposite order to numpy's (and to v2 dims)
    return decode_v1_blob(blob, encoding, np.dtype(type_name), (shape[1], shape[0]), max_bytes,
                          declared, defer)


def _image_v1(header: dict, parts: list, extra: dict, max_bytes: int,
              declared: ImageSpec | None, defer: bool = False) -> ImageFrame:
    """``dimage-1.0``, ``dimage_d-1.0``, blob, ``dconfig-1.0`` [, appendix]."""
    if not 4 <= len(parts) <= 5:
        raise bad_message(f"stream v1 image message has {len(parts)} parts, expected 4 or 5")
    series, frame = read_field(header, "series", int), read_field(header, "frame", int)
    description = load_json(parts[1], "image description")
    if not str(description.get("htype", "")).startswith("dimage_d-"):
        raise bad_message(f"second part of a stream v1 image is "
                          f"{format_untrusted(description.get('htype'))}, not dimage_d-1.0")
    size = description.get("size")
    if isinstance(size, int) and size != len(parts[2]):   # a bool or an int of any size
        raise bad_message(f"image blob has {len(parts[2])} bytes, its description says "
                          f"{format_untrusted(size)}", "truncated_payload")
    data = _v1_array(description, parts[2], max_bytes, declared, defer)
    real_time_ns = read_field(load_json(parts[3], "image timing"), "real_time", float, False)
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


# ---- encoding: a compliant sender ---------------------------------------------------------------
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
    config = {**start_keys(start, 1), "nimages": n,
              "bit_depth_image": bits or bit_depth_of_invalid(start.invalid_pixel_value,
                                                              _V1_BIT_DEPTHS),
              "countrate_correction_count_cutoff": start.saturation_counts,
              "ntrigger": None if n is None else 1, "trigger_mode": None if n is None else "ints",
              "y_pixel_size": start.pixel_size_m}
    return {k: v for k, v in config.items() if v is not None}


def _json(value: dict) -> bytes:
    return json.dumps(value, separators=(",", ":"), default=to_builtin).encode()


def _appendix_bytes(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return value.encode() if isinstance(value, str) else _json(value)
