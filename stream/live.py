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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zmq

from .accumulate import AccumulationSettings, ScanSetup
from .analysis import AnalysisSettings, ScanAnalysis, analyse
from .checkpoint import checkpoint_path, read_checkpoint, write_checkpoint
from .dectris import Decoder
from .drift import DriftSettings, drift_for_scan, format_drift
from .errors import BadMessageError, ConfigError, SxdmError
from .geometry import Geometry, geometry_from_description
from .hdf5 import write_results
from .join import HeldFrames, PlanBook, correlation_id_of, describes_scan
from .maps import DEFAULT_MASK_FRACTION, MapSet, map_arrays
from .messages import ImageFrame, PlanEnd, PlanStart, PointPositions, SeriesEnd, SeriesStart
from .operando import OperandoRecord, operando_channels, operando_record
from .particles import ParticleSettings, format_particles
from .pipeline import ScanProcessor
from .roi_suggest import format_roi_suggestion
from .publish import (SnapshotPublisher, decode_pixel_request, encode_operando_record,
                      encode_pixel_error, encode_pixel_reply, encode_snapshot)
from .scan import ScanDescription
from .timeseries import OperandoSeriesFile

log = logging.getLogger(__name__)

POLICIES = ("block", "drop")


@dataclass(frozen=True)
class LiveSettings:
    """How the live processor runs. ``snapshot_hz`` bounds the snapshot rate; snapshots also
    never take more than ~20% of the worker's time (the interval grows on big maps).
    ``hold_frames`` bounds the frames kept waiting for positions from the control system
    (each a full detector frame: 512 Maxipix frames are 0.5 GB); ``join_timeout_s`` is how
    long a series ended by the detector waits for its run's remaining positions."""

    accumulation: AccumulationSettings = field(default_factory=AccumulationSettings)
    mask_fraction: float = DEFAULT_MASK_FRACTION
    d_ref: float | None = None
    policy: str = "block"
    queue_size: int = 256
    snapshot_hz: float = 10.0
    checkpoints: bool = True
    hold_frames: int = 512
    join_timeout_s: float = 10.0
    keep_results: int = 16
    particles: ParticleSettings = field(default_factory=ParticleSettings)
    drift: DriftSettings = field(default_factory=DriftSettings)
    fits: bool = False

    @classmethod
    def from_config(cls, config, **overrides) -> "LiveSettings":
        """The settings a :class:`sxdm_stream.config.Config` asks for (accumulation, maps,
        drift, particles, fits); ``overrides`` (policy, checkpoints...) win."""
        values = dict(accumulation=config.accumulation, mask_fraction=config.maps.mask_fraction,
                      d_ref=config.maps.d_ref_a or None, drift=config.drift,
                      particles=config.particles, fits=config.fits.enabled)
        return cls(**{**values, **overrides})

    @property
    def analysis(self) -> AnalysisSettings:
        """What is derived from the sums at each snapshot and write."""
        return AnalysisSettings(self.mask_fraction, self.d_ref, self.drift, self.particles,
                                self.fits)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ConfigError(f"back-pressure policy {self.policy!r} is not one of {POLICIES}")
        if self.queue_size < 1 or self.snapshot_hz <= 0 or self.hold_frames < 1:
            raise ConfigError("queue_size, snapshot_hz and hold_frames must be positive")
        if self.join_timeout_s < 0:
            raise ConfigError("join_timeout_s must not be negative")
        if self.keep_results < 1:
            raise ConfigError("keep_results must be at least 1")


@dataclass(frozen=True)
class ScanOverride:
    """Scan and geometry given by the user (``--scan-file``) for detectors that send none."""

    scan: ScanDescription
    geometry: Geometry


