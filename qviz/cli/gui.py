"""`qviz [PATH] [--data DATA] [--eval-data EVAL]`: open the desktop app.

* no path — the built-in demo model with its data, calibrating in the background;
* a model — opened, and calibrated on `--data` when given; end-to-end numbers measured on
  `--eval-data` when given, else on a part of `--data` held out for evaluation;
* a stats file (`.qvstats`) — its statistics and the model they were collected on;
* a session (`*.qviz.json`) — the model, data and every setting saved in it.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from qviz.cli import COMMANDS
from qviz.cli.display import display_problem
from qviz.core.errors import QvizError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qviz",
        description="Quantization error, layer by layer. Without a path, opens the demo.",
        epilog="Headless commands: "
        + ", ".join(f"qviz {c}" for c in COMMANDS)
        + " (see qviz COMMAND --help).",
    )
    parser.add_argument(
        "path", nargs="?", type=Path,
        help="a model (.onnx .pt .pth .ts .pt2), statistics (.qvstats) or session (.qviz.json)",
    )
    parser.add_argument("--data", type=Path, help="calibration data for the model")
    parser.add_argument(
        "--eval-data", type=Path,
        help="evaluation data (default: one sample in five of --data, held out)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=32, help="calibration batch size (default 32)"
    )
    return parser


def run_gui(argv: Sequence[str]) -> int:
    """Parse `argv`, open the window and run the event loop; returns the exit code."""
    args = build_parser().parse_args(list(argv))
    if args.batch_size < 1:
        sys.stderr.write("qviz: error: --batch-size must be at least 1\n")
        return 2
    if args.data is not None and args.path is None:
        sys.stderr.write("qviz: error: --data needs a model to calibrate\n")
        return 2
    if args.eval_data is not None and args.data is None:
        sys.stderr.write("qviz: error: --eval-data needs --data to calibrate on\n")
        return 2
    problem = display_problem()
    if problem is not None:
        sys.stderr.write(f"qviz: error: {problem}\n")
        return 2

    # Qt is imported only here so the headless subcommands never need a display.
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from qviz.app.main_window import MainWindow
    from qviz.core.files.session_file import PathKind, classify_path

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("qviz")
    app.setOrganizationName("qviz")
    window = MainWindow(batch_size=args.batch_size)

    # An exception escaping a slot would otherwise only reach stderr: show it, keep running.
    previous_hook = sys.excepthook

    def hook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        if isinstance(exc, KeyboardInterrupt):
            previous_hook(kind, exc, tb)
            return
        traceback.print_exception(kind, exc, tb)
        window.reporter.report(exc)

    sys.excepthook = hook

    def start() -> None:
        path: Path | None = args.path
        if path is None:
            window.files.open_demo()
            return
        try:
            kind = classify_path(path)
        except QvizError as exc:
            window.reporter.report(exc)
            return
        if kind is PathKind.MODEL:
            window.files.open_model(path, data_path=args.data, eval_data_path=args.eval_data)
        else:
            window.files.open_path(path)

    window.show()
    # Start once the event loop runs, so the window is on screen before any work begins.
    QTimer.singleShot(0, start)
    try:
        return int(app.exec())
    finally:
        sys.excepthook = previous_hook
