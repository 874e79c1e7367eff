"""`qviz report STATS ...`: one row per tensor under the chosen settings (table or JSON)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from qviz.cli.common import open_stats_and_model
from qviz.cli.options import add_float_option, add_quant_options, config_for_model, input_path
from qviz.cli.report_channels import transform_json, transform_notes
from qviz.core.calibration.analysis import TensorResult, analyze
from qviz.core.calibration.representative import Representativeness, compare
from qviz.core.errors import QvizError
from qviz.core.model.loading import TensorKind
from qviz.core.stats.collect import CalibrationStats
from qviz.core.stats.stats_file import load_stats
from qviz.core.transforms.advice import smoothquant_advice
from qviz.core.transforms.plan import TransformPlan, transform_model


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="per-tensor ranges, scales and error metrics",
                       description="Per-tensor quantization parameters and error metrics, "
                                   "computed from a stats file without re-running the model.")
    p.add_argument("stats", type=input_path, help="stats file written by `qviz collect`")
    p.add_argument("--model", help="the model file, if it moved since collection")
    add_float_option(p)
    p.add_argument("--eval-stats", type=input_path, metavar="EVAL_STATS",
                   help="stats file of the evaluation (or production) data, from `qviz "
                        "collect`: per activation, how much of it the calibration ranges clip, "
                        "what it holds beyond them and the range it alone would choose")
    add_quant_options(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    stats, model = open_stats_and_model(args.stats, args.model, args.float_model)
    evaluation = None if args.eval_stats is None else _eval_stats(args.eval_stats, stats)
    config = config_for_model(args, model)
    plan = transform_model(model, stats, config)
    assert plan.stats is not None
    results = analyze(plan.model, plan.stats, config)
    # The evaluation data's statistics are of the untransformed activations: compared only
    # with the activations no rescaling touched.
    plain = [r for r in results if not r.context]
    seen = representativeness(stats, evaluation, plain) if evaluation is not None else None
    if args.json:
        json.dump(report_json(plan.stats, results, evaluation, seen, plan), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        advice = smoothquant_advice(plan.stats, results)
        sys.stdout.write(report_table(plan.stats, results, evaluation, seen,
                                      [*transform_notes(plan, results),
                                       *([advice] if advice else [])]))
    return 0


def _eval_stats(path: Path, stats: CalibrationStats) -> CalibrationStats:
    evaluation = load_stats(path)
    if evaluation.model_sha256 != stats.model_sha256:
        raise QvizError(
            f"--eval-stats {path} was collected on another model than {stats.model_source}"
        )
    return evaluation


def representativeness(
    stats: CalibrationStats, evaluation: CalibrationStats, results: list[TensorResult]
) -> dict[str, Representativeness]:
    """Each activation's calibration range seen from the evaluation data (by tensor name)."""
    return {
        r.name: compare(stats.tensors[r.name], evaluation.tensors[r.name], r.config,
                        evaluation.n_samples, chosen=(r.qparams, r.metrics))
        for r in results
        if r.kind is TensorKind.ACTIVATION and r.name in evaluation.tensors
        and r.name in stats.tensors
    }


def _value(a: np.ndarray) -> float | list[float]:
    arr = np.asarray(a)
    return arr.item() if arr.size == 1 else arr.astype(np.float64).ravel().tolist()


def tensor_json(r: TensorResult) -> dict[str, Any]:
    m = r.metrics
    return {
        "name": r.name,
        "layer": r.layer.name,
        "kind": r.kind.value,
        "op_type": r.layer.op_type,
        "format": r.config.fmt.label,
        "granularity": r.config.granularity.label,
        "method": r.config.spec.method.value,
        "format_spec": r.config.fmt.spec,
        "range": [_value(m.lo), _value(m.hi)],
        "scale": _value(m.scale),
        "zero_point": _value(m.zero_point),
        "step": _value(m.step),
        "clipped_fraction": float(m.clipped_fraction),
        "mse": float(m.mse),
        "sqnr_db": float(m.sqnr_db),
        "max_abs_error": float(m.max_abs_error),
        "cosine": float(m.cosine),
    }


def report_json(
    stats: CalibrationStats,
    results: list[TensorResult],
    evaluation: CalibrationStats | None = None,
    seen: dict[str, Representativeness] | None = None,
    plan: TransformPlan | None = None,
) -> dict[str, Any]:
    """The report; activations gain `outlier_channels` and `channel_absmax`, transformed
    tensors a `transform` entry (see `report_channels`)."""
    tensors = []
    for r in results:
        entry = {**tensor_json(r), **transform_json(r, stats, plan)}
        if seen is not None and r.name in seen:
            entry.update(seen[r.name].to_json())
        tensors.append(entry)
    doc: dict[str, Any] = {
        "model": {"source": stats.model_source, "sha256": stats.model_sha256},
        "data": {"description": stats.data_description, "random": stats.data_is_random,
                 "samples": stats.n_samples},
        "notes": list(stats.notes) + (list(plan.notes) if plan is not None else []),
        "tensors": tensors,
    }
    if evaluation is not None and seen is not None:
        doc["evaluation_data"] = {
            "description": evaluation.data_description,
            "random": evaluation.data_is_random,
            "samples": evaluation.n_samples,
            "unrepresentative": [name for name, s in seen.items() if s.flagged],
        }
    return doc


def summary_line(seen: dict[str, Representativeness]) -> str:
    flagged = [s for s in seen.values() if s.flagged]
    if not flagged:
        return (f"all {len(seen)} activations: the evaluation data falls within what "
                "calibration explains")
    n = len(flagged)
    return (f"{n} tensor{'s' if n != 1 else ''} see{'s' if n == 1 else ''} values in "
            f"evaluation that calibration never saw: {', '.join(s.name for s in flagged[:5])}"
            + (" …" if n > 5 else ""))


def _short(a: np.ndarray) -> str:
    arr = np.asarray(a, dtype=np.float64).ravel()
    if arr.size == 1 or np.all(arr == arr[0]):
        return f"{arr[0]:.4g}"
    return f"{arr.min():.3g}..{arr.max():.3g} ({arr.size})"


def report_table(
    stats: CalibrationStats,
    results: list[TensorResult],
    evaluation: CalibrationStats | None = None,
    seen: dict[str, Representativeness] | None = None,
    extra_notes: list[str] | None = None,
) -> str:
    header = ["tensor", "layer", "kind", "range", "scale", "zp", "clip%", "MSE", "SQNR dB",
              "max err", "cosine"]
    if seen is not None:
        header.append("eval clip%")
    rows = []
    for r in results:
        m = r.metrics
        lo, hi = m.envelope
        row = [
            r.name, r.layer.name, r.kind.value, f"[{lo:.4g}, {hi:.4g}]", _short(m.scale),
            _short(m.zero_point), f"{100 * m.clipped_fraction:.3f}", f"{m.mse:.3g}",
            f"{m.sqnr_db:.2f}", f"{m.max_abs_error:.3g}", f"{m.cosine:.5f}",
        ]
        if seen is not None:
            s = seen.get(r.name)
            row.append("" if s is None else
                       f"{100 * s.eval_clipped:.3f}" + (" ⚠" if s.flagged else ""))
        rows.append(row)
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    lines = [f"model: {stats.model_source}", f"data:  {stats.data_description} "
             f"({stats.n_samples} samples)"]
    lines += [f"note:  {n}" for n in [*stats.notes, *(extra_notes or [])]]
    if evaluation is not None and seen is not None:
        lines.append(f"eval:  {evaluation.data_description} ({evaluation.n_samples} samples): "
                     f"{summary_line(seen)}")
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines) + "\n"
