"""`qviz report STATS ...`: one row per tensor under the chosen settings (table or JSON)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np

from qviz.cli.common import open_stats_and_model
from qviz.cli.options import add_quant_options, config_from_args, input_path
from qviz.core.calibration.analysis import TensorResult, analyze
from qviz.core.stats.collect import CalibrationStats


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="per-tensor ranges, scales and error metrics",
                       description="Per-tensor quantization parameters and error metrics, "
                                   "computed from a stats file without re-running the model.")
    p.add_argument("stats", type=input_path, help="stats file written by `qviz collect`")
    p.add_argument("--model", help="the model file, if it moved since collection")
    add_quant_options(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    stats, model = open_stats_and_model(args.stats, args.model)
    results = analyze(model, stats, config)
    if args.json:
        json.dump(report_json(stats, results), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(report_table(stats, results))
    return 0


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


def report_json(stats: CalibrationStats, results: list[TensorResult]) -> dict[str, Any]:
    return {
        "model": {"source": stats.model_source, "sha256": stats.model_sha256},
        "data": {"description": stats.data_description, "random": stats.data_is_random,
                 "samples": stats.n_samples},
        "notes": list(stats.notes),
        "tensors": [tensor_json(r) for r in results],
    }


def _short(a: np.ndarray) -> str:
    arr = np.asarray(a, dtype=np.float64).ravel()
    if arr.size == 1 or np.all(arr == arr[0]):
        return f"{arr[0]:.4g}"
    return f"{arr.min():.3g}..{arr.max():.3g} ({arr.size})"


def report_table(stats: CalibrationStats, results: list[TensorResult]) -> str:
    header = ["tensor", "layer", "kind", "range", "scale", "zp", "clip%", "MSE", "SQNR dB",
              "max err", "cosine"]
    rows = []
    for r in results:
        m = r.metrics
        lo, hi = m.envelope
        rows.append([
            r.name, r.layer.name, r.kind.value, f"[{lo:.4g}, {hi:.4g}]", _short(m.scale),
            _short(m.zero_point), f"{100 * m.clipped_fraction:.3f}", f"{m.mse:.3g}",
            f"{m.sqnr_db:.2f}", f"{m.max_abs_error:.3g}", f"{m.cosine:.5f}",
        ])
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    lines = [f"model: {stats.model_source}", f"data:  {stats.data_description} "
             f"({stats.n_samples} samples)"]
    lines += [f"note:  {n}" for n in stats.notes]
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines) + "\n"
