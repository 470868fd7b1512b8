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
* q-ROI moments: for each row k of ``rois`` (n_rois, 12) = box lo (3), box hi (3), ellipsoid
  centre (3), 1/semi-axes (3), all relative to q_ref (see :func:`sxdm_stream.core.qroi.roi_table`),
  ``roi_moments[k]`` gets the same 10 moments from the pixels with ``lo <= dq < hi`` and
  ``|(dq - centre) / semi|^2 <= 1`` (1/semi-axes 0 for a box). ``rois`` and ``roi_moments``
  are None when there are no ROIs: numba then compiles a specialisation without the ROI code
  (it prunes ``is None`` branches on arguments), so ROIs cost nothing unless configured.
* q-shell moments: ``shell_of`` (rows, cols) gives the |Q| slice of every ROI pixel (-1 for
  none; |Q| = |dq + q_ref| = |k_f - k_i| does not depend on the rocking angle, so the slice is
  looked up, not computed: see :mod:`sxdm_stream.core.shells`), and ``shell_moments[k]`` (4,)
  gets ``S0 += w``, ``S1 += w dq`` of the pixels of slice k. Both None when shells are off:
  again a specialisation without the code.
* invalid pixels: counts ``c > max_valid`` are not photons but the detector's mark of a
  pixel it did not measure (2**bits - 1 on an Eiger: gaps, defective or overflowing pixels)
  or a count above its saturation. Unmasked pixels so marked are left out of every sum and
  counted in ``invalid[0]``; ``max_valid = inf`` when there is no such limit. The test costs
  nothing on the zero pixels, which the kernel skips before looking at a count.

Two kernels compute these sums. :func:`accumulate_frame` / :func:`accumulate_frames` take k_f
and the rotation and compute dq and the bin of every hit: the reference, callable directly.
:func:`accumulate_frame_table` / :func:`accumulate_frames_table`, which the accumulator
runs, look both up in a per-angle pixel table (:func:`fill_pixel_table`: dq, bin, mask of
every ROI pixel for one rocking angle) and the q-ROI membership in a per-angle bit table
(:func:`fill_roi_bits`). The table is filled with the same expressions as the reference
computes per hit, and the hits are visited in the same order, so the two give the same
bits. What makes the table kernel faster (benchmarks/bench_accumulate.py):

* the non-zero pixels of a row are found 64 at a time: a vectorised compare builds a 64-bit
  mask, whose set bits are extracted with trailing-zero counts, 8 per block without a branch;
* the table records of a row's hits (32 bytes, one cache line) are prefetched before the
  row is processed, so their cache misses overlap instead of following one another;
* the per-hit dq rotation, floor and bounds tests and the per-ROI box tests become loads.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

#: index of each moment in the 10-vector
S0, S1X, S1Y, S1Z, S2XX, S2XY, S2XZ, S2YY, S2YZ, S2ZZ = range(10)
N_MOMENTS = 10
#: columns of a pixel table: dq (x, y, z) and the flat histogram bin, or one of the marks below
PIXEL_TABLE_COLUMNS = 4
#: pixel-table bin of a pixel whose dq is off the histogram grid (or with no histogram)
OFF_GRID = -1
#: pixel-table bin of a masked pixel
MASKED = -2
#: pixels per word of the non-zero masks (and ROIs per word of the ROI bit table)
WORD_BITS = 64


