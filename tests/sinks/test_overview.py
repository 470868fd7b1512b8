"""The PNG overview: a real, non-blank picture, also for a scan that has no data yet."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib import image as mpimg

from sxdm_stream.core.accumulate import AccumulationSettings, Accumulator, ScanSetup
from sxdm_stream.core.geometry import Detector, Geometry
from sxdm_stream.core.maps import derive_maps
from sxdm_stream.core.scan import ScanDescription
from sxdm_stream.sinks.overview import colour_wheel, map_extent, write_overview_png

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def setup() -> ScanSetup:
    det = Detector(shape=(64, 64), pixel_size_m=55e-6, distance_m=0.6, beam_center=(32, 32))
    geo = Geometry(det, 8330.0)
    scan = ScanDescription(
        shape=(4, 5), extents_um=((0, 0.3), (0, 0.4)),
        rocking_angles=tuple(9.0 + 0.02 * np.arange(7)),
        fixed_angles={"phi": 0.0, "nu": 0.0, "delta": 18.0},
    )
    return ScanSetup(geo, scan, AccumulationSettings(histogram_bins=(8, 8, 8)))


@pytest.fixture(scope="module")
def maps(setup):
    acc = Accumulator(setup)
    rng = np.random.default_rng(0)
    for a in range(setup.scan.n_angles):
        for p in range(setup.scan.n_points):
            acc.add_frame(rng.poisson(0.5 + p, size=(64, 64)).astype(np.uint32), a, p)
    return derive_maps(acc.moments, setup.q_ref, setup.scan.shape)


def read_png(path) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG_MAGIC
    return mpimg.imread(path)


def test_overview_is_a_real_non_blank_png(tmp_path, setup, maps):
    path = tmp_path / "overview.png"
    write_overview_png(path, maps, setup.scan, title="scan test-42")
    assert [p.name for p in tmp_path.iterdir()] == ["overview.png"]  # no .tmp left
    assert 20_000 < path.stat().st_size < 5_000_000
    pixels = read_png(path)
    height, width = pixels.shape[:2]
    assert 600 <= height <= 2000 and 1200 <= width <= 3000
    rgb = pixels[..., :3]
    assert rgb.std() > 0.05  # not blank
    # colour, not just black text on white: the maps and the colour wheel are saturated
    assert (rgb.max(axis=-1) - rgb.min(axis=-1)).max() > 0.5


def test_overview_of_an_empty_scan(tmp_path, setup):
    empty = derive_maps(Accumulator(setup).moments, setup.q_ref, setup.scan.shape)
    assert not empty.mask.any()
    path = tmp_path / "empty.png"
    write_overview_png(path, empty, setup.scan)  # warnings are errors: NaN maps must not warn
    assert read_png(path)[..., :3].std() > 0


def test_map_extent_puts_pixel_centres_on_motor_positions(setup):
    left, right, bottom, top = map_extent(setup.scan)
    assert (left, right) == pytest.approx((-0.05, 0.45))
    assert (bottom, top) == pytest.approx((-0.05, 0.35))
    single = ScanDescription(shape=(1, 3), extents_um=((2.0, 2.0), (0.0, 1.0)),
                             rocking_angles=(9.0,))
    assert map_extent(single) == pytest.approx((-0.25, 1.25, 1.5, 2.5))


def test_colour_wheel_hue_follows_azimuth():
    wheel = colour_wheel(101)
    assert wheel.shape == (101, 101, 4)
    centre = wheel[50, 50]
    np.testing.assert_allclose(centre[:3], 1.0)  # zero tilt: white
    np.testing.assert_allclose(wheel[50, 100, :3], [1.0, 0.0, 0.0])  # along e1: hue 0, red
    assert wheel[0, 0, 3] == 0.0  # outside the disc: transparent
