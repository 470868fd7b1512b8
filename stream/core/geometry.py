"""Diffractometer geometry: the scattering vector q of every detector pixel.

Conventions (the ID01 set used by XSOCS, see DESIGN.md): lab frame x along the beam
(downstream), z up, y = z x x. Each circle is an axis with a sense, written the way
xrayutilities writes it: ``"y-"`` is a left-handed rotation about y. Sample circles and
detector circles are listed outer to inner. For detector pixel (i, j)::

    r_det = D * x + (i - cen_row) * p_row * e_row + (j - cen_col) * p_col * e_col
    r_lab = R_det(angles) . r_det
    q_lab = k * r_lab / |r_lab| - k * x
    q     = R_sample(angles)^T . q_lab          (sample frame, 1/Angstrom)

with e_row = -z and e_col = +y by default (rows run down, columns towards +y). This equals
``xrayutilities.QConversion(["y-", "z-"], ["z-", "y-"], [1, 0, 0])`` with
``init_area("z-", "y+", ...)`` (tests check it to 1e-9 1/Angstrom).

The hot path never evaluates trigonometry per pixel: :meth:`Geometry.kf_lab` is the outgoing
wave vector of every ROI pixel for one detector position (cached), and the sample rotation is a
3x3 matrix applied inside the accumulation kernel.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from sxdm_stream.errors import ConfigError

#: h * c in eV * Angstrom (CODATA 2018), for wavelength = HC / energy.
HC_EV_ANGSTROM = 12398.419843320026

_AXIS_VECTORS = {"x": (1.0, 0.0, 0.0), "y": (0.0, 1.0, 0.0), "z": (0.0, 0.0, 1.0)}

# Plausible values for hard X-ray diffraction: beyond them a number is almost surely in
# another unit (keV given as eV gave d = 4734 A instead of 4.73 A), so it is refused with a
# hint rather than turned into a wrong map.
ENERGY_RANGE_EV = (1.0e3, 1.0e5)
MAX_PIXEL_SIZE_M = 1.0e-3
DISTANCE_RANGE_M = (0.01, 20.0)


def _unit_hint(value: float, lo: float, hi: float, factors: tuple[tuple[float, str], ...],
               unit: str) -> str:
    """The hint ": did you mean ...?" of the unit conversions of ``value`` into [lo, hi]."""
    guesses = [f"{value * f:.6g} {unit} ({value:g} {given})" for f, given in factors
               if lo <= value * f <= hi]
    return f": did you mean {' or '.join(guesses)}?" if guesses else ""


def check_energy_ev(value: float, name: str = "energy_ev") -> float:
    """``value`` if it is an X-ray energy of 1-100 keV in eV; ConfigError with a hint if not."""
    lo, hi = ENERGY_RANGE_EV
    if not lo <= value <= hi:                     # NaN fails too
        raise ConfigError(f"{name} {value:g} eV is outside {lo:g}-{hi:g} eV (1-100 keV)"
                          + _unit_hint(value, lo, hi, ((1e3, "keV"), (1e-3, "meV")), "eV"))
    return value


def check_pixel_size_m(value: float, name: str = "pixel_size_m") -> float:
    """``value`` if it is a detector pixel size in metres of at most 1 mm; ConfigError if not."""
    if not 0.0 < value <= MAX_PIXEL_SIZE_M:
        raise ConfigError(f"{name} {value:g} m is not a pixel size between 0 and "
                          f"{MAX_PIXEL_SIZE_M:g} m (1 mm)"
                          + _unit_hint(value, 1e-6, MAX_PIXEL_SIZE_M,
                                       ((1e-3, "mm"), (1e-6, "um")), "m"))
    return value


def check_distance_m(value: float, name: str = "distance_m") -> float:
    """``value`` if it is a sample-detector distance of 0.01-20 m; ConfigError if not."""
    lo, hi = DISTANCE_RANGE_M
    if not lo <= value <= hi:
        raise ConfigError(f"{name} {value:g} m is outside {lo:g}-{hi:g} m"
                          + _unit_hint(value, lo, hi, ((1e-3, "mm"), (1e-2, "cm")), "m"))
    return value


def wavelength_angstrom(energy_ev: float) -> float:
    """Wavelength in Angstrom of photons of ``energy_ev`` electron-volts."""
    return HC_EV_ANGSTROM / energy_ev


def axis_vector(direction: str) -> np.ndarray:
    """Unit vector of an axis written as ``"x+"``, ``"y-"``, ``"z+"``..., sense included."""
    if len(direction) != 2 or direction[0] not in _AXIS_VECTORS or direction[1] not in "+-":
        raise ConfigError(
            f"axis direction {direction!r} is not one of x+, x-, y+, y-, z+, z-"
        )
    sign = 1.0 if direction[1] == "+" else -1.0
    return sign * np.array(_AXIS_VECTORS[direction[0]])


def rotation_matrix(direction: str, angle_deg: float) -> np.ndarray:
    """Rotation by ``angle_deg`` about the axis ``direction`` ("y-": left-handed about y)."""
    u = axis_vector(direction)
    a = np.deg2rad(angle_deg)
    c, s = np.cos(a), np.sin(a)
    ux = np.array([[0.0, -u[2], u[1]], [u[2], 0.0, -u[0]], [-u[1], u[0], 0.0]])
    return c * np.eye(3) + s * ux + (1.0 - c) * np.outer(u, u)


@dataclass(frozen=True)
class Axis:
    """One diffractometer circle: its motor name, rotation axis with sense, and offset.

    The angle used is ``motor position + offset_deg``.
    """

    name: str
    direction: str
    offset_deg: float = 0.0

    def __post_init__(self) -> None:
        axis_vector(self.direction)  # validates


@dataclass(frozen=True)
class Diffractometer:
    """Sample and detector circles, each listed outer to inner. Defaults: ID01."""

    sample_axes: tuple[Axis, ...] = (Axis("eta", "y-"), Axis("phi", "z-"))
    detector_axes: tuple[Axis, ...] = (Axis("nu", "z-"), Axis("delta", "y-"))

    @property
    def axis_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.sample_axes + self.detector_axes)

    def sample_rotation(self, angles: Mapping[str, float]) -> np.ndarray:
        """R_sample: the rotation that takes sample-frame vectors to the lab frame."""
        return _chain(self.sample_axes, angles)

    def detector_rotation(self, angles: Mapping[str, float]) -> np.ndarray:
        """R_det: the rotation that takes detector-frame vectors to the lab frame."""
        return _chain(self.detector_axes, angles)


def _chain(axes: tuple[Axis, ...], angles: Mapping[str, float]) -> np.ndarray:
    r = np.eye(3)
    for axis in axes:  # outer to inner: R = R_outer . ... . R_inner
        if axis.name not in angles:
            raise ConfigError(f"no angle given for diffractometer axis {axis.name!r}")
        r = r @ rotation_matrix(axis.direction, float(angles[axis.name]) + axis.offset_deg)
    return r


@dataclass(frozen=True, eq=False)
class Detector:
    """A flat 2D pixel detector, perpendicular to the beam at zero detector angles.

    Parameters
    ----------
    shape : (rows, cols) of the full image.
    pixel_size_m : edge of a pixel in metres (square pixels).
    distance_m : sample-to-detector distance in metres.
    beam_center : (row, col), the pixel hit by the direct beam at zero detector angles.
    roi : (row_start, row_stop, col_start, col_stop) processed; None = whole image.
    mask : boolean (rows, cols), True = pixel excluded (gaps, dead, hot); None = none.
    row_direction, col_direction : lab directions of increasing row / column index.
    """

    shape: tuple[int, int]
    pixel_size_m: float
    distance_m: float
    beam_center: tuple[float, float]
    roi: tuple[int, int, int, int] | None = None
    mask: np.ndarray | None = field(default=None, repr=False)
    row_direction: str = "z-"
    col_direction: str = "y+"
    name: str = "detector"

    def __post_init__(self) -> None:
        rows, cols = self.shape
        axis_vector(self.row_direction)  # validates
        axis_vector(self.col_direction)
        if self.pixel_size_m <= 0 or self.distance_m <= 0:
            raise ConfigError("detector pixel_size_m and distance_m must be positive")
        check_pixel_size_m(self.pixel_size_m, "detector pixel_size_m")
        check_distance_m(self.distance_m, "detector distance_m")
        if self.roi is not None:
            r0, r1, c0, c1 = self.roi
            if not (0 <= r0 < r1 <= rows and 0 <= c0 < c1 <= cols):
                raise ConfigError(
                    f"detector roi {self.roi} is not inside the image of shape {self.shape}"
                )
        if self.mask is not None and np.shape(self.mask) != tuple(self.shape):
            raise ConfigError(
                f"detector mask has shape {np.shape(self.mask)}, the image is {self.shape}"
            )

    @property
    def roi_bounds(self) -> tuple[int, int, int, int]:
        return self.roi if self.roi is not None else (0, self.shape[0], 0, self.shape[1])

    @property
    def roi_shape(self) -> tuple[int, int]:
        r0, r1, c0, c1 = self.roi_bounds
        return (r1 - r0, c1 - c0)

    def roi_mask(self) -> np.ndarray:
        """Boolean mask of the ROI, True = excluded."""
        r0, r1, c0, c1 = self.roi_bounds
        if self.mask is None:
            return np.zeros((r1 - r0, c1 - c0), dtype=bool)
        return np.asarray(self.mask, dtype=bool)[r0:r1, c0:c1]

    def pixel_vectors(self) -> np.ndarray:
        """Vectors sample -> pixel centre in the detector frame (metres), shape (h, w, 3)."""
        r0, r1, c0, c1 = self.roi_bounds
        rows = np.arange(r0, r1, dtype=np.float64) - self.beam_center[0]
        cols = np.arange(c0, c1, dtype=np.float64) - self.beam_center[1]
        e_row = axis_vector(self.row_direction) * self.pixel_size_m
        e_col = axis_vector(self.col_direction) * self.pixel_size_m
        return (
            np.array([self.distance_m, 0.0, 0.0])
            + rows[:, None, None] * e_row
            + cols[None, :, None] * e_col
        )


class Geometry:
    """Diffractometer + detector + beam energy: q of every ROI pixel for given angles.

    ``q(angles)`` is cached per distinct angle set (a bounded LRU), and so is
    ``kf_lab(angles)`` per distinct detector position.
    """

    def __init__(
        self,
        detector: Detector,
        energy_ev: float,
        diffractometer: Diffractometer | None = None,
        cache_size: int = 128,
    ) -> None:
        if not energy_ev > 0:
            raise ConfigError(f"energy_ev must be positive, got {energy_ev}")
        check_energy_ev(float(energy_ev))
        self.detector = detector
        self.energy_ev = float(energy_ev)
        self.diffractometer = diffractometer or Diffractometer()
        self._cache_size = cache_size
        self._q_cache: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._kf_cache: OrderedDict[tuple, np.ndarray] = OrderedDict()

    @property
    def wavelength_a(self) -> float:
        return wavelength_angstrom(self.energy_ev)

    @property
    def k(self) -> float:
        """|k| = 2 pi / lambda in 1/Angstrom."""
        return 2.0 * np.pi / self.wavelength_a

    @property
    def ki(self) -> np.ndarray:
        """Incident wave vector in the lab frame (1/Angstrom)."""
        return np.array([self.k, 0.0, 0.0])

    def _key(self, axes: tuple[Axis, ...], angles: Mapping[str, float]) -> tuple:
        try:
            return tuple(float(angles[a.name]) for a in axes)
        except KeyError as exc:
            raise ConfigError(f"no angle given for diffractometer axis {exc.args[0]!r}") from None

    def kf_lab(self, angles: Mapping[str, float]) -> np.ndarray:
        """Outgoing wave vector k_f (lab frame, 1/Angstrom) of every ROI pixel, (h, w, 3).

        Depends only on the detector circles; read-only, cached.
        """
        key = self._key(self.diffractometer.detector_axes, angles)
        kf = _lru_get(self._kf_cache, key)
        if kf is None:
            r = self.detector.pixel_vectors() @ self.diffractometer.detector_rotation(angles).T
            kf = self.k * r / np.linalg.norm(r, axis=-1, keepdims=True)
            kf.setflags(write=False)
            _lru_put(self._kf_cache, key, kf, self._cache_size)
        return kf

    def sample_matrix(self, angles: Mapping[str, float]) -> np.ndarray:
        """R_sample^T: takes lab-frame vectors to the sample frame."""
        return self.diffractometer.sample_rotation(angles).T

    def q(self, angles: Mapping[str, float]) -> np.ndarray:
        """q in the sample frame (1/Angstrom) of every ROI pixel, shape (h, w, 3); cached."""
        key = self._key(self.diffractometer.sample_axes + self.diffractometer.detector_axes, angles)
        q = _lru_get(self._q_cache, key)
        if q is None:
            q = (self.kf_lab(angles) - self.ki) @ self.sample_matrix(angles).T
            q.setflags(write=False)
            _lru_put(self._q_cache, key, q, self._cache_size)
        return q

    def describe(self) -> dict:
        """A JSON-able description (stored beside results, sent with scans)."""
        d = self.detector
        return {
            "energy_ev": self.energy_ev,
            "wavelength_a": self.wavelength_a,
            "sample_axes": [[a.name, a.direction, a.offset_deg] for a in self.diffractometer.sample_axes],
            "detector_axes": [[a.name, a.direction, a.offset_deg] for a in self.diffractometer.detector_axes],
            "detector": {
                "name": d.name,
                "shape": list(d.shape),
                "pixel_size_m": d.pixel_size_m,
                "distance_m": d.distance_m,
                "beam_center": list(d.beam_center),
                "roi": list(d.roi_bounds),
                "row_direction": d.row_direction,
                "col_direction": d.col_direction,
                "masked_pixels": int(np.count_nonzero(d.mask)) if d.mask is not None else 0,
            },
        }


def geometry_from_description(d: Mapping, mask: np.ndarray | None = None) -> Geometry:
    """Inverse of :meth:`Geometry.describe`; the pixel mask travels separately (it is big).

    Raises ConfigError naming a missing or malformed key.
    """
    try:
        det = d["detector"]
        detector = Detector(
            shape=tuple(int(v) for v in det["shape"]),
            pixel_size_m=float(det["pixel_size_m"]),
            distance_m=float(det["distance_m"]),
            beam_center=tuple(float(v) for v in det["beam_center"]),
            roi=tuple(int(v) for v in det["roi"]) if det.get("roi") is not None else None,
            mask=mask,
            row_direction=str(det.get("row_direction", "z-")),
            col_direction=str(det.get("col_direction", "y+")),
            name=str(det.get("name", "detector")),
        )
        diffractometer = Diffractometer(
            sample_axes=tuple(Axis(str(n), str(a), float(o)) for n, a, o in d["sample_axes"]),
            detector_axes=tuple(Axis(str(n), str(a), float(o)) for n, a, o in d["detector_axes"]),
        )
        return Geometry(detector, float(d["energy_ev"]), diffractometer)
    except KeyError as exc:
        raise ConfigError(f"geometry description lacks the key {exc.args[0]!r}") from None
    except ConfigError as exc:                    # a value out of range: its own message
        raise ConfigError(f"geometry description: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"geometry description is malformed: {exc}") from None


def _lru_get(cache: OrderedDict, key: tuple):
    value = cache.get(key)
    if value is not None:
        cache.move_to_end(key)
    return value


def _lru_put(cache: OrderedDict, key: tuple, value, size: int) -> None:
    cache[key] = value
    while len(cache) > size:
        cache.popitem(last=False)
