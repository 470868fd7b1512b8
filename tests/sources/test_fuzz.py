"""Fuzzing what a hostile network reaches: the DECTRIS decoder, pixel requests, the processor.

The hostile inputs are made in :mod:`sxdm_stream.simulators.hostile`: valid v1 and v2
messages of one simulated frame, each broken by one family of mutation (flip, truncate,
parts, field, array, bomb, nesting, junk), attacks on the series a processor is running,
and hostile pixel requests. Every mutation draws from a :class:`random.Random`; hypothesis
hands the tests one it can shrink (the failing example is printed with its description),
and ``benchmarks/bench_fuzz.py`` a seeded one for long runs through a live processor.

Properties:

* the :class:`~sxdm_stream.sources.dectris.codec.Decoder`, after the start of a 516 x 516 u32 series,
  returns a message of the declared types (an image of that shape and itemsize) or raises
  :class:`~sxdm_stream.errors.BadMessageError`, nothing else, and never for a reason of
  ``internal_error`` (its name for an exception it did not plan for); it allocates at most
  :data:`ALLOCATION_BOUND` bytes; a message that can only be wrong (wrong element size,
  declared sizes the payload cannot fill, a bomb) is rejected; after hostile messages in a
  row it still decodes a clean series;
* :func:`~sxdm_stream.sinks.publish.decode_pixel_request` returns a map index (an int, not a bool,
  not negative, in int64 range) or raises BadMessageError;
* over real sockets, a live processor fed a clean scan interleaved with hostile messages and
  pixel requests keeps every thread alive, answers every request, counts each hostile
  message once under a reason (logging no error) and ends with the maps of the clean scan.
"""

from __future__ import annotations

import json
import random
import threading
import tracemalloc
from typing import Any, Callable

import cbor2
import numpy as np
import pytest
from cbor2 import CBORTag
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from sxdm_stream.core.maps import map_arrays
from sxdm_stream.errors import BadMessageError, format_untrusted
from sxdm_stream.messages import ImageFrame, SeriesEnd, SeriesStart
from sxdm_stream.runtime.processor import LiveProcessor
from sxdm_stream.simulators.hostile import (CHANNEL, DEEP, Corpus, Hostile, LiveFeed,
                                            answered_well, bomb, element_size_v1,
                                            element_size_v2, hostile_during,
                                            hostile_pixel_request, lz4_zeros)
from sxdm_stream.simulators.sender import frame_positions, series_start
from sxdm_stream.sinks.publish import decode_pixel_reply, decode_pixel_request, encode_pixel_request
from sxdm_stream.sources.dectris.codec import (Decoder, encode_end_v2, encode_image_v2,
                                               encode_start_v2)
from sxdm_stream.sources.dectris.sender import positions_user_data

from conftest import TIMEOUT, raw_pusher

#: what decoding one message may allocate (tracemalloc peak): a frame here is 516 x 516 u32
#: (1 MiB); the bombs declare 256 MiB, the size that raised the processor's RSS in issue 11
ALLOCATION_BOUND = 64 << 20

settings.register_profile("sxdm-fuzz", derandomize=True, database=None, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings.get_profile("sxdm-fuzz")


# ---- the properties -----------------------------------------------------------------------------
def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _opt(check) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


def _pair(check) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, tuple) and len(v) == 2 and all(check(x) for x in v)


def _image_array(v) -> bool:
    return (isinstance(v, np.ndarray) and v.ndim == 2 and v.dtype.isnative and v.dtype.kind in "uif"
            and v.flags.c_contiguous and v.flags.writeable)


