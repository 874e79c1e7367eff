"""One configuration measured on the float reference: a real Q/DQ graph run by ONNX Runtime
and compared with the kept float outputs, with the accumulators `evaluate` uses."""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from qviz.core.data.feeding import StateCarry
from qviz.core.evaluation.accumulators import OutputAccumulator, output_kind
from qviz.core.evaluation.evaluate import model_size
from qviz.core.evaluation.results import (
    EvaluationCancelled,
    Metric,
    RunMode,
    frozen_metrics,
    metrics_from_json,
    metrics_to_json,
)
from qviz.core.graph.qdq import build_qdq, initializer_bytes
from qviz.core.jsonnum import json_count
from qviz.core.runtime.sessions import KernelPrecision, SessionConfig, build_session
from qviz.core.search.reference import FloatReference

if TYPE_CHECKING:
    from qviz.core.calibration.analysis import TensorResult

__all__ = ["Measurement", "measure"]


@dataclass(frozen=True)
class Measurement:
    """The quantized model's numbers on the reference subset, as `Evaluation.quantized_metrics`
    keys them (accuracy included when there are labels).

    ``mode`` is how it ran: NATIVE (ORT optimizations on, fused integer kernels where ORT
    has them), SIMULATION (some format has no ONNX type), or None for a configuration that
    quantizes nothing — the float model, whose numbers are exact without running anything.
    """

    metrics: Mapping[Metric, float]
    mode: RunMode | None
    size_bytes: int
    n_samples: int
    precision: KernelPrecision = KernelPrecision.DEFAULT

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", frozen_metrics(self.metrics))

    @property
    def mode_label(self) -> str:
        if self.mode is None:
            return "float (nothing quantized)"
        if self.mode is RunMode.NATIVE:
            return f"native ({self.precision.value} int8 kernels)"
        return "simulation"

    def value(self, metric: Metric) -> float:
        return self.metrics.get(metric, math.nan)

    def to_json(self) -> dict[str, Any]:
        return {
            "metrics": metrics_to_json(self.metrics),
            "mode": None if self.mode is None else self.mode.value,
            "size_bytes": self.size_bytes,
            "samples": self.n_samples,
            "precision": self.precision.value,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Measurement:
        """What `to_json` wrote; KeyError/ValueError if malformed."""
        return cls(
            metrics=metrics_from_json(d["metrics"]),
            mode=None if d["mode"] is None else RunMode(d["mode"]),
            size_bytes=json_count(d["size_bytes"]),
            n_samples=json_count(d["samples"], 1),
            precision=KernelPrecision(d["precision"]),
        )


def measure(
    ref: FloatReference,
    results: Sequence[TensorResult],
    *,
    native: bool = True,
    precision: KernelPrecision = KernelPrecision.DEFAULT,
    should_stop: Callable[[], bool] = lambda: False,
) -> Generator[int, None, Measurement]:
    """Build the Q/DQ graph of `results`, run it over the reference subset and compare it
    with the kept float outputs. Yields the samples done after each batch.

    Runs natively when asked and every tensor has an ONNX type, in the simulation otherwise.
    An empty `results` is the float model itself: measured exactly, without a run.
    """
    if not ref.float_done:
        raise ValueError("measure() needs a reference whose float pass ran (complete_reference)")
    model = ref.model
    primary = model.outputs[0]
    acc = OutputAccumulator(primary, output_kind(model.model, primary))
    if not results:
        for b in ref.iter_batches():
            assert b.outputs is not None
            acc.update(b.outputs[0], b.outputs[0], b.labels)
        size = initializer_bytes(model.model)
        return Measurement(acc.result().quantized_metrics(), None, size, ref.n_samples, precision)
    qdq = build_qdq(model, results)
    run_native = native and not qdq.simulated
    config = SessionConfig.for_native(precision) if run_native else SessionConfig.for_simulation()
    session = build_session(qdq.model, config)
    done = 0
    carry = StateCarry.of(ref.data)  # the quantized model carries its own state
    for b in ref.iter_batches():
        if should_stop():
            raise EvaluationCancelled()
        assert b.outputs is not None
        (q,) = carry.run(session, b.feeds, [primary])
        acc.update(b.outputs[0], q, b.labels)
        done += len(q) if np.ndim(q) else 1
        yield done
    mode = RunMode.NATIVE if run_native else RunMode.SIMULATION
    size = model_size(model, qdq).quantized_bytes
    return Measurement(acc.result().quantized_metrics(), mode, size, ref.n_samples, precision)
