"""GPTQ: round a weight column by column, pushing each column's rounding error onto the
columns not yet rounded, in proportion to how the layer's inputs correlate (Frantar et al.
2023, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers").

The grid stays the one the weight's settings give (scale and zero point per tensor, channel or
group, from the original weight): GPTQ only chooses which grid point each value goes to, to
minimize ``‖(W_q - W) X‖²`` over the calibration data — ``tr(ΔW H ΔWᵀ)`` with ``H = XᵀX``, the
Gram matrix collected with the statistics. Columns are taken in order of decreasing ``H_jj``
("act order"), which the fixed grid makes free. Any integer width; every element is rounded
exactly as ONNX QuantizeLinear would round it at that scale, so quantizing the result with the
same parameters returns the chosen codes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qviz.core.errors import QvizError
from qviz.core.quant.formats import FormatKind, NumberFormat

__all__ = ["GptqResult", "gptq_round", "output_error"]

#: Dampening added to H's diagonal, as a fraction of its mean (GPTQ's percdamp).
DAMP = 0.01
_BLOCK = 128


@dataclass(frozen=True, eq=False)
class GptqResult:
    """``values``: the rounded weights, dequantized (float32, on the grid), rows x columns as
    given; ``dead``: columns whose input was always zero (set to zero)."""

    values: np.ndarray
    dead: int


def _round_column(w: np.ndarray, scale: np.ndarray, zp: np.ndarray, lo: float, hi: float
                  ) -> np.ndarray:
    """ONNX QuantizeLinear then DequantizeLinear of one column (float32 arithmetic)."""
    scaled = w.astype(np.float32) / scale
    q = np.rint(np.minimum(np.fmax(scaled, lo - zp), hi - zp)) + zp
    return ((q - zp) * scale).astype(np.float32)


def gptq_round(
    w: np.ndarray, h: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, fmt: NumberFormat
) -> GptqResult:
    """GPTQ-rounded ``w`` (rows = output channels, columns = inputs) against Gram ``h``
    (columns x columns), on the grid ``scale``/``zero_point`` (one per element of ``w``)."""
    if fmt.kind is not FormatKind.INT:
        raise QvizError(f"GPTQ rounds to integer grids; {fmt.label} is not one")
    cols = w.shape[1]
    if h.shape != (cols, cols):
        raise QvizError(
            f"the Gram matrix is {h.shape[0]} wide where the weight has {cols} inputs"
        )
    lo, hi = fmt.saturation_range
    W = w.astype(np.float64).copy()
    H = np.array(h, dtype=np.float64)
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    order = np.argsort(-np.diag(H), kind="stable")
    W, H = W[:, order], H[np.ix_(order, order)]
    S = np.ascontiguousarray(scale[:, order], dtype=np.float32)
    Z = np.ascontiguousarray(zero_point[:, order], dtype=np.float32)
    H[np.diag_indices(cols)] += DAMP * float(np.mean(np.diag(H)))
    try:
        # Upper Cholesky factor of H^-1: row i holds what column i's error costs later ones.
        np.linalg.cholesky(H)  # refuses a matrix that is not positive definite
        h_inv = np.linalg.inv(H)
        U = np.linalg.cholesky((h_inv + h_inv.T) / 2.0).T
    except np.linalg.LinAlgError:
        raise QvizError("GPTQ: the Gram matrix is not positive definite even when damped; "
                        "collect the statistics on more data") from None
    Q = np.zeros_like(W, dtype=np.float32)
    for start in range(0, cols, _BLOCK):
        end = min(start + _BLOCK, cols)
        block = W[:, start:end].copy()
        errors = np.zeros_like(block)
        u = U[start:end, start:end]
        for i in range(end - start):
            j = start + i
            q = _round_column(block[:, i], S[:, j], Z[:, j], lo, hi)
            Q[:, j] = q
            err = (block[:, i] - q) / u[i, i]
            block[:, i:] -= np.outer(err, u[i, i:])
            errors[:, i] = err
        W[:, end:] -= errors @ U[start:end, end:]
    values = np.empty_like(Q)
    values[:, order] = Q
    return GptqResult(values, int(dead.sum()))


def output_error(delta: np.ndarray, h: np.ndarray, n_rows: int) -> float:
    """``tr(ΔW H ΔWᵀ) / (rows of data x outputs)``: the mean squared error the weight error
    ``delta`` (outputs x inputs) adds at the layer's output over the calibration data."""
    d = delta.astype(np.float64)
    total = float(((d @ h) * d).sum())
    return total / max(n_rows * d.shape[0], 1)
