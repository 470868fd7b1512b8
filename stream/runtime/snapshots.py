"""The live processor's snapshots: the current scan's maps, derived at a bounded rate and
published for viewers (:mod:`sxdm_stream.sinks.publish` describes the wire format).

A snapshot is due when frames were added since the last one and ``1 / snapshot_max_hz`` has
passed, or five times the last snapshot's cost on big maps (snapshots never take more than
~20% of the worker). The drift estimate is made once per finished rocking angle (~0.2 s on a
200x200 map of 100 angles), not at every snapshot.

A snapshot's header says ``complete: true`` on the last snapshot of a series the detector
ended (viewers keep every such one: an operando point each); ``status`` says whether every
frame of the scan is in it (``complete``), frames are missing (``incomplete``, with
``frames_missing``) or the scan goes on (``running``). The last snapshot of a scan that is
over (:meth:`Snapshots.last`) also logs what its analysis found and makes the scan's operando
record, published beside the snapshots: an
:class:`~sxdm_stream.analysis.operando.OperandoMonitor` follows the maps of the run, tracks
their particles, follows their phases (every analysis is made with the previous map's
phases, so a phase keeps its id while its peak moves) and checks the alarms, logged as
warnings. The last snapshot's analysis is the one the results
file gets: the worker hands it to the writer, which does not analyse the same sums again.

=================  ==========================================================================
thread             owns
=================  ==========================================================================
worker             everything here (pacing, drift cache, ``last_analysis``, the publisher,
                   the operando series state)
any                :meth:`latency` (reads a copy of the latencies)
=================  ==========================================================================
"""

from __future__ import annotations

import collections
import logging
import time
from typing import Callable

import numpy as np

from sxdm_stream.analysis.drift import drift_for_scan, format_drift
from sxdm_stream.analysis.operando import OperandoMonitor, OperandoRecord
from sxdm_stream.analysis.phases import format_phases
from sxdm_stream.analysis.particles import format_particles
from sxdm_stream.analysis.roi_suggest import format_roi_suggestion
from sxdm_stream.analysis.scan_analysis import ScanAnalysis, analyse
from sxdm_stream.messages import SeriesStart
from sxdm_stream.pipeline.join import correlation_id_of
from sxdm_stream.pipeline.scan_processor import ScanProcessor
from sxdm_stream.runtime.report import analysis_arrays, analysis_header
from sxdm_stream.runtime.settings import Config
from sxdm_stream.sinks.publish import SnapshotPublisher, encode_operando_record, encode_snapshot

log = logging.getLogger(__name__)


