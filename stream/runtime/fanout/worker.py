"""A fan-out worker process: decodes the images of its map rows and sums them.

:func:`run_worker` is the target of a ``spawn`` process. It receives from the forwarder every
series start and end and the images whose map pixel lies in its rows (:mod:`.shards`),
decodes them (:class:`~sxdm_stream.sources.dectris.codec.Decoder`) and adds them into an
accumulator of its rows only (:func:`~.shards.row_block_setup`). At each series' end (or
when told to stop) it sends its partial sums to the reducer (:mod:`.wire`) and frees them.

Every image it receives is processed or rejected under a reason: by the scan (its partial's
``rejected``: ``index_out_of_range``, ``duplicate_image``, ``bad_position``, ``wrong_shape``...)
or outside any series (its ``bye``: decode failures, ``image_before_start``,
``unknown_series``, the reason a start was refused for).

One thread: the process's main thread owns everything here.
"""

from __future__ import annotations

import logging
import resource
import signal
from collections import Counter

import numpy as np
import zmq

from sxdm_stream.core.accumulate import Accumulator
from sxdm_stream.errors import BadFrameError, BadMessageError, SxdmError
from sxdm_stream.messages import ImageFrame, SeriesEnd, SeriesStart
from sxdm_stream.runtime.fanout import wire
from sxdm_stream.runtime.fanout.shards import map_pixel, row_block_setup, row_blocks
from sxdm_stream.runtime.settings import Config, ScanOverride, setup_for_series
from sxdm_stream.sources.dectris.codec import Decoder

log = logging.getLogger(__name__)


class RowShard:
    """The sums of one worker's rows for the current series (no sockets: testable alone)."""

    def __init__(self, index: int, n_workers: int, settings: Config,
                 override: ScanOverride | None) -> None:
        self.index, self.n_workers = index, n_workers
        self.settings, self.override = settings, override
        self.decoder = Decoder()
        self.orphans: Counter = Counter()        # images rejected outside any series
        self.series: SeriesStart | None = None
        self._refused: tuple | None = None       # (series_id, unique id, reason)
        self._reset()

    def _reset(self) -> None:
        self.setup = self.acc = self.included = None
        self.rows = (0, 0)
        self.processed, self.rejected = 0, Counter()

    def take(self, parts: list) -> list[list]:
        """One detector message; the messages to send to the reducer (partials)."""
        try:
            message = self.decoder.decode(parts)
        except BadMessageError as exc:
            self.orphans[exc.reason] += 1
            return []
        if isinstance(message, ImageFrame):
            self._add(message)
        elif isinstance(message, SeriesStart):
            out = self.finish(ended=False)
            self._start(message)
            return out
        elif isinstance(message, SeriesEnd) and self._is_current(message):
            return self.finish(ended=True)
        return []

    def _start(self, start: SeriesStart) -> None:
        try:
            full = setup_for_series(start, self.settings.accumulation, self.override)
        except (SxdmError, ValueError) as exc:
            self._refused = (start.series_id, start.series_unique_id,
                             getattr(exc, "reason", "bad_start"))
            log.error("worker %d: series %s refused: %s", self.index, start.series_id, exc)
            return
        self.series, self._refused = start, None
        self.rows = row_blocks(full.scan.shape[0], self.n_workers)[self.index]
        self.full_scan = full.scan
        self.setup = row_block_setup(full, *self.rows) if self.rows[1] > self.rows[0] else None
        self.acc = Accumulator(self.setup) if self.setup is not None else None
        self.included = np.zeros(full.scan.n_frames, dtype=bool)

    def _is_current(self, message) -> bool:
        s = self.series
        return s is not None and message.series_id == s.series_id and \
            message.series_unique_id in (None, s.series_unique_id)

    def _add(self, image: ImageFrame) -> None:
        if not self._is_current(image):
            refused = self._refused
            if refused is not None and image.series_id == refused[0]:
                self.orphans[refused[2]] += 1
            else:
                self.orphans["unknown_series" if self.series else "image_before_start"] += 1
            return
        try:
            angle, point = map_pixel(self.full_scan, image.image_id, image.positions)
            row, col = divmod(point, self.full_scan.shape[1])
            if not self.rows[0] <= row < self.rows[1]:
                raise BadFrameError(f"image {image.image_id} of row {row} reached worker "
                                    f"{self.index} (rows {self.rows})", "outside_shard")
            if self.included[image.image_id]:
                raise BadFrameError(f"frame index {image.image_id} was already added",
                                    "duplicate_image")
            local = (row - self.rows[0]) * self.full_scan.shape[1] + col
            self.acc.add_frame(image.data, angle, local, image.monitor)
        except BadFrameError as exc:
            self.rejected[exc.reason] += 1
            return
        self.included[image.image_id] = True
        self.processed += 1

    def finish(self, ended: bool) -> list[list]:
        """The current series' partial (none if there is no series); the sums are freed."""
        if self.series is None:
            return []
        s, arrays = self.series, {"included": self.included}
        if self.acc is not None:
            arrays.update(self.acc.state())
        header = {"kind": "partial", "worker": self.index, "series_id": s.series_id,
                  "series_unique_id": s.series_unique_id, "ended": ended,
                  "rows": list(self.rows), "processed": self.processed,
                  "rejected": dict(self.rejected),
                  "invalid_pixels": self.acc.invalid_pixels if self.acc is not None else 0}
        message = wire.encode(header, arrays)
        self.series = None
        self._reset()
        return [message]


def run_worker(index: int, n_workers: int, inbox: str, outbox: str, settings: Config,
               override: ScanOverride | None, log_level: int = logging.INFO) -> None:
    """The worker process: PULL from ``inbox`` (the forwarder), PUSH to ``outbox`` (the
    reducer) until told to stop."""
    # Ctrl-C reaches the whole process group: the main process orders us to finish, so that
    # the sums of a cut-short series still reach the reducer
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=log_level,
                        format=f"%(asctime)s %(levelname)s fanout-worker-{index} %(message)s")
    context = zmq.Context()
    pull, push = context.socket(zmq.PULL), context.socket(zmq.PUSH)
    pull.setsockopt(zmq.RCVHWM, 64)
    for sock in (pull, push):
        sock.setsockopt(zmq.LINGER, -1)         # partials are delivered before we exit
    pull.connect(inbox)
    push.connect(outbox)
    shard = RowShard(index, n_workers, settings, override)
    push.send_multipart(wire.encode({"kind": "ready", "worker": index}))
    try:
        while True:
            parts = pull.recv_multipart(copy=False)
            if bytes(parts[0]) == b"ctl":
                for message in shard.finish(ended=False):
                    push.send_multipart(message, copy=False)
                break
            for message in shard.take([p.buffer for p in parts[1:]]):
                push.send_multipart(message, copy=False)
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux: KiB
        push.send_multipart(wire.encode({"kind": "bye", "worker": index,
                                         "rejected": dict(shard.orphans),
                                         "peak_rss_mib": round(peak_mib, 1)}))
    finally:
        pull.close()
        push.close()
        context.term()