@dataclass
class SeriesResult:
    """The final maps of one series, with what identifies it."""

    series_id: int
    series_unique_id: str | None
    path: Path | None
    maps: MapSet
    complete: bool
    scan: ScanDescription | None = None
    correlation_id: str | None = None
    frames: dict = field(default_factory=dict)   # received, processed, rejected, dropped
    analysis: ScanAnalysis | None = None         # drift, particles, q-ROI maps, suggestion, fits


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
        self._writes: queue.Queue = queue.Queue()
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
        self.write_errors = 0
        self._processed_before = 0
        self._first_image_s: float | None = None
        self._finished: tuple = (None, None)
        self.last_maps: MapSet | None = None
        self.last_analysis: ScanAnalysis | None = None
        self._drift_cache: tuple = (None, None)
        self._plans = PlanBook()
        self._plan = None                       # the control-system run joined to the series
        self._held = HeldFrames(self.settings.hold_frames)
        self._end_pending: float | None = None  # when the detector ended a series still joining
        self.placed_by_index = 0
        self.snapshot_errors = 0
        self._result_callbacks: list = []
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
            self._writes.put(None)
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
        if self.processor.add(image.image_id, image.data, monitor=image.monitor, positions=positions):
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
                self._add_operando_record()
        self._schedule_write(complete=complete, last=True)
        self._processed_before += self.processor.counters.processed
        self.rejected.update(self.processor.counters.rejected)
        self._finished = (self.processor, self.series)   # still answers pixel requests
        self.processor, self.series = None, None
        if complete and self.max_series is not None and self._completed() >= self.max_series:
            self._stop.set()

    def _completed(self) -> int:
        return self._complete_count + sum(
            1 for job in list(self._writes.queue) if job is not None and job.get("last")
            and job["complete"])

    def _add_operando_record(self) -> None:
        """The record of the series just completed: published now, written by the writer."""
        series, maps = self.series, self.last_analysis.maps
        particles = self.last_analysis.particles
        record = operando_record(maps, time.time(), series.series_id,
                                 series_unique_id=series.series_unique_id,
                                 correlation_id=correlation_id_of(series.sxdm),
                                 channels=self._channels, particles=particles.records)
        self.last_record = record
        if self._publisher is not None:
            self._publisher.send(encode_operando_record(record.to_json()))
        if self.operando is not None:
            self._writes.put({"operando": record})

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
        self.last_maps, self.last_analysis = maps, analysis

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
        if not last and self._writes.qsize() > 0:
            return                                # the writer is behind: the next angle will do
        p = self.processor
        copy = ScanProcessor(p.setup, p.mask_fraction, p.d_ref)
        copy.accumulator = p.accumulator.copy()
        copy.included = p.included.copy()
        copy.counters.received, copy.counters.processed = p.counters.received, p.counters.processed
        copy.counters.rejected = Counter(p.counters.rejected)
        copy.angles_done = p.angles_done
        self._writes.put({"processor": copy, "series": self.series, "complete": complete,
                          "last": last, "path": self._results_path(), "stats": self.status()})

    def _results_path(self) -> Path | None:
        if self.out is None:
            return None
        if "{series_id}" in self.out.name:
            return self.out.with_name(self.out.name.format(series_id=self.series.series_id))
        if self._series_index <= 1:
            return self.out
        return self.out.with_name(f"{self.out.stem}_{self.series.series_id}{self.out.suffix}")

    def _write_loop(self) -> None:
        while True:
            job = self._writes.get()
            if job is None:
                break
            if "operando" in job:
                self._append_operando(job["operando"])
                continue
            analysis = None
            try:
                analysis = self._analyse(job)
            except Exception:                     # a bug in the analysis: the maps still go out
                self.write_errors += 1
                log.exception("could not analyse series %s; writing its maps without drift, "
                              "particles, q-ROIs or fits", job["series"].series_id)
            try:
                self._write(job, analysis)
            except (OSError, SxdmError) as exc:
                self.write_errors += 1
                log.error("could not write results: %s", exc)
            if job["last"]:
                self._record_result(job, analysis)
        self._done.set()

    def _analyse(self, job: dict) -> ScanAnalysis | None:
        if job["path"] is None and not job["last"]:
            return None
        p = job["processor"]
        final = job["last"] and job["complete"]
        return analyse(p.accumulator, self.settings.analysis,
                       angles_done=None if final else p.angles_done, final=final)

    def _write(self, job: dict, analysis: ScanAnalysis | None) -> None:
        path, p, series = job["path"], job["processor"], job["series"]
        if path is None:
            return
        status = "complete" if job["complete"] else ("incomplete" if job["last"] else "running")
        stats = job["stats"]
        attrs = {"status": status, "series_id": series.series_id,
                 "series_unique_id": series.series_unique_id or "",
                 "frames_received": p.counters.received, "frames_processed": p.counters.processed,
                 "frames_rejected": p.counters.n_rejected, "frames_dropped": stats["dropped"]}
        maps = analysis.maps if analysis is not None else p.maps()
        write_results(path, maps, p.setup, p.accumulator, extra_attrs=attrs,
                      hits=p.setup.hits() if p.setup.keep_histogram and job["last"] else None,
                      analysis=analysis)
        ckpt = checkpoint_path(path)
        if job["complete"]:
            ckpt.unlink(missing_ok=True)          # the results file now holds everything
        elif self.settings.checkpoints:
            write_checkpoint(ckpt, p, series.series_id, series.series_unique_id)

    def _append_operando(self, record: OperandoRecord) -> None:
        try:
            self.operando.append(record)
        except (OSError, SxdmError) as exc:
            self.write_errors += 1
            log.error("could not add series %s to the operando series %s: %s",
                      record.series_id, self.operando.path, exc)

    def _record_result(self, job: dict, analysis: ScanAnalysis | None) -> None:
        p, series = job["processor"], job["series"]
        frames = {"received": p.counters.received, "processed": p.counters.processed,
                  "rejected": p.counters.n_rejected, "dropped": job["stats"]["dropped"]}
        maps = analysis.maps if analysis is not None else p.maps()
        result = SeriesResult(series.series_id, series.series_unique_id, job["path"], maps,
                              job["complete"], p.setup.scan, correlation_id_of(series.sxdm), frames,
                              analysis)
        self.results.append(result)
        self._complete_count += int(result.complete)
        for callback in self._result_callbacks:
            try:
                callback(result)
            except Exception:                      # a sink's bug must not stop the processor
                log.exception("result callback %r failed for series %s", callback, series.series_id)
        if job["complete"] and self.max_series is not None and \
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



