"""The metrics panel's cells as text: one column per tensor kind, stored result or drag preview.

Qt-free, so tests compare the numbers the panel shows with the core's directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qviz.core.calibration.metrics import TensorMetrics
from qviz.core.layerdata.before import BeforeColumn
from qviz.core.text import fmt_db, fmt_num, fmt_pct, fmt_range, fmt_zero_point, summarize


@dataclass(frozen=True)
class PinnedColumn:
    """The pinned configuration's numbers for the same tensor."""

    config: str
    metrics: TensorMetrics


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
    pinned: PinnedColumn | None = None  # the same tensor under the pinned configuration "A"
    before: BeforeColumn | None = None  # the same tensor without its transforms
    layer: str = ""  # the layer's full name (the table shows it relative to its group)


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
        "layer": data.layer or "—",
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


# Rows the metrics panel adds while a configuration is pinned as "A" (see `compare_texts`).
# Three rows, A's error numbers on one: the panel must not push the plots above it off the
# screen while comparing.
COMPARE_ROWS: tuple[tuple[str, str], ...] = (
    ("a_config", "A quantizer"),
    ("a_sqnr", "A SQNR · clipped · MSE"),
    ("d_sqnr", "Δ SQNR (B − A)"),
)


def compare_texts(current: TensorMetrics, pinned: PinnedColumn | None) -> dict[str, str]:
    """The comparison rows of one column: A's numbers and the change from A to the current
    settings (B); '—' everywhere when nothing is pinned."""
    if pinned is None:
        return {key: "—" for key, _ in COMPARE_ROWS}
    a = pinned.metrics
    same = float(current.sqnr_db) == float(a.sqnr_db) and float(current.mse) == float(a.mse)
    with np.errstate(invalid="ignore"):
        d_sqnr = float(current.sqnr_db) - float(a.sqnr_db)
    if same:
        delta = "same as A"
    elif np.isnan(d_sqnr):
        delta = "—"
    else:
        delta = ("+" if d_sqnr > 0 else "") + f"{fmt_num(d_sqnr)} dB"
    return {
        "a_config": pinned.config,
        "a_sqnr": f"{fmt_db(a.sqnr_db)} · {fmt_pct(a.clipped_fraction)} · {fmt_num(a.mse)}",
        "d_sqnr": delta,
    }
