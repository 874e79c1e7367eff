"""The MSE method: the clip that minimises the expected squared error of the real quantizer.

The histogram's values are represented by sub-bin sample points; every candidate range is
applied with ``fake_quantize`` in the tensor's own format, so FP8 and NF4 work as INT does.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from qviz.core.quant.formats import NumberFormat
from qviz.core.quant.qparams import compute_qparams
from qviz.core.quant.quantize import fake_quantize
from qviz.core.stats.histogram import HistogramRows

__all__ = ["mse_ranges", "range_mse", "scaled_ranges", "search_mse_ranges"]

# Elements (rows x candidates x points) fake-quantized per chunk: bounds temporaries to
# ~100 MB whatever the number of channels.
_MSE_CHUNK = 1 << 22
# MSE search: a coarse grid over (0, 1] of the full range, then a fine grid around the best.
_MSE_COARSE = 64
_MSE_FINE = 64
# Sub-bin sample points per histogram bin for the MSE search.
_MSE_PER_BIN = 4


def mse_ranges(
    rows: HistogramRows, lo_d: np.ndarray, hi_d: np.ndarray, fmt: NumberFormat
) -> tuple[np.ndarray, np.ndarray]:
    """Per histogram row, the range :func:`search_mse_ranges` picks over its sample points
    (``lo_d``/``hi_d`` (R,): each row's exact data extent)."""
    points, weights = rows.sample_points(_MSE_PER_BIN)
    return search_mse_ranges(points, weights, lo_d, hi_d, fmt)


def scaled_ranges(
    clips: ArrayLike, vmin: ArrayLike, vmax: ArrayLike, fmt: NumberFormat
) -> tuple[np.ndarray, np.ndarray]:
    """Ranges for clip magnitudes ``c`` (the largest ``|x|`` the range keeps).

    Symmetric formats: ``(-c, c)``. Asymmetric: the data range ``[vmin, vmax]`` scaled by
    ``c / max(|vmin|, |vmax|)``, so the clip is the upper bound of data whose larger side is
    positive and the lower bound is scaled proportionally when ``vmin < 0`` (a one-sided
    ReLU range stays ``[0, c]`` after compute_qparams widens it to zero). Broadcasts ``clips``
    (..., K) against ``vmin``/``vmax`` (..., 1).
    """
    c = np.asarray(clips, dtype=np.float64)
    if fmt.symmetric:
        return -c, c.copy()
    lo_d = np.asarray(vmin, dtype=np.float64)
    hi_d = np.asarray(vmax, dtype=np.float64)
    amax = np.maximum(np.abs(lo_d), np.abs(hi_d))
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(amax > 0, c / np.where(amax > 0, amax, 1.0), 0.0)
    return s * lo_d, s * hi_d


def range_mse(
    points: ArrayLike, weights: ArrayLike, lo: ArrayLike, hi: ArrayLike, fmt: NumberFormat
) -> np.ndarray:
    """Weighted mean squared error of ``fake_quantize`` under ranges ``(lo, hi)``.

    ``points``/``weights`` are (R, N) (or (N,)); ``lo``/``hi`` (R, K) (or (K,)): every range
    of row ``r`` is applied to that row's points. One per-axis ``compute_qparams`` and one
    ``fake_quantize`` per chunk evaluate all candidates; errors are taken in float64 so the
    square of an error near 1e30 cannot overflow. Returns (R, K) (or (K,)).
    """
    x = np.asarray(points, dtype=np.float64)
    single = x.ndim == 1
    x = np.atleast_2d(x).astype(np.float32)  # activations are float32: quantize those values
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    lo_a = np.atleast_2d(np.asarray(lo, dtype=np.float64))
    hi_a = np.atleast_2d(np.asarray(hi, dtype=np.float64))
    lo_a, hi_a = np.broadcast_arrays(lo_a, hi_a)
    lo_a = np.broadcast_to(lo_a, (x.shape[0], lo_a.shape[1]))
    hi_a = np.broadcast_to(hi_a, (x.shape[0], hi_a.shape[1]))
    n_rows, n_pts = x.shape
    k = lo_a.shape[1]
    wsum = w.sum(axis=1)
    out = np.zeros((n_rows, k))
    if n_pts == 0 or k == 0:
        return out[0] if single else out
    x64 = x.astype(np.float64)
    rows_per_chunk = max(1, _MSE_CHUNK // (k * n_pts))
    cand_per_chunk = k if rows_per_chunk > 1 else max(1, _MSE_CHUNK // n_pts)
    for r0 in range(0, n_rows, rows_per_chunk):
        r1 = min(n_rows, r0 + rows_per_chunk)
        for k0 in range(0, k, cand_per_chunk):
            k1 = min(k, k0 + cand_per_chunk)
            qp = compute_qparams(
                lo_a[r0:r1, k0:k1].ravel(), hi_a[r0:r1, k0:k1].ravel(), fmt, axis=0
            )
            block = np.repeat(x[r0:r1], k1 - k0, axis=0)  # (rows * cands, N)
            err = fake_quantize(block, qp, fmt).astype(np.float64)
            err -= np.repeat(x64[r0:r1], k1 - k0, axis=0)
            err *= err
            sq = err.reshape(r1 - r0, k1 - k0, n_pts)
            out[r0:r1, k0:k1] = np.einsum("rkn,rn->rk", sq, w[r0:r1])
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(wsum[:, None] > 0, out / wsum[:, None], 0.0)
    return out[0] if single else out


def search_mse_ranges(
    points: ArrayLike,
    weights: ArrayLike,
    vmin: ArrayLike,
    vmax: ArrayLike,
    fmt: NumberFormat,
    coarse: int = _MSE_COARSE,
    fine: int = _MSE_FINE,
) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the :func:`scaled_ranges` range minimising :func:`range_mse`.

    The clip ``c = s * max(|vmin|, |vmax|)`` is searched over ``s`` in (0, 1]: a ``coarse``
    grid (64), then ``fine`` (64) points spanning the two grid cells around the best
    (resolution 1/2048 of the full range by default). On ties the largest clip wins (less
    clipping for the same error, as TensorRT's last-argmin). Expected squared error rather
    than KL is the criterion of NVIDIA pytorch-quantization's "mse" calibrator and of
    PyTorch's ``HistogramObserver`` (``_compute_quantization_error``); here the error is that
    of the real format, so FP8 and NF4 work too.
    """
    x = np.atleast_2d(np.asarray(points, dtype=np.float64))
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    lo_d = np.asarray(vmin, dtype=np.float64).reshape(-1, 1)
    hi_d = np.asarray(vmax, dtype=np.float64).reshape(-1, 1)
    amax = np.maximum(np.abs(lo_d), np.abs(hi_d))
    grid = np.arange(1, coarse + 1) / coarse
    grid = np.broadcast_to(grid, (x.shape[0], grid.size))
    s_best = _best_fraction(x, w, grid, amax, lo_d, hi_d, fmt)
    cell = 1.0 / coarse
    around = s_best[:, None] + (np.arange(fine + 1) / fine * 2.0 - 1.0) * cell
    around = np.clip(around, cell / fine, 1.0)
    s_best = _best_fraction(x, w, around, amax, lo_d, hi_d, fmt)
    lo, hi = scaled_ranges(s_best[:, None] * amax, lo_d, hi_d, fmt)
    return lo[:, 0], hi[:, 0]


def _best_fraction(
    x: np.ndarray,
    w: np.ndarray,
    fractions: np.ndarray,
    amax: np.ndarray,
    lo_d: np.ndarray,
    hi_d: np.ndarray,
    fmt: NumberFormat,
) -> np.ndarray:
    lo, hi = scaled_ranges(fractions * amax, lo_d, hi_d, fmt)
    mse = range_mse(x, w, lo, hi, fmt)
    # Last argmin: the largest clip among equal errors.
    best = mse.shape[1] - 1 - np.argmin(mse[:, ::-1], axis=1)
    return fractions[np.arange(fractions.shape[0]), best]
