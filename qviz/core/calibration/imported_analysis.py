"""Error of an imported Q/DQ pair: the float model's values under the pair's own parameters.

An imported pair's scale and zero point are used as they are (no clip range is chosen, and
none would reproduce them bit for bit). An activation is measured on its calibration
histogram as any other; a weight exactly, against the values the quantized model really
stores (its codes, dequantized), which differ from rounding the float weight when the tool
that made the model chose its codes itself (GPTQ, AWQ, quantization-aware training).
"""

from __future__ import annotations

import numpy as np

from qviz.core.calibration.methods import Method, MethodSpec
from qviz.core.calibration.metrics import TensorMetrics, histogram_metrics_of
from qviz.core.calibration.weights import WeightAnalysis, weight_analysis_of
from qviz.core.errors import QvizError
from qviz.core.quant.formats import NumberFormat
from qviz.core.quant.imported_params import ImportedParams
from qviz.core.quant.qparams import QParams
from qviz.core.stats.tensor_stats import TensorStats

__all__ = ["imported_activation", "imported_params", "imported_weight"]


def imported_params(spec: MethodSpec) -> ImportedParams:
    """The parameters an IMPORTED spec carries (QvizError when it carries none)."""
    if spec.method is not Method.IMPORTED or spec.imported is None:
        raise QvizError("imported method chosen but the model holds no parameters for it")
    return spec.imported


def imported_activation(
    stats: TensorStats, spec: MethodSpec, fmt: NumberFormat
) -> tuple[QParams, TensorMetrics]:
    """The pair's parameters and the error they give the activation's histogram."""
    qp = imported_params(spec).qparams
    if qp.axis is not None:
        raise QvizError(
            f"activation '{stats.name}': per-channel activation pairs are not supported"
        )
    return qp, histogram_metrics_of(stats, qp, fmt)


def imported_weight(
    w: np.ndarray, channel_axis: int | None, spec: MethodSpec, fmt: NumberFormat
) -> WeightAnalysis:
    """The pair's parameters and the exact error of the weight's stored values."""
    params = imported_params(spec)
    qp = params.qparams
    held = params.dequantized(fmt)
    if held is not None and held.shape != w.shape:
        raise QvizError(
            f"the imported weight has shape {list(held.shape)}, the float one {list(w.shape)}"
        )
    # Per-channel metrics follow the layer's output-channel axis; parameters laid out along
    # another axis have no per-channel meaning there.
    if channel_axis is not None and qp.axis is not None and qp.block_size is None:
        if qp.axis != channel_axis:
            channel_axis = None
    return weight_analysis_of(w.astype(np.float32, copy=False), channel_axis, qp, fmt, held)
