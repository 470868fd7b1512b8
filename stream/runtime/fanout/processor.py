"""The fan-out processor: forwarder and reducer threads here, ``n`` worker processes.

:class:`FanoutProcessor` binds loopback sockets (tcp 127.0.0.1, free ports), starts the
workers (``spawn``), then the forwarder and reducer threads; :meth:`stop` tells the workers
to finish and collects their last sums. The reducer thread also watches the worker
processes: one that ends without its goodbye is reported (exit code, rows) and the rest of
the run goes on without it.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import threading
from collections import Counter
from pathlib import Path

import zmq

from sxdm_stream.errors import ConfigError
from sxdm_stream.runtime.fanout.forwarder import Forwarder
from sxdm_stream.runtime.fanout.reducer import Reducer
from sxdm_stream.runtime.fanout.worker import run_worker
from sxdm_stream.runtime.settings import Config, ScanOverride
from sxdm_stream.sinks.paths import ResultPaths, check_output

log = logging.getLogger(__name__)

FORWARDER, REDUCER = "sxdm-fanout-forwarder", "sxdm-fanout-reducer"


#: ``process`` options the fan-out does not support (yet), with the value that means "unused"
UNSUPPORTED = {"publish": None, "serve": None, "operando": None, "resume": False,
               "bluesky": None, "bluesky_publish": None, "policy": ("block", None)}


def unsupported_options(options: dict) -> None:
    """Refuse (ConfigError) ``process`` options that ``--workers`` does not support."""
    used = [name for name, unused in UNSUPPORTED.items()
            if options.get(name) not in (unused if isinstance(unused, tuple) else (unused,))]
    if used:
        raise ConfigError("--workers N (N > 1) does not support " + ", ".join(
            "--" + name.replace("_", "-") for name in used) + " yet; use --workers 1")


class FanoutProcessor:
    """Processes a DECTRIS stream with ``n_workers`` worker processes sharded by map rows.

    Parameters are those of :class:`~sxdm_stream.runtime.processor.LiveProcessor` that the
    fan-out supports (``connect``, ``out``, ``settings``, ``override``, ``max_series``,
    ``overwrite``), and ``n_workers`` >= 1.
    """

    def __init__(self, connect, out: str | Path, n_workers: int, settings: Config | None = None,
                 override: ScanOverride | None = None, max_series: int | None = None,
                 overwrite: bool = False) -> None:
        if n_workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {n_workers}")
        self.endpoints = [connect] if isinstance(connect, str) else list(connect)
        self.out, self.n = Path(out), n_workers
        self.settings = settings or Config()
        self.max_series = max_series
        check_output(self.out, overwrite, False)
        self._context = zmq.Context()
        self._stop, self._done = threading.Event(), threading.Event()
        self._events: queue.Queue = queue.Queue()
        self._pull = self._socket(zmq.PULL)
        for endpoint in self.endpoints:
            try:
                self._pull.connect(endpoint)
            except zmq.ZMQError as exc:
                self._close_sockets()
                raise ConfigError(f"--connect {endpoint}: {exc}") from None
        self._pushes = [self._socket(zmq.PUSH) for _ in range(n_workers)]
        inboxes = [self._bind(s) for s in self._pushes]
        self._partials = self._socket(zmq.PULL)
        outbox = self._bind(self._partials)
        self.forwarder = Forwarder(self._pull, self._pushes, self._events, override,
                                   self._stop.is_set)
        self.reducer = Reducer(self._events, self.settings, override,
                               ResultPaths(self.out, overwrite), n_workers)
        spawn = multiprocessing.get_context("spawn")
        self.workers = [spawn.Process(target=run_worker, name=f"sxdm-fanout-worker-{w}",
                                      args=(w, n_workers, inboxes[w], outbox, self.settings,
                                            override, logging.getLogger().getEffectiveLevel()),
                                      daemon=True) for w in range(n_workers)]
        self._threads: list[threading.Thread] = []

    def _socket(self, kind):
        sock = self._context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM if kind == zmq.PUSH else zmq.RCVHWM, 64)
        return sock

    @staticmethod
    def _bind(sock) -> str:
        sock.bind("tcp://127.0.0.1:*")
        return sock.getsockopt_string(zmq.LAST_ENDPOINT)

    # ---- life cycle -------------------------------------------------------------------------
    def start(self) -> "FanoutProcessor":
        for process in self.workers:
            process.start()
        log.info("fan-out: %d worker processes (pids %s), sharded by map rows", self.n,
                 ", ".join(str(p.pid) for p in self.workers))
        self._threads = [threading.Thread(target=self.forwarder.run, name=FORWARDER),
                         threading.Thread(target=self._reduce, name=REDUCER)]
        for thread in self._threads:
            thread.start()
        return self

    def wait(self, timeout: float | None = None) -> bool:
        """True once ``max_series`` series are written (or the run is over)."""
        return self._done.wait(timeout)

    def stop(self, timeout: float = 60.0) -> None:
        """Stop receiving; workers finish their series (cut short) and send them; written."""
        self._stop.set()
        self._threads[0].join(timeout)
        self.forwarder.order_stop()
        self._threads[1].join(timeout)
        for w, process in enumerate(self.workers):
            process.join(timeout)
            if process.is_alive():                # hung: its rows are reported missing
                done = w in self.reducer.byes     # else: its sums never came
                log.log(logging.WARNING if done else logging.ERROR,
                        "fan-out worker %s did not exit%s: terminated", process.name,
                        "" if done else " nor send its sums")
                process.terminate()
                process.join(timeout)
        self._threads[1].join(timeout)            # it sees the terminated ones as dead
        self._close_sockets()
        self._done.set()
        self._log_accounting()

    def __enter__(self) -> "FanoutProcessor":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _close_sockets(self) -> None:
        for sock in [self._pull, *getattr(self, "_pushes", []),
                     getattr(self, "_partials", None)]:
            if sock is not None:
                sock.close()
        self._context.term()

    # ---- the reducer thread ------------------------------------------------------------------
    def _reduce(self) -> None:
        r = self.reducer
        while True:
            if self._partials.poll(100):
                try:
                    r.take(self._partials.recv_multipart(copy=False))
                except Exception:                 # a bug of ours: the other series go on
                    log.exception("fan-out reducer: a message of a worker failed")
                    self.reducer.errors += 1
                continue
            r.take_events_left()
            self._watch_workers()
            if self.max_series is not None and r.ended >= self.max_series:
                self._done.set()
            if len(r.dead) == self.n:             # nothing left to process the stream
                self._done.set()
            if self._stop.is_set() and all(w in r.byes or w in r.dead for w in range(self.n)):
                break
        r.take_events_left()
        r.finish_ready(force=True)

    def _watch_workers(self) -> None:
        for w, process in enumerate(self.workers):
            if process.exitcode is not None and w not in self.reducer.byes \
                    and w not in self.reducer.dead:
                self.forwarder.mark_dead(w)
                self.reducer.worker_died(w, process.exitcode)

    @property
    def failure(self) -> str | None:
        """Why the run is not whole (a worker died), or None."""
        dead = self.reducer.dead
        if not dead:
            return None
        return "; ".join(f"fan-out worker {w} died (exit code {code})"
                         for w, (code, _rows) in sorted(dead.items()))

    def progress(self) -> str:
        """One line: images received and handed to each worker, series written."""
        f = Counter(self.forwarder.counts)
        return (f"fan-out: {f['images']} images received, per worker "
                f"{[f[f'to_{w}'] for w in range(self.n)]}, {len(self.reducer.results)} series "
                f"written" + (f", {self.failure}" if self.failure else ""))

    # ---- accounting ------------------------------------------------------------------------
    @property
    def results(self):
        return self.reducer.results

    def accounting(self) -> dict:
        """Images received by the forwarder and what became of them (after :meth:`stop`)."""
        f, r = Counter(self.forwarder.counts), self.reducer
        rejected = Counter(r.orphans)
        processed = 0
        for result in r.results:
            processed += result.frames["processed"]
        scan_rejected = sum(res.frames["rejected"] for res in r.results)
        lost = {w: f[f"to_{w}"] - r.worker_counts[w] for w in r.dead}
        accounted = (processed + scan_rejected + sum(rejected.values()) + sum(lost.values())
                     + f["not_forwarded_at_stop"]
                     + sum(f[f"undeliverable_{w}"] for w in range(self.n)))
        return {"balanced": accounted == f["images"] + f["unreadable"],"images": f["images"], "messages": f["messages"], "processed": processed,
                "rejected_by_scan": scan_rejected, "rejected": dict(rejected),
                "unplaced": f["unplaced"], "unreadable": f["unreadable"],
                "undeliverable": sum(f[f"undeliverable_{w}"] for w in range(self.n)),
                "not_forwarded_at_stop": f["not_forwarded_at_stop"],
                "forwarded": {w: f[f"to_{w}"] for w in range(self.n)},
                "lost_in_dead_workers": lost,
                "dead_workers": {w: code for w, (code, _rows) in r.dead.items()},
                "worker_peak_rss_mib": dict(r.peak_rss_mib)}

    def _log_accounting(self) -> None:
        a = self.accounting()
        if not a["balanced"]:
            log.error("fan-out: the images received and what became of them do not add up: "
                      "%s", a)
        log.info("fan-out: %d images received: %d processed, %d rejected by the scan, %s "
                 "rejected outside a series, %d unplaced (no scan description), forwarded per "
                 "worker %s, %d undeliverable, lost in dead workers %s; worker peak memory (MiB) %s",
                 a["images"],
                 a["processed"], a["rejected_by_scan"], a["rejected"] or "none", a["unplaced"],
                 a["forwarded"], a["undeliverable"], a["lost_in_dead_workers"] or "none",
                 a["worker_peak_rss_mib"])
