"""`qviz export STATS_OR_CONFIG --file-format FORMAT -o OUT`: the files production consumes.

From a qviz config file the saved scales are exported exactly as they are; from a stats file
the configuration comes from the same settings `qviz report` takes. Formats: the Q/DQ ONNX
model, qviz's config file, ONNX Runtime TensorQuantOverrides, a TensorRT calibration cache,
and a report (HTML/Markdown page with SVG plots, and JSON; with `--data` it includes the
measured effect and `--criterion` verdicts).

Every file is written atomically: bad input or a failure leaves no output file behind.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qviz.cli.common import checked_output, drive, open_stats_and_model
from qviz.cli.options import (
    MAX_THREADS,
    OldSpelling,
    add_data_options,
    add_float_option,
    add_kernel_options,
    add_limit,
    add_output_role,
    add_quant_options,
    batch_size_type,
    config_for_model,
    input_path,
    int_in,
    layout_from_args,
    load_dataset,
    output_path,
    refuse_settings_with_config,
    role_from_args,
)
from qviz.core.calibration.analysis import TensorResult, analyze
from qviz.core.calibration.config import QuantConfig
from qviz.core.data.dataset import random_data
from qviz.core.errors import QvizError
from qviz.core.evaluation.accumulators import OutputRole
from qviz.core.evaluation.criteria import Criterion
from qviz.core.evaluation.evaluate import Evaluation, evaluate
from qviz.core.files.config_file import is_config_file, load_config, save_config
from qviz.core.files.config_rebuild import saved_results
from qviz.core.files.export import TRT_DEFAULT_VERSION, ExportFormat, export_qdq, qdq_files
from qviz.core.files.export_transformed import export_transformed, transformed_path
from qviz.core.files.report import PageFormat, build_report, report_files, write_report
from qviz.core.graph.qdq import QdqModel
from qviz.core.model.loading import LoadedModel, load_model
from qviz.core.runtime.sessions import KernelPrecision, Threads
from qviz.core.runtime.slow_layers import FloatedLayer, SlowLayers, leave_slow_layers_float
from qviz.core.runtime.speed import SpeedProfile, layer_speed
from qviz.core.runtime.speed_check import CHECK_BUDGET, check_speed, timing_feeds
from qviz.core.stats.stats_file import is_stats_file
from qviz.core.transforms.advice import smoothquant_advice
from qviz.core.transforms.plan import TransformPlan, transform_model


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="write the Q/DQ model, config, ORT overrides, TensorRT cache or report",
        description="Export a configuration from a qviz config file (its saved scales, bit "
                    "for bit) or from a stats file plus the settings `qviz report` takes.",
    )
    p.add_argument("source", type=input_path, metavar="STATS_OR_CONFIG",
                   help="stats file from `qviz collect`, or a qviz config file (.json)")
    add_quant_options(p, format_alias=False)  # here --format was the file type
    choices = [f.value for f in ExportFormat]
    p.add_argument("--file-format", dest="export_format", choices=choices,
                   help="what to write (required): " +
                   "; ".join(f"{f.value}: {f.description}" for f in ExportFormat))
    p.add_argument("--format", dest="export_format", choices=choices, action=OldSpelling,
                   new="--file-format")
    p.add_argument("-o", "--output", type=output_path, required=True,
                   help="file to write (report: .html, .md, .json, or a folder)")
    p.add_argument("--model", help="the model file, if it moved since the stats/config were made")
    add_float_option(p)
    add_data_options(p, required=False)
    g = p.add_argument_group("report")
    g.add_argument("--criterion", action="append", default=[], metavar="TEXT",
                   help="acceptance criterion for the report (needs --data), repeatable: "
                        "accuracy_drop<=1, cosine>=0.99, sqnr>=30, agreement>=99")
    add_kernel_options(g, native=False)
    add_output_role(g)
    add_limit(g, None, "evaluate the first N samples")
    g.add_argument("--batch-size", type=batch_size_type, default=64,
                   help="samples per run of the model")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    sp = p.add_argument_group("speed (Q/DQ model)")
    sp.add_argument("--speed-batch", type=batch_size_type, default=1, metavar="N",
                    help="time the exported Q/DQ model against float at this batch (default 1; "
                         "the inputs come from --data, else random)")
    sp.add_argument("--threads", type=int_in(0, MAX_THREADS), default=0, metavar="N",
                    help="intra-op threads for the timing, of the Q/DQ model or the report's "
                         "evaluation (default 0: ORT's choice)")
    sp.add_argument("--no-speed-check", dest="speed_check", action="store_false",
                    help="do not time the exported model against float (nor its layers: "
                         "--slow-layers then changes nothing)")
    sp.add_argument("--slow-layers", choices=[s.value for s in SlowLayers],
                    default=SlowLayers.FLOAT.value,
                    help="layers whose integer kernel is measured slower than float here: "
                         "float leaves them float (unless the configuration sets that layer "
                         "explicitly), quantize keeps them integer (default: float)")
    t = p.add_argument_group("TensorRT")
    t.add_argument("--trt-version", default=TRT_DEFAULT_VERSION,
                   help=f"TensorRT version in the cache header (default {TRT_DEFAULT_VERSION} "
                        "= 8.6.1; TensorRT ignores a cache from another version)")
    p.set_defaults(run=run)


def _check_options(args: argparse.Namespace, fmt: ExportFormat) -> list[Criterion]:
    """Refuse contradictory options before anything is loaded or written."""
    has_data = args.data is not None or args.random is not None
    if fmt is not ExportFormat.REPORT:
        extra = [name for name, given in (
            # A Q/DQ model's speed check reads its inputs from --data/--random.
            ("--data/--random", has_data and fmt is not ExportFormat.QDQ),
            ("--criterion", bool(args.criterion)),
            ("--native", args.native), ("--limit", args.limit is not None),
            ("--precise-int8", args.precise_int8),
            ("--outputs", args.outputs != OutputRole.AUTO.value),
            ("--batch-axis/--const/--state", not layout_from_args(args).is_empty),
        ) if given]
        if extra:
            raise QvizError(f"{', '.join(extra)} only apply to --file-format report")
    else:
        PageFormat.for_path(args.output)  # a bad suffix fails now, not after evaluating
        if args.criterion and not has_data:
            raise QvizError("--criterion needs --data (or --random) to measure against")
    if fmt is not ExportFormat.QDQ:
        extra = [name for name, given in (
            ("--speed-batch", args.speed_batch != 1), ("--no-speed-check", not args.speed_check),
            ("--threads", args.threads != 0 and fmt is not ExportFormat.REPORT),
        ) if given]
        if extra:
            raise QvizError(f"{', '.join(extra)} only apply to --file-format qdq")
    if fmt is not ExportFormat.TRT_CACHE and args.trt_version != TRT_DEFAULT_VERSION:
        raise QvizError("--trt-version only applies to --file-format trt-cache")
    if not args.trt_version.isdigit() or len(args.trt_version) > 9:
        raise QvizError(f"--trt-version must be digits such as 8601, got {args.trt_version!r}")
    return [Criterion.parse(text) for text in args.criterion]


def load_results(
    args: argparse.Namespace,
) -> tuple[LoadedModel, list[TensorResult], QuantConfig, str, TransformPlan]:
    """Model to quantize (transformed when the settings transform it), analysed tensors,
    configuration, a description of where they come from, and the transforms' plan."""
    source: Path = args.source
    if not source.exists():
        raise QvizError(f"{source}: no such file")
    # "package.module:factory" models are not files.
    if args.model and ":" not in args.model and not Path(args.model).exists():
        raise QvizError(f"--model {args.model}: no such file")
    if is_stats_file(source):
        stats, model = open_stats_and_model(source, args.model, args.float_model)
        config = config_for_model(args, model)
        plan = transform_model(model, stats, config)
        results = analyze(plan.model, plan.stats, config)
        return plan.model, results, config, f"stats file {source}", plan
    if not is_config_file(source):
        raise QvizError(f"{source} is neither a qviz stats file nor a qviz config file")
    refuse_settings_with_config(args, source, where="to a stats file")
    saved = load_config(source)
    model_path = args.model or saved.model_source
    if not Path(model_path).exists() and ":" not in model_path:
        raise QvizError(f"the model {model_path} recorded in {source.name} is gone; pass --model")
    model = load_model(model_path, float_model=args.float_model or saved.model_float_source)
    plan, results = saved_results(model, saved)
    return plan.model, results, saved.quant_config, f"config file {source}", plan


