"""The DECTRIS stream codec: round trips, the vendor's own layouts, and every way to fail.

Hand-built messages follow ``docs/reference/dectris_stream.md`` and are built here with cbor2,
bitshuffle and lz4 directly, not with our encoder, so that they check the vendor layout.
"""

import json
import os
import struct
import subprocess
import sys
import textwrap

import bitshuffle
import cbor2
import lz4.block
import numpy as np
import pytest
import zmq
from cbor2 import CBORTag
from hypothesis import given, settings, strategies as st

from sxdm_stream.errors import BadMessageError
from sxdm_stream.messages import ImageFrame, SeriesEnd, SeriesStart
from sxdm_stream.sources.dectris import compression, lz4_framing
from sxdm_stream.sources.dectris.codec import (MAGIC, Decoder, decode_message, encode_end_v1,
                                               encode_end_v2, encode_image_v1, encode_image_v2,
                                               encode_start_v1, encode_start_v2)

DTYPES = ["uint8", "uint16", "uint32", "float32"]
SHAPES = [(516, 516), (514, 1030), (13, 7)]
USER_DATA = {"sxdm": {"positions": {"pix": 1.5, "piz": -2.0, "eta": 0.01},
                      "nested": [1, [2, {"three": [3.0, None, True]}], "s"]}}


def sparse_frame(shape, dtype, seed=0, fraction=0.05):
    """A detector-like frame: mostly zeros, a few counts."""
    rng = np.random.default_rng(seed)
    data = np.zeros(shape, dtype)
    hit = rng.random(shape) < fraction
    data[hit] = rng.integers(1, 200, int(hit.sum())).astype(dtype)
    return data


def series_start(shape=(13, 7), dtype="uint32", mask=True, user_data=USER_DATA):
    pixel_mask = np.random.default_rng(1).random(shape) < 0.1 if mask else None
    return SeriesStart(series_id=7, series_unique_id="abc123", image_shape=shape,
                       image_dtype=dtype, number_of_images=1234, energy_ev=8049.0,
                       wavelength_a=1.5403, pixel_size_m=55e-6, beam_center=(250.5, 120.25),
                       detector_distance_m=0.85, pixel_mask=pixel_mask, user_data=user_data,
                       invalid_pixel_value=2 ** (8 * np.dtype(dtype).itemsize) - 1,
                       saturation_counts=40_000)


