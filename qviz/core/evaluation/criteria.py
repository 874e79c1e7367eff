"""Acceptance criteria: the user's bar for a quantized model, and a PASS/FAIL with the numbers.

A criterion reads like what people write in a ticket: ``accuracy_drop<=1`` (points),
``cosine>=0.99``, ``sqnr>=30`` (dB), ``agreement>=99`` (%). Each compares one number of an
`Evaluation` (of its first output) with a threshold.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from qviz.core.errors import QvizError
from qviz.core.evaluation.evaluate import Evaluation, Metric

__all__ = [
    "DEFAULT_CRITERIA",
    "DEFAULT_CRITERIA_NO_LABELS",
    "Comparison",
    "Criterion",
    "CriterionMetric",
    "Verdict",
    "check_all",
    "overall",
    "parse_criteria",
]


class CriterionMetric(Enum):
    """What a criterion measures."""

    ACCURACY_DROP = "accuracy_drop"  # float accuracy - quantized accuracy, points
    OUTPUT_COSINE = "cosine"
    OUTPUT_SQNR = "sqnr"  # dB
    AGREEMENT = "agreement"  # top-1 agreement with the float model, %

    @property
    def label(self) -> str:
        return {
            CriterionMetric.ACCURACY_DROP: "accuracy drop",
            CriterionMetric.OUTPUT_COSINE: "output cosine",
            CriterionMetric.OUTPUT_SQNR: "output SQNR",
            CriterionMetric.AGREEMENT: "top-1 agreement",
        }[self]

    @property
    def unit(self) -> str:
        return {
            CriterionMetric.ACCURACY_DROP: " points",
            CriterionMetric.OUTPUT_COSINE: "",
            CriterionMetric.OUTPUT_SQNR: " dB",
            CriterionMetric.AGREEMENT: " %",
        }[self]

    @property
    def needs_labels(self) -> bool:
        return self is CriterionMetric.ACCURACY_DROP

    def digits(self) -> int:
        return 4 if self is CriterionMetric.OUTPUT_COSINE else 2


_ALIASES: dict[str, CriterionMetric] = {
    "accuracy_drop": CriterionMetric.ACCURACY_DROP,
    "acc_drop": CriterionMetric.ACCURACY_DROP,
    "drop": CriterionMetric.ACCURACY_DROP,
    "cosine": CriterionMetric.OUTPUT_COSINE,
    "output_cosine": CriterionMetric.OUTPUT_COSINE,
    "cos": CriterionMetric.OUTPUT_COSINE,
    "sqnr": CriterionMetric.OUTPUT_SQNR,
    "output_sqnr": CriterionMetric.OUTPUT_SQNR,
    "sqnr_db": CriterionMetric.OUTPUT_SQNR,
    "agreement": CriterionMetric.AGREEMENT,
    "top1_agreement": CriterionMetric.AGREEMENT,
    "top1": CriterionMetric.AGREEMENT,
}


class Comparison(Enum):
    AT_MOST = "<="
    AT_LEAST = ">="

    @property
    def symbol(self) -> str:
        return "≤" if self is Comparison.AT_MOST else "≥"

    def holds(self, value: float, threshold: float) -> bool:
        if math.isnan(value):
            return False
        return value <= threshold if self is Comparison.AT_MOST else value >= threshold


_OPERATORS = {
    "<=": Comparison.AT_MOST,
    "≤": Comparison.AT_MOST,
    ">=": Comparison.AT_LEAST,
    "≥": Comparison.AT_LEAST,
}
_PATTERN = re.compile(
    r"^\s*([A-Za-z0-9_\- ]+?)\s*(<=|>=|≤|≥)\s*([-+]?[0-9.]+(?:e[-+]?\d+)?)\s*%?\s*$",
    re.IGNORECASE,
)
_CHOICES = "accuracy_drop, cosine, sqnr, agreement"


@dataclass(frozen=True)
class Verdict:
    criterion: Criterion
    passed: bool
    value: float | None
    text: str


@dataclass(frozen=True)
class Criterion:
    """``metric`` compared with ``threshold``. The natural direction (drop at most, the rest
    at least) is the default; the written operator always wins."""

    metric: CriterionMetric
    threshold: float
    comparison: Comparison | None = None

    def __post_init__(self) -> None:
        if self.comparison is None:
            natural = (
                Comparison.AT_MOST
                if self.metric is CriterionMetric.ACCURACY_DROP
                else Comparison.AT_LEAST
            )
            object.__setattr__(self, "comparison", natural)
        if not math.isfinite(self.threshold):
            raise QvizError(f"criterion threshold must be a finite number, not {self.threshold}")

    @property
    def spec(self) -> str:
        """The text `parse` reads back."""
        assert self.comparison is not None
        return f"{self.metric.value}{self.comparison.value}{self.threshold:g}"

    @classmethod
    def parse(cls, text: str) -> Criterion:
        """Read ``accuracy_drop<=1``, ``cosine>=0.99``, ``sqnr>=30``, ``agreement>=99``
        (also ``≤``/``≥``, spaces, a trailing ``%``). QvizError for anything else."""
        match = _PATTERN.match(str(text))
        if match is None:
            raise QvizError(
                f"cannot read criterion {text!r}: write METRIC<=VALUE or METRIC>=VALUE "
                f"with METRIC one of {_CHOICES}"
            )
        key = re.sub(r"[\s\-]+", "_", match.group(1).strip().lower())
        metric = _ALIASES.get(key)
        if metric is None:
            raise QvizError(f"unknown criterion metric {match.group(1)!r}: choose {_CHOICES}")
        try:
            threshold = float(match.group(3))
        except ValueError:
            raise QvizError(f"criterion {text!r}: {match.group(3)!r} is not a number") from None
        return cls(metric, threshold, _OPERATORS[match.group(2)])

    def value(self, evaluation: Evaluation) -> float | None:
        """The measured number this criterion looks at (None when it cannot be measured)."""
        q = evaluation.quantized_metrics
        if self.metric is CriterionMetric.ACCURACY_DROP:
            return evaluation.accuracy_drop
        if self.metric is CriterionMetric.OUTPUT_COSINE:
            return q.get(Metric.COSINE)
        if self.metric is CriterionMetric.OUTPUT_SQNR:
            return q.get(Metric.SQNR)
        return q.get(Metric.AGREEMENT)

    def check(self, evaluation: Evaluation) -> Verdict:
        """PASS or FAIL, with the numbers behind it, e.g.
        ``PASS: accuracy drop 0.12 points ≤ 1.00``."""
        assert self.comparison is not None
        value = self.value(evaluation)
        digits = self.metric.digits()
        bar = f"{self.comparison.symbol} {self.threshold:.{digits}f}"
        if value is None:
            why = (
                "the data has no labels"
                if self.metric.needs_labels
                else "the output holds no class scores"
            )
            return Verdict(
                self,
                False,
                None,
                f"FAIL: {self.metric.label} cannot be measured ({why}); needs {bar}",
            )
        passed = self.comparison.holds(value, self.threshold)
        # A tiny negative value (or -0.0) rounds to "-0.00": show it as "0.00".
        shown = f"{value:.{digits}f}" if math.isfinite(value) else ("inf" if value > 0 else "-inf")
        if shown.startswith("-") and float(shown) == 0.0:
            shown = shown[1:]
        measured = f"{self.metric.label} {shown}{self.metric.unit}"
        text = f"PASS: {measured} {bar}" if passed else f"FAIL: {measured}, not {bar}"
        return Verdict(self, passed, value, text)


def check_all(criteria: Sequence[Criterion], evaluation: Evaluation) -> tuple[Verdict, ...]:
    """Every criterion's verdict, in order."""
    return tuple(c.check(evaluation) for c in criteria)


# What a model is judged by until the user types criteria: the task metric with labels, the
# output's similarity without.
DEFAULT_CRITERIA = "accuracy_drop<=1"
DEFAULT_CRITERIA_NO_LABELS = "cosine>=0.99"


def parse_criteria(text: str) -> tuple[Criterion, ...]:
    """Criteria separated by ';', ',' or new lines; QvizError names the first bad one."""
    parts = [p.strip() for p in re.split(r"[;,\n]", text) if p.strip()]
    return tuple(Criterion.parse(p) for p in parts)


def overall(verdicts: Sequence[Verdict]) -> bool | None:
    """True when every criterion passes, False when one fails, None without criteria."""
    if not verdicts:
        return None
    return all(v.passed for v in verdicts)
