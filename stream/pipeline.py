"""The processing of one scan: frames in, joined to their map pixel, accumulated, maps out.

:class:`ScanProcessor` is the stage between a frame source and the accumulator. It joins a
frame to its (rocking angle, map pixel) by frame index through the scan description, adds it,
and accounts for every frame: processed, or rejected with a reason (reported once per reason,
counted always). A bad frame never takes down the processor nor touches what was accumulated.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .accumulate import Accumulator, ScanSetup
from .errors import BadFrameError
from .maps import DEFAULT_MASK_FRACTION, MapSet, derive_maps

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
                 d_ref: float | None = None) -> None:
        self.setup = setup
        self.accumulator = Accumulator(setup)
        self.counters = FrameCounters()
        self.mask_fraction = mask_fraction
        self.d_ref = d_ref
        self._reported: set[str] = set()

    def add(self, frame_index: int, frame: np.ndarray, monitor: float | None = None) -> bool:
        """Join a frame to its map pixel by index and add it; False if it was rejected."""
        self.counters.received += 1
        try:
            angle, point = self.setup.scan.locate(int(frame_index))
            self.accumulator.add_frame(frame, angle, point, monitor)
        except BadFrameError as exc:
            self._reject(exc.reason, f"frame {frame_index}: {exc}")
            return False
        self.counters.processed += 1
        return True

    def _reject(self, reason: str, message: str) -> None:
        self.counters.rejected[reason] += 1
        if reason not in self._reported:
            self._reported.add(reason)
            log.warning("rejected %s (further frames rejected for this reason are only counted)",
                        message)

    @property
    def complete(self) -> bool:
        """True when every frame of the scan has been added."""
        return bool(np.all(self.accumulator.frame_count >= self.setup.scan.frames_per_point))

    def maps(self) -> MapSet:
        return derive_maps(self.accumulator.moments, self.setup.q_ref, self.setup.scan.shape,
                           self.mask_fraction, self.d_ref)

