"""Frames of a simulated SXDM scan, and the ground truth they were drawn from.

For map point m at rocking step k the expected counts of detector pixel p are::

    lambda_p = sum_j A_mj * G(q_p - Q_mj; Sigma_mj) * dV_p + background

with G the normalised 3D Gaussian of the Bragg peak of particle j (overlapping particles add
their peaks), q_p the pixel's q at that rocking angle
(the processor's own geometry) and dV_p the reciprocal-space volume the pixel sweeps during
one rocking step (|det dq/d(row, col, angle)|). Summed over the scan the expected counts of a
point are then its integrated intensity A_m, and their centre of mass is Q_m: the moments the
processor computes are unbiased estimators of the truth. Counts are Poisson; the background is
a uniform Poisson rate per pixel, placed photon by photon (sparse, so it costs nothing);
hot pixels fire at a high rate; dead pixels and gaps stay at zero.

Randomness is seeded per frame from (seed, rocking step, map point): any frame can be drawn
again, in any order, with the same counts. The Gaussian is evaluated only in a box of
+-``n_sigma`` around where the peak crosses the detector.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterator

import numpy as np
from numba import njit

from sxdm_stream.core.geometry import Geometry, axis_vector
from sxdm_stream.core.maps import tilt_angles
from sxdm_stream.core.scan import ScanDescription

from .detectors import DetectorModel
from .sample import Sample


@dataclass(frozen=True)
class GroundTruth:
    """The truth behind a simulated scan, on the scan's map grid (rows, cols)."""

    intensity: np.ndarray   # expected integrated counts
    q: np.ndarray           # (rows, cols, 3) peak centre, 1/A (NaN off the particles)
    d_spacing: np.ndarray   # A
    particle: np.ndarray    # particle index, -1 = substrate (the last particle where several overlap)
    #: (n_particles, rows, cols): each particle's own d (NaN off it) and expected counts; the
    #: d of a two-phase particle is that of the centre of mass of its phases' peaks
    particle_d_spacing: np.ndarray | None = None
    particle_intensity: np.ndarray | None = None
    #: (n_components, rows, cols) expected counts and (n_components, rows, cols, 3) peak
    #: centre (1/A) of every peak component (particle phase, see ``Sample.component_owners``)
    component_intensity: np.ndarray | None = None
    component_q: np.ndarray | None = None
    #: (n_components, 2): (particle index, phase index) of each component
    component_owner: np.ndarray | None = None

    def particle_mean_d(self, index: int, mask: np.ndarray | None = None) -> float:
        """Mean d (Angstrom) of particle ``index`` over its map pixels, or over ``mask`` & them."""
        d = self.particle_d_spacing[index]
        keep = np.isfinite(d) if mask is None else np.isfinite(d) & mask
        return float(np.mean(d[keep]))

    def strain(self, mask: np.ndarray, d_ref: float | None = None) -> np.ndarray:
        """Microstrain against the mean d over ``mask`` (or ``d_ref``), as the maps define it."""
        ref = np.mean(self.d_spacing[mask]) if d_ref is None else d_ref
        return (self.d_spacing - ref) / ref * 1e6

    def tilts(self, mask: np.ndarray):
        """(altitude, azimuth, mean direction, e1) exactly as :mod:`sxdm_stream.core.maps` defines them."""
        return tilt_angles(self.q, mask)


@njit(nogil=True, cache=True)
def _render_peak(out, kf, ki, rot, q0, precision, density, dvol, r_lo, r_hi, c_lo, c_hi,
                 phys_row, phys_col):
    for i in range(r_lo, r_hi):
        pr = phys_row[i]
        if pr < 0:
            continue
        for j in range(c_lo, c_hi):
            pc = phys_col[j]
            if pc < 0:
                continue
            kx, ky, kz = kf[i, j, 0] - ki[0], kf[i, j, 1] - ki[1], kf[i, j, 2] - ki[2]
            dx = rot[0, 0] * kx + rot[0, 1] * ky + rot[0, 2] * kz - q0[0]
            dy = rot[1, 0] * kx + rot[1, 1] * ky + rot[1, 2] * kz - q0[1]
            dz = rot[2, 0] * kx + rot[2, 1] * ky + rot[2, 2] * kz - q0[2]
            m = (precision[0, 0] * dx * dx + precision[1, 1] * dy * dy + precision[2, 2] * dz * dz
                 + 2.0 * (precision[0, 1] * dx * dy + precision[0, 2] * dx * dz
                          + precision[1, 2] * dy * dz))
            if m > 60.0:
                continue
            lam = density * np.exp(-0.5 * m) * dvol[i, j]
            n = np.random.poisson(lam)
            if n > 0:
                out[pr, pc] += n


