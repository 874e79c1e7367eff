"""Which layers hurt: per-layer end-to-end sensitivity, measured on real quantized graphs.

For every quantized layer (its weight and the input activation(s) it owns — see
`qviz.core.calibration.analysis.quant_tensors`) two variants of the configuration are run:

* **quantize only this layer** (everything else float): how much the task metric drops
  because of this layer alone;
* **keep only this layer float** (everything else quantized): how much it recovers when this
  one layer is spared.

Beside them stands the local view the statistics already give — the SQNR of the layer's own
weight and input activation — so the user can see when local error predicts end-to-end harm
and when it does not.

Every number comes from a real Q/DQ graph (`build_qdq`) run by ONNX Runtime: natively (graph
optimizations on, ORT's fused integer kernels) when every tensor has an ONNX type, in the
simulation otherwise, and each measurement says which. The variants are subsets of the one
analysed configuration (analysis of a tensor does not depend on the others), so they reuse its
exact scales. The float model runs once: its outputs on the evaluation subset are kept (within
a memory budget) and every variant is compared with them, with the same accumulators
`evaluate` uses, so a variant's numbers equal what `evaluate` reports for that configuration.

`sensitivity` is a generator, like every long job in the core: it yields `Progress` after each
batch, stops when the caller stops iterating, and raises `EvaluationCancelled` when
`should_stop()` turns true between batches. A `SensitivityCache` makes re-opening a session
free: the report is keyed by the model, the exact quantization parameters, the data actually
used and the run mode.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from qviz.core.calibration.analysis import TensorResult, analyze, check_stats_match
from qviz.core.calibration.config import QuantConfig
from qviz.core.data.feeding import StateCarry
from qviz.core.errors import QvizError
from qviz.core.evaluation.evaluate import (
    EvaluationCancelled,
    Metric,
    RunMode,
    check_limits,
    float_session_options,
    make_session,
    model_size,
    output_kind,
    simulation_session_options,
)
from qviz.core.evaluation.evaluate import (
    OutputAccumulator as _OutputAccumulator,  # the sums `evaluate` folds: bit-equal numbers
)
from qviz.core.files.config_file import SavedConfig, results_from_saved
from qviz.core.graph.qdq import build_qdq, initializer_bytes
from qviz.core.model.loading import Layer, LoadedModel, TensorKind
from qviz.core.progress import Progress, ProgressClock, run_to_completion
from qviz.core.runtime.fusion import KernelPrecision, native_session_options
from qviz.core.stats.collect import CalibrationStats

if TYPE_CHECKING:
    from qviz.core.data.dataset import Dataset
    from qviz.core.search.sensitivity_cache import SensitivityCache

__all__ = [
    "DEFAULT_LIMIT",
    "FloatReference",
    "LayerSensitivity",
    "Measurement",
    "SensitivityReport",
    "complete_reference",
    "default_metric",
    "float_value",
    "group_by_layer",
    "harm",
    "higher_is_better",
    "layer_sensitivity",
    "measure",
    "module_path",
    "prepare_reference",
    "resolve_results",
    "results_digest",
    "run_to_completion",
    "sensitivity",
]

#: Samples evaluated per variant unless told otherwise: 2n+1 graphs run over them, so the
#: subset is what makes sensitivity "a minute's work"; the final answer of a mixed-precision
#: search is confirmed on the whole data set.
DEFAULT_LIMIT = 500
#: Feeds and float outputs kept in memory for the evaluation subset. Past this the float model
#: is re-run beside every variant instead (slower, same numbers).
DEFAULT_MEMORY_BUDGET = 1 << 30


# --------------------------------------------------------------------------- metrics


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


def module_path(layer: Layer) -> str | None:
    """The torch module path of a layer when the exporter recorded one (the display name is
    the node name otherwise)."""
    return None if layer.name == layer.node_name else layer.name


def _frozen(m: Mapping[Metric, float]) -> Mapping[Metric, float]:
    return MappingProxyType(dict(m))


# --------------------------------------------------------------------------- reference


@dataclass(frozen=True, eq=False)
class _Batch:
    feeds: Mapping[str, np.ndarray]
    outputs: tuple[np.ndarray, ...] | None  # float outputs; None until the float pass ran
    labels: np.ndarray | None


@dataclass(frozen=True, eq=False)
class FloatReference:
    """The evaluation subset and the float model's outputs on it, computed once.

    ``batches`` holds feeds and float outputs when they fit the memory budget; otherwise it is
    empty and `iter_batches` reads the data and runs the float model again (``streaming``).
    ``digest`` identifies the samples actually used (their bytes and labels), for caching.
    """

    model: LoadedModel
    data: Dataset
    n_samples: int
    batch_size: int
    digest: str
    float_metrics: Mapping[Metric, float]
    batches: tuple[_Batch, ...] = ()
    streaming: bool = False
    n_batches: int = 0
    float_done: bool = False  # the float pass ran (outputs kept, float metrics known)

    @property
    def data_description(self) -> str:
        return self.data.description

    @property
    def has_labels(self) -> bool:
        return self.data.labels is not None

    def iter_batches(self) -> Iterator[_Batch]:
        """Each batch with its float outputs, in sample order."""
        if not self.streaming:
            yield from self.batches
            return
        session = make_session(self.model.model, float_session_options())
        carry = StateCarry.of(self.data)
        for b in _read_batches(self.data, self.n_samples, self.batch_size):
            outputs = carry.run(_run, session, self.model.outputs, b.feeds)
            yield replace(b, outputs=tuple(outputs))


def _read_batches(data: Dataset, total: int, batch_size: int) -> Iterator[_Batch]:
    done = 0
    labels = data.labels
    for feeds in data.batches(batch_size):
        n = min(data.samples_in(feeds), total - done)
        if n <= 0:
            break
        feeds = data.head(feeds, n)
        yield _Batch(feeds, None, None if labels is None else labels[done : done + n])
        done += n
        if done >= total:
            break


def _run(session: Any, names: Sequence[str], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    try:
        return session.run(list(names), dict(feeds))
    except Exception as exc:  # ORT raises its own exception types; all mean "cannot run"
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        raise QvizError(f"the model failed on the data: {first}") from exc


def _hash_batch(h: Any, b: _Batch) -> None:
    for name in sorted(b.feeds):
        arr = np.ascontiguousarray(b.feeds[name])
        h.update(f"{name}|{arr.dtype.str}|{arr.shape}".encode())
        h.update(arr.tobytes())
    if b.labels is not None:
        lab = np.ascontiguousarray(b.labels)
        h.update(f"labels|{lab.dtype.str}|{lab.shape}".encode())
        h.update(lab.tobytes())


def prepare_reference(
    model: LoadedModel,
    data: Dataset,
    *,
    limit: int | None = DEFAULT_LIMIT,
    batch_size: int = 128,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    run_float: bool = True,
    should_stop: Callable[[], bool] = lambda: False,
) -> Generator[Progress, None, FloatReference]:
    """Read the first `limit` samples (hashing them) and run the float model over them once.

    With ``run_float=False`` only the data is read and hashed (enough for a cache lookup);
    `complete_reference` runs the float pass later.
    """
    total = check_limits(data, limit, batch_size)
    clock = ProgressClock(total, "reading the evaluation data")
    h = hashlib.sha256()
    kept: list[_Batch] = []
    kept_bytes = 0
    streaming = False
    done = 0
    n_batches = 0
    h.update(repr(data.states).encode())  # fed-back state changes every output
    for b in _read_batches(data, total, batch_size):
        if should_stop():
            raise EvaluationCancelled()
        _hash_batch(h, b)
        n_batches += 1
        done += data.samples_in(b.feeds)
        if not streaming:
            kept_bytes += sum(v.nbytes for v in b.feeds.values())
            if kept_bytes > memory_budget:
                streaming, kept = True, []  # re-read per variant instead
            else:
                kept.append(b)
        yield clock.report(done)
    if done == 0:
        raise QvizError(f"no batch could be read from {data.description}")
    ref = FloatReference(
        model=model,
        data=data,
        n_samples=done,
        batch_size=batch_size,
        digest=h.hexdigest(),
        float_metrics=_frozen({}),
        batches=tuple(kept),
        streaming=streaming,
        n_batches=n_batches,
    )
    if run_float:
        ref = yield from complete_reference(
            ref, memory_budget=memory_budget, should_stop=should_stop
        )
    return ref


def complete_reference(
    ref: FloatReference,
    *,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    should_stop: Callable[[], bool] = lambda: False,
) -> Generator[Progress, None, FloatReference]:
    """Run the float model over the reference's samples, keeping its outputs (in budget),
    and measure the float model's own accuracy."""
    if ref.float_done:
        return ref
    model = ref.model
    session = make_session(model.model, float_session_options())
    clock = ProgressClock(ref.n_samples, "running the float model")
    primary = model.outputs[0]
    acc = _OutputAccumulator(primary, output_kind(model.model, primary))
    source = (
        ref.batches if not ref.streaming else _read_batches(ref.data, ref.n_samples, ref.batch_size)
    )
    kept: list[_Batch] = []
    kept_bytes = sum(v.nbytes for b in ref.batches for v in b.feeds.values())
    streaming = ref.streaming
    done = 0
    carry = StateCarry.of(ref.data)
    for b in source:
        if should_stop():
            raise EvaluationCancelled()
        outs = tuple(carry.run(_run, session, model.outputs, b.feeds))
        acc.update(outs[0], outs[0], b.labels)
        if not streaming:
            kept_bytes += sum(o.nbytes for o in outs)
            if kept_bytes > memory_budget:
                streaming, kept = True, []
            else:
                kept.append(replace(b, outputs=outs))
        done += ref.data.samples_in(b.feeds)
        yield clock.report(done)
    comparison = acc.result()
    float_metrics: dict[Metric, float] = {}
    if comparison.float_accuracy is not None:
        float_metrics[Metric.ACCURACY] = comparison.float_accuracy
    return replace(
        ref,
        batches=tuple(kept),
        streaming=streaming,
        float_metrics=_frozen(float_metrics),
        float_done=True,
    )


