"""The running processor: threads, queues, back-pressure, supervision, status.

:class:`~.processor.LiveProcessor` wires a source (DECTRIS receiver or ``submit``), the
pipeline, snapshots and the writer (:mod:`.writer`); :mod:`.process_file` processes a recorded
scan on every core. Each threaded module says which thread owns what.

What it may import: everything in :mod:`sxdm_stream` except the CLI; never plugins or
simulators. Checked by tests/test_layers.py.
"""
