"""Command line: `qviz [MODEL|STATS|SESSION] [--data DATA]` opens the app; subcommands run headless.

Each subcommand lives in `qviz/cli/cmd_<name>.py` and exposes `add_parser(subparsers)` and
`run(args) -> int`. A `QvizError` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from qviz.core.errors import QvizError

COMMANDS: tuple[str, ...] = (
    "collect", "merge", "report", "evaluate", "export", "sensitivity", "mixed",
)


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad options in one line with exit code 2 (its default code)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"qviz: error: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="qviz", description="Quantization error, layer by layer.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"qviz.cli.cmd_{name}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or (args_list[0] not in COMMANDS and args_list[0] not in ("-h", "--help")):
        from qviz.cli.gui import run_gui

        return run_gui(args_list)
    args = build_parser().parse_args(args_list)
    try:
        return int(args.run(args))
    except QvizError as exc:
        sys.stderr.write(f"qviz: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("qviz: interrupted\n")
        return 130
