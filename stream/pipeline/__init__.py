"""One scan's processing, without threads or sockets: frames joined to map pixels and
accumulated (:class:`~.scan_processor.ScanProcessor`), which series is current and what becomes
of every message (:class:`~.series.SeriesMachine`, messages in and :mod:`.series_events` out),
and the join of a detector's frames to the control system's run (:mod:`.join`).

What it may import: :mod:`sxdm_stream.core`, :mod:`sxdm_stream.analysis`,
:mod:`sxdm_stream.errors`, :mod:`sxdm_stream.messages`, :mod:`sxdm_stream.config` and itself.
No I/O. Checked by tests/test_layers.py.
"""
