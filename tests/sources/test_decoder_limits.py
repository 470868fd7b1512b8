"""The decoder against hostile and odd senders: nothing allocated before it is checked, every
failure a BadMessageError with its reason, and what emulators send accepted as a quirk.

Also over real sockets: the receiver thread of a LiveProcessor survives the messages that
used to kill it and then processes a clean scan exactly as a clean run does.
"""

import json
import struct
import types

import cbor2
import lz4.block
import numpy as np
import pytest
from cbor2 import CBORTag
from conftest import TIMEOUT, raw_pusher, wait_until

import sxdm_stream.sources.dectris.codec as dectris
from sxdm_stream.config import Config
from sxdm_stream.errors import BadMessageError, ConfigError
from sxdm_stream.messages import ImageFrame, SeriesEnd, SeriesStart
from sxdm_stream.runtime.processor import LiveProcessor, ScanOverride
from sxdm_stream.simulators.sender import series_start
from sxdm_stream.sources.dectris import compression, lz4_framing
from sxdm_stream.sources.dectris.codec import (Decoder, decode_message, encode_end_v1,
                                               encode_end_v2, encode_image_v1, encode_image_v2,
                                               encode_start_v1, encode_start_v2)

SHAPE = (13, 7)
FRAME = (np.arange(13 * 7, dtype=np.uint32).reshape(SHAPE) * 3) % 50


def reason(decoder, parts):
    with pytest.raises(BadMessageError) as info:
        decoder.decode(parts)
    return info.value.reason


def v2_image(tag, image_id=0):
    return cbor2.dumps(CBORTag(55799, {"type": "image", "series_id": 1, "image_id": image_id,
                                       "data": {"threshold_1": tag}}))


def v2_array(dims, tag, payload, algorithm=None, element=None):
    if algorithm is not None:
        payload = CBORTag(56500, [algorithm, element, payload])
    return CBORTag(40, [list(dims), CBORTag(tag, payload)])


def v1_image(shape_xy, type_, encoding, blob):
    description = {"htype": "dimage_d-1.0", "shape": list(shape_xy), "type": type_,
                   "encoding": encoding, "size": len(blob)}
    return [b'{"htype":"dimage-1.0","series":1,"frame":0,"hash":""}',
            json.dumps(description).encode(), blob, b'{"htype":"dconfig-1.0","real_time":1}']


