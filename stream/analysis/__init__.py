"""Pure analysis of a scan's sums: drift between rocking angles, registration, particles,
q-ROI suggestion, Gaussian fits, operando records, and :func:`analyse`, which derives them all
in one call.

What it may import: :mod:`sxdm_stream.core`, :mod:`sxdm_stream.errors`,
:mod:`sxdm_stream.messages` and itself; numpy and scipy. No I/O. Checked by
tests/test_layers.py.
"""

from .scan_analysis import AnalysisSettings, ScanAnalysis, analyse

__all__ = ["AnalysisSettings", "ScanAnalysis", "analyse"]
