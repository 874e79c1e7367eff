"""The weight terms of SmoothQuant's error estimate: for a candidate scaling ``s`` of a weight's
input channels, each input channel's squared rounding error of ``s W`` (``s W`` quantized as
configured) and the squared norm of its row of ``s W``.

The alpha search asks this 11 to 13 times per activation for every weight reading it — for a
decoder, nearly every weight of the model about a dozen times. In NumPy that is a float64 copy
of ``s W``, a float32 one, its quantized and dequantized copies and their difference in
float64: five passes and several whole-weight temporaries per alpha. The common weight settings
(INT formats, per-tensor or per-channel, MinMax or a manual range) run instead as two compiled
passes over the weight, which allocate nothing its size: the extents of ``s W`` per output
channel (and the row norms), then the rounding error of every element, summed per input
channel. The grid between them comes from those extents through the same NumPy code the
weight analysis uses, so it is the grid ONNX Runtime would get, bit for bit.

The arithmetic is the NumPy path's, element for element: ``float32(float64(w) * s_c)``, a
float32 division by the scale, clamped to the storage range with NaN to its low end, rounded
half to even, times the scale in float32, the error squared in float64 (see
:mod:`qviz.core.quant.quantize`). Only the order of the float64 sums differs, so the results
agree to float64 rounding. Everything else (FP8, NF4, per-group, methods that need a histogram)
takes the NumPy path, which the tests hold the compiled one to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numba
import numpy as np

from qviz.core.calibration.config import TensorConfig
from qviz.core.calibration.methods import Method
from qviz.core.quant.formats import FormatKind, PerAxis, PerTensor
from qviz.core.quant.quantize import fake_quantize
from qviz.core.transforms.weight_grid import qparams_from_extents, weight_qparams

__all__ = ["WeightTerms", "compiled_applies", "scaled_weight_terms"]


# The float64 sums may be reassociated (LLVM then keeps several partial sums and vectorizes
# the loop; without it one add chain bounds the speed). No other flag: the per-element
# arithmetic stays IEEE, as the NumPy path's is.
_SUMS = {"reassoc"}


@dataclass(frozen=True, eq=False)
class WeightTerms:
    """Per input channel of ``s W``: the squared rounding error summed over its row
    (``errors``; zeros when the weight stays float) and the squared norm of the row
    (``row_norms``, of the float64 product ``s W``). Both float64, one value per channel."""

    errors: np.ndarray
    row_norms: np.ndarray


@numba.njit(cache=True, nogil=True, boundscheck=False, fastmath=_SUMS,
            error_model="numpy")
def _extents(w: Any, s: Any, lo: Any, hi: Any, norms: Any) -> bool:  # pragma: no cover
    """Per (p, q) the smallest and largest ``float32(w[p, c, q] * s[c])`` over ``c``, and per
    ``c`` the sum of ``(w * s)²`` (float64). False when a value is NaN."""
    n_p, n_c, n_q = w.shape
    finite = True
    for p in range(n_p):
        for c in range(n_c):
            sc = s[c]
            acc = 0.0
            for q in range(n_q):
                v = np.float64(w[p, c, q]) * sc
                x = np.float32(v)
                acc += v * v
                if x != x:
                    finite = False
                lo[p, q] = min(lo[p, q], x)
                hi[p, q] = max(hi[p, q], x)
            norms[c] += acc
    return finite


@numba.njit(cache=True, nogil=True, boundscheck=False, fastmath=_SUMS,
            error_model="numpy")
def _rounding_error(
    w: Any, s: Any, scale: Any, zero: Any, type_min: Any, type_max: Any, out: Any
) -> None:  # pragma: no cover
    """Per ``c`` the sum over its row of ``(fake_quantize(x) - x)²`` with ``x = float32(w *
    s[c])``, ``scale`` and ``zero`` (float32, per (p, q)) the grid, ``type_min..type_max``
    (float32) the storage range: QuantizeLinear then DequantizeLinear as onnxruntime does."""
    n_p, n_c, n_q = w.shape
    for p in range(n_p):
        for c in range(n_c):
            sc = s[c]
            acc = 0.0
            for q in range(n_q):
                x = np.float32(np.float64(w[p, c, q]) * sc)
                d = scale[p, q]
                z = zero[p, q]
                t = x / d
                low = type_min - z
                high = type_max - z
                if not t >= low:  # NaN too: onnxruntime returns the type's minimum
                    t = low
                if t > high:
                    t = high
                e = np.float64(np.rint(t) * d) - np.float64(x)
                acc += e * e
            out[c] += acc


@dataclass(frozen=True)
class _Grid:
    """Where a weight's grid varies: along ``axis`` (per channel) or nowhere (None: per
    tensor)."""

    axis: int | None


def _compiled_grid(
    w: np.ndarray, axis: int, cfg: TensorConfig, channel_axis: int | None
) -> _Grid | None:
    """The grid the compiled passes compute for these settings, or None when they do not
    cover them."""
    fmt, gran = cfg.fmt, cfg.granularity
    if w.ndim == 0 or fmt.kind is not FormatKind.INT or fmt.block_size is not None:
        return None
    if cfg.spec.method not in (Method.MINMAX, Method.MANUAL):
        return None
    if isinstance(gran, PerTensor):
        return _Grid(None)
    if not isinstance(gran, PerAxis):
        return None
    grid_axis = channel_axis if gran.axis is None else gran.axis % w.ndim
    # A grid along the scaled axis itself (an odd per-axis choice) is left to NumPy.
    if grid_axis is None or grid_axis == axis % w.ndim:
        return None
    return _Grid(grid_axis)


def compiled_applies(
    w: np.ndarray, axis: int, cfg: TensorConfig, layer_axes: tuple[int | None, int | None]
) -> bool:
    """Whether :func:`scaled_weight_terms` computes these settings' terms compiled."""
    if not cfg.quantize:
        return w.ndim > 0
    return _compiled_grid(w, axis, cfg, layer_axes[0]) is not None


