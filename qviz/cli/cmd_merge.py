"""`qviz merge A.qvstats B.qvstats … -o ALL.qvstats`: statistics of one model, put together.

Shards collected on several machines (`qviz collect --shard K/N`) merge into the statistics of
all their data: counts, min/max, per-channel and exponent statistics exactly; histograms with
the bounded error `qviz.core.stats.merge` documents, every rebinned range recorded in the
file. Files of different models, bin counts, schemas or tensors are refused in one line.

Exit status: 0, or 2 for bad input (one line on stderr, nothing written).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qviz.core.errors import QvizError
from qviz.core.stats.merge import MergeInput, merge_stats, quantile_error_bound
from qviz.core.stats.stats_file import load_stats, read_schema_version, save_stats


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "merge",
        help="merge statistics files of one model (e.g. shards) into one",
        description="Merge statistics files collected on the same model (for example with "
        "`qviz collect --shard K/N` on several machines) into one file that opens like any "
        "other. Counts, min/max and per-channel statistics merge exactly; histograms that "
        "do not line up are rebinned with a bounded error, recorded in the file.",
    )
    p.add_argument("inputs", nargs="+", type=Path, metavar="STATS", help="statistics files")
    p.add_argument("-o", "--output", type=Path, required=True, help="merged file to write")
    p.add_argument("--quiet", action="store_true", help="no summary on stderr")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    inputs: list[Path] = args.inputs
    if len(inputs) < 2:
        raise QvizError("merge needs at least two statistics files")
    out = args.output.resolve()
    for path in inputs:
        if path.resolve() == out:
            raise QvizError(f"-o {args.output} is one of the inputs; write the merge elsewhere")
    loaded = [
        MergeInput(str(path), read_schema_version(path), load_stats(path)) for path in inputs
    ]
    merged = merge_stats(loaded)
    save_stats(merged, args.output)
    if not args.quiet:
        rebinned = merged.provenance.rebinned
        print(
            f"wrote {args.output}: {len(merged.tensors)} tensors, {merged.n_samples} samples "
            f"from {len(inputs)} files; {len(rebinned)} histogram ranges rebinned",
            file=sys.stderr,
        )
        worst = max(
            (
                (quantile_error_bound(merged, name) / t.histogram.bin_width, name)
                for name, t in merged.tensors.items()
                if merged.provenance.rebinned_for(name)
            ),
            default=None,
        )
        if worst is not None:
            print(
                f"note: histogram quantiles are within {worst[0]:.2f} merged bins of exact "
                f"(worst tensor {worst[1]})",
                file=sys.stderr,
            )
    return 0
