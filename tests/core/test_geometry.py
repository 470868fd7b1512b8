"""q of every detector pixel against xrayutilities, the reference implementation."""

import numpy as np
import pytest
import xrayutilities as xu

from sxdm_stream.core.geometry import Axis, Detector, Diffractometer, Geometry, rotation_matrix
from sxdm_stream.errors import ConfigError

SHAPE = (516, 516)
PIXEL = 55e-6
DISTANCE = 0.83
CENTER = (250.3, 260.7)


def xu_q(sample_axes, detector_axes, angles, energy, det_dirs=("z-", "y+"), center=CENTER):
    qconv = xu.experiment.QConversion(sample_axes, detector_axes, [1, 0, 0])
    qconv.init_area(det_dirs[0], det_dirs[1], cch1=center[0], cch2=center[1], Nch1=SHAPE[0],
                    Nch2=SHAPE[1], distance=DISTANCE, pwidth1=PIXEL, pwidth2=PIXEL)
    qx, qy, qz = qconv.area(*angles, en=energy)
    return np.stack([qx, qy, qz], axis=-1)


@pytest.mark.parametrize("eta, phi, nu, delta", [
    (9.046, 0.0, 0.0, 18.09),        # ID01 symmetric LiNiO2 003
    (9.1, 3.0, 2.5, 18.3),           # non-zero phi and nu
    (14.2, -7.5, -4.0, 30.5),
])
def test_q_matches_xrayutilities_on_id01_geometry(eta, phi, nu, delta):
    det = Detector(shape=SHAPE, pixel_size_m=PIXEL, distance_m=DISTANCE, beam_center=CENTER)
    geo = Geometry(det, 8330.0)
    ours = geo.q({"eta": eta, "phi": phi, "nu": nu, "delta": delta})
    ref = xu_q(["y-", "z-"], ["z-", "y-"], (eta, phi, nu, delta), 8330.0)
    assert np.max(np.abs(ours - ref)) < 1e-9


def test_q_matches_xrayutilities_on_another_diffractometer_with_offsets():
    diff = Diffractometer(
        sample_axes=(Axis("mu", "z+"), Axis("th", "x+", offset_deg=0.3), Axis("chi", "y+")),
        detector_axes=(Axis("gam", "z+"), Axis("tth", "y-", offset_deg=-0.2)),
    )
    det = Detector(shape=SHAPE, pixel_size_m=PIXEL, distance_m=DISTANCE, beam_center=CENTER,
                   row_direction="z-", col_direction="y-")
    geo = Geometry(det, 13000.0, diff)
    ours = geo.q({"mu": 1.0, "th": 12.0, "chi": -2.0, "gam": 3.0, "tth": 25.0})
    ref = xu_q(["z+", "x+", "y+"], ["z+", "y-"], (1.0, 12.3, -2.0, 3.0, 24.8), 13000.0,
               det_dirs=("z-", "y-"))
    assert np.max(np.abs(ours - ref)) < 1e-9


def test_roi_is_a_window_on_the_full_detector_and_cached():
    full = Geometry(Detector(SHAPE, PIXEL, DISTANCE, CENTER), 8330.0)
    roi = Geometry(Detector(SHAPE, PIXEL, DISTANCE, CENTER, roi=(100, 180, 300, 420)), 8330.0)
    angles = {"eta": 9.0, "phi": 0.5, "nu": 1.0, "delta": 18.0}
    np.testing.assert_array_equal(roi.q(angles), full.q(angles)[100:180, 300:420])
    assert roi.q(angles) is roi.q(dict(angles))          # cached per distinct angle set
    assert roi.q(dict(angles, eta=9.01)) is not roi.q(angles)
    with pytest.raises(ValueError):
        roi.q(angles)[0, 0, 0] = 1.0                      # cached arrays are read-only


def test_symmetric_reflection_lands_on_qz():
    # Sanity from DESIGN.md: eta = delta/2, nu = 0 -> centre pixel q = (0, 0, 4 pi sin(delta/2)/lambda)
    geo = Geometry(Detector(SHAPE, PIXEL, DISTANCE, (258.0, 258.0)), 8330.0)
    q = geo.q({"eta": 9.0, "phi": 0.0, "nu": 0.0, "delta": 18.0})[258, 258]
    expected = 4 * np.pi * np.sin(np.deg2rad(9.0)) / geo.wavelength_a
    np.testing.assert_allclose(q, [0.0, 0.0, expected], atol=1e-12)


def test_rotation_senses():
    # "y-" is left-handed about y: a positive angle turns x towards +z
    np.testing.assert_allclose(rotation_matrix("y-", 90.0) @ [1, 0, 0], [0, 0, 1], atol=1e-15)
    np.testing.assert_allclose(rotation_matrix("z+", 90.0) @ [1, 0, 0], [0, 1, 0], atol=1e-15)


@pytest.mark.parametrize("kwargs, message", [
    ({"roi": (0, 600, 0, 10)}, "roi"),
    ({"mask": np.zeros((4, 4), bool)}, "mask"),
    ({"row_direction": "w+"}, "axis direction"),
])
def test_bad_detector_configuration_is_refused_with_the_reason(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Geometry(Detector(SHAPE, PIXEL, DISTANCE, CENTER, **kwargs), 8330.0).q(
            {"eta": 1, "phi": 0, "nu": 0, "delta": 2})


def test_missing_angle_is_named():
    geo = Geometry(Detector(SHAPE, PIXEL, DISTANCE, CENTER), 8330.0)
    with pytest.raises(ConfigError, match="'nu'"):
        geo.q({"eta": 9.0, "phi": 0.0, "delta": 18.0})
