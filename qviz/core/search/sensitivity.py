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
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from qviz.core.calibration.analysis import TensorResult, analyze, check_stats_match
from qviz.core.calibration.config import QuantConfig
from qviz.core.compute.backend import ComputeBackend, opened, run_jobs
from qviz.core.compute.jobs import MeasureJob, WorkContext
from qviz.core.errors import QvizError
from qviz.core.evaluation.results import Metric, RunMode
from qviz.core.files.config_file import SavedConfig, results_from_saved
from qviz.core.graph.qdq import initializer_bytes
from qviz.core.model.loading import Layer, LoadedModel, TensorKind
from qviz.core.progress import Progress, ProgressClock, run_to_completion
from qviz.core.runtime.sessions import KernelPrecision
from qviz.core.search.measure import Measurement, measure
from qviz.core.search.reference import (
    DEFAULT_LIMIT,
    DEFAULT_MEMORY_BUDGET,
    FloatReference,
    complete_reference,
    prepare_reference,
)
from qviz.core.search.sensitivity_cache import CacheKey, SensitivityCache
from qviz.core.search.sensitivity_partial import PartialRuns
from qviz.core.search.sensitivity_report import (
    LayerSensitivity,
    SensitivityReport,
    default_metric,
    float_value,
    harm,
    higher_is_better,
)
from qviz.core.stats.collect import CalibrationStats

if TYPE_CHECKING:
    from qviz.core.data.dataset import Dataset

# The reference, the measurement and the report live in their own modules; their public
# names are re-exported here, where callers know them from.
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


def module_path(layer: Layer) -> str | None:
    """The torch module path of a layer when the exporter recorded one (the display name is
    the node name otherwise)."""
    return None if layer.name == layer.node_name else layer.name


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
    compute: ComputeBackend | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> Generator[Progress, None, SensitivityReport]:
    """Sensitivity of every layer `results` quantizes (the analysed tensors of one config).

    `metric` defaults to accuracy with labels, output SQNR without. All metrics are measured
    and kept, so `SensitivityReport.with_metric` re-ranks without a run. With a `cache`, a
    report for the same model, parameters, samples and run mode is returned without running
    anything (``cached=True``), and a fresh one is stored. A `reference` already prepared on
    `data` (by a mixed-precision search) is reused as it is: its samples win over `limit` and
    `batch_size`. The 2n+1 runs go to `compute` (`qviz.core.compute`; one at a time here when
    None) and come back in run order, so the report is the same whatever ran them; with a
    `cache`, each finished run is kept at once, and a sweep that stops half way resumes
    from there.
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
    measured = yield from _measure_runs(
        runs, reference, PartialRuns(cache, key), compute,
        native=native, precision=precision, should_stop=should_stop,
    )  # fmt: skip

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
        PartialRuns(cache, key).drop()
    return report


def _measure_runs(
    runs: Sequence[tuple[str, Sequence[TensorResult]]],
    reference: FloatReference,
    partial: PartialRuns,
    compute: ComputeBackend | None,
    *,
    native: bool,
    precision: KernelPrecision,
    should_stop: Callable[[], bool],
) -> Generator[Progress, None, list[Measurement]]:
    """Every run measured on `compute` (today's one-at-a-time when None), in run order;
    runs an unfinished sweep already measured come from `partial`, and each run that
    finishes is added to it at once."""
    known = partial.load()
    todo = [i for i, (what, _) in enumerate(runs) if what not in known]
    per_run = reference.n_samples
    clock = ProgressClock(per_run * len(runs), "sensitivity")
    values: list[Measurement] = []
    if todo:
        jobs = [
            MeasureJob(tuple(runs[i][1]), native, precision, label=runs[i][0]) for i in todo
        ]
        context = WorkContext(reference.model, reference=reference)
        with opened(compute, context, should_stop, max_workers=len(jobs)) as pool:
            values = yield from run_jobs(
                pool, jobs, clock=clock, offset=per_run * (len(runs) - len(todo)),
                should_stop=should_stop,
                on_done=lambda k, m: partial.store(runs[todo[k]][0], m),
            )  # fmt: skip
    yield clock.report(per_run * len(runs), "sensitivity done")
    fresh = dict(zip(todo, values, strict=True))
    return [fresh[i] if i in fresh else known[what] for i, (what, _) in enumerate(runs)]


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
    compute: ComputeBackend | None = None,
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
            compute=compute,
            should_stop=should_stop,
        )
    )
