"""Pure analysis of a scan's sums: drift between rocking angles, registration, particles,
phases (per-phase d and fraction from the q shells), particle tracking through a series,
operando alarms, q-ROI suggestion, Gaussian fits,
operando records, and :func:`analyse`, which derives them all in one call.

What it may import: :mod:`sxdm_stream.core`, :mod:`sxdm_stream.errors`,
:mod:`sxdm_stream.messages` and itself; numpy and scipy. No I/O. Checked by
tests/test_layers.py.
"""

from .phases import PhaseAnalysis, PhaseSettings, analyse_phases, assign_phase_ids
from .scan_analysis import AnalysisSettings, ScanAnalysis, analyse
from .tracking import SeriesTracker, TrackingEvent, TrackingSettings, TrackingStep

__all__ = ["AnalysisSettings", "PhaseAnalysis", "PhaseSettings", "ScanAnalysis", "analyse",
           "analyse_phases", "assign_phase_ids", "SeriesTracker", "TrackingEvent",
           "TrackingSettings", "TrackingStep"]
