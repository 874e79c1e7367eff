"""The document's long jobs, as generators a worker thread runs (no Qt, no threads here).

Each takes frozen inputs (the model, statistics, a configuration, a data path), yields
`Progress`, checks `should_stop` between batches and returns a value the document accepts on
the GUI thread. What they return says what it was computed for (the document's revision), so
a result that arrives after the settings changed is recognised and dropped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from qviz.core.calibration.analysis import (
    QuantTensor,
    TensorKey,
    TensorResult,
    analyze,
    analyze_tensor,
    quant_tensors,
)
from qviz.core.calibration.config import QuantConfig, TensorConfig
from qviz.core.compute.backend import ComputeBackend
from qviz.core.compute.remote import evaluate_with
from qviz.core.data.dataset import Dataset, load_data
from qviz.core.data.split import Holdout, Part, split
from qviz.core.errors import QvizError
from qviz.core.evaluation.criteria import Criterion
from qviz.core.evaluation.evaluate import Evaluation, Metric, RunMode
from qviz.core.model.loading import LoadedModel, load_model
from qviz.core.progress import Progress, ProgressClock
from qviz.core.runtime.sessions import Threads
from qviz.core.search.mixed import MixedResult, Objective, Precision, mixed_precision
from qviz.core.search.sensitivity import SensitivityReport, sensitivity
from qviz.core.search.sensitivity_cache import SensitivityCache
from qviz.core.stats.collect import CalibrationStats, collect_stats
from qviz.core.stats.stats_file import load_stats
from qviz.core.transforms.plan import transform_model

ShouldStop = Callable[[], bool]
# The mixed-precision answer's confirmation and its baseline run at the core's batch size.
MIXED_BATCH = 128


# --- opening ---------------------------------------------------------------------------------


def calibrate(
    model: LoadedModel,
    data_path: Path,
    batch_size: int,
    should_stop: ShouldStop,
    holdout: Holdout | None = None,
    *,
    gram: bool = False,
) -> Generator[Progress, None, CalibrationStats]:
    """Read the data and collect statistics (on the calibration part when a `holdout` keeps
    some samples apart for evaluation; with `gram`, the Gram matrices GPTQ needs too)."""
    yield Progress(0, 0, 0.0, None, f"reading {data_path.name}")
    data = load_data(data_path, model.inputs)
    if holdout is not None:
        data = split(data, holdout, Part.CALIBRATION)
    return (
        yield from collect_stats(
            model, data, batch_size=batch_size, should_stop=should_stop, snapshots=True,
            gram=gram,
        )
    )


def collect_eval_stats(
    model: LoadedModel,
    data_path: Path,
    holdout: Holdout | None,
    batch_size: int,
    should_stop: ShouldStop,
) -> Generator[Progress, None, CalibrationStats]:
    """Statistics of the evaluation data (the held-out part when `holdout` is given), to
    judge whether the calibration data represents it."""
    yield Progress(0, 0, 0.0, None, f"reading {data_path.name}")
    data = load_data(data_path, model.inputs)
    if holdout is not None:
        data = split(data, holdout, Part.EVALUATION)
    # Per-tensor statistics are all this comparison reads: no per-channel histograms.
    return (yield from collect_stats(model, data, batch_size=batch_size, should_stop=should_stop,
                                     channel_bins=None))


def load_stats_and_model(
    path: Path, current: LoadedModel | None
) -> tuple[LoadedModel | None, CalibrationStats]:
    """A statistics file, plus its model when the one open is not the one it was collected on."""
    stats = load_stats(path)
    if current is not None and current.sha256 == stats.model_sha256:
        return None, stats
    source = Path(stats.model_source)
    if not source.is_file():
        raise QvizError(
            f"{path.name} was collected on {source}, which is not there; open that model "
            f"(Ctrl+O) and then the statistics"
        )
    model = load_model(source, float_model=stats.float_source)
    if model.sha256 != stats.model_sha256:
        raise QvizError(
            f"{source} has changed since {path.name} was collected (sha256 differs); "
            f"recalibrate it"
        )
    return model, stats


# --- measuring every tensor ------------------------------------------------------------------


@dataclass(frozen=True)
class AnalysisJob:
    """Everything one `analyze_tensor` call needs: immutable, safe to hand to a worker thread.

    With transforms, `model` and `stats` are the transformed ones the tensor is measured on
    (None: those `analyze_in_batches` is given) and `context` what the result depends on
    beyond its settings (`TensorResult.context`)."""

    key: TensorKey
    tensor: QuantTensor
    config: TensorConfig
    model: LoadedModel | None = None
    stats: CalibrationStats | None = None
    context: str = ""


AnalysisOutcome = tuple[TensorKey, TensorResult | QvizError]


@dataclass(frozen=True)
class AnalysisBatch:
    """Outcomes measured since the last batch, and how far the run has come (with the time
    left), so the app can say so while a thousand tensors are measured."""

    outcomes: list[AnalysisOutcome]
    progress: Progress


def analyze_in_batches(
    model: LoadedModel,
    stats: CalibrationStats | None,
    jobs: Sequence[AnalysisJob],
    *,
    batch_seconds: float = 0.05,
) -> Generator[AnalysisBatch, None, int]:
    """Run `jobs`, yielding their outcomes in batches of about `batch_seconds` of work.

    Each yield is a point where the run can be stopped, and batching keeps a model with
    thousands of tiny tensors from flooding the GUI thread with one signal per tensor. A
    QvizError is an outcome (shown in the tensor's row), not a failure of the run. Returns the
    number of jobs done.
    """
    batch: list[AnalysisOutcome] = []
    clock = ProgressClock(len(jobs), "measuring tensors", unit="tensors")
    started = time.perf_counter()
    for done, job in enumerate(jobs, 1):
        outcome: TensorResult | QvizError
        try:
            result = analyze_tensor(
                job.model or model, job.stats or stats, job.tensor, job.config
            )
            outcome = replace(result, context=job.context) if job.context else result
        except QvizError as exc:
            outcome = exc
        batch.append((job.key, outcome))
        if time.perf_counter() - started >= batch_seconds:
            yield AnalysisBatch(batch, clock.report(done))
            batch = []
            started = time.perf_counter()
    if batch:
        yield AnalysisBatch(batch, clock.report(len(jobs)))
    return len(jobs)


def analyze_with_progress(
    model: LoadedModel,
    stats: CalibrationStats | None,
    config: QuantConfig,
    known: Mapping[TensorKey, TensorResult] | None = None,
) -> Generator[Progress, None, list[TensorResult]]:
    """`analyze`, yielding Progress (in tensors, with the time left) as it goes: every
    tensor `config` quantizes, in graph order, reusing `known` results measured for the same
    settings. A tensor that cannot be measured raises its QvizError, as `analyze` does."""
    known = known or {}
    jobs = [
        AnalysisJob(t.key, t, cfg)
        for t in quant_tensors(model)
        if (cfg := config.for_tensor(t.name, t.kind)).quantize
    ]
    results = {
        j.key: r for j in jobs if (r := known.get(j.key)) is not None and r.config == j.config
    }
    todo = [j for j in jobs if j.key not in results]
    for batch in analyze_in_batches(model, stats, todo, batch_seconds=0.1):
        for key, outcome in batch.outcomes:
            if isinstance(outcome, QvizError):
                raise outcome
            results[key] = outcome
        yield batch.progress
    return [results[j.key] for j in jobs]


# --- end-to-end measurements -----------------------------------------------------------------


@dataclass(frozen=True)
class MeasureInputs:
    """What a measurement depends on, frozen when it starts."""

    model: LoadedModel
    stats: CalibrationStats
    config: QuantConfig
    data_path: Path
    revision: int
    known: Mapping[TensorKey, TensorResult]  # results already measured for `config`
    holdout: Holdout | None = None  # measure on the held-out part of `data_path`
    data_label: str = ""            # what the numbers are measured on, as results say it

    def load(self) -> Dataset:
        """The evaluation data (read on the worker thread that measures)."""
        data = load_data(self.data_path, self.model.inputs)
        return data if self.holdout is None else split(data, self.holdout, Part.EVALUATION)


@dataclass(frozen=True)
class EvaluationOutcome:
    """One evaluation and what it was computed for."""

    evaluation: Evaluation
    results: tuple[TensorResult, ...]  # the analysed tensors the Q/DQ graph was built from
    config: QuantConfig
    full: bool
    revision: int
    elapsed_s: float
    data_name: str

    @property
    def label(self) -> str:
        """Where the numbers come from, as the panel says it: "simulation, 256 samples"."""
        n = self.evaluation.n_samples
        if self.full:
            return f"native INT8, all {n} samples"
        return f"simulation, {n} samples"


def evaluation_job(
    inputs: MeasureInputs,
    *,
    full: bool,
    limit: int | None,
    batch_size: int,
    should_stop: ShouldStop,
    compute: ComputeBackend | None = None,
) -> Generator[Progress, None, EvaluationOutcome]:
    """Analyse what is not yet analysed and evaluate the Q/DQ model (on `compute` when
    given: the full evaluation can run on a cluster)."""
    started = time.perf_counter()
    model = inputs.model
    yield Progress(0, 0, 0.0, None, f"reading {inputs.data_path.name}")
    dataset = inputs.load()
    plan = transform_model(model, inputs.stats, inputs.config)  # SmoothQuant, equalization
    model = plan.model
    results = yield from analyze_with_progress(model, plan.stats, inputs.config, inputs.known)
    evaluation = yield from evaluate_with(
        compute, model, results, dataset, native=full, limit=None if full else limit,
        batch_size=batch_size, latency=full, should_stop=should_stop,
    )  # fmt: skip
    return EvaluationOutcome(
        evaluation=evaluation,
        results=tuple(results),
        config=inputs.config,
        full=full,
        revision=inputs.revision,
        elapsed_s=time.perf_counter() - started,
        data_name=inputs.data_label or inputs.data_path.name,
    )


def sensitivity_job(
    inputs: MeasureInputs,
    *,
    limit: int,
    metric: Metric | None,
    cache: SensitivityCache | None,
    should_stop: ShouldStop,
    compute: ComputeBackend | None = None,
) -> Generator[Progress, None, SensitivityReport]:
    """Read the data and measure every layer."""
    yield Progress(0, 0, 0.0, None, f"reading {inputs.data_path.name}")
    data: Dataset = inputs.load()
    return (
        yield from sensitivity(
            inputs.model, inputs.stats, inputs.config, data, metric=metric,
            limit=limit, cache=cache, compute=compute, should_stop=should_stop,
        )
    )  # fmt: skip


@dataclass(frozen=True)
class MixedOutcome:
    """A search's answer, and the lowest precision everywhere measured the same way as the
    answer (every sample, native kernels where the formats allow): the comparison the answer
    is worth making against. ``baseline`` is None when the answer is that configuration."""

    result: MixedResult
    baseline: Evaluation | None


@dataclass(frozen=True)
class MixedRequest:
    """What the user asked a mixed-precision search for."""

    criterion: Criterion
    allowed: tuple[Precision, ...]  # cheapest first (`parse_precisions`)
    objective: Objective
    limit: int
    speed_batch: int = 1  # the speed objective times at this batch...
    threads: int = 0  # ...with these intra-op threads (0: ORT's choice)

    @property
    def allowed_text(self) -> str:
        return ",".join(p.name for p in self.allowed)


def mixed_job(
    inputs: MeasureInputs,
    request: MixedRequest,
    *,
    cache: SensitivityCache | None,
    should_stop: ShouldStop,
    compute: ComputeBackend | None = None,
) -> Generator[Progress, None, MixedOutcome]:
    """Read the data, search, then measure the all-lowest baseline on every sample too."""
    yield Progress(0, 0, 0.0, None, f"reading {inputs.data_path.name}")
    model, stats = inputs.model, inputs.stats
    data = inputs.load()
    result: MixedResult = yield from mixed_precision(
        model, stats, inputs.config, data, request.criterion, request.allowed,
        objective=request.objective, limit=request.limit, cache=cache,
        batch_size=MIXED_BATCH, compute=compute, should_stop=should_stop,
        speed_batches=(request.speed_batch,), threads=Threads(intra_op=request.threads),
    )  # fmt: skip
    baseline = result.baseline
    if baseline.index == result.chosen.index or result.evaluation is None:
        return MixedOutcome(result, None)
    label = f"measuring {baseline.label} on every sample"
    plan = transform_model(model, stats, baseline.config)
    gen = evaluate_with(
        compute, plan.model, analyze(plan.model, plan.stats, baseline.config), data,
        native=result.evaluation.mode is RunMode.NATIVE, precision=result.evaluation.precision,
        batch_size=MIXED_BATCH, latency=False, label=label, should_stop=should_stop,
    )  # fmt: skip
    while True:
        try:
            p = next(gen)
        except StopIteration as stop:
            return MixedOutcome(result, stop.value)
        yield Progress(p.done, p.total, p.elapsed_s, p.remaining_s, label)
