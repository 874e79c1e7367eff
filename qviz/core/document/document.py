"""The document qviz has open: model, statistics, configuration, selection and cached results.

`Document` is the app's model in the napari sense: plain Python, no Qt. It holds the model,
the statistics, the quantization configuration and the selection, caches one `TensorResult` per
tensor, and turns a user's choice ("this config, for these tensors") into the list of tensors
whose numbers changed. The Qt window renders it and calls into it; it never reaches back.
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path

import numpy as np

from qviz.core.calibration.analysis import (
    QuantTensor,
    TensorKey,
    TensorResult,
    analyze_tensor,
    quant_tensors,
)
from qviz.core.calibration.config import QuantConfig, TensorConfig
from qviz.core.calibration.methods import Method, MethodSpec, choose_range
from qviz.core.errors import QvizError
from qviz.core.files.session_file import SessionFile
from qviz.core.model.loading import LoadedModel, TensorKind
from qviz.core.quant.formats import FormatKind, GranularityKind, PerTensor
from qviz.core.search.sensitivity import LayerSensitivity, SensitivityReport, results_digest
from qviz.core.stats.collect import CalibrationStats

# Method markers for weights cost one pass over the tensor per method; skip huge ones.
MAX_MARKER_WEIGHT = 4_000_000


# --- what a path is -------------------------------------------------------------------------
# --- summaries ------------------------------------------------------------------------------


def weighted_sqnr_db(values: Iterable[tuple[float, float]]) -> float:
    """Model-wide SQNR from (per-tensor SQNR in dB, weight) pairs.

    Averaged in the power domain, not in dB: each tensor's noise-to-signal ratio
    10^(-SQNR/10) is averaged with its weight (element count), and the mean converted back to
    dB. A dB average would let one very clean tensor hide one ruined one; the power mean is
    dominated by the noisy tensor, as the model's output will be. Tensors with no finite or
    infinite SQNR (NaN) are left out; an exact tensor (SQNR +inf) adds zero noise.
    """
    total_w = 0.0
    total_nsr = 0.0
    for sqnr, weight in values:
        if math.isnan(sqnr) or weight <= 0:
            continue
        total_w += weight
        total_nsr += weight * (0.0 if math.isinf(sqnr) and sqnr > 0 else 10.0 ** (-sqnr / 10.0))
    if total_w == 0:
        return math.nan
    if total_nsr == 0:
        return math.inf
    return -10.0 * math.log10(total_nsr / total_w)


@dataclass(frozen=True)
class Summary:
    n_tensors: int
    n_weights: int
    n_activations: int
    n_analyzed: int
    worst: tuple[tuple[TensorKey, float], ...]  # lowest SQNR first
    weighted_sqnr_db: float


class ApplyScope(Enum):
    """Which tensors a change of settings applies to (always tensors of the selected kind)."""

    TENSOR = "tensor"
    OP_TYPE = "op-type"
    ALL = "all"


@dataclass(frozen=True)
class AnalysisJob:
    """Everything one `analyze_tensor` call needs: immutable, safe to hand to a worker thread."""

    key: TensorKey
    tensor: QuantTensor
    config: TensorConfig


def analyze_in_batches(
    model: LoadedModel,
    stats: CalibrationStats | None,
    jobs: Sequence[AnalysisJob],
    *,
    batch_seconds: float = 0.05,
) -> Generator[list[tuple[TensorKey, TensorResult | QvizError]], None, int]:
    """Run `jobs`, yielding their outcomes in batches of about `batch_seconds` of work.

    Meant for a worker thread: each yield is a point where the run can be stopped, and
    batching keeps a model with thousands of tiny tensors from flooding the GUI thread with
    one signal per tensor. A QvizError is an outcome (shown in the tensor's row), not a failure
    of the run. Returns the number of jobs done.
    """
    stats = stats if stats is not None else _EMPTY_STATS
    batch: list[tuple[TensorKey, TensorResult | QvizError]] = []
    started = time.perf_counter()
    for job in jobs:
        try:
            outcome: TensorResult | QvizError = analyze_tensor(model, stats, job.tensor, job.config)
        except QvizError as exc:
            outcome = exc
        batch.append((job.key, outcome))
        if time.perf_counter() - started >= batch_seconds:
            yield batch
            batch = []
            started = time.perf_counter()
    if batch:
        yield batch
    return len(jobs)


# --- the document ---------------------------------------------------------------------------


class Document:
    """The open model, its statistics, the configuration and selection, and cached results.

    Mutated only from the GUI thread; worker threads get immutable `AnalysisJob`s and the
    model/statistics (frozen objects) and their results come back through `store`, which
    drops any result whose configuration is no longer the current one.
    """

    def __init__(self) -> None:
        self.model: LoadedModel | None = None
        self.model_path: Path | None = None
        self.data_path: Path | None = None
        self.stats_path: Path | None = None
        self.stats: CalibrationStats | None = None
        self.config = QuantConfig()
        self.selection: TensorKey | None = None
        self.log_counts = False
        self.tensors: tuple[QuantTensor, ...] = ()
        self._by_key: dict[TensorKey, QuantTensor] = {}
        self._results: dict[TensorKey, TensorResult] = {}
        self._errors: dict[TensorKey, str] = {}
        self._shapes: dict[str, tuple[int | None, ...]] = {}
        self._weights: dict[str, np.ndarray] = {}
        self._ranges: dict[
            tuple[str, TensorKind, MethodSpec, NumberFormatKey], tuple[float, float]
        ] = {}
        # The last sensitivity report (saved with the session) and whether the settings have
        # changed since it was measured (see `check_sensitivity`).
        self.sensitivity: SensitivityReport | None = None
        self.sensitivity_stale = False

    # ----------------------------------------------------------------- opening
    def set_model(self, model: LoadedModel, path: Path | None = None) -> None:
        """A new model: statistics from the old one no longer apply; settings are kept."""
        self.model = model
        self.model_path = Path(path) if path is not None else Path(model.source)
        self.stats = None
        self.stats_path = None
        self.tensors = tuple(quant_tensors(model))
        self._by_key = {t.key: t for t in self.tensors}
        self._results.clear()
        self._errors.clear()
        self._weights.clear()
        self._ranges.clear()
        self._shapes = _value_shapes(model)
        if self.selection not in self._by_key:
            self.selection = self.tensors[0].key if self.tensors else None
        if self.sensitivity is not None and self.sensitivity.model_sha256 != model.sha256:
            self.set_sensitivity(None)

    def set_stats(self, stats: CalibrationStats, path: Path | None = None) -> list[TensorKey]:
        """Statistics for the current model; returns the activation tensors to re-analyse."""
        if self.model is None:
            raise QvizError("open a model before its statistics")
        from qviz.core.calibration.analysis import check_stats_match

        check_stats_match(self.model, stats)
        self.stats = stats
        self.stats_path = path
        self._ranges.clear()
        stale = [k for k in self._by_key if k[1] is TensorKind.ACTIVATION]
        for key in stale:
            self._results.pop(key, None)
            self._errors.pop(key, None)
        return stale

    def clear_stats(self) -> None:
        self.stats = None
        self.stats_path = None
        for key in [k for k in self._results if k[1] is TensorKind.ACTIVATION]:
            del self._results[key]

    # ----------------------------------------------------------------- lookups
    def tensor(self, key: TensorKey) -> QuantTensor:
        return self._by_key[key]

    def has(self, key: TensorKey) -> bool:
        return key in self._by_key

    def find(self, name: str, kind: TensorKind | None = None) -> TensorKey | None:
        """The key of a tensor by name (first match when `kind` is unknown, as in v1 files)."""
        for key in self._by_key:
            if key[0] == name and (kind is None or key[1] is kind):
                return key
        return None

    def config_for(self, key: TensorKey) -> TensorConfig:
        return self.config.for_tensor(key[0], key[1])

    def can_analyze(self, key: TensorKey) -> bool:
        """Weights need only the model; activations need statistics."""
        if key[1] is TensorKind.WEIGHT:
            return self.model is not None
        return self.stats is not None and key[0] in self.stats.tensors

    def result(self, key: TensorKey) -> TensorResult | None:
        return self._results.get(key)

    def error(self, key: TensorKey) -> str | None:
        return self._errors.get(key)

    def shape(self, key: TensorKey) -> tuple[int | None, ...] | None:
        tensor = self._by_key[key]
        if key[1] is TensorKind.WEIGHT:
            return tensor.layer.weight_shape
        return self._shapes.get(key[0])

    def element_count(self, key: TensorKey) -> float:
        """Weights: parameters. Activations: values per sample (from the statistics)."""
        tensor = self._by_key[key]
        if key[1] is TensorKind.WEIGHT:
            shape = tensor.layer.weight_shape or ()
            return float(math.prod(shape)) if shape else 0.0
        if self.stats is not None and key[0] in self.stats.tensors and self.stats.n_samples:
            return self.stats.tensors[key[0]].count / self.stats.n_samples
        shape = self._shapes.get(key[0])
        if shape and all(isinstance(d, int) for d in shape[1:]):
            return float(math.prod(shape[1:]))  # leading axis is the batch
        return 0.0

    def weight_values(self, name: str) -> np.ndarray:
        """The float weight tensor (cached: the layer view needs it on every redraw)."""
        if name not in self._weights:
            assert self.model is not None
            self._weights[name] = self.model.weight(name)
        return self._weights[name]

    def op_types(self) -> list[str]:
        return sorted({t.layer.op_type for t in self.tensors})

    # ----------------------------------------------------------------- analysis
    def analyze(self, key: TensorKey) -> TensorResult | None:
        """Analyse one tensor now (milliseconds) and cache it; None if it cannot be yet.

        A QvizError (e.g. a format the tensor cannot take) is kept as the tensor's error text
        and shown in its row; anything else is a bug and propagates to the error reporter.
        """
        if self.model is None or not self.can_analyze(key):
            return None
        cfg = self.config_for(key)
        stats = self.stats if self.stats is not None else _EMPTY_STATS
        try:
            result = analyze_tensor(self.model, stats, self._by_key[key], cfg)
        except QvizError as exc:
            self._results.pop(key, None)
            self._errors[key] = str(exc)
            return None
        self._results[key] = result
        self._errors.pop(key, None)
        return result

    def analyze_jobs(self, keys: Iterable[TensorKey] | None = None) -> list[AnalysisJob]:
        """Jobs for the given tensors (default: every one lacking a result) that can run now."""
        wanted = self._by_key if keys is None else keys
        jobs = []
        for key in wanted:
            if key not in self._by_key or not self.can_analyze(key):
                continue
            if keys is None and (key in self._results or key in self._errors):
                continue
            jobs.append(AnalysisJob(key, self._by_key[key], self.config_for(key)))
        return jobs

    def store(self, key: TensorKey, outcome: TensorResult | QvizError) -> bool:
        """Keep a result computed elsewhere, unless the configuration changed meanwhile."""
        if key not in self._by_key:
            return False
        if isinstance(outcome, QvizError):
            self._errors[key] = str(outcome)
            self._results.pop(key, None)
            return True
        if outcome.config != self.config_for(key):
            return False  # superseded by a newer choice; its own job will deliver
        self._results[key] = outcome
        self._errors.pop(key, None)
        return True

    # ----------------------------------------------------------------- changing settings
    def scope_keys(self, key: TensorKey, scope: ApplyScope) -> list[TensorKey]:
        """The tensors a change to `key` under `scope` affects (same kind as `key`)."""
        kind = key[1]
        if scope is ApplyScope.TENSOR:
            return [key]
        if scope is ApplyScope.OP_TYPE:
            op = self._by_key[key].layer.op_type
            return [k for k, t in self._by_key.items() if k[1] is kind and t.layer.op_type == op]
        return [k for k in self._by_key if k[1] is kind]

    def apply(self, key: TensorKey, cfg: TensorConfig, scope: ApplyScope) -> list[TensorKey]:
        """Set `cfg` on `key`, its op type, or every tensor of its kind; returns the changed keys.

        "All" changes the default for the kind and drops that kind's overrides, so tensors
        added to the default later follow it; the other scopes write overrides.
        """
        kind = key[1]
        affected = self.scope_keys(key, scope)
        if scope is ApplyScope.ALL:
            config = self.config.with_default(kind, cfg)
            for name, _ in affected:
                if name in config.overrides:
                    config = config.without_override(name)
        else:
            config = self.config
            for name, _ in affected:
                config = config.with_override(name, cfg)
        return self.set_config(config)

    def set_config(self, config: QuantConfig) -> list[TensorKey]:
        """Replace the whole configuration; returns the tensors whose settings changed."""
        old = self.config
        self.config = config
        changed = [
            k for k in self._by_key if old.for_tensor(k[0], k[1]) != config.for_tensor(k[0], k[1])
        ]
        for key in changed:
            self._results.pop(key, None)
            self._errors.pop(key, None)
        return changed

    def set_manual_range(self, key: TensorKey, lo: float, hi: float) -> list[TensorKey]:
        """A clip range dragged by hand: the tensor switches to the Manual method.

        One dragged band is one range, so a per-channel or per-group weight becomes
        per-tensor: that is what the drag previewed, and the numbers must not jump on release.
        """
        if not hi > lo:
            raise QvizError(f"the clip range must have low < high, got [{lo:.4g}, {hi:.4g}]")
        cfg = self.config_for(key)
        spec = MethodSpec(Method.MANUAL, manual_range=(float(lo), float(hi)))
        new = replace(cfg, spec=spec)
        if key[1] is TensorKind.WEIGHT and cfg.granularity.kind is not GranularityKind.PER_TENSOR:
            new = replace(new, granularity=PerTensor())
        return self.apply(key, new, ApplyScope.TENSOR)

    # ----------------------------------------------------------------- method markers
    def method_ranges(
        self, key: TensorKey | None
    ) -> dict[tuple[str, Method], tuple[float, float]]:
        """Where each automatic method would put a tensor's (per-tensor) clip range.

        The layer view draws these as markers on the error curve. Cached per tensor, method,
        percentile and format: Entropy and MSE search the histogram, and the markers are
        redrawn on every click. Weights above `MAX_MARKER_WEIGHT` values get none (each
        method is a pass over the whole tensor).
        """
        out: dict[tuple[str, Method], tuple[float, float]] = {}
        if key is None or key not in self._by_key or not self.can_analyze(key):
            return out
        name, kind = key
        cfg = self.config_for(key)
        if kind is TensorKind.ACTIVATION and cfg.fmt.kind is FormatKind.NF4:
            return out
        if kind is TensorKind.WEIGHT and self.element_count(key) > MAX_MARKER_WEIGHT:
            return out
        fkey = _format_key(cfg)
        percentile = cfg.spec.percentile
        for method in (Method.MINMAX, Method.PERCENTILE, Method.ENTROPY, Method.MSE):
            spec = MethodSpec.of(method, percentile)
            ckey = (name, kind, spec, fkey)
            if ckey not in self._ranges:
                try:
                    self._ranges[ckey] = self._method_range(key, spec, cfg)
                except QvizError:
                    continue
            out[(name, method)] = self._ranges[ckey]
        return out

    def _method_range(
        self, key: TensorKey, spec: MethodSpec, cfg: TensorConfig
    ) -> tuple[float, float]:
        if key[1] is TensorKind.ACTIVATION:
            assert self.stats is not None
            lo, hi = choose_range(self.stats.tensors[key[0]], spec, cfg.fmt)
            return float(lo), float(hi)
        assert self.model is not None
        per_tensor = TensorConfig(spec, PerTensor(), cfg.fmt)
        result = analyze_tensor(self.model, _EMPTY_STATS, self._by_key[key], per_tensor)
        return result.metrics.envelope

    # ----------------------------------------------------------------- summary
    def summary(self, n_worst: int = 3) -> Summary:
        scored = []
        for key, result in self._results.items():
            # A tensor kept float (a mixed-precision choice) adds no quantization noise.
            sqnr = float(result.metrics.sqnr_db) if self.config_for(key).quantize else math.inf
            scored.append((key, sqnr, self.element_count(key)))
        ordered = sorted(
            ((k, s) for k, s, _ in scored if not math.isnan(s)), key=lambda ks: ks[1]
        )
        return Summary(
            n_tensors=len(self._by_key),
            n_weights=sum(1 for k in self._by_key if k[1] is TensorKind.WEIGHT),
            n_activations=sum(1 for k in self._by_key if k[1] is TensorKind.ACTIVATION),
            n_analyzed=len(self._results),
            worst=tuple(ordered[:n_worst]),
            weighted_sqnr_db=weighted_sqnr_db((s, w) for _, s, w in scored),
        )

    # ----------------------------------------------------------------- session
    def to_session(self) -> SessionFile:
        selection: tuple[str, TensorKind | None] | None = self.selection
        return SessionFile(
            model_path=self.model_path,
            data_path=self.data_path,
            stats_path=self.stats_path,
            model_sha256=None if self.model is None else self.model.sha256,
            config=self.config,
            selection=selection,
            log_counts=self.log_counts,
            sensitivity=self.sensitivity,
        )

    def adopt_session(self, session: SessionFile) -> None:
        """Take a loaded session's choices (the files are opened by the caller)."""
        self.set_config(session.config)
        self.log_counts = session.log_counts
        if session.selection is not None and self._by_key:
            key = self.find(*session.selection)
            if key is not None:
                self.selection = key
        report = session.sensitivity
        if report is not None and self.model is not None:
            self.set_sensitivity(report if report.model_sha256 == self.model.sha256 else None)

    # ----------------------------------------------------------------- sensitivity
    def set_sensitivity(self, report: SensitivityReport | None) -> None:
        """Keep a sensitivity report (None forgets it); `check_sensitivity` says if it still
        describes the current settings."""
        self.sensitivity = report
        self.sensitivity_stale = False

    def sensitivity_for(self, key: TensorKey) -> LayerSensitivity | None:
        """The report's row for the layer a tensor belongs to (None: no report, or the layer
        quantized nothing when it was measured)."""
        if self.sensitivity is None or key not in self._by_key:
            return None
        try:
            return self.sensitivity.layer(self._by_key[key].layer.name)
        except KeyError:
            return None

    def sensitivity_current(self) -> bool | None:
        """Whether the report was measured on exactly what the current settings quantize (the
        same scales, bit for bit); None when that cannot be told yet (no report, or a
        quantized tensor not measured yet)."""
        report = self.sensitivity
        if report is None or self.model is None:
            return None
        if report.model_sha256 != self.model.sha256:
            return False
        results = []
        for key in self._by_key:
            if not self.config_for(key).quantize:
                continue
            result = self._results.get(key)
            if result is None:
                return None
            results.append(result)
        return results_digest(results) == report.results_digest

    def check_sensitivity(self) -> bool:
        """Re-check `sensitivity_stale` (kept as it was while that cannot be told yet)."""
        current = self.sensitivity_current()
        if current is not None:
            self.sensitivity_stale = not current
        return self.sensitivity_stale


NumberFormatKey = tuple[str, bool, bool]


def _format_key(cfg: TensorConfig) -> NumberFormatKey:
    return (cfg.fmt.spec, cfg.fmt.symmetric, cfg.fmt.pow2_scale)


# Weights are analysed from the model alone; analyze_tensor's signature still wants statistics.
_EMPTY_STATS = CalibrationStats(
    model_source="", model_sha256="", data_description="", data_is_random=False, n_samples=0
)


def _value_shapes(model: LoadedModel) -> dict[str, tuple[int | None, ...]]:
    """Activation shapes the graph declares (dynamic axes as None), for the table's Shape."""
    shapes: dict[str, tuple[int | None, ...]] = {}
    graph = model.model.graph
    for vi in (*graph.input, *graph.value_info, *graph.output):
        ttype = vi.type.tensor_type
        if not ttype.HasField("shape"):
            continue
        dims: list[int | None] = [
            d.dim_value if d.HasField("dim_value") else None for d in ttype.shape.dim
        ]
        shapes[vi.name] = tuple(dims)
    return shapes


def granularity_supported(kind: TensorKind) -> Sequence[GranularityKind]:
    """Activations are quantized per tensor: ONNX Runtime's INT8 kernels take one scale."""
    if kind is TensorKind.ACTIVATION:
        return (GranularityKind.PER_TENSOR,)
    return tuple(GranularityKind)


def format_supported(kind: TensorKind) -> Sequence[FormatKind]:
    """NF4 is a weight-only codebook format."""
    if kind is TensorKind.ACTIVATION:
        return tuple(k for k in FormatKind if k is not FormatKind.NF4)
    return tuple(FormatKind)


__all__ = [
    "AnalysisJob",
    "ApplyScope",
    "Document",
    "Summary",
    "TensorKey",
    "analyze_in_batches",
    "weighted_sqnr_db",
]
