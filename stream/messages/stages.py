"""The messages between stages, defined once: what a frame source hands the pipeline.

Sources (DECTRIS stream v1/v2 receivers, replay, bluesky) turn their wire format into these
three immutable messages; the pipeline never sees a wire format. Units are in the names.
Ids (``series_id``, ``image_id``, ``frame_index``) are unsigned 64-bit integers: a message
is refused when it is made with another one (:class:`~sxdm_stream.errors.BadMessageError`,
``malformed``), whichever source made it.

Our own metadata travels in ``user_data`` (DECTRIS ``header_appendix`` / ``image_appendix``)
under the key ``"sxdm"``:

* series start: ``{"sxdm": {"version": 1, "scan": ScanDescription.describe(),
  "geometry": Geometry.describe(), "correlation_id": str}}``;
* image: ``{"sxdm": {"positions": {motor: value, ...}, "monitor": float}}`` with the measured
  positions of the frame (micrometres for the map motors, degrees for angles) and the beam
  monitor's counter during the frame (the frame's counts are divided by it), both optional.

A detector that knows nothing of the scan sends only ``{"sxdm": {"correlation_id": str}}``
in its start; the control system then describes the run and measures the positions
(:class:`PlanStart`, :class:`PointPositions`, :class:`PlanEnd`), joined to the detector's
series by that correlation id and to its frames by index (:mod:`sxdm_stream.pipeline.join`).
"""

from __future__ import annotations

import numbers
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Union

import numpy as np

from sxdm_stream.errors import BadMessageError, format_untrusted

#: key of our metadata block inside DECTRIS user_data
SXDM_KEY = "sxdm"
SXDM_METADATA_VERSION = 1
#: ids (series, image, frame index) are unsigned 64-bit integers, as DECTRIS sends them; CBOR
#: and JSON carry integers of any size, and one of 5000 digits cannot even be logged
U64_MAX = 2**64 - 1


