"""Process beamline files on a Dask cluster: blocks of map rows, partial sums, one reduction.

``process-file --dask tcp://HOST:8786`` (a running ``dask scheduler``) or ``--dask local:N``
(a :class:`distributed.LocalCluster` of N worker processes started here) runs
:func:`process_file_scan_dask`. Dask distributed is the engine (client, futures, retries,
serialisation of numpy arrays); nothing here manages processes or hosts.

1. plan (client, :func:`plan_row_blocks`): every frame goes to the block of map rows that
   holds its map pixel: the pixel its measured positions point to, as the pipeline joins it,
   else its nominal one. Blocks' sub-maps therefore never overlap. A task is sent the
   :class:`FileScan` (paths, positions, geometry: scattered once to every worker) and a list
   of frame indices, never pixel data; workers must be able to read the files.
2. accumulate (worker, :func:`accumulate_rows`): the task opens the files itself, reads its
   frames in runs of consecutive indices and adds them through a :class:`ScanProcessor`
   whose accumulator covers only its rows (:class:`RowsAccumulator`): a task's memory is its
   sub-map's moments and q histograms (``rows_per_task x cols`` map pixels), whatever the
   number of workers. It returns its sums (numpy arrays) and its counts (:class:`RowSums`).
3. reduce (client, :func:`add_row_sums`): each block's sums are stitched into the one
   accumulator of the whole map as they arrive, its counts added. A block that still fails
   after Dask's retries is logged with its rows and error; its frames are then missing and
   the result says ``incomplete`` (never silently short).

Every frame a task reads is processed or rejected under a reason (the pipeline's own
accounting); the client adds the counts, so the totals are those of the plain
``process-file``. Sums add in another order than on one host: the maps agree to ~1e-15
relative.

Threads: everything here runs in the calling thread; ``dask.distributed`` keeps its own
event-loop thread inside the :class:`~distributed.Client`, which :func:`dask_client` closes.
"""

from __future__ import annotations

import copy
import logging
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from sxdm_stream.config import Config
from sxdm_stream.core.accumulate import Accumulator, ScanSetup
from sxdm_stream.errors import BadFrameError, ConfigError
from sxdm_stream.pipeline.scan_processor import ScanProcessor, place_frame
from sxdm_stream.runtime.process_file import FileResult, finish_file_scan
from sxdm_stream.sinks.paths import check_output
from sxdm_stream.sources.files.filescan import FileScan

log = logging.getLogger(__name__)

#: times Dask runs a failed task again (a worker lost, a file server hiccup) before giving up
DEFAULT_RETRIES = 2
#: the most a task's sub-map (moments + q histograms) may hold, in MiB, unless rows are given
TASK_BUDGET_MIB = 256.0
#: tasks per worker at least, so that a slow host does not hold up the end of the run
TASKS_PER_WORKER = 2


class RowsAccumulator(Accumulator):
    """The sums of map rows ``rows[0]:rows[1]`` only: what one task holds.

    Frames are added with their map pixel in the whole map (as a :class:`ScanProcessor` joins
    them); the pixel is shifted into the block, and one outside it is a bad frame
    (``outside_block``), never added elsewhere.
    """

    def __init__(self, setup: ScanSetup, rows: tuple[int, int]) -> None:
        r0, r1 = int(rows[0]), int(rows[1])
        scan = setup.scan
        if not 0 <= r0 < r1 <= scan.shape[0]:
            raise ConfigError(f"map rows {r0}:{r1} are not within the scan's {scan.shape[0]}")
        axis = scan.axis_um(0)
        # the same set-up (geometry, q grid, q_ref, tables) over a scan of these rows only:
        # the parent allocates the arrays of ``r1 - r0`` rows
        sub = copy.copy(setup)
        sub.scan = replace(scan, shape=(r1 - r0, scan.shape[1]),
                           extents_um=((float(axis[r0]), float(axis[r1 - 1])),
                                       scan.extents_um[1]))
        super().__init__(sub)
        self.rows = (r0, r1)
        self.first_point = r0 * scan.shape[1]

    def add_frame(self, frame: np.ndarray, angle_index: int, point_index: int,
                  monitor: float | None = None) -> float:
        local = point_index - self.first_point
        if not 0 <= local < self.setup.scan.n_points:
            raise BadFrameError(f"map pixel {point_index} is outside this task's map rows "
                                f"{self.rows[0]}:{self.rows[1]}", "outside_block")
        return super().add_frame(frame, angle_index, local, monitor)


