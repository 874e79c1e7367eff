"""Is the calibration data representative? Evaluation data measured against calibration ranges.

Representative calibration data is the first condition of good quantization, and the easiest
to get wrong: ranges fitted to one distribution clip another. For each activation this
compares what calibration chose with what the evaluation data (or production data) holds:

* ``eval_clipped`` — the fraction of evaluation values the chosen range clips, beside
  ``cal_clipped``, the fraction of calibration values it clips (the method's own trade-off);
* ``unseen`` — the fraction of evaluation values beyond anything calibration saw (its min and
  max);
* ``eval_range`` — the range the same method would choose on the evaluation data alone (the
  costly part, asked for only where it is drawn: one tensor's view, a report).

``flagged`` when the evaluation data clips more than sampling explains: ``eval_clipped``
above ``cal_clipped`` by more than three binomial standard deviations counted over samples,
not values (values of one sample move together), plus three samples' worth. Held-out samples
of the same data are almost never flagged; a shifted evaluation set is.

And convergence: the range the method chooses after 16, 32, 64 … calibration samples
(snapshots taken while calibrating), so the user sees whether more data would move anything.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from qviz.core.calibration.config import TensorConfig
from qviz.core.calibration.methods import Method, choose_range
from qviz.core.calibration.metrics import TensorMetrics, histogram_metrics, histogram_metrics_of
from qviz.core.errors import QvizError
from qviz.core.quant.formats import FormatKind
from qviz.core.quant.qparams import QParams, compute_qparams
from qviz.core.stats.snapshots import Snapshot, coarse
from qviz.core.stats.tensor_stats import TensorStats

# How far beyond sampling noise evaluation must clip to be flagged (standard deviations).
Z = 3.0


@dataclass(frozen=True)
class Representativeness:
    """One activation's calibration range seen from the evaluation data."""

    name: str
    cal_range: tuple[float, float]     # effective, as the quantizer covers it
    eval_range: tuple[float, float] | None  # the method on evaluation alone (if asked for)
    cal_clipped: float
    eval_clipped: float
    unseen: float                      # evaluation values beyond calibration's min/max
    eval_samples: int
    tolerance: float                   # how much more clipping sampling could explain

    @property
    def flagged(self) -> bool:
        return self.eval_clipped > self.cal_clipped + self.tolerance

    def to_json(self) -> dict[str, object]:
        return {
            "eval_clipped_fraction": self.eval_clipped,
            "cal_clipped_fraction": self.cal_clipped,
            "unseen_fraction": self.unseen,
            "eval_range": None if self.eval_range is None else list(self.eval_range),
            "representative": not self.flagged,
        }


def sampling_tolerance(p: float, samples: int) -> float:
    """Extra clipped fraction a held-out set of `samples` samples may show by chance."""
    n = max(samples, 1)
    return Z * math.sqrt(max(p * (1.0 - p), 0.0) / n) + Z / n


def _beyond(stats: TensorStats, lo: float, hi: float) -> float:
    """Fraction of `stats`' histogram mass below `lo` or above `hi`."""
    hist = stats.histogram
    total = hist.total
    if total <= 0:
        return 0.0
    below = float(hist.cdf(lo)) if lo > hist.lo else 0.0
    above = total - float(hist.cdf(hi)) if hi < hist.hi else 0.0
    return min(1.0, max(0.0, (below + above) / total))


def compare(
    cal: TensorStats,
    evaluation: TensorStats,
    cfg: TensorConfig,
    eval_samples: int,
    *,
    chosen: tuple[QParams, TensorMetrics] | None = None,
    eval_alone: bool = True,
) -> Representativeness:
    """`evaluation`'s values against the range `cfg` chooses on `cal` (an activation's).

    `chosen`: the quantizer and calibration metrics already analysed for `cfg` (a
    `TensorResult`'s), so the range is not chosen again; `eval_alone`: also choose the range
    on the evaluation data alone (the costly part: one more search for MSE or entropy)."""
    if cfg.fmt.kind is FormatKind.NF4:
        raise QvizError(f"{cal.name}: NF4 is a weight-only format")
    if chosen is None:
        qp = compute_qparams(*choose_range(cal, cfg.spec, cfg.fmt), cfg.fmt)
        cal_m = histogram_metrics_of(cal, qp, cfg.fmt)
    else:
        qp, cal_m = chosen
    eval_m = histogram_metrics_of(evaluation, qp, cfg.fmt)
    eval_range: tuple[float, float] | None = None
    if not eval_alone:
        pass
    elif cfg.spec.method is Method.MANUAL:  # a hand-set range has no "evaluation alone" choice
        eval_range = eval_m.envelope
    else:
        e_lo, e_hi = choose_range(evaluation, cfg.spec, cfg.fmt)
        eval_range = histogram_metrics(evaluation, e_lo, e_hi, cfg.fmt).envelope
    p = float(cal_m.clipped_fraction)
    return Representativeness(
        name=cal.name,
        cal_range=cal_m.envelope,
        eval_range=eval_range,
        cal_clipped=p,
        eval_clipped=float(eval_m.clipped_fraction),
        unseen=_beyond(evaluation, cal.min, cal.max),
        eval_samples=eval_samples,
        tolerance=sampling_tolerance(p, eval_samples),
    )


def convergence(
    snapshots: Sequence[Snapshot], final: TensorStats, samples: int, cfg: TensorConfig
) -> list[tuple[int, float, float]]:
    """(samples, lo, hi) of the effective range `cfg` chooses after each snapshot and at the
    end: a range still moving at the last doublings would move with more data."""
    points: list[tuple[int, float, float]] = []
    bins = final.histogram.bins
    for snap in snapshots:
        stats = snap.tensors.get(final.name)
        if stats is None or snap.samples >= samples:
            continue
        bins = stats.histogram.bins
        points.append((snap.samples, *_effective(stats, cfg)))
    # Compared at the snapshots' resolution (the same as calibration's unless memory was short).
    points.append((samples, *_effective(coarse(final, bins), cfg)))
    return points


def _effective(stats: TensorStats, cfg: TensorConfig) -> tuple[float, float]:
    lo, hi = choose_range(stats, cfg.spec, cfg.fmt)
    return histogram_metrics(stats, lo, hi, cfg.fmt).envelope