def is_u64(value: Any) -> bool:
    """Whether ``value`` is an unsigned 64-bit integer (a numpy one too; never a bool)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) \
        and 0 <= value <= U64_MAX


def _refuse_bad_ids(message: Any, *names: str) -> None:
    """Raise BadMessageError (``malformed``) for an id of ``message`` that is not u64: every
    source builds these messages, so no stage after it sees such an id."""
    for name in names:
        value = getattr(message, name)
        if not is_u64(value):
            raise BadMessageError(f"{type(message).__name__} {name} "
                                  f"{format_untrusted(value)} is not an unsigned 64-bit integer")


@dataclass(frozen=True, eq=False)
class SeriesStart:
    """A detector series was armed (DECTRIS ``start`` / ``dheader-1.0``).

    Fields the detector did not send are None. ``image_shape`` is (rows, cols);
    ``beam_center`` is (row, col) in pixels; ``pixel_mask`` is boolean, True = bad pixel.

    Pixel values that are not counts (``docs/reference/dectris_stream.md``; DECTRIS stream v2
    README, ``saturation_value``: "maximum valid sample value (excluding the NODATA value)"):

    * ``invalid_pixel_value``: the NODATA value, ``2**bit_depth_image - 1`` on an Eiger
      (v1 ``bit_depth_image``; v2 the unsigned ``image_dtype``'s maximum). Gaps, defective
      and overflowing pixels carry it in every frame, even without a pixel mask.
    * ``saturation_counts``: the largest count the detector vouches for (v2
      ``saturation_value``, v1 ``countrate_correction_count_cutoff``); counts *above* it are
      saturated and not to be trusted.

    :attr:`max_valid_counts` combines them: a pixel whose value is above it is invalid.
    """

    series_id: int
    series_unique_id: str | None = None
    image_shape: tuple[int, int] | None = None
    image_dtype: str | None = None
    number_of_images: int | None = None
    energy_ev: float | None = None
    wavelength_a: float | None = None
    pixel_size_m: float | None = None
    beam_center: tuple[float, float] | None = None
    detector_distance_m: float | None = None
    pixel_mask: np.ndarray | None = field(default=None, repr=False)
    user_data: Any = None
    stream_version: int = 2
    invalid_pixel_value: int | None = None
    saturation_counts: int | None = None

    @property
    def sxdm(self) -> Mapping | None:
        """Our metadata block from user_data, or None."""
        return _sxdm_block(self.user_data)

    @property
    def max_valid_counts(self) -> int | None:
        """The largest valid pixel value, counts: pixels above it are invalid (saturated, or
        the NODATA ``invalid_pixel_value``). None when the start message said neither."""
        limits = [v for v in (self.saturation_counts, None if self.invalid_pixel_value is None
                              else self.invalid_pixel_value - 1) if v is not None]
        return min(limits) if limits else None

    def __post_init__(self) -> None:
        _refuse_bad_ids(self, "series_id")


@dataclass(frozen=True, eq=False)
class ImageFrame:
    """One detector image (DECTRIS ``image`` / ``dimage-1.0``), decoded to a 2D array.

    ``image_id`` is 0-based, the frame index within the series. ``received_s`` is the
    ``time.perf_counter()`` of its arrival (for latency figures).
    """

    series_id: int
    image_id: int
    data: np.ndarray = field(repr=False)
    series_unique_id: str | None = None
    user_data: Any = None
    real_time_s: float | None = None
    received_s: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        _refuse_bad_ids(self, "series_id", "image_id")

    @property
    def positions(self) -> Mapping[str, float] | None:
        """Measured positions carried by the image, or None."""
        block = _sxdm_block(self.user_data)
        if block is None:
            return None
        positions = block.get("positions")
        return positions if isinstance(positions, Mapping) else None

    @property
    def monitor(self) -> float | None:
        """The beam monitor's counter carried by the image, or None.

        A monitor that is not a number reads as NaN, which the accumulator rejects
        (``bad_monitor``): a frame is never added unnormalised by mistake.
        """
        block = _sxdm_block(self.user_data)
        if block is None or block.get("monitor") is None:
            return None
        value = block["monitor"]
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return float("nan")
        try:
            return float(value)
        except OverflowError:  # an integer beyond any float (JSON and CBOR carry any size)
            return float("nan")


@dataclass(frozen=True)
class SeriesEnd:
    """The series ended (DECTRIS ``end`` / ``dseries_end-1.0``)."""

    series_id: int
    series_unique_id: str | None = None

    def __post_init__(self) -> None:
        _refuse_bad_ids(self, "series_id")


@dataclass(frozen=True, eq=False)
class PlanStart:
    """A run of the control system (a bluesky plan) began whose frames come from a detector
    stream: the run describes the scan, the detector sends the frames.

    The two are joined by ``correlation_id``, which the run carries in its ``sxdm`` block
    and the detector in its series start ``user_data`` (``{"sxdm": {"correlation_id": ...}}``).
    ``sxdm`` is the run's block: ``scan`` and ``geometry`` descriptions (see the module
    docstring).
    """

    correlation_id: str
    run_uid: str
    sxdm: Mapping = field(repr=False)


@dataclass(frozen=True)
class PointPositions:
    """Measured positions of the frame with index ``frame_index`` (0-based, the detector's
    ``image_id``) of the run joined by ``correlation_id``: micrometres for the map motors,
    degrees for angles."""

    correlation_id: str
    frame_index: int
    positions: Mapping[str, float]

    def __post_init__(self) -> None:
        _refuse_bad_ids(self, "frame_index")


@dataclass(frozen=True)
class PlanEnd:
    """The control-system run joined by ``correlation_id`` ended: no more positions come."""

    correlation_id: str
    exit_status: str | None = None


StreamMessage = Union[SeriesStart, ImageFrame, SeriesEnd]
PlanMessage = Union[PlanStart, PointPositions, PlanEnd]


def _sxdm_block(user_data: Any) -> Mapping | None:
    if isinstance(user_data, Mapping):
        block = user_data.get(SXDM_KEY)
        if isinstance(block, Mapping):
            return block
    return None
