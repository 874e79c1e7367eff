"""A sensitivity report: every quantized layer's drop and recovery, in one metric's terms.

Every metric is measured and kept, so a report re-ranks by another metric without a run
(`SensitivityReport.with_metric`). A report is written as JSON by `report_to_json` (in a
cache file or a session file) and read back by `report_from_json`, which recomputes the
derived numbers rather than trust the file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from qviz.core.errors import QvizError
from qviz.core.evaluation.results import (
    Metric,
    frozen_metrics,
    metrics_from_json,
    metrics_to_json,
)
from qviz.core.jsonnum import json_count, json_float, json_text
from qviz.core.jsonnum import json_number as _num
from qviz.core.runtime.sessions import KernelPrecision
from qviz.core.search.measure import Measurement

__all__ = [
    "LayerSensitivity",
    "SensitivityReport",
    "default_metric",
    "float_value",
    "harm",
    "higher_is_better",
    "report_from_json",
    "report_to_json",
]


def higher_is_better(metric: Metric) -> bool:
    """Direction of a metric: accuracy, agreement, SQNR, cosine up; KL, max |error| down."""
    return metric not in (Metric.KL, Metric.MAX_ABS_ERROR)


def float_value(metric: Metric, float_metrics: Mapping[Metric, float]) -> float:
    """What the float model scores on `metric` against itself (its accuracy against the
    labels): the value a quantized model is measured against."""
    if metric is Metric.ACCURACY:
        return float_metrics.get(Metric.ACCURACY, math.nan)
    return {
        Metric.AGREEMENT: 100.0,
        Metric.SQNR: math.inf,
        Metric.COSINE: 1.0,
        Metric.KL: 0.0,
        Metric.MAX_ABS_ERROR: 0.0,
    }[metric]


def harm(metric: Metric, value: float, reference: float) -> float:
    """How much worse `value` is than `reference`, in the metric's units (positive = worse)."""
    return reference - value if higher_is_better(metric) else value - reference


def default_metric(has_labels: bool) -> Metric:
    """Accuracy when the data has labels, else the output SQNR against the float model."""
    return Metric.ACCURACY if has_labels else Metric.SQNR


@dataclass(frozen=True)
class LayerSensitivity:
    """One layer's sensitivity. ``drop`` and ``recovery`` are in the report metric's units and
    oriented so that larger means "this layer matters more":

    * ``drop``: the float model's value minus the value with only this layer quantized
      (None for output SQNR, whose float value is infinite: read ``quantized_only`` instead);
    * ``recovery``: the value with only this layer kept float minus the all-quantized value.
    """

    name: str  # display name: torch module path when known, else node name
    node_name: str
    op_type: str
    depth: int
    module_path: str | None
    tensors: tuple[str, ...]  # what "this layer" quantizes: weight and owned activations
    param_count: int
    weight_sqnr_db: float | None  # local: the layer's own weight error, from analysis
    activation_sqnr_db: float | None  # local: the worst of its input activations
    quantized_only: Measurement
    float_only: Measurement
    drop: float | None = None
    recovery: float = math.nan

    @property
    def score(self) -> float:
        """The ranking key: recovery plus drop (drop counted 0 where undefined)."""
        d = 0.0 if self.drop is None or not math.isfinite(self.drop) else self.drop
        r = self.recovery if math.isfinite(self.recovery) else 0.0
        return r + d


def _with_metric(
    layer: LayerSensitivity, metric: Metric, reference: float, all_quantized: float
) -> LayerSensitivity:
    only = layer.quantized_only.value(metric)
    kept = layer.float_only.value(metric)
    drop = None if math.isinf(reference) else harm(metric, only, reference)
    recovery = harm(metric, all_quantized, kept)
    return replace(layer, drop=drop, recovery=recovery)