# --------------------------------------------------------------------------- measuring


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
        object.__setattr__(self, "metrics", _frozen(self.metrics))

    @property
    def mode_label(self) -> str:
        if self.mode is None:
            return "float (nothing quantized)"
        if self.mode is RunMode.NATIVE:
            return f"native ({self.precision.value} int8 kernels)"
        return "simulation"

    def value(self, metric: Metric) -> float:
        return self.metrics.get(metric, math.nan)


def _metrics_of(acc: _OutputAccumulator) -> dict[Metric, float]:
    """The quantized metrics exactly as `evaluate` derives them from its primary output."""
    c = acc.result()
    out: dict[Metric, float] = {}
    if c.quantized_accuracy is not None:
        out[Metric.ACCURACY] = c.quantized_accuracy
    if c.agreement_pct is not None:
        out[Metric.AGREEMENT] = c.agreement_pct
    out[Metric.SQNR] = c.sqnr_db
    out[Metric.COSINE] = c.cosine
    if c.kl is not None:
        out[Metric.KL] = c.kl
    out[Metric.MAX_ABS_ERROR] = c.max_abs_error
    return out


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
    acc = _OutputAccumulator(primary, output_kind(model.model, primary))
    if not results:
        for b in ref.iter_batches():
            assert b.outputs is not None
            acc.update(b.outputs[0], b.outputs[0], b.labels)
        size = initializer_bytes(model.model)
        return Measurement(_metrics_of(acc), None, size, ref.n_samples, precision)
    qdq = build_qdq(model, results)
    run_native = native and not qdq.simulated
    options = native_session_options(precision) if run_native else simulation_session_options()
    session = make_session(qdq.model, options)
    done = 0
    carry = StateCarry.of(ref.data)
    for b in ref.iter_batches():
        if should_stop():
            raise EvaluationCancelled()
        assert b.outputs is not None
        (q,) = carry.run(_run, session, [primary], b.feeds)
        acc.update(b.outputs[0], q, b.labels)
        done += len(q) if np.ndim(q) else 1
        yield done
    mode = RunMode.NATIVE if run_native else RunMode.SIMULATION
    return Measurement(
        _metrics_of(acc), mode, model_size(model, qdq).quantized_bytes, ref.n_samples, precision
    )


