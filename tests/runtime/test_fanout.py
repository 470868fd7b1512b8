"""process --workers N: a forwarder, worker processes sharded by map rows, a reducer.

The reference is always the single process (the in-process :class:`ScanProcessor`, or
:class:`LiveProcessor` over the same stream): sums and maps equal within 1e-9 relative,
every image accounted for once, a worker that dies reported with its rows missing.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal

import h5py
import numpy as np
import pytest
from conftest import raw_pusher, send_in_thread, wait_until

from sxdm_stream.cli.main import main
from sxdm_stream.messages import ImageFrame, SeriesEnd
from sxdm_stream.pipeline.scan_processor import ScanProcessor
from sxdm_stream.runtime.fanout import FanoutProcessor, row_block_scan, row_blocks
from sxdm_stream.runtime.fanout import wire
from sxdm_stream.runtime.fanout.forwarder import IMAGE, OTHER, peek
from sxdm_stream.runtime.fanout.reducer import stitch
from sxdm_stream.runtime.fanout.worker import RowShard
from sxdm_stream.runtime.processor import LiveProcessor
from sxdm_stream.runtime.settings import Config, setup_for_series
from sxdm_stream.simulators.scenarios import default_scenario
from sxdm_stream.simulators.sender import (SimulatedDetector, frame_positions,
                                           positions_user_data, series_start)
from sxdm_stream.sinks.results_read import read_accumulator_state
from sxdm_stream.sinks.results import read_maps
from sxdm_stream.sources.dectris.codec import (encode_end_v1, encode_end_v2, encode_image_v1,
                                               encode_image_v2, encode_start_v1,
                                               encode_start_v2)

TIMEOUT = 120


@pytest.fixture(scope="module")
def tiny():
    """A 7x6 map (7 rows: blocks of 4 and 3), 5 rocking angles, snake: 210 frames."""
    scenario = default_scenario(shape=(7, 6), n_angles=5, rocking_half_range_deg=0.3)
    return dataclasses.replace(scenario, scan=dataclasses.replace(scenario.scan, snake=True))


def _image(scenario, index, positions=None, series_id=1, unique="u1") -> ImageFrame:
    data = scenario.simulator.frame(*scenario.scan.locate(index))
    return ImageFrame(series_id, index, data, unique,
                      user_data=positions_user_data(positions) if positions else None)


def _shifted_positions(scenario, index):
    """Measured positions one row off the nominal one for every 7th frame (the forwarder and
    the worker must place the frame where the single process does)."""
    positions = frame_positions(scenario, index)
    if index % 7 == 0:
        motor, axis = scenario.scan.motors[0], scenario.scan.axis_um(0)
        positions[motor] = float(axis[(list(axis).index(positions[motor]) + 1) % len(axis)])
    return positions


# ---- shards, worker and reducer without processes ---------------------------------------------
def test_row_blocks_cover_every_row_once():
    assert row_blocks(7, 2) == [(0, 4), (4, 7)]
    assert row_blocks(2, 3) == [(0, 1), (1, 2), (2, 2)]
    for rows in range(1, 12):
        for n in range(1, 5):
            blocks = row_blocks(rows, n)
            assert [r for first, end in blocks for r in range(first, end)] == list(range(rows))


def test_a_row_block_scan_keeps_the_positions_of_its_rows(tiny):
    sub = row_block_scan(tiny.scan, 4, 7)
    assert sub.shape == (3, tiny.scan.shape[1])
    np.testing.assert_allclose(sub.axis_um(0), tiny.scan.axis_um(0)[4:7], rtol=1e-12)
    np.testing.assert_array_equal(sub.axis_um(1), tiny.scan.axis_um(1))


@pytest.mark.parametrize("n_workers, fmt", [(2, "cbor"), (3, "legacy")])
def test_shards_stitched_equal_one_process(tiny, n_workers, fmt):
    """Images placed by measured positions (some on another row than their index says),
    a duplicate and an index out of range: sums and counters as in one process."""
    start = series_start(tiny, 1, "u1", "u1")
    setup = setup_for_series(start, Config().accumulation, None)
    reference = ScanProcessor(setup)
    shards = [RowShard(w, n_workers, Config(), None) for w in range(n_workers)]
    encode_start = encode_start_v2 if fmt == "cbor" else lambda m: encode_start_v1(m, "all")
    encode_image = (lambda m: [encode_image_v2(m)]) if fmt == "cbor" else encode_image_v1
    for shard in shards:
        shard.take(_parts(encode_start(start)))
    indices = [*range(tiny.scan.n_frames), 3, tiny.scan.n_frames]
    for index in indices:
        positions = _shifted_positions(tiny, index % tiny.scan.n_frames)
        image = _image(tiny, index % tiny.scan.n_frames, positions)
        image = dataclasses.replace(image, image_id=index)
        reference.add(index, image.data, positions=image.positions)
        row = tiny.scan.pixel_of_position(positions[tiny.scan.motors[0]],
                                          positions[tiny.scan.motors[1]]) // tiny.scan.shape[1]
        owner = next(w for w, (a, b) in enumerate(row_blocks(7, n_workers)) if a <= row < b)
        assert shards[owner].take(encode_image(image)) == []
        assert peek(encode_image(image))[1].positions == image.positions
    merged = ScanProcessor(setup)
    for shard in shards:
        end = encode_end_v2(SeriesEnd(1, "u1")) if fmt == "cbor" else \
            encode_end_v1(SeriesEnd(1, "u1"))
        (message,) = shard.take(_parts(end))
        header, arrays = wire.decode(message)
        stitch(merged, header, arrays)
    for name, array in reference.accumulator.state().items():
        np.testing.assert_array_equal(merged.accumulator.state()[name], array, err_msg=name)
    assert merged.counters.processed == reference.counters.processed == tiny.scan.n_frames
    assert merged.counters.rejected == reference.counters.rejected == {
        "duplicate_image": 1, "index_out_of_range": 1}
    np.testing.assert_array_equal(merged.included, reference.included)


def _parts(message) -> list:
    return [message] if isinstance(message, bytes) else message


def test_peek_reads_type_ids_and_positions_without_the_pixels(tiny):
    positions = frame_positions(tiny, 9)
    image = _image(tiny, 9, positions)
    for parts in ([encode_image_v2(image)], encode_image_v1(image)):
        kind, peeked = peek(parts)
        assert kind == IMAGE and peeked.image_id == 9 and peeked.data is None
        assert peeked.positions == positions
    assert peek([encode_start_v2(series_start(tiny, 1, "u1", "u1"))])[0] == OTHER


# ---- the processes -----------------------------------------------------------------------------
def _single_process(scenario, out):
    detector = SimulatedDetector(scenario, "tcp://127.0.0.1:*")
    sender = send_in_thread(detector, series_id=1, series_unique_id="u1")
    with LiveProcessor(detector.endpoint, out=out, max_series=1) as live:
        assert live.wait(TIMEOUT)
    sender.join(TIMEOUT)
    detector.close()


def _assert_files_equal(a, b):
    state_a, state_b = read_accumulator_state(a), read_accumulator_state(b)
    assert state_a["fingerprint"] == state_b["fingerprint"]
    for name, array in state_a.items():
        if name != "fingerprint":
            np.testing.assert_allclose(state_b[name], array, rtol=1e-9, atol=0, err_msg=name)
    maps_a, maps_b = read_maps(a), read_maps(b)
    for name in ("intensity", "strain", "tilt_altitude", "qx", "fwhm_qz"):
        np.testing.assert_allclose(maps_b[name], maps_a[name], rtol=1e-9, atol=1e-12,
                                   equal_nan=True, err_msg=name)


def _attrs(path) -> dict:
    with h5py.File(path, "r") as f:
        return dict(f["entry"].attrs)


def test_two_workers_write_the_results_of_one_process(tiny, tmp_path):
    _single_process(tiny, tmp_path / "one.h5")
    detector = SimulatedDetector(tiny, "tcp://127.0.0.1:*")
    sender = send_in_thread(detector, series_id=1, series_unique_id="u1")
    code = main(["process", "--connect", detector.endpoint, "--workers", "2",
                 "--out", str(tmp_path / "two.h5"), "--series", "1"])
    sender.join(TIMEOUT)
    detector.close()
    assert code == 0
    _assert_files_equal(tmp_path / "one.h5", tmp_path / "two.h5")
    attrs = _attrs(tmp_path / "two.h5")
    assert attrs["status"] == "complete" and attrs["fanout_workers"] == 2
    assert attrs["frames_processed"] == attrs["frames_received"] == tiny.scan.n_frames
    assert attrs["fanout_lost_rows"].shape == (0, 2)


@pytest.mark.logs_errors                         # the refused series, as in one process
def test_unplaced_images_then_a_stop_mid_series(tiny, tmp_path, caplog):
    """A series without a scan description: its images go to the workers by index and are
    rejected (counted, reported); a message that cannot be read is rejected once; then a series cut short by a stop (Ctrl-C): the workers
    are told to stop and send what they summed, written as incomplete."""
    n = tiny.scan.n_frames
    push, endpoint = raw_pusher()
    undescribed = dataclasses.replace(series_start(tiny, 1, "u1", "u1"), user_data=None)
    fanout = FanoutProcessor(endpoint, tmp_path / "r.h5", 2).start()
    push.send(encode_start_v2(undescribed))
    for index in range(10):
        push.send(encode_image_v2(_image(tiny, index)))
    push.send(encode_end_v2(SeriesEnd(1, "u1")))
    push.send(b"\xd9\xd9\xf7 not CBOR")               # rejected once, by one worker
    push.send(encode_start_v2(series_start(tiny, 2, "u2", "u2")))
    for index in range(n // 2):
        push.send(encode_image_v2(_image(tiny, index, series_id=2, unique="u2")))
    wait_until(lambda: fanout.forwarder.counts["images"] == 10 + n // 2)
    fanout.stop()
    push.close()
    counts = fanout.accounting()
    assert counts["images"] == 10 + n // 2 and counts["unplaced"] == 10
    assert counts["rejected"] == {"no_scan_description": 10, "malformed": 1}
    assert counts["unreadable"] == 1
    assert counts["processed"] == n // 2 and fanout.failure is None and counts["balanced"]
    assert any("carries no scan description" in r.getMessage()
               for r in caplog.records if r.levelno == logging.ERROR)
    (result,) = fanout.results                     # the refused series has no file
    assert result.series_id == 2 and not result.complete and not result.ended
    attrs = _attrs(result.path)
    assert attrs["status"] == "incomplete" and not attrs["series_ended"]
    assert attrs["frames_processed"] == n // 2 == n - attrs["frames_missing"]


@pytest.mark.logs_errors
def test_a_worker_killed_mid_series_is_reported_and_its_rows_are_missing(tiny, tmp_path, caplog):
    first, end = row_blocks(7, 2)[1]
    n = tiny.scan.n_frames
    reference = tmp_path / "one.h5"
    _single_process(tiny, reference)
    push, endpoint = raw_pusher()
    out = tmp_path / "two.h5"
    with FanoutProcessor(endpoint, out, 2, max_series=1) as fanout:
        push.send(encode_start_v2(series_start(tiny, 1, "u1", "u1")))
        for index in range(n // 2):
            push.send(encode_image_v2(_image(tiny, index, frame_positions(tiny, index))))
        wait_until(lambda: fanout.forwarder.counts["to_1"] >= 10)
        os.kill(fanout.workers[1].pid, signal.SIGKILL)
        wait_until(lambda: 1 in fanout.reducer.dead)
        for index in range(n // 2, n):
            push.send(encode_image_v2(_image(tiny, index, frame_positions(tiny, index))))
        push.send(encode_end_v2(SeriesEnd(1, "u1")))
        assert fanout.wait(TIMEOUT)
    push.close()
    counts = fanout.accounting()
    assert counts["dead_workers"] == {1: -signal.SIGKILL}
    assert "worker 1 died (exit code -9)" in fanout.failure
    assert any(f"rows {first}..{end - 1}" in r.getMessage() for r in caplog.records)
    lost = counts["lost_in_dead_workers"][1]
    assert counts["images"] == n and counts["undeliverable"] > 0
    assert counts["processed"] + lost + counts["undeliverable"] == n and counts["balanced"]
    attrs = _attrs(out)
    assert attrs["status"] == "incomplete"
    np.testing.assert_array_equal(attrs["fanout_lost_rows"], [[first, end]])
    assert attrs["frames_missing"] == n * (end - first) // 7 == n - attrs["frames_processed"]
    kept, lost_rows = slice(0, first), slice(first, end)
    intensity = read_maps(out)["intensity"]
    np.testing.assert_allclose(intensity[kept], read_maps(reference)["intensity"][kept],
                               rtol=1e-9)
    assert np.all(np.isnan(intensity[lost_rows]) | (intensity[lost_rows] == 0))


def test_options_the_fan_out_does_not_support_are_refused(tmp_path, capsys):
    code = main(["process", "--connect", "tcp://127.0.0.1:1", "--workers", "2",
                 "--out", str(tmp_path / "r.h5"), "--publish", "tcp://127.0.0.1:*"])
    assert code == 2
    assert "--workers N (N > 1) does not support --publish" in capsys.readouterr().err
