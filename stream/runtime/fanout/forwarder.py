"""The fan-out's forwarder: the detector's PUSH stream in, handed out to the workers undecoded.

It reads only each message's type and ids (and, for images, the measured positions of their
``user_data`` that place them on a map pixel): images are never decompressed and their
ZeroMQ frames are forwarded as they came (zero-copy). Series start and end messages go to
every worker (and, decoded, to the reducer); each image to the one worker owning its map
row (:mod:`.shards`). An image whose map pixel cannot be found (no scan description: its
series was refused) goes to worker ``image_id % n`` and is counted (``unplaced``), reported
once; a worker that died takes nothing more: what was routed to it is counted
(``undeliverable``).

=================  ==========================================================================
thread             owns
=================  ==========================================================================
forwarder          the PULL socket, the PUSH sockets to the workers, the decoder of starts
caller of stop     the PUSH sockets, once the forwarder thread has ended (:meth:`order_stop`)
any                :attr:`counts` (read as a copy), :meth:`mark_dead` (a set, one add)
=================  ==========================================================================
"""

from __future__ import annotations

import json
import logging
import queue
from collections import Counter
from typing import Callable

import zmq

from sxdm_stream.core.scan import ScanDescription
from sxdm_stream.errors import BadFrameError, BadMessageError
from sxdm_stream.messages import ImageFrame, SeriesEnd, SeriesStart
from sxdm_stream.pipeline.join import describes_scan
from sxdm_stream.runtime.fanout import wire
from sxdm_stream.runtime.fanout.shards import map_pixel, row_blocks, worker_of_row
from sxdm_stream.runtime.settings import ScanOverride
from sxdm_stream.sources.dectris.codec import Decoder
from sxdm_stream.sources.dectris.v2 import load_message

log = logging.getLogger(__name__)

IMAGE, OTHER, UNREADABLE = "image", "other", "unreadable"


def peek(parts: list) -> tuple[str, ImageFrame | None]:
    """The kind of a detector message and, for an image, its ids and ``user_data`` (in an
    :class:`ImageFrame` without pixels); never decodes image data."""
    first = parts[0]
    try:
        if first[:1] == b"{":                     # stream v1: a JSON first part
            header = json.loads(bytes(first))
            if not str(header.get("htype", "")).startswith("dimage-"):
                return OTHER, None
            user_data = json.loads(bytes(parts[4])) if len(parts) == 5 else None
            return IMAGE, ImageFrame(header["series"], header["frame"], None,
                                     user_data=user_data)
        msg = load_message(first)
        if msg.get("type") != "image":
            return OTHER, None
        return IMAGE, ImageFrame(msg["series_id"], msg["image_id"], None,
                                 msg.get("series_unique_id"), user_data=msg.get("user_data"))
    except (BadMessageError, ValueError, KeyError, TypeError, IndexError):
        return UNREADABLE, None


class Forwarder:
    """Receives from ``pull`` and hands out to ``pushes`` (one per worker) until ``stopping()``.

    ``events``: the decoded series starts and ends go there (for the reducer), in order.
    """

    def __init__(self, pull, pushes: list, events: queue.Queue,
                 override: ScanOverride | None, stopping: Callable[[], bool]) -> None:
        self.pull, self.pushes, self.events = pull, pushes, events
        self.override, self.stopping = override, stopping
        self.n = len(pushes)
        self.decoder = Decoder()
        self.scan: ScanDescription | None = None
        self.blocks: list[tuple[int, int]] = []
        self.dead: set[int] = set()
        #: messages, images, images per worker, unplaced, undeliverable per worker, broadcasts
        self.counts: Counter = Counter()
        self._next = 0                            # round robin of unreadable messages

    def mark_dead(self, worker: int) -> None:
        self.dead.add(worker)

    def run(self) -> None:
        """The forwarder thread."""
        while not self.stopping():
            if self.pull.poll(100):
                self._take(self.pull.recv_multipart(copy=False))

    def _take(self, frames: list) -> None:
        self.counts["messages"] += 1
        kind, image = peek([f.buffer for f in frames])
        if kind == IMAGE:
            self.counts["images"] += 1
            self._send(self._worker_of(image), frames)
        elif kind == OTHER:
            self._broadcast(frames)
        else:
            self._send_to_one(frames)

    def _send_to_one(self, frames: list) -> None:
        """A message that cannot be read: a worker's decoder rejects it (once) and says why."""
        self.counts["unreadable"] += 1
        self._next = (self._next + 1) % self.n
        self._send(self._next, frames, count=False)

    def _worker_of(self, image: ImageFrame) -> int:
        if self.scan is None:
            self.counts["unplaced"] += 1
            if self.counts["unplaced"] == 1:
                log.warning("image %s of series %s: no scan description to find its map pixel; "
                            "sent to worker %d by its index (further ones are only counted as "
                            "'unplaced')", image.image_id, image.series_id,
                            image.image_id % self.n)
            return image.image_id % self.n
        try:
            _angle, point = map_pixel(self.scan, image.image_id, image.positions)
        except BadFrameError:                     # the worker rejects it for the same reason
            return image.image_id % self.n
        return worker_of_row(point // self.scan.shape[1], self.blocks)

    def _broadcast(self, frames: list) -> None:
        try:
            message = self.decoder.decode([f.buffer for f in frames])
        except BadMessageError:
            self._send_to_one(frames)
            return
        if isinstance(message, SeriesStart):
            self._start(message)
        if isinstance(message, (SeriesStart, SeriesEnd)):
            self.events.put(message)
        self.counts["broadcast"] += 1
        for w in range(self.n):
            self._send(w, frames, count=False)

    def _start(self, start: SeriesStart) -> None:
        self.scan = None
        try:
            if self.override is not None:
                self.scan = self.override.scan
            elif describes_scan(start.sxdm):
                self.scan = ScanDescription.from_description(start.sxdm["scan"])
        except Exception as exc:                  # the workers refuse the series and say why
            log.debug("no scan from series %s: %s", start.series_id, exc)
        if self.scan is not None:
            self.blocks = row_blocks(self.scan.shape[0], self.n)

    def _send(self, w: int, frames: list, count: bool = True) -> None:
        """Forward ``frames`` to worker ``w`` (blocks while it is busy: back-pressure reaches
        the detector); counted as undeliverable if it is dead."""
        sock = self.pushes[w]
        while True:
            if w in self.dead:
                if count:
                    self.counts[f"undeliverable_{w}"] += 1
                return
            try:
                sock.send_multipart([b"det", *frames], flags=zmq.NOBLOCK, copy=False)
                break
            except zmq.Again:
                if not sock.poll(100, zmq.POLLOUT) and self.stopping():
                    self.counts["not_forwarded_at_stop"] += int(count)   # its frames: missing
                    return
        if count:
            self.counts[f"to_{w}"] += 1

    def order_stop(self) -> None:
        """Tell every live worker to finish (its current series as cut short) and exit."""
        for w in range(self.n):
            while w not in self.dead:
                try:
                    self.pushes[w].send_multipart(wire.order("stop"), flags=zmq.NOBLOCK)
                    break
                except zmq.Again:
                    self.pushes[w].poll(100, zmq.POLLOUT)
