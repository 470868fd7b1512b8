"""The fan-out's reducer: the workers' partial sums of a series added into one, and written.

Each worker sends the sums of its map rows when a series ends (or when it is told to stop);
they are copied into the rows of one full :class:`ScanProcessor` (rows do not overlap: no
addition is even needed, and the result is the single process's bit for bit), whose
counters are the workers' added. Once every worker still alive has sent its part, the
series is written by the processor's own :class:`ResultsWriter` (same file, same
attributes), plus the fan-out's: ``fanout_workers``, and for a worker that died
``fanout_lost_rows`` (its rows: their map pixels are missing, the series ``incomplete``).

=================  ==========================================================================
thread             owns
=================  ==========================================================================
reducer            the PULL socket, the series being reduced, the writes
any                :attr:`results`, :attr:`orphans`, :attr:`worker_counts` (copies)
=================  ==========================================================================
"""

from __future__ import annotations

import logging
import queue
from collections import Counter
from dataclasses import dataclass, field

import h5py
import numpy as np

from sxdm_stream.errors import SxdmError
from sxdm_stream.messages import SeriesStart
from sxdm_stream.pipeline.scan_processor import ScanProcessor
from sxdm_stream.runtime.fanout import wire
from sxdm_stream.runtime.fanout.shards import row_blocks
from sxdm_stream.runtime.report import format_missing
from sxdm_stream.runtime.settings import Config, ScanOverride, setup_for_series
from sxdm_stream.runtime.writer import ResultsWriter, SeriesResult, WriteJob
from sxdm_stream.sinks.paths import ResultPaths

log = logging.getLogger(__name__)


@dataclass
class _Series:
    start: SeriesStart
    index: int
    processor: ScanProcessor | None = None
    got: set = field(default_factory=set)
    ended: bool = False


