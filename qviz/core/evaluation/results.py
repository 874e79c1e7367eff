"""What an evaluation measured: run modes, metrics, and the frozen result types.

`Evaluation` is what `qviz.core.evaluation.evaluate.evaluate` returns (and what
``qviz evaluate --json`` writes); `Metric` names its end-to-end numbers, which the sensitivity
analysis, the mixed-precision search and the criteria read as well.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType
from typing import Any

from qviz.core.jsonnum import json_float
from qviz.core.jsonnum import json_number as _num
from qviz.core.runtime.fusion import FusionReport
from qviz.core.runtime.sessions import KernelPrecision
from qviz.core.runtime.slowdown import SlowLayer
from qviz.core.runtime.speed import SpeedProfile

__all__ = [
    "DepthPoint",
    "Evaluation",
    "EvaluationCancelled",
    "Latency",
    "Metric",
    "Mismatch",
    "ModelSize",
    "OutputComparison",
    "RunMode",
    "frozen_metrics",
    "metrics_from_json",
    "metrics_to_json",
]


class RunMode(Enum):
    """How the quantized model is run."""

    SIMULATION = "simulation"  # optimizations off: every Q/DQ evaluated as an operator
    NATIVE = "native"  # optimizations on: ORT's fused integer kernels


class Metric(Enum):
    """End-to-end numbers, as keyed in `Evaluation` (and its JSON)."""

    ACCURACY = "accuracy"  # % of samples whose top-1 matches the label
    AGREEMENT = "top1_agreement"  # % of samples whose top-1 matches the float model's
    SQNR = "output_sqnr_db"  # 10 log10(sum f^2 / sum (f - q)^2) over the output
    COSINE = "output_cosine"  # mean over samples of cos(f, q)
    KL = "output_kl"  # mean KL(softmax f || softmax q), nats (outputs of a Softmax as is)
    MAX_ABS_ERROR = "output_max_abs_error"

    @property
    def label(self) -> str:
        return {
            Metric.ACCURACY: "accuracy (%)",
            Metric.AGREEMENT: "top-1 agreement (%)",
            Metric.SQNR: "output SQNR (dB)",
            Metric.COSINE: "output cosine",
            Metric.KL: "KL(softmax float || softmax quantized)",
            Metric.MAX_ABS_ERROR: "output max |error|",
        }[self]


class EvaluationCancelled(Exception):
    """Raised inside the generator when `should_stop()` asked it to stop."""


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class OutputComparison:
    """Float vs quantized for one model output. Top-1 based numbers are None for outputs
    without a class axis (fewer than 2 dimensions)."""

    name: str
    agreement_pct: float | None
    sqnr_db: float
    cosine: float
    kl: float | None
    max_abs_error: float
    float_accuracy: float | None = None
    quantized_accuracy: float | None = None

    def quantized_metrics(self) -> dict[Metric, float]:
        """The quantized model's numbers on this output, keyed as `Evaluation` keys them
        (accuracy when there were labels that fit; top-1 and KL when there is a class axis)."""
        out: dict[Metric, float] = {}
        if self.quantized_accuracy is not None:
            out[Metric.ACCURACY] = self.quantized_accuracy
        if self.agreement_pct is not None:
            out[Metric.AGREEMENT] = self.agreement_pct
        out[Metric.SQNR] = self.sqnr_db
        out[Metric.COSINE] = self.cosine
        if self.kl is not None:
            out[Metric.KL] = self.kl
        out[Metric.MAX_ABS_ERROR] = self.max_abs_error
        return out


@dataclass(frozen=True)
class Mismatch:
    """Simulation vs native on one output.

    ``step`` is the output's quantization step when the output leaves the graph through a
    per-tensor DequantizeLinear; then ``max_steps`` is the largest difference in steps. The
    usual float output has no step, and only ``max_abs_diff`` is meaningful.
    """

    output: str
    max_abs_diff: float
    fraction_differing: float
    n_elements: int
    step: float | None = None

    @property
    def max_steps(self) -> float | None:
        return None if self.step is None else self.max_abs_diff / self.step

    @property
    def unit_note(self) -> str:
        if self.step is None:
            return "absolute difference (the output is float, not Q/DQ'd: no step)"
        return f"output steps of {self.step:.4g}"


@dataclass(frozen=True)
class DepthPoint:
    """Error accumulated up to one quantized activation: the quantized model's value there
    (after its own Q/DQ) against the float model's."""

    tensor: str
    layer: str
    depth: int
    sqnr_db: float
    relative_rms_error: float


@dataclass(frozen=True)
class ModelSize:
    """Initializer bytes as stored (4-bit: half a byte). ``nominal`` is True when some weights
    are simulated formats, counted at their nominal width although stored as float32."""

    float_bytes: int
    quantized_bytes: int
    nominal: bool = False

    @property
    def ratio(self) -> float:
        return self.float_bytes / self.quantized_bytes if self.quantized_bytes else math.inf


