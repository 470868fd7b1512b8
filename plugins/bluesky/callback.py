"""A bluesky callback that feeds a run's documents to the live processor.

:class:`SxdmCallback` is a ``CallbackBase`` (an event-model ``DocumentRouter``): one method per
document name. It only converts documents into the processor's messages
(:mod:`sxdm_stream.messages`) and hands them to ``processor.submit``; accumulation happens on
the processor's worker thread, never on the RunEngine's or the 0MQ dispatcher's thread.

* ``start`` with an ``"sxdm"`` block: an SXDM run; runs without the block (alignment
  scans, ...) are ignored;
* ``descriptor`` of the ``primary`` stream: if it has an image data key, the frames come
  with the documents -> :class:`SeriesStart` (series_unique_id = run uid); if it has none,
  the frames come from a detector stream -> :class:`PlanStart` with the run's correlation id;
* ``event`` / ``event_page`` -> :class:`ImageFrame`: ``image_id = seq_num - 1``, measured
  positions of the map motors and the rocking axis from the event data; the image inline,
  or read from the file a ``datum`` / ``stream_datum`` points at (:mod:`.files`). Without
  an image key -> :class:`PointPositions` (frame index ``seq_num - 1``);
* ``stop`` -> :class:`SeriesEnd` (or :class:`PlanEnd`).

A relative plan (``rel_grid_scan``) is announced at its first event instead of its
descriptor: its extents are offsets, and the readings of that event place the scan in
absolute motor positions (:func:`~.metadata.shift_scan`). A start document of a run that is
not SXDM (another publisher's, a derived run) never ends the SXDM run in progress.

Documents of a run whose start was not seen (a late joiner on the 0MQ proxy) are counted
under ``missed_start`` and reported once: their frames are never mixed into another run.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
from bluesky.callbacks.core import CallbackBase

from sxdm_stream import (SXDM_KEY, ImageFrame, PlanEnd, PlanStart, PointPositions,
                         ScanDescription, SeriesEnd, SeriesStart, SxdmError)

from .files import FrameFiles
from .metadata import correlation_id_of, is_relative, scan_from_start, shift_scan

log = logging.getLogger(__name__)


@dataclass
class _Run:
    """What the callback knows about the run in progress."""

    uid: str
    series_id: int
    scan: ScanDescription
    block: dict
    #: "frames" (images in the documents), "positions" (a detector streams them), None: no
    #: primary descriptor yet
    mode: str | None = None
    image_keys: dict[str, str | None] = field(default_factory=dict)  # descriptor uid -> key
    positions: dict[int, dict] = field(default_factory=dict)        # seq_num -> positions
    pending: dict[int, np.ndarray] = field(default_factory=dict)    # seq_num -> frame
    frames: int = 0
    #: a relative plan (rel_grid_scan): its scan is placed by the first event's readings
    relative: bool = False
    #: the series or plan start has been handed to the processor
    announced: bool = False


class SxdmCallback(CallbackBase):
    """Turns the documents of SXDM runs into the live processor's input.

    Parameters
    ----------
    processor : anything with ``submit(message)``, typically a
        :class:`sxdm_stream.runtime.processor.LiveProcessor` (thread-safe, applies back-pressure).
    pixel_mask : detector pixel mask (True = bad pixel), sent with each series start;
        the documents do not carry it (it is big).
    image_key : data key of the detector image; None finds the 2D data key of the primary
        stream.
    stream_name : the event stream holding the frames.
    """

    def __init__(self, processor, pixel_mask: np.ndarray | None = None,
                 image_key: str | None = None, stream_name: str = "primary") -> None:
        super().__init__()
        self.processor = processor
        self.pixel_mask = pixel_mask
        self.image_key = image_key
        self.stream_name = stream_name
        self.files = FrameFiles()
        self.rejected: Counter = Counter()
        self.runs_seen = 0
        self.last_run_uid: str | None = None
        self.last_scan: ScanDescription | None = None
        self._run: _Run | None = None
        self._foreign_descriptors: set[str] = set()
        self._ignored: set[str] = set()            # uids of non-SXDM runs and their descriptors
        self._reported: set[str] = set()

    # ---- documents --------------------------------------------------------------------------
    def start(self, doc):
        if not isinstance(doc.get(SXDM_KEY), Mapping):
            # another publisher's run (or a derived run) never ends the SXDM run in progress
            log.info("run %s carries no %r metadata: not an SXDM scan, ignored", doc["uid"], SXDM_KEY)
            self._ignored.add(doc["uid"])
            return
        if self._run is not None:
            self._report("unfinished_run", f"run {self._run.uid} got no stop document before run "
                         f"{doc['uid']} started; it stays incomplete")
            self._close_run()
        try:
            scan = scan_from_start(doc)
        except SxdmError as exc:
            self._report("bad_start", f"run {doc['uid']} is not usable: {exc}")
            self._ignored.add(doc["uid"])
            return
        self.runs_seen += 1
        block = {**doc[SXDM_KEY], "scan": scan.describe(), "correlation_id": correlation_id_of(doc)}
        self._run = _Run(doc["uid"], self._series_id(doc), scan, block, relative=is_relative(doc))
        self.last_run_uid, self.last_scan = doc["uid"], scan

    def descriptor(self, doc):
        run = self._run
        if doc["run_start"] in self._ignored:
            self._ignored.add(doc["uid"])
            return
        if run is None or doc["run_start"] != run.uid:
            self._foreign_descriptors.add(doc["uid"])
            return
        if doc.get("name", "primary") != self.stream_name:
            return
        key = self.image_key or _find_image_key(doc["data_keys"])
        if self.image_key is not None and key not in doc["data_keys"]:
            self._report("no_image_key", f"stream {doc.get('name')!r} of run {run.uid} has no "
                         f"data key {key!r} ({sorted(doc['data_keys'])})")
            return
        run.image_keys[doc["uid"]] = key
        if run.mode is not None:
            return
        run.mode = "positions" if key is None else "frames"
        if key is None:
            log.info("run %s records no images: its frames come from a detector stream with "
                     "correlation id %s", run.uid, run.block["correlation_id"])
        if not run.relative:                       # a relative plan waits for its first readings
            self._announce(run)

    def _announce(self, run: _Run) -> None:
        block = run.block
        run.announced = True
        if run.mode == "positions":
            self.processor.submit(PlanStart(block["correlation_id"], run.uid, block))
        else:
            self.processor.submit(SeriesStart(
                series_id=run.series_id, series_unique_id=run.uid,
                number_of_images=run.scan.n_frames, pixel_mask=self.pixel_mask,
                energy_ev=block.get("geometry", {}).get("energy_ev"), user_data={SXDM_KEY: block}))

    def _place_relative(self, run: _Run, seq_num: int, positions: dict) -> bool:
        """Place a relative plan's scan from the readings of its first event, then announce
        the run. False (and the run dropped, with its reason) when the readings are missing."""
        try:
            run.scan = shift_scan(run.scan, seq_num - 1, positions)
        except SxdmError as exc:
            self._report("relative_without_readings", f"run {run.uid}: {exc}; the run is ignored")
            self._ignored.update([run.uid, *run.image_keys])
            self._close_run()
            return False
        run.block = {**run.block, "scan": run.scan.describe()}
        self.last_scan = run.scan
        log.info("run %s: relative scan placed from the readings of event %d: rows %s um, "
                 "columns %s um, %s %.4f..%.4f deg", run.uid, seq_num,
                 run.scan.extents_um[0], run.scan.extents_um[1], run.scan.rocking_axis,
                 run.scan.rocking_angles[0], run.scan.rocking_angles[-1])
        self._announce(run)
        return True

    def event(self, doc):
        run = self._run
        if run is None or doc["descriptor"] not in run.image_keys:
            if doc["descriptor"] in self._foreign_descriptors or (
                    run is None and doc["descriptor"] not in self._ignored):
                self._report("missed_start", "events of a run whose start document was not seen "
                             "(joined late?) are dropped, never mixed into another run")
            return
        seq_num, data = int(doc["seq_num"]), doc["data"]
        names = (*run.scan.motors, run.scan.rocking_axis)
        positions = {m: float(data[m]) for m in names if m in data}
        if not run.announced and not self._place_relative(run, seq_num, positions):
            return
        key = run.image_keys[doc["descriptor"]]
        if key is None:
            self.processor.submit(PointPositions(run.block["correlation_id"], seq_num - 1, positions))
            return
        value = data.get(key)
        try:
            if value is None:                      # external "STREAM:" key: stream_datum brings it
                run.positions[seq_num] = positions
                if seq_num in run.pending:
                    self._submit_frame(seq_num, run.pending.pop(seq_num), positions)
                return
            frame = self.files.frame_of_datum(value) if isinstance(value, str) else np.asarray(value)
        except SxdmError as exc:
            self._report(getattr(exc, "reason", "bad_event"), f"event {seq_num}: {exc}")
            return
        self._submit_frame(seq_num, frame, positions)

    def resource(self, doc):
        self.files.add_resource(doc)

    def datum(self, doc):
        self.files.add_datum(doc)

    def stream_resource(self, doc):
        self.files.add_stream_resource(doc)

    def stream_datum(self, doc):
        run = self._run
        if run is None or doc["descriptor"] not in run.image_keys:
            return
        try:
            for seq_num, frame in self.files.frames_of_stream_datum(doc):
                if seq_num in run.positions:
                    self._submit_frame(seq_num, frame, run.positions.pop(seq_num))
                else:                              # the event with its positions comes later
                    run.pending[seq_num] = frame
        except SxdmError as exc:
            self._report(getattr(exc, "reason", "bad_stream_datum"), str(exc))

    def stop(self, doc):
        run = self._run
        if run is None or doc["run_start"] != run.uid:
            self._ignored.discard(doc["run_start"])
            return
        if not run.announced:
            log.info("run %s ended before its first event: nothing to process", run.uid)
        elif run.mode == "positions":
            self.processor.submit(PlanEnd(run.block["correlation_id"], doc.get("exit_status")))
        elif run.mode == "frames":
            for seq_num in sorted(run.pending):    # frames whose events never came: by index
                self._submit_frame(seq_num, run.pending.pop(seq_num), None)
            log.info("run %s: %d frames handed to the processor (%s)", run.uid, run.frames,
                     doc.get("exit_status"))
            self.processor.submit(SeriesEnd(run.series_id, run.uid))
        self._close_run()

    # ---- helpers ----------------------------------------------------------------------------
    def _submit_frame(self, seq_num: int, frame: np.ndarray, positions: dict | None) -> None:
        run = self._run
        run.frames += 1
        user = {SXDM_KEY: {"positions": positions}} if positions else None
        self.processor.submit(ImageFrame(series_id=run.series_id, image_id=seq_num - 1,
                                         data=frame, series_unique_id=run.uid, user_data=user))

    def _series_id(self, doc) -> int:
        scan_id = doc.get("scan_id")
        return int(scan_id) if isinstance(scan_id, (int, np.integer)) else self.runs_seen

    def _close_run(self) -> None:
        self.files.close()
        self._run = None
        self._foreign_descriptors.clear()

    def _report(self, reason: str, message: str) -> None:
        self.rejected[reason] += 1
        if reason not in self._reported:
            self._reported.add(reason)
            log.warning("%s (further occurrences of %r are only counted)", message, reason)


def _find_image_key(data_keys: Mapping) -> str | None:
    """The first data key holding a 2D array (an area detector image)."""
    for key, info in data_keys.items():
        shape = [s for s in (info.get("shape") or []) if s not in (None, 0)]
        if len(shape) >= 2 and info.get("dtype") == "array":
            return key
    return None