class Snapshots:
    """Derives and publishes the snapshots of the worker's current scan.

    Parameters
    ----------
    settings : the processor's configuration (analysis, drift, ``live.snapshot_max_hz``).
    publisher : where snapshots go (None: derived for :attr:`last_analysis` only).
    """

    def __init__(self, settings: Config, publisher: SnapshotPublisher | None) -> None:
        self.settings, self.publisher = settings, publisher
        self.seq = 0
        self.errors = 0
        self.last_analysis: ScanAnalysis | None = None
        self._cost = 0.0
        self._last = 0.0
        self._latencies: collections.deque = collections.deque(maxlen=200_000)
        self._pending: list[float] = []
        self._drift_cache: tuple = (None, None)
        self.operando = OperandoMonitor(settings.tracking, settings.alarms)

    def frame_added(self, received_s: float) -> None:
        """A frame received at ``received_s`` (perf_counter) is in the sums."""
        self._pending.append(received_s)

    def due(self) -> bool:
        """Frames were added and the pacing interval has passed."""
        if not self._pending:
            return False
        interval = max(1.0 / self.settings.live.snapshot_max_hz, 5.0 * self._cost)
        return time.perf_counter() - self._last >= interval

    def failed(self) -> None:
        """The snapshot just tried failed: wait a full interval before the next."""
        self._last = time.perf_counter()
        self.errors += 1

    def make(self, p: ScanProcessor, series: SeriesStart, series_index: int, final: bool,
             status: str, stats: Callable[[], dict], channels: dict) -> ScanAnalysis:
        """Derive (and publish) the snapshot of ``p``'s sums; ``final``: the scan is over."""
        t0 = time.perf_counter()
        analysis = analyse(p.accumulator, self.settings.analysis,
                           angles_done=None if final else p.angles_done, final=final,
                           drift=self._drift_for(p, series_index, final),
                           previous_phases=self.operando.previous_phases)
        if self.publisher is not None:
            self.seq += 1
            missing = p.missing_per_angle()
            info = {"seq": self.seq, "series_id": series.series_id,
                    "series_unique_id": series.series_unique_id, "complete": final,
                    "status": status, "frames_missing": int(missing.sum()),
                    "scan": p.setup.scan.describe(), "stats": stats(),
                    **analysis_header(analysis)}
            if channels:
                info["operando"] = {k: {"value": v, "units": u} for k, (v, u) in channels.items()}
            self.publisher.send(encode_snapshot(analysis.maps, info, analysis_arrays(analysis)))
        now = time.perf_counter()
        self._latencies.extend(now - r for r in self._pending)
        self._pending.clear()
        self._last = now
        self._cost = now - t0
        self.last_analysis = analysis
        return analysis

    def last(self, p: ScanProcessor, series: SeriesStart, series_index: int, final: bool,
             stats: Callable[[], dict], channels: dict
             ) -> tuple[ScanAnalysis, OperandoRecord | None]:
        """The last snapshot of a series: its analysis (of ``p``'s sums as they stay: the
        writer writes it as it is) and, when ``final`` (the scan is over, complete or not),
        its operando record. A final analysis is logged and its record published."""
        analysis = self.make(p, series, series_index, final,
                             "complete" if p.complete else "incomplete", stats, channels)
        if not final:
            return analysis, None
        _log_analysis(series.series_id, analysis)
        record = self.operando.record(analysis, p.setup.scan, time.time(), series.series_id,
                                      series_unique_id=series.series_unique_id,
                                      correlation_id=correlation_id_of(series.sxdm),
                                      complete=p.complete, channels=channels)
        _log_record(series.series_id, record)
        if self.publisher is not None:
            self.publisher.send(encode_operando_record(record.to_json()))
        return analysis, record

    def latency(self) -> tuple[float | None, float | None]:
        """Median and 99th percentile of frame-to-snapshot latency (s), None before any."""
        lat = np.array(list(self._latencies), float)   # list(): one atomic copy of the deque
        if not lat.size:
            return None, None
        return float(np.percentile(lat, 50)), float(np.percentile(lat, 99))

    def _drift_for(self, p: ScanProcessor, series_index: int, final: bool):
        if self.settings.drift.mode != "auto" or not (final or p.angles_done):
            return None                           # off, or no rocking angle finished yet
        done = None if final else p.angles_done
        key = (series_index, done)
        if self._drift_cache[0] != key:
            self._drift_cache = (key, drift_for_scan(p.accumulator.moments, p.setup.scan,
                                                     self.settings.drift, done))
        return self._drift_cache[1]

    def close(self) -> None:
        if self.publisher is not None:
            self.publisher.close()


def _log_analysis(series_id: int, analysis: ScanAnalysis) -> None:
    """What the end of a scan found: drift, particles, several crystals in q."""
    if analysis.drift is not None:
        log.info("series %s: %s", series_id, format_drift(analysis.drift))
    if len(analysis.particles):
        log.info("series %s: %s", series_id, format_particles(analysis.particles))
    if analysis.phases is not None and (len(analysis.phases.phases) > 1 or analysis.phases.n_mixed):
        log.info("series %s: %s", series_id, format_phases(analysis.phases))
    if analysis.roi_suggestion is not None and len(analysis.roi_suggestion.peaks) > 1:
        log.info("series %s: several crystals diffract in q: %s", series_id,
                 format_roi_suggestion(analysis.roi_suggestion))


def _log_record(series_id: int, record: OperandoRecord) -> None:
    """What the series learnt from this map: drift, particles that came or went, alarms."""
    reg = record.registration or {}
    if reg.get("reference") not in (None, "first", "empty"):
        log.info("series %s: sample drift since the first map %s um (%s px), correlation %s",
                 series_id, _pair(reg.get("drift_um")), _pair(reg.get("drift_px")),
                 "n/a" if reg.get("correlation") is None else f"{reg['correlation']:.3f}")
    for event in record.events:
        log.info("series %s: %s", series_id, event["message"])
    for alarm in record.alarms:
        log.warning("series %s: ALARM %s: %s", series_id, alarm.rule, alarm.message)


def _pair(values) -> str:
    return "(" + ", ".join("nan" if v is None else f"{v:+.3f}" for v in values or ()) + ")"
