"""Command line: `qviz [MODEL|STATS|SESSION] [--data DATA]` opens the app; subcommands run headless.

Each subcommand lives in `qviz/cli/cmd_<name>.py` and exposes `add_parser(subparsers)` and
`run(args) -> int`. A `QvizError` becomes one line on stderr and exit code 2; Ctrl+C at any
moment, start-up imports included, one line and exit code 130. This module imports nothing
heavy before `main` has taken charge of interrupts: numpy, ONNX and the commands come later.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from collections.abc import Sequence

from qviz.core.errors import QvizError

COMMANDS: tuple[str, ...] = ("collect", "report", "evaluate", "export", "sensitivity", "mixed")


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad options in one line with exit code 2 (its default code)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise QvizError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="qviz", description="Quantization error, layer by layer.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"qviz.cli.cmd_{name}").add_parser(sub)
    return parser


def _main(args_list: list[str]) -> int:
    if not args_list or (args_list[0] not in COMMANDS and args_list[0] not in ("-h", "--help")):
        from qviz.cli.gui import run_gui

        return run_gui(args_list)
    args = build_parser().parse_args(args_list)
    return int(args.run(args))


def _interrupted() -> int:
    # Further Ctrl+C while Python shuts down (joining worker threads) would print tracebacks.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.stderr.write("qviz: interrupted\n")
    return 130


def main(argv: Sequence[str] | None = None) -> int:
    """The console entry point (``argv`` None: the command line). Returns the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        code = _main(args_list)
        if argv is None:
            # The work is done: a Ctrl+C while Python shuts down must not turn it into a kill.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        return code
    except QvizError as exc:
        # One line, whatever the message quotes from a file (a name holding a newline).
        text = " ".join(str(exc).replace("\r", "\n").split("\n"))
        sys.stderr.write(f"qviz: error: {text}\n")
        return 2
    except KeyboardInterrupt:
        return _interrupted()
    except BrokenPipeError:
        # The reader went away (`qviz report ... | head`): nothing more to say to it.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
