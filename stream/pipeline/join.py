"""Joining two planes: frames from a detector stream, scan and positions from the control system.

A real detector knows nothing of the motors. When the acquisition control (bluesky) describes
the run and measures the positions while the detector streams the frames, the two are joined:

* series to run by the **correlation id** both carry (the run's ``sxdm.correlation_id``, the
  detector's start ``user_data``);
* frame to positions by **index** within that run (the detector's ``image_id`` = the
  control system's point number, 0-based).

Either side may arrive first: a detector is armed (series start) before the run opens, but
its frames can overtake the documents carrying their positions. :class:`PlanBook` keeps the
runs announced by the control system (a few, the oldest forgotten) and their positions not
yet claimed; :class:`HeldFrames` keeps, for the current series, the frames still waiting for
their positions, bounded so that a control system that went silent cannot fill the memory.

No I/O and no threads here: the live processor's worker drives it.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Mapping

from sxdm_stream.messages import ImageFrame, PlanEnd, PlanStart, PointPositions

log = logging.getLogger(__name__)

#: runs of the control system remembered at once (each holds at most its positions)
MAX_PLANS = 8


@dataclass
class PlanRun:
    """What the control system said of one run: its description, positions not yet used."""

    correlation_id: str
    run_uid: str
    sxdm: Mapping
    positions: dict[int, Mapping[str, float]] = field(default_factory=dict)
    ended: bool = False
    exit_status: str | None = None


class PlanBook:
    """The control system's runs by correlation id, at most ``max_plans`` (oldest dropped)."""

    def __init__(self, max_plans: int = MAX_PLANS) -> None:
        self.max_plans = max_plans
        self._plans: OrderedDict[str, PlanRun] = OrderedDict()

    def __contains__(self, correlation_id) -> bool:
        return correlation_id in self._plans

    def get(self, correlation_id: str | None) -> PlanRun | None:
        return self._plans.get(correlation_id) if correlation_id is not None else None

    def start(self, message: PlanStart) -> PlanRun:
        """Remember a run (a restarted one replaces the old)."""
        plan = PlanRun(message.correlation_id, message.run_uid, message.sxdm)
        self._plans.pop(message.correlation_id, None)
        self._plans[message.correlation_id] = plan
        while len(self._plans) > self.max_plans:
            forgotten, old = self._plans.popitem(last=False)
            log.info("forgetting run %s (correlation id %s): no detector series claimed it",
                     old.run_uid, forgotten)
        return plan

    def add_positions(self, message: PointPositions) -> PlanRun | None:
        """Store a point's positions; None if the run is unknown (its start was missed)."""
        plan = self._plans.get(message.correlation_id)
        if plan is not None:
            plan.positions[int(message.frame_index)] = dict(message.positions)
        return plan

    def end(self, message: PlanEnd) -> PlanRun | None:
        plan = self._plans.get(message.correlation_id)
        if plan is not None:
            plan.ended, plan.exit_status = True, message.exit_status
        return plan

    def discard(self, correlation_id: str) -> None:
        self._plans.pop(correlation_id, None)


class HeldFrames:
    """Frames of the current series waiting for their positions (or for the run's
    description), oldest first, at most ``limit``.

    :meth:`hold` returns the frames pushed out by the limit: the caller processes them
    without measured positions (placed by index) or rejects them, and says so.
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(int(limit), 1)
        self._frames: OrderedDict[int, ImageFrame] = OrderedDict()

    def __len__(self) -> int:
        return len(self._frames)

    def hold(self, image: ImageFrame) -> list[ImageFrame]:
        self._frames[int(image.image_id)] = image
        overflow = []
        while len(self._frames) > self.limit:
            overflow.append(self._frames.popitem(last=False)[1])
        return overflow

    def claim(self, frame_index: int) -> ImageFrame | None:
        """The held frame with this index, removed; None if it is not held."""
        return self._frames.pop(int(frame_index), None)

    def claim_with_positions(self, plan: PlanRun) -> list[tuple[ImageFrame, Mapping]]:
        """Every held frame whose positions the run now has, with them (both removed)."""
        ready = [i for i in self._frames if i in plan.positions]
        return [(self._frames.pop(i), plan.positions.pop(i)) for i in ready]

    def release(self) -> list[ImageFrame]:
        """All held frames, oldest first; none remain."""
        frames = list(self._frames.values())
        self._frames.clear()
        return frames


def correlation_id_of(user_data_block: Mapping | None) -> str | None:
    """The correlation id in a series start's ``sxdm`` block, or None."""
    if not isinstance(user_data_block, Mapping):
        return None
    value = user_data_block.get("correlation_id")
    return str(value) if value not in (None, "") else None


def describes_scan(block: Mapping | None) -> bool:
    """True if an ``sxdm`` block carries both the scan and the geometry."""
    return isinstance(block, Mapping) and "scan" in block and "geometry" in block
