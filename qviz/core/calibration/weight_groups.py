"""Per-group analysis of a large weight, a slice of channels at a time.

A block of 32..128 values has its own scale, so per-group qparams and their error need the
values themselves (no histogram stands for them). For a large 2-D weight (a MatMul or Gemm
projection) :func:`analyze_weight_groups` does what
:func:`qviz.core.calibration.weights.analyze_weight` does — the same qparams, bit for bit, and
the same exact metrics — on slices of output channels, so that a memory-mapped weight is read
once and the temporaries stay the size of one slice, whatever the weight. Blocks lie along the
reduction axis, so a slice of channels holds whole blocks.
"""

from __future__ import annotations

import math

import numpy as np

from qviz.core.calibration.methods import MethodSpec
from qviz.core.calibration.metrics import TensorMetrics, clip_bounds, sqnr_db
from qviz.core.calibration.weights import (
    ChannelMetrics,
    WeightAnalysis,
    analyze_weight,
    group_qparams,
)
from qviz.core.quant.formats import FormatKind, NumberFormat, PerGroup
from qviz.core.quant.qparams import QParams
from qviz.core.quant.quantize import fake_quantize, quantization_levels

__all__ = ["analyze_weight_groups"]

#: Values per slice (a few tens of MB of float64 temporaries).
SLICE_VALUES = 1 << 22


def analyze_weight_groups(
    w: np.ndarray,
    channel_axis: int,
    reduction_axis: int,
    spec: MethodSpec,
    granularity: PerGroup,
    fmt: NumberFormat,
) -> WeightAnalysis:
    """:func:`analyze_weight` for ``granularity`` per group on a 2-D weight whose channel and
    reduction axes differ, slice of channels by slice of channels."""
    arr = np.asarray(w)
    if arr.ndim != 2 or channel_axis % 2 == reduction_axis % 2:
        return analyze_weight(arr, channel_axis, reduction_axis, spec, granularity, fmt)
    ch, red = channel_axis % 2, reduction_axis % 2
    n_channels = arr.shape[ch]
    step = max(1, SLICE_VALUES // max(arr.shape[red], 1))
    if step >= n_channels:
        return analyze_weight(arr, ch, red, spec, granularity, fmt)
    scales, zps = [], []
    sums = np.zeros(6)  # sse, signal, sum x*q, sum q^2, clipped, count
    worst = 0.0
    c_signal, c_noise = np.zeros(n_channels), np.zeros(n_channels)
    c_min, c_max = np.zeros(n_channels), np.zeros(n_channels)
    for start in range(0, n_channels, step):
        stop = min(n_channels, start + step)
        index = [slice(None), slice(None)]
        index[ch] = slice(start, stop)
        part = np.asarray(arr[tuple(index)], dtype=np.float32)
        # The slice's qparams are those of the whole weight for these channels (each block
        # is within one channel); only they are used from this call.
        qp = group_qparams(part, ch, red, spec, granularity, fmt)
        scales.append(qp.scale)
        zps.append(qp.zero_point)
        x = part.astype(np.float64)
        q = fake_quantize(part, qp, fmt).astype(np.float64)
        err = q - x
        others = red
        sig = (x * x).sum(axis=others)
        noise = (err * err).sum(axis=others)
        c_signal[start:stop] = sig
        c_noise[start:stop] = noise
        c_min[start:stop] = x.min(axis=others)
        c_max[start:stop] = x.max(axis=others)
        lo_b, hi_b = clip_bounds(qp, fmt)
        block_of = np.arange(part.shape[red]) // granularity.group_size
        lo_e = np.take(lo_b, block_of, axis=red)
        hi_e = np.take(hi_b, block_of, axis=red)
        clipped = float(np.count_nonzero((part < lo_e) | (part > hi_e)))
        sums += np.array([noise.sum(), sig.sum(), (x * q).sum(), (q * q).sum(), clipped,
                          float(part.size)])
        worst = max(worst, float(np.abs(err).max()))
    qp = QParams(np.concatenate(scales, axis=ch), np.concatenate(zps, axis=ch), axis=red,
                 block_size=granularity.group_size)
    sse, signal, xq, q2, n_clipped, n = (float(v) for v in sums)
    scale = qp.scale.astype(np.float64)
    zp = qp.zero_point.astype(np.float64)
    if fmt.kind is FormatKind.INT:
        unit = 1.0
    else:
        levels = quantization_levels(1.0, np.zeros((), dtype=fmt.storage_dtype), fmt)
        unit = float(np.diff(levels).max())
    if signal <= 0.0 and q2 <= 0.0:
        cosine = 1.0
    elif signal <= 0.0 or q2 <= 0.0:
        cosine = 0.0
    else:
        cosine = float(np.clip(xq / math.sqrt(signal * q2), -1.0, 1.0))
    eff_lo = (fmt.qmin - zp) * scale
    eff_hi = (fmt.qmax - zp) * scale
    metrics = TensorMetrics(
        lo=eff_lo,
        hi=eff_hi,
        scale=qp.scale,
        zero_point=qp.zero_point,
        step=scale * unit,
        clipped_fraction=n_clipped / n,
        mse=float(sse / n),
        sqnr_db=float(sqnr_db(signal, sse)),
        max_abs_error=worst,
        cosine=cosine,
    )
    channel = ChannelMetrics(
        min=c_min,
        max=c_max,
        lo=eff_lo.min(axis=red),
        hi=eff_hi.max(axis=red),
        sqnr_db=sqnr_db(c_signal, c_noise),
    )
    return WeightAnalysis(qparams=qp, metrics=metrics, channel_metrics=channel)
