"""kill -9 during a scan, then ``process --resume``: the final maps are those of an
uninterrupted run given the same frames."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import numpy as np

from sxdm_stream.accumulate import ScanSetup
from sxdm_stream.checkpoint import checkpoint_path
from sxdm_stream.hdf5 import read_accumulator_state, read_maps
from sxdm_stream.pipeline import ScanProcessor
from sxdm_stream.simulators.sender import SimulatedDetector

TIMEOUT = 120


def start_processor(endpoint: str, out, resume: bool) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "sxdm_stream.cli", "process", "--connect", endpoint,
           "--out", str(out), "--series", "1"] + (["--resume"] if resume else [])
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for(condition, timeout: float = TIMEOUT) -> None:
    event, deadline = threading.Event(), time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        event.wait(0.05)


def test_kill_9_then_resume_gives_the_uninterrupted_result(small_scenario, tmp_path):
    scan = small_scenario.scan
    out = tmp_path / "scan.h5"
    ckpt = checkpoint_path(out)

    # first run: paced so that it is still mid-scan when killed
    detector = SimulatedDetector(small_scenario, "tcp://127.0.0.1:*", rate_hz=600)
    stop = threading.Event()
    sender = threading.Thread(target=detector.send_series,
                              kwargs=dict(series_id=4, series_unique_id="run-4", stop=stop))
    child = start_processor(detector.endpoint, out, resume=False)
    sender.start()
    wait_for(lambda: ckpt.exists() and read_accumulator_state(out)["frame_count"].sum() >= 300)
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=TIMEOUT)
    stop.set()
    sender.join(TIMEOUT)
    detector.close()
    assert child.returncode == -signal.SIGKILL
    done_before = int(read_accumulator_state(out)["frame_count"].sum())
    assert 0 < done_before < scan.n_frames

    # second run: the same series is sent again from its start; --resume skips what is in
    detector = SimulatedDetector(small_scenario, "tcp://127.0.0.1:*")
    child = start_processor(detector.endpoint, out, resume=True)
    detector.send_series(series_id=4, series_unique_id="run-4")
    _, err = child.communicate(timeout=TIMEOUT)
    detector.close()
    assert child.returncode == 0, err
    assert "resumed series 4" in err
    assert not ckpt.exists()                     # a complete scan needs no checkpoint

    reference = ScanProcessor(ScanSetup(small_scenario.geometry, scan))
    for index, _a, _p, frame in small_scenario.simulator.frames(reuse_buffer=True):
        reference.add(index, frame)
    state = read_accumulator_state(out)
    np.testing.assert_array_equal(state["frame_count"], reference.accumulator.frame_count)
    np.testing.assert_array_equal(state["histogram"], reference.accumulator.histogram)
    np.testing.assert_allclose(state["moments"], reference.accumulator.moments, rtol=1e-12, atol=1e-9)
    maps = read_maps(out)
    np.testing.assert_allclose(maps["strain"], reference.maps().strain, atol=1e-6, equal_nan=True)
