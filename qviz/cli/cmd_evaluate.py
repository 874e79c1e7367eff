"""`qviz evaluate MODEL --config CONFIG --data DATA`: what quantizing does to the task.

Runs the float and the quantized model over the data and prints accuracy (with labels), how
the outputs compare, where along the network error enters, size and latency, and PASS/FAIL
for each ``--criterion``. The quantization comes from a qviz config file (its saved scales,
bit for bit) or from a stats file plus the same settings `qviz report` takes.

Exit status: 0 when every criterion passes (or none was given), 1 when one fails, 2 for bad
input (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from typing import Any

from qviz.cli.common import drive, fmt_bytes, fmt_num, load_model_and_data
from qviz.cli.options import (
    add_data_options,
    add_kernel_options,
    add_limit,
    add_model_and_source,
    add_output_role,
    add_quant_options,
    batch_size_type,
    config_from_args,
    input_path,
    refuse_settings_with_config,
    role_from_args,
)
from qviz.core.errors import QvizError
from qviz.core.evaluation.criteria import Criterion, Verdict, check_all
from qviz.core.evaluation.evaluate import Evaluation, Metric, RunMode, evaluate
from qviz.core.runtime.sessions import KernelPrecision


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="accuracy, output error, size and latency of the quantized model",
        description="Run the float and the quantized (Q/DQ) model over the data and compare "
        "them. Exit status 1 when a --criterion fails.",
    )
    add_model_and_source(p)
    add_data_options(p)
    add_quant_options(p)
    g = p.add_argument_group("evaluation")
    add_kernel_options(g, native=False)
    add_output_role(g)
    add_limit(g, None, "evaluate the first N samples")
    g.add_argument("--batch-size", type=batch_size_type, default=64,
                   help="samples per run of the model")
    g.add_argument(
        "--criterion",
        action="append",
        default=[],
        metavar="TEXT",
        help="acceptance criterion, repeatable: accuracy_drop<=1, cosine>=0.99, "
        "sqnr>=30, agreement>=99",
    )
    g.add_argument(
        "--no-latency", dest="latency", action="store_false", help="skip the latency measurement"
    )
    g.add_argument("--state-dict", type=input_path,
                   help="state dict for a package.module:factory model")
    g.add_argument("--json", action="store_true", help="print JSON instead of a table")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def _check_options(args: argparse.Namespace) -> list[Criterion]:
    if args.config is not None:
        refuse_settings_with_config(args, args.config)
    return [Criterion.parse(text) for text in args.criterion]


def _results(args: argparse.Namespace, model: Any) -> tuple[list[Any], str]:
    """The analysed tensors and a description of where they come from."""
    if args.config is not None:
        from qviz.core.files.config_file import load_config, results_from_saved

        saved = load_config(args.config)
        return results_from_saved(model, saved), f"config file {args.config}"
    from qviz.core.calibration.analysis import analyze, check_stats_match
    from qviz.core.stats.stats_file import load_stats

    config = config_from_args(args)
    stats = load_stats(args.stats)
    check_stats_match(model, stats)
    w, a = config.weights, config.activations
    return analyze(model, stats, config), (
        f"stats file {args.stats}: weights {w.label}; activations {a.label}"
    )


def run(args: argparse.Namespace) -> int:
    criteria = _check_options(args)
    model, data = load_model_and_data(args)
    if data.labels is None:
        needing = [c.spec for c in criteria if c.metric.needs_labels]
        if needing:
            raise QvizError(f"{', '.join(needing)} needs labels, and {data.description} has none")
    results, source = _results(args, model)
    if not results:
        raise QvizError("the configuration quantizes nothing: nothing to evaluate")
    precision = KernelPrecision.PRECISE if args.precise_int8 else KernelPrecision.DEFAULT
    gen = evaluate(
        model,
        results,
        data,
        native=args.native,
        precision=precision,
        limit=args.limit,
        batch_size=args.batch_size,
        latency=args.latency,
        role=role_from_args(args, criteria),
    )
    evaluation: Evaluation = drive(gen, args.quiet)
    verdicts = check_all(criteria, evaluation)
    if args.json:
        doc = evaluation.to_json()
        doc["model"] = str(model.source)
        doc["config"] = source
        doc["criteria"] = [verdict_json(v) for v in verdicts]
        json.dump(doc, sys.stdout, indent=1, allow_nan=False)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(evaluation_table(evaluation, verdicts, str(model.source), source))
    return 0 if all(v.passed for v in verdicts) else 1


def verdict_json(v: Verdict) -> dict[str, Any]:
    value = v.value
    if value is not None and not math.isfinite(value):
        value = "inf" if value > 0 else ("-inf" if value < 0 else "nan")  # type: ignore[assignment]
    return {"criterion": v.criterion.spec, "passed": v.passed, "value": value, "text": v.text}


# --------------------------------------------------------------------------- table


def _fmt(value: float | None, digits: int = 2, signed: bool = False) -> str:
    return fmt_num(value, digits, signed, missing="")


_DIGITS = {Metric.COSINE: 5, Metric.KL: 5, Metric.MAX_ABS_ERROR: 4}


def _bar(sqnr: float, width: int = 30, top: float = 60.0) -> str:
    if not math.isfinite(sqnr):
        return "#" * width if sqnr > 0 else ""
    return "#" * max(0, min(width, round(width * sqnr / top)))


def evaluation_table(e: Evaluation, verdicts: Sequence[Verdict], model: str, source: str) -> str:
    mode = (
        "native INT8 (ONNX Runtime, optimizations on)"
        if e.mode is RunMode.NATIVE
        else "simulation (Q/DQ evaluated op by op)"
    )
    lines = [
        f"model:   {model}",
        f"config:  {source}",
        f"data:    {e.data_description} ({e.n_samples} samples evaluated)",
        f"mode:    {mode}",
        "",
    ]
    rows = [("metric", "float", "quantized", "delta")]
    for metric in Metric:
        if metric not in e.quantized_metrics:
            continue
        d = _DIGITS.get(metric, 2)
        rows.append(
            (
                metric.label,
                _fmt(e.float_metrics.get(metric), d),
                _fmt(e.quantized_metrics.get(metric), d),
                _fmt(e.delta.get(metric), d, signed=True),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    if len(e.outputs) > 1:
        lines += ["", "per output:"]
        for o in e.outputs:
            lines.append(
                f"  {o.name}: agreement {_fmt(o.agreement_pct)} %, SQNR "
                f"{_fmt(o.sqnr_db)} dB, cosine {_fmt(o.cosine, 5)}"
            )
    s = e.size
    lines += [
        "",
        f"size:    {fmt_bytes(s.float_bytes)} float -> {fmt_bytes(s.quantized_bytes)} "
        f"quantized ({s.ratio:.2f}x smaller{', nominal' if s.nominal else ''})",
    ]
    if e.latency is not None:
        lat = e.latency
        lines.append(
            f"latency: {lat.float_ms:.2f} ms float vs {lat.native_ms:.2f} ms native "
            f"INT8 per batch of {lat.batch_size} (median of {lat.repeats}; "
            f"{lat.speedup:.2f}x, {lat.precision.value} kernels)"
        )
    if e.fusion is not None:
        f = e.fusion
        fused = ", ".join(f"{n} ({f.kernels[n]})" for n in f.fused) or "none"
        lines.append(f"fused:   {len(f.fused)}/{f.n_layers} layers into integer kernels: {fused}")
        for name, why in f.unfused.items():
            lines.append(f"  not fused: {name}: {why}")
    for m in e.mismatch:
        if m.step is not None:
            size = f"max {_fmt(m.max_steps)} output steps"
        else:
            size = f"max |diff| {m.max_abs_diff:.4g} (float output: absolute)"
        lines.append(
            f"sim vs native: {m.output}: {size}, "
            f"{100 * m.fraction_differing:.3f} % of {m.n_elements} elements differ"
        )
    if e.depth:
        lines += ["", "error along depth (quantized model's activation vs float):"]
        name_w = max(len(p.tensor) for p in e.depth)
        layer_w = max(len(p.layer) for p in e.depth)
        for p in e.depth:
            lines.append(
                f"  {p.depth:>4}  {p.tensor.ljust(name_w)}  {p.layer.ljust(layer_w)}  "
                f"{_fmt(p.sqnr_db):>7} dB  {_bar(p.sqnr_db)}"
            )
    if verdicts:
        lines += ["", "criteria:"] + [f"  {v.text}" for v in verdicts]
    lines += [f"note:    {n}" for n in e.notes]
    return "\n".join(lines) + "\n"
