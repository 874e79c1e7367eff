"""What the commands share when they run: loading the model and data, opening statistics,
checking where output goes, and driving a core generator with a progress bar.

Command modules import from here and from `options`, never from each other.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Generator, Iterable
from pathlib import Path
from typing import Any

from qviz.cli.options import layout_from_args, load_dataset
from qviz.cli.progress_bar import ProgressBar
from qviz.core.data.dataset import Dataset
from qviz.core.errors import QvizError
from qviz.core.files.inputs import model_files
from qviz.core.files.outputs import check_output, check_outputs
from qviz.core.model.loading import LoadedModel, load_model
from qviz.core.progress import Progress
from qviz.core.stats.collect import CalibrationStats
from qviz.core.stats.stats_file import load_stats


def load_model_and_data(args: argparse.Namespace) -> tuple[LoadedModel, Dataset]:
    """Load the model (torch models are exported with one sample of the data) and the data
    (whose description says what each input is fed; every command prints it on success)."""
    from qviz.core.data.dataset import peek_sample

    layout_from_args(args)  # a malformed --batch-axis/--const/--state fails before any load
    sample = None
    if not str(args.model).endswith(".onnx") and getattr(args, "data", None) is not None:
        sample = peek_sample(args.data)
    model = load_model(args.model, sample=sample, state_dict=getattr(args, "state_dict", None))
    return model, load_dataset(args, model)


def open_stats_and_model(
    stats_path: Path, model_path: str | None
) -> tuple[CalibrationStats, LoadedModel]:
    """A stats file and the model it was collected on (or ``model_path`` if it moved)."""
    from qviz.core.calibration.analysis import check_stats_match

    stats = load_stats(stats_path)
    source = model_path or stats.model_source
    if not Path(source).exists() and ":" not in source:
        raise QvizError(f"the model {source} recorded in {stats_path.name} is gone; pass --model")
    model = load_model(source)
    check_stats_match(model, stats)
    return stats, model


def drive(gen: Generator[Progress, None, Any], quiet: bool) -> Any:
    """Run a core generator to its result with a progress bar on stderr."""
    bar = ProgressBar(sys.stderr, enabled=not quiet)
    try:
        while True:
            try:
                bar.update(next(gen))
            except StopIteration as stop:
                return stop.value
    finally:
        bar.close()


def fmt_num(value: float | None, digits: int = 2, signed: bool = False, missing: str = "-") -> str:
    """A table cell: fixed digits, inf/-inf/nan spelled out, ``missing`` for None."""
    if value is None:
        return missing
    if not math.isfinite(value):
        return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def fmt_bytes(n: int) -> str:
    if n >= 1 << 20:
        return f"{n / (1 << 20):.2f} MiB"
    if n >= 1 << 10:
        return f"{n / (1 << 10):.1f} KiB"
    return f"{n} B"


# ---------------------------------------------------------------------------- outputs


def command_inputs(args: argparse.Namespace, *extra: str | Path | None) -> list[str | Path]:
    """Every file or folder the command reads, as its arguments name them."""
    names = ("model", "data", "stats", "config", "source", "state_dict")
    found: list[str | Path] = [getattr(args, n) for n in names if getattr(args, n, None)]
    preprocess = getattr(args, "preprocess", None)
    if preprocess and str(preprocess).endswith(".json"):
        found.append(preprocess)
    found += [e for e in extra if e]
    return found


def checked_output(
    args: argparse.Namespace,
    path: str | Path,
    *,
    files: Iterable[Path] = (),
    folder: bool = False,
    models: Iterable[str | Path | None] = (),
) -> Path:
    """Refuse ``path`` (and the other ``files`` one write produces) if it is not a place to
    write or would replace an input: the model and its external data, data, statistics,
    config, state dict (`qviz.core.files.outputs.check_output`). Returns the path to write."""
    targets = [Path(path), *files]
    inputs = command_inputs(args)
    for model in [getattr(args, "model", None), *models]:
        inputs += model_files(model, near=targets)
    target = check_output(path, inputs=inputs, folder=folder, flag="-o")
    check_outputs(list(files), inputs=inputs, flag="-o")
    return target
