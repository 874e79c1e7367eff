"""How data feeds a model's inputs: each input's batch axis, constants and fed-back state.

Data files hold samples along their leading axis. Each model input gets those samples
stacked along its *batch axis*, which is never guessed:

1. the user says it: ``--batch-axis NAME=AXIS`` (``NAME=none``: no batch axis, the input is
   fed whole, the same array for every batch), or ``--const NAME=VALUE`` (a constant);
2. a scalar input (rank 0) has no batch axis: it is given once (``--const`` or an array
   without a sample axis);
3. an input with one dynamic dimension (symbolic, or -1) is batched along it;
4. an input with several dynamic dimensions is batched along the one whose symbol is the
   batch axis of another input, or else along the one whose symbol names a batch (``batch``,
   ``batch_size``, ``N``...);
5. an input whose sizes are all fixed is batched along axis 0 (a fixed batch size) when no
   input of the model has a dynamic dimension, and otherwise fed whole.

Anything else (no declared shape, several unnamed dynamic dimensions) is refused with one
line that says how to state it. A stateful model's output fed back as the next sample's
input is a `StateLink` (``--state OUTPUT=INPUT``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

from qviz.core.errors import QvizError
from qviz.core.model.loading import InputSpec

__all__ = [
    "BATCH_DIM_NAMES",
    "FeedLayout",
    "FeedReason",
    "InputFeed",
    "StateLink",
    "count_text",
    "resolve_feeds",
    "shape_text",
]

#: Symbolic dimension names read as "the batch" (compared in lower case).
BATCH_DIM_NAMES = frozenset(
    {"batch", "batch_size", "batchsize", "batch_dim", "bs", "b", "n", "nbatch", "num_batch"}
)


def count_text(n: int, word: str) -> str:
    """"1 sample", "3 samples"."""
    return f"{n} {word}" + ("" if n == 1 else "s")


def shape_text(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + (
        ",)" if len(shape) == 1 else ")"
    )


@dataclass(frozen=True)
class StateLink:
    """A model output fed back as an input of the next sample (recurrent state)."""

    output: str
    input: str

    @classmethod
    def parse(cls, text: str) -> StateLink:
        output, sep, name = text.partition("=")
        if not sep or not output.strip() or not name.strip():
            raise QvizError(f"--state takes OUTPUT=INPUT, got {text!r}")
        return cls(output.strip(), name.strip())


def _pair(text: str, flag: str, what: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise QvizError(f"{flag} takes NAME={what}, got {text!r}")
    return name.strip(), value.strip()


@dataclass(frozen=True)
class FeedLayout:
    """What the user stated about feeding (empty: everything from the model's signature)."""

    batch_axes: tuple[tuple[str, int | None], ...] = ()  # NAME -> axis; None: fed whole
    constants: tuple[tuple[str, float], ...] = ()  # NAME -> the value of every element
    states: tuple[StateLink, ...] = ()

    def __post_init__(self) -> None:
        for label, names in (
            ("--batch-axis", [n for n, _ in self.batch_axes]),
            ("--const", [n for n, _ in self.constants]),
            ("--state", [s.input for s in self.states]),
        ):
            seen = {n for n in names if names.count(n) > 1}
            if seen:
                raise QvizError(f"{label} names input '{sorted(seen)[0]}' twice")
        for name, value in self.constants:
            if not math.isfinite(value):
                raise QvizError(f"--const {name}: the value must be finite, got {value}")
        outputs = [s.output for s in self.states]
        twice = {o for o in outputs if outputs.count(o) > 1}
        if twice:
            raise QvizError(f"--state feeds output '{sorted(twice)[0]}' back twice")
        clash = {n for n, _ in self.constants} & {s.input for s in self.states}
        if clash:
            raise QvizError(f"input '{sorted(clash)[0]}' is both --const and --state")

    @classmethod
    def parse(
        cls,
        batch_axes: Sequence[str] = (),
        constants: Sequence[str] = (),
        states: Sequence[str] = (),
    ) -> FeedLayout:
        """From the CLI's texts: ``NAME=AXIS`` (or ``NAME=none``), ``NAME=VALUE``,
        ``OUTPUT=INPUT``."""
        axes: list[tuple[str, int | None]] = []
        for text in batch_axes:
            name, value = _pair(text, "--batch-axis", "AXIS")
            if value.lower() == "none":
                axes.append((name, None))
                continue
            try:
                axes.append((name, int(value)))
            except ValueError:
                raise QvizError(
                    f"--batch-axis {name}: the axis must be an integer or 'none', got {value!r}"
                ) from None
        consts: list[tuple[str, float]] = []
        for text in constants:
            name, value = _pair(text, "--const", "VALUE")
            try:
                consts.append((name, float(value)))
            except ValueError:
                raise QvizError(f"--const {name}: {value!r} is not a number") from None
        return cls(tuple(axes), tuple(consts), tuple(StateLink.parse(t) for t in states))

    @property
    def is_empty(self) -> bool:
        return not (self.batch_axes or self.constants or self.states)

    def stated_axis(self, name: str) -> tuple[bool, int | None]:
        """(True, axis) when the user stated ``name``'s batch axis, else (False, None)."""
        for n, axis in self.batch_axes:
            if n == name:
                return True, axis
        return False, None

    def constant(self, name: str) -> float | None:
        for n, value in self.constants:
            if n == name:
                return value
        return None

    def state_for(self, name: str) -> StateLink | None:
        for link in self.states:
            if link.input == name:
                return link
        return None

    def check_names(self, inputs: Sequence[InputSpec]) -> None:
        """Every name the user gave must be one of the model's inputs."""
        known = [i.name for i in inputs]
        given = [("--batch-axis", n) for n, _ in self.batch_axes]
        given += [("--const", n) for n, _ in self.constants]
        given += [("--state", s.input) for s in self.states]
        for flag, name in given:
            if name not in known:
                raise QvizError(
                    f"{flag} {name}: the model has no input '{name}' "
                    f"(its inputs: {', '.join(known) or 'none'})"
                )


class FeedReason(Enum):
    """How an input's batch axis was decided (said in the description of the data)."""

    STATED = "stated"  # --batch-axis
    CONSTANT = "constant"  # --const
    SCALAR = "scalar"  # rank 0: given once
    DYNAMIC = "dynamic"  # the model's one dynamic dimension
    SYMBOL = "symbol"  # the dimension named as a batch, or shared with another input's
    FIXED_BATCH = "fixed batch"  # all inputs fixed: axis 0 holds a fixed batch size
    FIXED_WHOLE = "fixed, fed whole"  # fixed shape beside dynamic inputs
    FROM_DATA = "from the data"  # the model's inputs are not known yet (torch export)


@dataclass(frozen=True)
class InputFeed:
    """One input and how samples reach it."""

    spec: InputSpec
    batch_axis: int | None  # non-negative; None: fed whole, the same array every batch
    reason: FeedReason
    constant: float | None = None
    state: StateLink | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def batched(self) -> bool:
        return self.batch_axis is not None

    @property
    def sample_shape(self) -> tuple[int | None, ...] | None:
        """One sample's shape (the model's without the batch axis; the whole shape when fed
        whole), or None when the model declares no shape."""
        shape = self.spec.shape
        if not self.spec.has_shape:
            return None
        if self.batch_axis is None:
            return shape
        return shape[: self.batch_axis] + shape[self.batch_axis + 1 :]

    @property
    def fixed_batch(self) -> int | None:
        if self.batch_axis is None or self.batch_axis >= len(self.spec.shape):
            return None
        return self.spec.shape[self.batch_axis]


def _ambiguous(spec: InputSpec, detail: str) -> QvizError:
    return QvizError(
        f"cannot tell the batch axis of input '{spec.name}' {shape_text(spec.shape)}: "
        f"{detail}; state it with --batch-axis {spec.name}=AXIS "
        f"(or --batch-axis {spec.name}=none to feed it whole)"
    )


def _dynamic(spec: InputSpec) -> list[int]:
    return [i for i, d in enumerate(spec.shape) if d is None]


def _symbol(spec: InputSpec, axis: int) -> str | None:
    return spec.dim_names[axis] if axis < len(spec.dim_names) else None


def resolve_feeds(inputs: Sequence[InputSpec], layout: FeedLayout | None = None) -> tuple[
    InputFeed, ...
]:
    """Each input's batch axis, by the rules in the module docstring (QvizError if unclear)."""
    layout = layout or FeedLayout()
    layout.check_names(inputs)
    decided: dict[str, InputFeed] = {}
    pending: list[InputSpec] = []
    any_dynamic = any(_dynamic(s) for s in inputs if s.shape)
    for spec in inputs:
        state = layout.state_for(spec.name)
        stated, axis = layout.stated_axis(spec.name)
        constant = layout.constant(spec.name)
        rank = len(spec.shape)
        if stated:
            if axis is not None:
                if spec.shape and not -rank <= axis < rank:
                    raise QvizError(
                        f"--batch-axis {spec.name}={axis}: input '{spec.name}' has rank {rank} "
                        f"{shape_text(spec.shape)}"
                    )
                if spec.shape:
                    axis %= rank
                elif axis < 0:
                    raise QvizError(
                        f"--batch-axis {spec.name}={axis}: input '{spec.name}' declares no "
                        "shape, so count the axis from 0"
                    )
            decided[spec.name] = InputFeed(spec, axis, FeedReason.STATED, constant, state)
        elif constant is not None:
            decided[spec.name] = InputFeed(spec, None, FeedReason.CONSTANT, constant, state)
        elif not spec.has_shape:
            raise _ambiguous(spec, "the model declares no shape for it")
        elif rank == 0:
            decided[spec.name] = InputFeed(spec, None, FeedReason.SCALAR, None, state)
        elif len(_dynamic(spec)) == 1:
            decided[spec.name] = InputFeed(spec, _dynamic(spec)[0], FeedReason.DYNAMIC, None, state)
        elif not _dynamic(spec):
            if any_dynamic:
                decided[spec.name] = InputFeed(spec, None, FeedReason.FIXED_WHOLE, None, state)
            else:
                decided[spec.name] = InputFeed(spec, 0, FeedReason.FIXED_BATCH, None, state)
        else:
            pending.append(spec)
    batch_symbols = {
        _symbol(f.spec, f.batch_axis)
        for f in decided.values()
        if f.batch_axis is not None and f.reason is not FeedReason.FIXED_BATCH
    } - {None}
    for spec in pending:
        axes = _dynamic(spec)
        shared = [a for a in axes if _symbol(spec, a) in batch_symbols]
        named = [a for a in axes if (_symbol(spec, a) or "").lower() in BATCH_DIM_NAMES]
        if len(shared) == 1:
            axis = shared[0]
        elif not shared and len(named) == 1:
            axis = named[0]
        else:
            listing = ", ".join(f"{a} '{_symbol(spec, a)}'" if _symbol(spec, a) else f"{a}"
                                for a in axes)
            raise _ambiguous(spec, f"axes {listing} are dynamic and none is named as the batch")
        state = layout.state_for(spec.name)
        decided[spec.name] = InputFeed(spec, axis, FeedReason.SYMBOL, None, state)
    feeds = tuple(decided[s.name] for s in inputs)
    for feed in feeds:
        if feed.state is not None and feed.batch_axis is None:
            raise QvizError(
                f"--state feeds input '{feed.name}', which has no batch axis; state inputs "
                f"carry one value per sample (--batch-axis {feed.name}=AXIS)"
            )
    return feeds


def default_feeds(specs: Sequence[InputSpec]) -> tuple[InputFeed, ...]:
    """Feeds for specs read off the data itself: every array batched along its axis 0."""
    return tuple(InputFeed(s, 0, FeedReason.FROM_DATA) for s in specs)


def feeds_by_name(feeds: Sequence[InputFeed]) -> Mapping[str, InputFeed]:
    return {f.name: f for f in feeds}