def lz4_zeros(nbytes):
    """A raw LZ4 block of ``nbytes`` zeros, about 255 times smaller: one literal zero, one
    match of offset 1 whose length bytes say 255 each, then the 5 closing literals."""
    extra = nbytes - 1 - 5 - 19                 # match length 4 + 15 + extra
    return (bytes([0x1F, 0, 1, 0]) + b"\xff" * (extra // 255) + bytes([extra % 255])
            + bytes([0x50]) + bytes(5))


def hdf5_lz4(nbytes, block):
    """HDF5-LZ4 framing that announces ``nbytes`` in one block holding ``block``."""
    return struct.pack(">QI", nbytes, nbytes) + struct.pack(">I", len(block)) + block


@pytest.fixture
def no_inflating(monkeypatch):
    """Fail the test if a decompressor runs at all, and record what lz4 was asked for."""
    asked = []

    def refuse(*args, **kwargs):
        asked.append(kwargs.get("uncompressed_size"))
        raise AssertionError("the decompressor ran")

    monkeypatch.setattr(lz4_framing.lz4.block, "decompress", refuse)
    refuse_bslz4(monkeypatch, refuse)
    return asked


def refuse_bslz4(monkeypatch, refuse):
    """Make both bslz4 decompressors (bitshuffle, dectris-compression) call ``refuse``."""
    monkeypatch.setattr(lz4_framing.bitshuffle, "decompress_lz4", refuse)
    monkeypatch.setattr(lz4_framing, "_dectris_compression", types.SimpleNamespace(
        decompress=refuse))


def start_v2(shape=SHAPE, dtype="uint32", **fields):
    return encode_start_v2(SeriesStart(series_id=1, series_unique_id="u", image_shape=shape,
                                       image_dtype=dtype, **fields))


# ---- item 3: allocate nothing before checking it --------------------------------------------
def test_dims_of_2_70_by_0_are_too_large_not_a_value_error():
    message = v2_image(v2_array([2**70, 0], 70, b""))
    assert reason(Decoder(), message) == "too_large"
    decoder = Decoder()
    decoder.decode(start_v2())
    assert reason(decoder, message) == "too_large"
    assert reason(Decoder(), v2_image(v2_array([0, 2**25], 70, b""))) == "too_large"


def test_a_v1_lz4_image_of_100000_by_100000_is_too_large_before_inflating(no_inflating):
    parts = v1_image([100_000, 100_000], "uint32", "lz4<", lz4_zeros(10_000))
    assert reason(Decoder(), parts) == "too_large"
    # even under a cap that admits 40 GB, and a start that declares them, the 9.9 kB block
    # cannot hold them: not inflated
    decoder = Decoder(max_image_bytes=2**40)
    decoder.decode(start_v2((100_000, 100_000)))
    assert reason(decoder, parts) == "truncated_payload"
    assert no_inflating == []



def test_the_byte_cap_is_configurable_and_checked_on_images_and_masks():
    decoder = Decoder(max_image_bytes=1000)
    fits = np.ones((10, 25), np.uint32)                     # 1000 bytes
    for compression_ in ("bslz4", "lz4", None):
        np.testing.assert_array_equal(decoder.decode(encode_image_v2(
            ImageFrame(1, 0, fits), compression_)).data, fits)
        too_big = ImageFrame(1, 0, np.ones((10, 26), np.uint32))
        assert reason(decoder, encode_image_v2(too_big, compression_)) == "too_large"
    assert reason(decoder, encode_image_v1(too_big, "<")) == "too_large"
    masked = SeriesStart(1, image_shape=(10, 26), pixel_mask=np.zeros((10, 26), bool))
    assert reason(decoder, encode_start_v2(masked)) == "too_large"
    assert reason(decoder, encode_start_v1(masked, "all")) == "too_large"
    for bad in (0, -1, 2.5, True, "1 GB"):
        with pytest.raises(ConfigError, match="max_image_bytes"):
            Decoder(max_image_bytes=bad)


def test_the_default_cap_admits_the_largest_dectris_frame(no_inflating):
    eiger2_16m = v2_image(v2_array([4362, 4148], 70, b"", "bslz4", 4))
    # checked, then refused for its 0-byte payload, not for its size
    assert reason(Decoder(), eiger2_16m) == "truncated_payload"
    assert compression.MAX_IMAGE_BYTES >= 4 * 4362 * 4148


@pytest.mark.parametrize("fmt", ["v2", "v1"])
def test_images_must_match_what_the_start_declared(fmt):
    start = SeriesStart(1, "u", image_shape=SHAPE, image_dtype="uint16")
    decoder = Decoder()
    if fmt == "v2":
        decoder.decode(encode_start_v2(start))
        encode = encode_image_v2
    else:
        decoder.decode(encode_start_v1(start))
        encode = encode_image_v1
    good = FRAME.astype(np.uint16)
    np.testing.assert_array_equal(decoder.decode(encode(ImageFrame(1, 0, good))).data, good)
    assert reason(decoder, encode(ImageFrame(1, 1, good.T.copy()))) == "wrong_shape"
    assert reason(decoder, encode(ImageFrame(1, 2, good[:, :6].copy()))) == "wrong_shape"
    assert reason(decoder, encode(ImageFrame(1, 3, FRAME))) == "wrong_dtype"
    # v1 says only a bit depth: a 16-bit float image has the declared size; v2 names the dtype
    half = ImageFrame(1, 4, good.astype(np.float16))
    if fmt == "v1":
        assert decoder.decode(encode(half, "<")).data.dtype == np.float16
    else:
        assert reason(decoder, encode(half, None)) == "wrong_dtype"
    # a start that does not say: only the cap applies
    decoder.decode(encode_start_v2(SeriesStart(2)))
    assert decoder.decode(encode(ImageFrame(2, 0, FRAME.T.copy()))).data.shape == SHAPE[::-1]


@pytest.mark.parametrize("size", [-1, compression.MAX_IMAGE_SIDE + 1, 2**70])
def test_a_start_declaring_an_absurd_image_size_is_malformed(size):
    v2 = cbor2.dumps(CBORTag(55799, {"type": "start", "series_id": 1, "image_size_x": size,
                                     "image_size_y": 4}))
    v1 = [b'{"htype":"dheader-1.0","series":1,"header_detail":"basic"}',
          json.dumps({"x_pixels_in_detector": 4, "y_pixels_in_detector": size}).encode()]
    assert reason(Decoder(), v2) == reason(Decoder(), v1) == "malformed"


def test_a_pixel_mask_unlike_the_images_is_refused_before_decoding(no_inflating):
    mask = CBORTag(40, [[100_000, 7], CBORTag(70, CBORTag(56500, ["bslz4", 4, bytes(40)]))])
    message = cbor2.dumps(CBORTag(55799, {"type": "start", "series_id": 1, "image_size_x": 7,
                                          "image_size_y": 13, "pixel_mask": {"t": mask}}))
    assert reason(Decoder(), message) == "wrong_shape"


BOMB = lz4_zeros(256 << 20)                     # 1 MiB that inflates to 256 MiB


def test_the_crafted_bomb_is_a_real_one():
    assert len(BOMB) < (256 << 20) // 254
    assert lz4.block.decompress(lz4_zeros(1 << 20), uncompressed_size=1 << 20) == bytes(1 << 20)


@pytest.mark.parametrize("name, message, expected", [
    ("v2 lz4, header announces the bomb", v2_image(v2_array(
        [516, 516], 70, hdf5_lz4(256 << 20, BOMB), "lz4", 0)), "size_mismatch"),
    ("v2 lz4, dims announce the bomb", v2_image(v2_array(
        [8192, 8192], 70, hdf5_lz4(256 << 20, BOMB), "lz4", 0)), "wrong_shape"),
    ("v2 bslz4, header announces the bomb", v2_image(v2_array(
        [516, 516], 70, struct.pack(">QI", 256 << 20, 8192) + BOMB, "bslz4", 4)),
     "size_mismatch"),
    ("v2 lz4, a tiny block for the declared bytes", v2_image(v2_array(
        [516, 516], 70, hdf5_lz4(516 * 516 * 4, bytes(20)), "lz4", 0)), "truncated_payload"),
    ("v1 lz4, dims announce the bomb", v1_image([8192, 8192], "uint32", "lz4<", BOMB),
     "wrong_shape"),
    ("v1 bs32, header announces the bomb", v1_image(
        [516, 516], "uint32", "bs32-lz4<", struct.pack(">QI", 256 << 20, 8192) + BOMB),
     "size_mismatch"),
    ("v1 lz4, a tiny block for the declared bytes", v1_image(
        [516, 516], "uint32", "lz4<", bytes(20)), "truncated_payload"),
])
def test_lz4_bombs_are_refused_without_inflating(no_inflating, name, message, expected):
    decoder = Decoder()
    decoder.decode(start_v2((516, 516)))                   # a Maxipix series
    assert reason(decoder, message) == expected
    assert no_inflating == []


def test_without_a_start_the_cap_stops_a_bomb_that_declares_its_size(no_inflating):
    message = v1_image([8192, 8192], "uint32", "lz4<", BOMB)
    assert reason(Decoder(max_image_bytes=64 << 20), message) == "too_large"
    assert no_inflating == []


def test_an_image_no_start_declared_is_capped_at_the_largest_dectris_frame(no_inflating):
    """Before any start, or after a v1 header without its configuration, only the byte cap
    would stand between a 256 MiB bomb and the memory: the largest real frame bounds it."""
    bomb = v1_image([8192, 8192], "uint32", "lz4<", BOMB)
    header_only = [b'{"htype":"dheader-1.0","series":1,"header_detail":"none"}']
    for primer in ([], [header_only]):
        decoder = Decoder()
        for message in primer:
            assert decoder.decode(message).image_shape is None
        assert reason(decoder, bomb) == "too_large"
    assert no_inflating == []
    assert compression.MAX_UNDECLARED_IMAGE_BYTES == 4 * 4362 * 4148


def _v2_image_with(field, value):
    tree = cbor2.loads(encode_image_v2(ImageFrame(1, 0, FRAME)))
    tree = dict(tree.value if isinstance(tree, CBORTag) else tree)
    return cbor2.dumps(CBORTag(55799, {**tree, field: value}))


@pytest.mark.parametrize("field, value", [
    ("series_id", 10**5000), ("image_id", 10**5000), ("image_id", -1), ("image_id", 2**64),
    ("real_time", [10**5000, 1]), ("real_time", [1, 2**64]), ("real_time", [-1, 50]),
    ("data", {10**5000: 1}), ("type", 10**5000)], ids=[
    "series_id 10**5000", "image_id 10**5000", "image_id -1", "image_id 2**64",
    "real_time ticks 10**5000", "real_time hz 2**64", "real_time ticks -1",
    "channel named 10**5000", "type 10**5000"])
def test_integers_outside_u64_are_refused_at_the_edge_and_shown_by_their_size(field, value):
    # asked for a channel the image lacks, the decoder names those it has
    decoder = Decoder("threshold_2" if field == "data" else None)
    decoder.decode(start_v2((13, 7)))
    with pytest.raises(BadMessageError) as info:
        decoder.decode(_v2_image_with(field, value))
    assert info.value.reason == "malformed"
    assert len(str(info.value)) < 300
    assert isinstance(Decoder().decode(_v2_image_with("image_id", 2**64 - 1)), ImageFrame)


def test_a_block_that_would_inflate_past_the_declared_size_stops_at_it(monkeypatch):
    asked, decompress = [], lz4.block.decompress

    def spy(blob, uncompressed_size, **kwargs):
        asked.append(uncompressed_size)
        return decompress(blob, uncompressed_size=uncompressed_size, **kwargs)

    monkeypatch.setattr(lz4_framing.lz4.block, "decompress", spy)
    declared = 516 * 516 * 4
    assert reason(Decoder(), v1_image([516, 516], "uint32", "lz4<", BOMB)) == "truncated_payload"
    assert reason(Decoder(), v2_image(v2_array([516, 516], 70, hdf5_lz4(declared, BOMB), "lz4",
                                               0))) == "truncated_payload"
    assert asked == [declared, declared]                   # never asked for more


SHUFFLED = compression.compress_bslz4(FRAME)                # 4-byte elements, as DECTRIS


def test_bslz4_element_size_must_be_the_pixel_size(no_inflating):
    assert reason(Decoder(), v2_image(v2_array(SHAPE, 70, SHUFFLED, "bslz4", 2))) == "wrong_dtype"
    assert reason(Decoder(), v1_image(SHAPE[::-1], "uint32", "bs16-lz4<", SHUFFLED)) == \
        "wrong_dtype"
    assert reason(Decoder(), v1_image(SHAPE[::-1], "uint16", "bs32-lz4<", SHUFFLED)) == \
        "wrong_dtype"
    assert no_inflating == []


def test_element_size_2_on_a_u32_image_is_what_used_to_decode_as_garbage():
    garbage = compression.decompress_bslz4(SHUFFLED, FRAME.nbytes, 2).view(np.uint32)
    assert not np.array_equal(garbage.reshape(SHAPE), FRAME)   # what the old decoder accepted
    right = v2_image(v2_array(SHAPE, 70, SHUFFLED, "bslz4", 4))
    np.testing.assert_array_equal(Decoder().decode(right).data, FRAME)


@pytest.mark.parametrize("error", [ZeroDivisionError("x"), MemoryError(), TypeError("t"),
                                   OverflowError("int too large"), KeyError("k")])
def test_any_exception_while_decoding_comes_out_as_bad_message(monkeypatch, caplog, error):
    def boom(*args, **kwargs):
        raise error

    refuse_bslz4(monkeypatch, boom)
    decoder = Decoder()
    message = encode_image_v2(ImageFrame(1, 0, FRAME))
    for _ in range(2):
        with pytest.raises(BadMessageError) as info:
            decoder.decode(message)
        assert info.value.reason == "internal_error" and info.value.__cause__ is error
        assert type(error).__name__ in str(info.value)
    assert [r.levelname for r in caplog.records] == ["WARNING"]   # once per kind, traceback
    assert caplog.records[0].exc_info[1] is error
    monkeypatch.undo()
    np.testing.assert_array_equal(decoder.decode(message).data, FRAME)   # the decoder goes on


def test_decode_message_reasons_are_the_documented_ones():
    documented = {"malformed", "unknown_type", "unknown_tag", "size_mismatch",
                  "truncated_payload", "unsupported_encoding", "wrong_dtype", "wrong_shape",
                  "too_large", "internal_error"}
    assert all(f"``{name}``" in dectris.__doc__ for name in documented)


# ---- item 11: a v1 header and its configuration as separate messages ------------------------
#: the stream v1 header LiberTEM's simulator sends (LiberTEM-rs sim_gen.rs), and a QUADRO-like
#: detector configuration: sent as two ZeroMQ messages by LiberTEM-rs sim.rs send_headers
LIBERTEM_HEADER = b'{"header_detail":"basic","htype":"dheader-1.0","series":34}'
LIBERTEM_CONFIG = {"auto_summation": True, "beam_center_x": 3.5, "beam_center_y": 6.5,
                   "bit_depth_image": 16, "bit_depth_readout": 12, "compression": "bslz4",
                   "countrate_correction_applied": True,
                   "countrate_correction_count_cutoff": 4000, "nimages": 1, "ntrigger": 2,
                   "trigger_mode": "exte", "photon_energy": 8000.0,
                   "x_pixels_in_detector": SHAPE[1], "y_pixels_in_detector": SHAPE[0]}


def test_a_v1_header_and_its_configuration_as_two_messages():
    decoder = Decoder()
    assert decoder.decode([LIBERTEM_HEADER]) is None                # held
    start = decoder.decode([json.dumps(LIBERTEM_CONFIG).encode()])
    assert (start.series_id, start.image_shape, start.image_dtype) == (34, SHAPE, "uint16")
    assert (start.number_of_images, start.energy_ev, start.stream_version) == (2, 8000.0, 1)
    assert (start.invalid_pixel_value, start.saturation_counts) == (65535, 4000)
    assert decoder.quirks == {"v1_header_split": 1} and not decoder.abandoned
    image = ImageFrame(34, 0, FRAME.astype(np.uint16))
    np.testing.assert_array_equal(decoder.decode(encode_image_v1(image)).data, image.data)
    assert reason(decoder, encode_image_v1(ImageFrame(34, 1, FRAME))) == "wrong_dtype"
    assert decoder.decode(encode_end_v1(SeriesEnd(34))) == SeriesEnd(34)
    # the same header in one message, as DECTRIS sends it: no quirk
    one = Decoder()
    assert one.decode([LIBERTEM_HEADER, json.dumps(LIBERTEM_CONFIG).encode()]).image_shape == SHAPE
    assert not one.quirks


def test_a_split_header_may_bring_its_appendix_with_the_configuration():
    parts = encode_start_v1(SeriesStart(5, image_shape=SHAPE, image_dtype="uint32",
                                        user_data={"sxdm": {"correlation_id": "c"}}))
    decoder = Decoder()
    assert decoder.decode(parts[:1]) is None
    start = decoder.decode(parts[1:])
    assert start.user_data == {"sxdm": {"correlation_id": "c"}} and start.image_shape == SHAPE
    assert decoder.quirks["v1_header_split"] == 1


def test_a_held_header_whose_configuration_never_comes_is_dropped_loudly(caplog):
    decoder = Decoder()
    assert decoder.decode([LIBERTEM_HEADER]) is None
    frame = decoder.decode(encode_image_v1(ImageFrame(34, 0, FRAME)))   # decoded all the same
    np.testing.assert_array_equal(frame.data, FRAME)
    assert decoder.abandoned == {"v1_header_without_config": 1} and not decoder.quirks
    assert "dropped" in caplog.text
    # a configuration alone, with no header held, is what it always was: malformed
    assert reason(decoder, [json.dumps(LIBERTEM_CONFIG).encode()]) == "malformed"
    assert decoder.decode([LIBERTEM_HEADER]) is None
    assert decoder.decode(encode_end_v2(SeriesEnd(1))) == SeriesEnd(1)   # v2 drops it too
    assert decoder.abandoned["v1_header_without_config"] == 2


def test_header_detail_none_is_complete_alone_and_bad_configurations_still_fail():
    decoder = Decoder()
    start = decoder.decode([b'{"htype":"dheader-1.0","series":3,"header_detail":"none"}'])
    assert start.series_id == 3 and not decoder.quirks
    assert decoder.decode([LIBERTEM_HEADER]) is None
    bad = dict(LIBERTEM_CONFIG, bit_depth_image=12)
    assert reason(decoder, [json.dumps(bad).encode()]) == "wrong_dtype"
    assert not decoder.quirks and not decoder.abandoned             # nothing left held
    assert reason(decoder, [json.dumps(LIBERTEM_CONFIG).encode()]) == "malformed"


def test_decode_message_returns_none_for_a_lone_header():
    assert decode_message([LIBERTEM_HEADER]) is None


# ---- over real sockets ------------------------------------------------------------------------
def assert_same_maps(maps, reference):
    """Maps of the same frames accumulated in the same order: equal, not merely close."""
    np.testing.assert_array_equal(maps.intensity_per_angle, reference.intensity_per_angle)
    np.testing.assert_array_equal(maps.mask, reference.mask)
    for name in ("intensity", "com", "strain", "tilt_altitude", "fwhm"):
        np.testing.assert_allclose(getattr(maps, name), getattr(reference, name), rtol=1e-12,
                                   atol=0, equal_nan=True, err_msg=name)


def send_scan_v2(push, scenario, series_id, unique):
    scan = scenario.scan
    push.send(encode_start_v2(series_start(scenario, series_id, unique, unique)))
    for index in range(scan.n_frames):
        data = scenario.simulator.frame(*scan.locate(index))
        push.send(encode_image_v2(ImageFrame(series_id, index, data, unique)))
    push.send(encode_end_v2(SeriesEnd(series_id, unique)))


def test_the_receiver_survives_the_messages_that_killed_it(small_scenario, small_processed,
                                                           caplog):
    push, endpoint = raw_pusher()
    with LiveProcessor(endpoint, max_series=1) as live:
        push.send(v2_image(v2_array([2**70, 0], 70, b"")))
        push.send_multipart(v1_image([100_000, 100_000], "uint32", "lz4<", lz4_zeros(10_000)))
        push.send_multipart(v1_image([8192, 8192], "uint32", "bs32-lz4<",
                                     struct.pack(">QI", 256 << 20, 8192) + BOMB))
        send_scan_v2(push, small_scenario, 4, "after-the-bombs")
        assert live.wait(TIMEOUT)
    push.close()
    status = live.status()
    # no start came before them: the bslz4 bomb is over the cap of an undeclared image
    assert status.rejected == {"too_large": 3}, status.rejected
    assert status.processed == small_scenario.scan.n_frames
    assert live.results[-1].complete
    assert_same_maps(live.results[-1].maps, small_processed.maps())


def test_a_libertem_style_v1_stream_with_a_split_header(small_scenario, small_processed):
    push, endpoint = raw_pusher()
    scan, geometry = small_scenario.scan, small_scenario.geometry
    start = series_start(small_scenario, 9, "libertem", "libertem")
    header, config = encode_start_v1(start, header_detail="basic", appendix="")
    override = ScanOverride(scan, geometry)
    with LiveProcessor(endpoint, settings=Config(), override=override,
                       max_series=1) as live:
        push.send(header)                                   # two sends, as sim.rs does
        push.send(config)
        for index in range(scan.n_frames):
            data = small_scenario.simulator.frame(*scan.locate(index))
            push.send_multipart(encode_image_v1(ImageFrame(9, index, data)))
        push.send_multipart(encode_end_v1(SeriesEnd(9)))
        assert live.wait(TIMEOUT)
    push.close()
    assert live.status().rejected == {}
    assert live.status().processed == scan.n_frames
    assert_same_maps(live.results[-1].maps, small_processed.maps())


def test_a_held_header_given_up_is_counted_as_rejected_by_the_live_processor():
    """Every message is accounted for: a lone v1 header the decoder held is rejected under
    v1_header_without_config when the next message is not its configuration, and when the
    processor stops with it still held."""
    push, endpoint = raw_pusher()
    live = LiveProcessor(endpoint).start()
    try:
        push.send(LIBERTEM_HEADER)
        push.send(encode_end_v2(SeriesEnd(34)))              # not its configuration
        push.send(LIBERTEM_HEADER)                           # held when the processor stops
        wait_until(lambda: live.status().messages == 3)
    finally:
        live.stop()
        push.close()
    status = live.status()
    assert status.rejected["v1_header_without_config"] == 2, status.rejected
    assert status.messages == 3
