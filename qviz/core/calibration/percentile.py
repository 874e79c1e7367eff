"""The PERCENTILE method: onnxruntime's ``HistogramCalibrater`` percentile rule, per row
(see :func:`qviz.core.calibration.methods.choose_row_ranges` for the rule and the one
deliberate deviation on one-sided data)."""

from __future__ import annotations

import numpy as np

from qviz.core.quant.formats import NumberFormat
from qviz.core.stats.histogram import HistogramRows

__all__ = ["percentile_ranges"]


def percentile_ranges(
    rows: HistogramRows,
    lo_d: np.ndarray,
    hi_d: np.ndarray,
    amax: np.ndarray,
    q: float,
    fmt: NumberFormat,
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``q``-quantile range (``q`` in (0, 1]): of ``|x|`` for symmetric formats,
    tails cut from both sides (or the open one) for asymmetric ones."""
    if fmt.symmetric:
        t = rows.abs_rows(amax).quantile(q)
        return -t, t
    cut = 1.0 - q
    upper_only = lo_d >= 0.0
    lower_only = (hi_d <= 0.0) & ~upper_only
    q_lo = np.where(lower_only, cut, np.where(upper_only, 0.0, cut / 2.0))
    q_hi = np.where(upper_only, q, np.where(lower_only, 1.0, 1.0 - cut / 2.0))
    lo = np.where(upper_only, lo_d, rows.quantile(q_lo))
    hi = np.where(lower_only, hi_d, rows.quantile(q_hi))
    return lo, hi
