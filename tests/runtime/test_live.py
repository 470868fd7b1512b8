"""The live processor over real ZeroMQ sockets on loopback, fed by the simulated detector."""

from __future__ import annotations

import numpy as np
import pytest
import zmq
from conftest import TIMEOUT, raw_pusher, send_in_thread, wait_until

from sxdm_stream.config import Config
from sxdm_stream.messages import SXDM_KEY, ImageFrame, SeriesEnd
from sxdm_stream.pipeline.scan_processor import ScanProcessor
from sxdm_stream.runtime.processor import LiveProcessor, ScanOverride
from sxdm_stream.simulators.sender import SimulatedDetector, series_start
from sxdm_stream.simulators.validation import accuracy_report
from sxdm_stream.sinks.publish import SnapshotSubscriber, decode_pixel_reply, encode_pixel_request
from sxdm_stream.sinks.results import read_maps
from sxdm_stream.sources.dectris.codec import encode_end_v2, encode_image_v2, encode_start_v2




@pytest.fixture
def reference(small_processed):
    """The maps of the small scenario, accumulated in-process (no sockets)."""
    return small_processed


def assert_same_sums(processor: ScanProcessor, reference: ScanProcessor) -> None:
    np.testing.assert_allclose(processor.accumulator.moments, reference.accumulator.moments,
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(processor.accumulator.histogram, reference.accumulator.histogram)
    np.testing.assert_array_equal(processor.accumulator.frame_count,
                                  reference.accumulator.frame_count)


@pytest.mark.parametrize("fmt, compression", [("cbor", "bslz4"), ("cbor", "lz4"), ("cbor", "none"),
                                              ("legacy", "bslz4"), ("legacy", "lz4"),
                                              ("legacy", "none")])
def test_stream_gives_the_same_sums_as_in_process(small_scenario, reference, tmp_path, fmt,
                                                  compression):
    detector = SimulatedDetector(small_scenario, "tcp://127.0.0.1:*", fmt=fmt, compression=compression)
    out = tmp_path / "r.h5"
    with LiveProcessor(detector.endpoint, out=out, max_series=1) as live:
        sender = send_in_thread(detector, series_id=3)
        assert live.wait(TIMEOUT)
    sender.join(TIMEOUT)
    detector.close()
    status = live.status()
    assert status.processed == small_scenario.scan.n_frames
    assert status.rejected == {} and status.dropped == 0
    result = live.results[-1]
    assert result.complete and result.series_id == 3 and result.path == out
    maps = read_maps(out)
    np.testing.assert_allclose(maps["strain"], result.maps.strain, equal_nan=True)
    ref_maps = reference.maps()
    np.testing.assert_allclose(result.maps.strain, ref_maps.strain, atol=1e-6, equal_nan=True)


def test_live_maps_match_ground_truth_and_snapshots_are_published(default_scan, tmp_path):
    scenario = default_scan.scenario
    detector = SimulatedDetector(scenario, "tcp://127.0.0.1:*")
    live = LiveProcessor(detector.endpoint, out=tmp_path / "r.h5", publish="tcp://127.0.0.1:*",
                         serve="tcp://127.0.0.1:*", max_series=1)
    sub = SnapshotSubscriber(live.publish_endpoint)
    with live:
        sender = send_in_thread(detector, series_id=1)
        snapshot = None
        while snapshot is None or not snapshot.header.final:
            snapshot = sub.receive(TIMEOUT * 1000)
            assert snapshot is not None, "no snapshot published"
        assert live.wait(TIMEOUT)
    sub.close()
    sender.join(TIMEOUT)
    detector.close()
    report = accuracy_report(live.results[-1].maps, scenario.simulator.truth())
    assert report["strain_rms_error"] <= 2 * report["strain_limit"]
    assert report["tilt_rms_error_deg"] <= 2 * report["tilt_limit_deg"]
    np.testing.assert_allclose(snapshot.arrays["strain"], default_scan.maps.strain, atol=1e-6,
                               equal_nan=True)
    assert snapshot.header.stats.processed == scenario.scan.n_frames
    assert live.status().latency_p99_s is not None


def test_pixel_requests_return_the_histogram_of_a_map_pixel(small_scenario, reference):
    detector = SimulatedDetector(small_scenario, "tcp://127.0.0.1:*")
    live = LiveProcessor(detector.endpoint, serve="tcp://127.0.0.1:*")
    ctx = zmq.Context.instance()
    req = ctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.connect(live.serve_endpoint)
    point = int(np.argmax(reference.accumulator.moments[..., 0].sum(axis=0)))
    with live:
        sender = send_in_thread(detector, series_id=1, send_end=False)
        sender.join(TIMEOUT)
        wait_until(lambda: (live.status().progress or (0,))[0] == small_scenario.scan.n_frames)
        req.send_multipart(encode_pixel_request(point))
        assert req.poll(TIMEOUT * 1000)
        reply = decode_pixel_reply(req.recv_multipart())
    req.close()
    detector.close()
    hist = reference.accumulator.histogram[point].reshape(reference.setup.grid.bins)
    np.testing.assert_array_equal(reply.arrays["histogram"], hist)
    np.testing.assert_allclose(reply.arrays["rocking_curve"], reference.accumulator.moments[:, point, 0])
    assert reply.header["point"] == point


def test_bad_input_is_counted_by_reason_and_the_scan_still_completes(small_scenario, reference,
                                                                     tmp_path, caplog):
    push, endpoint = raw_pusher()
    scan = small_scenario.scan
    start = series_start(small_scenario, 7, "run-7", "corr")
    frame0 = small_scenario.simulator.frame(*scan.locate(0))

    def image(image_id, series_id=7, data=frame0, positions=None):
        user = {SXDM_KEY: {"positions": positions}} if positions is not None else None
        return encode_image_v2(ImageFrame(series_id, image_id, data, "run-7", user))

    with LiveProcessor(endpoint, out=tmp_path / "r.h5", max_series=1) as live:
        push.send(image(0))                                    # before any start
        push.send(b"\x00\x01garbage")                          # not CBOR
        push.send(encode_start_v2(start))
        push.send(image(0, series_id=8))                       # unknown series
        push.send(image(scan.n_frames + 5))                    # index out of range
        push.send(image(1, data=frame0[:100]))                 # wrong image size
        push.send(image(4)[:-2000])                            # truncated message
        push.send(image(2, positions={"piy": float("nan"), "pix": 0.0}))
        push.send(image(3, positions={"piy": 500.0, "pix": 0.0}))   # off the map
        for index in range(scan.n_frames):                     # the real scan
            angle, point = scan.locate(index)
            push.send(image(index, data=small_scenario.simulator.frame(angle, point)))
        push.send(image(5))                                    # duplicate
        push.send(encode_end_v2(SeriesEnd(7, "run-7")))
        assert live.wait(TIMEOUT)
    push.close()
    rejected = live.status().rejected
    assert rejected == {"image_before_start": 1, "malformed": 2, "unknown_series": 1,
                        "index_out_of_range": 1, "wrong_shape": 1, "bad_position": 1,
                        "outside_grid": 1, "duplicate_image": 1}, rejected
    assert live.status().processed == scan.n_frames
    assert_same_sums_maps = read_maps(tmp_path / "r.h5")
    np.testing.assert_allclose(assert_same_sums_maps["strain"], reference.maps().strain,
                               atol=1e-6, equal_nan=True)
    warned = {r.getMessage().split(" (further")[0] for r in caplog.records}
    assert len(warned) >= 8                                    # each reason reported once


def test_scan_file_for_a_stream_without_description(small_scenario, reference, tmp_path):
    push, endpoint = raw_pusher()
    scan, geo = small_scenario.scan, small_scenario.geometry
    start = series_start(small_scenario, 1, "plain", "plain")
    plain = type(start)(**{**start.__dict__, "user_data": None})
    override = ScanOverride(scan, geo)
    with LiveProcessor(endpoint, settings=Config(), override=override, max_series=1) as live:
        push.send(encode_start_v2(plain))
        for index in range(scan.n_frames):
            push.send(encode_image_v2(ImageFrame(1, index, small_scenario.simulator.frame(
                *scan.locate(index)), "plain")))
        push.send(encode_end_v2(SeriesEnd(1, "plain")))
        assert live.wait(TIMEOUT)
    push.close()
    np.testing.assert_allclose(live.results[-1].maps.strain, reference.maps().strain, atol=1e-6,
                               equal_nan=True)


@pytest.mark.logs_errors
def test_a_stream_without_description_and_no_scan_file_is_refused_clearly(small_scenario, caplog):
    push, endpoint = raw_pusher()
    start = series_start(small_scenario, 1, "plain", "plain")
    plain = type(start)(**{**start.__dict__, "user_data": None})
    live = LiveProcessor(endpoint).start()
    push.send(encode_start_v2(plain))
    push.send(encode_image_v2(ImageFrame(1, 0, small_scenario.simulator.frame(0, 0), "plain")))
    wait_until(lambda: sum(live.status().rejected.values()) >= 2)
    live.stop()
    push.close()
    # the image of a series whose start did arrive is counted under the start's reason
    assert live.status().rejected == {"no_scan_description": 2}
    assert any("--scan-file" in r.getMessage() for r in caplog.records)


def test_submit_feeds_the_processor_without_a_detector_socket(small_scenario, reference):
    scan = small_scenario.scan
    start = series_start(small_scenario, 2, "direct", "direct")
    with LiveProcessor(None, max_series=1) as live:
        live.submit(start)
        for index, angle, point, frame in small_scenario.simulator.frames():
            live.submit(ImageFrame(2, index, frame, "direct"))
        live.submit(SeriesEnd(2, "direct"))
        assert live.wait(TIMEOUT)
        with pytest.raises(TypeError):
            live.submit("not a message")
    assert live.status().processed == scan.n_frames
    np.testing.assert_allclose(live.results[-1].maps.strain, reference.maps().strain, atol=1e-6,
                               equal_nan=True)
