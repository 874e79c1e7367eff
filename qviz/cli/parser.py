"""The command line's parser: one subparser per command module, errors as one QvizError line."""

from __future__ import annotations

import argparse
import importlib

from qviz.cli import COMMANDS
from qviz.core.errors import QvizError


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad options as a QvizError (one line, exit code 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise QvizError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="qviz", description="Quantization error, layer by layer.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"qviz.cli.cmd_{name}").add_parser(sub)
    return parser
