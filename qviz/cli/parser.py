"""The command line's parser: one subparser per command module, errors as one QvizError line."""

from __future__ import annotations

import argparse
import importlib

from qviz.cli import COMMANDS
from qviz.core.errors import QvizError


class _Formatter(argparse.HelpFormatter):
    """Every option's default in its help, unless the help already says it."""

    @staticmethod
    def shows_default(action: argparse.Action) -> bool:
        """Whether the default is worth a word: a value, not "off" or "none"."""
        return (
            bool(action.option_strings)
            and action.default not in (None, False, argparse.SUPPRESS, [])
            and not isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction)
        )

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text.lower() or not self.shows_default(action):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad options as a QvizError (one line, exit code 2) and shows
    every default in --help."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> None:  # type: ignore[override]
        raise QvizError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="qviz", description="Quantization error, layer by layer.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"qviz.cli.cmd_{name}").add_parser(sub)
    for command in sub.choices.values():
        for action in command._actions:  # argparse shows no help line for help=None
            if action.help is None and _Formatter.shows_default(action):
                action.help = "default: %(default)s"
    return parser