@njit(nogil=True, cache=True)
def _render_frame(out, seed, kf, ki, rot, q0s, precisions, densities, dvol, boxes, phys_row,
                  phys_col, bg_rate, hot, hot_rate, dead):
    np.random.seed(seed)
    for j in range(densities.shape[0]):     # one peak per particle phase at this map point
        box = boxes[j]
        _render_peak(out, kf, ki, rot, q0s[j], precisions[j], densities[j], dvol, box[0],
                     box[1], box[2], box[3], phys_row, phys_col)
    rows, cols = out.shape
    n_bg = np.random.poisson(bg_rate * rows * cols)
    for _ in range(n_bg):  # photon by photon, through the sensor layout (gaps, big pixels)
        pr = phys_row[np.random.randint(rows)]
        pc = phys_col[np.random.randint(cols)]
        if pr >= 0 and pc >= 0:
            out[pr, pc] += 1
    for h in range(hot.shape[0]):
        out[hot[h, 0], hot[h, 1]] += np.random.poisson(hot_rate)
    for d in range(dead.shape[0]):
        out[dead[d, 0], dead[d, 1]] = 0


class ScanSimulator:
    """Draws the frames of one SXDM scan of ``sample`` seen by ``model`` in ``geometry``.

    ``geometry`` is the processing geometry (its detector ROI is ignored here: the simulator
    renders whole frames). ``drift_um`` (n_angles, 2) shifts the sample under the beam at each
    rocking step (row, col in micrometres); the motors still read their nominal positions.
    """

    def __init__(self, sample: Sample, model: DetectorModel, geometry: Geometry,
                 scan: ScanDescription, background_rate: float = 2e-5, seed: int = 0,
                 drift_um: np.ndarray | None = None, n_sigma: float = 5.5) -> None:
        self.sample, self.model, self.scan = sample, model, scan
        self.background_rate, self.seed = float(background_rate), int(seed)
        full = replace(model.detector, roi=None)
        self.geometry = Geometry(full, geometry.energy_ev, geometry.diffractometer)
        self.drift_um = np.zeros((scan.n_angles, 2)) if drift_um is None else np.asarray(drift_um, float)
        self.n_sigma = n_sigma
        self.kf = np.ascontiguousarray(self.geometry.kf_lab(scan.angles(0)))
        self.ki = self.geometry.ki
        self.rots = np.stack([self.geometry.sample_matrix(scan.angles(k)) for k in range(scan.n_angles)])
        self.dvol = self._pixel_volumes()
        self._peaks: list[list[dict[str, np.ndarray]]] = []   # [angle][particle]
        for k in range(scan.n_angles):
            self._peaks.append(self._peaks_at_angle(k))
        # boxes are found from the detector position of the peak, which depends on the angle
        self._det_rot = self.geometry.diffractometer.detector_rotation(scan.angles(0))
        self._dead = np.ascontiguousarray(model.dead_pixels, dtype=np.int64)
        self._hot = np.ascontiguousarray(model.hot_pixels, dtype=np.int64)
        self._phys_row = np.ascontiguousarray(model.physical_row, dtype=np.int64)
        self._phys_col = np.ascontiguousarray(model.physical_col, dtype=np.int64)

    # ---- set-up ---------------------------------------------------------------------------
    def _pixel_volumes(self) -> np.ndarray:
        """|det(dq/drow, dq/dcol, dq/dangle * step)| at the middle rocking angle."""
        scan, geo = self.scan, self.geometry
        mid = scan.n_angles // 2
        angles = np.asarray(scan.rocking_angles)
        step = float(np.mean(np.abs(np.diff(angles)))) if scan.n_angles > 1 else 0.01
        a = scan.angles(mid)
        q = geo.q(a)
        b = dict(a, **{scan.rocking_axis: a[scan.rocking_axis] + step})
        d_angle = geo.q(b) - q
        d_row = np.gradient(q, axis=0)
        d_col = np.gradient(q, axis=1)
        return np.abs(np.einsum("ijk,ijk->ij", np.cross(d_row, d_col), d_angle))

    def _positions(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        rows, cols = np.meshgrid(self.scan.axis_um(0), self.scan.axis_um(1), indexing="ij")
        return (rows + self.drift_um[k, 0]).ravel(), (cols + self.drift_um[k, 1]).ravel()

    def _peaks_at_angle(self, k: int) -> list[dict[str, np.ndarray]]:
        if k > 0 and not np.any(self.drift_um[k] != self.drift_um[k - 1]):
            return self._peaks[k - 1]
        components = self.sample.components(*self._positions(k))
        for peaks in components:
            sig_r, sig_t = peaks["sigma_radial"], peaks["sigma_transverse"]
            norm = (2 * np.pi) ** 1.5 * sig_r * sig_t * sig_t
            peaks["density"] = peaks["intensity"] / norm
            peaks["sigma_max"] = np.maximum(sig_r, sig_t)
        return components

    def _box(self, k: int, q0: np.ndarray, sigma_max: float) -> np.ndarray:
        """Detector rows/cols (lo, hi, lo, hi) where the peak can give counts."""
        det = self.geometry.detector
        kf = self.rots[k].T @ q0 + self.ki           # lab frame outgoing direction of the peak
        r = self._det_rot.T @ kf                     # detector frame
        if r[0] <= 0:
            return np.zeros(4, dtype=np.int64)
        hit = r * det.distance_m / r[0]
        row = det.beam_center[0] + hit @ axis_vector(det.row_direction) / det.pixel_size_m
        col = det.beam_center[1] + hit @ axis_vector(det.col_direction) / det.pixel_size_m
        q_per_pixel = self.geometry.k * det.pixel_size_m / det.distance_m
        half = int(np.ceil(self.n_sigma * sigma_max / q_per_pixel)) + 2
        rows, cols = det.shape
        lo_r, hi_r = max(int(row) - half, 0), min(int(row) + half + 1, rows)
        lo_c, hi_c = max(int(col) - half, 0), min(int(col) + half + 1, cols)
        if lo_r >= hi_r or lo_c >= hi_c:
            return np.zeros(4, dtype=np.int64)
        return np.array([lo_r, hi_r, lo_c, hi_c], dtype=np.int64)

    # ---- frames ---------------------------------------------------------------------------
    def frame_seed(self, angle_index: int, point_index: int) -> int:
        return int(np.random.SeedSequence([self.seed, angle_index, point_index]).generate_state(1)[0])

    def frame(self, angle_index: int, point_index: int, out: np.ndarray | None = None) -> np.ndarray:
        """The uint32 frame of one (rocking step, map point). ``out`` (zeroed) avoids allocation."""
        if out is None:
            out = np.zeros(self.geometry.detector.shape, dtype=np.uint32)
        here = [p for p in self._peaks[angle_index] if p["density"][point_index] > 0]
        densities = np.array([p["density"][point_index] for p in here], dtype=np.float64)
        q0s = np.array([p["q"][point_index] for p in here], dtype=np.float64).reshape(-1, 3)
        precs = np.array([p["precision"][point_index] for p in here],
                         dtype=np.float64).reshape(-1, 3, 3)
        boxes = np.array([self._box(angle_index, p["q"][point_index],
                                    float(p["sigma_max"][point_index])) for p in here],
                         dtype=np.int64).reshape(-1, 4)
        _render_frame(out, self.frame_seed(angle_index, point_index), self.kf, self.ki,
                      self.rots[angle_index], q0s, precs, densities, self.dvol, boxes,
                      self._phys_row, self._phys_col, self.background_rate, self._hot,
                      self.model.hot_rate, self._dead)
        return out

    def frames(self, reuse_buffer: bool = False) -> Iterator[tuple[int, int, int, np.ndarray]]:
        """(frame index, rocking index, map point index, frame) in acquisition order.

        With ``reuse_buffer`` one array is refilled each time (valid until the next frame):
        several times faster for in-process consumers that do not keep frames.
        """
        buf = np.zeros(self.geometry.detector.shape, dtype=np.uint32)
        for index in range(self.scan.n_frames):
            angle, point = self.scan.locate(index)
            if reuse_buffer:
                buf[...] = 0
                yield index, angle, point, self.frame(angle, point, buf)
            else:
                yield index, angle, point, self.frame(angle, point)

    def truth(self) -> GroundTruth:
        """Ground truth at the nominal map positions (no drift)."""
        rows, cols = np.meshgrid(self.scan.axis_um(0), self.scan.axis_um(1), indexing="ij")
        p = self.sample.peaks(rows, cols)
        q = np.where((p["particle"] >= 0)[..., None], p["q"], np.nan)
        components = self.sample.components(rows, cols)
        owners = np.array(self.sample.component_owners(), dtype=np.int64).reshape(-1, 2)
        intensity = np.stack([c["intensity"] for c in components])
        q_phase = np.stack([c["q"] for c in components])
        particle_intensity, particle_d = [], []
        for index in range(len(self.sample.particles)):
            mine = owners[:, 0] == index
            counts = intensity[mine].sum(axis=0)
            with np.errstate(invalid="ignore", divide="ignore"):
                com = np.einsum("kij,kijx->ijx", intensity[mine], q_phase[mine]) / counts[..., None]
                d = 2 * np.pi / np.linalg.norm(com, axis=-1)
            particle_intensity.append(counts)
            particle_d.append(np.where(counts > 0, d, np.nan))
        return GroundTruth(p["intensity"], q, p["d_spacing"], p["particle"],
                           np.stack(particle_d), np.stack(particle_intensity),
                           intensity, q_phase, owners)
