"""`qviz collect MODEL --data DATA -o STATS`: calibrate once, save the statistics."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Generator
from pathlib import Path
from typing import TypeVar

from qviz.cli.options import add_data_options, load_dataset
from qviz.cli.progress_bar import ProgressBar
from qviz.core.errors import QvizError
from qviz.core.model.loading import load_model
from qviz.core.progress import Progress
from qviz.core.stats.collect import collect_stats
from qviz.core.stats.stats_file import save_stats
from qviz.core.stats.weight_collect import collect_weight_stats

T = TypeVar("T")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("collect", help="run calibration and save a stats file",
                       description="Run the model over the data once and save the statistics.")
    p.add_argument("model", help="model: .onnx, TorchScript, .pt2, or package.module:factory")
    add_data_options(p)
    p.add_argument("-o", "--output", type=Path, required=True, help="stats file to write")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--bins", type=int, default=2048, help="histogram bins per tensor")
    p.add_argument("--state-dict", type=Path, help="state dict for a package.module:factory model")
    p.add_argument("--no-weight-stats", dest="weight_stats", action="store_false",
                   help="do not store the large weights' statistics (report, export and the "
                        "app then compute them from the model on first use)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1 or args.bins < 16:
        raise QvizError("--batch-size must be >= 1 and --bins >= 16")
    model, data = load_model_and_data(args)
    bar = ProgressBar(sys.stderr, enabled=not args.quiet)
    stats = drive(collect_stats(model, data, batch_size=args.batch_size, bins=args.bins), bar)
    if args.weight_stats:
        weights = drive(collect_weight_stats(model), bar)
        stats = dataclasses.replace(stats, weights=weights)
    save_stats(stats, args.output)
    stored = f", {len(stats.weights)} large weights" if stats.weights else ""
    print(f"wrote {args.output}: {len(stats.tensors)} activation tensors{stored}, "
          f"{stats.n_samples} samples of {stats.data_description}", file=sys.stderr)
    for note in stats.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


def drive(gen: Generator[Progress, None, T], bar: ProgressBar) -> T:
    """Run a core generator to its end, showing its progress."""
    while True:
        try:
            bar.update(next(gen))
        except StopIteration as stop:
            bar.close()
            return stop.value


def load_model_and_data(args: argparse.Namespace):  # -> tuple[LoadedModel, Dataset]
    """Load the model (torch models are exported with one sample of the data) and the data."""
    from qviz.core.data.dataset import peek_sample

    sample = None
    if not str(args.model).endswith(".onnx") and getattr(args, "data", None) is not None:
        sample = peek_sample(args.data)
    model = load_model(args.model, sample=sample, state_dict=getattr(args, "state_dict", None))
    return model, load_dataset(args, model)
