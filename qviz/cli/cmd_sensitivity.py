"""`qviz sensitivity MODEL --config CONFIG --data DATA`: which layers hurt, measured.

For every quantized layer, two real runs on the evaluation subset: only this layer quantized
(how much the task metric drops) and only this layer kept float (how much it recovers), beside
the layer's local weight and activation SQNR. The quantization comes from a qviz config file
(its saved scales, bit for bit) or a stats file plus the settings `qviz report` takes.

Reports are cached (``~/.cache/qviz/sensitivity`` or ``--cache-dir``): running the command
again on the same model, scales and samples prints the stored measurements at once.

Exit status: 0, or 2 for bad input (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from qviz.cli.common import drive, fmt_num, load_model_and_data
from qviz.cli.options import (
    add_data_options,
    add_model_and_source,
    add_quant_options,
    add_run_options,
    cache_from_args,
    check_run_options,
    config_from_args,
    input_path,
    precision_from_args,
    refuse_settings_with_config,
)
from qviz.core.errors import QvizError
from qviz.core.evaluation.evaluate import Metric
from qviz.core.progress import format_seconds
from qviz.core.search.sensitivity import SensitivityReport, float_value

# Short names people type, beside the keys `qviz evaluate --json` uses.
METRIC_NAMES: dict[str, Metric] = {
    "accuracy": Metric.ACCURACY,
    "agreement": Metric.AGREEMENT,
    "sqnr": Metric.SQNR,
    "cosine": Metric.COSINE,
    "kl": Metric.KL,
    **{m.value: m for m in Metric},
}
SORT_KEYS = ("depth", "score", "drop", "recovery")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sensitivity",
        help="per-layer sensitivity: quantize only this layer / keep only this layer float",
        description="For every quantized layer, run the model with only that layer quantized "
        "and with only that layer kept float, and report how much the task metric drops and "
        "recovers, beside the layer's own SQNR. Results are cached.",
    )
    add_model_and_source(p)
    add_data_options(p)
    add_quant_options(p)
    add_run_options(p)
    g = p.add_argument_group("output")
    g.add_argument(
        "--metric",
        choices=sorted(METRIC_NAMES),
        metavar="METRIC",
        help="task metric: accuracy (default with labels), agreement, sqnr (default "
        "without labels), cosine, kl",
    )
    g.add_argument("--sort", choices=SORT_KEYS, default="depth",
                   help="row order, in the table and the JSON")
    g.add_argument("--state-dict", type=input_path,
                   help="state dict for a package.module:factory model")
    g.add_argument("--json", action="store_true", help="print JSON instead of a table")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    check_run_options(args)
    if args.config is not None:
        refuse_settings_with_config(args, args.config)
    metric = METRIC_NAMES[args.metric] if args.metric else None
    from qviz.core.search.sensitivity import sensitivity

    model, data = load_model_and_data(args)
    if metric is Metric.ACCURACY and data.labels is None:
        raise QvizError(f"--metric accuracy needs labels, and {data.description} has none")
    if args.config is not None:
        from qviz.core.files.config_file import load_config

        source: Any = load_config(args.config)
        config = None
        origin = f"config file {args.config}"
    else:
        from qviz.core.stats.stats_file import load_stats

        source = load_stats(args.stats)
        config = config_from_args(args)
        origin = (
            f"stats file {args.stats}: weights {config.weights.label}; "
            f"activations {config.activations.label}"
        )
    report: SensitivityReport = drive(
        sensitivity(
            model,
            source,
            config,
            data,
            metric=metric,
            limit=args.limit,
            batch_size=args.batch_size,
            native=args.native,
            precision=precision_from_args(args),
            cache=cache_from_args(args),
        ),
        args.quiet,
    )
    if args.json:
        doc = {"model": str(model.source), "config": origin, **report.to_json()}
        doc["ranking"] = [s.name for s in report.ranking()]
        # The layers in the order --sort asks for, as the table has them, with their rank.
        entries = {e["name"]: e for e in doc["layers"]}
        rank = {name: i + 1 for i, name in enumerate(doc["ranking"])}
        doc["sort"] = args.sort
        doc["layers"] = [
            {**entries[s.name], "rank": rank[s.name]} for s in _rows(report, args.sort)
        ]
        json.dump(doc, sys.stdout, indent=1, allow_nan=False)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(sensitivity_table(report, str(model.source), origin, args.sort))
    return 0


# --------------------------------------------------------------------------- table


def metric_digits(metric: Metric) -> int:
    return 5 if metric in (Metric.COSINE, Metric.KL) else 2


def _rows(report: SensitivityReport, sort: str) -> list[Any]:
    if sort == "depth":
        return list(report.layers)
    if sort == "score":
        return list(report.ranking())
    if sort == "drop":
        return sorted(report.layers, key=lambda s: -(s.drop if s.drop is not None else -math.inf))
    return sorted(report.layers, key=lambda s: -s.recovery)


def sensitivity_table(report: SensitivityReport, model: str, source: str, sort: str) -> str:
    m = report.metric
    d = metric_digits(m)
    mode = report.quantized.mode_label
    how = (
        "from the cache"
        if report.cached
        else f"{report.n_runs} runs in {format_seconds(report.elapsed_s)}"
    )
    lines = [
        f"model:    {model}",
        f"config:   {source}",
        f"data:     {report.data_description} ({report.n_samples} samples per variant)",
        f"mode:     {mode}; {how}",
        f"metric:   {m.label}: float {fmt_num(report.float_value, d)}, all quantized "
        f"{fmt_num(report.quantized_value, d)}",
        "",
    ]
    rank = {s.name: i + 1 for i, s in enumerate(report.ranking())}
    header = (
        "rank", "layer", "node", "op", "depth", "w SQNR", "a SQNR",
        "only quantized", "drop", "only float", "recovery",
    )  # fmt: skip
    rows = [header]
    for s in _rows(report, sort):
        rows.append(
            (
                str(rank[s.name]),
                s.name,
                s.node_name,
                s.op_type,
                str(s.depth),
                fmt_num(s.weight_sqnr_db, 1),
                fmt_num(s.activation_sqnr_db, 1),
                fmt_num(s.quantized_only.value(m), d),
                fmt_num(s.drop, d, signed=True),
                fmt_num(s.float_only.value(m), d),
                fmt_num(s.recovery, d, signed=True),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        cells = [
            c.rjust(w) if i >= 4 else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    lines += [
        "",
        "only quantized: this layer quantized, the rest float; drop = float "
        f"({fmt_num(float_value(m, report.float_metrics), d)}) minus that"
        + (" (none for SQNR: the float model's is infinite)" if m is Metric.SQNR else ""),
        "only float: this layer float, the rest quantized; recovery = that minus all "
        "quantized. w/a SQNR (dB): the layer's own weight and input error (local view).",
    ]
    lines += [f"note:     {n}" for n in report.notes]
    return "\n".join(lines) + "\n"
