"""sxdm-stream: live processing of Scanning X-ray Diffraction Microscopy data.

The public face of the package: every name in :data:`__all__` is imported from here
(``from sxdm_stream import LiveProcessor``), so modules can move without breaking users. The
names load on first use, so ``import sxdm_stream`` stays light.

The house (``docs/architecture.md``), following the data:

* :mod:`sxdm_stream.sources` -- DECTRIS streams, recordings, beamline files -> messages;
* :mod:`sxdm_stream.pipeline` -- one scan: frames joined to map pixels and accumulated;
* :mod:`sxdm_stream.core` -- geometry, scan, q grid, kernels, accumulator, maps (pure);
* :mod:`sxdm_stream.analysis` -- drift, particles, q-ROIs, fits, operando records (pure);
* :mod:`sxdm_stream.sinks` -- results file, checkpoints, snapshots, time series, exports;
* :mod:`sxdm_stream.runtime` -- the live processor's threads, queues and supervision;
* :mod:`sxdm_stream.cli` -- the ``sxdm-stream`` command;
* :mod:`sxdm_stream.plugins` (bluesky, viewer) and :mod:`sxdm_stream.simulators` beside them.
"""

from __future__ import annotations

import importlib
from typing import Any

from sxdm_stream.version import __version__

#: public name -> the module that defines it
_PUBLIC = {
    # the live processor and its settings
    "LiveProcessor": "runtime.processor", "LiveSettings": "config",
    "ScanOverride": "runtime.settings", "SeriesResult": "runtime.writer",
    "format_status": "runtime.report", "process_file_scan": "runtime.process_file",
    # configuration
    "Config": "config", "load_config": "config", "load_scan_file": "config",
    "override": "config", "CONFIG_VERSION": "config", "ConfigDeprecationWarning": "config",
    "MapSettings": "config", "FitSettings": "config", "RoiSuggestionSettings": "config",
    "DriftSettings": "config", "ParticleSettings": "config",
    # scan set-up, accumulation and maps
    "Geometry": "core.geometry", "Detector": "core.geometry", "ScanDescription": "core.scan",
    "QGrid": "core.grid", "ScanSetup": "core.accumulate", "AccumulationSettings": "core.accumulate",
    "Accumulator": "core.accumulate", "MapSet": "core.maps", "MAP_FIELDS": "core.maps",
    "map_arrays": "core.maps", "misorientation_rgb": "core.maps",
    "QRoi": "core.qroi", "ScanProcessor": "pipeline.scan_processor",
    # analysis
    "analyse": "analysis.scan_analysis", "ScanAnalysis": "analysis.scan_analysis",
    "AnalysisSettings": "analysis.scan_analysis", "PARTICLE_FIELDS": "analysis.particles",
    # messages between the stages and on the wire, and the contracts of what plugs in
    "SeriesStart": "messages", "ImageFrame": "messages", "SeriesEnd": "messages",
    "PlanStart": "messages", "PointPositions": "messages", "PlanEnd": "messages",
    "SXDM_KEY": "messages", "SXDM_METADATA_VERSION": "messages", "LiveStatus": "messages",
    "SnapshotHeader": "messages", "Source": "protocols", "MessageSink": "protocols",
    "ResultSink": "protocols",
    # sources and sinks
    "Decoder": "sources.dectris.codec", "StreamSender": "sources.dectris.sender",
    "open_source": "sources.files.open", "SourceOptions": "sources.files.open",
    "process_recording": "runtime.process_file", "read_maps": "sinks.results",
    "read_configuration": "sinks.results", "write_results": "sinks.results",
    "read_particles": "sinks.results_analysis", "read_drift": "sinks.results_analysis",
    "read_roi_maps": "sinks.results_analysis", "read_roi_suggestion": "sinks.results_analysis",
    "Snapshot": "sinks.publish", "SnapshotSubscriber": "sinks.publish",
    "PixelReply": "sinks.publish", "encode_pixel_request": "sinks.publish",
    "decode_pixel_reply": "sinks.publish", "OPERANDO_TOPIC": "sinks.publish",
    "decode_operando_record": "sinks.publish", "encode_operando_record": "sinks.publish",
    # errors a user can act on
    "SxdmError": "errors", "ConfigError": "errors", "BadMessageError": "errors",
    "BadFrameError": "errors", "IncompatibleFileError": "errors",
    "HistogramBudgetError": "errors",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'sxdm_stream' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"sxdm_stream.{module}"), name)
    globals()[name] = value                      # the next access is a plain lookup
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