def bslz4_payload(array, block_bytes=8192):
    """bslz4 exactly as DECTRIS frames it, built from bitshuffle directly."""
    blocks = bitshuffle.compress_lz4(array.reshape(-1), block_bytes // array.itemsize)
    return struct.pack(">QI", array.nbytes, block_bytes) + blocks.tobytes()


def lz4_hdf5_payload(raw, block):
    """HDF5 LZ4-filter framing; blocks that do not shrink are stored raw."""
    out = [struct.pack(">QI", len(raw), block)]
    for start in range(0, len(raw), block):
        plain = raw[start:start + block]
        packed = lz4.block.compress(plain, store_size=False)
        packed = packed if len(packed) < len(plain) else plain
        out += [struct.pack(">I", len(packed)), packed]
    return b"".join(out)


def v2_image(data_map, **fields):
    msg = {"type": "image", "series_id": 1, "series_unique_id": "u", "image_id": 0,
           "series_date": CBORTag(0, "2024-05-01T10:00:00Z"),
           "start_time": [0, 50_000_000], "stop_time": [1_000_000, 50_000_000],
           "real_time": [1_000_000, 50_000_000], "user_data": [1, "\U0001f499"], "data": data_map}
    msg.update(fields)
    return cbor2.dumps(CBORTag(55799, msg))


def mda(array, tag=70, compress=None, dims=None):
    payload = array.tobytes()
    if compress == "bslz4":
        payload = CBORTag(56500, ["bslz4", array.itemsize, bslz4_payload(array)])
    return CBORTag(40, [list(dims or array.shape), CBORTag(tag, payload)])


def reason_of(parts):
    with pytest.raises(BadMessageError) as info:
        decode_message(parts)
    return info.value.reason


# ---- round trips ------------------------------------------------------------------------------
@pytest.mark.parametrize("compression_", ["bslz4", "lz4", None])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_v2_image_round_trip(dtype, shape, compression_):
    data = sparse_frame(shape, dtype)
    frame = ImageFrame(7, 42, data, series_unique_id="abc", user_data=USER_DATA, real_time_s=0.02)
    message = encode_image_v2(frame, compression=compression_)
    assert message[:3] == MAGIC
    out = decode_message(message, received_s=12.5)
    assert out.data.dtype == np.dtype(dtype) and out.data.flags.writeable
    np.testing.assert_array_equal(out.data, data)
    assert (out.series_id, out.image_id, out.series_unique_id) == (7, 42, "abc")
    assert out.user_data == USER_DATA and type(out.user_data) is dict
    assert out.real_time_s == pytest.approx(0.02) and out.received_s == 12.5


@pytest.mark.parametrize("encoding", ["<", "lz4<", "bslz4", "bs8-lz4<", "bs16-lz4<",
                                      "bs32-lz4<"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_v1_image_round_trip(dtype, shape, encoding):
    data = sparse_frame(shape, dtype, seed=2)
    frame = ImageFrame(3, 9, data, user_data=USER_DATA, real_time_s=0.001)
    element = {"bs8": 1, "bs16": 2, "bs32": 4}.get(encoding.split("-")[0], data.itemsize)
    if element != data.itemsize:  # bitshuffle elements are the pixels, or nothing is sent
        with pytest.raises(ValueError, match="pixel size"):
            encode_image_v1(frame, encoding=encoding)
        return
    parts = encode_image_v1(frame, encoding=encoding)
    if encoding == "bslz4":
        assert json.loads(parts[1])["encoding"] == f"bs{8 * data.itemsize}-lz4<"
    assert len(parts) == 5 and json.loads(parts[1])["shape"] == [shape[1], shape[0]]
    out = decode_message(parts)
    assert out.data.dtype == np.dtype(dtype) and out.data.flags.writeable
    np.testing.assert_array_equal(out.data, data)
    assert (out.series_id, out.image_id, out.user_data) == (3, 9, USER_DATA)
    assert out.real_time_s == pytest.approx(0.001)


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(0, 40), cols=st.integers(1, 40), dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2**16), block=st.sampled_from([64, 256, 8192]))
def test_bslz4_round_trip_of_any_size(rows, cols, dtype, seed, block):
    data = sparse_frame((rows, cols), dtype, seed=seed, fraction=0.5)
    payload = compression.compress_bslz4(data, block_bytes=block * np.dtype(dtype).itemsize)
    flat = compression.decompress_bslz4(payload, data.nbytes, data.itemsize)
    np.testing.assert_array_equal(flat.view(dtype).reshape(rows, cols), data)
    frame = ImageFrame(1, 0, data)
    np.testing.assert_array_equal(decode_message(encode_image_v2(frame)).data, data)
    np.testing.assert_array_equal(decode_message(encode_image_v2(frame, "lz4")).data, data)


def test_v2_start_round_trip():
    start = series_start(shape=(13, 7))
    out = Decoder().decode(encode_start_v2(start, channels=("threshold_1", "threshold_2")))
    for name in ("series_id", "series_unique_id", "image_shape", "image_dtype",
                 "number_of_images", "energy_ev", "wavelength_a", "pixel_size_m",
                 "beam_center", "detector_distance_m", "user_data", "invalid_pixel_value",
                 "saturation_counts"):
        assert getattr(out, name) == getattr(start, name), name
    assert out.pixel_mask.dtype == bool and out.stream_version == 2
    np.testing.assert_array_equal(out.pixel_mask, start.pixel_mask)
    bare = decode_message(encode_start_v2(SeriesStart(series_id=2)))
    assert (bare.series_id, bare.image_shape, bare.pixel_mask) == (2, None, None)
    assert bare.user_data is None


@pytest.mark.parametrize("detail", ["basic", "all", "none"])
def test_v1_start_round_trip(detail):
    start = series_start(shape=(514, 1030), dtype="uint16")
    parts = encode_start_v1(start, header_detail=detail)
    assert len(parts) == {"none": 1, "basic": 2, "all": 8}[detail] + 1  # + the appendix
    out = decode_message(parts)
    assert (out.series_id, out.user_data, out.stream_version) == (7, USER_DATA, 1)
    if detail == "none":
        assert out.image_shape is None and out.pixel_mask is None
        return
    for name in ("image_shape", "image_dtype", "number_of_images", "energy_ev", "wavelength_a",
                 "pixel_size_m", "beam_center", "detector_distance_m", "invalid_pixel_value",
                 "saturation_counts"):
        assert getattr(out, name) == getattr(start, name), name
    if detail == "all":
        np.testing.assert_array_equal(out.pixel_mask, start.pixel_mask)
    else:
        assert out.pixel_mask is None


@pytest.mark.parametrize("encode", [encode_start_v2, encode_start_v1])
def test_invalid_pixel_values_round_trip_and_combine(encode):
    start = SeriesStart(1, image_dtype="uint16", invalid_pixel_value=65535,
                        saturation_counts=50_000)
    out = decode_message(encode(start))
    assert (out.invalid_pixel_value, out.saturation_counts, out.max_valid_counts) == \
        (65535, 50_000, 50_000)
    # no dtype: the NODATA value alone travels (as bit_depth_image, SIMPLON's name)
    alone = decode_message(encode(SeriesStart(1, invalid_pixel_value=255)))
    assert (alone.invalid_pixel_value, alone.saturation_counts, alone.max_valid_counts) == \
        (255, None, 254)
    bare = decode_message(encode(SeriesStart(1)))
    assert (bare.invalid_pixel_value, bare.saturation_counts, bare.max_valid_counts) == \
        (None, None, None)
    for impossible in (1000, 0, 4095 if encode is encode_start_v1 else 2**65 - 1):
        with pytest.raises(ValueError, match="cannot say it"):
            encode(SeriesStart(1, invalid_pixel_value=impossible))


def test_max_valid_counts_is_the_tighter_limit():
    assert SeriesStart(1, invalid_pixel_value=255, saturation_counts=1000).max_valid_counts == 254
    assert SeriesStart(1, invalid_pixel_value=2**32 - 1,
                       saturation_counts=245_916).max_valid_counts == 245_916


def test_vendor_fields_for_invalid_pixels():
    # v2: NODATA is the unsigned image_dtype's maximum; saturation_value the largest valid count
    v2 = decode_message(_start_map(image_dtype="uint32", saturation_value=1_000_000))
    assert (v2.invalid_pixel_value, v2.saturation_counts) == (2**32 - 1, 1_000_000)
    assert decode_message(_start_map(image_dtype="float32")).invalid_pixel_value is None
    assert decode_message(_start_map(image_dtype="uint8")).max_valid_counts == 254
    # v1: 2**bit_depth_image - 1 and countrate_correction_count_cutoff; the readout depth
    # marks nothing (summed readouts exceed it)
    header = b'{"htype":"dheader-1.0","series":1,"header_detail":"basic"}'
    config = {"bit_depth_image": 32, "bit_depth_readout": 12,
              "countrate_correction_count_cutoff": 245_916}
    v1 = decode_message([header, json.dumps(config).encode()])
    assert (v1.invalid_pixel_value, v1.saturation_counts, v1.max_valid_counts) == \
        (2**32 - 1, 245_916, 245_916)
    # a cutoff of 0 is an emulator's "not set" (tickit), never a detector's
    zero = decode_message([header, json.dumps({**config, "countrate_correction_count_cutoff": 0}
                                              ).encode()])
    assert (zero.saturation_counts, zero.max_valid_counts) == (None, 2**32 - 2)
    for bad in ({**config, "countrate_correction_count_cutoff": -1},
                {**config, "countrate_correction_count_cutoff": 2**64},
                {**config, "countrate_correction_count_cutoff": 1.5}):
        assert reason_of([header, json.dumps(bad).encode()]) == "malformed"
    assert reason_of([_start_map(saturation_value=-5)]) == "malformed"
    assert reason_of([_start_map(bit_depth_image=65)]) == "malformed"


def test_v1_appendix_defaults_to_user_data_and_may_be_plain_text():
    start = series_start(user_data=None)
    assert len(encode_start_v1(start)) == 2
    parts = encode_start_v1(start, header_detail="all", appendix="beamline ID01, run 3")
    assert decode_message(parts).user_data == "beamline ID01, run 3"


def test_end_round_trip():
    assert decode_message(encode_end_v2(SeriesEnd(5, "u"))) == SeriesEnd(5, "u")
    assert decode_message(encode_end_v1(SeriesEnd(5))) == SeriesEnd(5)


def test_our_v2_messages_have_the_vendor_layout():
    start = cbor2.loads(encode_start_v2(series_start(shape=(13, 7))))
    assert list(start)[0] == "type" and start["type"] == "start"
    mask = start["pixel_mask"]["threshold_1"]
    assert mask.tag == 40 and list(mask.value[0]) == [13, 7] and mask.value[1].tag == 70
    image = cbor2.loads(encode_image_v2(ImageFrame(1, 3, sparse_frame((13, 7), "uint16"),
                                                   real_time_s=0.02)))
    assert list(image)[0] == "type"
    assert list(image["real_time"]) == [1_000_000, 50_000_000]
    assert list(image["start_time"]) == [3_000_000, 50_000_000]
    data = image["data"]["threshold_1"]
    assert data.value[1].tag == 69 and data.value[1].value.tag == 56500
    algorithm, element, payload = data.value[1].value.value
    assert (algorithm, element) == ("bslz4", 2)
    assert struct.unpack(">QI", payload[:12]) == (13 * 7 * 2, 8192)


def test_user_data_with_numpy_scalars_is_sent_as_plain_numbers():
    frame = ImageFrame(1, 0, np.zeros((2, 2), np.uint8),
                       user_data={"i": np.int64(3), "f": np.float32(0.5), "a": np.arange(2)})
    expected = {"i": 3, "f": 0.5, "a": [0, 1]}
    assert decode_message(encode_image_v2(frame)).user_data == expected
    assert decode_message(encode_image_v1(frame, "<")).user_data == expected


# ---- the vendor's layouts, built by hand --------------------------------------------------------
def test_dectris_sample_image_layout():
    data = sparse_frame((514, 1030), "uint16", seed=3)
    compressed = CBORTag(56500, ["bslz4", 2, bslz4_payload(data)])
    nested = CBORTag(40, [[514, 1030], CBORTag(69, compressed)])
    out = decode_message([v2_image({"threshold_1": nested})])
    np.testing.assert_array_equal(out.data, data)
    assert out.real_time_s == pytest.approx(0.02) and out.user_data == [1, "\U0001f499"]


def test_hdf5_lz4_framing_with_several_blocks_and_a_raw_one():
    data = sparse_frame((64, 100), "uint32", seed=4)
    data[-5:] = np.random.default_rng(5).integers(0, 2**32, (5, 100), dtype=np.uint32)  # no gain
    payload = lz4_hdf5_payload(data.tobytes(), block=1000)
    sizes, pos = [], 12
    while pos < len(payload):
        sizes.append(struct.unpack_from(">I", payload, pos)[0])
        pos += 4 + sizes[-1]
    assert 1000 in sizes[:-1] and sizes[-1] == len(data.tobytes()) % 1000  # raw blocks
    tag = CBORTag(40, [[64, 100], CBORTag(70, CBORTag(56500, ["lz4", 0, payload]))])
    np.testing.assert_array_equal(decode_message(v2_image({"threshold_1": tag})).data, data)


@pytest.mark.parametrize("tag", sorted(compression.TYPED_ARRAY_DTYPES))
def test_every_rfc8746_typed_array(tag):
    dtype = compression.TYPED_ARRAY_DTYPES[tag]
    values = np.arange(12).reshape(3, 4) * (-1 if dtype.kind in "if" else 1)
    wire = values.astype(dtype)
    row = decode_message(v2_image({"t": CBORTag(40, [[3, 4], CBORTag(tag, wire.tobytes())])}))
    assert row.data.dtype.isnative and row.data.dtype.kind == dtype.kind
    np.testing.assert_array_equal(row.data, values)
    column = CBORTag(1040, [[3, 4], CBORTag(tag, wire.T.copy().tobytes())])
    np.testing.assert_array_equal(decode_message(v2_image({"t": column})).data, values)


def test_vendor_start_message_and_channel_choice():
    rng = np.random.default_rng(6)
    mask = (rng.random((4, 5)) < 0.3).astype("<u4") * 4  # DECTRIS mask bits, not just 1
    other = np.zeros((4, 5), "<u4")
    start = {"type": "start", "series_id": 11, "series_unique_id": "01HV", "arm_date":
             CBORTag(0, "2024-05-01T10:00:00.123Z"), "beam_center_x": 512.5, "beam_center_y": 3.25,
             "channels": ["threshold_2", "threshold_1"], "count_time": 0.019,
             "countrate_correction_enabled": True,
             "countrate_correction_lookup_table": CBORTag(70, np.arange(4, dtype="<u4").tobytes()),
             "detector_description": "Dectris EIGER2 Si 500K",
             "detector_translation": [0., 0., -0.1], "flatfield_enabled": True,
             "flatfield": {"threshold_1": mda(np.ones((4, 5), "<f4"), 85)},
             "goniometer": {"omega": {"increment": 0.1, "start": 0.0}}, "image_dtype": "uint16",
             "image_size_x": 5, "image_size_y": 4, "incident_energy": 8049,
             "incident_wavelength": 1.54, "number_of_images": 100,
             "pixel_mask": {"threshold_1": mda(other), "threshold_2": mda(mask)},
             "pixel_mask_enabled": True, "pixel_size_x": 75e-6, "pixel_size_y": 75e-6,
             "threshold_energy": {"threshold_1": 4000.0}, "user_data": {"k": [1, {"n": 2}]}}
    decoder = Decoder()
    out = decoder.decode(cbor2.dumps(start))  # no self-describe tag: accepted, counted
    assert decoder.without_magic == 1 and out.series_unique_id == "01HV"
    assert (out.image_shape, out.beam_center, out.energy_ev) == ((4, 5), (3.25, 512.5), 8049.0)
    assert out.detector_distance_m is None and out.user_data == {"k": [1, {"n": 2}]}
    np.testing.assert_array_equal(out.pixel_mask, mask != 0)  # the first listed channel
    images = {"threshold_1": mda(np.full((4, 5), 1, "<u2"), 69),
              "threshold_2": mda(np.full((4, 5), 2, "<u2"), 69)}
    assert decoder.decode(v2_image(images)).data[0, 0] == 2
    assert decode_message(v2_image(images)).data[0, 0] == 1  # no start: first key
    assert Decoder("threshold_2").decode(v2_image(images)).data[0, 0] == 2
    assert reason_of_decoder(Decoder("difference"), v2_image(images)) == "malformed"
    # a start is not rejected for lacking the chosen channel's mask: the default one is used
    np.testing.assert_array_equal(Decoder("difference").decode(cbor2.dumps(start)).pixel_mask,
                                  mask != 0)


def reason_of_decoder(decoder, parts):
    with pytest.raises(BadMessageError) as info:
        decoder.decode(parts)
    return info.value.reason


def test_v1_basic_header_with_an_extra_appendix():
    config = {"beam_center_x": 515.3, "beam_center_y": 530.1, "bit_depth_image": 32,
              "compression": "bslz4", "count_time": 0.001, "detector_distance": 0.12,
              "nimages": 50, "ntrigger": 4, "trigger_mode": "exts", "photon_energy": 8000.0,
              "wavelength": 1.5498, "x_pixel_size": 75e-6, "y_pixel_size": 75e-6,
              "x_pixels_in_detector": 1028, "y_pixels_in_detector": 512,
              "data_collection_date": "2024-05-01T10:00:00.000+02:00"}
    parts = [b'{"htype":"dheader-1.0","series":4,"header_detail":"basic"}',
             json.dumps(config).encode(), b'{"scan": "fly", "points": [1, 2]}']
    out = decode_message(parts)
    assert (out.series_id, out.image_shape, out.image_dtype) == (4, (512, 1028), "uint32")
    assert (out.number_of_images, out.beam_center) == (200, (530.1, 515.3))
    assert out.user_data == {"scan": "fly", "points": [1, 2]}
    config["trigger_mode"] = "exte"  # one image per trigger
    assert decode_message(parts[:1] + [json.dumps(config).encode()]).number_of_images == 4


def test_v1_all_header_built_by_hand():
    mask = np.zeros((3, 4), "<u4")
    mask[1, 2] = 1
    parts = [b'{"htype":"dheader-1.0","series":1,"header_detail":"all"}',
             b'{"x_pixels_in_detector":4,"y_pixels_in_detector":3}',
             b'{"htype":"dflatfield-1.0","shape":[4,3],"type":"float32"}',
             np.ones((3, 4), "<f4").tobytes(),
             b'{"htype":"dpixelmask-1.0","shape":[4,3],"type":"uint32"}', mask.tobytes(),
             b'{"htype":"dcountrate_table-1.0","shape":[2,3],"type":"float32"}',
             np.zeros(6, "<f4").tobytes(), b"not json"]
    out = decode_message(parts)
    np.testing.assert_array_equal(out.pixel_mask, mask != 0)
    assert out.user_data == "not json"


def test_v1_emulator_quirks_zero_header_and_misspelled_end():
    data = sparse_frame((9, 11), "uint32", seed=7)
    blob = bytes(12) + bitshuffle.compress_lz4(data.reshape(-1)).tobytes()  # LiberTEM: 0 header
    description = json.dumps({"htype": "dimage_d-1.0", "shape": [11, 9], "type": "uint32",
                              "encoding": "bs32-lz4<", "size": len(blob)}).encode()
    parts = [b'{"htype":"dimage-1.0","series":2,"frame":5,"hash":"dummy"}', description, blob,
             b'{"htype":"dconfig-1.0","start_time":0,"stop_time":100,"real_time":1000000}']
    out = decode_message(parts)
    np.testing.assert_array_equal(out.data, data)
    assert (out.image_id, out.real_time_s, out.user_data) == (5, pytest.approx(1e-3), None)
    assert decode_message([b'{"htype":"deseries_end-1.0","series":2}']) == SeriesEnd(2)


def test_v1_lz4_is_a_raw_block_without_size_header():
    data = sparse_frame((10, 10), "uint16", seed=8)
    blob = lz4.block.compress(data.tobytes(), store_size=False)
    description = json.dumps({"htype": "dimage_d-1.0", "shape": [10, 10], "type": "uint16",
                              "encoding": "lz4<"}).encode()
    parts = [b'{"htype":"dimage-1.0","series":1,"frame":0}', description, blob,
             b'{"htype":"dconfig-1.0"}']
    np.testing.assert_array_equal(decode_message(parts).data, data)


# ---- failures -----------------------------------------------------------------------------------
def _start_map(**change):
    msg = {"type": "start", "series_id": 1, "image_size_x": 3, "image_size_y": 2}
    msg.update(change)
    return cbor2.dumps(CBORTag(55799, msg))


SMALL = np.arange(6, dtype="<u4").reshape(2, 3)
GOOD_BSLZ4 = bslz4_payload(sparse_frame((40, 40), "uint32", fraction=0.5))


def _bslz4_image(payload, element=4, algorithm="bslz4", dims=(40, 40)):
    tag = CBORTag(40, [list(dims), CBORTag(70, CBORTag(56500, [algorithm, element, payload]))])
    return v2_image({"threshold_1": tag})


def _corrupt_block_size(payload):
    return payload[:12] + struct.pack(">I", 0x7FFFFF00) + payload[16:]


V2_FAILURES = {
    "not CBOR": (b"\xff\x00\x01", "malformed"),
    "empty frame": (b"", "malformed"),
    "CBOR that is not a map": (cbor2.dumps(CBORTag(55799, [1, 2])), "malformed"),
    "trailing bytes": (_start_map() + b"\x00", "malformed"),
    "unknown type": (_start_map(type="hello"), "unknown_type"),
    "missing series_id": (cbor2.dumps({"type": "end"}), "malformed"),
    "wrong field type": (_start_map(series_id="1"), "malformed"),
    "bool as int": (_start_map(series_id=True), "malformed"),
    "unknown image dtype": (_start_map(image_dtype="complex64"), "wrong_dtype"),
    "mask of the wrong shape": (_start_map(pixel_mask={"t": mda(SMALL.T.copy())}), "wrong_shape"),
    "bad rational": (v2_image({"t": mda(SMALL)}, real_time=[1, 0]), "malformed"),
    "huge rational": (v2_image({"t": mda(SMALL)}, real_time=[10**400, 1]), "malformed"),
    "huge energy": (_start_map(incident_energy=10**400), "malformed"),
    "data not a map": (v2_image([mda(SMALL)]), "malformed"),
    "empty data map": (v2_image({}), "malformed"),
    "unknown typed-array tag": (v2_image({"t": CBORTag(40, [[2, 3], CBORTag(76, bytes(24))])}),
                                "unknown_tag"),
    "unknown array tag": (v2_image({"t": CBORTag(41, [[2, 3], CBORTag(70, bytes(24))])}),
                          "unknown_tag"),
    "unknown tag for bytes": (v2_image({"t": CBORTag(40, [[2, 3], CBORTag(70, CBORTag(99, b""))])}),
                              "unknown_tag"),
    "array not tagged": (v2_image({"t": [[2, 3], bytes(24)]}), "malformed"),
    "dims disagree with data size": (v2_image({"t": mda(SMALL, dims=[3, 3])}), "size_mismatch"),
    "3-D dims": (v2_image({"t": mda(SMALL, dims=[1, 2, 3])}), "size_mismatch"),
    "negative dims": (v2_image({"t": mda(SMALL, dims=[-2, -3])}), "malformed"),
    "dims disagree with bslz4 header": (_bslz4_image(GOOD_BSLZ4, dims=(40, 41)), "size_mismatch"),
    "truncated bslz4": (_bslz4_image(GOOD_BSLZ4[:-20]), "truncated_payload"),
    "bslz4 header only": (_bslz4_image(GOOD_BSLZ4[:8]), "truncated_payload"),
    "bslz4 with extra bytes": (_bslz4_image(GOOD_BSLZ4 + b"\x00"), "truncated_payload"),
    "corrupted block size field": (_bslz4_image(_corrupt_block_size(GOOD_BSLZ4)),
                                   "truncated_payload"),
    "block shorter than its data": (_bslz4_image(GOOD_BSLZ4[:12] + struct.pack(">I", 100)
                                                 + GOOD_BSLZ4[16:116]), "truncated_payload"),
    "garbage lz4 block": (_bslz4_image(GOOD_BSLZ4[:12] + struct.pack(">I", 1000) + b"\xff" * 1000),
                          "truncated_payload"),
    "bad bslz4 block size": (_bslz4_image(GOOD_BSLZ4[:8] + struct.pack(">I", 100)
                                          + GOOD_BSLZ4[12:]), "truncated_payload"),
    "absurd dims and header": (_bslz4_image(struct.pack(">QI", 2**63, 8192) + GOOD_BSLZ4[12:],
                                            element=1, dims=(2**31, 2**30)), "too_large"),
    "bslz4 element size 3": (_bslz4_image(GOOD_BSLZ4, element=3), "wrong_dtype"),
    "unknown compression": (_bslz4_image(GOOD_BSLZ4, algorithm="zstd"), "unsupported_encoding"),
    "compression tag not a triple": (v2_image({"t": CBORTag(40, [[2, 3], CBORTag(70, CBORTag(
        56500, ["lz4", b""]))])}), "malformed"),
    "lz4 header disagrees with dims": (v2_image({"t": CBORTag(40, [[2, 3], CBORTag(70, CBORTag(
        56500, ["lz4", 0, lz4_hdf5_payload(SMALL.tobytes() * 9, 16)]))])}), "size_mismatch"),
}


@pytest.mark.parametrize("name", list(V2_FAILURES))
def test_v2_failures_raise_with_their_reason(name):
    message, reason = V2_FAILURES[name]
    assert reason_of([message]) == reason


@pytest.mark.parametrize("cut, reason", [(-3, "truncated_payload"), (None, None)])
def test_lz4_framing_is_checked(cut, reason):
    raw = sparse_frame((20, 30), "uint32", seed=9).tobytes()
    payload = lz4_hdf5_payload(raw, 512)
    tag = CBORTag(40, [[20, 30], CBORTag(70, CBORTag(56500, ["lz4", 0, payload[:cut]]))])
    if reason is None:
        assert decode_message(v2_image({"t": tag})).data.tobytes() == raw
    else:
        assert reason_of(v2_image({"t": tag})) == reason
    bad_field = payload[:12] + struct.pack(">I", 10**6) + payload[16:]
    tag.value[1].value.value[2] = bad_field
    assert reason_of(v2_image({"t": tag})) == "truncated_payload"


def _v1_image(encoding="<", type_="uint32", blob=None, shape=(3, 2), **description):
    desc = {"htype": "dimage_d-1.0", "shape": list(shape), "type": type_, "encoding": encoding}
    desc.update(description)
    return [b'{"htype":"dimage-1.0","series":1,"frame":0}', json.dumps(desc).encode(),
            SMALL.tobytes() if blob is None else blob, b'{"htype":"dconfig-1.0"}']


V1_FAILURES = {
    "first part not JSON": ([b"{oops", b"x"], "malformed"),
    "JSON that is not an object": (_v1_image()[:1] + [b"[1, 2]"] + _v1_image()[2:], "malformed"),
    "config that is not an object": ([b'{"htype":"dheader-1.0","series":1,"header_detail":"basic"}',
                                      b'"config"'], "malformed"),
    "unknown htype": ([b'{"htype":"dsomething-1.0"}'], "unknown_type"),
    "no htype": ([b'{"series": 1}'], "malformed"),
    "missing image parts": (_v1_image()[:3], "malformed"),
    "too many image parts": (_v1_image() + [b"a", b"b"], "malformed"),
    "unknown header_detail": ([b'{"htype":"dheader-1.0","series":1,"header_detail":"some"}'],
                              "malformed"),
    "unexpected header parts": ([b'{"htype":"dheader-1.0","series":1,"header_detail":"none"}',
                                 b"a", b"b"], "malformed"),
    "bit depth 12": ([b'{"htype":"dheader-1.0","series":1,"header_detail":"basic"}',
                      b'{"bit_depth_image":12}'], "wrong_dtype"),
    "second part not dimage_d": (_v1_image(htype="dconfig-1.0"), "malformed"),
    "unknown encoding": (_v1_image("bs32-zstd<"), "unsupported_encoding"),
    "bitshuffle without lz4": (_v1_image("bs32<"), "unsupported_encoding"),
    "unknown type": (_v1_image(type_="uint12"), "wrong_dtype"),
    "shape of three": (_v1_image(shape=(3, 2, 2)), "size_mismatch"),
    "shape disagrees with blob": (_v1_image(shape=(3, 3)), "size_mismatch"),
    "size field disagrees with blob": (_v1_image(size=25), "truncated_payload"),
    "corrupt lz4 block": (_v1_image("lz4<", blob=b"\xff" * 10), "truncated_payload"),
    "short lz4 block": (_v1_image("lz4<", blob=lz4.block.compress(SMALL.tobytes()[:-4],
                                                                   store_size=False)),
                        "truncated_payload"),
    "truncated bs32": (_v1_image("bs32-lz4<", blob=compression.compress_bslz4(SMALL)[:-2]),
                       "truncated_payload"),
}


@pytest.mark.parametrize("name", list(V1_FAILURES))
def test_v1_failures_raise_with_their_reason(name):
    parts, reason = V1_FAILURES[name]
    assert reason_of(parts) == reason


@pytest.mark.parametrize("parts", [[], [b"\xa0", b"\xa0"], "text", [1, 2], None])
def test_what_is_not_a_message_is_malformed(parts):
    assert reason_of(parts) == "malformed"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), min_size=1, max_size=6))