@dataclass(frozen=True)
class Latency:
    """Median wall time per batch of the float and native INT8 sessions on the same batch,
    timed interleaved over ``repeats`` runs of each (as many as the time budget allowed).
    ``paired_speedup`` is the median of each pair of runs' ratio (the steadier figure on a
    loaded machine), when it was kept; ``threads`` the intra-op threads (0: ORT's choice)."""

    float_ms: float
    native_ms: float
    batch_size: int
    repeats: int
    precision: KernelPrecision = KernelPrecision.DEFAULT
    paired_speedup: float | None = None
    threads: int = 0

    @property
    def speedup(self) -> float:
        """How many times faster the quantized model ran (above 1: faster)."""
        if self.paired_speedup is not None:
            return self.paired_speedup
        return self.float_ms / self.native_ms if self.native_ms > 0 else math.inf


def metrics_to_json(m: Mapping[Metric, float]) -> dict[str, Any]:
    """Metrics keyed by their JSON names (infinite values spelled as qviz's files do)."""
    return {k.value: _num(v) for k, v in m.items()}


def metrics_from_json(d: Mapping[str, Any]) -> dict[Metric, float]:
    """What `metrics_to_json` wrote (entries written as null are left out)."""
    out: dict[Metric, float] = {}
    for k, v in d.items():
        value = json_float(v)
        if value is not None:
            out[Metric(k)] = value
    return out


def frozen_metrics(m: Mapping[Metric, float]) -> Mapping[Metric, float]:
    """A read-only copy of `m`, for the metrics frozen result types hold."""
    return MappingProxyType(dict(m))


@dataclass(frozen=True)
class Evaluation:
    """Everything `evaluate` measured. Metrics describe the first model output; ``outputs``
    has every output. ``delta`` is quantized minus float (accuracy in points)."""

    mode: RunMode
    n_samples: int
    data_description: str
    has_labels: bool
    float_metrics: Mapping[Metric, float]
    quantized_metrics: Mapping[Metric, float]
    delta: Mapping[Metric, float]
    outputs: tuple[OutputComparison, ...]
    size: ModelSize
    mismatch: tuple[Mismatch, ...] = ()
    fusion: FusionReport | None = None
    depth: tuple[DepthPoint, ...] = ()
    latency: Latency | None = None
    precision: KernelPrecision = KernelPrecision.DEFAULT
    notes: tuple[str, ...] = ()
    simulated_tensors: tuple[str, ...] = ()
    speed: SpeedProfile | None = None
    slow_layers: tuple[SlowLayer, ...] = ()

    def __post_init__(self) -> None:
        for name in ("float_metrics", "quantized_metrics", "delta"):
            object.__setattr__(self, name, frozen_metrics(getattr(self, name)))

    @property
    def accuracy_drop(self) -> float | None:
        """Float accuracy minus quantized accuracy, in points (positive = lost)."""
        d = self.delta.get(Metric.ACCURACY)
        return None if d is None else -d

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (infinite values spelled "inf", as qviz's files do)."""

        return {
            "mode": self.mode.value,
            "data": self.data_description,
            "samples": self.n_samples,
            "labels": self.has_labels,
            "float": metrics_to_json(self.float_metrics),
            "quantized": metrics_to_json(self.quantized_metrics),
            "delta": metrics_to_json(self.delta),
            "outputs": [
                {
                    "name": o.name,
                    "top1_agreement": _num(o.agreement_pct),
                    "output_sqnr_db": _num(o.sqnr_db),
                    "output_cosine": _num(o.cosine),
                    "output_kl": _num(o.kl),
                    "output_max_abs_error": _num(o.max_abs_error),
                    "float_accuracy": _num(o.float_accuracy),
                    "quantized_accuracy": _num(o.quantized_accuracy),
                }
                for o in self.outputs
            ],
            "native": {
                "kernel_precision": self.precision.value,
                "fusion": None if self.fusion is None else self.fusion.to_json(),
                "mismatch": [
                    {
                        "output": m.output,
                        "max_abs_diff": _num(m.max_abs_diff),
                        "step": _num(m.step),
                        "max_steps": _num(m.max_steps),
                        "fraction_differing": _num(m.fraction_differing),
                        "elements": m.n_elements,
                        "unit": m.unit_note,
                    }
                    for m in self.mismatch
                ],
            },
            "size_bytes": {
                "float": self.size.float_bytes,
                "quantized": self.size.quantized_bytes,
                "ratio": _num(self.size.ratio),
                "nominal": self.size.nominal,
            },
            "latency_ms": None
            if self.latency is None
            else {
                "float": _num(self.latency.float_ms),
                "native_int8": _num(self.latency.native_ms),
                "speedup": _num(self.latency.speedup),
                "batch_size": self.latency.batch_size,
                "repeats": self.latency.repeats,
                "threads": self.latency.threads,
            },
            "speed": None if self.speed is None else self.speed.to_json(),
            "slow_layers": [s.to_json() for s in self.slow_layers],
            "depth": [
                {
                    "tensor": p.tensor,
                    "layer": p.layer,
                    "depth": p.depth,
                    "sqnr_db": _num(p.sqnr_db),
                    "relative_rms_error": _num(p.relative_rms_error),
                }
                for p in self.depth
            ],
            "simulated_tensors": list(self.simulated_tensors),
            "notes": list(self.notes),
        }