_STRING, _FLOAT = (lambda v: isinstance(v, str)), (lambda v: isinstance(v, float))
DECLARED = {
    SeriesStart: dict(series_id=_is_int, series_unique_id=_opt(_STRING),
                      image_shape=_opt(_pair(_is_int)), image_dtype=_opt(_STRING),
                      number_of_images=_opt(_is_int), energy_ev=_opt(_FLOAT),
                      wavelength_a=_opt(_FLOAT), pixel_size_m=_opt(_FLOAT),
                      beam_center=_opt(_pair(_FLOAT)), detector_distance_m=_opt(_FLOAT),
                      stream_version=lambda v: v in (1, 2), invalid_pixel_value=_opt(_is_int),
                      saturation_counts=_opt(_is_int),
                      pixel_mask=_opt(lambda v: isinstance(v, np.ndarray) and v.ndim == 2
                                      and v.dtype == bool)),
    ImageFrame: dict(series_id=_is_int, image_id=_is_int, data=_image_array,
                     series_unique_id=_opt(_STRING), real_time_s=_opt(_FLOAT), received_s=_FLOAT),
    SeriesEnd: dict(series_id=_is_int, series_unique_id=_opt(_STRING)),
}


def shown(value: Any) -> str:
    """repr, safe for 5000-digit ints and megabytes of text."""
    return format_untrusted(value, 200)


def assert_declared_types(message: Any) -> None:
    checks = DECLARED.get(type(message))
    assert checks is not None, f"decode returned a {type(message).__name__}, not a stream message"
    bad = {name: shown(getattr(message, name)) for name, ok in checks.items()
           if not ok(getattr(message, name))}
    assert not bad, f"{type(message).__name__} with fields not of their declared types: {bad}"
    if isinstance(message, SeriesStart) and message.pixel_mask is not None and message.image_shape:
        assert message.pixel_mask.shape == message.image_shape


def decode_measured(decoder: Decoder, parts) -> tuple[Any, int]:
    """(message or the BadMessageError raised, peak bytes allocated while decoding). Any other
    exception propagates."""
    ours = not tracemalloc.is_tracing()         # leave a tracing the user started running
    if ours:
        tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        try:
            result = decoder.decode(parts)
        except BadMessageError as exc:
            result = exc
        return result, tracemalloc.get_traced_memory()[1] - before
    finally:
        if ours:
            tracemalloc.stop()


def check_decoding(corpus: Corpus, hostile: Hostile, version: int,
                   decoder: Decoder | None = None, declared: SeriesStart | None = None) -> Any:
    """The decoder's property for one hostile message; returns what it decoded to.

    ``decoder`` has seen ``declared``, the last start it accepted (default: a fresh decoder
    that has seen the start of a 516 x 516 u32 series). ``internal_error`` is the decoder's
    own name for an exception it did not plan for (its safety net keeps the receiver alive):
    a hostile input that reaches it is a finding. An image must be what the start declared
    (issue 11, item 3: shape and itemsize)."""
    if decoder is None:
        decoder = Decoder()
        declared = decoder.decode(list(corpus.primers[version]))
    result, peak = decode_measured(decoder, list(hostile.parts))
    assert peak <= ALLOCATION_BOUND, (f"decoding allocated {peak >> 20} MiB "
                                      f"(bound {ALLOCATION_BOUND >> 20} MiB)")
    if isinstance(result, BadMessageError):
        if result.reason == "internal_error" and result.__cause__ is not None:
            raise result.__cause__              # where it came from: one bug per origin
        assert isinstance(result.reason, str) and result.reason
        return result
    assert not hostile.must_reject, f"accepted as {type(result).__name__}: {shown(result)}"
    if result is None:                          # a v1 header waiting for its configuration
        assert len(hostile.parts) == 1 and json.loads(hostile.parts[0])["htype"].startswith(
            "dheader-")
        return result
    assert_declared_types(result)
    if isinstance(result, ImageFrame) and declared is not None:
        if declared.image_shape is not None:
            assert result.data.shape == declared.image_shape
        if declared.image_dtype is not None:
            assert result.data.itemsize == np.dtype(declared.image_dtype).itemsize
    return result


