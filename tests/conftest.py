"""Shared fixtures: the default simulated scan, processed once per test session."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import pytest

from sxdm_stream.core.accumulate import AccumulationSettings, ScanSetup
from sxdm_stream.core.maps import MapSet
from sxdm_stream.pipeline.scan_processor import ScanProcessor
from sxdm_stream.simulators.scenarios import Scenario, default_scenario


@dataclass
class ProcessedScan:
    scenario: Scenario
    setup: ScanSetup
    processor: ScanProcessor
    maps: MapSet


def process_scenario(scenario: Scenario, settings: AccumulationSettings | None = None) -> ProcessedScan:
    setup = ScanSetup(scenario.geometry, scenario.scan, settings)
    processor = ScanProcessor(setup)
    for index, _a, _p, frame in scenario.simulator.frames(reuse_buffer=True):
        processor.add(index, frame)
    return ProcessedScan(scenario, setup, processor, processor.maps())


@pytest.fixture(scope="session")
def default_scan() -> ProcessedScan:
    """The default LiNiO2 003 scan (40x40 map, 31 rocking angles, Maxipix), fully processed."""
    return process_scenario(default_scenario())


@pytest.fixture(scope="session")
def small_scenario() -> Scenario:
    """A quick 12x12 map with 15 rocking angles for tests that need a real scan, not accuracy."""
    return default_scenario(shape=(12, 12), n_angles=15, rocking_half_range_deg=0.3)


@pytest.fixture(scope="session")
def small_processed(small_scenario) -> ScanProcessor:
    """The small scenario accumulated in-process (no sockets): the reference of live tests."""
    return process_scenario(small_scenario).processor


@pytest.fixture(autouse=True)
def no_leaked_threads_or_unexpected_errors(request, caplog):
    """Fail a test that leaves threads running or logs an error it did not ask for
    (a test that expects errors in the log says so with ``@pytest.mark.logs_errors``)."""
    before = set(threading.enumerate())
    yield
    # pyzmq's garbage collector (zero-copy sends) is one daemon thread per process, by design
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()
              and type(t).__name__ != "GarbageCollectorThread"]
    assert not leaked, f"test leaked threads: {leaked}"
    if request.node.get_closest_marker("logs_errors"):
        return
    errors = [r for r in caplog.get_records("call") if r.levelno >= logging.ERROR]
    assert not errors, f"unexpected errors logged: {[r.getMessage() for r in errors]}"
