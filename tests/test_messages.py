"""The messages between stages: ids are unsigned 64-bit integers whichever source made them,
and what a message carries from the network reads safely."""

import math

import numpy as np
import pytest

from sxdm_stream.errors import BadMessageError, format_untrusted
from sxdm_stream.messages import (U64_MAX, ImageFrame, PlanEnd, PlanStart, PointPositions,
                                  SeriesEnd, SeriesStart, is_u64)

FRAME = np.zeros((2, 3), np.uint32)
BAD_IDS = [-1, U64_MAX + 1, 10**5000, True, 1.0, "1", None]
MESSAGES = {
    "series start": lambda id_: SeriesStart(id_),
    "series end": lambda id_: SeriesEnd(id_, "u"),
    "image series_id": lambda id_: ImageFrame(id_, 0, FRAME),
    "image image_id": lambda id_: ImageFrame(1, id_, FRAME),
    "positions frame_index": lambda id_: PointPositions("c", id_, {"pix": 1.0}),
}


@pytest.mark.parametrize("make", MESSAGES.values(), ids=MESSAGES.keys())
@pytest.mark.parametrize("bad", BAD_IDS, ids=format_untrusted)
def test_an_id_outside_u64_is_refused_when_the_message_is_made(make, bad):
    with pytest.raises(BadMessageError, match="not an unsigned 64-bit integer") as info:
        make(bad)
    assert info.value.reason == "malformed"
    assert len(str(info.value)) < 200                # 10**5000 shown by its size, not digits


@pytest.mark.parametrize("make", MESSAGES.values(), ids=MESSAGES.keys())
def test_every_u64_id_is_accepted_numpy_ones_too(make):
    for good in (0, U64_MAX, np.uint64(U64_MAX), np.int64(7)):
        make(good)


def test_plan_messages_without_ids_are_made_as_before():
    assert PlanStart("c", "uid", {}).correlation_id == "c"
    assert PlanEnd("c").exit_status is None


def test_is_u64():
    assert [is_u64(v) for v in (0, U64_MAX, U64_MAX + 1, -1, False, 2.0)] == \
        [True, True, False, False, False, False]


def test_a_monitor_beyond_any_float_reads_as_nan():
    for value in (10**400, -10**5000):
        image = ImageFrame(1, 0, FRAME, user_data={"sxdm": {"monitor": value}})
        assert math.isnan(image.monitor)