# --------------------------------------------------------------------------- layers


def group_by_layer(results: Sequence[TensorResult]) -> dict[str, list[TensorResult]]:
    """The analysed tensors of each layer (its weight and the activations it owns), keyed
    by layer display name, in depth order."""
    groups: dict[str, list[TensorResult]] = {}
    for r in sorted(results, key=lambda r: (r.layer.depth, r.kind is TensorKind.WEIGHT)):
        groups.setdefault(r.layer.name, []).append(r)
    return groups


def results_digest(results: Sequence[TensorResult]) -> str:
    """sha256 of exactly what a configuration quantizes: each tensor's name, kind, settings and
    the bits of its scales and zero points (stats + config, or a saved config, alike)."""
    h = hashlib.sha256()
    for r in sorted(results, key=lambda r: (r.name, r.kind.value)):
        qp = r.qparams
        h.update(f"{r.name}|{r.kind.value}|{r.config!r}|{qp.axis}|{qp.block_size}|".encode())
        for arr in (qp.scale, qp.zero_point):
            a = np.ascontiguousarray(arr)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.tobytes())
    return h.hexdigest()


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
        object.__setattr__(self, "float_metrics", _frozen(self.float_metrics))
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
        from qviz.core.search.sensitivity_cache import report_to_json

        return report_to_json(self)


