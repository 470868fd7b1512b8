"""The live processor: a DECTRIS stream in, maps out while the scan runs.

Three threads, joined by bounded queues, so that decoding, accumulation and file writing
overlap on two cores (ZeroMQ, the decompressors, numba kernels and h5py release the GIL):

* receiver: PULL socket(s) -> decode (stream v1 or v2, per message) -> frame queue;
* worker: series bookkeeping, join frame -> map pixel, accumulate, publish snapshots at a
  bounded rate;
* writer: results file at the end of each rocking angle and of the scan, checkpoints.

Back-pressure (declared, never silent): with ``policy="block"`` (default) a full frame queue
stops the receiver, ZeroMQ's queues fill and the detector's PUSH socket waits: nothing is lost,
the sender slows down. With ``policy="drop"`` images that find the queue full are dropped and
counted. Series start and end messages are never dropped.

Every message is accounted for: decoded or rejected (by reason) at the receiver; every image
processed, rejected (by reason) or dropped.

Two planes: a series whose start carries only a correlation id is joined to the control
system's run with that id (:class:`~sxdm_stream.messages.PlanStart`, submitted by the bluesky
callback): the run describes the scan and measures the positions, frame ``image_id`` = point
index. Frames wait (at most ``hold_frames``) for their positions; when the detector's end
comes first, the series waits for the run's end at most ``join_timeout_s``. Frames whose
positions never came are placed by index and counted (``placed_by_index``); frames of a
series whose run never described it (its start document was missed) are rejected under
``no_scan_description``, never mixed into another run.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import zmq

from .analysis import ScanAnalysis, analyse
from .checkpoint import checkpoint_path, read_checkpoint
from .dectris import Decoder
from .drift import drift_for_scan, format_drift
from .errors import BadMessageError, ConfigError, SxdmError
from .join import HeldFrames, PlanBook, correlation_id_of, describes_scan
from .live_report import analysis_arrays, analysis_header, format_status
from .live_settings import LiveSettings, ScanOverride, setup_for_series
from .live_writer import ResultsWriter, SeriesResult
from .maps import MapSet
from .messages import ImageFrame, PlanEnd, PlanStart, PointPositions, SeriesEnd, SeriesStart
from .operando import OperandoRecord, operando_channels, operando_record
from .particles import format_particles
from .pipeline import ScanProcessor
from .publish import (SnapshotPublisher, decode_pixel_request, encode_operando_record,
                      encode_pixel_error, encode_pixel_reply, encode_snapshot)
from .roi_suggest import format_roi_suggestion
from .timeseries import OperandoSeriesFile

#: the names other modules import from here (the settings and results live beside)
__all__ = ["LiveProcessor", "LiveSettings", "ScanOverride", "SeriesResult", "format_status",
           "setup_for_series", "analysis_header", "analysis_arrays"]

log = logging.getLogger(__name__)


class ReceiverCounters:
    """What the receiver saw: messages, decode rejections by reason, drops."""

    def __init__(self) -> None:
        self.messages = 0
        self.images = 0
        self.rejected: Counter = Counter()
        self.dropped = 0


class LiveProcessor:
    """Receives DECTRIS streams from ``connect`` endpoints and keeps the maps of each series.

    Parameters
    ----------
    connect : endpoint(s) of the detector's PUSH socket, e.g. "tcp://127.0.0.1:31001"; None
        or [] for a processor fed only through :meth:`submit` (bluesky, replay).
    out : results file; checkpoints go beside it. A second series in the same run is written
        to ``<stem>_<series_id><suffix>`` unless ``out`` contains ``{series_id}``.
    publish : PUB endpoint for snapshots (None: no publishing).
    override : scan and geometry to use instead of the stream's own description.
    resume : load ``out``'s checkpoint and continue that series.
    max_series : stop by itself after this many completed series (None: run until stopped).
    serve : REP endpoint answering pixel requests (q histogram, rocking curve of one map
        pixel; see :mod:`sxdm_stream.publish`), None: no such service.
    operando : time-series file (:mod:`sxdm_stream.timeseries`): every completed series adds
        a record (summary, particles, electrochemistry), also published; an existing file is
        continued. None: records are only published.

    Only the last ``settings.keep_results`` results stay in :attr:`results`, so a processor
    running for hundreds of scans keeps a flat memory.
    """

    def __init__(self, connect, out: str | Path | None = None, publish: str | None = None,
                 settings: LiveSettings | None = None, override: ScanOverride | None = None,
                 resume: bool = False, max_series: int | None = None,
                 context: zmq.Context | None = None, serve: str | None = None,
                 operando: str | Path | None = None) -> None:
        self.endpoints = [] if connect is None else [connect] if isinstance(connect, str) else list(connect)
        self.out = Path(out) if out is not None else None
        self.settings = settings or LiveSettings()
        self.override = override
        self.max_series = max_series
        self._context = context or zmq.Context.instance()
        self._publisher = SnapshotPublisher(publish, self._context) if publish else None
        self.publish_endpoint = self._publisher.endpoint if self._publisher else None
        self._service = None
        if serve:
            self._service = self._context.socket(zmq.REP)
            self._service.setsockopt(zmq.LINGER, 0)
            self._service.bind(serve)
        self.serve_endpoint = self._service.getsockopt_string(zmq.LAST_ENDPOINT) if serve else None
        self._frames: queue.Queue = queue.Queue(self.settings.queue_size)
        self._stop = threading.Event()
        self._done = threading.Event()
        self.receiver = ReceiverCounters()
        self.rejected: Counter = Counter()        # worker-side rejections outside a scan
        self.results: collections.deque[SeriesResult] = collections.deque(
            maxlen=self.settings.keep_results)
        self._complete_count = 0
        self.operando = OperandoSeriesFile(operando) if operando is not None else None
        self.last_record: OperandoRecord | None = None
        self._channels: dict = {}
        self.processor: ScanProcessor | None = None
        self.series: SeriesStart | None = None
        self._series_index = 0
        self._reported: set[str] = set()
        self._latencies: collections.deque = collections.deque(maxlen=200_000)
        self._pending_received: list[float] = []
        self._snapshot_seq = 0
        self._snapshot_cost = 0.0
        self._last_snapshot = 0.0
        self._angles_written = 0
        self._started = time.perf_counter()
        self._threads: list[threading.Thread] = []
        self._processed_before = 0
        self._first_image_s: float | None = None
        self._finished: tuple = (None, None)
        self.last_analysis: ScanAnalysis | None = None
        self._drift_cache: tuple = (None, None)
        self._plans = PlanBook()
        self._plan = None                       # the control-system run joined to the series
        self._held = HeldFrames(self.settings.hold_frames)
        self._end_pending: float | None = None  # when the detector ended a series still joining
        self.placed_by_index = 0
        self.snapshot_errors = 0
        self._result_callbacks: list = []
        self.writer = ResultsWriter(self.settings, self.operando, self._record_result)
        if resume:
            self._resume()

    # ---- life cycle -------------------------------------------------------------------------
    def start(self) -> "LiveProcessor":
        loops = [("sxdm-worker", self._work_loop), ("sxdm-writer", self._write_loop)]
        if self.endpoints:
            loops.insert(0, ("sxdm-receiver", self._receive_loop))
        for name, target in loops:
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop receiving, finish what is queued, write results (the checkpoint stays)."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout)
        if self._publisher:
            self._publisher.close()
        self._threads = []

    def wait(self, timeout: float | None = None) -> bool:
        """Block until ``max_series`` series are complete (True) or the timeout passes."""
        return self._done.wait(timeout)

    @property
    def last_maps(self) -> MapSet | None:
        """The maps of the latest snapshot (None before the first)."""
        return self.last_analysis.maps if self.last_analysis is not None else None

    def on_result(self, callback) -> None:
        """Call ``callback(result: SeriesResult)`` when a series' final maps are written
        (on the writer thread; keep it short). Errors it raises are logged, not raised."""
        self._result_callbacks.append(callback)

    def __enter__(self) -> "LiveProcessor":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- receiver thread ----------------------------------------------------------------------
    def _receive_loop(self) -> None:
        sock = self._context.socket(zmq.PULL)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 64)
        for endpoint in self.endpoints:
            sock.connect(endpoint)
        decoder = Decoder()
        try:
            while not self._stop.is_set():
                if not sock.poll(100):
                    continue
                parts = sock.recv_multipart()
                received = time.perf_counter()
                self.receiver.messages += 1
                try:
                    message = decoder.decode(parts, received_s=received)
                except BadMessageError as exc:
                    self.receiver.rejected[exc.reason] += 1
                    self._report(exc.reason, f"rejected a message: {exc}")
                    continue
                self._enqueue(message)
        finally:
            sock.close()

    def submit(self, message) -> None:
        """Hand a decoded message (SeriesStart, ImageFrame, SeriesEnd, or the control system's
        PlanStart, PointPositions, PlanEnd) to the processor, from any thread: the entry of
        sources other than the DECTRIS receiver. Applies the back-pressure policy to images;
        other messages wait for room."""
        if not isinstance(message, (ImageFrame, SeriesStart, SeriesEnd, PlanStart, PointPositions,
                                    PlanEnd)):
            raise TypeError(f"submit takes a stream or plan message, not {type(message)}")
        self.receiver.messages += 1
        self._enqueue(message)

    def _enqueue(self, message) -> None:
        if isinstance(message, ImageFrame):
            self.receiver.images += 1
            if self.settings.policy == "drop":
                try:
                    self._frames.put_nowait(message)
                except queue.Full:
                    self.receiver.dropped += 1
                return
        while not self._stop.is_set():          # block policy, and start/end messages
            try:
                self._frames.put(message, timeout=0.1)
                return
            except queue.Full:
                if not any(t.name == "sxdm-worker" and t.is_alive() for t in self._threads):
                    raise RuntimeError("the live processor's worker is not running "
                                       "(not started, or stopped by an error: see the log)")

    # ---- worker thread ------------------------------------------------------------------------
    def _work_loop(self) -> None:
        try:
            while True:
                try:
                    message = self._frames.get(timeout=0.05)
                except queue.Empty:
                    if self._stop.is_set():
                        break
                    self._check_end_pending()
                    self._maybe_snapshot()
                    self._answer_requests()
                    continue
                self._handle(message)
                self._check_end_pending()
                self._maybe_snapshot()
                self._answer_requests()
            self._finish_series(complete=False)
        finally:
            self.writer.close()
            if self._service is not None:
                self._service.close()

    def _answer_requests(self) -> None:
        """Answer pending pixel requests (REP), from the worker that owns the sums."""
        while self._service is not None and self._service.poll(0):
            parts = self._service.recv_multipart()
            try:
                point = decode_pixel_request(parts)
                self._service.send_multipart(self._pixel_reply(point))
            except BadMessageError as exc:
                self._service.send_multipart(encode_pixel_error(str(exc)))

    def _pixel_reply(self, point: int) -> list[bytes]:
        p, series = self.processor, self.series
        if p is None:
            p, series = self._finished
        if p is None:
            return encode_pixel_error("no scan received yet")
        scan, setup = p.setup.scan, p.setup
        if not 0 <= point < scan.n_points:
            return encode_pixel_error(f"map pixel {point} is outside 0..{scan.n_points - 1}")
        moments = p.accumulator.moments[:, point].sum(axis=0)
        com = setup.q_ref + (moments[1:4] / moments[0] if moments[0] > 0 else np.nan)
        header = {"point": point, "series_id": series.series_id, "q_ref": setup.q_ref.tolist(),
                  "grid": setup.grid.describe() if setup.keep_histogram else None,
                  "com": np.asarray(com, float).tolist(), "rocking_angles": list(scan.rocking_angles),
                  "rocking_axis": scan.rocking_axis}
        arrays = {"rocking_curve": p.accumulator.moments[:, point, 0].copy(), "moments": moments}
        if setup.keep_histogram:
            arrays["histogram"] = p.accumulator.histogram[point].reshape(setup.grid.bins).copy()
        return encode_pixel_reply(header, arrays)

    def _handle(self, message) -> None:
        try:
            if isinstance(message, ImageFrame):
                self._on_image(message)
            elif isinstance(message, SeriesStart):
                self._on_start(message)
            elif isinstance(message, SeriesEnd):
                self._on_end(message)
            elif isinstance(message, PointPositions):
                self._on_positions(message)
            elif isinstance(message, PlanStart):
                self._on_plan_start(message)
            elif isinstance(message, PlanEnd):
                self._on_plan_end(message)
        except SxdmError as exc:                 # a bad start message, an unwritable file...
            reason = getattr(exc, "reason", "error")
            self.rejected[reason] += 1
            self._report(reason, str(exc), level=logging.ERROR)
        except Exception:                         # a bug of ours: keep running, keep the sums
            self.rejected["internal_error"] += 1
            if "internal_error" not in self._reported:
                self._reported.add("internal_error")
                log.exception("internal error handling %s (counted under 'internal_error'; "
                              "the processor goes on)", type(message).__name__)

    def _on_start(self, start: SeriesStart) -> None:
        if (self.processor is not None and self.series is not None
                and start.series_unique_id is not None
                and start.series_unique_id == self.series.series_unique_id):
            log.info("series %s restarted; continuing its scan", start.series_id)
            self.series = start
            return
        self._finish_series(complete=False)
        correlation_id = correlation_id_of(start.sxdm)
        self.series, self._plan = start, self._plans.get(correlation_id)
        self._series_index += 1
        self._angles_written = 0
        if self.override is None and self._plan is None and correlation_id is not None \
                and not describes_scan(start.sxdm):
            log.info("series %s waits for the run with correlation id %s to describe its scan",
                     start.series_id, correlation_id)
            return                                # images are held until the run starts
        try:
            self._begin_series()
        except SxdmError:                         # no usable description: nothing is current
            self.series, self._plan = None, None
            raise

    def _begin_series(self) -> None:
        start, plan = self.series, self._plan
        setup = setup_for_series(start, self.settings.accumulation, self.override,
                                 plan.sxdm if plan is not None else None)
        self.processor = ScanProcessor(setup, self.settings.mask_fraction, self.settings.d_ref)
        self._channels = {**operando_channels(plan.sxdm if plan is not None else None),
                          **operando_channels(start.sxdm)}
        scan = setup.scan
        log.info("series %s (%s): %dx%d map, %d rocking angles, %d frames%s", start.series_id,
                 start.series_unique_id, *scan.shape, scan.n_angles, scan.n_frames,
                 f", joined to run {plan.run_uid}" if plan is not None else "")

    def _on_image(self, image: ImageFrame) -> None:
        if self._first_image_s is None:
            self._first_image_s = image.received_s
        if self.series is None:
            self._reject("image_before_start", f"image {image.image_id} of series "
                         f"{image.series_id} arrived before any series start")
            return
        if image.series_id != self.series.series_id or (
                image.series_unique_id and self.series.series_unique_id
                and image.series_unique_id != self.series.series_unique_id):
            self._reject("unknown_series", f"image {image.image_id} belongs to series "
                         f"{image.series_id}, the current series is {self.series.series_id}")
            return
        if self.processor is None:                # waiting for the run's description
            for lost in self._held.hold(image):
                self._reject_undescribed(1, f"image {lost.image_id} pushed out of the "
                                         f"{self._held.limit} frames held")
            return
        positions = image.positions
        if positions is None and self._plan is not None:
            positions = self._plan.positions.pop(int(image.image_id), None)
            if positions is None and not self._plan.ended:
                for early in self._held.hold(image):   # positions late: the oldest go by index
                    self._add(early, None)
                return
        self._add(image, positions)

    def _add(self, image: ImageFrame, positions) -> None:
        if positions is None and self._plan is not None:
            self.placed_by_index += 1
            self._report("placed_by_index", f"image {image.image_id}: no positions from run "
                         f"{self._plan.run_uid}; placed by its index")
        if self.processor.add(image.image_id, image.data, monitor=image.monitor,
                              positions=positions):
            self._pending_received.append(image.received_s)
        if self.processor.angles_done > self._angles_written:
            self._angles_written = self.processor.angles_done
            self._schedule_write(complete=False)

    def _reject_undescribed(self, n: int, what: str) -> None:
        correlation_id = correlation_id_of(self.series.sxdm)
        self.rejected["no_scan_description"] += n
        self._report("no_scan_description", f"series {self.series.series_id}: {what}; no run "
                     f"with correlation id {correlation_id} described its scan (was its start "
                     "document missed?): rejected, never mixed into another run")

    def _on_end(self, end: SeriesEnd) -> None:
        if self.series is None or end.series_id != self.series.series_id:
            self._reject("unknown_series", f"end of series {end.series_id}, which is not current")
            return
        if self.processor is None or (len(self._held) and not self._plan.ended):
            self._end_pending = time.monotonic()  # the run's description or positions are late
            return
        self._finish_series(complete=True)

    # ---- the control system's plane -----------------------------------------------------------
    def _on_plan_start(self, message: PlanStart) -> None:
        plan = self._plans.start(message)
        if self.series is None or correlation_id_of(self.series.sxdm) != message.correlation_id:
            return
        self._plan = plan
        if self.processor is None:
            try:
                self._begin_series()
            except SxdmError:                     # the run's description is unusable
                self._finish_series(complete=False)
                raise
            for image in self._held.release():
                self._on_image(image)

    def _on_positions(self, message: PointPositions) -> None:
        plan = self._plans.add_positions(message)
        if plan is None:
            self._reject("unknown_run", f"positions of frame {message.frame_index} for correlation "
                         f"id {message.correlation_id}, a run that never started here")
            return
        if plan is self._plan and self.processor is not None:
            image = self._held.claim(message.frame_index)
            if image is not None:
                self._add(image, plan.positions.pop(int(message.frame_index)))

    def _on_plan_end(self, message: PlanEnd) -> None:
        plan = self._plans.end(message)
        if plan is not None and plan is self._plan and self.processor is not None:
            for image, positions in self._held.claim_with_positions(plan):
                self._add(image, positions)

    def _check_end_pending(self) -> None:
        """Finish a series the detector ended once its run caught up, or after the timeout."""
        if self._end_pending is None:
            return
        caught_up = self.processor is not None and (not len(self._held) or self._plan.ended)
        if caught_up or time.monotonic() - self._end_pending > self.settings.join_timeout_s:
            self._finish_series(complete=True)

    def _finish_series(self, complete: bool) -> None:
        self._end_pending = None
        if self.processor is None:
            held = self._held.release()
            if held:
                self._reject_undescribed(len(held), f"{len(held)} images")
            self.series, self._plan = None, None
            return
        for image in self._held.release():
            self._add(image, None)
        if self._plan is not None:
            self._plans.discard(self._plan.correlation_id)
            self._plan = None
        try:
            self._snapshot(complete=complete)
        except Exception:                         # the sums are still written below
            self.snapshot_errors += 1
            log.exception("could not derive the final snapshot of series %s", self.series.series_id)
        else:
            if complete:
                try:
                    self._add_operando_record()
                except Exception:                 # the record is lost, the maps are not
                    self.snapshot_errors += 1
                    log.exception("could not make the operando record of series %s",
                                  self.series.series_id)
        self._schedule_write(complete=complete, last=True)
        self._processed_before += self.processor.counters.processed
        self.rejected.update(self.processor.counters.rejected)
        self._finished = (self.processor, self.series)   # still answers pixel requests
        self.processor, self.series = None, None
        if complete and self.max_series is not None and self._completed() >= self.max_series:
            self._stop.set()

    def _completed(self) -> int:
        return self._complete_count + self.writer.pending_complete()

    def _add_operando_record(self) -> None:
        """The record of the series just completed: published now, written by the writer."""
        series, analysis = self.series, self.last_analysis
        record = operando_record(analysis.maps, time.time(), series.series_id,
                                 series_unique_id=series.series_unique_id,
                                 correlation_id=correlation_id_of(series.sxdm),
                                 channels=self._channels, particles=analysis.particles.records)
        self.last_record = record
        if self._publisher is not None:
            self._publisher.send(encode_operando_record(record.to_json()))
        self.writer.add_record(record)

    def _reject(self, reason: str, message: str) -> None:
        self.rejected[reason] += 1
        self._report(reason, message)

    def _report(self, reason: str, message: str, level: int = logging.WARNING) -> None:
        if reason not in self._reported:
            self._reported.add(reason)
            log.log(level, "%s (further occurrences of %r are only counted)", message, reason)

    # ---- snapshots ----------------------------------------------------------------------------
    def _maybe_snapshot(self) -> None:
        if self.processor is None or not self._pending_received:
            return
        interval = max(1.0 / self.settings.snapshot_hz, 5.0 * self._snapshot_cost)
        if time.perf_counter() - self._last_snapshot >= interval:
            try:
                self._snapshot(complete=False)
            except Exception:                     # a bug in the analysis must not stop the sums
                self._last_snapshot = time.perf_counter()
                self.snapshot_errors += 1
                if self.snapshot_errors == 1:
                    log.exception("could not derive a snapshot (the processor goes on; further "
                                  "failures are only counted)")

    def _snapshot(self, complete: bool) -> None:
        if self.processor is None:
            return
        t0 = time.perf_counter()
        p = self.processor
        analysis = analyse(p.accumulator, self.settings.analysis,
                           angles_done=None if complete else p.angles_done, final=complete,
                           drift=self._drift_for(p, complete))
        maps = analysis.maps
        if complete:
            self._log_analysis(analysis)
        if self._publisher is not None:
            self._snapshot_seq += 1
            info = {"seq": self._snapshot_seq, "series_id": self.series.series_id,
                    "series_unique_id": self.series.series_unique_id, "complete": complete,
                    "scan": p.setup.scan.describe(), "stats": self.status(),
                    **analysis_header(analysis)}
            if self._channels:
                info["operando"] = {k: {"value": v, "units": u} for k, (v, u) in self._channels.items()}
            self._publisher.send(encode_snapshot(maps, info, analysis_arrays(analysis)))
        now = time.perf_counter()
        self._latencies.extend(now - r for r in self._pending_received)
        self._pending_received.clear()
        self._last_snapshot = now
        self._snapshot_cost = now - t0
        self.last_analysis = analysis

    def _drift_for(self, p: ScanProcessor, complete: bool):
        """The drift estimate, made once per finished rocking angle (it costs ~0.2 s on a
        200x200 map of 100 angles), not at every snapshot."""
        if self.settings.drift.mode != "auto" or not (complete or p.angles_done):
            return None                           # off, or no rocking angle finished yet
        key = (self._series_index, None if complete else p.angles_done)
        if self._drift_cache[0] != key:
            done = None if complete else p.angles_done
            self._drift_cache = (key, drift_for_scan(p.accumulator.moments, p.setup.scan,
                                                     self.settings.drift, done))
        return self._drift_cache[1]

    def _log_analysis(self, analysis: ScanAnalysis) -> None:
        sid = self.series.series_id
        if analysis.drift is not None:
            log.info("series %s: %s", sid, format_drift(analysis.drift))
        if len(analysis.particles):
            log.info("series %s: %s", sid, format_particles(analysis.particles))
        if analysis.roi_suggestion is not None and len(analysis.roi_suggestion.peaks) > 1:
            log.info("series %s: several crystals diffract in q: %s", sid,
                     format_roi_suggestion(analysis.roi_suggestion))

    # ---- writer thread ------------------------------------------------------------------------
    def _schedule_write(self, complete: bool, last: bool = False) -> None:
        if self.out is None and not last:
            return
        self.writer.schedule(self.processor, self.series, complete, last, self._results_path(),
                             self.status())

    def _results_path(self) -> Path | None:
        if self.out is None:
            return None
        if "{series_id}" in self.out.name:
            return self.out.with_name(self.out.name.format(series_id=self.series.series_id))
        if self._series_index <= 1:
            return self.out
        return self.out.with_name(f"{self.out.stem}_{self.series.series_id}{self.out.suffix}")

    def _write_loop(self) -> None:
        try:
            self.writer.run()
        finally:
            self._done.set()

    @property
    def write_errors(self) -> int:
        """Results, checkpoint and operando writes (or analyses) that failed."""
        return self.writer.errors

    def _record_result(self, result: SeriesResult) -> None:
        """A finished series (writer thread): keep it, tell the callbacks, stop if enough."""
        self.results.append(result)
        self._complete_count += int(result.complete)
        for callback in self._result_callbacks:
            try:
                callback(result)
            except Exception:                      # a sink's bug must not stop the processor
                log.exception("result callback %r failed for series %s", callback, result.series_id)
        if result.complete and self.max_series is not None and \
                self._complete_count >= self.max_series:
            self._stop.set()

    # ---- resume -------------------------------------------------------------------------------
    def _resume(self) -> None:
        if self.out is None:
            raise ConfigError("--resume needs --out: the checkpoint lives beside the results file")
        path = checkpoint_path(self.out)
        if not path.exists():
            log.warning("no checkpoint at %s: starting afresh", path)
            return
        resumed = read_checkpoint(path, self.settings.mask_fraction, self.settings.d_ref)
        self.processor = resumed.processor
        self.series = SeriesStart(series_id=resumed.series_id,
                                  series_unique_id=resumed.series_unique_id)
        self._series_index = 1
        self._angles_written = resumed.processor.angles_done
        log.info("resumed series %s from %s: %d of %d frames already in the sums",
                 resumed.series_id, path, int(resumed.processor.included.sum()),
                 resumed.processor.setup.scan.n_frames)

    # ---- status -------------------------------------------------------------------------------
    def status(self) -> dict:
        """Live statistics: counts, rates, lag, latency, progress of the current scan."""
        p = self.processor
        elapsed = time.perf_counter() - (self._first_image_s or self._started)
        worker_rejected = Counter(self.rejected)
        processed = self._processed_before + (p.counters.processed if p is not None else 0)
        if p is not None:
            worker_rejected.update(p.counters.rejected)
        lat = np.fromiter(self._latencies, float) if self._latencies else np.zeros(0)
        return {
            "messages": self.receiver.messages, "received": self.receiver.images,
            "processed": processed,
            "rejected": dict(worker_rejected + self.receiver.rejected),
            "dropped": self.receiver.dropped, "queued": self._frames.qsize(),
            "frames_per_s": processed / elapsed if elapsed > 0 else 0.0,
            "latency_p50_s": float(np.percentile(lat, 50)) if lat.size else None,
            "latency_p99_s": float(np.percentile(lat, 99)) if lat.size else None,
            "series_id": self.series.series_id if self.series else None,
            "progress": (int(p.included.sum()), p.setup.scan.n_frames) if p else None,
            "held": len(self._held), "placed_by_index": self.placed_by_index,
            "completed": self._complete_count,
        }
