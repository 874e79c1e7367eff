"""GPTQ rounding and bias correction of one weight, on top of its plain analysis.

Both keep the weight's grid (the qparams its settings give). GPTQ changes which grid point
each value goes to (:mod:`qviz.core.transforms.gptq`); bias correction removes each output
channel's expected shift ``E[x]ᵀ (W_q - W)`` from the layer's bias, with ``E[x]`` the input's
per-channel means from the statistics (Nagel et al. 2019). What they did is an
:class:`AppliedWeight` carried by the weight's result, which the Q/DQ builder writes into the
graph (the rounded weights, the corrected bias) and the layer view shows beside the plain
rounding's numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from qviz.core.calibration.config import TensorConfig
from qviz.core.calibration.metrics import TensorMetrics, sqnr_db
from qviz.core.calibration.weights import ChannelMetrics, WeightAnalysis
from qviz.core.errors import QvizError
from qviz.core.model.layers import Layer
from qviz.core.model.loading import LoadedModel
from qviz.core.quant.quantize import fake_quantize
from qviz.core.stats.collect import CalibrationStats
from qviz.core.stats.gram import GramStats
from qviz.core.transforms.bias import BiasSite, bias_site
from qviz.core.transforms.gptq import gptq_round, output_error
from qviz.core.transforms.weight_grid import expand_qparams

__all__ = ["AppliedWeight", "apply_weight_transforms"]


@dataclass(frozen=True, eq=False)
class AppliedWeight:
    """What GPTQ and bias correction did to one weight.

    ``values``: GPTQ's rounded weights (dequantized float32 on the grid, the weight's shape),
    None without GPTQ. ``bias``: the layer's corrected bias (one per output channel) to store
    at ``bias_site``, None without bias correction. ``plain_metrics``: the weight's error
    with plain rounding (GPTQ trades a larger weight error for a smaller output error).
    ``output_sqnr_db``: the layer output's SQNR against weight quantization, (plain, with the
    transforms), estimated from the Gram matrix when there is one (``estimate`` says which),
    else from the input's per-channel mean squares. ``mean_shift_rms``: the RMS over output
    channels of the expected output shift, (plain, with the transforms).
    """

    values: np.ndarray | None
    bias: np.ndarray | None
    bias_site: BiasSite | None
    plain_metrics: TensorMetrics
    plain_channel_sqnr: np.ndarray | None
    output_sqnr_db: tuple[float, float]
    mean_shift_rms: tuple[float, float]
    estimate: str


def _rows(a: np.ndarray, axis: int) -> np.ndarray:
    """(output channels, inputs) view of a weight-shaped array."""
    moved = np.moveaxis(a, axis, 0)
    return moved.reshape(moved.shape[0], -1)


def _unrows(rows: np.ndarray, like: np.ndarray, axis: int) -> np.ndarray:
    moved_shape = np.moveaxis(like, axis, 0).shape
    return np.moveaxis(rows.reshape(moved_shape), 0, axis)


def apply_weight_transforms(
    model: LoadedModel,
    stats: CalibrationStats | None,
    layer: Layer,
    w: np.ndarray,
    analysis: WeightAnalysis,
    cfg: TensorConfig,
) -> tuple[TensorMetrics, ChannelMetrics | None, AppliedWeight]:
    """The weight's metrics and channel metrics with GPTQ and bias correction, and what they
    did. QvizError (one line) when the statistics lack what they need or the layer cannot
    take them."""
    t = cfg.transforms
    what = " and ".join(n for n, on in (("GPTQ", t.gptq), ("bias correction", t.bias_correction))
                        if on)
    if stats is None:
        raise QvizError(f"{what} needs calibration statistics: calibrate first")
    if layer.channel_axis is None or not layer.activations or w.ndim < 2:
        raise QvizError(f"{what} needs a layer with output channels")
    if layer.op_type == "MatMul" and w.ndim != 2:
        raise QvizError(f"{what} does not take a batched MatMul weight ({w.ndim}-D)")
    axis = layer.channel_axis
    qp = analysis.qparams
    wm = _rows(w.astype(np.float64), axis)
    plain = _rows(fake_quantize(w, qp, cfg.fmt).astype(np.float64), axis)
    gram = stats.grams.get(layer.weight or "")
    values = None
    quantized = plain
    if t.gptq:
        if gram is None:
            raise QvizError(f"GPTQ on '{layer.name}' needs the Gram matrix of its input: "
                            "recollect with Gram matrices to use this (qviz collect --gram; in "
                            "the app, Run ▸ Recalibrate with Gram Matrices)")
        if gram.dim != wm.shape[1]:
            raise QvizError(f"GPTQ on '{layer.name}': its Gram matrix is {gram.dim} wide, the "
                            f"weight has {wm.shape[1]} inputs per output")
        scale, zp = expand_qparams(qp, w.shape)
        result = gptq_round(wm, gram.matrix, _rows(np.asarray(scale, np.float32), axis),
                            _rows(np.asarray(zp, np.float32), axis), cfg.fmt)
        quantized = result.values.astype(np.float64)
        values = _unrows(result.values, w, axis).astype(np.float32)
    act = stats.tensors.get(layer.activations[0])
    moments = act.moments if act is not None else None
    mean = mean_sq = None
    if moments is not None and wm.shape[1] % moments.channels == 0:
        kernel = wm.shape[1] // moments.channels
        mean, mean_sq = np.repeat(moments.mean, kernel), np.repeat(moments.mean_sq, kernel)
    bias = site = None
    shift_plain = shift_after = math.nan
    if mean is not None:
        shift_plain = _rms((plain - wm) @ mean)
        shift_after = _rms((quantized - wm) @ mean)
    if t.bias_correction:
        if mean is None:
            raise QvizError(f"bias correction on '{layer.name}' needs its input's per-channel "
                            "means: recollect to use this")
        site, current = bias_site(model, layer, wm.shape[0])
        shift = (quantized - wm) @ mean
        bias = current - shift / site.scale
        shift_after = 0.0
    before, after, estimate = _output_sqnr(wm, plain, quantized, gram, mean, mean_sq,
                                           t.bias_correction)
    metrics, channel = analysis.metrics, analysis.channel_metrics
    if values is not None:
        metrics, channel = _rounded_metrics(w, values, metrics, channel, axis)
    applied = AppliedWeight(
        values, None if bias is None else bias.astype(np.float32), site, analysis.metrics,
        None if analysis.channel_metrics is None else analysis.channel_metrics.sqnr_db,
        (before, after), (shift_plain, shift_after), estimate,
    )
    return metrics, channel, applied


def _rms(v: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(v)))) if v.size else 0.0


def _output_sqnr(
    wm: np.ndarray, plain: np.ndarray, quantized: np.ndarray, gram: GramStats | None,
    mean: np.ndarray | None, mean_sq: np.ndarray | None, corrected: bool,
) -> tuple[float, float, str]:
    """Layer output SQNR against weight error: plain rounding, and with the transforms."""
    if gram is not None and gram.dim == wm.shape[1]:
        h, n = gram.matrix, gram.rows
        signal = output_error(wm, h, n)
        plain_err = output_error(plain - wm, h, n)
        after_err = output_error(quantized - wm, h, n)
        if corrected and mean is not None:
            after_err -= _rms((quantized - wm) @ mean) ** 2
        estimate = "Gram matrix"
    elif mean_sq is not None:
        signal = float(((wm * wm) @ mean_sq).sum()) / wm.shape[0]
        plain_err = float((((plain - wm) ** 2) @ mean_sq).sum()) / wm.shape[0]
        after_err = float((((quantized - wm) ** 2) @ mean_sq).sum()) / wm.shape[0]
        if corrected and mean is not None:
            after_err -= _rms((quantized - wm) @ mean) ** 2
        estimate = "per-channel mean squares"
    else:
        return math.nan, math.nan, "none"
    return (float(sqnr_db(signal, max(plain_err, 0.0))),
            float(sqnr_db(signal, max(after_err, 0.0))), estimate)


def _rounded_metrics(
    w: np.ndarray, values: np.ndarray, plain: TensorMetrics, channel: ChannelMetrics | None,
    axis: int,
) -> tuple[TensorMetrics, ChannelMetrics | None]:
    """The plain metrics with the error of GPTQ's values instead (same grid, same ranges)."""
    x = w.astype(np.float64)
    q = values.astype(np.float64)
    err = q - x
    sq_x, sq_e = float((x * x).sum()), float((err * err).sum())
    sq_q, dot = float((q * q).sum()), float((x * q).sum())
    cosine = 1.0 if sq_x == 0 and sq_q == 0 else (
        0.0 if sq_x == 0 or sq_q == 0 else max(-1.0, min(1.0, dot / math.sqrt(sq_x * sq_q))))
    metrics = replace(plain, mse=sq_e / max(x.size, 1), sqnr_db=float(sqnr_db(sq_x, sq_e)),
                      max_abs_error=float(np.abs(err).max()), cosine=cosine)
    if channel is None:
        return metrics, None
    others = tuple(d for d in range(w.ndim) if d != axis)
    per = sqnr_db((x * x).sum(axis=others), (err * err).sum(axis=others))
    return metrics, replace(channel, sqnr_db=np.asarray(per, dtype=np.float64))
