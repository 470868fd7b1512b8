"""A consistent copy of a live scan's sums, made mostly off the worker thread.

At the end of each rocking angle the writer needs a copy of the sums that frames keep going
into. Copying them on the worker stalls it for as long as the q histograms take to copy
(450 MB on a 60 x 60 map with 32^3 bins: 0.1 s into warm memory, 2.5 s into fresh pages at
the first angle end), and frames wait meanwhile. So the copy is made in two phases:

1. the writer thread copies the histogram rows (one per map pixel) from the live sums while
   the worker keeps adding frames (:meth:`SumsHandoff.copy_histogram`), a block of rows at a
   time, each block after taking its pixels' frame counts (per rocking angle). It copies
   from the last map pixel down: the worker, which starts a rocking angle at the first,
   mostly writes rows before the writer copies them, not after;
2. the worker, between two messages (:meth:`SumsHandoff.finish`), copies again the rows of
   the map pixels whose frame count changed since their block was copied (every frame added
   counts one in its pixel's ``frame_count`` after its kernel ran, so a row written during
   or after its copy is among them), and everything else, which is small (moments, frame
   counts, frame indices, counters).

The copy then equals the sums after exactly the frames the worker had added at phase 2,
which ``included`` records: a checkpoint of it resumes into maps equal to an uninterrupted
run. The worker's stall is phase 2: the small arrays and a few rows, whatever the histogram's
size.

=================  ==========================================================================
thread             owns
=================  ==========================================================================
worker             ``live`` (adds frames to it), :meth:`finish`, :meth:`cancel`
writer             ``copy`` until :attr:`copied` is set (phase 1), then after :attr:`done`
under ``_lock``    ``state`` ("copying", "copied", "done", "cancelled")
=================  ==========================================================================
"""

from __future__ import annotations

import threading
from collections import Counter

import numpy as np

from sxdm_stream.pipeline.scan_processor import ScanProcessor

#: rows copied per numpy call in phase 1: numpy lets go of the GIL while it copies, so the
#: worker runs between two blocks whatever the histogram's size
_BLOCK_BYTES = 8 << 20


class SumsHandoff:
    """The copy of ``live``'s sums for one intermediate write (see the module docstring).

    Parameters
    ----------
    live : the current scan's processor, which the worker keeps feeding.
    into : an accumulator of the same set-up to copy into (the last job's, reused), or None.
    """

    def __init__(self, live: ScanProcessor, into=None) -> None:
        self.live = live
        copy = ScanProcessor(live.setup, live.mask_fraction, live.d_ref)
        if into is not None and into.setup is live.setup:
            copy.accumulator = into
        self.copy = copy
        #: frame counts of each map pixel when its row was copied: rows whose count moves
        #: after that are copied again
        self.counts_at_copy = np.empty_like(live.accumulator.frame_count)
        self.rows_recopied = 0
        self.state = "copying"
        self._lock = threading.Lock()
        self.copied = threading.Event()           # phase 1 over (or given up)
        self.done = threading.Event()             # phase 2 over, or cancelled

    # ---- writer thread ----------------------------------------------------------------------
    def copy_histogram(self) -> None:
        """Phase 1: copy the histogram from the live sums, block by block of rows, from the
        last map pixel down."""
        for _block in self.copy_blocks():
            pass

    def copy_blocks(self):
        """Phase 1 as a generator: yields after each block of rows (the tests add frames
        between blocks)."""
        acc = self.live.accumulator
        source, target = acc.histogram, self.copy.accumulator.histogram
        rows = max(1, _BLOCK_BYTES // max(1, source[:1].nbytes))
        for stop in range(len(source), 0, -rows):
            if self.state == "cancelled":
                break
            start = max(0, stop - rows)
            self.counts_at_copy[:, start:stop] = acc.frame_count[:, start:stop]
            np.copyto(target[start:stop], source[start:stop])
            yield start, stop
        with self._lock:
            if self.state == "copying":
                self.state = "copied"
        self.copied.set()

    def wait(self, timeout_s: float) -> bool:
        """Wait for phase 2; False if it did not come within ``timeout_s`` (then cancelled)
        or the handoff was cancelled."""
        self.done.wait(timeout_s)
        with self._lock:
            if self.state != "done":
                self.state = "cancelled"
            return self.state == "done"

    # ---- worker thread ----------------------------------------------------------------------
    def finish(self) -> bool:
        """Phase 2, once phase 1 is over (False before: call again later)."""
        with self._lock:
            if self.state != "copied":
                return self.state in ("done", "cancelled")
            self._copy_the_rest()
            self.state = "done"
        self.done.set()
        return True

    def cancel(self) -> None:
        """Give the copy up (the series ends, the worker stops): nothing is written of it."""
        with self._lock:
            if self.state != "done":
                self.state = "cancelled"
        self.done.set()

    def _copy_the_rest(self) -> None:
        live, copy = self.live, self.copy
        src, dst = live.accumulator, copy.accumulator
        moved = np.flatnonzero((src.frame_count != self.counts_at_copy).any(axis=0))
        for row in moved:                         # no fancy indexing: no temporary copy
            np.copyto(dst.histogram[row], src.histogram[row])
        self.rows_recopied = len(moved)
        for name in ("moments", "roi_moments", "shell_moments", "frame_count", "_invalid"):
            np.copyto(getattr(dst, name), getattr(src, name))
        copy.included = live.included.copy()
        copy.counters.received, copy.counters.processed = (live.counters.received,
                                                           live.counters.processed)
        copy.counters.rejected = Counter(dict.copy(live.counters.rejected))
        copy.angles_done = live.angles_done
