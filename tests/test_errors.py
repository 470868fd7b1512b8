"""format_untrusted: a value from outside shown in an error message, safely and briefly."""

import numpy as np
import pytest
from cbor2 import CBORTag

from sxdm_stream.errors import format_untrusted


def nested(depth, make=lambda inner: [inner]):
    value = 0
    for _ in range(depth):
        value = make(value)
    return value


@pytest.mark.parametrize("value, shown", [
    (10**5000, "<int of 16610 bits>"),
    (-10**5000, "<-int of 16610 bits>"),
    (2**64 - 1, "18446744073709551615"),
    ([2**70, 0], "[<int of 71 bits>, 0]"),
    ({"point": 10**5000}, "{'point': <int of 16610 bits>}"),
    (np.zeros((3, 4), np.uint32), "<ndarray uint32 (3, 4)>"),
    (CBORTag(40, [[516, 516], CBORTag(70, b"\x00")]),
     "CBORTag(40, [[516, 516], CBORTag(70, b'\\x00')])"),
    ("pixel", "'pixel'"),
    (True, "True"),
    (None, "None"),
], ids=lambda v: format_untrusted(v, 30))
def test_values_are_shown_briefly(value, shown):
    assert format_untrusted(value, 80) == shown


@pytest.mark.parametrize("value", [
    "x" * 10**6, b"\xff" * 10**6, list(range(10**5)), nested(10**5),
    nested(10**5, lambda inner: {"a": inner}), nested(10**4, lambda inner: CBORTag(1, inner)),
    [10**5000] * 1000,
], ids=["1 MB text", "1 MB bytes", "10**5 items", "10**5 nested lists", "10**5 nested maps",
        "10**4 nested tags", "big ints"])
def test_hostile_values_are_cut_to_the_width(value):
    text = format_untrusted(value)
    assert isinstance(text, str) and len(text) <= 60


def test_a_failing_repr_shows_the_type():
    class Hostile:
        def __repr__(self):
            raise RuntimeError("no")

    assert format_untrusted(Hostile()) == "<Hostile>"