def _evaluate(args: argparse.Namespace, model: LoadedModel,
              results: list[TensorResult]) -> Evaluation:
    data = load_dataset(args, model)
    precision = KernelPrecision.PRECISE if args.precise_int8 else KernelPrecision.DEFAULT
    gen = evaluate(model, results, data, native=args.native, precision=precision,
                   limit=args.limit, batch_size=args.batch_size, role=role_from_args(args),
                   threads=Threads(intra_op=args.threads))
    evaluation: Evaluation = drive(gen, args.quiet)
    return evaluation


def _check_output(
    args: argparse.Namespace, fmt: ExportFormat, model: LoadedModel | None = None
) -> Path:
    """Where to write, refused if it is not writable or would replace an input (the source,
    the model, its external data, the data); a report's beside-files are checked too."""
    recorded = [str(model.source)] if model is not None else []
    if fmt is ExportFormat.REPORT:
        files = report_files(args.output)
        folder = PageFormat.for_path(args.output) is PageFormat.FOLDER
        # A new report folder is built whole beside its target: nothing inside to check yet.
        inside = files[1:] if not folder or files[0].is_dir() else ()
        return checked_output(args, files[0], files=inside, folder=folder, models=recorded)
    if fmt in (ExportFormat.ORT_OVERRIDES, ExportFormat.TRT_CACHE):
        # With transforms, the transformed float model is written beside (export_transformed).
        beside = [transformed_path(Path(args.output))]
        return checked_output(args, args.output, files=beside, models=recorded)
    return checked_output(args, args.output, models=recorded)