# --------------------------------------------------------------------------- the generator


def _local_sqnr(group: Sequence[TensorResult]) -> tuple[float | None, float | None]:
    w = [r.metrics.sqnr_db for r in group if r.kind is TensorKind.WEIGHT]
    a = [r.metrics.sqnr_db for r in group if r.kind is TensorKind.ACTIVATION]
    return (min(w) if w else None, min(a) if a else None)


def _shared_notes(groups: Mapping[str, Sequence[TensorResult]], model: LoadedModel) -> list[str]:
    """Activations a layer owns that other quantized layers also read: keeping the owner float
    keeps them float for those readers too (a configuration is per tensor)."""
    quantized_layers = set(groups)
    notes = []
    for owner, group in groups.items():
        for r in group:
            if r.kind is not TensorKind.ACTIVATION:
                continue
            readers = [
                layer.name
                for layer in model.layers
                if r.name in layer.activations
                and layer.name != owner
                and layer.name in quantized_layers
            ]
            if readers:
                notes.append(
                    f"keeping {owner} float also leaves its input '{r.name}' float for "
                    f"{', '.join(readers)}"
                )
    return notes


def layer_sensitivity(
    model: LoadedModel,
    results: Sequence[TensorResult],
    data: Dataset,
    *,
    metric: Metric | None = None,
    limit: int | None = DEFAULT_LIMIT,
    batch_size: int = 128,
    native: bool = True,
    precision: KernelPrecision = KernelPrecision.DEFAULT,
    cache: SensitivityCache | None = None,
    reference: FloatReference | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    should_stop: Callable[[], bool] = lambda: False,
) -> Generator[Progress, None, SensitivityReport]:
    """Sensitivity of every layer `results` quantizes (the analysed tensors of one config).

    `metric` defaults to accuracy with labels, output SQNR without. All metrics are measured
    and kept, so `SensitivityReport.with_metric` re-ranks without a run. With a `cache`, a
    report for the same model, parameters, samples and run mode is returned without running
    anything (``cached=True``), and a fresh one is stored. A `reference` already prepared on
    `data` (by a mixed-precision search) is reused as it is: its samples win over `limit` and
    `batch_size`.
    """
    start = time.perf_counter()
    results = list(results)
    if not results:
        raise QvizError("the configuration quantizes no layer: no sensitivity to measure")
    groups = group_by_layer(results)
    digest = results_digest(results)
    if reference is None:
        reference = yield from prepare_reference(
            model,
            data,
            limit=limit,
            batch_size=batch_size,
            memory_budget=memory_budget,
            run_float=False,
            should_stop=should_stop,
        )
    chosen = metric or default_metric(reference.has_labels)
    if chosen is Metric.ACCURACY and not reference.has_labels:
        raise QvizError(f"accuracy needs labels, and {data.description} has none")

    from qviz.core.search.sensitivity_cache import CacheKey

    key = CacheKey(
        model_sha256=model.sha256,
        results_digest=digest,
        data_digest=reference.digest,
        data_description=reference.data_description,
        n_samples=reference.n_samples,
        native=native,
        precision=precision,
    )
    if cache is not None:
        hit = cache.load(key)
        if hit is not None and set(s.name for s in hit.layers) == set(groups):
            yield Progress(1, 1, time.perf_counter() - start, 0.0, "sensitivity (cached)")
            if chosen in hit.quantized.metrics:
                return hit.with_metric(chosen)
            return hit

    reference = yield from complete_reference(
        reference, memory_budget=memory_budget, should_stop=should_stop
    )
    names = list(groups)
    runs: list[tuple[str, list[TensorResult]]] = [("all layers quantized", results)]
    for name in names:
        runs.append((f"quantizing only {name}", groups[name]))
        rest = [r for other, g in groups.items() if other != name for r in g]
        runs.append((f"keeping only {name} float", rest))
    per_run = reference.n_samples
    clock = ProgressClock(per_run * len(runs), "sensitivity")
    measured: list[Measurement] = []
    for i, (what, subset) in enumerate(runs):
        yield clock.report(i * per_run, what)
        gen = measure(
            reference, subset, native=native, precision=precision, should_stop=should_stop
        )
        while True:
            try:
                done = next(gen)
            except StopIteration as stop:
                measured.append(stop.value)
                break
            yield clock.report(i * per_run + done, what)
    yield clock.report(per_run * len(runs), "sensitivity done")

    quantized = measured[0]
    layers: list[LayerSensitivity] = []
    for k, name in enumerate(names):
        group = groups[name]
        layer = group[0].layer
        w_sqnr, a_sqnr = _local_sqnr(group)
        row = LayerSensitivity(
            name=name,
            node_name=layer.node_name,
            op_type=layer.op_type,
            depth=layer.depth,
            module_path=module_path(layer),
            tensors=tuple(r.name for r in group),
            param_count=layer.param_count,
            weight_sqnr_db=w_sqnr,
            activation_sqnr_db=a_sqnr,
            quantized_only=measured[1 + 2 * k],
            float_only=measured[2 + 2 * k],
        )
        layers.append(row)
    notes = _shared_notes(groups, model)
    modes = {m.mode for m in measured if m.mode is not None}
    if native and RunMode.SIMULATION in modes:
        notes.append("some variants use formats without an ONNX type: run in the simulation")
    if data.is_random:
        notes.append("measured on RANDOM input, not real data")
    report = SensitivityReport(
        metric=chosen,
        layers=tuple(layers),
        quantized=quantized,
        float_metrics=reference.float_metrics,
        n_samples=reference.n_samples,
        data_description=reference.data_description,
        data_digest=reference.digest,
        results_digest=digest,
        model_sha256=model.sha256,
        float_size_bytes=initializer_bytes(model.model),
        native=native,
        precision=precision,
        n_runs=sum(1 for m in measured if m.mode is not None),
        elapsed_s=time.perf_counter() - start,
        notes=tuple(notes),
    )
    report = report.with_metric(chosen)
    if cache is not None:
        cache.store(key, report)
    return report


