"""Where results go: the NeXus results file (:mod:`.results`, :mod:`.results_analysis`),
checkpoints, snapshots published to viewers and the pixel-request protocol (:mod:`.publish`),
the operando time series, the PNG overview and the XSOCS export.

What it may import: :mod:`sxdm_stream.core`, :mod:`sxdm_stream.analysis`,
:mod:`sxdm_stream.pipeline` (a checkpoint is a scan processor's state),
:mod:`sxdm_stream.errors`, :mod:`sxdm_stream.messages`, :mod:`sxdm_stream.config` and itself.
Never physics of its own; never sources, the runtime or the CLI. Checked by
tests/test_layers.py.
"""