@njit(nogil=True, cache=True)
def _accumulate_one(frame, r0, c0, kf, mask, rot, offset, edge0, inv_step, bins,
                    scale, threshold, max_valid, moments, hist, invalid, rois, roi_moments,
                    shell_of, shell_moments):
    # Shaped for speed (see benchmarks/README.md): rows are taken as views so the inner
    # loops index from 0 (numba's negative-index handling on frame[r0 + i, c0 + j] stops
    # vectorisation); the non-zero columns of a row are first collected without branching,
    # so the kf loads of the hits are not serialised by mispredictions; constants live in
    # locals because numba gives LLVM no aliasing information to hoist them past hist stores.
    h, w = mask.shape
    use_hist = hist.size > 0
    bx, by, bz = bins[0], bins[1], bins[2]
    r00, r01, r02 = rot[0, 0], rot[0, 1], rot[0, 2]
    r10, r11, r12 = rot[1, 0], rot[1, 1], rot[1, 2]
    r20, r21, r22 = rot[2, 0], rot[2, 1], rot[2, 2]
    o0, o1, o2 = offset[0], offset[1], offset[2]
    e0, e1, e2 = edge0[0], edge0[1], edge0[2]
    i0, i1, i2 = inv_step[0], inv_step[1], inv_step[2]
    cols = np.empty(w, np.int64)
    n_invalid = 0
    s0 = 0.0
    s1x = s1y = s1z = 0.0
    sxx = sxy = sxz = syy = syz = szz = 0.0
    # q shells: the hits of one slice are summed in registers and stored when the slice
    # changes; along a detector row |Q| barely changes, so this stores a few times per row
    # instead of four read-modify-writes per hit (measured in benchmarks/bench_accumulate.py)
    shell = -1
    t0 = t1 = t2 = t3 = 0.0
    for i in range(h):
        row = frame[r0 + i, c0:c0 + w]
        mrow = mask[i]
        kfrow = kf[i]
        if shell_of is not None:
            shell_row = shell_of[i]
        n = 0
        for j in range(w):
            cols[n] = j
            n += row[j] != 0
        for k in range(n):
            j = cols[k]
            c = row[j]
            if not c >= threshold or mrow[j]:      # NaN fails c >= threshold
                continue
            if c > max_valid:                      # the detector's "not measured" mark
                n_invalid += 1
                continue
            wt = c * scale
            kx, ky, kz = kfrow[j, 0], kfrow[j, 1], kfrow[j, 2]
            dx = r00 * kx + r01 * ky + r02 * kz + o0
            dy = r10 * kx + r11 * ky + r12 * kz + o1
            dz = r20 * kx + r21 * ky + r22 * kz + o2
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
                fx = (dx - e0) * i0
                fy = (dy - e1) * i1
                fz = (dz - e2) * i2
                if fx >= 0.0 and fy >= 0.0 and fz >= 0.0:
                    ix, iy, iz = int(fx), int(fy), int(fz)
                    if ix < bx and iy < by and iz < bz:
                        hist[(ix * by + iy) * bz + iz] += wt
            if rois is not None:
                _add_to_rois(rois, dx, dy, dz, wt, roi_moments)
            if shell_of is not None:
                here = shell_row[j]
                if here != shell:
                    if shell >= 0:
                        _add_to_shell(shell_moments, shell, t0, t1, t2, t3)
                    shell = here
                    t0 = t1 = t2 = t3 = 0.0
                t0 += wt
                t1 += wt * dx
                t2 += wt * dy
                t3 += wt * dz
    if shell_of is not None and shell >= 0:
        _add_to_shell(shell_moments, shell, t0, t1, t2, t3)
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
    invalid[0] += n_invalid
    return s0


@njit(nogil=True, cache=True, inline="always")
def _add_to_shell(shell_moments, shell, s0, s1x, s1y, s1z):
    shell_moments[shell, 0] += s0
    shell_moments[shell, 1] += s1x
    shell_moments[shell, 2] += s1y
    shell_moments[shell, 3] += s1z


