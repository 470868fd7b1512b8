"""bluesky documents from the network: the safe msgpack decoder and the listener's loop.

A publisher on the 0MQ proxy is not trusted: msgpack-numpy's own decoder unpickles object
arrays, so a document could run code in the processor. These tests send such documents, and
other hostile messages, to a real listener over a real PUB socket on loopback."""

from __future__ import annotations

import os
import threading
import time
import uuid

import msgpack
import numpy as np
import pytest

pytest.importorskip("bluesky")
msgpack_numpy = pytest.importorskip("msgpack_numpy")

import zmq  # noqa: E402

from sxdm_stream import BadMessageError  # noqa: E402
from sxdm_stream.plugins.bluesky.codec import DocumentDecodeError, dumps, loads  # noqa: E402
from sxdm_stream.plugins.bluesky.remote import RemoteListener  # noqa: E402


class _Exploit:
    """Unpickling this creates a folder: proof that bytes from the network ran code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


class _Ignore:
    def submit(self, message):
        raise AssertionError(f"no SXDM run expected here, got {message}")


def test_round_trip_of_plain_arrays_and_scalars():
    doc = {"data": {"img": np.arange(12, dtype=">u4").reshape(3, 4), "x": 1.5,
                    "flags": np.array([True, False]), "name": np.array(["ab", "c"]),
                    "z": np.complex64(1 + 2j), "n": np.int16(-3), "c": 2 - 1j},
           "empty": np.zeros((0, 5), np.float32)}
    back = loads(dumps(doc))
    for key in ("img", "flags", "name"):
        assert back["data"][key].dtype == doc["data"][key].dtype
        np.testing.assert_array_equal(back["data"][key], doc["data"][key])
    assert back["data"]["z"] == np.complex64(1 + 2j) and back["data"]["n"] == -3
    assert back["data"]["c"] == 2 - 1j and back["empty"].shape == (0, 5)


def test_msgpack_numpy_publishers_are_read():
    """What bluesky users publish (msgpack + msgpack_numpy.encode) decodes to the same values."""
    doc = {"data": {"img": np.arange(6, dtype=np.uint16).reshape(2, 3), "t": np.float64(0.25)}}
    back = loads(msgpack.packb(doc, default=msgpack_numpy.encode))
    np.testing.assert_array_equal(back["data"]["img"], doc["data"]["img"])
    assert back["data"]["img"].dtype == np.uint16 and back["data"]["t"] == 0.25


def test_object_array_is_refused_and_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    payload = msgpack.packb({"data": {"x": np.array([_Exploit(marker)], dtype=object)}},
                            default=msgpack_numpy.encode)
    with pytest.raises(DocumentDecodeError) as info:
        loads(payload)
    assert info.value.reason == "unsafe_array"
    assert not marker.exists()
    # msgpack-numpy's own decoder does run it: the reason this module exists
    msgpack.unpackb(payload, object_hook=msgpack_numpy.decode, strict_map_key=False)
    assert marker.exists()


@pytest.mark.parametrize("record, reason", [
    ({b"nd": True, b"type": [["a", "<i4"]], b"kind": b"V", b"shape": [1], b"data": b"\0" * 4},
     "unsafe_array"),
    ({b"nd": True, b"type": "|O", b"kind": b"", b"shape": [1], b"data": b"\0" * 8}, "unsafe_array"),
    ({b"nd": True, b"type": "<i3", b"kind": b"", b"shape": [1], b"data": b"\0" * 3}, "unsafe_array"),
    ({b"nd": True, b"type": "<M8[s]", b"kind": b"", b"shape": [1], b"data": b"\0" * 8}, "unsafe_array"),
    ({b"nd": True, b"type": "<u4", b"kind": b"", b"shape": [3], b"data": b"\0" * 8}, "bad_array"),
    ({b"nd": True, b"type": "<u4", b"kind": b"", b"shape": [2**40, 2**40], b"data": b""}, "bad_array"),
    ({b"nd": True, b"type": "<u4", b"kind": b"", b"shape": [True], b"data": b"\0" * 4}, "bad_array"),
    ({b"nd": True, b"type": "<u4", b"kind": b"", b"shape": [-1], b"data": b""}, "bad_array"),
    ({b"nd": False, b"type": "<f8", b"data": b"\0" * 3}, "bad_array"),
    ({b"complex": True, b"data": "__import__('os')"}, "bad_array"),
])
def test_hostile_records_are_refused_with_a_reason(record, reason):
    with pytest.raises(DocumentDecodeError) as info:
        loads(msgpack.packb({"data": {"x": record}}))
    assert info.value.reason == reason


@pytest.mark.parametrize("payload", [b"", b"\xc1", b"\x92\x01", b"\x91" * 100_000,
                                     msgpack.packb([1, 2]) + b"extra"])
def test_malformed_msgpack_is_one_reason(payload):
    with pytest.raises(DocumentDecodeError) as info:
        loads(payload)
    assert info.value.reason == "malformed_document"


def test_writer_refuses_what_it_would_have_to_pickle():
    with pytest.raises(TypeError):
        dumps({"x": np.array([object()], dtype=object)})
    with pytest.raises(TypeError):
        dumps({"x": {1, 2}})


class _Seen(list):
    """A listener callback that keeps (name, doc) and lets a test wait for a document uid."""

    def __init__(self):
        super().__init__()
        self._arrived = threading.Condition()

    def __call__(self, name, doc):
        with self._arrived:
            self.append((name, doc))
            self._arrived.notify_all()

    def wait_for(self, uid: str, timeout: float) -> bool:
        with self._arrived:
            return self._arrived.wait_for(lambda: any(d.get("uid") == uid for _, d in self),
                                          timeout)


@pytest.fixture
def pub_and_listener():
    """A real PUB socket on a free loopback port and a RemoteListener running in a thread,
    connected (the slow joiner beaten with probe documents)."""
    context = zmq.Context.instance()
    pub = context.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    listener = RemoteListener(f"127.0.0.1:{port}", _Ignore())
    seen = _Seen()
    listener.subscribe(seen)
    thread = threading.Thread(target=listener.run, name="test-listener")
    thread.start()
    deadline = time.monotonic() + 20
    probe = f"probe-{uuid.uuid4().hex}"
    while not seen.wait_for(probe, 0.02):      # PUB/SUB slow joiner: send until one arrives
        assert time.monotonic() < deadline, "the listener never received a probe"
        pub.send(b" start " + dumps({"uid": probe, "time": time.time()}))
    yield pub, listener, seen, thread
    listener.stop()
    thread.join(10)
    pub.close()


def _send_and_wait(pub, seen, messages):
    """Send ``messages`` then a closing probe; return once the probe came through (PUB/SUB
    keeps order on one connection, so everything before it was handled)."""
    for message in messages:
        pub.send(message)
    closing = f"closing-{uuid.uuid4().hex}"
    pub.send(b" start " + dumps({"uid": closing, "time": time.time()}))
    assert seen.wait_for(closing, 20), "the closing probe never arrived"


def test_listener_survives_hostile_messages_and_counts_them(pub_and_listener, tmp_path):
    pub, listener, seen, thread = pub_and_listener
    marker = tmp_path / "pwned"
    exploit = msgpack.packb({"uid": "x", "data": np.array([_Exploit(marker)], dtype=object)},
                            default=msgpack_numpy.encode)

    def explode(name, doc):
        if doc.get("explode"):
            raise RuntimeError("a callback's bug")
        if doc.get("refuse"):
            raise BadMessageError("frame index -1", "index_out_of_range")

    listener.subscribe(explode)
    _send_and_wait(pub, seen, [
        b" event " + exploit,                            # code from the network
        b"no-spaces-here",                               # not 'prefix name doc'
        b" nonsense " + dumps({"uid": "y"}),             # not a bluesky document name
        b" start \xc1\xc1",                              # not msgpack
        b" start " + dumps([1, 2, 3]),                   # not a map
        b" start " + dumps({"uid": "z", "explode": True}),
        b" start " + dumps({"uid": "w", "refuse": True}),   # a document a callback refuses
        b"sxdm-maps start " + dumps({"uid": "derived"}),  # our own derived run: skipped
    ])
    assert thread.is_alive()
    assert not marker.exists()
    assert listener.rejected == {"unsafe_array": 1, "malformed": 1, "unknown_document": 1,
                                 "malformed_document": 2, "internal_error": 1,
                                 "index_out_of_range": 1}
    uids = [doc.get("uid") for _, doc in seen]
    assert "z" in uids and "derived" not in uids