@dataclass(frozen=True)
class RowBlock:
    """Map rows ``rows[0]:rows[1]`` and the frames (sorted indices) whose pixel lies there."""

    rows: tuple[int, int]
    frames: np.ndarray = field(repr=False)


@dataclass
class RowSums:
    """What a task returns: the sums of its rows (arrays laid out as :class:`Accumulator`'s,
    over its ``rows`` only) and the accounting of every frame it read."""

    rows: tuple[int, int]
    moments: np.ndarray
    roi_moments: np.ndarray
    shell_moments: np.ndarray
    histogram: np.ndarray
    frame_count: np.ndarray
    invalid_pixels: int
    included: np.ndarray           # frame indices in the sums
    received: int
    processed: int
    rejected: dict[str, int]
    angles_done: int


@dataclass
class FailedBlock:
    """A block that Dask could not finish (after its retries): its rows, frames, error."""

    rows: tuple[int, int]
    frames: int
    error: str


def parse_dask_address(text: str) -> tuple[str, int | None]:
    """``"local:4"`` -> ("local", 4); ``"tcp://host:8786"`` -> (the address, None).

    Raises ConfigError for anything else (a scheme is needed: Dask would guess one)."""
    if text.startswith("local:"):
        try:
            n = int(text.split(":", 1)[1])
        except ValueError:
            n = 0
        if n < 1:
            raise ConfigError(f"--dask {text!r}: local:N needs a number of worker processes "
                              ">= 1, e.g. local:4")
        return "local", n
    if "://" not in text:
        raise ConfigError(f"--dask {text!r} is neither local:N nor a scheduler address with its "
                          f"scheme: did you mean tcp://{text}?")
    return text, None


@contextmanager
def dask_client(address: str, timeout_s: float = 30.0) -> Iterator:
    """A :class:`distributed.Client` on the scheduler at ``address`` or, for ``local:N``, on a
    :class:`distributed.LocalCluster` of N worker processes (one thread each) on loopback,
    without a dashboard; closed (and the local cluster stopped) on exit.

    Raises ConfigError when dask.distributed is not installed or the address is malformed.
    """
    where, n_workers = parse_dask_address(address)
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ConfigError("--dask needs dask.distributed: pip install 'sxdm-stream[dask]'") \
            from None
    if n_workers is None:
        with Client(where, timeout=timeout_s) as client:
            yield client
        return
    with LocalCluster(n_workers=n_workers, processes=True, threads_per_worker=1,
                      host="127.0.0.1", dashboard_address="127.0.0.1:0") as cluster, \
            Client(cluster, timeout=timeout_s) as client:
        yield client


# ---- plan (client) ----------------------------------------------------------------------
def frame_rows(file_scan: FileScan) -> np.ndarray:
    """The map row of every frame: that of the pixel its measured positions point to (the
    pipeline's join), else of its nominal pixel (where a frame the pipeline will reject for
    its positions is read and rejected)."""
    scan = file_scan.scan
    n_frames = scan.n_angles * scan.n_points
    cols = scan.shape[1]
    rows = np.empty(n_frames, np.int64)
    for index in range(n_frames):
        try:
            point = place_frame(scan, index, file_scan.positions(index))[1]
        except BadFrameError:
            point = scan.locate(index)[1]     # rejected there, with its reason
        rows[index] = point // cols
    return rows


