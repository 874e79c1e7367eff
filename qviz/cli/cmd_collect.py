"""`qviz collect MODEL --data DATA -o STATS`: calibrate once, save the statistics."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Generator
from dataclasses import replace
from typing import cast

from qviz.cli.common import checked_output, drive, load_model_and_data
from qviz.cli.options import (
    MIN_BINS,
    add_data_options,
    add_float_option,
    batch_size_type,
    input_path,
    int_in,
    output_path,
)
from qviz.core.data.shard import Shard, take_shard
from qviz.core.errors import QvizError
from qviz.core.files.validate import MAX_BINS
from qviz.core.progress import Progress
from qviz.core.stats.channel_stats import DEFAULT_CHANNEL_BINS
from qviz.core.stats.collect import CalibrationStats, collect_stats
from qviz.core.stats.gram import DEFAULT_GRAM_BUDGET
from qviz.core.stats.provenance import Provenance, ShardOrigin
from qviz.core.stats.stats_file import save_stats
from qviz.core.stats.weight_collect import WeightStatsMeanwhile


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("collect", help="run calibration and save a stats file",
                       description="Run the model over the data once and save the statistics.")
    p.add_argument("model", help="model: .onnx, TorchScript, .pt2, or package.module:factory")
    add_float_option(p)
    add_data_options(p)
    p.add_argument("-o", "--output", type=output_path, required=True, help="stats file to write")
    p.add_argument("--batch-size", type=batch_size_type, default=32,
                   help="samples per run of the model")
    p.add_argument("--bins", type=int_in(MIN_BINS, MAX_BINS), default=2048,
                   help=f"histogram bins per tensor ({MIN_BINS}-{MAX_BINS})")
    p.add_argument("--channel-bins", type=int_in(0, 1024), default=DEFAULT_CHANNEL_BINS,
                   help="histogram bins per activation channel, even (SmoothQuant, "
                        "equalization and the channel view read them; 0: moments only)")
    p.add_argument("--gram", action="store_true",
                   help="also keep the Gram matrix XᵀX of every weighted layer's input (GPTQ)")
    p.add_argument("--gram-budget", type=float, default=DEFAULT_GRAM_BUDGET / 2**30,
                   metavar="GIB", help="memory the Gram matrices may take, in GiB")
    p.add_argument("--state-dict", type=input_path,
                   help="state dict for a package.module:factory model")
    p.add_argument("--no-weight-stats", dest="weight_stats", action="store_false",
                   help="do not store the large weights' statistics (report, export and the "
                        "app then compute them from the model on first use)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--shard", metavar="K/N",
                   help="collect only the K-th of N contiguous slices of the data (merge the "
                        "N files with `qviz merge`)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.channel_bins % 2:
        raise QvizError(f"--channel-bins must be even, got {args.channel_bins}")
    if not 0 < args.gram_budget < float("inf"):
        raise QvizError(f"--gram-budget must be a positive number of GiB, got {args.gram_budget}")
    out = checked_output(args, args.output)
    shard = Shard.parse(args.shard) if args.shard else None
    model, data = load_model_and_data(args)
    whole = data
    if shard is not None:
        data = take_shard(whole, shard)
    meanwhile = WeightStatsMeanwhile(model) if args.weight_stats else None
    try:
        calibration = collect_stats(model, data, batch_size=args.batch_size, bins=args.bins,
                                    channel_bins=args.channel_bins, gram=args.gram,
                                    gram_budget=int(args.gram_budget * 2**30))
        if meanwhile is not None:
            calibration = _after_first(calibration, meanwhile.stop)
        stats = drive(calibration, args.quiet)
    finally:
        if meanwhile is not None:
            meanwhile.stop()
    if shard is not None:
        first, end = shard.bounds(len(whole))
        origin = ShardOrigin(shard, first, end, len(whole), whole.description)
        stats = replace(stats, provenance=Provenance(shard=origin))
    if meanwhile is not None:
        weights = drive(meanwhile.finish(), args.quiet)
        stats = replace(stats, weights=weights)
    save_stats(stats, out)
    stored = f", {len(stats.weights)} large weights" if stats.weights else ""
    print(f"wrote {args.output}: {len(stats.tensors)} activation tensors{stored}, "
          f"{stats.n_samples} samples of {stats.data_description}", file=sys.stderr)
    for note in stats.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


def _after_first(
    gen: Generator[Progress, None, CalibrationStats], call: Callable[[], None]
) -> Generator[Progress, None, CalibrationStats]:
    """`gen`, calling `call()` once its first Progress arrives: calibration reports its
    start once ONNX Runtime's session is built, before the first batch runs."""
    try:
        first = next(gen)
    except StopIteration as stop:
        return cast(CalibrationStats, stop.value)
    finally:
        call()
    yield first
    return (yield from gen)
