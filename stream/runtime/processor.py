"""The live processor: a DECTRIS stream in, maps out while the scan runs.

Three threads, joined by bounded queues, so that decoding, accumulation and file writing
overlap on two cores (ZeroMQ, the decompressors, numba kernels and h5py release the GIL):

* receiver (:mod:`~sxdm_stream.runtime.receiver`): PULL socket(s) -> decode (stream v1 or v2,
  per message; images' pixels decompressed by ``[live] decode_threads`` threads) -> frame
  queue, in arrival order;
* worker (here): series bookkeeping, join frame -> map pixel, accumulate, snapshots at a
  bounded rate (:mod:`~sxdm_stream.runtime.snapshots`), pixel requests
  (:class:`~sxdm_stream.sinks.publish.PixelService`);
* writer (:mod:`~sxdm_stream.runtime.writer`): results file at the end of each rocking angle and
  of the scan, checkpoints.

Back-pressure (declared, never silent): the frame queue is bounded in messages and in bytes
of decoded images. With ``policy="block"`` (default) a full queue stops the receiver,
ZeroMQ's queues fill and the detector's PUSH socket waits: nothing is lost, the sender slows
down. With ``policy="drop"`` images that find the queue full are dropped and counted. Series
start and end messages are never dropped.

Every message is accounted for: decoded or rejected (by reason) at the receiver; every image
processed, rejected (by reason) or dropped. A series is (``series_id``,
``series_unique_id``): an end, or an image, of the same id but another unique id belongs to
another series. A scan is ``complete`` only when every one of its frames is in the sums;
otherwise its results say ``incomplete`` with the frames missing per rocking angle.

Supervision (:mod:`~sxdm_stream.runtime.supervisor`): an exception from one message never stops
a loop (``internal_error``, counted per loop). If a thread ends anyway, or the scan cannot be
processed at all (a q histogram over the memory budget), :attr:`LiveProcessor.failure` says
why, the processor stops and writes what it has as incomplete.

Two planes: a series whose start carries only a correlation id is joined to the control
system's run with that id (:class:`~sxdm_stream.messages.PlanStart`, submitted by the bluesky
callback): the run describes the scan and measures the positions, frame ``image_id`` = point
index. Frames wait (at most ``hold_frames``) for their positions; when the detector's end
comes first, the series waits for the run's end at most ``join_timeout_s``. Frames whose
positions never came are placed by index and counted (``placed_by_index``); frames of a
series whose run never described it (its start document was missed) are rejected under
``no_scan_description``, never mixed into another run.

=====================  =================================================================
thread                 owns
=====================  =================================================================
constructor / caller   sockets until :meth:`start`; :meth:`stop` (joins, then takes over
                       the worker's state and the writer's queue of a thread that died)
receiver               the PULL socket and decoder (:class:`Receiver`)
worker                 ``processor``, ``series``, the plan book and held frames, the
                       series counters (``rejected``, ``quirks``, ``placed_by_index``),
                       snapshots, the pixel service
writer                 results files, ``results``, the result counts, callbacks
any                    :meth:`submit`, :meth:`status` (copies; reads ``series`` and
                       ``processor`` once), the queues and counters (locked)
=====================  =================================================================
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from pathlib import Path

import zmq

from sxdm_stream.analysis.operando import OperandoRecord
from sxdm_stream.analysis.scan_analysis import ScanAnalysis
from sxdm_stream.config import Config
from sxdm_stream.core.maps import MapSet
from sxdm_stream.errors import ConfigError
from sxdm_stream.messages import (ImageFrame, LiveStatus, PlanEnd, PlanStart, PointPositions,
                                  SeriesEnd, SeriesStart)
from sxdm_stream.runtime.queues import BoundedQueue
from sxdm_stream.runtime.receiver import Receiver, ReceiverCounters
from sxdm_stream.runtime.report import analysis_arrays, analysis_header, format_status
from sxdm_stream.runtime.series import SeriesWorker
from sxdm_stream.runtime.settings import LiveSettings, ScanOverride, setup_for_series
from sxdm_stream.runtime.snapshots import Snapshots
from sxdm_stream.runtime.supervisor import InternalErrors, ThreadSupervisor
from sxdm_stream.runtime.writer import ResultsWriter, SeriesResult
from sxdm_stream.sinks.checkpoint import checkpoint_path, read_checkpoint
from sxdm_stream.sinks.paths import ResultPaths, check_output
from sxdm_stream.sinks.publish import PixelService, SnapshotPublisher
from sxdm_stream.sinks.timeseries import OperandoSeriesFile

#: the names other modules import from here (the settings and results live beside)
__all__ = ["LiveProcessor", "LiveSettings", "ScanOverride", "SeriesResult", "format_status",
           "setup_for_series", "analysis_header", "analysis_arrays"]

log = logging.getLogger(__name__)

RECEIVER, WORKER, WRITER = "sxdm-receiver", "sxdm-worker", "sxdm-writer"


class LiveProcessor:
    """Receives DECTRIS streams from ``connect`` endpoints and keeps the maps of each series.

    Parameters
    ----------
    connect : endpoint(s) of the detector's PUSH socket, e.g. "tcp://127.0.0.1:31001"; None
        or [] for a processor fed only through :meth:`submit` (bluesky, replay).
    out : results file; checkpoints go beside it. A second series in the same run is written
        to ``<stem>_<series_id><suffix>`` unless ``out`` contains ``{series_id}`` (and/or
        ``{series_unique_id}``); a name already taken gets the series' unique id
        (:class:`~sxdm_stream.sinks.paths.ResultPaths`). Its folder must be writable and
        ``out`` must not exist (ConfigError), unless ``resume`` or ``overwrite``.
    publish : PUB endpoint for snapshots (None: no publishing).
    override : scan and geometry to use instead of the stream's own description.
    resume : load ``out``'s checkpoint and continue that series.
    max_series : stop by itself after this many series ended (None: run until stopped).
    serve : REP endpoint answering pixel requests (q histogram, rocking curve of one map
        pixel; see :mod:`sxdm_stream.sinks.publish`), None: no such service.
    operando : time-series file (:mod:`sxdm_stream.sinks.timeseries`): every ended series adds
        a record (summary, particles, electrochemistry), also published; an existing file is
        continued. None: records are only published.
    overwrite : an existing results file may be replaced.

    Only the last ``settings.live.keep_results`` results stay in :attr:`results`, so a processor
    running for hundreds of scans keeps a flat memory. A bad endpoint, one that cannot be
    bound, or an output that cannot be written raises ConfigError here, before anything runs.
    """

    def __init__(self, connect, out: str | Path | None = None, publish: str | None = None,
                 settings: Config | None = None, override: ScanOverride | None = None,
                 resume: bool = False, max_series: int | None = None,
                 context: zmq.Context | None = None, serve: str | None = None,
                 operando: str | Path | None = None, overwrite: bool = False) -> None:
        self.endpoints = [] if connect is None else [connect] if isinstance(connect, str) else list(connect)
        self.out = Path(out) if out is not None else None
        self.settings = settings or Config()
        if self.out is not None:
            check_output(self.out, overwrite, resume)
        self._context = context or zmq.Context.instance()
        self._stop, self._done = threading.Event(), threading.Event()
        self.internal = InternalErrors()
        #: why the run stopped by itself (a thread died, no scan can be processed), or None
        self.failure: str | None = None
        self.failure_error: BaseException | None = None
        self._supervisor = ThreadSupervisor(self._on_thread_death, self._stop.is_set)
        self._frames = BoundedQueue(self.settings.live.frame_queue_messages,
                                    int(self.settings.live.frame_queue_mib * 2**20))
        self.receiver = ReceiverCounters()
        self.results: collections.deque[SeriesResult] = collections.deque(
            maxlen=self.settings.live.keep_results)
        self._ended_count = self._complete_count = self._finished_count = 0
        self._started = time.perf_counter()
        self.operando = OperandoSeriesFile(operando) if operando is not None else None
        self._result_callbacks: list = []
        self.writer = ResultsWriter(self.settings, self.operando, self._record_result,
                                    self.internal)
        self._paths = ResultPaths(self.out, overwrite)
        checkpoint = self._checkpoint(overwrite) if resume else None
        self._open_sockets(publish, serve)
        self.worker = SeriesWorker(self.settings, override, self._paths, self._snapshots,
                                   self.writer, self.internal, self._stop, max_series, self._fail,
                                   self._status_on_wire, lambda: self.receiver.dropped)
        if checkpoint is not None:
            self.worker.resume(checkpoint.processor, checkpoint.series_id,
                               checkpoint.series_unique_id, self.out)

    def _open_sockets(self, publish: str | None, serve: str | None) -> None:
        """Connect and bind now, so that a bad endpoint is a one-line error at start."""
        opened: list = []
        try:
            publisher = _endpoint("--publish", publish, lambda e: SnapshotPublisher(e, self._context))
            opened.append(publisher)
            self._service = _endpoint("--serve", serve, lambda e: PixelService(e, self._context))
            opened.append(self._service)
            self._pull = None
            if self.endpoints:
                self._pull = self._context.socket(zmq.PULL)
                opened.append(self._pull)
                self._pull.setsockopt(zmq.LINGER, 0)
                self._pull.setsockopt(zmq.RCVHWM, 64)
                for endpoint in self.endpoints:
                    _endpoint("--connect", endpoint, self._pull.connect)
        except BaseException:
            for sock in opened:
                if sock is not None:
                    sock.close()
            raise
        self._snapshots = Snapshots(self.settings, publisher)
        self.publish_endpoint = publisher.endpoint if publisher else None
        self.serve_endpoint = self._service.endpoint if self._service else None
        self._receiver = None if self._pull is None else Receiver(
            self._pull, self._enqueue, self.receiver, self.internal, self._stop.is_set,
            self.settings.live.decode_threads)

    # ---- life cycle -------------------------------------------------------------------------
    def start(self) -> "LiveProcessor":
        self._supervisor.start(WRITER, self._write_loop)
        self._supervisor.start(WORKER, self._work_loop)
        if self._receiver is not None:
            self._supervisor.start(RECEIVER, self._receiver.run)
        return self

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop receiving, finish what is queued, write results (the checkpoint stays).

        If the worker or the writer died, this thread does their part: the current series is
        written as incomplete all the same."""
        self._stop.set()
        sup = self._supervisor
        sup.join(RECEIVER, timeout)
        if sup.join(WORKER, timeout) and sup.died(WORKER):
            with self.internal.guard("supervisor", "the partial result of a dead worker"):
                self.worker.finish_series(ended=False)    # the worker is gone: its state is ours
        self.writer.close()
        if sup.join(WRITER, timeout) and any(job is not None for job in self.writer.jobs.items()):
            self.writer.run()                     # the writer thread is gone: write here
        if not sup.alive(WORKER):
            self._close_worker_sockets()
        if self._pull is not None and not sup.started(RECEIVER):
            self._pull.close()
        self._done.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until ``max_series`` series ended and were written, or the processor failed
        (see :attr:`failure`): True; False if the timeout passed first."""
        return self._done.wait(timeout)

    def _on_thread_death(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
        self._stop.set()
        self._done.set()

    def _fail(self, exc: BaseException) -> None:
        """The run cannot go on (worker thread): say why; the worker stops."""
        if self.failure is None:
            self.failure, self.failure_error = str(exc), exc
        log.error("stopping: %s", exc)

    @property
    def processor(self):
        """The current scan's :class:`~sxdm_stream.pipeline.scan_processor.ScanProcessor` (worker's)."""
        return self.worker.processor

    @property
    def series(self) -> SeriesStart | None:
        return self.worker.series

    @property
    def last_record(self) -> OperandoRecord | None:
        return self.worker.last_record

    @property
    def last_maps(self) -> MapSet | None:
        """The maps of the latest snapshot (None before the first)."""
        return self.last_analysis.maps if self.last_analysis is not None else None

    @property
    def last_analysis(self) -> ScanAnalysis | None:
        """The analysis of the latest snapshot (None before the first)."""
        return self._snapshots.last_analysis

    @property
    def snapshot_errors(self) -> int:
        return self._snapshots.errors

    @property
    def series_finished(self) -> int:
        """Series whose last write was done (complete or not, written or not)."""
        return self._finished_count

    @property
    def write_errors(self) -> int:
        """Results, checkpoint and operando writes (or analyses) that failed."""
        return self.writer.errors

    def on_result(self, callback) -> None:
        """Call ``callback(result: SeriesResult)`` when a series' final maps are written
        (on the writer thread; keep it short). Errors it raises are logged, not raised."""
        self._result_callbacks.append(callback)

    def __enter__(self) -> "LiveProcessor":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- entry of messages (receiver thread, or any thread through submit) --------------------
    def submit(self, message) -> None:
        """Hand a decoded message (SeriesStart, ImageFrame, SeriesEnd, or the control system's
        PlanStart, PointPositions, PlanEnd) to the processor, from any thread: the entry of
        sources other than the DECTRIS receiver. Applies the back-pressure policy to images;
        other messages wait for room. Messages handed in once the processor stops are counted
        (``after_stop``), not processed."""
        if not isinstance(message, (ImageFrame, SeriesStart, SeriesEnd, PlanStart, PointPositions,
                                    PlanEnd)):
            raise TypeError(f"submit takes a stream or plan message, not {type(message)}")
        self.receiver.count(image=isinstance(message, ImageFrame))
        self._enqueue(message)

    def _enqueue(self, message) -> None:
        nbytes = int(getattr(message.data, "nbytes", 0)) if isinstance(message, ImageFrame) else 0
        if isinstance(message, ImageFrame) and self.settings.live.policy == "drop":
            if not self._frames.put_nowait(message, nbytes):
                self.receiver.drop()
            return
        while not self._stop.is_set():          # block policy, and start/end messages
            if self._frames.put(message, nbytes, timeout=0.1):
                return
            if self._supervisor.started(WORKER) and not self._supervisor.alive(WORKER):
                break
        self.receiver.refused_after_stop()

    # ---- threads ------------------------------------------------------------------------------
    def _work_loop(self) -> None:
        self.worker.run(self._frames, self._service)
        self.writer.close()
        self._close_worker_sockets()

    def _close_worker_sockets(self) -> None:
        if self._service is not None:
            self._service.close()
        self._snapshots.close()

    def _write_loop(self) -> None:
        try:
            self.writer.run()
        finally:
            self._done.set()

    def _record_result(self, result: SeriesResult) -> None:
        """A finished series (writer thread): keep it, tell the callbacks."""
        self.results.append(result)
        self._finished_count += 1
        self._ended_count += int(result.ended)
        self._complete_count += int(result.complete)
        for callback in self._result_callbacks:
            try:
                callback(result)
            except Exception:                      # a sink's bug must not stop the processor
                log.exception("result callback %r failed for series %s", callback, result.series_id)

    def _checkpoint(self, overwrite: bool):
        """The checkpoint to resume from (None: there is none, start afresh)."""
        if self.out is None:
            raise ConfigError("--resume needs --out: the checkpoint lives beside the results file")
        path = checkpoint_path(self.out)
        if not path.exists():
            if self.out.exists() and not overwrite:
                raise ConfigError(f"--resume: {self.out} has no checkpoint beside it ({path.name})"
                                  ": its scan ended or was never checkpointed; give another --out "
                                  "or --overwrite it")
            log.warning("no checkpoint at %s: starting afresh", path)
            return None
        maps = self.settings.maps
        resumed = read_checkpoint(path, maps.mask_fraction, maps.d_ref_a)
        self._paths.claim(self.out)
        log.info("resumed series %s from %s: %d of %d frames already in the sums",
                 resumed.series_id, path, int(resumed.processor.included.sum()),
                 resumed.processor.setup.scan.n_frames)
        return resumed

    # ---- status -------------------------------------------------------------------------------
    def status(self) -> LiveStatus:
        """Live statistics: counts, rates, latency, progress of the current scan (from any
        thread: copies of what the worker owns). Every snapshot carries them too."""
        worker = self.worker
        p, series = worker.processor, worker.series
        rejected, quirks, processed = worker.counts()
        elapsed = time.perf_counter() - (worker.first_image_s or self._started)
        p50, p99 = self._snapshots.latency()
        if self._receiver is not None:
            quirks.update(self._receiver.quirks())
        return LiveStatus(
            messages=self.receiver.messages, received=self.receiver.images,
            processed=processed, rejected=dict(rejected + self.receiver.copy_rejected()),
            dropped=self.receiver.dropped, queued=self._frames.qsize(),
            queued_bytes=self._frames.nbytes,
            frames_per_s=processed / elapsed if elapsed > 0 else 0.0,
            latency_p50_s=p50, latency_p99_s=p99,
            series_id=series.series_id if series else None,
            series_unique_id=series.series_unique_id if series else None,
            progress=(int(p.included.sum()), p.setup.scan.n_frames) if p else None,
            held=worker.held, placed_by_index=worker.placed_by_index,
            completed=self._complete_count, ended=self._ended_count,
            quirks=dict(quirks), internal_errors=self.internal.counts(),
            after_stop=self.receiver.after_stop + worker.after_stop, failure=self.failure)

    def _status_on_wire(self) -> dict:
        """The status as every snapshot header carries it (worker thread)."""
        return self.status().to_wire()


def _endpoint(option: str, endpoint: str | None, make):
    """``make(endpoint)`` (a bind or connect), a ZeroMQ error as a one-line ConfigError."""
    if not endpoint:
        return None
    try:
        return make(endpoint)
    except zmq.ZMQError as exc:
        raise ConfigError(f"{option} {endpoint}: {exc}") from None
