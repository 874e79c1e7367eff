"""Which options the command line wrote, apart from the defaults argparse filled in.

A value equal to its default is still a choice: ``--method mse`` on a quantized model asks
for MSE ranges on its tensors even where MSE is also the default for a float model.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import Any

__all__ = ["given_options", "record_given"]

_GIVEN = "_given_options"
_CLASSES: dict[type[argparse.Action], type[argparse.Action]] = {}


def _recording(cls: type[argparse.Action]) -> type[argparse.Action]:
    if cls in _CLASSES or cls in _CLASSES.values():
        return _CLASSES.get(cls, cls)

    class Recording(cls):  # type: ignore[valid-type, misc]
        def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                     values: Any, option_string: str | None = None) -> None:
            super().__call__(parser, namespace, values, option_string)
            setattr(namespace, _GIVEN, getattr(namespace, _GIVEN, frozenset()) | {self.dest})

    Recording.__name__ = f"Recording{cls.__name__}"
    _CLASSES[cls] = Recording
    return Recording


def record_given(actions: Iterable[argparse.Action]) -> None:
    """Make `actions` note their destination on the namespace when the command line uses them
    (they behave as before otherwise)."""
    for action in actions:
        action.__class__ = _recording(type(action))


def given_options(args: argparse.Namespace) -> frozenset[str]:
    """The destinations of the recorded options the command line wrote."""
    given: frozenset[str] = getattr(args, _GIVEN, frozenset())
    return given
