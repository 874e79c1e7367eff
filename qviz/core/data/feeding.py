"""Stateful models: an output fed back as the next sample's input.

``--state OUTPUT=INPUT`` links a model output to an input (a recurrent cell's hidden state).
The data gives the input's first value; from the second sample on, each run gets the value
its own previous run produced. Every run loop (calibration, evaluation, sensitivity, the
mixed-precision search) keeps one `StateCarry` per session, so the float and the quantized
model each carry their own state, as they would in production. Batches then hold one sample
each, in order (`Dataset.batches`), since sample i + 1 needs sample i's output.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx

from qviz.core.data.layout import StateLink, shape_text
from qviz.core.errors import QvizError
from qviz.core.model.loading import LoadedModel
from qviz.core.runtime.sessions import run_session

__all__ = ["StateCarry", "check_states"]


def _output_type(model: LoadedModel, name: str) -> tuple[np.dtype | None, tuple[int | None, ...]]:
    for vi in model.model.graph.output:
        if vi.name != name or not vi.type.HasField("tensor_type"):
            continue
        tt = vi.type.tensor_type
        try:
            dtype: np.dtype | None = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
        except (KeyError, TypeError, ValueError):
            dtype = None
        shape: tuple[int | None, ...] = ()
        if tt.HasField("shape"):
            shape = tuple(
                int(d.dim_value) if d.HasField("dim_value") and d.dim_value >= 0 else None
                for d in tt.shape.dim
            )
        return dtype, shape
    return None, ()


def check_states(model: LoadedModel, links: Sequence[StateLink]) -> None:
    """Each link must join an output and an input of the same type and compatible shape."""
    inputs = {i.name: i for i in model.inputs}
    for link in links:
        flag = f"--state {link.output}={link.input}"
        if link.output not in model.outputs:
            raise QvizError(
                f"{flag}: the model has no output '{link.output}' "
                f"(its outputs: {', '.join(model.outputs)})"
            )
        spec = inputs.get(link.input)
        if spec is None:
            raise QvizError(
                f"{flag}: the model has no input '{link.input}' "
                f"(its inputs: {', '.join(inputs) or 'none'})"
            )
        dtype, shape = _output_type(model, link.output)
        if dtype is not None and dtype != spec.dtype:
            raise QvizError(
                f"{flag}: output '{link.output}' is {dtype} but input '{link.input}' takes "
                f"{spec.dtype}"
            )
        if shape and spec.shape and (
            len(shape) != len(spec.shape)
            or any(
                a is not None and b is not None and a != b
                for a, b in zip(shape, spec.shape, strict=True)
            )
        ):
            raise QvizError(
                f"{flag}: output '{link.output}' {shape_text(shape)} cannot feed input "
                f"'{link.input}' {shape_text(spec.shape)}"
            )


class StateCarry:
    """One session's fed-back state over one pass through the data, in sample order.

    ``run(session, feeds, outputs)`` is `run_session` with each state input of ``feeds``
    replaced by what the previous run of this carry produced (the data's value on the first
    run); it fetches the state outputs beside ``outputs`` and returns ``outputs``' values
    only. Without links it is `run_session` itself.
    """

    def __init__(self, links: Sequence[StateLink] = ()) -> None:
        self.links = tuple(links)
        self._values: dict[str, np.ndarray] = {}

    @classmethod
    def of(cls, data: Any) -> StateCarry:
        """The carry for a data set (`Dataset.states`)."""
        return cls(getattr(data, "states", ()))

    def __bool__(self) -> bool:
        return bool(self.links)

    def feeds(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``feeds`` as the next run takes them (state inputs replaced)."""
        out = dict(feeds)
        out.update(self._values)
        return out

    def run(
        self,
        session: Any,
        feeds: Mapping[str, np.ndarray],
        outputs: Sequence[str] | None = None,
    ) -> list[np.ndarray]:
        if not self.links:
            return run_session(session, feeds, outputs)
        names = [o.name for o in session.get_outputs()] if outputs is None else list(outputs)
        fetch = names + [link.output for link in self.links if link.output not in names]
        values = run_session(session, self.feeds(feeds), fetch)
        by_name = dict(zip(fetch, values, strict=True))
        for link in self.links:
            self._values[link.input] = np.ascontiguousarray(by_name[link.output])
        return list(values[: len(names)])
