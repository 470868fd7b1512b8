"""The live runtime under hostile input and failures (issue 11): no thread stops on one
message, queues bounded in bytes, series told apart by unique id, honest status and exit
codes, SIGTERM as Ctrl-C, stream v1 resume. Over real ZeroMQ sockets on loopback."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import cbor2
import h5py
import numpy as np
import pytest
import zmq
from conftest import process_scenario
from conftest import raw_pusher, send_in_thread, wait_until

from sxdm_stream.cli.main import main
from sxdm_stream.cli.signals import InterruptOnSignals
from sxdm_stream.config import Config
from sxdm_stream.errors import BadMessageError, ConfigError
from sxdm_stream.messages import ImageFrame, SeriesEnd, SeriesStart
from sxdm_stream.pipeline.scan_processor import ScanProcessor
from sxdm_stream.runtime import snapshots as live_snapshots, writer as live_writer
from sxdm_stream.runtime.processor import LiveProcessor, LiveSettings
from sxdm_stream.runtime.queues import BoundedQueue
from sxdm_stream.runtime.writer import ResultsWriter
from sxdm_stream.simulators.scenarios import default_scenario
from sxdm_stream.simulators.sender import SimulatedDetector, series_start
from sxdm_stream.sinks.checkpoint import checkpoint_path
from sxdm_stream.sinks.paths import ResultPaths, check_output
from sxdm_stream.sinks.publish import decode_pixel_reply, decode_pixel_request, encode_pixel_request
from sxdm_stream.sinks.results import read_accumulator_state, read_maps
from sxdm_stream.sources.dectris.codec import (Decoder, encode_end_v2, encode_image_v2,
                                               encode_start_v2)
from sxdm_stream.sources.recordings.format import RecordingWriter

TIMEOUT = 120
SXDM_STREAM = str(Path(sys.executable).parent / "sxdm-stream")


@pytest.fixture(scope="module")
def tiny():
    """A 6x6 map, 5 rocking angles: 180 frames."""
    return default_scenario(shape=(6, 6), n_angles=5, rocking_half_range_deg=0.3)


@pytest.fixture(scope="module")
def tiny_reference(tiny) -> ScanProcessor:
    return process_scenario(tiny).processor


def frame(scenario, index: int) -> np.ndarray:
    return scenario.simulator.frame(*scenario.scan.locate(index))


def image_v2(scenario, index: int, series_id: int = 1, unique: str = "u1") -> bytes:
    return encode_image_v2(ImageFrame(series_id, index, frame(scenario, index), unique))


def send_scan_v2(push, scenario, series_id: int = 1, unique: str = "u1", frames=None,
                 end: bool = True) -> None:
    push.send(encode_start_v2(series_start(scenario, series_id, unique, unique)))
    for index in range(scenario.scan.n_frames) if frames is None else frames:
        push.send(image_v2(scenario, index, series_id, unique))
    if end:
        push.send(encode_end_v2(SeriesEnd(series_id, unique)))


def entry_attrs(path) -> dict:
    with h5py.File(path, "r") as f:
        return dict(f["entry"].attrs)


# ---- item 3: queues bounded in bytes ------------------------------------------------------------
def test_bounded_queue_holds_at_most_its_items_and_bytes():
    q = BoundedQueue(max_items=3, max_bytes=100)
    assert q.put_nowait("a", 60) and q.put_nowait("b", 40)
    assert not q.put_nowait("c", 1)                # bytes full
    assert not q.put("c", 1, timeout=0.01)
    assert q.get() == "a" and q.nbytes == 40
    assert q.put_nowait("c", 10) and q.put_nowait("d", 0)
    assert not q.put_nowait("e", 0)                # items full
    assert q.items() == ["b", "c", "d"]
    for _ in range(3):
        q.get()
    assert q.put_nowait("big", 1000)               # alone, an item over the bound passes
    assert not q.put_nowait("x", 0)
    q.put_beyond_bounds(None)
    assert q.qsize() == 2
    q.get(), q.get()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.01)


def test_the_frame_queue_is_bounded_in_bytes_and_overflow_is_counted():
    frame_bytes = 4000
    settings = Config(live=LiveSettings(policy="drop", frame_queue_messages=1000,
                                        frame_queue_mib=10 * frame_bytes / 2**20))
    live = LiveProcessor(None, settings=settings)   # not started: nothing takes frames out
    data = np.zeros((20, 50), np.uint32)
    for index in range(25):
        live.submit(ImageFrame(1, index, data, "u"))
    status = live.status()
    live.stop()
    assert status.queued == 10 and status.queued_bytes == 10 * frame_bytes
    assert status.dropped == 15 and status.received == 25


def test_the_writer_queue_is_bounded_and_a_stopped_writer_never_blocks_the_worker(
        small_processed):
    settings = Config(live=LiveSettings(writer_queue_jobs=2, writer_queue_mib=0.001))
    writer = ResultsWriter(settings, None, lambda result: None)
    assert (writer.jobs.max_items, writer.jobs.max_bytes) == (2, int(0.001 * 2**20))
    series = SeriesStart(1, "u")
    # no writer thread: last jobs are queued all the same (stop() writes them), never waited on
    for _ in range(3):
        writer.schedule(small_processed, series, True, True, None)
    assert writer.pending_ended() == 3
    assert not writer.schedule(small_processed, series, False, False, None)   # busy: skipped


# ---- item 2: one message never stops a loop ------------------------------------------------------
@pytest.mark.parametrize("payload", [
    b'{"request": "pixel", "point": true}',
    b'{"request": "pixel", "point": ' + b"7" * 5000 + b"}",
    b"[" * 100_000 + b"]" * 100_000,
    b'{"request": "pixel", "point": -1}',
    b'{"request": "pixel", "point": 1.0}',
    b'{"request": "pixel"}',
    b"\xff\xfe",
    b"[]",
])
def test_pixel_requests_are_validated_before_use(payload):
    with pytest.raises(BadMessageError):
        decode_pixel_request([payload])


def test_bad_pixel_requests_get_an_error_reply_and_the_worker_goes_on(tiny, tiny_reference):
    push, endpoint = raw_pusher()
    live = LiveProcessor(endpoint, serve="tcp://127.0.0.1:*", max_series=1)
    req = zmq.Context.instance().socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.connect(live.serve_endpoint)
    n = tiny.scan.n_frames
    with live:
        send_scan_v2(push, tiny, frames=range(n // 2), end=False)
        for payload in (b'{"request": "pixel", "point": true}',
                        b'{"request": "pixel", "point": ' + b"7" * 5000 + b"}",
                        b"[" * 100_000 + b"]" * 100_000,
                        b'{"request": "pixel", "point": 999999}'):
            req.send(payload)
            assert req.poll(TIMEOUT * 1000)
            with pytest.raises(BadMessageError, match="answered"):
                decode_pixel_reply(req.recv_multipart())
        for index in range(n // 2, n):
            push.send(image_v2(tiny, index))
        wait_until(lambda: live.status().processed == n)
        req.send_multipart(encode_pixel_request(3))
        assert req.poll(TIMEOUT * 1000)
        reply = decode_pixel_reply(req.recv_multipart())
        push.send(encode_end_v2(SeriesEnd(1, "u1")))
        assert live.wait(TIMEOUT)
    req.close()
    push.close()
    np.testing.assert_allclose(reply.arrays["rocking_curve"],
                               tiny_reference.accumulator.moments[:, 3, 0])
    assert live.status().internal_errors == {} and live.failure is None
    assert live.results[-1].complete


def v2_image_of_absurd_dims(series_id: int, unique: str) -> bytes:
    array = cbor2.CBORTag(40, [[2**70, 0], cbor2.CBORTag(69, b"")])
    return cbor2.dumps(cbor2.CBORTag(55799, {
        "type": "image", "series_id": series_id, "series_unique_id": unique, "image_id": 0,
        "data": {"threshold_1": array}}))


def v1_lz4_image_declared_huge(series_id: int) -> list[bytes]:
    description = {"htype": "dimage_d-1.0", "shape": [100000, 100000], "type": "uint32",
                   "encoding": "lz4<", "size": 16}
    return [json.dumps({"htype": "dimage-1.0", "series": series_id, "frame": 0}).encode(),
            json.dumps(description).encode(), b"\x10" * 16,
            json.dumps({"htype": "dconfig-1.0", "real_time": 0}).encode()]


@pytest.mark.logs_errors
def test_hostile_images_never_stop_the_receiver(tiny, tiny_reference, tmp_path):
    push, endpoint = raw_pusher()
    n = tiny.scan.n_frames
    with LiveProcessor(endpoint, out=tmp_path / "r.h5", max_series=1) as live:
        send_scan_v2(push, tiny, frames=range(n // 2), end=False)
        push.send(v2_image_of_absurd_dims(1, "u1"))
        push.send_multipart(v1_lz4_image_declared_huge(1))
        for index in range(n // 2, n):
            push.send(image_v2(tiny, index))
        push.send(encode_end_v2(SeriesEnd(1, "u1")))
        assert live.wait(TIMEOUT)
    push.close()
    status = live.status()
    assert live.failure is None and status.processed == n
    assert sum(status.rejected.values()) == 2, status.rejected
    assert live.results[-1].complete
    np.testing.assert_array_equal(read_accumulator_state(tmp_path / "r.h5")["histogram"],
                                  tiny_reference.accumulator.histogram)


@pytest.mark.logs_errors
def test_an_exception_in_the_receiver_is_counted_and_the_scan_completes(
        tiny, tiny_reference, monkeypatch, caplog):
    decode = Decoder.decode

    def decode_or_fail(self, parts, received_s=None):
        if parts[0] == b"boom":
            raise RuntimeError("a decoder bug")
        return decode(self, parts, received_s)

    monkeypatch.setattr(Decoder, "decode", decode_or_fail)
    push, endpoint = raw_pusher()
    with LiveProcessor(endpoint, max_series=1) as live:
        send_scan_v2(push, tiny, frames=range(10), end=False)
        push.send(b"boom")
        push.send(b"boom")
        for index in range(10, tiny.scan.n_frames):
            push.send(image_v2(tiny, index))
        push.send(encode_end_v2(SeriesEnd(1, "u1")))
        assert live.wait(TIMEOUT)
    push.close()
    status = live.status()
    assert status.internal_errors == {"receiver": 2}
    assert status.rejected == {"internal_error": 2}
    assert status.processed == tiny.scan.n_frames and live.results[-1].complete
    np.testing.assert_allclose(live.results[-1].maps.strain, tiny_reference.maps().strain,
                               atol=1e-9, equal_nan=True)
    logged = [r for r in caplog.records if "internal error in the receiver" in r.getMessage()]
    assert len(logged) == 1                      # once per kind


@pytest.mark.logs_errors
def test_an_exception_on_one_frame_is_counted_and_the_result_says_incomplete(
        tiny, tmp_path, monkeypatch):
    add = ScanProcessor.add

    def add_or_fail(self, frame_index, *args, **kwargs):
        if frame_index == 40:
            raise RuntimeError("a kernel bug")
        return add(self, frame_index, *args, **kwargs)

    monkeypatch.setattr(ScanProcessor, "add", add_or_fail)
    push, endpoint = raw_pusher()
    out = tmp_path / "r.h5"
    with LiveProcessor(endpoint, out=out, max_series=1) as live:
        send_scan_v2(push, tiny)
        assert live.wait(TIMEOUT)
    push.close()
    status = live.status()
    assert status.internal_errors == {"worker": 1}
    assert status.rejected == {"internal_error": 1}
    result = live.results[-1]
    angle = tiny.scan.locate(40)[0]
    expected = np.zeros(tiny.scan.n_angles, int)
    expected[angle] = 1
    assert not result.complete and result.ended and result.written
    np.testing.assert_array_equal(result.missing, expected)
    attrs = entry_attrs(out)
    assert attrs["status"] == "incomplete" and attrs["frames_missing"] == 1
    np.testing.assert_array_equal(attrs["frames_missing_per_angle"], expected)
    assert checkpoint_path(out).exists()         # the missing frame can still be resumed


@pytest.mark.logs_errors
def test_snapshot_and_writer_errors_are_counted_and_the_results_still_written(
        tiny, tiny_reference, tmp_path, monkeypatch):
    def failing_analyse(*args, **kwargs):
        raise RuntimeError("an analysis bug")

    monkeypatch.setattr(live_snapshots, "analyse", failing_analyse)
    do, failed = ResultsWriter._do, []

    def do_or_fail_once(self, job):
        if not failed:
            failed.append(job)
            raise RuntimeError("a writer bug")
        return do(self, job)

    monkeypatch.setattr(ResultsWriter, "_do", do_or_fail_once)
    push, endpoint = raw_pusher()
    out = tmp_path / "r.h5"
    with LiveProcessor(endpoint, out=out, publish="tcp://127.0.0.1:*", max_series=1) as live:
        send_scan_v2(push, tiny)
        assert live.wait(TIMEOUT)
    push.close()
    errors = live.status().internal_errors
    assert errors["writer"] == 1 and errors["snapshots"] >= 1, errors
    assert live.results[-1].complete and entry_attrs(out)["status"] == "complete"
    np.testing.assert_allclose(read_maps(out)["strain"], tiny_reference.maps().strain,
                               atol=1e-9, equal_nan=True)


@pytest.mark.logs_errors
def test_a_dead_worker_stops_the_run_writes_incomplete_and_the_cli_exits_1(
        tiny, tmp_path, monkeypatch, capsys):
    get, taken = BoundedQueue.get, []

    def get_or_die(self, timeout=None):
        if threading.current_thread().name == "sxdm-worker" and len(taken) >= 60:
            raise RuntimeError("the queue broke")
        item = get(self, timeout)
        taken.append(item)
        return item

    monkeypatch.setattr(BoundedQueue, "get", get_or_die)
    detector = SimulatedDetector(tiny, "tcp://127.0.0.1:*")
    stop = threading.Event()
    sender = send_in_thread(detector, series_id=2, series_unique_id="u2", stop=stop)
    out = tmp_path / "r.h5"
    code = main(["process", "--connect", detector.endpoint, "--out", str(out), "--series", "1"])
    stop.set()
    sender.join(TIMEOUT)
    detector.close()
    err = capsys.readouterr().err
    assert code == 1
    assert "the sxdm-worker thread stopped: RuntimeError: the queue broke" in err
    assert len(err.strip().splitlines()) == 1
    attrs = entry_attrs(out)
    assert attrs["status"] == "incomplete"
    assert 0 < attrs["frames_processed"] < tiny.scan.n_frames
    assert attrs["frames_missing"] == tiny.scan.n_frames - attrs["frames_processed"]


# ---- item 4: a series is (series_id, series_unique_id) ------------------------------------------
def test_an_end_of_another_unique_id_does_not_end_the_series(tiny, tiny_reference, tmp_path):
    push, endpoint = raw_pusher()
    n = tiny.scan.n_frames
    with LiveProcessor(endpoint, out=tmp_path / "r.h5", max_series=1) as live:
        send_scan_v2(push, tiny, frames=range(n // 2), end=False)
        push.send(encode_end_v2(SeriesEnd(1, "another")))
        for index in range(n // 2, n):
            push.send(image_v2(tiny, index))
        push.send(encode_end_v2(SeriesEnd(1, "u1")))
        assert live.wait(TIMEOUT)
    push.close()
    status = live.status()
    assert status.rejected == {"unknown_series": 1} and status.processed == n
    assert live.results[-1].complete and entry_attrs(tmp_path / "r.h5")["status"] == "complete"
    np.testing.assert_allclose(read_maps(tmp_path / "r.h5")["strain"],
                               tiny_reference.maps().strain, atol=1e-9, equal_nan=True)


def test_five_series_with_the_same_id_never_overwrite_each_other(tiny, tiny_reference,
                                                                 tmp_path):
    """As DECTRIS' own sample messages: five series, all series_id=1."""
    detector = SimulatedDetector(tiny, "tcp://127.0.0.1:*")
    out = tmp_path / "r.h5"
    uniques = [f"run-{i}" for i in range(5)]
    (tmp_path / "r_1.h5").write_bytes(b"a file from before")
    with LiveProcessor(detector.endpoint, out=out, max_series=5) as live:
        for unique in uniques:
            detector.send_series(series_id=1, series_unique_id=unique)
        assert live.wait(TIMEOUT)
    detector.close()
    paths = [r.path for r in live.results]
    assert len(set(paths)) == 5 and paths[0] == out
    assert (tmp_path / "r_1.h5").read_bytes() == b"a file from before"
    for result, unique in zip(live.results, uniques):
        attrs = entry_attrs(result.path)
        assert attrs["series_unique_id"] == unique and attrs["status"] == "complete"
        np.testing.assert_allclose(read_maps(result.path)["strain"],
                                   tiny_reference.maps().strain, atol=1e-9, equal_nan=True)


