"""Where a chosen clip range really lands, and the grid of values it quantizes to.

The layer view draws these: the band of a histogram is the *effective* range (what
``compute_qparams`` maps onto ``[qmin, qmax]``), not the raw range a method chose, so the band,
the error-curve markers and the metrics panel always agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qviz.core.quant.formats import FormatKind, NumberFormat
from qviz.core.quant.qparams import QParams, compute_qparams
from qviz.core.quant.quantize import quantization_levels


def effective_range(lo: float, hi: float, fmt: NumberFormat) -> tuple[float, float]:
    """The range the quantizer really covers for a chosen (lo, hi): widened to include 0,
    symmetrised for symmetric formats (a symmetric int8 grid over a ReLU output really spans
    [-c, c]), with the zero point rounded. These are the numbers ``TensorMetrics.lo/hi``
    report."""
    qp = compute_qparams(lo, hi, fmt)
    scale = float(qp.scale)
    zp = float(np.asarray(qp.zero_point).astype(np.float64))
    return (fmt.qmin - zp) * scale, (fmt.qmax - zp) * scale


def step_size(levels: np.ndarray, fmt: NumberFormat, scale: float) -> float:
    """Step between levels: the scale for INT, the largest gap for FP8 / NF4 (non-uniform)."""
    if fmt.kind is FormatKind.INT or levels.size < 2:
        return float(scale)
    return float(np.max(np.diff(levels)))


@dataclass(frozen=True)
class GridInfo:
    """One per-tensor quantizer as the histogram describes it."""

    scale: float
    zero_point: float
    step: float
    levels: np.ndarray  # every representable value, sorted


def grid_info(qp: QParams, fmt: NumberFormat) -> GridInfo:
    scale = float(np.asarray(qp.scale).reshape(-1)[0])
    zp = float(np.asarray(qp.zero_point).astype(np.float64).reshape(-1)[0])
    levels = np.asarray(quantization_levels(scale, zp, fmt), dtype=np.float64)
    return GridInfo(scale, zp, step_size(levels, fmt, scale), levels)


def curve_x(lo: float, hi: float, fmt: NumberFormat) -> float:
    """Where a range sits on the error curve's x axis: its effective upper bound (= |clip|
    for symmetric formats)."""
    return effective_range(lo, hi, fmt)[1]


def range_grid(lo: float, hi: float, fmt: NumberFormat) -> GridInfo:
    """The grid of one per-tensor range (what a dragged band previews)."""
    return grid_info(compute_qparams(lo, hi, fmt), fmt)
