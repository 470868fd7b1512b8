"""Several processes on one detector stream, as the field does it (Diamond's EigerFan,
MAX IV's dranspose, LiberTEM-live): ``process --workers N``.

::

    detector PUSH ──▶ forwarder ──start/end to all, each image to one──▶ worker 0..N-1
                      (thread)     (raw ZeroMQ frames, undecoded)        (processes, spawn)
                                                                              │ partial sums
                      reducer (thread) ◀──── JSON header + array buffers ─────┘
                      └─▶ results file (the single process's writer)

Worker ``w`` takes the images whose map pixel lies in its block of map rows and holds the
sums of those rows only (:mod:`.shards`): the q histograms are held once over all workers.
The forwarder reads only each message's type, ids and positions (:func:`.forwarder.peek`).

==========================  =============================================================
thread / process            owns
==========================  =============================================================
main process, caller        :class:`FanoutProcessor`: sockets until :meth:`start`,
                            :meth:`stop` (orders the workers to finish, joins)
main process, forwarder     the detector PULL socket, one PUSH socket per worker
main process, reducer       the partials PULL socket, the series being reduced, the
                            writes, watching the worker processes
worker process ``w``        its PULL/PUSH sockets, the decoder, the sums of its rows
==========================  =============================================================

Supported: DECTRIS stream v1/v2 with a scan description in the start (or ``--scan-file``),
results files. Not (yet): snapshots (``--publish``), pixel requests, checkpoints to resume
from with ``--workers`` (an incomplete series' checkpoint is written and resumable by the
single process), operando records, bluesky joins, ``--policy drop``.
"""

from sxdm_stream.runtime.fanout.processor import FanoutProcessor, unsupported_options
from sxdm_stream.runtime.fanout.shards import row_block_scan, row_block_setup, row_blocks

__all__ = ["FanoutProcessor", "unsupported_options", "row_block_scan", "row_block_setup", "row_blocks"]