def setup_for_series(start: SeriesStart, settings: AccumulationSettings,
                     override: ScanOverride | None, plan_block=None) -> ScanSetup:
    """The scan set-up of a series: from ``override`` if given, else from the start message's
    sxdm block, else from the joined run's block (``plan_block``); the detector's pixel mask
    is used unless the geometry brings its own."""
    if override is not None:
        geometry, scan = override.geometry, override.scan
        if geometry.detector.mask is None and start.pixel_mask is not None:
            from dataclasses import replace
            geometry = Geometry(replace(geometry.detector, mask=start.pixel_mask),
                                geometry.energy_ev, geometry.diffractometer)
    else:
        block = start.sxdm if describes_scan(start.sxdm) else plan_block
        if not describes_scan(block):
            raise BadMessageError(
                f"series {start.series_id} carries no scan description (user_data 'sxdm' block) "
                "and none was given with --scan-file", "no_scan_description")
        scan = ScanDescription.from_description(block["scan"])
        geometry = geometry_from_description(block["geometry"], start.pixel_mask)
    if start.image_shape is not None and tuple(start.image_shape) != tuple(geometry.detector.shape):
        raise BadMessageError(f"the detector sends {start.image_shape} images, the geometry "
                              f"expects {geometry.detector.shape}", "size_mismatch")
    if start.number_of_images not in (None, scan.n_frames):
        log.warning("the detector announces %s images, the scan has %d frames",
                    start.number_of_images, scan.n_frames)
    return ScanSetup(geometry, scan, settings)


def format_status(status: dict) -> str:
    """One progress line from :meth:`LiveProcessor.status`."""
    progress = status.get("progress")
    where = (f"series {status['series_id']}: {progress[0]}/{progress[1]} frames "
             f"({100.0 * progress[0] / max(progress[1], 1):.0f}%)" if progress else "waiting for a series")
    lat = status.get("latency_p99_s")
    rejected = sum(status["rejected"].values())
    return (f"{where} | {status['frames_per_s']:.0f} frames/s | processed {status['processed']} "
            f"| rejected {rejected}{' ' + str(status['rejected']) if rejected else ''} "
            f"| dropped {status['dropped']} | queued {status['queued']}"
            + (f" | latency p99 {1000 * lat:.0f} ms" if lat is not None else "")
            + (f" | waiting for positions {status['held']}" if status.get("held") else ""))


#: the q-ROI maps a snapshot carries (as ``roi.<name>.<map>``)
SNAPSHOT_ROI_MAPS = ("intensity", "d_spacing", "strain", "tilt_altitude", "mask")


def analysis_header(analysis: ScanAnalysis) -> dict:
    """The snapshot header fields of an analysis (JSON-able)."""
    header = {"particles": analysis.particles.to_records(),
              "q_rois": {roi.name: {**roi.describe(), "d_ref": analysis.roi_maps[roi.name].d_ref}
                         for roi in analysis.rois}}
    if analysis.drift is not None:
        header["drift"] = analysis.drift.to_dict()
    if analysis.roi_suggestion is not None:
        header["roi_suggestion"] = analysis.roi_suggestion.describe()
    return header


def analysis_arrays(analysis: ScanAnalysis) -> dict[str, np.ndarray]:
    """The snapshot arrays of an analysis: particle labels and the main q-ROI maps."""
    arrays = {"particle_labels": np.asarray(analysis.particles.labels, np.int32)}
    for name, maps in analysis.roi_maps.items():
        values = map_arrays(maps)
        for field_name in SNAPSHOT_ROI_MAPS:
            value = values[field_name]
            arrays[f"roi.{name}.{field_name}"] = value.astype(np.uint8) if field_name == "mask" else value
    return arrays
