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
"""

from __future__ import annotations

import numpy as np
from scipy import fft as sfft

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
