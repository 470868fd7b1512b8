"""What the live processor tells its viewers on the wire: the processor's status
(:class:`LiveStatus`) and the snapshot header (:class:`SnapshotHeader`), versioned, read back
by type; the snapshot message around them (:mod:`sxdm_stream.sinks.publish`)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from sxdm_stream import LiveStatus, Snapshot, SnapshotHeader
from sxdm_stream.errors import BadMessageError
from sxdm_stream.messages import LIVE_STATUS_VERSION, SNAPSHOT_FORMAT, SNAPSHOT_VERSION
from sxdm_stream.sinks.publish import TOPIC, decode_pixel_reply, decode_snapshot, encode_snapshot

#: a status in which no field has its default
BUSY = LiveStatus(messages=130, received=120, processed=110, rejected={"bad_position": 4},
                  dropped=3, queued=2, queued_bytes=2048, frames_per_s=412.5,
                  latency_p50_s=0.02, latency_p99_s=0.3, series_id=7, series_unique_id="u7",
                  progress=(110, 400), held=5, placed_by_index=1, completed=2, ended=3,
                  quirks={"duplicate_end": 1}, internal_errors={"worker": 1}, after_stop=6,
                  failure="the writer thread died")


def through_json(body: dict) -> dict:
    return json.loads(json.dumps(body, allow_nan=True))


def test_every_status_field_differs_from_its_default():
    defaults = LiveStatus()
    same = [f.name for f in dataclasses.fields(LiveStatus)
            if getattr(BUSY, f.name) == getattr(defaults, f.name)]
    assert same == [], "BUSY must exercise every field"


def test_status_crosses_the_wire_whole():
    body = through_json(BUSY.to_wire())
    assert body["version"] == LIVE_STATUS_VERSION
    assert LiveStatus.from_wire(body) == BUSY
    assert LiveStatus.from_wire(body).progress == (110, 400), "a tuple again, not a list"


def test_status_from_a_newer_minor_or_an_older_processor_is_read():
    newer = {**BUSY.to_wire(), "version": "1.9", "cpu_percent": 80.0, "gpu": {"util": 3}}
    assert LiveStatus.from_wire(newer) == BUSY
    older = {"received": 10, "processed": 9, "rejected": {"bad_position": 1}}   # no version
    status = LiveStatus.from_wire(older)
    assert (status.processed, status.rejected, status.dropped) == (9, {"bad_position": 1}, 0)
    assert LiveStatus.from_wire({"series_id": None, "failure": None}) == LiveStatus()


VERSIONS = ["2.0", 2, "0.9", "1.x", "one", True, 1.0, [1, 0], "9" * 5000]


@pytest.mark.parametrize("version", VERSIONS, ids=[repr(v)[:12] for v in VERSIONS])
def test_status_of_another_major_version_is_refused(version):
    with pytest.raises(BadMessageError, match="version") as caught:
        LiveStatus.from_wire({**BUSY.to_wire(), "version": version})
    assert caught.value.reason == "unsupported_version"


@pytest.mark.parametrize("field, value", [
    ("processed", True), ("processed", "9"), ("processed", 2**70), ("processed", 1.5),
    ("frames_per_s", "fast"), ("progress", [1]), ("progress", [1, "2"]),
    ("rejected", {"bad_position": "4"}), ("rejected", [4]), ("failure", 3),
    ("messages", None),
])
def test_status_fields_of_the_wrong_type_are_refused(field, value):
    body = {**BUSY.to_wire(), field: value}
    if value is None:                      # null for a field that cannot be null: absent
        assert LiveStatus.from_wire(body).messages == 0
        return
    with pytest.raises(BadMessageError, match=field):
        LiveStatus.from_wire(body)


@pytest.mark.parametrize("body", [[], "status", None, 3])
def test_a_status_that_is_not_an_object_is_refused(body):
    with pytest.raises(BadMessageError, match="not a JSON object"):
        LiveStatus.from_wire(body)


def test_status_is_read_by_attribute_only_and_frozen():
    assert BUSY.processed == 110 and BUSY.rejected == {"bad_position": 4}
    with pytest.raises(TypeError):
        BUSY["processed"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        BUSY.processed = 0


HEADER = SnapshotHeader(
    seq=12, time_s=1.7e9, series_id=7, series_unique_id="u7", final=True, status="incomplete",
    frames_missing=37, scan={"shape": [2, 3], "rocking_angles": [8.9, 9.1]}, stats=BUSY,
    d_ref_a=4.733, mean_direction=(0.0, 0.6, 0.8), azimuth_reference=(1.0, 0.0, 0.0),
    mask_fraction=0.05, units={"strain": "microstrain"},
    particles=({"label": 1, "mean_d_a": 4.73},), drift={"mode": "auto", "shifts_um": [[0, 0]]},
    q_rois={"peak0": {"shape": "box", "d_ref": 4.73}},
    roi_suggestion={"peaks": [], "text": "no peak"}, operando={"voltage": {"value": 4.1,
                                                                           "units": "V"}})


def test_every_header_field_differs_from_its_default():
    defaults = SnapshotHeader()
    same = [f.name for f in dataclasses.fields(SnapshotHeader)
            if getattr(HEADER, f.name) == getattr(defaults, f.name)]
    assert same == [], "HEADER must exercise every field"


def test_a_snapshot_crosses_the_wire_whole():
    arrays = {"strain": np.arange(6, dtype="<f8").reshape(2, 3), "mask": np.ones((2, 3), "|u1")}
    parts = Snapshot(HEADER, arrays).to_wire()
    assert parts[0] == TOPIC
    body = json.loads(parts[1])
    assert (body["format"], body["version"]) == (SNAPSHOT_FORMAT, SNAPSHOT_VERSION)
    assert (body["complete"], body["time"], body["d_ref"]) == (True, 1.7e9, 4.733), \
        "wire names of version 1 kept"
    assert body["stats"]["version"] == LIVE_STATUS_VERSION
    decoded = Snapshot.from_wire(parts)
    assert decoded.header == HEADER
    assert decoded.arrays.keys() == arrays.keys()
    np.testing.assert_array_equal(decoded.arrays["strain"], arrays["strain"])


def test_a_processors_snapshot_reads_as_a_header(small_processed):
    info = {"seq": 3, "series_id": 5, "complete": False, "status": "running",
            "frames_missing": 10, "scan": small_processed.setup.scan.describe(),
            "stats": BUSY.to_wire()}
    snapshot = decode_snapshot(encode_snapshot(small_processed.maps(), info))
    header = snapshot.header
    assert (header.seq, header.series_id, header.final, header.status) == (3, 5, False, "running")
    assert header.stats == BUSY and header.frames_missing == 10
    assert header.d_ref_a == pytest.approx(small_processed.maps().d_ref)
    assert header.units["strain"] == "microstrain" and len(header.mean_direction) == 3
    assert header.scan["shape"] == list(small_processed.setup.scan.shape)


@pytest.mark.parametrize("complete, status", [(True, "complete"), (False, "running")])
def test_a_header_without_status_says_it_from_complete(complete, status):
    assert SnapshotHeader.from_wire({"complete": complete}).status == status


def message(**header) -> list[bytes]:
    body = {"format": SNAPSHOT_FORMAT, "version": SNAPSHOT_VERSION, "arrays": [], **header}
    return [TOPIC, json.dumps(body).encode()]


@pytest.mark.parametrize("parts, reason", [
    (message(version=2), "unsupported_version"),
    (message(version="2.1"), "unsupported_version"),
    (message(seq="3"), "malformed"),
    (message(stats={"version": "2.0"}), "unsupported_version"),
    (message(mean_direction=[0, 1]), "malformed"),
    (message(particles={"label": 1}), "malformed"),
    ([TOPIC, b'{"format": "sxdm.snapshot", "seq": ' + b"9" * 5000 + b"}"], "malformed"),
    ([TOPIC, b"[" * 100_000], "malformed"),
    (message(arrays=[{"name": "a", "dtype": "<f8", "shape": [2]}]), "size_mismatch"),
    (message(arrays=[{"name": "a", "dtype": "|O", "shape": [1]}]) + [b"12345678"], "wrong_dtype"),
    (message(arrays=[{"name": "a", "dtype": "<f8", "shape": [-1]}]) + [b"12345678"], "malformed"),
    (message(arrays=[{"name": 7, "dtype": "<f8", "shape": [1]}]) + [b"12345678"], "malformed"),
    (message(arrays="a"), "malformed"),
])
def test_bad_snapshots_are_refused_with_a_reason(parts, reason):
    with pytest.raises(BadMessageError) as caught:
        decode_snapshot(parts)
    assert caught.value.reason == reason


def test_newer_snapshot_fields_are_ignored():
    snapshot = decode_snapshot(message(seq=4, phase_map_version=3, complete=True))
    assert snapshot.header.seq == 4 and snapshot.header.final and snapshot.arrays == {}


def test_pixel_reply_keeps_its_header():
    body = {"format": "sxdm.pixel", "version": 1, "point": 3,
            "arrays": [{"name": "moments", "dtype": "<f8", "shape": [2]}]}
    reply = decode_pixel_reply([json.dumps(body).encode(), np.zeros(2).tobytes()])
    assert reply.header["point"] == 3 and reply.arrays["moments"].shape == (2,)
    with pytest.raises(BadMessageError) as caught:
        decode_pixel_reply([b'{"format": "sxdm.pixel", "error": "no scan"}'])
    assert caught.value.reason == "refused"
