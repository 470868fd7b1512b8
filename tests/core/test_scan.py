"""ScanDescription: which frame is which (rocking angle, map pixel), positions, description."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from sxdm_stream.core.scan import ScanDescription
from sxdm_stream.errors import BadFrameError, ConfigError

PROPERTY = settings(derandomize=True, deadline=None, max_examples=60, database=None)


def make_scan(shape=(3, 4), n_angles=2, frames_per_point=1, snake=False, extents_um=None):
    if extents_um is None:
        extents_um = ((10.0, 11.0), (-2.0, 2.0))
    return ScanDescription(
        shape=shape, extents_um=extents_um, motors=("piy", "pix"), rocking_axis="eta",
        rocking_angles=tuple(17.0 + 0.1 * np.arange(n_angles)),
        fixed_angles={"phi": 0.5, "nu": 0.0, "delta": 34.0},
        frames_per_point=frames_per_point, snake=snake, scan_id="sample_3_0042",
    )


def documented_frame_index(scan, angle, row, col, repeat):
    """The acquisition order of the module docstring, with snake rows run backwards."""
    rows, cols = scan.shape
    col_acquired = cols - 1 - col if scan.snake and row % 2 == 1 else col
    return ((angle * rows + row) * cols + col_acquired) * scan.frames_per_point + repeat


# ---- locate -----------------------------------------------------------------------------------
def test_locate_plain_raster():
    scan = make_scan(shape=(3, 4), n_angles=2)
    assert scan.n_frames == 24
    # columns (fast motor) first, then rows, then rocking angles
    assert [scan.locate(f) for f in range(6)] == [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (0, 5)]
    assert scan.locate(11) == (0, 11)
    assert scan.locate(12) == (1, 0)
    assert scan.locate(23) == (1, 11)


def test_locate_snake_runs_odd_rows_backwards():
    scan = make_scan(shape=(3, 4), n_angles=2, snake=True)
    assert [scan.locate(f)[1] for f in range(12)] == [0, 1, 2, 3, 7, 6, 5, 4, 8, 9, 10, 11]
    # every rocking angle starts again at the first row
    assert [scan.locate(f)[1] for f in range(12, 24)] == [0, 1, 2, 3, 7, 6, 5, 4, 8, 9, 10, 11]
    assert {scan.locate(f)[0] for f in range(12, 24)} == {1}


def test_locate_snake_moves_to_a_neighbour_at_every_frame():
    scan = make_scan(shape=(5, 6), n_angles=1, snake=True)
    cells = [divmod(scan.locate(f)[1], 6) for f in range(scan.n_frames)]
    steps = [abs(r1 - r0) + abs(c1 - c0) for (r0, c0), (r1, c1) in zip(cells, cells[1:])]
    assert steps == [1] * (scan.n_frames - 1)


def test_locate_repeated_exposures():
    scan = make_scan(shape=(2, 3), n_angles=2, frames_per_point=3, snake=True)
    assert scan.n_frames == 36
    assert [scan.locate(f) for f in range(9)] == [(0, 0)] * 3 + [(0, 1)] * 3 + [(0, 2)] * 3
    assert [scan.locate(f) for f in range(9, 12)] == [(0, 5)] * 3  # row 1 backwards
    assert scan.locate(18) == (1, 0)


@PROPERTY
@given(rows=st.integers(1, 6), cols=st.integers(1, 6), n_angles=st.integers(1, 4),
       frames_per_point=st.integers(1, 3), snake=st.booleans())
def test_locate_covers_every_pair_frames_per_point_times(rows, cols, n_angles, frames_per_point,
                                                         snake):
    scan = make_scan(shape=(rows, cols), n_angles=n_angles, frames_per_point=frames_per_point,
                     snake=snake)
    assert scan.n_frames == n_angles * rows * cols * frames_per_point
    located = [scan.locate(f) for f in range(scan.n_frames)]
    counts = Counter(located)
    assert set(counts) == {(a, p) for a in range(n_angles) for p in range(rows * cols)}
    assert set(counts.values()) == {frames_per_point}
    for angle in range(n_angles):
        for row in range(rows):
            for col in range(cols):
                for repeat in range(frames_per_point):
                    f = documented_frame_index(scan, angle, row, col, repeat)
                    assert located[f] == (angle, row * cols + col)


@pytest.mark.parametrize("index", [-1, 24, 25, 10**9])
def test_locate_out_of_range_is_a_bad_frame(index):
    scan = make_scan(shape=(3, 4), n_angles=2)
    message = f"frame index {index} is outside the scan's 24 frames"
    with pytest.raises(BadFrameError, match=message) as info:
        scan.locate(index)
    assert info.value.reason == "index_out_of_range"


def test_locate_shows_an_index_too_long_to_print_by_its_size():
    with pytest.raises(BadFrameError, match="frame index <int of 16610 bits> is outside"):
        make_scan(shape=(3, 4), n_angles=2).locate(10**5000)


def test_angles_of_a_rocking_step():
    scan = make_scan(n_angles=3)
    assert scan.angles(2) == {"phi": 0.5, "nu": 0.0, "delta": 34.0, "eta": pytest.approx(17.2)}
    assert scan.n_angles == 3 and scan.n_points == 12


# ---- pixel_of_position -----------------------------------------------------------------------
def test_pixel_of_position_nominal_positions():
    scan = make_scan(shape=(3, 5))  # rows 10.0 .. 11.0 (0.5 um), cols -2 .. 2 (1 um)
    rows, cols = scan.axis_um(0), scan.axis_um(1)
    np.testing.assert_allclose(rows, [10.0, 10.5, 11.0])
    np.testing.assert_allclose(cols, [-2.0, -1.0, 0.0, 1.0, 2.0])
    for r, row_um in enumerate(rows):
        for c, col_um in enumerate(cols):
            assert scan.pixel_of_position(row_um, col_um) == r * 5 + c


@PROPERTY
@given(rows=st.integers(2, 7), cols=st.integers(2, 7), data=st.data(),
       row_extent=st.sampled_from([(0.0, 3.0), (5.0, 1.0), (-0.2, 0.2)]),
       col_extent=st.sampled_from([(0.0, 1.3), (2.0, -2.0), (100.0, 104.5)]))
def test_pixel_of_position_is_the_nearest_pixel(rows, cols, data, row_extent, col_extent):
    scan = make_scan(shape=(rows, cols), extents_um=(row_extent, col_extent))
    r = data.draw(st.integers(0, rows - 1))
    c = data.draw(st.integers(0, cols - 1))
    fr = data.draw(st.floats(-0.45, 0.45))
    fc = data.draw(st.floats(-0.45, 0.45))
    row_step = (row_extent[1] - row_extent[0]) / (rows - 1)
    col_step = (col_extent[1] - col_extent[0]) / (cols - 1)
    row_um = scan.axis_um(0)[r] + fr * row_step
    col_um = scan.axis_um(1)[c] + fc * col_step
    assert scan.pixel_of_position(row_um, col_um) == r * cols + c


@pytest.mark.parametrize("row_um,col_um", [
    (10.0 - 0.3, 0.0),        # before the first row by more than half a step
    (11.0 + 0.3, 0.0),        # beyond the last row
    (10.5, -2.0 - 0.6),       # before the first column
    (10.5, 2.0 + 0.6),        # beyond the last column
    (10.5, 50.0),
    (-1e6, 1e6),
])
def test_pixel_of_position_outside_the_map_is_none(row_um, col_um):
    assert make_scan(shape=(3, 5)).pixel_of_position(row_um, col_um) is None


def test_pixel_of_position_within_half_a_step_of_the_edge_is_the_edge_pixel():
    scan = make_scan(shape=(3, 5))
    assert scan.pixel_of_position(11.0 + 0.2, 2.0 + 0.4) == 14
    assert scan.pixel_of_position(10.0 - 0.2, -2.0 - 0.4) == 0


@pytest.mark.parametrize("row_um,col_um", [(np.nan, 0.0), (10.5, np.nan), (np.nan, np.nan),
                                           (np.inf, 0.0), (10.5, -np.inf)])
def test_pixel_of_position_not_finite_is_none(row_um, col_um):
    assert make_scan(shape=(3, 5)).pixel_of_position(row_um, col_um) is None


def test_pixel_of_position_single_row_map():
    scan = make_scan(shape=(1, 5), extents_um=((3.0, 3.0), (0.0, 4.0)))
    assert scan.pixel_of_position(3.0, 2.9) == 3
    assert scan.pixel_of_position(3.0, 5.0) is None


# ---- description --------------------------------------------------------------------------------
@pytest.mark.parametrize("snake,frames_per_point", [(False, 1), (True, 3)])
def test_describe_round_trip_through_json(snake, frames_per_point):
    scan = make_scan(shape=(3, 4), n_angles=3, frames_per_point=frames_per_point, snake=snake)
    text = json.dumps(scan.describe())
    back = ScanDescription.from_description(json.loads(text))
    assert back == scan
    assert back.describe() == scan.describe()
    assert back.snake is snake and back.frames_per_point == frames_per_point
    assert [back.locate(f) for f in range(back.n_frames)] == [
        scan.locate(f) for f in range(scan.n_frames)]


def test_from_description_fills_optional_keys_with_defaults():
    d = {"shape": [2, 3], "extents_um": [[0, 1], [0, 2]], "rocking_angles": [1, 2],
         "fixed_angles": {"phi": 0, "nu": 0, "delta": 30}}
    scan = ScanDescription.from_description(d)
    assert (scan.motors, scan.rocking_axis, scan.frames_per_point, scan.snake, scan.scan_id) == (
        ("piy", "pix"), "eta", 1, False, "")
    assert scan.shape == (2, 3) and scan.rocking_angles == (1.0, 2.0)


@pytest.mark.parametrize("key", ["shape", "extents_um", "rocking_angles"])
def test_from_description_missing_key_is_named(key):
    d = make_scan().describe()
    del d[key]
    with pytest.raises(ConfigError, match=f"scan description lacks the key '{key}'"):
        ScanDescription.from_description(d)


@pytest.mark.parametrize("key,value,message", [
    ("shape", ["three", 4], "malformed"),
    ("rocking_angles", 5, "malformed"),
    ("frames_per_point", 0, "frames_per_point must be at least 1"),
    ("rocking_angles", [], "at least one rocking angle"),
    ("shape", [0, 4], "scan shape must be positive"),
])
def test_from_description_bad_value_is_a_config_error(key, value, message):
    d = make_scan().describe()
    d[key] = value
    with pytest.raises(ConfigError, match=message):
        ScanDescription.from_description(d)


def test_rocking_axis_cannot_also_be_fixed():
    with pytest.raises(ConfigError, match="'eta' is the rocking axis and cannot be fixed too"):
        ScanDescription(shape=(2, 2), rocking_angles=(1.0,), fixed_angles={"eta": 1.0})
