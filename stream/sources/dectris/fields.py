"""Fields of DECTRIS stream messages, read and written alike for stream v1 and v2.

Readers check the type of what they read and raise :class:`BadMessageError` (``malformed``
unless said otherwise) for a field that is not what the protocol says. A v2 start message and
a v1 detector configuration carry the same :class:`SeriesStart` fields under different names
(v2 keys, SIMPLON detector configuration names for v1): :func:`read_start_fields` and
:func:`start_keys` translate them both ways, taking the stream version. Used by
:mod:`sxdm_stream.sources.dectris.v1` and :mod:`sxdm_stream.sources.dectris.v2`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from sxdm_stream.errors import BadMessageError, format_untrusted
from sxdm_stream.messages import SeriesStart, is_u64
from sxdm_stream.sources.dectris.compression import MAX_IMAGE_SIDE, TYPED_ARRAY_DTYPES

#: numpy names of the pixel types a message may name (those of the RFC 8746 typed arrays)
DTYPE_NAMES = {d.name for d in TYPED_ARRAY_DTYPES.values()}
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


def bad_message(message: str, reason: str = "malformed") -> BadMessageError:
    """The error for a message that cannot be decoded, with its stable ``reason``."""
    return BadMessageError(message, reason)


# ---- reading ------------------------------------------------------------------------------------
def read_field(msg: Mapping, key: str, kind, required: bool = True):
    """``msg[key]`` of type ``kind``, or None.

    Every integer field of both streams (ids, counts, sizes, bit depths) is an unsigned
    64-bit integer: ``int`` accepts only those (never a bool), so no integer read here is too
    large to format or to multiply into a buffer size. ``float`` accepts an int.
    """
    value = msg.get(key)
    if value is None:
        if required:
            raise bad_message(f"message lacks the required field {key!r}")
        return None
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif kind is int:
        ok = is_u64(value)
    else:
        ok = isinstance(value, kind)
    if not ok:
        wanted = "an unsigned 64-bit integer" if kind is int else getattr(kind, "__name__", kind)
        raise bad_message(f"field {key!r} = {format_untrusted(value)} is not {wanted}")
    return _ratio(value, 1, key) if kind is float else value


def _pair(msg: Mapping, first: str, second: str, kind) -> tuple | None:
    a, b = read_field(msg, first, kind, False), read_field(msg, second, kind, False)
    return (a, b) if a is not None and b is not None else None


def read_rational(msg: Mapping, key: str) -> float | None:
    """``msg[key]``, a rational ``[ticks, hz]`` of unsigned 64-bit integers (DECTRIS
    stream2.h), as a float; None when absent."""
    value = msg.get(key)
    if value is None:
        return None
    if (isinstance(value, (list, tuple)) and len(value) == 2 and all(map(is_u64, value))
            and value[1] != 0):
        return _ratio(value[0], value[1], key)
    raise bad_message(f"field {key!r} = {format_untrusted(value)} is not a rational "
                      "[ticks, hz] of unsigned 64-bit integers")


def _ratio(numerator, denominator, key: str) -> float:
    try:
        return numerator / denominator
    except OverflowError as exc:  # CBOR and JSON integers are unbounded
        raise bad_message(f"field {key!r} is out of range: {exc}") from exc


def read_bit_depth(msg: Mapping, allowed, wording: str, reason: str) -> int | None:
    """``bit_depth_image`` if it is in ``allowed`` (else ``reason``), or None."""
    bits = read_field(msg, "bit_depth_image", int, False)
    if bits is not None and bits not in allowed:
        raise bad_message(f"bit_depth_image {bits} is not {wording}", reason)
    return bits


def read_invalid_values(msg: Mapping, version: int, bits: int | None) -> dict:
    """SeriesStart's ``invalid_pixel_value`` (NODATA, 2**bits - 1) and ``saturation_counts``.

    ``bit_depth_readout`` marks nothing: frames summed over several readouts (Eiger
    auto_summation) legitimately exceed ``2**bit_depth_readout - 1``.
    """
    key = _SATURATION[2 - version]
    saturation = read_field(msg, key, int, False)           # unsigned 64-bit, or None
    # a cutoff of 0 would make every count invalid: emulators send it for "not set" (tickit's
    # Eiger defaults countrate_correction_count_cutoff to 0), no detector means it
    return {"invalid_pixel_value": None if bits is None else 2**bits - 1,
            "saturation_counts": saturation or None}


def read_start_fields(msg: Mapping, version: int) -> dict:
    """SeriesStart's shape, beam centre and floats from a v2 start or a v1 configuration."""
    fields = {attr: read_field(msg, keys[2 - version], float, False)
              for attr, keys in _START_FLOATS.items()}
    fields["image_shape"] = shape = _pair(msg, *_START_SHAPE[2 - version], int)
    if shape is not None and not all(0 <= side <= MAX_IMAGE_SIDE for side in shape):
        raise bad_message(f"image size {shape[0]} x {shape[1]} is not 0 to {MAX_IMAGE_SIDE} "
                          "pixels a side")
    fields["beam_center"] = _pair(msg, "beam_center_y", "beam_center_x", float)
    return fields


# ---- writing ------------------------------------------------------------------------------------
def start_keys(start: SeriesStart, version: int) -> dict:
    """The inverse of :func:`read_start_fields` (None where unknown)."""
    rows, cols = start.image_shape or (None, None)
    center_row, center_col = start.beam_center or (None, None)
    keys = {names[2 - version]: getattr(start, attr) for attr, names in _START_FLOATS.items()}
    (rows_key, cols_key) = _START_SHAPE[2 - version]
    return {**keys, rows_key: rows, cols_key: cols, "beam_center_y": center_row,
            "beam_center_x": center_col}


def bit_depth_of_invalid(value: int | None, allowed=range(1, 65)) -> int | None:
    """``bit_depth_image`` of a NODATA value ``2**bits - 1`` (bits in ``allowed``)."""
    if value is None:
        return None
    bits = (value + 1).bit_length() - 1
    if value < 1 or 2**bits - 1 != value or bits not in allowed:
        raise ValueError(f"invalid_pixel_value {value} is not 2**bits - 1 for bits in "
                         f"{sorted(allowed)[:3]}...: this start message cannot say it")
    return bits


def to_builtin(value: Any) -> Any:
    """A numpy scalar or array of ``user_data`` as Python numbers and lists, to send them."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot send a {type(value).__name__} in user_data")
