"""Recordings: the file format, and record -> replay -> process through real sockets."""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest

from sxdm_stream.errors import IncompatibleFileError
from sxdm_stream.runtime.process_file import process_recording
from sxdm_stream.runtime.processor import LiveProcessor
from sxdm_stream.simulators.sender import SimulatedDetector
from sxdm_stream.sources.dectris.sender import StreamSender
from sxdm_stream.sources.recordings.format import RecordingReader, RecordingWriter, is_recording
from sxdm_stream.sources.recordings.recorder import record_stream
from sxdm_stream.sources.recordings.replay import parse_rate, replay_recording

TIMEOUT = 120
MESSAGES = [[b"one part"], [b'{"htype":"dimage-1.0"}', b"\x00" * 1000, b"", b"appendix"],
            [b"\xd9\xd9\xf7" + bytes(range(256))]]


def write(path, messages=MESSAGES):
    with RecordingWriter(path) as writer:
        for i, parts in enumerate(messages):
            writer.write(parts, 100.0 + 0.5 * i)
    return path


def test_messages_come_back_with_their_parts_and_times(tmp_path):
    path = write(tmp_path / "r.stream")
    assert is_recording(path)
    with RecordingReader(path) as reader:
        assert len(reader) == 3
        assert [reader[i] for i in range(3)] == MESSAGES
        np.testing.assert_allclose(reader.times_s, [0.0, 0.5, 1.0])
        assert [parts for _t, parts in reader.messages(start=1)] == MESSAGES[1:]


def test_a_recording_without_its_index_is_rebuilt_and_a_partial_tail_ignored(tmp_path, caplog):
    path = write(tmp_path / "r.stream")
    data = path.read_bytes()
    with RecordingReader(path) as reader:
        index_offset = int(reader._end)
    path.write_bytes(data[:index_offset] + b"\x02\x00\x00")    # killed while writing
    with caplog.at_level(logging.WARNING), RecordingReader(path) as reader:
        assert [reader[i] for i in range(len(reader))] == MESSAGES
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "no index" in messages and "partial message" in messages


@pytest.mark.parametrize("damage, says", [
    (lambda d: b"NOTAREC!" + d[8:], "not an sxdm-stream recording"),
    (lambda d: d[:-8] + (2**40).to_bytes(8, "little"), "index offset"),
    (lambda d: d[:-30] + b"\xff" * 14 + d[-16:], "index"),
])
def test_a_corrupt_recording_is_refused_with_a_clear_error(tmp_path, damage, says):
    path = write(tmp_path / "r.stream")
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(IncompatibleFileError, match=says):
        RecordingReader(path)


def test_rates():
    assert parse_rate("max") is None and parse_rate("1x") == 1 and parse_rate("10X") == 10
    assert parse_rate("0.5x") == 0.5
    for bad in ("fast", "0x", "-2x", "10"):
        with pytest.raises(ValueError, match="rate"):
            parse_rate(bad)


def run_in_thread(target, **kwargs) -> tuple[threading.Thread, dict]:
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(value=target(**kwargs)), daemon=True)
    thread.start()
    return thread, result


@pytest.mark.parametrize("fmt", ["cbor", "legacy"])
def test_record_replay_process_gives_the_maps_of_the_live_stream(small_scenario, small_processed,
                                                                 tmp_path, fmt):
    detector = SimulatedDetector(small_scenario, "tcp://127.0.0.1:*", fmt=fmt)
    path = tmp_path / "run.stream"
    recorder, counters = run_in_thread(record_stream, endpoints=detector.endpoint, path=path)
    detector.send_series(series_id=4)
    recorder.join(TIMEOUT)
    detector.close()
    n = small_scenario.scan.n_frames
    assert counters["value"].messages == n + 2 and counters["value"].series_ended == 1

    # replayed through the live path, as fast as the processor takes it
    with RecordingReader(path) as reader:
        sender = StreamSender("tcp://127.0.0.1:*")
        with LiveProcessor(sender.endpoint, out=tmp_path / "replayed.h5", max_series=1) as live:
            replayer, sent = run_in_thread(replay_recording, reader=reader, sender=sender)
            assert live.wait(TIMEOUT)
        replayer.join(TIMEOUT)
        sender.close()
        assert sent["value"] == n + 2
        # and processed directly, without sockets
        direct = process_recording(reader, tmp_path / "direct.h5")
    status = live.status()
    assert status.processed == n and status.rejected == {} and status.dropped == 0
    reference = small_processed.maps()
    for maps in (live.results[-1].maps, direct[0].maps):
        np.testing.assert_allclose(maps.strain, reference.strain, atol=1e-6, equal_nan=True)
        np.testing.assert_allclose(maps.com, reference.com, rtol=1e-12, equal_nan=True)
        np.testing.assert_array_equal(maps.intensity, reference.intensity)
    assert direct[0].path == tmp_path / "direct.h5" and live.results[-1].series_id == 4


def test_replay_at_1x_keeps_the_recorded_pace(tmp_path):
    path = tmp_path / "r.stream"
    with RecordingWriter(path) as writer:
        for i in range(5):
            writer.write([b"x"], 0.05 * i)
    import time

    import zmq

    sender = StreamSender("tcp://127.0.0.1:*")
    pull = zmq.Context.instance().socket(zmq.PULL)
    pull.connect(sender.endpoint)
    with RecordingReader(path) as reader:
        t0 = time.perf_counter()
        assert replay_recording(reader, sender, speed=1.0) == 5
        elapsed = time.perf_counter() - t0
    received = [pull.recv_multipart() for _ in range(5)]
    pull.close()
    sender.close()
    assert received == [[b"x"]] * 5
    assert elapsed >= 0.2 - 1e-3                       # 4 intervals of 50 ms, never faster
