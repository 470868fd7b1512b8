"""The processing of one scan: frames in, joined to their map pixel, accumulated, maps out.

:class:`ScanProcessor` is the stage between a frame source and the accumulator. It joins a
frame to its (rocking angle, map pixel) by frame index through the scan description, adds it,
and accounts for every frame: processed, or rejected with a reason (reported once per reason,
counted always). A bad frame never takes down the processor nor touches what was accumulated.
Detector pixels holding the detector's invalid value are left out by the accumulator and
counted (:attr:`ScanProcessor.invalid_pixels`); the first frame that has any says so in the log.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from sxdm_stream.core.accumulate import Accumulator, ScanSetup, max_valid_for
from sxdm_stream.core.maps import DEFAULT_MASK_FRACTION, MapSet, derive_maps
from sxdm_stream.core.scan import ScanDescription
from sxdm_stream.errors import BadFrameError, ConfigError, format_untrusted

log = logging.getLogger(__name__)


@dataclass
class FrameCounters:
    """Every frame received is processed or rejected under a reason."""

    received: int = 0
    processed: int = 0
    rejected: Counter = field(default_factory=Counter)
    started: float = field(default_factory=time.perf_counter)

    @property
    def n_rejected(self) -> int:
        return sum(self.rejected.values())

    def rate(self) -> float:
        """Processed frames per second since the start."""
        elapsed = time.perf_counter() - self.started
        return self.processed / elapsed if elapsed > 0 else 0.0

    def summary(self) -> dict:
        return {"received": self.received, "processed": self.processed,
                "rejected": dict(self.rejected), "frames_per_s": round(self.rate(), 1)}


class ScanProcessor:
    """Accumulates the frames of one scan and derives its maps on demand."""

    def __init__(self, setup: ScanSetup, mask_fraction: float = DEFAULT_MASK_FRACTION,
                 d_ref: float | None = None, accumulator: Accumulator | None = None) -> None:
        self.setup = setup
        #: the sums frames go into: by default the whole scan's; a task of a distributed run
        #: passes one that holds only its block of map rows
        self.accumulator = accumulator if accumulator is not None else Accumulator(setup)
        self.counters = FrameCounters()
        self.mask_fraction = mask_fraction
        self.d_ref = d_ref
        #: which frame indices are in the sums (duplicates are refused; resume skips them)
        self.included = np.zeros(setup.scan.n_frames, dtype=bool)
        #: rocking angles finished: the acquisition has moved past them
        self.angles_done = 0
        #: the checkpoint this scan was restored from (None: started afresh)
        self.resumed_from: Path | None = None
        self._reported: set[str] = set()

    def add(self, frame_index: int, frame: np.ndarray, monitor: float | None = None,
            positions: Mapping[str, float] | None = None) -> bool:
        """Join a frame to its map pixel and add it; False if it was rejected.

        The frame index gives the rocking angle and, unless measured ``positions`` of both map
        motors are given, the map pixel; measured positions place the frame on the nearest
        grid pixel instead.
        """
        self.counters.received += 1
        try:
            angle, point = place_frame(self.setup.scan, frame_index, positions)
            if self.included[frame_index]:
                raise BadFrameError(f"frame index {frame_index} was already added", "duplicate_image")
            invalid_before = self.accumulator.invalid_pixels
            self.accumulator.add_frame(frame, angle, point, monitor)
        except BadFrameError as exc:
            self._reject(exc.reason, f"frame {frame_index}: {exc}")
            return False
        new_invalid = self.accumulator.invalid_pixels - invalid_before
        if new_invalid and "invalid_pixels" not in self._reported:
            self._reported.add("invalid_pixels")
            log.warning("frame %d: %d detector pixels hold no valid count (above %.10g: the "
                        "detector's invalid value or saturation): left out of the sums and "
                        "counted as invalid_pixels (a pixel mask that covers them silences "
                        "this)", frame_index, new_invalid,
                        max_valid_for(frame.dtype, self.setup.max_valid))
        self.included[frame_index] = True
        self.counters.processed += 1
        self.angles_done = max(self.angles_done, angle)
        return True

    def _reject(self, reason: str, message: str) -> None:
        self.counters.rejected[reason] += 1
        if reason not in self._reported:
            self._reported.add(reason)
            log.warning("rejected %s (further frames rejected for this reason are only counted)",
                        message)

    def merge(self, other: "ScanProcessor") -> "ScanProcessor":
        """Add ``other``'s frames (same scan, disjoint frames) into this processor, in place.

        Sums add (:meth:`Accumulator.merge`), counters add; a frame both have is refused."""
        both = self.included & other.included
        if both.any():
            raise ConfigError(f"cannot merge processors that both hold frames "
                              f"{np.flatnonzero(both)[:5].tolist()}...")
        self.accumulator.merge(other.accumulator)
        self.included |= other.included
        self.counters.received += other.counters.received
        self.counters.processed += other.counters.processed
        self.counters.rejected.update(other.counters.rejected)
        self.angles_done = max(self.angles_done, other.angles_done)
        return self

    @property
    def invalid_pixels(self) -> int:
        """Detector pixels left out of the sums for holding the detector's invalid value,
        over every frame added (one pixel of one frame counts one)."""
        return self.accumulator.invalid_pixels

    @property
    def complete(self) -> bool:
        """True when every frame of the scan has been added."""
        return bool(self.included.all())

    def missing_per_angle(self) -> np.ndarray:
        """Frames of the scan not in the sums, per rocking angle (frame index =
        angle * n_points + point)."""
        included = np.asarray(self.included, bool)
        return (~included).reshape(self.setup.scan.n_angles, -1).sum(axis=1).astype(np.int64)

    def maps(self) -> MapSet:
        return derive_maps(self.accumulator.moments, self.setup.q_ref, self.setup.scan.shape,
                           self.mask_fraction, self.d_ref)


def place_frame(scan: ScanDescription, frame_index: int,
                positions: Mapping[str, float] | None = None) -> tuple[int, int]:
    """(rocking angle, flat map pixel) of a frame: the frame index gives the angle and, unless
    measured ``positions`` of both map motors are given, the map pixel; measured positions
    place it on the nearest grid pixel instead. The one rule of the join, used by the
    processor and by whatever shards frames before it (``process --workers``, Dask).

    Raises
    ------
    BadFrameError : ``index_out_of_range``, ``bad_position`` (not numbers, not finite) or
        ``outside_grid``.
    """
    angle, point = scan.locate(int(frame_index))
    if positions is None or not all(m in positions for m in scan.motors):
        return angle, point
    values = [positions[m] for m in scan.motors]
    try:
        row_um, col_um = (float(v) for v in values)
    # OverflowError: an integer beyond any float (JSON and CBOR carry any size)
    except (TypeError, ValueError, OverflowError):
        raise BadFrameError(f"positions {format_untrusted(values)} of {scan.motors} are not "
                            "numbers", "bad_position") from None
    if not (np.isfinite(row_um) and np.isfinite(col_um)):
        raise BadFrameError(f"position {format_untrusted(dict(zip(scan.motors, values)))} "
                            "is not finite", "bad_position")
    point = scan.pixel_of_position(row_um, col_um)
    if point is None:
        raise BadFrameError(f"position {format_untrusted(dict(zip(scan.motors, values)))} "
                            f"um is outside the map grid {scan.extents_um}", "outside_grid")
    return angle, point
