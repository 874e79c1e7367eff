"""`qviz collect MODEL --data DATA -o STATS`: calibrate once, save the statistics."""

from __future__ import annotations

import argparse
import sys

from qviz.cli.common import checked_output, drive, load_model_and_data
from qviz.cli.options import (
    MIN_BINS,
    add_data_options,
    batch_size_type,
    input_path,
    int_in,
    output_path,
)
from qviz.core.files.validate import MAX_BINS
from qviz.core.stats.collect import collect_stats
from qviz.core.stats.stats_file import save_stats


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("collect", help="run calibration and save a stats file",
                       description="Run the model over the data once and save the statistics.")
    p.add_argument("model", help="model: .onnx, TorchScript, .pt2, or package.module:factory")
    add_data_options(p)
    p.add_argument("-o", "--output", type=output_path, required=True, help="stats file to write")
    p.add_argument("--batch-size", type=batch_size_type, default=32,
                   help="samples per run of the model")
    p.add_argument("--bins", type=int_in(MIN_BINS, MAX_BINS), default=2048,
                   help=f"histogram bins per tensor ({MIN_BINS}-{MAX_BINS})")
    p.add_argument("--state-dict", type=input_path,
                   help="state dict for a package.module:factory model")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    out = checked_output(args, args.output)
    model, data = load_model_and_data(args)
    stats = drive(collect_stats(model, data, batch_size=args.batch_size, bins=args.bins),
                  args.quiet)
    save_stats(stats, out)
    print(f"wrote {args.output}: {len(stats.tensors)} activation tensors, "
          f"{stats.n_samples} samples of {stats.data_description}", file=sys.stderr)
    for note in stats.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0
