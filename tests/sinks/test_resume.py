"""kill -9 during a scan, then ``process --resume``: the final maps are those of an
uninterrupted run given the same frames."""

from __future__ import annotations

import dataclasses
import logging
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import h5py
import numpy as np
import pytest

from sxdm_stream.cli.main import main
from sxdm_stream.core.accumulate import ScanSetup
from sxdm_stream.errors import BadMessageError, CheckpointError
from sxdm_stream.messages import ImageFrame, SeriesEnd, SeriesStart
from sxdm_stream.pipeline.scan_processor import ScanProcessor
from sxdm_stream.runtime.processor import LiveProcessor
from sxdm_stream.simulators.scenarios import default_scenario
from sxdm_stream.simulators.sender import SimulatedDetector, series_start
from sxdm_stream.sinks.checkpoint import (checkpoint_matches, checkpoint_path, continues_series,
                                          read_checkpoint, write_checkpoint)
from sxdm_stream.sinks.results import read_accumulator_state, read_maps

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


# ---- checkpoints that cannot lie (issue 11, item 6) -------------------------------------------
def half_scan(scenario, series_frames: int | None = None) -> ScanProcessor:
    """The scenario's first ``series_frames`` frames (default: half), accumulated."""
    processor = ScanProcessor(ScanSetup(scenario.geometry, scenario.scan))
    stop = scenario.scan.n_frames // 2 if series_frames is None else series_frames
    for index, _a, _p, frame in scenario.simulator.frames(reuse_buffer=True):
        if index >= stop:
            break
        processor.add(index, frame)
    return processor


def test_resume_from_a_good_checkpoint_is_bit_exact(small_scenario, small_processed, tmp_path):
    path = tmp_path / "scan.checkpoint.h5"
    before = half_scan(small_scenario)
    before.accumulator.invalid_pixels = 17
    write_checkpoint(path, before, 4, "run-4")
    resumed = read_checkpoint(path, 0.2, None)
    assert (resumed.series_id, resumed.series_unique_id) == (4, "run-4")
    p = resumed.processor
    assert p.resumed_from == path and p.invalid_pixels == 17
    assert resumed.fingerprint == before.setup.fingerprint
    assert checkpoint_matches(resumed, ScanSetup(small_scenario.geometry, small_scenario.scan))
    assert (p.counters.received, p.counters.processed) == (before.counters.received,
                                                           before.counters.processed)
    for index, _a, _p, frame in small_scenario.simulator.frames(reuse_buffer=True):
        p.add(index, frame)                       # the frames already in are refused
    assert p.complete and p.counters.rejected["duplicate_image"] == before.counters.processed
    for name, array in small_processed.accumulator.state().items():
        np.testing.assert_array_equal(p.accumulator.state()[name], array)


def flip(path, offset: int, n: int = 64) -> None:
    """Invert ``n`` bytes of ``path`` from ``offset``."""
    with open(path, "rb+") as fh:
        fh.seek(offset)
        data = bytes(b ^ 0xFF for b in fh.read(n))
        fh.seek(offset)
        fh.write(data)


def dataset_offset(path, name: str) -> int:
    with h5py.File(path, "r") as f:
        return f[name].id.get_offset()


@pytest.mark.parametrize("where", ["moments data", "histogram data", "metadata", "hdf5 header",
                                   "digest"])
def test_a_corrupted_checkpoint_is_refused(small_scenario, tmp_path, where):
    path = tmp_path / "scan.checkpoint.h5"
    write_checkpoint(path, half_scan(small_scenario, 300), 4, "run-4")
    raw = path.read_bytes()
    offset = {"moments data": lambda: dataset_offset(path, "moments") + 4096,
              "histogram data": lambda: dataset_offset(path, "histogram") + 1000,
              "metadata": lambda: raw.index(b'"angles_done"'),
              "hdf5 header": lambda: 512, "digest": lambda: 40}[where]()
    flip(path, offset)
    with pytest.raises(CheckpointError) as refused:
        read_checkpoint(path, 0.2, None)
    message = str(refused.value)
    assert "\n" not in message and str(path) in message and "not resumed" in message
    assert refused.value.reason == "checkpoint_refused"


def test_random_damage_is_refused_or_harmless(small_scenario, tmp_path):
    """64 bytes flipped anywhere (seeded): the checkpoint is refused, or (bytes of the user
    block's padding) restores exactly; never a silently different scan, never a crash of the
    HDF5 library on damaged metadata (the digest is checked before HDF5 reads the file)."""
    path = tmp_path / "scan.checkpoint.h5"
    original = half_scan(small_scenario, 300)
    write_checkpoint(path, original, 4, "run-4")
    good = path.read_bytes()
    rng = np.random.default_rng(11)
    outcomes = Counter()
    for trial in range(40):
        data = bytearray(good)
        span = 4096 if trial % 2 else len(good)   # half of them in the header and metadata
        for k in rng.choice(span, 64, replace=False):
            data[k] ^= 0xFF
        path.write_bytes(bytes(data))
        try:
            restored = read_checkpoint(path, 0.2, None).processor
        except CheckpointError:
            outcomes["refused"] += 1
            continue
        outcomes["restored"] += 1
        for name, array in original.accumulator.state().items():
            np.testing.assert_array_equal(restored.accumulator.state()[name], array)
    assert outcomes["refused"] >= 35


