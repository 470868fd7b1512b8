"""Sharding a scan by map rows: which worker takes which frame, and the sub-scan it sums.

Worker ``w`` of ``n`` owns a contiguous block of map rows (:func:`row_blocks`) and sums only
the map pixels of those rows, so the q histograms (the bulk of a scan's memory) are held
once over all workers, not ``n`` times. A frame goes to the worker owning the row of its map
pixel: by frame index through the full scan (:meth:`ScanDescription.locate`), or, where the
image carries measured positions of both map motors, by the grid pixel nearest to them (as
:class:`~sxdm_stream.pipeline.scan_processor.ScanProcessor` places it).

Everything that does not depend on the map (q grid, q_ref, rotations, mask) is the full scan's
own: a sub-set-up is the full :class:`ScanSetup` with its scan replaced by the row block, so
its sums are bit for bit those of the same map pixels in one process.
"""

from __future__ import annotations

import copy
from typing import Mapping

from sxdm_stream.core.accumulate import ScanSetup
from sxdm_stream.core.scan import ScanDescription
from sxdm_stream.pipeline.scan_processor import place_frame


def row_blocks(rows: int, n_workers: int) -> list[tuple[int, int]]:
    """``[(first_row, end_row), ...]``, one per worker, contiguous, sizes differing by at most
    one (a worker gets an empty block when there are fewer rows than workers)."""
    base, extra = divmod(rows, n_workers)
    blocks, first = [], 0
    for w in range(n_workers):
        end = first + base + (1 if w < extra else 0)
        blocks.append((first, end))
        first = end
    return blocks


def worker_of_row(row: int, blocks: list[tuple[int, int]]) -> int:
    """The worker whose block holds ``row``."""
    for w, (first, end) in enumerate(blocks):
        if first <= row < end:
            return w
    raise ValueError(f"row {row} is in no block of {blocks}")


def row_block_scan(scan: ScanDescription, first: int, end: int) -> ScanDescription:
    """The scan restricted to map rows ``first:end`` (positions of those rows, no snake:
    the worker indexes its pixels itself, ``(row - first) * cols + col``)."""
    axis = scan.axis_um(0)
    return ScanDescription(shape=(end - first, scan.shape[1]),
                           extents_um=((float(axis[first]), float(axis[end - 1])),
                                       scan.extents_um[1]),
                           motors=scan.motors, rocking_axis=scan.rocking_axis,
                           rocking_angles=scan.rocking_angles, fixed_angles=scan.fixed_angles,
                           frames_per_point=scan.frames_per_point, snake=False,
                           scan_id=scan.scan_id)


def row_block_setup(setup: ScanSetup, first: int, end: int) -> ScanSetup:
    """``setup`` with its scan replaced by rows ``first:end``: same grid, q_ref, rotations and
    mask (computed once for the full scan), so an accumulator of it sums those rows exactly
    as the full one would."""
    sub = copy.copy(setup)
    sub.scan = row_block_scan(setup.scan, first, end)
    return sub


def map_pixel(scan: ScanDescription, image_id: int,
              positions: Mapping[str, float] | None) -> tuple[int, int]:
    """(rocking angle, flat map pixel) of a frame, as the single process places it
    (:func:`sxdm_stream.pipeline.scan_processor.place_frame`); BadFrameError with its reason."""
    return place_frame(scan, image_id, positions)
