"""Sub-pixel registration and shifting of 2D maps: pure numpy, no I/O.

Conventions (used by :mod:`sxdm_stream.analysis.drift`): a *shift* ``s = (rows, cols)`` in map pixels
moves content: ``shifted(x) = image(x - s)``. :func:`cross_correlation_shift` returns the shift
that, applied to ``moving``, makes it match ``reference``.

The cross-correlation is computed by FFT on zero-padded maps (a linear, not circular,
correlation for shifts up to half the map), its integer peak refined by the matrix-multiply
upsampled DFT of Guizar-Sicairos, Thurman & Fienup, Opt. Lett. 33, 156 (2008): the exact
trigonometric interpolation of the correlation, evaluated only near the peak, so there is no
pull towards whole pixels and the cost stays that of two FFTs per map.

Shifting uses bilinear interpolation with non-negative weights: it is a weighted sum of
neighbouring map pixels, so applied to additive sums (counts, moments) it keeps them sums of
non-negative counts (a Fourier or spline shift would ring and make counts negative).

Between the maps of a series (used by :mod:`sxdm_stream.analysis.tracking`): maps placed in
micrometres (:class:`MapGrid`), resampled from one grid onto another (:func:`resample_map`),
reduced to soft outlines (:func:`soft_outline`) and registered against a running reference
held in the sample frame (:class:`SampleFrameReference`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import fft as sfft
from scipy import ndimage

#: stages of the upsampled DFT refinement: (upsampling factor, half width searched in pixels)
_REFINE_STAGES = ((10, 1.0), (100, 0.12))


def padded_spectrum(image: np.ndarray, padded_shape: tuple[int, int]) -> np.ndarray:
    """2D FFT of ``image`` zero-padded to ``padded_shape`` (float64 -> complex128)."""
    return sfft.fft2(np.asarray(image, dtype=np.float64), s=padded_shape, workers=1)


def correlation_shape(shape: tuple[int, int]) -> tuple[int, int]:
    """FFT size that keeps the correlation linear for shifts up to half the map."""
    return tuple(sfft.next_fast_len(n + n // 2 + 1) for n in shape)


def _signed(index: np.ndarray, n: np.ndarray) -> np.ndarray:
    return np.where(index > n // 2, index - n, index)


def _upsampled_correlation(product: np.ndarray, centre: np.ndarray, upsample: int,
                           half_width: float) -> tuple[np.ndarray, np.ndarray]:
    """Correlation C(u) = sum_k product(k) exp(2 pi i k.u / N) on a fine grid around ``centre``.

    Returns (values (m, m), lags per axis [(m,), (m,)]).
    """
    m = 2 * int(np.ceil(half_width * upsample)) + 1
    lags = [c + (np.arange(m) - m // 2) / upsample for c in centre]
    kernels = [np.exp(2j * np.pi * np.outer(lag, np.fft.fftfreq(n)))
               for lag, n in zip(lags, product.shape)]
    values = (kernels[0] @ product @ kernels[1].T).real
    return values, lags


def _parabolic_offset(left: float, mid: float, right: float) -> float:
    denom = left - 2.0 * mid + right
    return 0.0 if denom >= 0 else float(np.clip(0.5 * (left - right) / denom, -0.5, 0.5))


def cross_correlation_shift(reference_spectrum: np.ndarray, moving: np.ndarray,
                            reference_norm: float) -> tuple[np.ndarray, float]:
    """Sub-pixel shift that registers ``moving`` onto a reference map.

    Parameters
    ----------
    reference_spectrum : :func:`padded_spectrum` of the reference map, padded to
        :func:`correlation_shape` of the map shape.
    moving : (rows, cols) map to register.
    reference_norm : Euclidean norm of the reference map.

    Returns
    -------
    shift : (2,) float, map pixels (rows, cols): ``moving(x - shift)`` matches the reference.
    correlation : normalised cross-correlation at the peak, in [0, 1] for non-negative maps
        (1 = same pattern up to a scale factor); 0 if either map is empty.
    """
    moving = np.asarray(moving, dtype=np.float64)
    norm = float(np.linalg.norm(moving)) * reference_norm
    if not norm > 0:
        return np.zeros(2), 0.0
    shape = np.array(reference_spectrum.shape)
    product = np.conj(reference_spectrum) * padded_spectrum(moving, tuple(shape))
    coarse = sfft.ifft2(product, workers=1).real
    peak = _signed(np.array(np.unravel_index(np.argmax(coarse), coarse.shape)), shape)
    centre = peak.astype(float)
    for upsample, half_width in _REFINE_STAGES:
        values, lags = _upsampled_correlation(product, centre, upsample, half_width)
        i, j = np.unravel_index(np.argmax(values), values.shape)
        centre = np.array([lags[0][i], lags[1][j]])
    di = _parabolic_offset(*values[i - 1:i + 2, j]) if 0 < i < values.shape[0] - 1 else 0.0
    dj = _parabolic_offset(*values[i, j - 1:j + 2]) if 0 < j < values.shape[1] - 1 else 0.0
    centre = centre + np.array([di, dj]) / _REFINE_STAGES[-1][0]
    n_total = float(np.prod(shape))
    correlation = float(values[i, j]) / n_total / norm
    # C(u) = sum_x ref(x) moving(x + u) peaks at u = -shift
    return -centre, correlation


def _add_shifted(out: np.ndarray, image: np.ndarray, di: int, dj: int, weight: float) -> None:
    """``out(x) += weight * image(x + (di, dj))`` where that lies inside the map."""
    rows, cols = image.shape[:2]
    r0, r1 = max(0, -di), min(rows, rows - di)
    c0, c1 = max(0, -dj), min(cols, cols - dj)
    if r0 < r1 and c0 < c1:
        out[r0:r1, c0:c1] += weight * image[r0 + di:r1 + di, c0 + dj:c1 + dj]


def shift_bilinear(image: np.ndarray, shift, out: np.ndarray | None = None) -> np.ndarray:
    """``image(x - shift)`` by bilinear interpolation, zero outside the map.

    Parameters
    ----------
    image : (rows, cols, ...) array; trailing axes (e.g. the 10 moments) move together.
    shift : (row, col) shift in map pixels.
    out : optional float64 array of the same shape to write into (overwritten).

    Returns
    -------
    The shifted array (``out`` if given).
    """
    image = np.asarray(image, dtype=np.float64)
    source = -np.asarray(shift, dtype=np.float64)          # out(x) = in(x + source)
    base = np.floor(source).astype(int)
    frac = source - base
    if out is None:
        out = np.zeros_like(image)
    else:
        out[...] = 0.0
    for di, wi in ((0, 1.0 - frac[0]), (1, frac[0])):
        for dj, wj in ((0, 1.0 - frac[1]), (1, frac[1])):
            if wi * wj > 0:
                _add_shifted(out, image, base[0] + di, base[1] + dj, wi * wj)
    return out


# ---- maps of a series: grids in micrometres and a running reference in the sample frame ------

#: smallest weight a canvas pixel of :class:`SampleFrameReference` needs to count as covered
_MIN_COVERAGE = 1e-3


@dataclass(frozen=True)
class MapGrid:
    """Where the pixels of a map lie, in motor micrometres: pixel (i, j) is at
    ``origin_um + (i, j) * step_um`` (steps signed, as the motors ran)."""

    shape: tuple[int, int]
    origin_um: tuple[float, float]
    step_um: tuple[float, float]

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        object.__setattr__(self, "origin_um", tuple(float(v) for v in self.origin_um))
        object.__setattr__(self, "step_um", tuple(float(v) for v in self.step_um))

    def describe(self) -> str:
        """Human-readable: shape, origin and step."""
        (r0, c0), (dr, dc) = self.origin_um, self.step_um
        return (f"{self.shape[0]}x{self.shape[1]} pixels from ({r0:g}, {c0:g}) um "
                f"in steps of ({dr:g}, {dc:g}) um")


def resample_map(image: np.ndarray, source: MapGrid, target: MapGrid, offset_um=(0.0, 0.0),
                 order: int = 1) -> np.ndarray:
    """``image`` (on ``source``) seen on ``target`` with its content moved by ``offset_um``.

    The value at target pixel k is that of ``image`` at the position ``x_k - offset_um``
    (micrometres): interpolated (``order`` 1: bilinear, 0: nearest, for labels), zero outside
    the source map. With equal grids and ``order=1`` this is :func:`shift_bilinear` by
    ``offset_um / step_um`` pixels.
    """
    source_step = np.asarray(source.step_um)
    scale = np.asarray(target.step_um) / source_step
    offset = (np.asarray(target.origin_um) - np.asarray(offset_um, float)
              - np.asarray(source.origin_um)) / source_step
    image = np.asarray(image)
    if order == 0:
        # nearest neighbour by rounding half up, explicitly: labels must not be interpolated
        index = [np.floor(offset[d] + scale[d] * np.arange(target.shape[d]) + 0.5).astype(int)
                 for d in (0, 1)]
        inside = [(i >= 0) & (i < n) for i, n in zip(index, image.shape)]
        out = np.zeros(target.shape, dtype=image.dtype)
        rows, cols = np.flatnonzero(inside[0]), np.flatnonzero(inside[1])
        out[np.ix_(rows, cols)] = image[np.ix_(index[0][rows], index[1][cols])]
        return out
    return ndimage.affine_transform(np.asarray(image, np.float64), scale, offset,
                                    output_shape=target.shape, order=order, mode="grid-constant",
                                    cval=0.0)


def soft_outline(intensity: np.ndarray, fraction: float, blur_px: float = 1.0) -> np.ndarray:
    """``intensity`` clipped at ``fraction`` of its maximum (divided by it: 0 to 1), blurred by
    ``blur_px`` map pixels: what is registered between the maps of a series.

    Clipping makes the match indifferent to particles that brighten or dim (every lit particle
    counts alike above the clip) while the ramp below the clip keeps sub-pixel information;
    the blur makes the correlation interpolate well between pixels.
    """
    intensity = np.nan_to_num(np.asarray(intensity, np.float64), nan=0.0)
    top = float(intensity.max()) if intensity.size else 0.0
    if not top > 0:
        return np.zeros(intensity.shape)
    clipped = np.clip(intensity / (fraction * top), 0.0, 1.0)
    return ndimage.gaussian_filter(clipped, blur_px, mode="constant") if blur_px > 0 else clipped


class SampleFrameReference:
    """A running reference of the maps of a series, held in the sample frame, that each new
    map is registered against.

    The reference lives on a canvas: the grid of the map it was started from (whose sample
    had drifted by ``drift_um``), widened by ``margin_px`` on every side, in the frame of the
    sample as it lay at the series' first map (the *sample frame*). A map whose sample has
    drifted by ``drift_um`` shows at motor position x what the canvas holds at
    x - drift_um. Every registered map is moved into the sample frame and blended in with
    weight ``weight`` (an exponential running mean, kept as a weighted sum and a sum of
    weights): the reference follows particles that slowly change shape, yet its position is
    that of many maps, so the drift registered against it does not random-walk the way a
    chain of map-to-map shifts does. Maps on another grid are resampled in micrometres
    (:func:`resample_map`).

    State: two canvas-sized arrays, whatever the number of maps.
    """

    def __init__(self, grid: MapGrid, margin_px: int, weight: float, drift_um=(0.0, 0.0)) -> None:
        step = np.asarray(grid.step_um)
        shape = tuple(n + 2 * margin_px for n in grid.shape)
        # the canvas covers the field of ``grid`` as it lies in the sample frame
        origin = np.asarray(grid.origin_um) - np.asarray(drift_um, float) - margin_px * step
        self.grid = MapGrid(shape, origin, step)
        self.weight = float(weight)
        self._sum = np.zeros(shape)
        self._weights = np.zeros(shape)

    def add(self, image: np.ndarray, grid: MapGrid, drift_um) -> None:
        """Blend in a map (``image`` on ``grid``) whose sample has drifted by ``drift_um``."""
        minus = -np.asarray(drift_um, float)
        moved = resample_map(image, grid, self.grid, minus)
        field = self.weight * resample_map(np.ones(grid.shape), grid, self.grid, minus)
        self._sum = self._sum * (1.0 - field) + field * moved
        self._weights = self._weights * (1.0 - field) + field

    def seen_on(self, grid: MapGrid, drift_um) -> tuple[np.ndarray, np.ndarray]:
        """The reference as a map on ``grid`` of the sample drifted by ``drift_um`` would show
        it, and its coverage there (1 where the canvas holds data, 0 where it never did)."""
        covered = self._weights > _MIN_COVERAGE
        mean = np.divide(self._sum, self._weights, out=np.zeros_like(self._sum), where=covered)
        return (resample_map(mean, self.grid, grid, drift_um),
                resample_map(covered.astype(float), self.grid, grid, drift_um))

    def register(self, image: np.ndarray, grid: MapGrid, guess_um, passes: int = 3,
                 tolerance_px: float = 0.01) -> tuple[np.ndarray, float]:
        """Drift (micrometres, (row, col)) of the sample in ``image`` against the reference,
        and the normalised correlation at the match (0 when nothing overlaps).

        The reference is placed at the guess, the map (weighted by the reference's coverage,
        so that content the reference never saw does not pull) registered against it by
        :func:`cross_correlation_shift`, and this repeated from the result (``passes`` times
        at most, until the correction is below ``tolerance_px``): the coverage's edge then
        sits where the match put the sample, not where the guess did.
        """
        drift = np.asarray(guess_um, float).copy()
        step = np.asarray(grid.step_um)
        correlation = 0.0
        padded = correlation_shape(grid.shape)
        for _ in range(passes):
            reference, coverage = self.seen_on(grid, drift)
            norm = float(np.linalg.norm(reference))
            if not norm > 0:
                return drift, 0.0
            shift, correlation = cross_correlation_shift(padded_spectrum(reference, padded),
                                                         image * coverage, norm)
            # shift moves the map onto the reference: the sample sits -shift further along
            drift = drift - shift * step
            if np.max(np.abs(shift)) < tolerance_px:
                break
        return drift, correlation
