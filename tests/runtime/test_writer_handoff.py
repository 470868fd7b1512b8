"""Writes at rocking-angle ends: the copy made while frames keep coming, checkpoints that
resume, results files that equal a whole write (``stream/runtime/handoff.py``, ``writer.py``)."""

from __future__ import annotations

import shutil
import threading

import h5py
import numpy as np

from sxdm_stream.analysis.scan_analysis import analyse
from sxdm_stream.core.accumulate import ScanSetup
from sxdm_stream.core.maps import map_arrays
from sxdm_stream.messages import SeriesStart
from sxdm_stream.pipeline.scan_processor import ScanProcessor
from sxdm_stream.runtime import handoff as handoff_module
from sxdm_stream.runtime.handoff import SumsHandoff
from sxdm_stream.runtime.settings import Config
from sxdm_stream.runtime.writer import ResultsWriter
from sxdm_stream.sinks.checkpoint import checkpoint_path, read_checkpoint
from sxdm_stream.sinks.results import read_accumulator_state, read_maps, write_results

TIMEOUT = 60.0


def frames_of(scenario):
    """(index, frame) of the whole scan, frames copied (the simulator reuses its buffer)."""
    return [(index, frame.copy()) for index, _a, _p, frame
            in scenario.simulator.frames(reuse_buffer=True)]


def assert_same_sums(a: ScanProcessor, b: ScanProcessor) -> None:
    for name, array in a.accumulator.state().items():
        np.testing.assert_array_equal(array, b.accumulator.state()[name], err_msg=name)
    np.testing.assert_array_equal(a.included, b.included)
    assert a.invalid_pixels == b.invalid_pixels
    assert (a.counters.received, a.counters.processed) == (b.counters.received,
                                                           b.counters.processed)


def test_a_copy_made_while_frames_come_equals_the_sums_when_the_worker_finishes_it(
        small_scenario, monkeypatch):
    monkeypatch.setattr(handoff_module, "_BLOCK_BYTES", 1)   # one map pixel per block
    frames = iter(frames_of(small_scenario))
    live = ScanProcessor(ScanSetup(small_scenario.geometry, small_scenario.scan))
    n_points = small_scenario.scan.n_points
    for _ in range(2 * n_points + 3):        # two angles and the first frames of the third
        live.add(*next(frames))
    spare = live.accumulator.copy()          # an earlier copy's arrays, reused: stale content
    handoff = SumsHandoff(live, into=spare)
    for k, (start, stop) in enumerate(handoff.copy_blocks()):
        # frames into rows already copied, rows not copied yet, and the row being copied
        if k % 3 == 0:
            live.add(*next(frames))
    assert handoff.copied.is_set() and handoff.rows_recopied == 0
    live.add(*next(frames))                  # between the writer's part and the worker's
    assert handoff.finish()
    assert handoff.rows_recopied > 0 and handoff.wait(0)
    assert_same_sums(handoff.copy, live)


def test_a_cancelled_copy_is_not_written(small_scenario):
    live = ScanProcessor(ScanSetup(small_scenario.geometry, small_scenario.scan))
    handoff = SumsHandoff(live)
    handoff.cancel()
    handoff.copy_histogram()
    assert not handoff.finish() or handoff.state == "cancelled"
    assert not handoff.wait(0)