def test_random_bytes_only_ever_raise_bad_message(parts):
    try:
        decode_message(parts)
    except BadMessageError as exc:
        assert exc.reason in {"malformed", "unknown_type", "unknown_tag", "size_mismatch",
                              "truncated_payload", "unsupported_encoding", "wrong_dtype",
                              "wrong_shape", "too_large"}


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5)
                    | st.binary(max_size=8),
                    lambda children: st.lists(children, max_size=3)
                    | st.dictionaries(st.sampled_from(["type", "series_id", "image_id", "data",
                                                       "threshold_1", "user_data", "real_time"]),
                                      children, max_size=4)
                    | st.builds(CBORTag, st.sampled_from([40, 56500, 64, 70, 1040, 99]), children),
                    max_leaves=12),
       st.sampled_from(["image", "start", "end"]))
def test_random_cbor_structures_only_ever_raise_bad_message(content, kind):
    message = {"type": kind, "series_id": 1, "image_id": 0, "data": {"threshold_1": content},
               "pixel_mask": {"threshold_1": content}, "user_data": content}
    try:
        decode_message(cbor2.dumps(CBORTag(55799, message)))
    except BadMessageError:
        pass


# ---- the bslz4 framing walk ---------------------------------------------------------------------
def reference_walk(payload, n, itemsize, block):
    """Pure-Python statement of the framing that ``bitshuffle.compress_lz4`` writes."""
    pos, last = 12, n % block - n % block % 8
    for elements in [block] * (n // block) + ([last] if last else []):
        if pos + 4 > len(payload):
            return -1
        size = struct.unpack_from(">I", payload, pos)[0]
        pos += 4
        bound = elements * itemsize + elements * itemsize // 255 + 16  # LZ4_compressBound
        if not 0 < size <= min(bound, len(payload) - pos):
            return -1
        pos += size
    return pos + n % 8 * itemsize


@pytest.mark.parametrize("n, itemsize", [(91, 4), (91, 2), (2048 * 3 + 13, 4), (2048 * 3, 4),
                                         (5, 1), (40, 1), (516 * 516, 4), (0, 4)])
def test_bitshuffle_framing_as_measured(n, itemsize):
    data = np.random.default_rng(n).integers(0, 3, n).astype(f"u{itemsize}")
    payload = compression.compress_bslz4(data)
    buf = np.frombuffer(payload, np.uint8)
    block = 8192 // itemsize
    assert lz4_framing._walk_bslz4_blocks(buf, n, itemsize, block) == len(payload)
    assert reference_walk(payload, n, itemsize, block) == len(payload)
    # the last n % 8 elements travel raw after the last block
    assert payload[len(payload) - n % 8 * itemsize:] == data[n - n % 8:].tobytes()
    rng = np.random.default_rng(n + 1)
    for _ in range(200):
        corrupt = bytearray(payload)
        if len(corrupt) > 12:
            corrupt[rng.integers(12, len(corrupt))] ^= 1 << int(rng.integers(8))
        corrupt = bytes(corrupt[:rng.integers(12, len(corrupt) + 1)])
        view = np.frombuffer(corrupt, np.uint8)
        assert lz4_framing._walk_bslz4_blocks(view, n, itemsize, block) == \
            reference_walk(corrupt, n, itemsize, block)


FUZZ = textwrap.dedent("""
    import collections, json, struct
    import cbor2
    import numpy as np
    from sxdm_stream.sources.dectris.compression import compress_bslz4
    from sxdm_stream.sources.dectris.codec import decode_message, encode_image_v1
    from sxdm_stream.errors import BadMessageError
    from sxdm_stream.messages import ImageFrame
    TAGS = {1: 64, 2: 69, 4: 70}
    rng = np.random.default_rng(20240501)
    outcomes = collections.Counter()
    for shape, dtype in [((64, 61), "u4"), ((13, 7), "u2"), ((40, 40), "u1")]:
        data = ((rng.random(shape) < 0.3) * rng.integers(0, 1000, shape)).astype(dtype)
        good = compress_bslz4(data)
        v1 = encode_image_v1(ImageFrame(1, 0, data), f"bs{8 * data.itemsize}-lz4<")
        for i in range(1000):
            payload = bytearray(good)
            mode = i % 4
            if mode == 0:
                for _ in range(rng.integers(1, 5)):
                    payload[rng.integers(len(payload))] = rng.integers(256)
            elif mode == 1:
                payload = payload[:rng.integers(len(payload))]
            elif mode == 2:
                at = 12 + 4 * int(rng.integers(0, 2))
                payload[at:at + 4] = struct.pack(">I", int(rng.integers(0, 2**32)))
            else:
                payload[rng.integers(12, len(payload))] ^= 0xFF
            payload = bytes(payload)
            if i % 2:
                array = cbor2.CBORTag(40, [list(shape), cbor2.CBORTag(TAGS[data.itemsize],
                        cbor2.CBORTag(56500, ["bslz4", data.itemsize, payload]))])
                message = [cbor2.dumps(cbor2.CBORTag(55799, {"type": "image", "series_id": 1,
                                                             "image_id": i, "data": {"t": array}}))]
            else:
                message = v1[:2] + [payload] + v1[3:]
            try:
                decode_message(message)
                outcomes["decoded"] += 1
            except BadMessageError as exc:
                outcomes[exc.reason] += 1
    print(json.dumps(outcomes))
""")


def test_thousands_of_corrupted_bslz4_payloads_never_crash_the_process():
    # bitshuffle.decompress_lz4 segfaults on a corrupted block size field: run in a child so
    # that a crash shows as a return code, not as a dead test run. One OpenMP thread: on a
    # busy machine bitshuffle's thread team makes thousands of tiny frames slow, not different
    done = subprocess.run([sys.executable, "-c", FUZZ], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    outcomes = json.loads(done.stdout)
    assert sum(outcomes.values()) == 3000
    assert outcomes["truncated_payload"] > 1000


# ---- the sender's close -------------------------------------------------------------------------
def _slow_receiver(endpoint):
    """A PULL socket that holds one message and reads nothing till told (tiny TCP buffers):
    what the sender sends stays queued on its side."""
    pull = zmq.Context.instance().socket(zmq.PULL)
    for option, value in ((zmq.RCVHWM, 1), (zmq.RCVBUF, 4096), (zmq.LINGER, 0)):
        pull.setsockopt(option, value)
    pull.connect(endpoint)
    return pull


def _send_queued(sender, n=6):
    payload = bytes(1 << 20)
    for index in range(n):
        assert sender.send_parts([b"%d" % index, payload])
    assert sender.send_end(SeriesEnd(1, "u"))


def test_closing_the_sender_waits_for_a_slow_receiver_to_take_the_end(caplog):
    import threading

    from sxdm_stream.sources.dectris.sender import StreamSender

    sender = StreamSender("tcp://127.0.0.1:*", close_linger_s=None)
    sender.socket.setsockopt(zmq.SNDBUF, 4096)
    pull = _slow_receiver(sender.endpoint)
    _send_queued(sender)
    go, got = threading.Event(), []

    def receive():
        go.wait()
        while not got or got[-1][0] != encode_end_v2(SeriesEnd(1, "u")):
            got.append(pull.recv_multipart())

    reader = threading.Thread(target=receive)
    reader.start()
    go.set()                                  # the receiver catches up while close() waits
    sender.close()
    reader.join()
    pull.close()
    assert len(got) == 7 and "gave up" not in caplog.text


def test_a_sender_that_gives_up_closing_says_so(caplog):
    from sxdm_stream.sources.dectris.sender import StreamSender

    sender = StreamSender("tcp://127.0.0.1:*", close_linger_s=0.2)
    sender.socket.setsockopt(zmq.SNDBUF, 4096)
    pull = _slow_receiver(sender.endpoint)
    _send_queued(sender)
    sender.close()                                         # the receiver never reads
    pull.close()
    assert "gave up after" in caplog.text and "end of the series" in caplog.text
    with pytest.raises(ValueError, match="close_linger_s"):
        StreamSender("tcp://127.0.0.1:*", close_linger_s=0)
