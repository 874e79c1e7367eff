"""Per-output-channel ranges and errors of a weight: what the channel view draws.

For each output channel: its value range (min..max), the clip range it is quantized with,
its SQNR, and whether it is an outlier (its largest magnitude dwarfs the median channel's, so
a per-tensor scale set by it wastes resolution for all the others). Per-group granularity adds
SQNR per (channel, group). Pure functions over the exact weight and its qparams.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qviz.core.calibration.weights import ChannelMetrics
from qviz.core.quant.formats import GranularityKind, NumberFormat
from qviz.core.quant.qparams import QParams
from qviz.core.quant.quantize import fake_quantize

# A channel is flagged when its largest magnitude exceeds this many times the median one:
# such a channel alone sets a per-tensor scale and wastes resolution for all the others.
OUTLIER_RATIO = 3.0
# SQNR of a channel quantized without any error is infinite; plot it at this ceiling.
SQNR_CEILING_DB = 150.0


@dataclass(frozen=True)
class ChannelData:
    """Everything the channel view draws, one entry per output channel (Qt-free)."""

    mins: np.ndarray
    maxs: np.ndarray
    los: np.ndarray          # clip range each channel is quantized with (effective)
    his: np.ndarray
    sqnr_db: np.ndarray      # per channel
    outliers: np.ndarray     # bool per channel
    group_sqnr_db: np.ndarray | None = None   # (channels, groups) for per-group
    group_size: int | None = None
    source: str = ""         # human text: what lo/hi mean


def _sqnr_db(signal: np.ndarray, noise: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        out = 10.0 * np.log10(signal / noise)
    out = np.where(noise == 0, np.inf, out)
    return np.where((signal == 0) & (noise > 0), -np.inf, out)


def _rows(x: np.ndarray, channel_axis: int) -> np.ndarray:
    """(channels, everything else) view of a weight."""
    return np.moveaxis(np.asarray(x), channel_axis, 0).reshape(x.shape[channel_axis], -1)


def outlier_mask(mins: np.ndarray, maxs: np.ndarray) -> np.ndarray:
    absmax = np.maximum(np.abs(mins), np.abs(maxs))
    med = float(np.median(absmax)) if absmax.size else 0.0
    if med <= 0:
        return absmax > 0
    return absmax > OUTLIER_RATIO * med


def channel_data(
    w: np.ndarray,
    qp: QParams,
    fmt: NumberFormat,
    channel_axis: int,
    reduction_axis: int | None,
    granularity: GranularityKind,
    channel_metrics: ChannelMetrics | None = None,
    tensor_clip: tuple[float, float] | None = None,
) -> ChannelData:
    """Per-channel ranges, clip ranges and SQNR of weight ``w`` quantized with ``qp``.

    Uses the core's ``channel_metrics`` (min, max, lo, hi, sqnr_db per output channel) when
    given, so the view shows the very numbers the analysis produced; computes them from the
    fake-quantized weight otherwise, with every channel clipped to ``tensor_clip`` (the
    per-tensor range, as the histogram shows it). Per-group adds SQNR per (channel, group).
    """
    w = np.asarray(w, dtype=np.float32)
    rows = _rows(w, channel_axis)
    n = rows.shape[0]
    need_fq = channel_metrics is None or granularity is GranularityKind.PER_GROUP
    fq = fake_quantize(w, qp, fmt).astype(np.float32) if need_fq else None

    if channel_metrics is not None:
        cm = channel_metrics
        mins = np.asarray(cm.min, dtype=np.float64)
        maxs = np.asarray(cm.max, dtype=np.float64)
        los = np.asarray(cm.lo, dtype=np.float64)
        his = np.asarray(cm.hi, dtype=np.float64)
        sqnr = np.asarray(cm.sqnr_db, dtype=np.float64)
        source = "clip per channel"
    else:
        mins = rows.min(axis=1).astype(np.float64)
        maxs = rows.max(axis=1).astype(np.float64)
        assert fq is not None
        err = (_rows(fq, channel_axis) - rows).astype(np.float64)
        sqnr = _sqnr_db(
            np.sum(rows.astype(np.float64) ** 2, axis=1), np.sum(err**2, axis=1)
        )
        # Per-tensor: every channel shares the one clip range.
        lo, hi = tensor_clip if tensor_clip is not None else (mins.min(), maxs.max())
        los = np.full(n, float(lo))
        his = np.full(n, float(hi))
        source = "one per-tensor clip range"

    group = None
    block = qp.block_size
    if granularity is GranularityKind.PER_GROUP and block and reduction_axis is not None:
        group = _group_sqnr(w, fq, channel_axis, reduction_axis, int(block))
        source = f"clip envelope of each channel's groups of {block}"
    return ChannelData(
        mins, maxs, los, his, sqnr, outlier_mask(mins, maxs), group,
        int(block) if group is not None and block else None, source,
    )


def _group_sqnr(
    w: np.ndarray, fq: np.ndarray | None, channel_axis: int, reduction_axis: int, block: int
) -> np.ndarray:
    """SQNR per (channel, block along the reduction axis); the last block may be short."""
    assert fq is not None
    ca, ra = channel_axis % w.ndim, reduction_axis % w.ndim
    if ca == ra:  # degenerate layouts (1-D weights): one group per block of the only axis
        x = w.reshape(1, -1, 1)
        e = (fq - w).reshape(1, -1, 1)
    else:
        x = np.moveaxis(w, (ca, ra), (0, 1))
        e = np.moveaxis(fq - w, (ca, ra), (0, 1))
        x = x.reshape(x.shape[0], x.shape[1], -1)
        e = e.reshape(e.shape[0], e.shape[1], -1)
    c, r, _ = x.shape
    g = -(-r // block)
    pad = g * block - r
    x64 = np.pad(x.astype(np.float64), ((0, 0), (0, pad), (0, 0)))
    e64 = np.pad(e.astype(np.float64), ((0, 0), (0, pad), (0, 0)))
    sig = (x64**2).reshape(c, g, -1).sum(axis=2)
    noise = (e64**2).reshape(c, g, -1).sum(axis=2)
    return _sqnr_db(sig, noise)