def run_scan_with_writer(scenario, path, kill_after_angle: int):
    """Feed the scan to a live processor, its writer on its own thread writing at every
    angle end (the worker's part of each copy done between frames, as the live worker does).
    Returns (processor, copy of the checkpoint as it was after ``kill_after_angle``'s write,
    the intermediate results file at that moment)."""
    settings = Config()
    writer = ResultsWriter(settings, None, lambda result: None)
    thread = threading.Thread(target=writer.run, name="writer")
    thread.start()
    live = ScanProcessor(ScanSetup(scenario.geometry, scenario.scan))
    series, queued, angles_written = SeriesStart(4, "run-4"), 0, 0
    killed = path.with_name("killed.checkpoint.h5")
    running = path.with_name("running.h5")
    try:
        for index, frame in frames_of(scenario):
            live.add(index, frame)
            writer.finish_handoff()
            if live.angles_done > angles_written:
                angles_written = live.angles_done
                assert writer.schedule(live, series, False, False, path)
                queued += 1
                while not writer.wait_done(queued, timeout=0.01):
                    writer.finish_handoff()  # the worker's loop, between messages
                if angles_written == kill_after_angle:
                    shutil.copyfile(checkpoint_path(path), killed)   # kill -9 now
                    shutil.copyfile(path, running)
        writer.schedule(live, series, True, True, path)
    finally:
        writer.close()
        thread.join(TIMEOUT)
    assert writer.errors == 0 and writer.jobs_done == queued + 1
    return live, killed, running


def test_checkpoints_written_at_angle_ends_resume_into_the_uninterrupted_maps(
        small_scenario, small_processed, tmp_path):
    path = tmp_path / "scan.h5"
    live, killed, running = run_scan_with_writer(small_scenario, path, kill_after_angle=7)
    assert not checkpoint_path(path).exists()          # complete: the checkpoint went away
    resumed = read_checkpoint(killed, small_processed.mask_fraction, small_processed.d_ref)
    p = resumed.processor
    assert resumed.series_id == 4 and p.angles_done == 7
    assert 0 < p.included.sum() < small_scenario.scan.n_frames
    for index, frame in frames_of(small_scenario):
        if not p.included[index]:
            p.add(index, frame)
    assert p.complete
    for name, array in small_processed.accumulator.state().items():
        np.testing.assert_allclose(p.accumulator.state()[name], array, rtol=1e-12, atol=0,
                                   err_msg=name)
    reference = map_arrays(small_processed.maps())
    for name, value in map_arrays(p.maps()).items():
        np.testing.assert_allclose(value, reference[name], rtol=1e-12, atol=0, err_msg=name)
    # the results file written at that angle end holds the same sums as the checkpoint
    state = read_accumulator_state(running)
    killed_state = read_checkpoint(killed, 0.1, None).processor.accumulator.state()
    for name in ("moments", "histogram", "frame_count"):
        np.testing.assert_array_equal(state[name], killed_state[name], err_msg=name)
    with h5py.File(running, "r") as f:
        assert f["entry"].attrs["status"] == "running"
        assert f["entry/qspace/histogram"].compression is None   # compressed at the end only


def test_results_written_at_angle_ends_then_finalised_equal_a_whole_write(
        small_scenario, small_processed, tmp_path):
    path = tmp_path / "scan.h5"
    live, _killed, _running = run_scan_with_writer(small_scenario, path, kill_after_angle=3)
    whole = tmp_path / "whole.h5"
    analysis = analyse(small_processed.accumulator, Config().analysis, angles_done=None,
                       final=True)
    write_results(whole, analysis.maps, small_processed.setup, small_processed.accumulator,
                  hits=small_processed.setup.hits(), analysis=analysis)
    for name, value in read_maps(whole).items():
        np.testing.assert_array_equal(read_maps(path)[name], value, err_msg=name)
    with h5py.File(path, "r") as written, h5py.File(whole, "r") as reference:
        assert written["entry"].attrs["status"] == "complete"
        assert written["entry/qspace/histogram"].compression == "gzip"
        names = [], []
        for f, found in zip((reference, written), names):
            f.visititems(lambda name, node, found=found: found.append(name)
                         if isinstance(node, h5py.Dataset) else None)
        assert names[0] == names[1]
        for name in names[0]:
            if name in ("entry/process/date",):
                continue
            a, b = written[name][()], reference[name][()]
            if isinstance(b, np.ndarray) and b.dtype.kind == "f":
                np.testing.assert_array_equal(a, b, err_msg=name)
            else:
                assert np.array_equal(a, b), name