def check_pixel_request(parts: list[bytes]) -> None:
    try:
        point = decode_pixel_request(parts)
    except BadMessageError:
        return
    assert _is_int(point) and 0 <= point < 2**63, f"decoded to the index {shown(point)}"


@pytest.fixture(scope="module")
def corpus(small_scenario) -> Corpus:
    return Corpus(small_scenario)


BASES = ("v2 end", "v1 end", "v2 image bslz4", "v1 image bs32-lz4<", "v2 image lz4",
         "v1 image lz4<", "v2 image raw", "v1 image <", "v2 start light", "v1 start basic",
         "v1 start none", "v2 start", "v1 start all")


@settings(FUZZ, max_examples=1500)
@given(base=st.sampled_from(BASES), rng=st.randoms(use_true_random=False))
def test_a_mutated_message_decodes_to_its_declared_types_or_raises_bad_message(corpus, base, rng):
    hostile = corpus.mutate(base, rng)
    note(repr(hostile))
    check_decoding(corpus, hostile, corpus.version(base))


@settings(FUZZ, max_examples=40)
@given(version=st.sampled_from([2, 1]), rng=st.randoms(use_true_random=False))
def test_a_bomb_is_rejected_before_it_inflates(corpus, version, rng):
    base = "v2 image lz4" if version == 2 else "v1 image lz4<"
    hostile = bomb(corpus, base, corpus.bases[base], rng)
    note(repr(hostile))
    check_decoding(corpus, hostile, version)


@settings(FUZZ, max_examples=300)
@given(versions=st.lists(st.sampled_from([2, 1]), min_size=1, max_size=4),
       rng=st.randoms(use_true_random=False))
def test_the_decoder_decodes_clean_messages_after_hostile_ones(corpus, versions, rng):
    """The decoder keeps state between messages (the start's image size, a v1 header waiting
    for its configuration): hostile messages in a row, starts included, must leave it able
    to decode a clean series."""
    decoder = Decoder()
    declared = decoder.decode(list(corpus.primers[versions[0]]))
    for version in versions:
        hostile = corpus.mutate(rng.choice([b for b in BASES if corpus.version(b) == version]), rng)
        note(repr(hostile))
        result = check_decoding(corpus, hostile, version, decoder, declared)
        declared = result if isinstance(result, SeriesStart) else declared
    start = decoder.decode(list(corpus.primers[versions[-1]]))
    assert isinstance(start, SeriesStart) and start.image_shape == corpus.shape
    image = decoder.decode(list(corpus.bases["v2 image bslz4" if versions[-1] == 2
                                             else "v1 image bs32-lz4<"]))
    np.testing.assert_array_equal(image.data, corpus.frame)


ISSUE_11_MESSAGES = {
    # the 40-byte v2 image that killed the receiver (ValueError in compression.py)
    "v2 image of dims [2**70, 0]": (2, lambda c: (cbor2.dumps(CBORTag(55799, {
        "type": "image", "series_id": 1, "image_id": 0,
        "data": {CHANNEL: CBORTag(40, [[2**70, 0], CBORTag(70, b"")])}})),)),
    # the v1 lz4< image declared 100000 x 100000 (OverflowError)
    "v1 lz4< image of 100000 x 100000": (1, lambda c: (
        b'{"htype":"dimage-1.0","series":1,"frame":0}',
        b'{"htype":"dimage_d-1.0","shape":[100000,100000],"type":"uint32","encoding":"lz4<"}',
        lz4_zeros(4096), b'{"htype":"dconfig-1.0"}')),
    # element size 2 on a u32 image: decoded as garbage and accepted
    "bslz4 element size 2 on a u32 image": (2, lambda c: element_size_v2(ImageFrame(
        1, 0, c.frame, "x"), 2)),
    "v1 bs16-lz4< on a u32 image": (1, lambda c: element_size_v1(
        ImageFrame(1, 0, c.frame), "bs16-lz4<")),
}