def test_result_paths_name_repeated_series_by_unique_id(tmp_path):
    paths = ResultPaths(tmp_path / "r.h5")
    (tmp_path / "r_7.h5").touch()
    assert paths.path_for(SeriesStart(7, "a"), 1) == tmp_path / "r.h5"
    assert paths.path_for(SeriesStart(7, "b"), 2) == tmp_path / "r_7_b.h5"   # r_7.h5 existed
    assert paths.path_for(SeriesStart(7, "b/c"), 3) == tmp_path / "r_7_b_c.h5"
    assert paths.path_for(SeriesStart(7, None), 4) == tmp_path / "r_7_2.h5"
    template = ResultPaths(tmp_path / "s_{series_id}.h5")
    assert template.path_for(SeriesStart(1, "x"), 1) == tmp_path / "s_1.h5"
    assert template.path_for(SeriesStart(1, "y"), 2) == tmp_path / "s_1_y.h5"


def test_an_existing_out_is_never_replaced_unless_asked(tmp_path, capsys):
    out = tmp_path / "r.h5"
    out.write_bytes(b"last night's scan")
    with pytest.raises(ConfigError, match="exists"):
        LiveProcessor(None, out=out)
    code = main(["process", "--connect", "tcp://127.0.0.1:1", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "exists" in err and "--overwrite" in err
    assert len(err.strip().splitlines()) == 1
    assert out.read_bytes() == b"last night's scan"
    LiveProcessor(None, out=out, overwrite=True).stop()
    with pytest.raises(ConfigError, match="no checkpoint"):
        LiveProcessor(None, out=out, resume=True)


# ---- item 5: honest status and exit codes --------------------------------------------------------
def test_missing_frames_give_an_incomplete_result_and_exit_1(tiny, tmp_path, capsys, caplog):
    detector = SimulatedDetector(tiny, "tcp://127.0.0.1:*")
    n_points = tiny.scan.n_points
    skipped = {2 * n_points + 1, 2 * n_points + 5, 4 * n_points}
    frames = [i for i in range(tiny.scan.n_frames) if i not in skipped]
    sender = send_in_thread(detector, series_id=3, series_unique_id="u3", frames=frames)
    out = tmp_path / "r.h5"
    code = main(["process", "--connect", detector.endpoint, "--out", str(out), "--series", "1"])
    sender.join(TIMEOUT)
    detector.close()
    err = capsys.readouterr().err
    assert code == 1 and "1 of 1 series incomplete" in err and "3 frames missing" in err
    attrs = entry_attrs(out)
    assert attrs["status"] == "incomplete" and attrs["frames_missing"] == 3
    np.testing.assert_array_equal(attrs["frames_missing_per_angle"], [0, 0, 2, 0, 1])
    assert any("3 frames missing (rocking angle 2: 2, 4: 1)" in r.getMessage()
               for r in caplog.records)


def test_an_output_folder_that_is_missing_is_refused_at_start(tmp_path, capsys):
    out = tmp_path / "nowhere" / "r.h5"
    assert main(["process", "--connect", "tcp://127.0.0.1:1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and len(err.strip().splitlines()) == 1
    recording = tmp_path / "run.stream"
    recording.write_bytes(b"")
    assert main(["process-file", str(recording), "--out", str(out), "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err


def write_recording(path: Path, scenario, frames) -> Path:
    with RecordingWriter(path) as rec:
        rec.write([encode_start_v2(series_start(scenario, 1, "u1", "u1"))], 0.0)
        for index in frames:
            rec.write([image_v2(scenario, index)], 0.0)
        rec.write([encode_end_v2(SeriesEnd(1, "u1"))], 0.0)
    return path


@pytest.mark.logs_errors
def test_process_file_exit_status_says_complete_incomplete_or_not_written(
        tiny, tmp_path, monkeypatch, capsys):
    n = tiny.scan.n_frames
    whole = write_recording(tmp_path / "whole.stream", tiny, range(n))
    holed = write_recording(tmp_path / "holed.stream", tiny, [i for i in range(n) if i != 7])
    out = tmp_path / "r.h5"

    def process_file(recording, *flags):
        code = main(["process-file", str(recording), "--out", str(out), "--no-progress", *flags])
        return code, capsys.readouterr().err

    assert process_file(whole) == (0, "")
    code, err = process_file(whole)
    assert code == 2 and "exists" in err                      # never replaced unasked
    code, err = process_file(holed, "--overwrite")
    assert code == 1 and "1 frames missing (rocking angle 0: 1)" in err
    assert entry_attrs(out)["status"] == "incomplete"
    out.unlink()

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(live_writer, "write_results", no_space)
    code, err = process_file(whole)
    assert code == 1 and "not written" in err.lower() and not out.exists()


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="no procfs")
def test_an_output_folder_nobody_can_write_is_refused_at_start():
    # procfs takes no new file, from root either (CI runs as root, which ignores modes)
    with pytest.raises(ConfigError, match="cannot write in the output folder /proc"):
        check_output(Path("/proc/r.h5"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in read-only folders")
def test_a_read_only_output_folder_is_refused_at_start(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="cannot write"):
            check_output(folder / "r.h5")
    finally:
        folder.chmod(0o700)


@pytest.mark.logs_errors
def test_a_failed_final_write_is_retried(tiny, tiny_reference, tmp_path, monkeypatch):
    write, failed = ResultsWriter._write, []

    def write_or_fail_once(self, job, analysis):
        if job.last and not failed:
            failed.append(job)
            raise OSError(28, "No space left on device")
        return write(self, job, analysis)

    monkeypatch.setattr(ResultsWriter, "_write", write_or_fail_once)
    push, endpoint = raw_pusher()
    out = tmp_path / "r.h5"
    with LiveProcessor(endpoint, out=out, max_series=1) as live:
        send_scan_v2(push, tiny)
        assert live.wait(TIMEOUT)
    push.close()
    result = live.results[-1]
    assert failed and result.written and result.write_error is None
    assert live.write_errors == 1 and not live.writer.unwritten()
    assert entry_attrs(out)["status"] == "complete"
    np.testing.assert_allclose(read_maps(out)["strain"], tiny_reference.maps().strain,
                               atol=1e-9, equal_nan=True)


@pytest.mark.logs_errors
def test_results_never_written_exit_1_and_never_claim_complete(tiny, tmp_path, monkeypatch,
                                                               capsys, caplog):
    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(live_writer, "write_results", no_space)
    detector = SimulatedDetector(tiny, "tcp://127.0.0.1:*")
    sender = send_in_thread(detector, series_id=1, series_unique_id="u1")
    out = tmp_path / "r.h5"
    code = main(["process", "--connect", detector.endpoint, "--out", str(out), "--series", "1"])
    sender.join(TIMEOUT)
    detector.close()
    err = capsys.readouterr().err
    assert code == 1 and "could not be written" in err and "No space left" in err
    assert not out.exists()
    assert not any("complete -> " in r.getMessage() for r in caplog.records)


@pytest.mark.logs_errors
def test_an_output_folder_removed_during_the_run_is_reported(tiny, tmp_path):
    folder = tmp_path / "sub"
    folder.mkdir()
    live = LiveProcessor(None, out=folder / "r.h5", max_series=1).start()
    folder.rmdir()
    live.submit(series_start(tiny, 1, "u1", "u1"))
    for index in range(tiny.scan.n_frames):
        live.submit(ImageFrame(1, index, frame(tiny, index), "u1"))
    live.submit(SeriesEnd(1, "u1"))
    assert live.wait(TIMEOUT)
    live.stop()
    result = live.results[-1]
    assert result.complete and not result.written and "No such file" in result.write_error
    assert live.writer.unwritten() == [result]
    assert "NOT WRITTEN" in result.describe()


@pytest.mark.logs_errors
def test_a_histogram_over_budget_stops_the_run_with_its_message(tiny, capsys, tmp_path):
    detector = SimulatedDetector(tiny, "tcp://127.0.0.1:*")
    stop = threading.Event()
    sender = send_in_thread(detector, series_id=1, series_unique_id="u1", stop=stop)
    code = main(["process", "--connect", detector.endpoint, "--out", str(tmp_path / "r.h5"),
                 "--bins", "64", "64", "64", "--budget-mib", "1"])
    stop.set()
    sender.join(TIMEOUT)
    detector.close()
    err = capsys.readouterr().err
    assert code == 2 and "budget" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r.h5").exists()


@pytest.mark.logs_errors
def test_a_histogram_over_budget_is_not_a_flood_of_rejections(tiny):
    from sxdm_stream.core.accumulate import AccumulationSettings

    settings = Config(accumulation=AccumulationSettings(histogram_bins=(64, 64, 64),
                                                        histogram_budget_mib=1))
    live = LiveProcessor(None, settings=settings).start()
    live.submit(series_start(tiny, 1, "u1", "u1"))
    for index in range(20):
        live.submit(ImageFrame(1, index, frame(tiny, index), "u1"))
    assert live.wait(TIMEOUT)
    live.stop()
    rejected = live.status().rejected
    assert "budget" in live.failure and "image_before_start" not in rejected
    assert set(rejected) == {"histogram_over_budget"}
    assert live.status().after_stop + rejected["histogram_over_budget"] == 21


def test_messages_after_the_last_series_asked_for_are_not_taken(tiny, tmp_path):
    live = LiveProcessor(None, out=tmp_path / "r.h5", max_series=1,
                         settings=Config(live=LiveSettings(frame_queue_messages=1000)))
    for series_id in (1, 2):                      # all queued before the worker starts
        live.submit(series_start(tiny, series_id, f"u{series_id}", "c"))
        for index in range(tiny.scan.n_frames):
            live.submit(ImageFrame(series_id, index, frame(tiny, index), f"u{series_id}"))
        live.submit(SeriesEnd(series_id, f"u{series_id}"))
    live.start()
    assert live.wait(TIMEOUT)
    live.stop()
    assert [r.series_id for r in live.results] == [1] and live.results[0].complete
    assert live.status().after_stop == tiny.scan.n_frames + 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.h5"]


# ---- item 11: what real and emulated detectors send ---------------------------------------------
def test_a_duplicated_end_is_a_quirk_and_late_images_are_not_before_start(tiny, tmp_path):
    push, endpoint = raw_pusher()
    with LiveProcessor(endpoint, out=tmp_path / "r.h5", max_series=2) as live:
        send_scan_v2(push, tiny)
        push.send(encode_end_v2(SeriesEnd(1, "u1")))          # the end again
        push.send(image_v2(tiny, 3))                          # a straggler of the ended series
        send_scan_v2(push, tiny, series_id=2, unique="u2")
        assert live.wait(TIMEOUT)
    push.close()
    status = live.status()
    assert status.quirks == {"duplicate_end": 1}
    assert status.rejected == {"image_after_end": 1}
    assert [r.complete for r in live.results] == [True, True]


# ---- item 6 (runtime): stream v1 resume --------------------------------------------------------
def test_stream_v1_resume_continues_the_series(tiny, tiny_reference, tmp_path):
    out = tmp_path / "r.h5"
    detector = SimulatedDetector(tiny, "tcp://127.0.0.1:*", fmt="legacy")
    first = LiveProcessor(detector.endpoint, out=out).start()
    detector.send_series(series_id=4, frames=range(100), send_end=False)
    wait_until(lambda: first.status().processed == 100)
    first.stop()
    assert not first.results[-1].complete and checkpoint_path(out).exists()
    with LiveProcessor(detector.endpoint, out=out, resume=True, max_series=1) as live:
        detector.send_series(series_id=4)                # v1: the same header, no unique id
        assert live.wait(TIMEOUT)
    detector.close()
    result = live.results[-1]
    assert result.complete and result.path == out and len(live.results) == 1
    assert live.status().rejected == {"duplicate_image": 100}
    assert not checkpoint_path(out).exists()
    state = read_accumulator_state(out)
    np.testing.assert_array_equal(state["histogram"], tiny_reference.accumulator.histogram)
    np.testing.assert_allclose(state["moments"], tiny_reference.accumulator.moments,
                               rtol=1e-12, atol=1e-9)


# ---- item 7: signals -----------------------------------------------------------------------------
class Child:
    """``sxdm-stream process`` in a subprocess, its log read line by line."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([SXDM_STREAM, "process", *args], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._new = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            with self._new:
                self.lines.append(line)
                self._new.notify_all()

    def wait_for_line(self, text: str) -> None:
        with self._new:
            assert self._new.wait_for(lambda: any(text in line for line in self.lines)
                                      or self.proc.poll() is not None, TIMEOUT)
        assert any(text in line for line in self.lines), "".join(self.lines)

    def finish(self) -> tuple[int, str]:
        code = self.proc.wait(TIMEOUT)
        self._reader.join(TIMEOUT)
        self.proc.stderr.close()
        return code, "".join(self.lines)


@pytest.mark.parametrize("signals", [(signal.SIGTERM,), (signal.SIGINT, signal.SIGINT)],
                         ids=["sigterm", "ctrl-c-twice"])
def test_a_signal_writes_the_partial_result_marked_incomplete_and_keeps_the_checkpoint(
        tiny, tiny_reference, tmp_path, signals):
    out = tmp_path / "r.h5"
    detector = SimulatedDetector(tiny, "tcp://127.0.0.1:*", fmt="legacy")
    sent = 3 * tiny.scan.n_points
    child = Child("--connect", detector.endpoint, "--out", str(out))
    detector.send_series(series_id=4, frames=range(sent), send_end=False)
    child.wait_for_line(f"{sent}/{tiny.scan.n_frames} frames")
    child.proc.send_signal(signals[0])
    for sig in signals[1:]:                       # while the partial result is being written
        child.wait_for_line("interrupted")
        child.proc.send_signal(sig)
    code, log = child.finish()
    assert code == 1, log
    attrs = entry_attrs(out)
    assert attrs["status"] == "incomplete" and attrs["frames_processed"] == sent
    np.testing.assert_array_equal(attrs["frames_missing_per_angle"],
                                  [0, 0, 0, tiny.scan.n_points, tiny.scan.n_points])
    assert checkpoint_path(out).exists()
    assert "Traceback" not in log

    # and the checkpoint resumes (stream v1: the re-sent header continues the series)
    child = Child("--connect", detector.endpoint, "--out", str(out), "--resume", "--series", "1")
    detector.send_series(series_id=4)
    code, log = child.finish()
    detector.close()
    assert code == 0, log
    assert "resumed series 4" in log and entry_attrs(out)["status"] == "complete"
    np.testing.assert_array_equal(read_accumulator_state(out)["histogram"],
                                  tiny_reference.accumulator.histogram)


def test_a_second_signal_while_stopping_is_only_logged(caplog):
    previous = signal.getsignal(signal.SIGTERM)
    with InterruptOnSignals() as signals:
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
            signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGINT)         # the partial result is being written
        signal.raise_signal(signal.SIGTERM)
    assert signals.received == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is previous
    assert sum("already stopping" in r.getMessage() for r in caplog.records) == 2
