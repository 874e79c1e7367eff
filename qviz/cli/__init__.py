"""Command line: `qviz [MODEL|STATS|SESSION] [--data DATA]` opens the app; subcommands run headless.

Each subcommand lives in `qviz/cli/cmd_<name>.py` and exposes `add_parser(subparsers)` and
`run(args) -> int`. A `QvizError` becomes one line on stderr and exit code 2; Ctrl+C at any
moment, start-up imports included, one line and exit code 130. This module imports nothing
heavy before `main` has taken charge of interrupts: numpy, ONNX and the commands come later.
"""

from __future__ import annotations

# Only what Python has loaded already: an interrupt must find `main` in charge, so argparse,
# numpy, ONNX and the commands are imported inside it.
import os
import signal
import sys
from typing import TYPE_CHECKING

from qviz.core.errors import QvizError

if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from types import FrameType

COMMANDS: tuple[str, ...] = ("collect", "report", "evaluate", "export", "sensitivity", "mixed")
_interrupt_seen = False


def _on_interrupt(signum: int, frame: FrameType | None) -> None:
    # Remembered: an extension module interrupted while it initialises (numpy, onnxruntime)
    # turns the KeyboardInterrupt into an ImportError of its own, sometimes without a cause.
    global _interrupt_seen
    _interrupt_seen = True
    raise KeyboardInterrupt


def _on_interrupt_later(signum: int, frame: FrameType | None) -> None:
    global _interrupt_seen
    _interrupt_seen = True


def _import_commands() -> argparse.ArgumentParser:
    """The parser, with every command module imported (numpy, ONNX, ONNX Runtime...).

    A C extension interrupted half-way through its initialisation can be left broken (seen:
    an ImportError, once a crash at exit), so from the console a Ctrl+C during these imports
    is held until they finish, then acted on.
    """
    from qviz.cli.parser import build_parser

    ours = signal.getsignal(signal.SIGINT) is _on_interrupt
    if ours:
        signal.signal(signal.SIGINT, _on_interrupt_later)
    try:
        return build_parser()
    finally:
        if ours:
            signal.signal(signal.SIGINT, _on_interrupt)
            if _interrupt_seen:
                raise KeyboardInterrupt


def _main(args_list: list[str]) -> int:
    if not args_list or (args_list[0] not in COMMANDS and args_list[0] not in ("-h", "--help")):
        from qviz.cli.gui import run_gui

        return run_gui(args_list)
    parser = _import_commands()
    args = parser.parse_args(args_list)
    return int(args.run(args))


def _interrupted() -> int:
    # Further Ctrl+C while Python shuts down (joining worker threads) would print tracebacks.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.stderr.write("qviz: interrupted\n")
    return 130


def main(argv: Sequence[str] | None = None) -> int:
    """The console entry point (``argv`` None: the command line). Returns the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if argv is None:  # the console: Ctrl+C is ours from here on
        signal.signal(signal.SIGINT, _on_interrupt)
    try:
        code = _main(args_list)
        if argv is None:
            # The work is done: a Ctrl+C while Python shuts down must not turn it into a kill.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        return code
    except QvizError as exc:
        if _interrupt_seen:  # e.g. "needs the torch extra" from an interrupted import
            return _interrupted()
        # One line, whatever the message quotes from a file (a name holding a newline).
        text = " ".join(str(exc).replace("\r", "\n").split("\n"))
        sys.stderr.write(f"qviz: error: {text}\n")
        return 2
    except KeyboardInterrupt:
        return _interrupted()
    except Exception as exc:
        # An extension module interrupted while it initialises re-raises Ctrl+C as its own
        # error (onnxruntime: ImportError "initialization failed" from KeyboardInterrupt).
        if _interrupt_seen or _caused_by_interrupt(exc):
            return _interrupted()
        if isinstance(exc, BrokenPipeError):
            return _broken_pipe()
        raise


def _caused_by_interrupt(exc: BaseException) -> bool:
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


def _broken_pipe() -> int:
    # The reader went away (`qviz report ... | head`): nothing more to say to it.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 1

