"""The live worker around the series state machine: the final analysis of every series is made
once, on the worker for its last snapshot, and that very analysis is what the results file
gets; when the worker's analysis fails, the writer makes its own."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import sxdm_stream.runtime.snapshots as snapshots_module
import sxdm_stream.runtime.writer as writer_module
from sxdm_stream.config import Config, LiveSettings
from sxdm_stream.messages import ImageFrame, SeriesEnd
from sxdm_stream.runtime.processor import LiveProcessor
from sxdm_stream.simulators.sender import series_start
from sxdm_stream.sinks.results import read_maps

TIMEOUT = 120


def count_final_analyses(monkeypatch) -> list[str]:
    """Wrap the ``analyse`` of the snapshots and of the writer: the thread of every
    ``analyse(final=True)`` call, in order."""
    threads: list[str] = []
    for module in (snapshots_module, writer_module):
        def counted(*args, _analyse=module.analyse, **kwargs):
            if kwargs.get("final"):
                threads.append(threading.current_thread().name)
            return _analyse(*args, **kwargs)

        monkeypatch.setattr(module, "analyse", counted)
    return threads


def run_series(scenario, out, n_series: int = 2) -> LiveProcessor:
    live = LiveProcessor(None, out=out, settings=Config(live=LiveSettings(checkpoints=False)),
                         max_series=n_series)
    with live:
        for k in range(1, n_series + 1):
            live.submit(series_start(scenario, k, f"s{k}", f"c{k}"))
            for index, _, _, frame in scenario.simulator.frames():
                live.submit(ImageFrame(k, index, frame, f"s{k}"))
            live.submit(SeriesEnd(k, f"s{k}"))
        assert live.wait(TIMEOUT), live.status()
    return live


def test_the_final_analysis_is_made_once_and_written_as_the_last_snapshot_showed_it(
        small_scenario, tmp_path, monkeypatch):
    threads = count_final_analyses(monkeypatch)
    live = run_series(small_scenario, tmp_path / "r_{series_id}.h5")
    assert threads == ["sxdm-worker", "sxdm-worker"]      # one per series, none on the writer
    first, second = live.results
    assert first.complete and second.complete and first.written and second.written
    assert second.analysis is live.last_analysis          # handed over, not made again
    written = read_maps(second.path)
    np.testing.assert_array_equal(written["strain"], live.last_analysis.maps.strain)


@pytest.mark.logs_errors
def test_when_the_workers_final_analysis_fails_the_writer_makes_it(small_scenario, tmp_path,
                                                                   monkeypatch):
    threads = count_final_analyses(monkeypatch)
    make = snapshots_module.Snapshots.make

    def make_but_not_the_last(self, p, series, index, final, status, *args):
        if status != "running":
            raise RuntimeError("an analysis bug on the worker")
        return make(self, p, series, index, final, status, *args)

    monkeypatch.setattr(snapshots_module.Snapshots, "make", make_but_not_the_last)
    live = run_series(small_scenario, tmp_path / "r.h5", n_series=1)
    assert threads == ["sxdm-writer"]
    (result,) = live.results
    assert result.complete and result.written and result.analysis is not None
    assert live.status().internal_errors == {"snapshots": 1}
