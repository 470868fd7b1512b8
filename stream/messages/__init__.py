"""The messages between stages and on the wire, defined once.

* :mod:`.stages`: what a source hands the pipeline (:class:`SeriesStart`,
  :class:`ImageFrame`, :class:`SeriesEnd`) and what the control system adds
  (:class:`PlanStart`, :class:`PointPositions`, :class:`PlanEnd`);
* :mod:`.status`: what the live processor tells its viewers (:class:`LiveStatus`,
  :class:`SnapshotHeader`), versioned on the wire.

Import them from here (``from sxdm_stream.messages import ImageFrame``).
"""

from sxdm_stream.messages.stages import (SXDM_KEY, SXDM_METADATA_VERSION, U64_MAX, ImageFrame,
                                         PlanEnd, PlanMessage, PlanStart, PointPositions,
                                         SeriesEnd, SeriesStart, StreamMessage, is_u64)
from sxdm_stream.messages.status import (LIVE_STATUS_VERSION, SNAPSHOT_FORMAT, SNAPSHOT_VERSION,
                                         LiveStatus, SnapshotHeader)

__all__ = ["SXDM_KEY", "SXDM_METADATA_VERSION", "U64_MAX", "ImageFrame", "PlanEnd",
           "PlanMessage", "PlanStart", "PointPositions", "SeriesEnd", "SeriesStart",
           "StreamMessage", "is_u64", "LIVE_STATUS_VERSION", "SNAPSHOT_FORMAT",
           "SNAPSHOT_VERSION", "LiveStatus", "SnapshotHeader"]