class _Timing:
    """The export's timing inputs and one profile per Q/DQ model (a model is measured once
    even when both the slow-layer decision and the speed check read it)."""

    def __init__(self, args: argparse.Namespace, model: LoadedModel) -> None:
        has_data = args.data is not None or args.random is not None
        data = (
            load_dataset(args, model) if has_data else random_data(model.inputs, args.speed_batch)
        )
        self.random = data.is_random
        self.feeds = timing_feeds(data, args.speed_batch)
        self.threads = Threads(intra_op=args.threads)
        self.model = model
        self._seen: dict[int, SpeedProfile] = {}

    def measure(self, qdq: QdqModel) -> SpeedProfile:
        if id(qdq) not in self._seen:
            self._seen[id(qdq)] = layer_speed(self.model, qdq, self.feeds,
                                              threads=self.threads, budget=CHECK_BUDGET)
        return self._seen[id(qdq)]


def _slow_layers(
    args: argparse.Namespace, timing: _Timing | None, model: LoadedModel,
    results: list[TensorResult], config: QuantConfig,
) -> tuple[list[TensorResult], tuple[FloatedLayer, ...]]:
    """With --slow-layers float, the configuration without the layers whose integer kernel
    is slower than float here (see qviz.core.runtime.slow_layers)."""
    if timing is None or SlowLayers(args.slow_layers) is SlowLayers.QUANTIZE:
        return results, ()
    return leave_slow_layers_float(model, results, config, timing.measure)


def _speed_lines(timing: _Timing, model: LoadedModel, results: list[TensorResult],
                 qdq: QdqModel) -> list[str]:
    """The exported model timed against float: a summary, and a warning when it is slower.
    A check that cannot run says so; the file is written either way."""
    try:
        check = check_speed(model, results, timing.feeds, qdq=qdq, threads=timing.threads,
                            random_input=timing.random, measure=timing.measure)
    except QvizError as exc:
        return [f"speed not checked: {exc}"]
    where = " (on random input)" if check.random_input else ""
    lines = [f"speed: {check.summary}{where}"]
    if check.warning is not None:
        lines.append(f"warning: {check.warning}")
    return lines


def run(args: argparse.Namespace) -> int:
    if args.export_format is None:
        names = ", ".join(f.value for f in ExportFormat)
        raise QvizError(f"say what to write with --file-format ({names})")
    fmt = ExportFormat(args.export_format)
    criteria = _check_options(args, fmt)
    _check_output(args, fmt)  # before loading: a bad -o fails at once
    model, results, config, origin, plan = load_results(args)
    if not results and fmt is not ExportFormat.CONFIG:
        raise QvizError("the configuration quantizes nothing: nothing to export")
    out = _check_output(args, fmt, model)
    written: tuple[Path, ...] = (args.output,)
    notes: tuple[str, ...] = ()
    if fmt is ExportFormat.QDQ:
        timing: _Timing | None = None
        problem = ""
        if args.speed_check:
            try:
                timing = _Timing(args, model)
            except QvizError as exc:
                problem = f"speed not checked: {exc}"
        results, floated = _slow_layers(args, timing, model, results, config)
        for f in floated:
            sys.stderr.write(f"note: {f.text}\n")
        qdq = export_qdq(model, results, out)
        notes = qdq.notes
        if timing is not None:
            notes = (*notes, *_speed_lines(timing, model, results, qdq))
        elif problem:
            notes = (*notes, problem)
        written = qdq_files(out)
    elif fmt is ExportFormat.CONFIG:
        save_config(out, model, config, results, plan)
    elif fmt is ExportFormat.ORT_OVERRIDES:
        written = export_transformed(fmt, plan, results, out, args.trt_version)
    elif fmt is ExportFormat.TRT_CACHE:
        written = export_transformed(fmt, plan, results, out, args.trt_version)
    else:
        has_data = args.data is not None or args.random is not None
        evaluation = _evaluate(args, model, results) if has_data else None
        report = build_report(model, results, evaluation, config=config, criteria=criteria,
                              notes=[f"configuration from {origin}"])
        written = write_report(report, out)
        if report.outcome is not None:
            sys.stdout.write(f"verdict: {report.outcome.value}\n")
    advice = smoothquant_advice(plan.stats, results) if plan.stats is not None else None
    for note in [*notes, *plan.notes, *([advice] if advice else [])]:
        prefix = "" if note.startswith(("speed: ", "warning: ")) else "note: "
        sys.stdout.write(f"{prefix}{note}\n")
    sys.stdout.write(f"wrote {', '.join(str(p) for p in written)} "
                     f"({len(results)} quantized tensors, {fmt.value})\n")
    return 0