def test_a_corrupted_checkpoint_stops_process_resume_with_exit_2(small_scenario, tmp_path,
                                                                   capsys):
    out = tmp_path / "scan.h5"
    write_checkpoint(checkpoint_path(out), half_scan(small_scenario, 300), 4, "run-4")
    flip(checkpoint_path(out), dataset_offset(checkpoint_path(out), "moments") + 64)
    code = main(["process", "--connect", "tcp://127.0.0.1:9", "--out", str(out), "--resume"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is corrupted" in err[0] and "not resumed" in err[0]
    assert not out.exists()


def test_which_starts_continue_a_series(small_scenario):
    scenario = small_scenario
    processor = half_scan(scenario, 100)
    same = lambda: ScanSetup(scenario.geometry, scenario.scan)             # noqa: E731
    other_scan = dataclasses.replace(scenario.scan,
                                     rocking_angles=scenario.scan.rocking_angles[:-1])
    other = lambda: ScanSetup(scenario.geometry, other_scan)               # noqa: E731

    def undescribed():
        raise BadMessageError("no description", "no_scan_description")

    v2, v1 = SeriesStart(4, "run-4"), SeriesStart(4, None)
    assert continues_series(processor, v2, SeriesStart(4, "run-4"), same, resumed=False)
    assert not continues_series(processor, v2, SeriesStart(4, "run-5"), same, resumed=False)
    assert not continues_series(processor, v1, SeriesStart(4, None), same, resumed=False)
    assert continues_series(processor, v1, SeriesStart(4, None), same, resumed=True)
    assert not continues_series(processor, v1, SeriesStart(5, None), same, resumed=True)
    assert not continues_series(processor, v1, SeriesStart(4, None), undescribed, resumed=True)
    assert continues_series(processor, v2, SeriesStart(4, "run-4"), undescribed, resumed=True)
    assert not continues_series(processor, v2, SeriesStart(4, "run-9"), same, resumed=True)
    for start in (SeriesStart(4, "run-4"), SeriesStart(4, None), SeriesStart(9, "x")):
        with pytest.raises(CheckpointError, match="is of another scan .* differ"):
            continues_series(processor, v2, start, other, resumed=True)
    # a detector restarting the series it sends is not checked against a checkpoint
    assert continues_series(processor, v2, SeriesStart(4, "run-4"), other, resumed=False)


def submit_series(live, scenario, series_id: int, unique_id: str | None) -> None:
    live.submit(dataclasses.replace(series_start(scenario, series_id, unique_id or "", "c"),
                                    series_unique_id=unique_id))
    for index, _a, _p, frame in scenario.simulator.frames():
        live.submit(ImageFrame(series_id, index, frame, unique_id))
    live.submit(SeriesEnd(series_id, unique_id))


def test_stream_v1_resume_continues_the_checkpoint_bit_exact(small_scenario, small_processed,
                                                            tmp_path):
    """Stream v1 has no unique id: the re-sent header of the same series and scan continues
    the checkpoint instead of closing it."""
    out = tmp_path / "scan.h5"
    write_checkpoint(checkpoint_path(out), half_scan(small_scenario), 4, None)
    with LiveProcessor(None, out=out, resume=True, max_series=1) as live:
        submit_series(live, small_scenario, 4, None)
        assert live.wait(TIMEOUT)
    assert live.results[-1].complete and live.results[-1].path == out
    state = read_accumulator_state(out)
    for name in ("moments", "histogram", "frame_count"):
        np.testing.assert_array_equal(state[name], small_processed.accumulator.state()[name])


@pytest.mark.logs_errors
def test_a_checkpoint_of_another_scan_is_refused_and_never_written(small_scenario, tmp_path,
                                                                   caplog):
    other = default_scenario(shape=(8, 9), n_angles=5, rocking_half_range_deg=0.2)
    out = tmp_path / "scan.h5"
    write_checkpoint(checkpoint_path(out), half_scan(small_scenario), 4, "run-4")
    checkpoint = checkpoint_path(out).read_bytes()
    with LiveProcessor(None, out=out, resume=True, max_series=1) as live:
        submit_series(live, other, 7, "run-7")
        assert live.wait(TIMEOUT)
    assert live.status().rejected == {"checkpoint_refused": 1}
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "is of another scan" in errors[0] and "refused" in errors[0]
    assert not out.exists()                       # the checkpoint's maps went nowhere
    assert checkpoint_path(out).read_bytes() == checkpoint   # left for the user to move
    result = live.results[-1]                     # the new scan, afresh, as a clean run
    assert result.complete and result.scan == other.scan and result.path != out
    reference = half_scan(other, other.scan.n_frames)
    np.testing.assert_array_equal(read_accumulator_state(result.path)["moments"],
                                  reference.accumulator.moments)