@njit(nogil=True, cache=True, inline="always")
def _add_to_rois(rois, dx, dy, dz, wt, out):
    """Add one hit's moments to ``out[k]`` (10,) of every ROI k of the table holding dq."""
    for k in range(rois.shape[0]):
        if not (rois[k, 0] <= dx < rois[k, 3] and rois[k, 1] <= dy < rois[k, 4]
                and rois[k, 2] <= dz < rois[k, 5]):
            continue
        ex = (dx - rois[k, 6]) * rois[k, 9]
        ey = (dy - rois[k, 7]) * rois[k, 10]
        ez = (dz - rois[k, 8]) * rois[k, 11]
        if ex * ex + ey * ey + ez * ez > 1.0:
            continue
        out[k, S0] += wt
        out[k, S1X] += wt * dx
        out[k, S1Y] += wt * dy
        out[k, S1Z] += wt * dz
        out[k, S2XX] += wt * dx * dx
        out[k, S2XY] += wt * dx * dy
        out[k, S2XZ] += wt * dx * dz
        out[k, S2YY] += wt * dy * dy
        out[k, S2YZ] += wt * dy * dz
        out[k, S2ZZ] += wt * dz * dz


@njit(nogil=True, cache=True)
def accumulate_frame(frame, r0, c0, kf, mask, rot, offset, edge0, inv_step, bins,
                     scale, threshold, max_valid, moments, hist, invalid, rois, roi_moments,
                     shell_of=None, shell_moments=None):
    """Add one frame into ``moments`` (10,), ``hist`` (n_bins,) or (0,), the q-ROI
    moments ``roi_moments`` (n_rois, 10) of the ROIs in ``rois`` (n_rois, 12), both None
    without ROIs, and the q-shell moments ``shell_moments`` (n_shells, 4) of the slices in
    ``shell_of`` (rows, cols), both None without shells; unmasked pixels with counts
    ``> max_valid`` are counted in ``invalid`` (1,) instead. Returns S0 added."""
    return _accumulate_one(frame, r0, c0, kf, mask, rot, offset, edge0, inv_step, bins,
                           scale, threshold, max_valid, moments, hist, invalid, rois, roi_moments,
                           shell_of, shell_moments)


@njit(nogil=True, cache=True)
def accumulate_frames(frames, angle_index, point_index, scales, r0, c0, kf, mask, rots,
                      offsets, edge0, inv_step, bins, threshold, max_valid, moments, hist, invalid,
                      rois, roi_moments, shell_of=None, shell_moments=None):
    """Add a stack of frames (n, rows, cols).

    ``moments`` is (n_angles, n_points, 10); ``hist`` is (n_points, n_bins) or (n_points, 0);
    ``roi_moments`` is (n_angles, n_points, n_rois, 10) for the ROI table ``rois`` (n_rois, 12);
    both are None without ROIs. ``shell_moments`` is (n_points, n_shells, 4) for the slice
    table ``shell_of`` (rows, cols); both None without shells. Invalid pixels (counts
    ``> max_valid``) of all frames are counted in ``invalid`` (1,).
    Frame f goes to rocking angle ``angle_index[f]`` and map pixel ``point_index[f]``.
    Returns the S0 added per frame.
    """
    added = np.zeros(frames.shape[0])
    for f in range(frames.shape[0]):
        a, p = angle_index[f], point_index[f]
        # four spelled-out calls: numba prunes ``is None`` branches on arguments, so each
        # specialisation holds only the call whose optional arrays exist
        if rois is None:
            if shell_of is None:
                added[f] = _accumulate_one(frames[f], r0, c0, kf, mask, rots[a], offsets[a],
                                           edge0, inv_step, bins, scales[f], threshold, max_valid,
                                           moments[a, p], hist[p], invalid, None, None, None, None)
            else:
                added[f] = _accumulate_one(frames[f], r0, c0, kf, mask, rots[a], offsets[a],
                                           edge0, inv_step, bins, scales[f], threshold, max_valid,
                                           moments[a, p], hist[p], invalid, None, None,
                                           shell_of, shell_moments[p])
        else:
            if shell_of is None:
                added[f] = _accumulate_one(frames[f], r0, c0, kf, mask, rots[a], offsets[a],
                                           edge0, inv_step, bins, scales[f], threshold, max_valid,
                                           moments[a, p], hist[p], invalid, rois,
                                           roi_moments[a, p], None, None)
            else:
                added[f] = _accumulate_one(frames[f], r0, c0, kf, mask, rots[a], offsets[a],
                                           edge0, inv_step, bins, scales[f], threshold, max_valid,
                                           moments[a, p], hist[p], invalid, rois,
                                           roi_moments[a, p], shell_of, shell_moments[p])
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


