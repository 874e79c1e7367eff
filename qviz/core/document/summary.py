"""The model-wide summary line: how many tensors, the worst ones, and one weighted SQNR."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from qviz.core.calibration.analysis import TensorKey


def weighted_sqnr_db(values: Iterable[tuple[float, float]]) -> float:
    """Model-wide SQNR from (per-tensor SQNR in dB, weight) pairs.

    Averaged in the power domain, not in dB: each tensor's noise-to-signal ratio
    10^(-SQNR/10) is averaged with its weight (element count), and the mean converted back to
    dB. A dB average would let one very clean tensor hide one ruined one; the power mean is
    dominated by the noisy tensor, as the model's output will be. Tensors with no finite or
    infinite SQNR (NaN) are left out; an exact tensor (SQNR +inf) adds zero noise.
    """
    total_w = 0.0
    total_nsr = 0.0
    for sqnr, weight in values:
        if math.isnan(sqnr) or weight <= 0:
            continue
        total_w += weight
        total_nsr += weight * (0.0 if math.isinf(sqnr) and sqnr > 0 else 10.0 ** (-sqnr / 10.0))
    if total_w == 0:
        return math.nan
    if total_nsr == 0:
        return math.inf
    return -10.0 * math.log10(total_nsr / total_w)


@dataclass(frozen=True)
class Summary:
    n_tensors: int
    n_weights: int
    n_activations: int
    n_analyzed: int
    worst: tuple[tuple[TensorKey, float], ...]  # lowest SQNR first
    weighted_sqnr_db: float
    #: Activations whose evaluation data clips more than sampling explains (None: no
    #: statistics of the evaluation data yet).
    unrepresentative: tuple[TensorKey, ...] | None = None


def summarize(
    keys: Iterable[TensorKey], scored: Iterable[tuple[TensorKey, float, float]], n_worst: int = 3
) -> Summary:
    """`scored`: (key, SQNR dB, element count) of every analysed tensor (inf when kept float)."""
    keys = list(keys)
    scored = list(scored)
    ordered = sorted(((k, s) for k, s, _ in scored if not math.isnan(s)), key=lambda ks: ks[1])
    n_weights = sum(1 for k in keys if k.kind.value == "weight")
    return Summary(
        n_tensors=len(keys),
        n_weights=n_weights,
        n_activations=len(keys) - n_weights,
        n_analyzed=len(scored),
        worst=tuple(ordered[:n_worst]),
        weighted_sqnr_db=weighted_sqnr_db((s, w) for _, s, w in scored),
    )
