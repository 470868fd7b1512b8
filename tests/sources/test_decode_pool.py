"""Images decompressed by a pool of threads: the same frames, in the same order, as with one.

Two bslz4 decompressors (bitshuffle, DECTRIS' dectris-compression) must give the same pixels;
the receiver's pool must hand every message on in arrival order (an end never overtakes its
images), reject a corrupt payload with its reason and go on. Real ZeroMQ sockets.
"""

import threading

import numpy as np
import pytest
from conftest import TIMEOUT, raw_pusher, wait_until

from sxdm_stream.messages import ImageFrame, SeriesEnd, SeriesStart
from sxdm_stream.runtime.receiver import Receiver, ReceiverCounters
from sxdm_stream.runtime.supervisor import InternalErrors
from sxdm_stream.sources.dectris import lz4_framing
from sxdm_stream.sources.dectris.codec import (Decoder, encode_end_v1, encode_end_v2,
                                               encode_image_v1, encode_image_v2,
                                               encode_start_v1, encode_start_v2)
from sxdm_stream.sources.dectris.compression import PendingPixels

SHAPE = (64, 48)


def frames(n, seed=0):
    rng = np.random.default_rng(seed)
    return [ImageFrame(7, i, rng.poisson(0.2, SHAPE).astype(np.uint32), "u7") for i in range(n)]


def start():
    return SeriesStart(series_id=7, series_unique_id="u7", image_shape=SHAPE,
                       image_dtype="uint32", number_of_images=0)


def stream(fmt, images, corrupt=()):
    """The messages of a series in ``fmt`` ("cbor" or "legacy"); images in ``corrupt`` get a
    bslz4 payload with a corrupt block size field."""
    if fmt == "cbor":
        out = [encode_start_v2(start())]
        for frame in images:
            message = encode_image_v2(frame)
            out.append(_corrupt_v2(message) if frame.image_id in corrupt else message)
        return out + [encode_end_v2(SeriesEnd(7, "u7"))]
    out = [encode_start_v1(start())]
    for frame in images:
        parts = encode_image_v1(frame)
        if frame.image_id in corrupt:
            parts[2] = parts[2][:12] + b"\xff\xff\xff\xff" + parts[2][16:]
        out.append(parts)
    return out + [encode_end_v1(SeriesEnd(7))]


def _corrupt_v2(message: bytes) -> bytes:
    # the first block size field follows the 12-byte bslz4 header, found by its content
    header = lz4_framing.HEADER.pack(SHAPE[0] * SHAPE[1] * 4, lz4_framing.BSLZ4_BLOCK_BYTES)
    at = message.index(header) + len(header)
    return message[:at] + b"\x7f\xff\xff\xff" + message[at + 4:]


def receive(messages, decode_threads):
    """Send ``messages`` through a real PULL socket into a Receiver; what it delivered."""
    push, endpoint = raw_pusher()
    import zmq
    pull = zmq.Context.instance().socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    pull.connect(endpoint)
    delivered, stop = [], threading.Event()
    counters, internal = ReceiverCounters(), InternalErrors()
    receiver = Receiver(pull, delivered.append, counters, internal, stop.is_set, decode_threads)
    thread = threading.Thread(target=receiver.run)
    thread.start()
    try:
        for message in messages:
            push.send_multipart(message if isinstance(message, list) else [message])
        wait_until(lambda: counters.messages == len(messages), TIMEOUT)
        wait_until(lambda: delivered and isinstance(delivered[-1], SeriesEnd), TIMEOUT)
    finally:
        stop.set()
        thread.join(TIMEOUT)
        push.close()
    return delivered, counters, internal


def same(a, b):
    assert [type(m) for m in a] == [type(m) for m in b]
    for x, y in zip(a, b):
        if isinstance(x, ImageFrame):
            assert (x.series_id, x.image_id) == (y.series_id, y.image_id)
            assert x.data.dtype == y.data.dtype and x.data.flags.writeable
            np.testing.assert_array_equal(x.data, y.data)


