"""The metrics panel's cells as text: one column per tensor kind, stored result or drag preview.

Qt-free, so tests compare the numbers the panel shows with the core's directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qviz.core.calibration.metrics import TensorMetrics
from qviz.core.text import fmt_db, fmt_num, fmt_pct, fmt_range, fmt_zero_point, summarize


@dataclass(frozen=True)
class ColumnData:
    """What one column shows; built from a TensorResult or from a drag preview."""

    tensor: str
    config: str
    metrics: TensorMetrics
    channel_sqnr: np.ndarray | None = None  # per output channel, for "worst channel"
    channel_word: str = "channel"  # what the clip envelope is over: "channel" or "group"
    preview: bool = False
    approximate: bool = False  # preview from a histogram of a huge weight (exact on release)


def metric_texts(data: ColumnData) -> dict[str, str]:
    """Every cell of a column as text (Qt-free, so tests can compare numbers directly)."""
    m = data.metrics
    per_tensor = np.asarray(m.scale).size == 1
    if per_tensor:
        clip = fmt_range(float(np.asarray(m.lo).min()), float(np.asarray(m.hi).max()))
    else:
        n = np.asarray(m.scale).size
        clip = (
            f"{fmt_range(*m.envelope)} envelope of {n} "
            f"{data.channel_word}s"
        )
    worst = "—"
    if data.channel_sqnr is not None and np.asarray(data.channel_sqnr).size > 1:
        sq = np.asarray(data.channel_sqnr, dtype=np.float64).ravel()
        i = int(np.nanargmin(sq))
        worst = f"#{i}: {fmt_db(float(sq[i]))}"
    return {
        "tensor": data.tensor,
        "config": data.config,
        "scale": summarize(m.scale),
        "zero_point": summarize(np.asarray(m.zero_point, dtype=np.float64), fmt_zero_point),
        "step": summarize(m.step),
        "clip": clip,
        "clipped": fmt_pct(m.clipped_fraction),
        "mse": fmt_num(m.mse),
        "sqnr": fmt_db(m.sqnr_db),
        "worst": worst,
        "max_abs_error": fmt_num(m.max_abs_error),
        "cosine": f"{float(m.cosine):.6f}",
    }
