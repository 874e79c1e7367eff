"""`qviz mixed MODEL --stats STATS --data DATA --max-accuracy-drop 0.5 -o CONFIG`: mixed precision.

Finds per-layer precisions (from ``--allow``, e.g. ``int4,int8,float``) that meet the criterion
at the smallest model size (or with the fewest float layers), starting from the layers'
measured sensitivity, and confirms the answer with a full evaluation (native INT8 unless
``--simulation``). The numbers printed for the answer are that evaluation's; every other
configuration tried is listed with the numbers measured on the search subset.

The configuration is written with `save_config` (atomically), so `qviz evaluate --config` and
`qviz export` take it as it is. It is written only when the confirmed result meets the
criterion.

Exit status: 0 when the criterion is met (file written), 1 when no configuration met it (no
file), 2 for bad input (one line on stderr, no file).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from qviz.cli.common import (
    checked_output,
    drive,
    fmt_bytes,
    fmt_num,
    load_model_and_data,
)
from qviz.cli.options import (
    add_data_options,
    add_quant_options,
    add_run_options,
    cache_from_args,
    check_run_options,
    config_from_args,
    finite_float,
    input_path,
    int_in,
    output_path,
    precision_from_args,
    quant_defaults,
    sample_count,
)
from qviz.core.errors import QvizError
from qviz.core.evaluation.criteria import Criterion, CriterionMetric
from qviz.core.evaluation.evaluate import Metric, RunMode
from qviz.core.search.mixed import MixedResult, Objective, parse_precisions

DEFAULT_ALLOW = "int4,int8,float"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "mixed",
        help="find the cheapest per-layer precisions that meet a criterion",
        description="Search per-layer precisions (--allow) for a configuration that meets the "
        "criterion at the smallest size, confirm it with a full evaluation, and write it as "
        "a qviz config file. Exit status 1 when no configuration meets the criterion.",
    )
    p.add_argument("model", help="model: .onnx, TorchScript, .pt2, or package.module:factory")
    p.add_argument("--stats", type=input_path, required=True,
                   help="stats file from `qviz collect`")
    add_data_options(p)
    add_quant_options(p)
    c = p.add_argument_group("criterion (one of)")
    crit = c.add_mutually_exclusive_group(required=True)
    crit.add_argument(
        "--max-accuracy-drop",
        type=finite_float,
        metavar="POINTS",
        help="accuracy may drop at most this many points (needs labels)",
    )
    crit.add_argument(
        "--min-output-sqnr", type=finite_float, metavar="DB",
        help="output SQNR at least this many dB"
    )
    crit.add_argument(
        "--criterion",
        metavar="TEXT",
        help="any acceptance criterion: accuracy_drop<=1, cosine>=0.99, sqnr>=30, agreement>=99",
    )
    s = p.add_argument_group("search")
    s.add_argument(
        "--allow",
        default=DEFAULT_ALLOW,
        metavar="LIST",
        help=f"precisions a layer may take, comma-separated (default {DEFAULT_ALLOW}): "
        "float, or a weight format (int2..int8, uint8, nf4, fp8_e4m3fn...) with int8 "
        "activations, or WEIGHT/ACTIVATION such as int4/int4",
    )
    s.add_argument(
        "--objective",
        choices=[o.value for o in Objective],
        default=Objective.SIZE.value,
        help="what cheapest means: smallest size (default) or fewest float layers",
    )
    s.add_argument(
        "--confirm-limit",
        type=sample_count,
        metavar="N",
        help="confirm the answer on the first N samples (default: all of them)",
    )
    s.add_argument("--max-trials", type=int_in(0, 1 << 20), metavar="N",
                   help="configurations measured at most")
    add_run_options(p)
    o = p.add_argument_group("output")
    o.add_argument(
        "-o", "--output", type=output_path, required=True,
        help="qviz config file to write (.json)"
    )
    o.add_argument("--state-dict", type=input_path,
                   help="state dict for a package.module:factory model")
    o.add_argument("--json", action="store_true", help="print JSON instead of a table")
    o.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


# --bits and --format would contradict --allow, which sets every layer's formats.
_SET_BY_ALLOW = {"bits": "--bits", "fmt": "--format"}


def criterion_from_args(args: argparse.Namespace) -> Criterion:
    if args.max_accuracy_drop is not None:
        return Criterion(CriterionMetric.ACCURACY_DROP, args.max_accuracy_drop)
    if args.min_output_sqnr is not None:
        return Criterion(CriterionMetric.OUTPUT_SQNR, args.min_output_sqnr)
    return Criterion.parse(args.criterion)


def _check_options(args: argparse.Namespace) -> Criterion:
    """Everything that can be refused before loading anything."""
    check_run_options(args)
    defaults = quant_defaults()
    given = [flag for key, flag in _SET_BY_ALLOW.items() if getattr(args, key) != defaults[key]]
    if given:
        raise QvizError(f"{', '.join(given)}: --allow sets every layer's format")
    checked_output(args, args.output)
    if not args.stats.is_file():
        raise QvizError(f"{args.stats}: no such file")
    return criterion_from_args(args)


def run(args: argparse.Namespace) -> int:
    criterion = _check_options(args)
    allowed = parse_precisions(args.allow)
    base = config_from_args(args)
    from qviz.core.calibration.analysis import check_stats_match
    from qviz.core.files.config_file import save_config
    from qviz.core.search.mixed import mixed_precision
    from qviz.core.stats.stats_file import load_stats

    stats = load_stats(args.stats)
    model, data = load_model_and_data(args)
    check_stats_match(model, stats)
    if criterion.metric.needs_labels and data.labels is None:
        raise QvizError(f"{criterion.spec} needs labels, and {data.description} has none")
    result: MixedResult = drive(
        mixed_precision(
            model,
            stats,
            base,
            data,
            criterion,
            allowed,
            objective=Objective(args.objective),
            limit=args.limit,
            confirm_limit=args.confirm_limit,
            batch_size=args.batch_size,
            native=args.native,
            precision=precision_from_args(args),
            max_trials=args.max_trials,
            cache=cache_from_args(args),
        ),
        args.quiet,
    )
    written: Path | None = None
    if result.passed:
        save_config(checked_output(args, args.output), model, result.config, result.results)
        written = args.output
    if args.json:
        doc = {"model": str(model.source), "stats": str(args.stats), **result.to_json()}
        doc["written"] = None if written is None else str(written)
        json.dump(doc, sys.stdout, indent=1, allow_nan=False)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(mixed_table(result, str(model.source), written))
    return 0 if result.passed else 1


# --------------------------------------------------------------------------- table


def mixed_table(r: MixedResult, model: str, written: Path | None) -> str:
    c = r.criterion
    digits = c.metric.digits()
    sens = r.sensitivity
    run_mode = sens.quantized.mode_label
    lines = [
        f"model:     {model}",
        f"criterion: {c.spec} ({c.metric.label}); objective: {r.objective.value}",
        f"allowed:   {', '.join(p.name for p in r.allowed)}",
        f"search:    {len(r.points)} configurations measured on {r.search_samples} samples, "
        f"{run_mode}; sensitivity "
        + ("from the cache" if sens.cached else f"measured ({sens.n_runs} runs)"),
        "",
        f"configurations tried ({c.metric.label} on the search subset):",
    ]
    front = {p.index for p in r.pareto_front()}
    rows = [("#", "size", c.metric.label, "float layers", "", "pareto", "step")]
    for p in r.points:
        rows.append(
            (
                str(p.index),
                fmt_bytes(p.size_bytes),
                fmt_num(p.value, digits),
                str(p.n_float_layers),
                "pass" if p.passed else "fail",
                "*" if p.index in front else "",
                p.label + ("   <- chosen" if p.index == r.chosen.index else ""),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        lines.append(
            "  " + "  ".join(x.ljust(w) for x, w in zip(row, widths, strict=True)).rstrip()
        )
    lines += ["", "chosen precision per layer (graph node, torch module path):"]
    name_w = max(len(x.name) for x in r.choices)
    node_w = max(len(x.node_name) for x in r.choices)
    for x in r.choices:
        mark = "  (changed)" if x.changed else ""
        lines.append(
            f"  {x.name.ljust(name_w)}  {x.node_name.ljust(node_w)}  {x.op_type:<8} "
            f"{x.precision:<10} module {x.module_path or '-'}{mark}"
        )
    e = r.evaluation
    lines.append("")
    if e is None:
        lines.append("measured:  the answer is the float model itself (nothing quantized)")
    else:
        mode = (
            f"native INT8 ({e.precision.value} kernels)"
            if e.mode is RunMode.NATIVE
            else "simulation"
        )
        lines.append(f"measured:  {e.n_samples} samples of {e.data_description}, {mode}")
        if Metric.ACCURACY in e.quantized_metrics:
            lines.append(
                f"accuracy:  {fmt_num(e.float_metrics.get(Metric.ACCURACY))} % float, "
                f"{fmt_num(e.quantized_metrics[Metric.ACCURACY])} % quantized"
            )
        lines.append(f"output:    SQNR {fmt_num(e.quantized_metrics.get(Metric.SQNR))} dB")
    ratio = r.float_size_bytes / r.size_bytes if r.size_bytes else math.inf
    lines.append(
        f"size:      {fmt_bytes(r.float_size_bytes)} float -> {fmt_bytes(r.size_bytes)} "
        f"({ratio:.2f}x smaller)"
    )
    if r.verdict is not None:
        lines.append(r.verdict.text)
    elif r.passed:
        lines.append("PASS (the float model)")
    lines.append(f"wrote {written}" if written is not None else "no config written (FAIL)")
    lines += [f"note:      {n}" for n in r.notes]
    return "\n".join(lines) + "\n"
