"""End-to-end metrics as people read them, the same in the app, the CLI and the reports."""

from __future__ import annotations

import math

from qviz.core.evaluation.evaluate import Metric
from qviz.core.evaluation.results import Latency
from qviz.core.text import fmt_num, fmt_signed

# Similarities and divergences live near 1 and 0: they need more decimals to differ.
_FINE = frozenset({Metric.COSINE, Metric.KL})


def metric_digits(metric: Metric) -> int:
    """Decimals a metric's value and its changes are written with."""
    return 5 if metric in _FINE else 2


def fmt_metric(value: float, metric: Metric) -> str:
    """Display: a metric's value (93.75 %, 18.19 dB, 0.99871)."""
    if math.isnan(value):
        return "—"
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    if metric in (Metric.ACCURACY, Metric.AGREEMENT):
        return f"{value:.2f} %"
    if metric is Metric.SQNR:
        return f"{value:.2f} dB"
    if metric in _FINE:
        return f"{value:.5f}"
    return fmt_num(value)


def fmt_metric_change(value: float | None, metric: Metric) -> str:
    """Display: a signed change of a metric (+0.25, −0.00130)."""
    return fmt_signed(value, metric_digits(metric))


def metric_unit(metric: Metric) -> str:
    """What a change of the metric is counted in."""
    return {
        Metric.ACCURACY: "accuracy points",
        Metric.AGREEMENT: "agreement points",
        Metric.SQNR: "output SQNR dB",
        Metric.COSINE: "output cosine",
        Metric.KL: "KL (nats)",
        Metric.MAX_ABS_ERROR: "max |error|",
    }[metric]


def fmt_ratio(ratio: float, better: str, worse: str) -> str:
    """'×3.97 smaller', '×0.91 slower' ('' when not finite)."""
    if not math.isfinite(ratio):
        return ""
    return f"×{ratio:.2f} {better if ratio >= 1 else worse}"


def latency_ratio_text(lat: Latency) -> str:
    """The ratio of the two medians shown beside it, so the row reads true; the median of the
    per-pair ratios (steadier on a loaded machine) is named where it differs by over a tenth."""
    plain = lat.float_ms / lat.native_ms if lat.native_ms > 0 else math.inf
    text = fmt_ratio(plain, "faster", "slower")
    paired = lat.paired_speedup
    if paired is not None and math.isfinite(plain) and abs(paired / plain - 1) > 0.1:
        text += f" (paired runs {fmt_ratio(paired, 'faster', 'slower')})"
    return text
