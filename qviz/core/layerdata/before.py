"""Before and after a transform: what the layer view shows of the untransformed tensor.

A tensor a transform touched (SmoothQuant or equalization rescaled it, GPTQ rounded it, bias
correction changed its layer's bias) is shown as measured; its untransformed twin is drawn as
a faint overlay and its numbers fill the metrics panel's "before" rows. Qt-free, so tests
compare the panel's numbers with the core's directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from qviz.core.calibration.analysis import TensorResult
from qviz.core.calibration.metrics import TensorMetrics
from qviz.core.stats.tensor_stats import TensorStats
from qviz.core.text import fmt_db, fmt_num

__all__ = ["BEFORE_ROWS", "Before", "BeforeColumn", "before_column", "before_texts"]


@dataclass(frozen=True, eq=False)
class Before:
    """A tensor as it would be without any transform."""

    result: TensorResult
    values: np.ndarray | None = None  # a weight's original values
    stats: TensorStats | None = None  # an activation's original statistics
    transforms: str = ""  # what changed the tensor, for people


@dataclass(frozen=True)
class BeforeColumn:
    """The metrics panel's "before" numbers of one tensor."""

    transforms: str  # what changed it ("SmoothQuant α=0.8, folded into ...", "GPTQ")
    metrics: TensorMetrics | None  # the tensor's own error without the transforms
    output_sqnr: tuple[float, float] | None = None  # layer output vs weight error: before, after
    estimate: str = ""  # what the output SQNR is estimated from


BEFORE_ROWS: tuple[tuple[str, str], ...] = (
    ("t_what", "transformed by"),
    ("t_sqnr", "SQNR before"),
    ("t_delta", "Δ SQNR (after − before)"),
    ("t_output", "layer output SQNR"),
)


def before_column(result: TensorResult, before: Before | None) -> BeforeColumn | None:
    """The "before" numbers of `result` (None when nothing transformed it)."""
    a = result.applied
    if before is None and a is None:
        return None
    metrics = before.result.metrics if before is not None else None
    if metrics is None and a is not None:
        metrics = a.plain_metrics
    output = None
    if a is not None and not all(math.isnan(v) for v in a.output_sqnr_db):
        output = a.output_sqnr_db
    what = before.transforms if before is not None else result.config.transforms.label
    return BeforeColumn(what, metrics, output, "" if a is None else a.estimate)


def before_texts(current: TensorMetrics, before: BeforeColumn | None) -> dict[str, str]:
    """The "before" rows of one column ('—' where nothing transformed the tensor)."""
    if before is None:
        return {key: "—" for key, _ in BEFORE_ROWS}
    out = {"t_what": before.transforms or "—", "t_sqnr": "—", "t_delta": "—", "t_output": "—"}
    if before.metrics is not None:
        out["t_sqnr"] = fmt_db(before.metrics.sqnr_db)
        with np.errstate(invalid="ignore"):
            d = float(current.sqnr_db) - float(before.metrics.sqnr_db)
        if math.isfinite(d):
            out["t_delta"] = ("+" if d > 0 else "") + f"{fmt_num(d)} dB"
    if before.output_sqnr is not None:
        b, a = before.output_sqnr
        out["t_output"] = f"{fmt_db(b)} → {fmt_db(a)}" + (
            f" (from the {before.estimate})" if before.estimate else "")
    return out