@dataclass(frozen=True)
class SensitivityReport:
    """Sensitivity of every quantized layer of one configuration, in depth order.

    ``quantized`` is the whole configuration measured the same way (the baseline each
    recovery is counted from); ``float_metrics`` the float model on the same samples.
    ``cached`` is True when the report came from a `SensitivityCache` rather than a run.
    """

    metric: Metric
    layers: tuple[LayerSensitivity, ...]
    quantized: Measurement
    float_metrics: Mapping[Metric, float]
    n_samples: int
    data_description: str
    data_digest: str
    results_digest: str
    model_sha256: str
    float_size_bytes: int
    native: bool = True
    precision: KernelPrecision = KernelPrecision.DEFAULT
    n_runs: int = 0  # quantized graphs run to make the report
    elapsed_s: float = 0.0
    notes: tuple[str, ...] = ()
    cached: bool = False
    _by_name: Mapping[str, LayerSensitivity] = field(
        default_factory=lambda: MappingProxyType({}), repr=False, compare=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "float_metrics", frozen_metrics(self.float_metrics))
        object.__setattr__(self, "_by_name", MappingProxyType({s.name: s for s in self.layers}))

    @property
    def float_value(self) -> float:
        """The float model's value of the report metric (what ``drop`` is counted from)."""
        return float_value(self.metric, self.float_metrics)

    @property
    def quantized_value(self) -> float:
        """The all-quantized value of the report metric (what ``recovery`` is counted from)."""
        return self.quantized.value(self.metric)

    def layer(self, name: str) -> LayerSensitivity:
        """A layer's row by display name (KeyError if it is not in the report)."""
        return self._by_name[name]

    def ranking(self) -> tuple[LayerSensitivity, ...]:
        """Layers from most to least sensitive (score, then drop, then depth)."""
        return tuple(
            sorted(
                self.layers,
                key=lambda s: (-s.score, -(s.drop or 0.0) if s.drop is not None else 0.0, s.depth),
            )
        )

    def with_metric(self, metric: Metric) -> SensitivityReport:
        """The same measurements ranked by another metric (nothing is re-run)."""
        if metric not in self.quantized.metrics:
            raise QvizError(f"{metric.label} was not measured (no labels, or no class axis)")
        ref = float_value(metric, self.float_metrics)
        base = self.quantized.value(metric)
        layers = tuple(_with_metric(s, metric, ref, base) for s in self.layers)
        return replace(self, metric=metric, layers=layers)

    def to_json(self) -> dict[str, Any]:
        return report_to_json(self)


def report_to_json(r: SensitivityReport) -> dict[str, Any]:
    """A JSON-ready dict of a report (also what a session file can embed)."""
    return {
        "metric": r.metric.value,
        "float_value": _num(r.float_value),
        "quantized_value": _num(r.quantized_value),
        "float_metrics": metrics_to_json(r.float_metrics),
        "quantized": r.quantized.to_json(),
        "samples": r.n_samples,
        "data": r.data_description,
        "data_digest": r.data_digest,
        "results_digest": r.results_digest,
        "model_sha256": r.model_sha256,
        "float_size_bytes": r.float_size_bytes,
        "native": r.native,
        "precision": r.precision.value,
        "runs": r.n_runs,
        "elapsed_s": _num(r.elapsed_s),
        "notes": list(r.notes),
        "cached": r.cached,
        "layers": [
            {
                "name": s.name,
                "node_name": s.node_name,
                "op_type": s.op_type,
                "depth": s.depth,
                "module_path": s.module_path,
                "tensors": list(s.tensors),
                "param_count": s.param_count,
                "weight_sqnr_db": _num(s.weight_sqnr_db),
                "activation_sqnr_db": _num(s.activation_sqnr_db),
                "drop": _num(s.drop),
                "recovery": _num(s.recovery),
                "quantized_only": s.quantized_only.to_json(),
                "float_only": s.float_only.to_json(),
            }
            for s in r.layers
        ],
    }


def report_from_json(d: Mapping[str, Any]) -> SensitivityReport:
    """The report `report_to_json` wrote (``cached=True``); KeyError/ValueError/TypeError if
    malformed (counts non-negative integers, at least one sample, numbers numbers)."""
    if not isinstance(d["layers"], list) or not isinstance(d["notes"], list):
        raise ValueError("layers and notes must be lists")
    layers = tuple(
        LayerSensitivity(
            name=json_text(s["name"]),
            node_name=json_text(s["node_name"]),
            op_type=json_text(s["op_type"]),
            depth=json_count(s["depth"]),
            module_path=None if s["module_path"] is None else json_text(s["module_path"]),
            tensors=tuple(json_text(t) for t in s["tensors"]),
            param_count=json_count(s["param_count"]),
            weight_sqnr_db=json_float(s["weight_sqnr_db"]),
            activation_sqnr_db=json_float(s["activation_sqnr_db"]),
            quantized_only=Measurement.from_json(s["quantized_only"]),
            float_only=Measurement.from_json(s["float_only"]),
        )
        for s in d["layers"]
    )
    report = SensitivityReport(
        metric=Metric(d["metric"]),
        layers=layers,
        quantized=Measurement.from_json(d["quantized"]),
        float_metrics=metrics_from_json(d["float_metrics"]),
        n_samples=json_count(d["samples"], 1),
        data_description=json_text(d["data"]),
        data_digest=json_text(d["data_digest"]),
        results_digest=json_text(d["results_digest"]),
        model_sha256=json_text(d["model_sha256"]),
        float_size_bytes=json_count(d["float_size_bytes"]),
        native=d["native"] is True,
        precision=KernelPrecision(d["precision"]),
        n_runs=json_count(d["runs"]),
        elapsed_s=max(0.0, float(json_float(d["elapsed_s"]) or 0.0)),
        notes=tuple(json_text(n) for n in d["notes"]),
        cached=True,
    )
    # drop/recovery are derived: recompute them rather than trust the file.
    return report.with_metric(report.metric)
