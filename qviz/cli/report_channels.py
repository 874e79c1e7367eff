"""What `qviz report` adds for per-channel statistics and transforms.

Each activation gets its channels' largest magnitudes (``channel_absmax``) and the loud ones
(``outlier_channels``: |max| over 4x the median channel's), as quantized — after a rescaling,
the rescaled tensor's, with the untransformed numbers under ``transform.before``. A rescaled
activation and every weight GPTQ or bias correction touched get a ``transform`` entry.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from qviz.core.calibration.analysis import TensorResult
from qviz.core.layerdata.activation_channels import LOUD_FACTOR, activation_channels
from qviz.core.model.loading import TensorKind
from qviz.core.stats.collect import CalibrationStats
from qviz.core.transforms.plan import TransformPlan


def _num(v: float) -> float | str:
    return v if math.isfinite(v) else ("inf" if v > 0 else ("-inf" if v < 0 else "nan"))


def _channels(stats: CalibrationStats | None, name: str) -> dict[str, Any]:
    t = None if stats is None else stats.tensors.get(name)
    ch = None if t is None else activation_channels(t)
    if ch is None:
        return {"outlier_channels": None, "channel_absmax": None}
    return {
        "outlier_channels": [int(i) for i in ch.loud],
        "channel_absmax": [_num(float(v)) for v in ch.absmax],
    }


def transform_json(
    r: TensorResult, stats: CalibrationStats, plan: TransformPlan | None
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if r.kind is TensorKind.ACTIVATION:
        out.update(_channels(stats, r.name))
        out["outlier_factor"] = LOUD_FACTOR
        scaling = None if plan is None else plan.scalings.get(r.name)
        if scaling is not None:
            out["transform"] = {
                "kind": scaling.kind.value,
                "alpha": scaling.alpha,
                "auto": scaling.search is not None,
                "expressed_as": scaling.site.expression,
                "layers": [c.layer.name for c in scaling.site.consumers],
                "scales": [float(v) for v in scaling.scales],
                "before": _channels(plan.original_stats if plan else None, r.name),
            }
        elif plan is not None and r.name in plan.skipped:
            out["transform"] = {"skipped": plan.skipped[r.name]}
    elif r.applied is not None:
        a = r.applied
        out["transform"] = {
            "gptq": a.values is not None,
            "bias_correction": a.bias is not None,
            "bias_site": None if a.bias_site is None else a.bias_site.description,
            "output_sqnr_db": [_num(a.output_sqnr_db[0]), _num(a.output_sqnr_db[1])],
            "output_sqnr_estimate": a.estimate,
            "mean_shift_rms": [_num(a.mean_shift_rms[0]), _num(a.mean_shift_rms[1])],
            "plain_rounding_sqnr_db": _num(float(a.plain_metrics.sqnr_db)),
        }
    return out


def transform_notes(plan: TransformPlan, results: list[TensorResult]) -> list[str]:
    """One line per rescaled activation and per transformed weight, then what was skipped."""
    lines = []
    for act, s in plan.scalings.items():
        lines.append(f"{act}: {s.label}, {s.site.expression}; scales "
                     f"{float(np.min(s.scales)):.3g}..{float(np.max(s.scales)):.3g}")
    for r in results:
        a = r.applied
        if r.kind is TensorKind.WEIGHT and a is not None:
            what = " + ".join(w for w, on in (("GPTQ", a.values is not None),
                                               ("bias correction", a.bias is not None)) if on)
            before, after = a.output_sqnr_db
            lines.append(f"{r.name}: {what}; layer output SQNR {before:.2f} -> {after:.2f} dB "
                         f"(from the {a.estimate})")
    return lines + list(plan.notes)