@pytest.mark.parametrize("name", sorted(ISSUE_11_MESSAGES))
def test_the_messages_of_issue_11_are_rejected(corpus, name):
    version, build = ISSUE_11_MESSAGES[name]
    check_decoding(corpus, Hostile("issue 11", name, build(corpus), True), version)


@settings(FUZZ, max_examples=600)
@given(rng=st.randoms(use_true_random=False))
def test_a_hostile_pixel_request_decodes_to_an_index_or_raises_bad_message(rng):
    what, parts = hostile_pixel_request(rng)
    note(what)
    check_pixel_request(parts)


@pytest.mark.parametrize("text", ['{"request": "pixel", "point": true}',
                                  '{"request": "pixel", "point": ' + "9" * 5000 + "}",
                                  '{"request": "pixel", "point": ' + "[" * DEEP + "]" * DEEP + "}",
                                  "[" * DEEP + "]" * DEEP, '{"request": "pixel", "point": -1}'],
                         ids=["point true", "5000 digits", "nested point", "nested", "negative"])
def test_the_pixel_requests_of_issue_11_are_refused(text):
    with pytest.raises(BadMessageError):
        decode_pixel_request([text.encode()])


@settings(FUZZ, max_examples=200)
@given(parts=st.lists(st.binary(max_size=64), max_size=3))
def test_random_pixel_request_bytes_decode_to_an_index_or_raise_bad_message(parts):
    check_pixel_request(parts)


def test_a_live_processor_survives_hostile_messages_and_keeps_the_clean_maps(
        small_scenario, small_processed, corpus, tmp_path):
    rng = random.Random(11)
    scan = small_scenario.scan
    start = series_start(small_scenario, 7, "run-7", "run-7")
    push, endpoint = raw_pusher()
    live = LiveProcessor(endpoint, out=tmp_path / "r.h5", serve="tcp://127.0.0.1:*")
    finished = threading.Event()
    live.on_result(lambda result: finished.set())
    before = set(threading.enumerate())
    live.start()
    feed = LiveFeed(live.serve_endpoint, push, [t for t in threading.enumerate() if t not in before], TIMEOUT)
    hostile = []
    try:
        for _ in range(3):                      # before any scan
            what, parts = hostile_pixel_request(rng)
            assert answered_well(feed.ask(parts)), f"garbage reply to the request {what}"
        feed.send(encode_start_v2(start))
        for index in range(scan.n_frames):
            feed.send(encode_image_v2(ImageFrame(7, index, small_scenario.simulator.frame(
                *scan.locate(index)), "run-7", positions_user_data(frame_positions(
                    small_scenario, index)))))
            if index % 7 == 3:
                attack = hostile_during(rng, small_scenario, corpus, start, index + 1)
                hostile.append(attack)
                feed.send(attack.parts)
            if index % 53 == 5:
                what, parts = hostile_pixel_request(rng)
                assert answered_well(feed.ask(parts)), f"garbage reply to the request {what}"
        feed.send(encode_end_v2(SeriesEnd(7, "run-7")))
        feed.wait(lambda: finished.wait(0.05), "end of the series")
        assert not feed.dead(), f"threads died: {feed.dead()}"
        point = int(np.argmax(small_processed.accumulator.moments[..., 0].sum(axis=0)))
        assert decode_pixel_reply(feed.ask(encode_pixel_request(point))).header["point"] == point
    finally:
        feed.close()
        live.stop()
        push.close()
    status = live.status()
    assert status.processed == scan.n_frames and status.dropped == 0
    assert sum(status.rejected.values()) == len(hostile), (status.rejected, len(hostile))
    assert [r.complete for r in live.results] == [True]
    assert_same_maps(live.results[-1].maps, small_processed.maps())


def assert_same_maps(maps, reference) -> None:
    ours, theirs = map_arrays(maps), map_arrays(reference)
    assert sorted(ours) == sorted(theirs)
    for name in ours:
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-12, atol=1e-9,
                                   equal_nan=True, err_msg=name)