def resolve_results(
    model: LoadedModel, source: CalibrationStats | SavedConfig, config: QuantConfig | None
) -> list[TensorResult]:
    """The analysed tensors of a stats file plus a configuration, or of a saved config file
    (whose exact scales are used; `config` must then be None)."""
    if isinstance(source, SavedConfig):
        if config is not None:
            raise QvizError("a saved config file holds its own settings: pass no QuantConfig")
        return results_from_saved(model, source)
    if config is None:
        raise QvizError("statistics need a QuantConfig to say how to quantize")
    check_stats_match(model, source)
    return analyze(model, source, config)


def sensitivity(
    model: LoadedModel,
    source: CalibrationStats | SavedConfig,
    config: QuantConfig | None,
    data: Dataset,
    *,
    metric: Metric | None = None,
    limit: int | None = DEFAULT_LIMIT,
    batch_size: int = 128,
    native: bool = True,
    precision: KernelPrecision = KernelPrecision.DEFAULT,
    cache: SensitivityCache | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> Generator[Progress, None, SensitivityReport]:
    """Per-layer sensitivity of `config` on `source` statistics (or of a saved config file).

    Yields `Progress`; returns the `SensitivityReport`; raises `EvaluationCancelled` when
    `should_stop()` turns true between batches. See `layer_sensitivity` for the options.
    """
    results = resolve_results(model, source, config)
    return (
        yield from layer_sensitivity(
            model,
            results,
            data,
            metric=metric,
            limit=limit,
            batch_size=batch_size,
            native=native,
            precision=precision,
            cache=cache,
            should_stop=should_stop,
        )
    )