@pytest.mark.parametrize("fmt", ["cbor", "legacy"])
def test_a_pool_delivers_the_same_frames_in_the_same_order_as_one_thread(fmt):
    images = frames(120)
    messages = stream(fmt, images)
    one, counted_one, _ = receive(messages, 1)
    pool, counted_pool, internal = receive(messages, 3)
    same(one, pool)
    assert [m.image_id for m in pool[1:-1]] == list(range(120))
    assert isinstance(pool[0], SeriesStart) and isinstance(pool[-1], SeriesEnd)
    for frame, sent in zip(pool[1:-1], images):
        np.testing.assert_array_equal(frame.data, sent.data)
    assert (counted_pool.messages, counted_pool.images) == (122, 120) == (
        counted_one.messages, counted_one.images)
    assert internal.total == 0


@pytest.mark.parametrize("fmt", ["cbor", "legacy"])
def test_a_corrupt_payload_is_rejected_with_its_reason_and_the_rest_arrive_in_order(fmt, caplog):
    images = frames(40, seed=1)
    pool, counters, internal = receive(stream(fmt, images, corrupt={17}), 2)
    assert [m.image_id for m in pool[1:-1]] == [i for i in range(40) if i != 17]
    assert counters.copy_rejected() == {"truncated_payload": 1}
    assert (counters.messages, counters.images) == (42, 39) and internal.total == 0
    for frame in pool[1:-1]:
        np.testing.assert_array_equal(frame.data, images[frame.image_id].data)


def test_a_deferring_decoder_checks_sizes_before_the_pool_sees_the_payload():
    decoder = Decoder(defer_pixels=True)
    decoder.decode(encode_start_v2(start()))
    frame = decoder.decode(encode_image_v2(frames(1)[0]))
    assert isinstance(frame.data, PendingPixels) and frame.data.nbytes == 64 * 48 * 4
    np.testing.assert_array_equal(decoder.decompress_pixels(frame).data, frames(1)[0].data)
    wrong = ImageFrame(7, 1, np.zeros((3, 3), np.uint32), "u7")
    from sxdm_stream.errors import BadMessageError
    with pytest.raises(BadMessageError) as info:          # refused in the receiver thread
        decoder.decode(encode_image_v2(wrong))
    assert info.value.reason == "wrong_shape"


@pytest.mark.skipif(len(lz4_framing.BSLZ4_BACKENDS) < 2, reason="dectris-compression absent")
@pytest.mark.parametrize("shape, dtype", [((516, 516), "u4"), ((7, 13), "u2"), ((3, 5), "u1"),
                                          ((100, 37), "u8"), ((1, 1), "u4")])
def test_both_decompressors_give_the_same_pixels(shape, dtype):
    rng = np.random.default_rng(3)
    data = rng.poisson(0.3, shape).astype(dtype)
    payload = lz4_framing.compress_bslz4(data)
    out = {backend: lz4_framing.decompress_bslz4(payload, data.nbytes, data.itemsize,
                                                 backend=backend)
           for backend in ("dectris", "bitshuffle")}
    assert out["dectris"].tobytes() == out["bitshuffle"].tobytes() == data.tobytes()
    assert out["dectris"].flags.writeable and out["dectris"].dtype == out["bitshuffle"].dtype
    # LiberTEM's emulator sends a v1 all-zero header: both read it as bitshuffle's default
    zero = bytes(12) + payload[12:]
    assert lz4_framing.decompress_bslz4(zero, data.nbytes, data.itemsize, backend="dectris",
                                        allow_empty_header=True).tobytes() == data.tobytes()


@pytest.mark.skipif(len(lz4_framing.BSLZ4_BACKENDS) < 2, reason="dectris-compression absent")
def test_both_decompressors_reject_the_same_corrupt_payloads():
    data = np.arange(64 * 48, dtype=np.uint32)
    payload = lz4_framing.compress_bslz4(data)
    rng = np.random.default_rng(5)
    from sxdm_stream.errors import BadMessageError
    for _ in range(200):
        bad = bytearray(payload)
        bad[rng.integers(12, len(bad))] ^= 1 << int(rng.integers(8))
        outcomes = []
        for backend in ("dectris", "bitshuffle"):
            try:
                outcomes.append(lz4_framing.decompress_bslz4(bytes(bad), data.nbytes, 4,
                                                             backend=backend).tobytes())
            except BadMessageError as exc:
                outcomes.append(exc.reason)
        assert outcomes[0] == outcomes[1]
