"""Hostile input for a processor that is running: attacks on its series, pixel requests, and
:class:`LiveFeed`, which sends them over its sockets.

:func:`hostile_during` makes a hostile message for the series being processed: an attack on
that very series (:func:`series_attack`: impossible ids, positions or monitors on frames
already in the sums, frames of the wrong shape or element size, another run's unique id) or a
mutated message of the corpus' series. :func:`hostile_pixel_request` makes pixel requests a
viewer would never send. :class:`LiveFeed` stops waiting as soon as one of the processor's
threads died.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
from typing import Callable

import zmq
from cbor2 import CBORTag

from sxdm_stream.errors import BadMessageError, format_untrusted
from sxdm_stream.messages import SXDM_KEY, ImageFrame, SeriesEnd, SeriesStart
from sxdm_stream.sinks.publish import decode_pixel_reply, encode_pixel_request
from sxdm_stream.sources.dectris.codec import (Decoder, encode_end_v2, encode_image_v1,
                                               encode_image_v2)
from sxdm_stream.sources.dectris.sender import positions_user_data

from ..sender import frame_positions
from .families import Corpus
from .values import CHANNEL, DEEP, INTO_TAG, Hostile, dump_v2, load_v2, replaced, value_at


# ---- hostile messages of the series being processed ---------------------------------------------
def series_attack(rng: random.Random, scenario, start: SeriesStart, sent: int) -> Hostile:
    """A hostile message for the series ``start`` began, after ``sent`` of its frames: each
    one is wrong by construction (an impossible id, positions or monitor on a frame already
    in the sums, a frame of the wrong shape or element size, another run's unique id), so a
    processor that accepts it changes the maps."""
    scan = scenario.scan
    sid, unique = start.series_id, start.series_unique_id
    later = rng.randrange(sent, scan.n_frames) if sent < scan.n_frames else 0
    done = rng.randrange(sent) if sent else 0

    def frame(index):
        return scenario.simulator.frame(*scan.locate(index))

    def image(index, data=None, user=None, unique_id=unique):
        data = frame(index) if data is None else data
        user = positions_user_data(frame_positions(scenario, index)) if user is None else user
        return ImageFrame(sid, index, data, unique_id, user)

    value = rng.choice([math.nan, math.inf, "x", 10**400, [], {}, True, -1e300, None])
    shown = format_untrusted(value)
    bad_id = rng.choice([-1, 2**70, 2**64 - 1, scan.n_frames, 10**30, 10**5000, True])
    motor = rng.choice(scan.motors)
    attacks: dict[str, Callable[[], tuple]] = {
        # an ImageFrame refuses such an id: it is written into the encoded message
        f"image_id := {format_untrusted(bad_id)}": lambda: (dump_v2(replaced(
            load_v2(encode_image_v2(image(0))), ("image_id",), bad_id)),),
        f"positions[{motor}] := {shown} on frame {done}, in the sums": lambda: (
            encode_image_v2(image(done, user={SXDM_KEY: {"positions": {
                **frame_positions(scenario, done), motor: value}}})),),
        f"monitor := {shown} on frame {done}, in the sums": lambda: (encode_image_v2(
            image(done, user={SXDM_KEY: {"positions": frame_positions(scenario, done),
                                         "monitor": value}})),),
        f"frame {later} reshaped (same bytes)": lambda: (encode_image_v2(image(
            later, frame(later).reshape(frame(later).shape[0] // 2, -1))),),
        f"frame {later} one column short": lambda: (encode_image_v2(image(
            later, frame(later)[:, :-1])),),
        f"frame {later}: bslz4 element size 2 on u32": lambda: element_size_v2(image(later), 2),
        f"frame {later}: v1 bs16-lz4< on u32": lambda: element_size_v1(image(later),
                                                                      "bs16-lz4<"),
        f"frame {later} of another run's unique id": lambda: (encode_image_v2(
            image(later, unique_id="not-" + unique)),),
        "end of another run's unique id": lambda: (encode_end_v2(SeriesEnd(
            sid, "not-" + unique)),),
        f"frame {done}, in the sums, as float32": lambda: _typed_as(image(done), 85),
    }
    what = rng.choice(sorted(attacks))
    return Hostile("series", what, attacks[what](), True)


def element_size_v2(frame: ImageFrame, modifier: int) -> tuple[bytes]:
    """The v2 bslz4 image of ``frame`` with the bitshuffle element size ``modifier``."""
    tree = load_v2(encode_image_v2(frame, "bslz4"))
    return (dump_v2(replaced(tree, ("data", CHANNEL, INTO_TAG, 1, INTO_TAG, INTO_TAG, 1),
                             modifier)),)


def element_size_v1(frame: ImageFrame, encoding: str) -> tuple[bytes, ...]:
    """The v1 image of ``frame`` bitshuffled by 32-bit elements, described as ``encoding``."""
    parts = encode_image_v1(frame, "bs32-lz4<")
    parts[1] = json.dumps({**json.loads(parts[1]), "encoding": encoding}).encode()
    return tuple(parts)


def _typed_as(frame: ImageFrame, tag: int) -> tuple[bytes]:
    tree = load_v2(encode_image_v2(frame, None))
    return (dump_v2(replaced(tree, ("data", CHANNEL, INTO_TAG, 1),
                             CBORTag(tag, value_at(tree, ("data", CHANNEL, INTO_TAG, 1)).value))),)


def for_a_live_run(corpus: Corpus, rng: random.Random) -> Hostile:
    """A mutated message of the corpus' series that a processor running another series must
    count and otherwise ignore: one the decoder rejects (or breaks on), or an image or end of
    the corpus' series id. Never a start (a new series is not hostile, it is a new series),
    nor a message a flip moved to another series id."""
    bases = [b for b in sorted(corpus.bases) if "start" not in b]
    own = json.loads(corpus.bases["v1 end"][0])["series"]
    while True:
        hostile = corpus.mutate(rng.choice(bases), rng)
        if hostile.family == "bomb":
            return hostile                      # an image or mask of 8192 x 8192 by construction
        try:
            message = Decoder().decode(list(hostile.parts))
        except Exception:                       # rejected, or breaks the decoder: send it
            return hostile
        # None: a v1 header held for its configuration, a quirk we accept (not hostile)
        if isinstance(message, (ImageFrame, SeriesEnd)) and message.series_id == own:
            return hostile


def hostile_during(rng: random.Random, scenario, corpus: Corpus, start: SeriesStart,
                   sent: int) -> Hostile:
    """A hostile message for a processor running the series ``start`` began, ``sent`` frames
    in: an attack on that series (3 in 10) or a mutated message of the corpus' series."""
    if rng.random() < 0.3:
        return series_attack(rng, scenario, start, sent)
    return for_a_live_run(corpus, rng)


# ---- pixel requests -----------------------------------------------------------------------------
def hostile_pixel_request(rng: random.Random) -> tuple[str, list[bytes]]:
    """(description, parts) of a pixel request a viewer should never send."""
    value_label, value = rng.choice(
        [("True", True), ("False", False), ("None", None), ("-1", -1), ("2**63", 2**63),
         ("2**70", 2**70), ("1.5", 1.5), ("NaN", math.nan), ("'3'", "3"), ("[]", []), ("{}", {}),
         ("[3]", [3]), ("{'point': 3}", {"point": 3}), ("-0.0", -0.0), ("1e308", 1e308)])
    prefix = '{"request":"pixel","point":'
    texts = {
        f"point := {value_label}": json.dumps({"request": "pixel", "point": value}),
        "point := 5000 digits": prefix + "9" * 5000 + "}",
        "point := -5000 digits": prefix + "-" + "9" * 5000 + "}",
        "point := 1e999": prefix + "1e999}",
        "point := -Infinity": prefix + "-Infinity}",
        f"point := {DEEP} nested brackets": prefix + "[" * DEEP + "]" * DEEP + "}",
        f"{DEEP} nested brackets": "[" * DEEP + "]" * DEEP,
        f"{DEEP} nested objects": '{"a":' * DEEP + "1" + "}" * DEEP,
        "truncated": prefix + "3",
        "trailing junk": prefix + "3}x",
        "duplicate keys": '{"point":1,"point":true,"request":"pixel"}',
        "request := 1": '{"request":1,"point":3}',
        "request := ['pixel']": '{"request":["pixel"],"point":3}',
        "not JSON": "pixel 3 please",
        "empty": "",
        "JSON null": "null",
    }
    kind = rng.random()
    if kind < 0.7:
        what = rng.choice(sorted(texts))
        return what, [texts[what].encode()]
    valid = encode_pixel_request(rng.randrange(100))
    if kind < 0.8:
        return "valid request + a second part", valid + [rng.randbytes(rng.randrange(8))]
    if kind < 0.85:
        return "not UTF-8", [prefix.encode() + b"\xff\xfe}"]
    if kind < 0.9:
        return "random bytes", [rng.randbytes(rng.randrange(64))]
    part = bytearray(valid[0])
    positions = [rng.randrange(len(part)) for _ in range(rng.randint(1, 4))]
    for pos in positions:
        part[pos] ^= rng.randrange(1, 256)
    return f"valid request, bytes {positions} flipped", [bytes(part)]


# ---- a live processor under fire ----------------------------------------------------------------
class FeedStalled(RuntimeError):
    """A processor fed by :class:`LiveFeed` lost a thread or made no progress in time."""


class LiveFeed:
    """A PUSH socket (given) and a REQ socket (made here, connected to the processor's pixel
    service at ``serve_endpoint``) in front of a live processor whose ``threads`` it watches:
    every wait ends as soon as one of them died, or after ``timeout_s`` without what it waits
    for, with :class:`FeedStalled`, so that a broken processor fails a test or a benchmark
    instead of hanging it. Used from one thread; :meth:`close` closes the REQ socket."""

    def __init__(self, serve_endpoint: str, push: zmq.Socket,
                 threads: list[threading.Thread], timeout_s: float) -> None:
        self.push, self.threads, self.timeout_s = push, threads, timeout_s
        self.req = zmq.Context.instance().socket(zmq.REQ)
        self.req.setsockopt(zmq.LINGER, 0)
        self.req.connect(serve_endpoint)

    def dead(self) -> list[str]:
        """Names of the watched threads that are no longer alive."""
        return [t.name for t in self.threads if not t.is_alive()]

    def wait(self, ready: Callable[[], bool], what: str) -> None:
        """Until ``ready()`` (which should block a little, as a poll does); FeedStalled when a
        thread died or ``timeout_s`` passed first."""
        deadline = time.monotonic() + self.timeout_s
        while not ready():
            if self.dead():
                raise FeedStalled(f"threads died while waiting for {what}: {self.dead()}")
            if time.monotonic() > deadline:
                raise FeedStalled(f"no {what} in {self.timeout_s} s")

    def send(self, parts) -> None:
        """Send one message (bytes, or its parts) once the processor has room for it."""
        parts = [parts] if isinstance(parts, bytes) else list(parts)
        self.wait(lambda: self.push.poll(50, zmq.POLLOUT), "room in the processor's queue")
        self.push.send_multipart(parts)

    def ask(self, parts: list[bytes]) -> list[bytes]:
        """Send a pixel request and return the reply."""
        self.req.send_multipart(parts)
        self.wait(lambda: self.req.poll(50), "reply to a pixel request")
        return self.req.recv_multipart()

    def close(self) -> None:
        self.req.close()


def answered_well(reply: list[bytes]) -> bool:
    """Whether ``reply`` is a pixel reply or an error reply (``refused``), not garbage."""
    try:
        decode_pixel_reply(reply)
    except BadMessageError as exc:
        return exc.reason == "refused"
    return True