def _as_pcq(w: np.ndarray, axis: int) -> np.ndarray:
    shape = w.shape
    p = int(np.prod(shape[:axis], dtype=np.int64))
    q = int(np.prod(shape[axis + 1:], dtype=np.int64))
    return np.ascontiguousarray(w, dtype=np.float32).reshape(p, shape[axis], q)


def _compiled(
    w: np.ndarray, axis: int, s: np.ndarray, cfg: TensorConfig, quant_axis: int | None
) -> WeightTerms | None:
    """The terms from the two compiled passes; None when ``s W`` holds NaN (the NumPy path
    then says what is wrong)."""
    w3 = _as_pcq(w, axis)
    n_p, n_c, n_q = w3.shape
    s64 = np.ascontiguousarray(s, dtype=np.float64).reshape(-1)
    lo = np.full((n_p, n_q), np.inf, dtype=np.float32)
    hi = np.full((n_p, n_q), -np.inf, dtype=np.float32)
    norms = np.zeros(n_c)
    if not _extents(w3, s64, lo, hi, norms):
        return None
    errors = np.zeros(n_c)
    if not cfg.quantize:
        return WeightTerms(errors, norms)
    pq = w.shape[:axis] + w.shape[axis + 1:]
    if quant_axis is None:
        vmin, vmax = np.array([lo.min()]), np.array([hi.max()])
        qp = qparams_from_extents(vmin, vmax, cfg, None)
        scale = np.full((n_p, n_q), qp.scale, dtype=np.float32)
        zero = np.full((n_p, n_q), qp.zero_point, dtype=np.float32)
    else:
        a = quant_axis - (quant_axis > axis)
        others = tuple(d for d in range(len(pq)) if d != a)
        vmin = lo.reshape(pq).min(axis=others)
        vmax = hi.reshape(pq).max(axis=others)
        qp = qparams_from_extents(vmin, vmax, cfg, quant_axis)
        layout = [1] * len(pq)
        layout[a] = pq[a]
        scale = np.ascontiguousarray(np.broadcast_to(qp.scale.reshape(layout), pq),
                                     dtype=np.float32).reshape(n_p, n_q)
        zero = np.ascontiguousarray(
            np.broadcast_to(qp.zero_point.astype(np.float32).reshape(layout), pq)
        ).reshape(n_p, n_q)
    type_min, type_max = cfg.fmt.saturation_range
    _rounding_error(w3, s64, scale, zero, np.float32(type_min), np.float32(type_max), errors)
    return WeightTerms(errors, norms)


def numpy_weight_terms(
    w: np.ndarray, axis: int, s: np.ndarray, cfg: TensorConfig,
    layer_axes: tuple[int | None, int | None],
) -> WeightTerms:
    """The terms in NumPy, any settings (the reference the compiled path is held to)."""
    shape = [1] * w.ndim
    shape[axis] = s.size
    ws = np.asarray(w, dtype=np.float64) * np.asarray(s, dtype=np.float64).reshape(shape)
    rows = np.moveaxis(ws, axis, 0).reshape(s.size, -1)
    row_norms = (rows * rows).sum(axis=1)
    if not cfg.quantize:
        return WeightTerms(np.zeros(s.size), row_norms)
    ws32 = ws.astype(np.float32)
    del ws, rows
    channel_axis, reduction_axis = layer_axes
    qp = weight_qparams(ws32, channel_axis, reduction_axis, cfg)
    err = fake_quantize(ws32, qp, cfg.fmt).astype(np.float64) - ws32
    moved = np.moveaxis(err, axis, 0).reshape(s.size, -1)
    return WeightTerms((moved * moved).sum(axis=1), row_norms)


def scaled_weight_terms(
    w: np.ndarray, axis: int, s: np.ndarray, cfg: TensorConfig,
    layer_axes: tuple[int | None, int | None],
) -> WeightTerms:
    """The terms of ``s W`` (``s`` along ``axis`` of ``w``) under ``cfg`` (see the module
    docstring): compiled where :func:`compiled_applies`, else in NumPy."""
    if compiled_applies(w, axis, cfg, layer_axes):
        grid = _compiled_grid(w, axis, cfg, layer_axes[0]) if cfg.quantize else _Grid(None)
        assert grid is not None
        terms = _compiled(w, axis % w.ndim, s, cfg, grid.axis)
        if terms is not None:
            return terms
    return numpy_weight_terms(w, axis, s, cfg, layer_axes)
