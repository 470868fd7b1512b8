"""numba kernels that add detector frames into per-map-pixel moments and q histograms.

Pure functions on arrays (no I/O, no globals, no logging), compiled ``nogil`` so several
threads can accumulate at once. Each has a numpy reference implementation in the tests.

For a pixel p of the ROI with counts c (kept when ``c >= threshold``, so never NaN, and not masked), weight
``w = c * scale`` (``scale`` = 1 / monitor, or 1) and ``dq = R . kf[p] + offset`` where
``R = R_sample^T`` and ``offset = -R . k_i - q_ref``, so ``dq = q - q_ref``:

* moments (10 float64): ``S0 += w``, ``S1 += w dq`` (x, y, z),
  ``S2 += w dq dq^T`` (xx, xy, xz, yy, yz, zz);
* histogram (flat, C order over (bx, by, bz)): ``hist[bin(dq)] += w`` when dq falls on the grid.
  ``edge0`` is the lower edge of the first bin *relative to q_ref* and ``inv_step`` 1 / step.
"""

from __future__ import annotations

import numpy as np
from numba import njit

#: index of each moment in the 10-vector
S0, S1X, S1Y, S1Z, S2XX, S2XY, S2XZ, S2YY, S2YZ, S2ZZ = range(10)
N_MOMENTS = 10


@njit(nogil=True, cache=True)
def _accumulate_one(frame, r0, c0, kf, mask, rot, offset, edge0, inv_step, bins,
                    scale, threshold, moments, hist):
    h, w = mask.shape
    use_hist = hist.size > 0
    by, bz = bins[1], bins[2]
    s0 = 0.0
    s1x = s1y = s1z = 0.0
    sxx = sxy = sxz = syy = syz = szz = 0.0
    for i in range(h):
        for j in range(w):
            c = frame[r0 + i, c0 + j]
            if c == 0 or not c >= threshold or mask[i, j]:  # NaN fails c >= threshold
                continue
            wt = c * scale
            kx, ky, kz = kf[i, j, 0], kf[i, j, 1], kf[i, j, 2]
            dx = rot[0, 0] * kx + rot[0, 1] * ky + rot[0, 2] * kz + offset[0]
            dy = rot[1, 0] * kx + rot[1, 1] * ky + rot[1, 2] * kz + offset[1]
            dz = rot[2, 0] * kx + rot[2, 1] * ky + rot[2, 2] * kz + offset[2]
            s0 += wt
            s1x += wt * dx
            s1y += wt * dy
            s1z += wt * dz
            sxx += wt * dx * dx
            sxy += wt * dx * dy
            sxz += wt * dx * dz
            syy += wt * dy * dy
            syz += wt * dy * dz
            szz += wt * dz * dz
            if use_hist:
                fx = (dx - edge0[0]) * inv_step[0]
                fy = (dy - edge0[1]) * inv_step[1]
                fz = (dz - edge0[2]) * inv_step[2]
                if fx >= 0.0 and fy >= 0.0 and fz >= 0.0:
                    ix, iy, iz = int(fx), int(fy), int(fz)
                    if ix < bins[0] and iy < by and iz < bz:
                        hist[(ix * by + iy) * bz + iz] += wt
    moments[S0] += s0
    moments[S1X] += s1x
    moments[S1Y] += s1y
    moments[S1Z] += s1z
    moments[S2XX] += sxx
    moments[S2XY] += sxy
    moments[S2XZ] += sxz
    moments[S2YY] += syy
    moments[S2YZ] += syz
    moments[S2ZZ] += szz
    return s0


@njit(nogil=True, cache=True)
def accumulate_frame(frame, r0, c0, kf, mask, rot, offset, edge0, inv_step, bins,
                     scale, threshold, moments, hist):
    """Add one frame into ``moments`` (10,) and ``hist`` (n_bins,) or (0,); returns S0 added."""
    return _accumulate_one(frame, r0, c0, kf, mask, rot, offset, edge0, inv_step, bins,
                           scale, threshold, moments, hist)


@njit(nogil=True, cache=True)
def accumulate_frames(frames, angle_index, point_index, scales, r0, c0, kf, mask, rots,
                      offsets, edge0, inv_step, bins, threshold, moments, hist):
    """Add a stack of frames (n, rows, cols).

    ``moments`` is (n_angles, n_points, 10); ``hist`` is (n_points, n_bins) or (n_points, 0).
    Frame f goes to rocking angle ``angle_index[f]`` and map pixel ``point_index[f]``.
    Returns the S0 added per frame.
    """
    added = np.zeros(frames.shape[0])
    for f in range(frames.shape[0]):
        a, p = angle_index[f], point_index[f]
        added[f] = _accumulate_one(frames[f], r0, c0, kf, mask, rots[a], offsets[a], edge0,
                                   inv_step, bins, scales[f], threshold, moments[a, p], hist[p])
    return added


@njit(nogil=True, cache=True)
def count_hits(kf, mask, rot, offset, edge0, inv_step, bins, hits):
    """Add to ``hits`` (n_bins,) the number of unmasked ROI pixels falling in each bin.

    Summed over the rocking angles this is XSOCS' ``histo``: the normalisation of its
    hit-normalised projections.
    """
    h, w = mask.shape
    by, bz = bins[1], bins[2]
    for i in range(h):
        for j in range(w):
            if mask[i, j]:
                continue
            kx, ky, kz = kf[i, j, 0], kf[i, j, 1], kf[i, j, 2]
            fx = (rot[0, 0] * kx + rot[0, 1] * ky + rot[0, 2] * kz + offset[0] - edge0[0]) * inv_step[0]
            fy = (rot[1, 0] * kx + rot[1, 1] * ky + rot[1, 2] * kz + offset[1] - edge0[1]) * inv_step[1]
            fz = (rot[2, 0] * kx + rot[2, 1] * ky + rot[2, 2] * kz + offset[2] - edge0[2]) * inv_step[2]
            if fx >= 0.0 and fy >= 0.0 and fz >= 0.0:
                ix, iy, iz = int(fx), int(fy), int(fz)
                if ix < bins[0] and iy < by and iz < bz:
                    hits[(ix * by + iy) * bz + iz] += 1
