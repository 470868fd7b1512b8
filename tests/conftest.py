"""Shared fixtures and helpers: the default simulated scan processed once per test session, a
raw detector socket, waiting on a condition, replaying a beamline file, the two-plane join's
start messages. Test modules import the helpers with ``from conftest import ...``."""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass

import pytest

import zmq

from sxdm_stream.core.accumulate import AccumulationSettings, ScanSetup
from sxdm_stream.core.maps import MapSet
from sxdm_stream.messages import SXDM_KEY, PlanStart, SeriesStart
from sxdm_stream.pipeline.scan_processor import ScanProcessor
from sxdm_stream.runtime.processor import LiveProcessor
from sxdm_stream.simulators.scenarios import Scenario, default_scenario
from sxdm_stream.simulators.sender import SimulatedDetector
from sxdm_stream.sources.dectris.sender import StreamSender
from sxdm_stream.sources.recordings.replay import replay_file_scan

#: how long a test waits for a live processor, a thread or a condition before failing
TIMEOUT = 120


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


def free_port() -> int:
    """A TCP port free on loopback now (for a program that binds it itself, such as the
    bluesky proxy; our own sockets bind port 0 instead)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, timeout: float = TIMEOUT) -> None:
    """Poll ``condition`` until true; fail after ``timeout`` seconds."""
    event, deadline = threading.Event(), time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        event.wait(0.02)


def send_in_thread(detector: SimulatedDetector, **kwargs) -> threading.Thread:
    t = threading.Thread(target=detector.send_series, kwargs=kwargs, daemon=True)
    t.start()
    return t


def raw_pusher():
    ctx = zmq.Context.instance()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 1000)
    push.bind("tcp://127.0.0.1:*")
    return push, push.getsockopt_string(zmq.LAST_ENDPOINT)


def replay_live(file_scan, out, fmt="cbor"):
    sender = StreamSender("tcp://127.0.0.1:*", fmt=fmt)
    with LiveProcessor(sender.endpoint, out=out, max_series=1) as live:
        thread = threading.Thread(target=replay_file_scan, args=(file_scan, sender), daemon=True)
        thread.start()
        assert live.wait(TIMEOUT)
    thread.join(TIMEOUT)
    sender.close()
    return live


def detector_start(scenario, correlation_id, series_id=1):
    det = scenario.geometry.detector
    return SeriesStart(series_id=series_id, series_unique_id=f"u{series_id}",
                       image_shape=tuple(det.shape), pixel_mask=det.mask,
                       user_data={SXDM_KEY: {"version": 1, "correlation_id": correlation_id}})


def plan_start(scenario, correlation_id):
    block = {"version": 1, "scan": scenario.scan.describe(),
             "geometry": scenario.geometry.describe(), "correlation_id": correlation_id}
    return PlanStart(correlation_id, f"run-{correlation_id}", block)


@pytest.fixture
def publisher():
    """A snapshot publisher bound to a free loopback port (what a processor publishes on)."""
    from sxdm_stream.sinks.publish import SnapshotPublisher

    pub = SnapshotPublisher("tcp://127.0.0.1:*")
    yield pub
    pub.close()


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