# ---- the table kernel -----------------------------------------------------------------------
@intrinsic
def _trailing_zeros(typingctx, word):
    """Number of trailing zero bits of a uint64 (64 for 0): one ``tzcnt``."""
    def codegen(context, builder, signature, args):
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 0))
    return word(word), codegen


@intrinsic
def _prefetch_record(typingctx, table_row, j):
    """Hint the CPU to fetch the cache line of ``table_row[j, 0]`` (a 2D array); no effect
    on results, never faults."""
    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        index = context.cast(builder, args[1], signature.args[1], types.intp)
        zero = context.get_constant(types.intp, 0)
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [index, zero],
                                       wraparound=False)
        byte_ptr = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [byte_ptr, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
        # read, high temporal locality, data cache
        builder.call(fn, [builder.bitcast(ptr, byte_ptr), ir.Constant(i32, 0),
                          ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()
    return types.void(table_row, j), codegen


@njit(nogil=True, cache=True)
def fill_pixel_table(kf, mask, rot, offset, edge0, inv_step, bins, with_histogram, table):
    """Fill ``table`` (rows, cols, 4) for one rocking angle: dq (3) of every ROI pixel and its
    flat histogram bin (``OFF_GRID`` off the grid or without histogram, ``MASKED`` for a
    masked pixel), with the expressions :func:`accumulate_frame` evaluates per hit."""
    h, w = mask.shape
    bx, by, bz = bins[0], bins[1], bins[2]
    r00, r01, r02 = rot[0, 0], rot[0, 1], rot[0, 2]
    r10, r11, r12 = rot[1, 0], rot[1, 1], rot[1, 2]
    r20, r21, r22 = rot[2, 0], rot[2, 1], rot[2, 2]
    o0, o1, o2 = offset[0], offset[1], offset[2]
    e0, e1, e2 = edge0[0], edge0[1], edge0[2]
    i0, i1, i2 = inv_step[0], inv_step[1], inv_step[2]
    for i in range(h):
        for j in range(w):
            kx, ky, kz = kf[i, j, 0], kf[i, j, 1], kf[i, j, 2]
            dx = r00 * kx + r01 * ky + r02 * kz + o0
            dy = r10 * kx + r11 * ky + r12 * kz + o1
            dz = r20 * kx + r21 * ky + r22 * kz + o2
            table[i, j, 0] = dx
            table[i, j, 1] = dy
            table[i, j, 2] = dz
            b = OFF_GRID
            if mask[i, j]:
                b = MASKED
            elif with_histogram:
                fx = (dx - e0) * i0
                fy = (dy - e1) * i1
                fz = (dz - e2) * i2
                if fx >= 0.0 and fy >= 0.0 and fz >= 0.0:
                    ix, iy, iz = int(fx), int(fy), int(fz)
                    if ix < bx and iy < by and iz < bz:
                        b = (ix * by + iy) * bz + iz
            table[i, j, 3] = b


@njit(nogil=True, cache=True)
def fill_roi_bits(table, rois, bits):
    """Fill ``bits`` (rows, cols, words) uint64: bit k of the pixel's words is set when the
    pixel's dq (``table`` from :func:`fill_pixel_table`) lies in ROI k of ``rois`` (n_rois, 12),
    by the test :func:`accumulate_frame` applies per hit."""
    h, w = table.shape[0], table.shape[1]
    bits[...] = 0
    for i in range(h):
        for j in range(w):
            dx, dy, dz = table[i, j, 0], table[i, j, 1], table[i, j, 2]
            for k in range(rois.shape[0]):
                if _in_roi(rois, k, dx, dy, dz):
                    bits[i, j, k // WORD_BITS] |= np.uint64(1) << np.uint64(k % WORD_BITS)


@njit(nogil=True, cache=True, inline="always")
def _in_roi(rois, k, dx, dy, dz):
    if not (rois[k, 0] <= dx < rois[k, 3] and rois[k, 1] <= dy < rois[k, 4]
            and rois[k, 2] <= dz < rois[k, 5]):
        return False
    ex = (dx - rois[k, 6]) * rois[k, 9]
    ey = (dy - rois[k, 7]) * rois[k, 10]
    ez = (dz - rois[k, 8]) * rois[k, 11]
    return not ex * ex + ey * ey + ez * ez > 1.0


@njit(nogil=True, cache=True, inline="always")
def _nonzero_mask(block, n):
    """Bit j set when ``block[j] != 0``; a constant 64-pixel trip count vectorises."""
    m = np.uint64(0)
    if n == WORD_BITS:
        for j in range(WORD_BITS):
            m |= np.uint64(block[j] != 0) << np.uint64(j)
    else:
        for j in range(n):
            m |= np.uint64(block[j] != 0) << np.uint64(j)
    return m


@njit(nogil=True, cache=True, inline="always")
def _nonzero_columns(row, cols):
    """Write the columns of the non-zero pixels of ``row`` to ``cols`` (len(row) + 64), in
    order; return how many. Eight set bits per word are taken without branching (past the
    last one the writes land beyond the count, harmlessly); a word with more loops on."""
    w = row.shape[0]
    n = 0
    for j0 in range(0, w, WORD_BITS):
        m = _nonzero_mask(row[j0:j0 + WORD_BITS], min(WORD_BITS, w - j0))
        found = 0
        for _ in range(8):
            cols[n + found] = j0 + _trailing_zeros(m)
            found += m != 0
            m &= m - np.uint64(1)
        n += found
        while m != 0:
            cols[n] = j0 + _trailing_zeros(m)
            n += 1
            m &= m - np.uint64(1)
    return n


@njit(nogil=True, cache=True)
def _accumulate_table_one(frame, r0, c0, table, scale, threshold, max_valid, moments, hist,
                          invalid, roi_bits, roi_moments, shell_of, shell_moments):
    # the hits, their order and every expression are those of _accumulate_one, with dq and
    # the bin loaded from the table (so the sums are bit for bit the same)
    h, w = table.shape[0], table.shape[1]
    cols = np.empty(w + WORD_BITS, np.int64)
    n_invalid = 0
    s0 = 0.0
    s1x = s1y = s1z = 0.0
    sxx = sxy = sxz = syy = syz = szz = 0.0
    shell = -1
    t0 = t1 = t2 = t3 = 0.0
    for i in range(h):
        row = frame[r0 + i, c0:c0 + w]
        trow = table[i]
        if shell_of is not None:
            shell_row = shell_of[i]
        if roi_bits is not None:
            bits_row = roi_bits[i]
        n = _nonzero_columns(row, cols)
        for k in range(n):
            _prefetch_record(trow, cols[k])
        for k in range(n):
            j = cols[k]
            c = row[j]
            b = int(trow[j, 3])
            if not c >= threshold or b == MASKED:     # NaN fails c >= threshold
                continue
            if c > max_valid:                         # the detector's "not measured" mark
                n_invalid += 1
                continue
            wt = c * scale
            dx, dy, dz = trow[j, 0], trow[j, 1], trow[j, 2]
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
            if b >= 0:
                hist[b] += wt
            if roi_bits is not None:
                _add_to_roi_bits(bits_row[j], dx, dy, dz, wt, roi_moments)
            if shell_of is not None:
                here = shell_row[j]
                if here != shell:
                    if shell >= 0:
                        _add_to_shell(shell_moments, shell, t0, t1, t2, t3)
                    shell = here
                    t0 = t1 = t2 = t3 = 0.0
                t0 += wt
                t1 += wt * dx
                t2 += wt * dy
                t3 += wt * dz
    if shell_of is not None and shell >= 0:
        _add_to_shell(shell_moments, shell, t0, t1, t2, t3)
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
    invalid[0] += n_invalid
    return s0


@njit(nogil=True, cache=True, inline="always")
def _add_to_roi_bits(words, dx, dy, dz, wt, out):
    """Add one hit's moments to ``out[k]`` (10,) of every ROI k whose bit is set in ``words``."""
    for word in range(words.shape[0]):
        m = words[word]
        while m != 0:
            k = word * WORD_BITS + _trailing_zeros(m)
            m &= m - np.uint64(1)
            out[k, S0] += wt
            out[k, S1X] += wt * dx
            out[k, S1Y] += wt * dy
            out[k, S1Z] += wt * dz
            out[k, S2XX] += wt * dx * dx
            out[k, S2XY] += wt * dx * dy
            out[k, S2XZ] += wt * dx * dz
            out[k, S2YY] += wt * dy * dy
            out[k, S2YZ] += wt * dy * dz
            out[k, S2ZZ] += wt * dz * dz


@njit(nogil=True, cache=True)
def accumulate_frame_table(frame, r0, c0, table, scale, threshold, max_valid, moments, hist,
                           invalid, roi_bits, roi_moments, shell_of=None, shell_moments=None):
    """:func:`accumulate_frame` with dq and bins from ``table`` (rows, cols, 4) of the frame's
    rocking angle (:func:`fill_pixel_table`) and the q-ROI membership from ``roi_bits``
    (rows, cols, words) (:func:`fill_roi_bits`; None, with ``roi_moments``, without ROIs).
    The same sums, bit for bit. Returns S0 added."""
    return _accumulate_table_one(frame, r0, c0, table, scale, threshold, max_valid, moments,
                                 hist, invalid, roi_bits, roi_moments, shell_of, shell_moments)


@njit(nogil=True, cache=True)
def accumulate_frames_table(frames, point_index, scales, r0, c0, table, threshold, max_valid,
                            moments, hist, invalid, roi_bits, roi_moments, shell_of=None,
                            shell_moments=None):
    """Add a stack of frames (n, rows, cols) of ONE rocking angle, whose ``table`` and
    ``roi_bits`` are given (see :func:`accumulate_frame_table`).

    ``moments`` is (n_points, 10) and ``roi_moments`` (n_points, n_rois, 10): the angle's
    slices; ``hist`` is (n_points, n_bins) or (n_points, 0); ``shell_moments``
    (n_points, n_shells, 4). Frame f goes to map pixel ``point_index[f]``, weight scale
    ``scales[f]``. Returns the S0 added per frame.
    """
    added = np.zeros(frames.shape[0])
    for f in range(frames.shape[0]):
        p = point_index[f]
        # spelled-out calls: numba prunes ``is None`` branches on arguments
        if roi_bits is None:
            if shell_of is None:
                added[f] = _accumulate_table_one(frames[f], r0, c0, table, scales[f], threshold,
                                                 max_valid, moments[p], hist[p], invalid,
                                                 None, None, None, None)
            else:
                added[f] = _accumulate_table_one(frames[f], r0, c0, table, scales[f], threshold,
                                                 max_valid, moments[p], hist[p], invalid,
                                                 None, None, shell_of, shell_moments[p])
        else:
            if shell_of is None:
                added[f] = _accumulate_table_one(frames[f], r0, c0, table, scales[f], threshold,
                                                 max_valid, moments[p], hist[p], invalid,
                                                 roi_bits, roi_moments[p], None, None)
            else:
                added[f] = _accumulate_table_one(frames[f], r0, c0, table, scales[f], threshold,
                                                 max_valid, moments[p], hist[p], invalid,
                                                 roi_bits, roi_moments[p], shell_of,
                                                 shell_moments[p])
    return added