def rows_per_task_for(setup: ScanSetup, n_workers: int,
                      budget_mib: float = TASK_BUDGET_MIB) -> int:
    """Rows per task: at least ``TASKS_PER_WORKER`` tasks per worker, and no task's sub-map
    (moments and q histograms) over ``budget_mib``."""
    scan = setup.scan
    rows, cols = scan.shape
    per_point = (scan.n_angles * (1 + len(setup.q_rois)) * 10 * 8 + scan.n_angles * 8
                 + setup.grid.n_bins * setup.histogram_dtype.itemsize * setup.keep_histogram)
    fit = max(1, int(budget_mib * 2**20 // (per_point * cols)))
    spread = max(1, -(-rows // (TASKS_PER_WORKER * max(1, n_workers))))
    return min(fit, spread)


def plan_row_blocks(file_scan: FileScan, rows_per_task: int) -> list[RowBlock]:
    """Blocks of ``rows_per_task`` map rows, each with the frames whose pixel it holds."""
    if rows_per_task < 1:
        raise ConfigError(f"rows per task must be >= 1, got {rows_per_task}")
    frame_row = frame_rows(file_scan)
    n_rows = file_scan.scan.shape[0]
    blocks = []
    for r0 in range(0, n_rows, rows_per_task):
        r1 = min(r0 + rows_per_task, n_rows)
        frames = np.flatnonzero((frame_row >= r0) & (frame_row < r1)).astype(np.int64)
        blocks.append(RowBlock((r0, r1), frames))
    return blocks


# ---- accumulate (worker) ----------------------------------------------------------------
def frame_runs(frames: np.ndarray, n_points: int, block_size: int
               ) -> Iterator[tuple[int, int, int]]:
    """(rocking angle, first map point, stop) of runs of consecutive frames (within one
    rocking angle, at most ``block_size`` long): how a task reads its frames."""
    frames = np.asarray(frames, np.int64)
    if not len(frames):
        return
    breaks = np.flatnonzero((np.diff(frames) != 1) | (np.diff(frames // n_points) != 0)) + 1
    for run in np.split(frames, breaks):
        for s in range(0, len(run), block_size):
            angle, start = divmod(int(run[s]), n_points)
            yield angle, start, start + len(run[s:s + block_size])


def accumulate_rows(file_scan: FileScan, setup: ScanSetup, block: RowBlock,
                    block_size: int = 32) -> RowSums:
    """The task: read the frames of ``block`` from the files and add them into the sums of
    its rows; the frames are joined and accounted for exactly as ``process-file`` does.

    Raises what reading the files raises (IncompatibleFileError, OSError): Dask retries the
    task, then the client reports its rows."""
    acc = RowsAccumulator(setup, block.rows)
    processor = ScanProcessor(setup, accumulator=acc)
    n_points = setup.scan.n_points
    with file_scan.open() as reader:
        for angle, start, stop in frame_runs(block.frames, n_points, block_size):
            for i, frame in enumerate(reader.read(angle, start, stop)):
                index = angle * n_points + start + i
                processor.add(index, frame, monitor=file_scan.monitor(index),
                              positions=file_scan.positions(index))
    c = processor.counters
    return RowSums(block.rows, acc.moments, acc.roi_moments, acc.shell_moments, acc.histogram,
                   acc.frame_count, acc.invalid_pixels,
                   np.flatnonzero(processor.included).astype(np.int64), c.received,
                   c.processed, dict(c.rejected), processor.angles_done)


# ---- reduce (client) --------------------------------------------------------------------
def add_row_sums(merged: ScanProcessor, part: RowSums) -> None:
    """Stitch a block's sums into the whole map's, and add its counts, in place."""
    cols = merged.setup.scan.shape[1]
    p0, p1 = part.rows[0] * cols, part.rows[1] * cols
    acc = merged.accumulator
    if merged.included[part.included].any():
        raise ConfigError(f"map rows {part.rows[0]}:{part.rows[1]} hold frames already added: "
                          f"{part.included[merged.included[part.included]][:5].tolist()}")
    acc.moments[:, p0:p1] += part.moments
    acc.roi_moments[:, p0:p1] += part.roi_moments
    acc.shell_moments[p0:p1] += part.shell_moments
    acc.histogram[p0:p1] += part.histogram
    acc.frame_count[:, p0:p1] += part.frame_count
    acc.invalid_pixels += part.invalid_pixels
    merged.included[part.included] = True
    merged.counters.received += part.received
    merged.counters.processed += part.processed
    merged.counters.rejected.update(part.rejected)
    merged.angles_done = max(merged.angles_done, part.angles_done)


def process_file_scan_dask(file_scan: FileScan, client, out: str | Path | None = None,
                           settings: Config | None = None, rows_per_task: int | None = None,
                           progress: Callable[[int], None] | None = None,
                           overwrite: bool = False, retries: int = DEFAULT_RETRIES
                           ) -> FileResult:
    """Accumulate every frame of ``file_scan`` on the Dask cluster of ``client`` and write
    ``out``: the result of :func:`~sxdm_stream.runtime.process_file.process_file_scan`.

    Parameters
    ----------
    file_scan : the scan and where its frames are; every worker must be able to read them.
    client : a :class:`distributed.Client` (see :func:`dask_client`).
    out : results file (NeXus HDF5); None: do not write.
    settings : the configuration (its accumulation and analysis sections, as live).
    rows_per_task : map rows per task (None: :func:`rows_per_task_for` the cluster's workers).
    progress : called with the number of frames of each block done.
    overwrite : an existing ``out`` may be replaced (else ConfigError before any work).
    retries : times Dask runs a failed task again before its rows are reported missing.

    A block that fails for good is logged (ERROR, with its rows) and named in the results
    file (``blocks_failed``); the result is then incomplete.
    """
    if out is not None:
        check_output(Path(out), overwrite)
    settings = settings or Config()
    setup = ScanSetup(file_scan.geometry, file_scan.scan, settings.accumulation)
    n_workers = len(client.nthreads())
    rows_per_task = rows_per_task or rows_per_task_for(setup, n_workers)
    t0 = time.perf_counter()
    blocks = [b for b in plan_row_blocks(file_scan, rows_per_task) if len(b.frames)]
    merged = ScanProcessor(setup, settings.maps.mask_fraction, settings.maps.d_ref_a)
    failed = _run_blocks(client, file_scan, setup, blocks, merged, progress, retries)
    if merged.counters.rejected:
        log.warning("%s: rejected %s", file_scan.path, dict(merged.counters.rejected))
    extra = {}
    if failed:
        extra["blocks_failed"] = "; ".join(f"rows {f.rows[0]}:{f.rows[1]} ({f.frames} frames): "
                                           f"{f.error}" for f in failed)
    return finish_file_scan(file_scan, merged, out, settings, t0,
                            f"Dask, {n_workers} workers, {len(blocks)} tasks of "
                            f"{rows_per_task} rows", extra)


def _run_blocks(client, file_scan: FileScan, setup: ScanSetup, blocks: list[RowBlock],
                merged: ScanProcessor, progress, retries: int) -> list[FailedBlock]:
    """Submit one task per block, stitch each result as it arrives; the blocks that failed."""
    from distributed import as_completed

    # once to every worker, not once per task: the geometry's tables and the positions
    scan_f = client.scatter(file_scan, broadcast=True, hash=False)
    setup_f = client.scatter(setup, broadcast=True, hash=False)
    run = uuid.uuid4().hex[:12]
    futures = {client.submit(accumulate_rows, scan_f, setup_f, block, retries=retries,
                             pure=False, key=f"sxdm-rows-{block.rows[0]}-{block.rows[1]}-{run}"):
                   block
               for block in blocks}
    failed = []
    try:
        for future in as_completed(futures):
            block = futures[future]
            if future.status == "finished":
                add_row_sums(merged, future.result())
            else:
                error = future.exception()
                failed.append(FailedBlock(block.rows, len(block.frames),
                                          f"{type(error).__name__}: {error}"))
                log.error("map rows %d:%d (%d frames) failed after %d retries: %s: %s; their "
                          "frames are missing from the results", *block.rows, len(block.frames),
                          retries, type(error).__name__, error)
            future.release()
            if progress is not None:
                progress(len(block.frames))
    finally:
        client.cancel(list(futures))             # none left running on an interruption
    return failed
