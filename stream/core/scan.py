"""The scan: which frame belongs to which map pixel and rocking angle.

An SXDM scan as done at ID01 is a raster of two piezo motors repeated at each rocking angle:
the rocking angle is the outermost loop, then map rows (slow motor), then map columns (fast
motor), then ``frames_per_point`` repeated exposures. Frame index (0-based, as the detector
counts them) therefore runs::

    frame = ((angle * rows + row) * cols + col) * frames_per_point + repeat

With ``snake=True`` odd rows run their columns backwards (bluesky ``snaking=[False, True]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from sxdm_stream.errors import BadFrameError, ConfigError, format_untrusted


@dataclass(frozen=True)
class ScanDescription:
    """Shape and angles of one SXDM scan; positions in micrometres, angles in degrees.

    Parameters
    ----------
    shape : (rows, cols) of the map; rows follow ``motors[0]`` (slow), cols ``motors[1]`` (fast).
    extents_um : ((row_first, row_last), (col_first, col_last)) nominal motor positions.
    rocking_angles : the rocking-axis angle of each rocking step, in acquisition order.
    fixed_angles : every other diffractometer angle, constant during the scan.
    """

    shape: tuple[int, int] = (40, 40)
    extents_um: tuple[tuple[float, float], tuple[float, float]] = ((0.0, 3.9), (0.0, 3.9))
    motors: tuple[str, str] = ("piy", "pix")
    rocking_axis: str = "eta"
    rocking_angles: tuple[float, ...] = ()
    fixed_angles: Mapping[str, float] = field(default_factory=dict)
    frames_per_point: int = 1
    snake: bool = False
    scan_id: str = ""

    def __post_init__(self) -> None:
        rows, cols = self.shape
        if rows < 1 or cols < 1:
            raise ConfigError(f"scan shape must be positive, got {self.shape}")
        for dim, (first, last) in enumerate(self.extents_um):
            if self.shape[dim] > 1 and not abs(last - first) > 0:
                raise ConfigError(f"scan extents of map dimension {dim} ({first}, {last}) must "
                                  f"differ for {self.shape[dim]} points")
        if len(self.rocking_angles) < 1:
            raise ConfigError("scan needs at least one rocking angle")
        if self.frames_per_point < 1:
            raise ConfigError("frames_per_point must be at least 1")
        if self.rocking_axis in self.fixed_angles:
            raise ConfigError(f"{self.rocking_axis!r} is the rocking axis and cannot be fixed too")
        object.__setattr__(self, "rocking_angles", tuple(float(a) for a in self.rocking_angles))
        object.__setattr__(self, "fixed_angles", dict(self.fixed_angles))

    @property
    def n_angles(self) -> int:
        return len(self.rocking_angles)

    @property
    def n_points(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def n_frames(self) -> int:
        return self.n_angles * self.n_points * self.frames_per_point

    def angles(self, angle_index: int) -> dict[str, float]:
        """All diffractometer angles at rocking step ``angle_index``."""
        return {**self.fixed_angles, self.rocking_axis: self.rocking_angles[angle_index]}

    def locate(self, frame_index: int) -> tuple[int, int]:
        """(rocking angle index, flat map index row * cols + col) of a frame index."""
        if not 0 <= frame_index < self.n_frames:
            raise BadFrameError(
                f"frame index {format_untrusted(frame_index)} is outside the scan's "
                f"{self.n_frames} frames",
                "index_out_of_range",
            )
        rows, cols = self.shape
        point = frame_index // self.frames_per_point
        angle, rest = divmod(point, self.n_points)
        row, col = divmod(rest, cols)
        if self.snake and row % 2 == 1:
            col = cols - 1 - col
        return angle, row * cols + col

    def axis_um(self, dim: int) -> np.ndarray:
        """Nominal positions (micrometres) along map dimension 0 (rows) or 1 (cols)."""
        first, last = self.extents_um[dim]
        return np.linspace(first, last, self.shape[dim])

    def pixel_of_position(self, row_um: float, col_um: float) -> int | None:
        """Flat map index of the grid pixel nearest to measured positions, None if outside."""
        index = []
        for dim, value in enumerate((row_um, col_um)):
            if not np.isfinite(value):
                return None
            first, last = self.extents_um[dim]
            n = self.shape[dim]
            step = (last - first) / (n - 1) if n > 1 else 1.0
            i = int(np.rint((value - first) / step)) if n > 1 else 0
            if not 0 <= i < n or abs(value - (first + i * step)) > abs(step):
                return None
            index.append(i)
        return index[0] * self.shape[1] + index[1]

    def describe(self) -> dict:
        """A JSON-able description (stored beside results, sent in stream headers)."""
        return {
            "shape": list(self.shape),
            "extents_um": [list(e) for e in self.extents_um],
            "motors": list(self.motors),
            "rocking_axis": self.rocking_axis,
            "rocking_angles": list(self.rocking_angles),
            "fixed_angles": dict(self.fixed_angles),
            "frames_per_point": self.frames_per_point,
            "snake": self.snake,
            "scan_id": self.scan_id,
        }

    @classmethod
    def from_description(cls, d: Mapping) -> "ScanDescription":
        """Inverse of :meth:`describe`; raises ConfigError naming a missing or bad key."""
        try:
            return cls(
                shape=tuple(int(v) for v in d["shape"]),
                extents_um=tuple(tuple(float(v) for v in e) for e in d["extents_um"]),
                motors=tuple(d.get("motors", ("piy", "pix"))),
                rocking_axis=str(d.get("rocking_axis", "eta")),
                rocking_angles=tuple(float(a) for a in d["rocking_angles"]),
                fixed_angles={str(k): float(v) for k, v in d.get("fixed_angles", {}).items()},
                frames_per_point=int(d.get("frames_per_point", 1)),
                snake=bool(d.get("snake", False)),
                scan_id=str(d.get("scan_id", "")),
            )
        except KeyError as exc:
            raise ConfigError(f"scan description lacks the key {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"scan description is malformed: {exc}") from None