class Reducer:
    """Takes the workers' messages (:meth:`take`) and the forwarder's series starts
    (``events``); writes each series once all live workers sent their part."""

    def __init__(self, events: queue.Queue, settings: Config, override: ScanOverride | None,
                 paths: ResultPaths, n_workers: int) -> None:
        self.events, self.settings, self.override = events, settings, override
        self.paths, self.n = paths, n_workers
        self.results: list[SeriesResult] = []
        self.orphans: Counter = Counter()         # images rejected outside any series
        self.worker_counts: Counter = Counter()   # per worker: images it accounted for
        self.dead: dict[int, tuple] = {}          # worker -> (exit code, rows of its series)
        self.ready: set[int] = set()
        self.peak_rss_mib: dict[int, float] = {}  # per worker, from its goodbye
        self.byes: set[int] = set()
        self.ended = 0
        self.errors = 0                           # messages or writes that failed
        self._series: dict[tuple, _Series] = {}
        self._count = 0

    # ---- messages --------------------------------------------------------------------------
    def take(self, parts: list) -> None:
        """One message of a worker (reducer thread)."""
        self._drain_events()
        header, arrays = wire.decode(parts)
        kind, w = header.get("kind"), int(header.get("worker", -1))
        if kind == "ready":
            self.ready.add(w)
        elif kind == "bye":
            self.byes.add(w)
            self.orphans.update(header["rejected"])
            self.worker_counts[w] += sum(header["rejected"].values())
            self.peak_rss_mib[w] = header.get("peak_rss_mib")
        elif kind == "partial":
            self._partial(w, header, arrays)

    def take_events_left(self) -> None:
        """The series starts the forwarder sent since the last message (reducer thread)."""
        self._drain_events()

    def _drain_events(self) -> None:
        while True:
            try:
                start = self.events.get_nowait()
            except queue.Empty:
                return
            if isinstance(start, SeriesStart):
                self._count += 1
                key = (start.series_id, start.series_unique_id)
                if key not in self._series:       # its sums are zeros until partials come
                    self._series[key] = series = _Series(start, self._count)
                    self._processor(series)

    def _partial(self, w: int, header: dict, arrays: dict) -> None:
        key = (header["series_id"], header["series_unique_id"])
        series = self._series.get(key)
        n_accounted = header["processed"] + sum(header["rejected"].values())
        self.worker_counts[w] += n_accounted
        if series is None:                        # cannot happen: starts come first
            log.error("worker %d sent sums of unknown series %s", w, key)
            return
        p = series.processor
        if p is None:                             # refused: the workers said why
            return
        stitch(p, header, arrays)
        series.got.add(w)
        series.ended = series.ended or bool(header["ended"])
        self.finish_ready()

    def _processor(self, series: _Series) -> ScanProcessor | None:
        try:
            setup = setup_for_series(series.start, self.settings.accumulation, self.override)
        except (SxdmError, ValueError) as exc:
            log.error("series %s: no results (%s)", series.start.series_id, exc)
            return None
        maps = self.settings.maps
        series.processor = ScanProcessor(setup, maps.mask_fraction, maps.d_ref_a)
        return series.processor

    # ---- workers that die -------------------------------------------------------------------
    def worker_died(self, w: int, exitcode) -> None:
        """Worker ``w`` ended without its goodbye: the rows it held are lost."""
        if w in self.dead or w in self.byes:
            return
        self._drain_events()
        rows = [_rows_of(s.processor, w, self.n) for s in self._series.values()
                if w not in s.got and s.processor is not None]
        self.dead[w] = (exitcode, rows)
        log.error("fan-out worker %d died (exit code %s): the frames it held are lost; the "
                  "rows %s of the series in progress are missing from their results",
                  w, exitcode, ", ".join(f"{r[0]}..{r[1] - 1}" for r in rows if r) or "(none)")
        self.finish_ready()

    # ---- writing ----------------------------------------------------------------------------
    def finish_ready(self, force: bool = False) -> None:
        """Write every series all of whose live workers have sent their part (``force``:
        every series still open, as it is)."""
        for key, series in list(self._series.items()):
            alive = set(range(self.n)) - set(self.dead)
            if alive <= series.got or force:
                del self._series[key]
                if series.processor is not None:
                    self._write(series)

    def _write(self, series: _Series) -> None:
        p, start = series.processor, series.start
        p.angles_done = p.setup.scan.n_angles - 1
        lost = [w for w in range(self.n) if w not in series.got]
        path = self.paths.path_for(start, series.index)
        writer = ResultsWriter(self.settings, None, self.results.append)
        # the job takes the reduced sums themselves (schedule() would copy them: nothing
        # touches them again here, and the copy would be a second full set of histograms)
        job = WriteJob(p, start, series.ended, True, path)
        writer.jobs.put_beyond_bounds(job, job.nbytes)
        writer.close()
        writer.run()                              # here, now: the reducer waits for it
        if not p.complete:
            log.warning("series %s (%s) %s incomplete: %s%s", start.series_id,
                        start.series_unique_id, "ended" if series.ended else "stopped",
                        format_missing(p.missing_per_angle()),
                        f" (workers {lost} lost)" if lost else "")
        self.ended += int(series.ended)
        self.errors += writer.errors
        if path is not None and writer.errors == 0:
            self._annotate(path, p, lost)

    def _annotate(self, path, p: ScanProcessor, lost: list[int]) -> None:
        rows = [_rows_of(p, w, self.n) for w in lost]
        with h5py.File(path, "r+") as f:
            entry = f["entry"] if "entry" in f else f
            entry.attrs["fanout_workers"] = self.n
            entry.attrs["fanout_lost_workers"] = np.asarray(lost, dtype=np.int64)
            entry.attrs["fanout_lost_rows"] = np.asarray(rows, dtype=np.int64).reshape(-1, 2)


def _rows_of(p: ScanProcessor, w: int, n: int) -> tuple[int, int]:
    return row_blocks(p.setup.scan.shape[0], n)[w]


def stitch(p: ScanProcessor, header: dict, arrays: dict) -> None:
    """Copy one worker's sums into its rows of the full processor; add its counters."""
    first, end = header["rows"]
    cols = p.setup.scan.shape[1]
    points = slice(first * cols, end * cols)
    acc = p.accumulator
    if end > first:
        acc.moments[:, points] = arrays["moments"]
        acc.roi_moments[:, points] = arrays["roi_moments"]
        acc.frame_count[:, points] = arrays["frame_count"]
        acc.histogram[points] = arrays["histogram"]
        acc.shell_moments[points] = arrays["shell_moments"]
        acc.invalid_pixels = acc.invalid_pixels + int(header["invalid_pixels"])
    p.included |= arrays["included"]
    p.counters.processed += int(header["processed"])
    p.counters.rejected.update(header["rejected"])
    p.counters.received += int(header["processed"]) + sum(header["rejected"].values())
