"""The document: everything an open session is, as one evented, Qt-free model.

It holds the model, the calibration and evaluation data, the statistics, the configuration
(undoable, one snapshot per user action), the selection, the per-tensor results, the latest
end-to-end evaluation and fusion report, the acceptance criteria, the sensitivity report and
the mixed-precision answer, and caches of what is derived from them. Controls write to it
through its methods; views subscribe to `events` and read it; long jobs take frozen inputs
from it (`measure_inputs`) and hand their results back through `accept_*`, which drop anything
computed for an older `revision`.

Only one thread changes it (the app's GUI thread); events are emitted on that thread.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np

from qviz.core.calibration.analysis import QuantTensor, TensorKey, TensorResult
from qviz.core.calibration.config import QuantConfig, TensorConfig
from qviz.core.calibration.methods import Method, MethodSpec
from qviz.core.calibration.representative import Representativeness
from qviz.core.data.split import Holdout
from qviz.core.document.compare import Pinned, PinnedComparison
from qviz.core.document.events import DocumentEvents
from qviz.core.document.history import History, HistoryEntry
from qviz.core.document.jobs import (
    AnalysisJob,
    AnalysisOutcome,
    EvaluationOutcome,
    MeasureInputs,
    MixedOutcome,
)
from qviz.core.document.layer_parts import LayerParts
from qviz.core.document.markers import MethodRanges
from qviz.core.document.measures import MeasurementState
from qviz.core.document.represent import EvaluationStats
from qviz.core.document.results import ResultStore
from qviz.core.document.summary import Summary, summarize
from qviz.core.document.tensors import ApplyScope, TensorIndex
from qviz.core.document.transformed import TransformedViews
from qviz.core.errors import QvizError
from qviz.core.evaluation.criteria import Criterion
from qviz.core.imported.configs import imported_config
from qviz.core.layerdata.layer import LayerPlots
from qviz.core.model.loading import LoadedModel, TensorKind
from qviz.core.quant.formats import PerTensor
from qviz.core.runtime.defaults import recommended_defaults
from qviz.core.stats.collect import CalibrationStats

ConfigHistory = History[QuantConfig, TensorKey]


class Document(TransformedViews, PinnedComparison, LayerParts):
    """An open session (see the module docstring). Attributes are read-only from outside:
    change them through the methods, which announce the change on `events`."""

    def __init__(self) -> None:
        self.events = DocumentEvents()
        self.forget_transformed()  # transforms' caches (TransformedViews)
        self.model: LoadedModel | None = None
        self.model_path: Path | None = None
        self.data_path: Path | None = None          # calibration data
        self.eval_data_path: Path | None = None     # evaluation data (None: the calibration data)
        #: With one data set, the part of it kept apart for evaluation (None: evaluate on the
        #: calibration data, a choice the user makes explicitly).
        self.holdout: Holdout | None = Holdout()
        self.stats_path: Path | None = None
        self.stats: CalibrationStats | None = None
        self.selection: TensorKey | None = None
        self.log_counts = False
        #: Bumped by everything that changes what the model computes when quantized.
        self.revision = 0
        self.history: ConfigHistory = History(QuantConfig())
        self.measures = MeasurementState(self.events)
        self.eval_stats = EvaluationStats(self.events)
        self.modified = False
        #: Why this machine's defaults differ from the usual ones (None: they don't).
        self.defaults_note: str | None = None
        self._index = TensorIndex(None)
        self._results = ResultStore()
        self._plots = LayerPlots()
        self._stats_failed = set()
        self._markers = MethodRanges()
        self.pinned: Pinned | None = None
        #: Bumped when the model, statistics or evaluation data change (not the settings):
        #: what a pinned configuration's own numbers depend on.
        self.data_revision = 0

    # ================================================================= reading
    @property
    def config(self) -> QuantConfig:
        return self.history.current.state

    @property
    def tensors(self) -> tuple[QuantTensor, ...]:
        return self._index.tensors

    @property
    def index(self) -> TensorIndex:
        return self._index

    def tensor(self, key: TensorKey) -> QuantTensor:
        return self._index.tensor(key)

    def has(self, key: object) -> bool:
        return key in self._index

    def find(self, name: str, kind: TensorKind | None = None) -> TensorKey | None:
        return self._index.find(name, kind)

    def config_for(self, key: TensorKey) -> TensorConfig:
        return self.config.for_tensor(key.name, key.kind)

    def can_analyze(self, key: TensorKey) -> bool:
        """Weights need only the model; activations need statistics."""
        if key.kind is TensorKind.WEIGHT:
            return self.model is not None
        return self.stats is not None and key.name in self.stats.tensors

    def result(self, key: TensorKey) -> TensorResult | None:
        return self._results.result(key)

    def error(self, key: TensorKey) -> str | None:
        return self._results.error(key)

    def shape(self, key: TensorKey) -> tuple[int | None, ...] | None:
        return self._index.shape(key)

    def element_count(self, key: TensorKey) -> float:
        return self._index.element_count(key, self.stats)

    def visible_keys(self) -> list[TensorKey]:
        """The selected layer's weight and activation: what the layer view shows."""
        key = self.selection
        if key is None or key not in self._index:
            return []
        return self._index.layer_keys(key)

    @property
    def evaluation_path(self) -> Path | None:
        """The data end-to-end numbers are measured on."""
        return self.eval_data_path or self.data_path

    @property
    def evaluation_holdout(self) -> Holdout | None:
        """The part of the calibration data held out for evaluation (None: a separate
        evaluation set, or the user chose to evaluate on the calibration data)."""
        return self.holdout if self.eval_data_path is None else None

    @property
    def evaluation_label(self) -> str:
        """What end-to-end numbers are measured on, as every result says it."""
        if self.eval_data_path is not None:
            return self.eval_data_path.name
        if self.data_path is None:
            return ""
        if self.holdout is None:
            return f"{self.data_path.name} (the calibration data)"
        return f"the held-out 1 in {self.holdout.every} of {self.data_path.name}"

    def set_holdout(self, holdout: Holdout | None) -> None:
        """Hold out one sample in N of the calibration data for evaluation (None: evaluate on
        the calibration data, chosen explicitly). Calibration should run again: the samples it
        may use have changed."""
        if holdout != self.holdout:
            self.holdout = holdout
            self._data_changed()

    # ================================================================= opening
    def set_model(self, model: LoadedModel, path: Path | None = None) -> None:
        """A new model: its statistics, results and measurements start empty; the settings
        are kept (they are per tensor name) and the history starts again from them."""
        # Settings of an imported model are its pairs': they mean nothing to another model.
        leaving_import = self.model is not None and self.model.imported is not None
        self.model = model
        self.model_path = Path(path) if path is not None else Path(model.source)
        self.stats = None
        self.stats_path = None
        self._index = TensorIndex(model)
        self._results.clear()
        self._results.set_limit(len(self._index))
        self._plots.clear()
        self._stats_failed.clear()
        self._markers.clear()
        self.forget_transformed()
        if model.imported is not None:
            # A quantized model opens with its own quantization.
            self.history.reset(imported_config(model))
            self.defaults_note = None
        elif self._untouched or leaving_import:
            # No choice of the user's yet: start from what holds on this machine.
            defaults = recommended_defaults()
            self.history.reset(defaults.config)
            self.defaults_note = defaults.note
        else:
            self.history.reset(self.config)
        if self.selection not in self._index:
            self.selection = self._index.tensors[0].key if self._index.tensors else None
        self.revision += 1
        self.data_revision += 1
        self.pinned = None  # its settings may name tensors this model does not have
        self.measures.model_changed(model.sha256, self.revision)
        self.eval_stats.set(None)
        self._set_modified(False)
        self.events.model.emit()
        self.events.history.emit()
        self.events.selection.emit()

    def set_stats(self, stats: CalibrationStats, path: Path | None = None) -> None:
        """Statistics for the current model (QvizError if they belong to another model)."""
        if self.model is None:
            raise QvizError("open a model before its statistics")
        from qviz.core.calibration.analysis import check_stats_match

        check_stats_match(self.model, stats)
        self.stats = stats
        self.stats_path = path
        self._markers.clear()
        self.forget_transformed()
        # With transforms, weights depend on the statistics too (scales, GPTQ, bias).
        self._results.clear(None if self.uses_transforms() else TensorKind.ACTIVATION)
        self.revision += 1
        self.data_revision += 1
        self.measures.invalidate(self.revision)
        self.events.stats.emit()
        self._pinned_measures_changed()

    def set_eval_stats(self, stats: CalibrationStats) -> None:
        """Statistics of the evaluation data (same model), to judge the calibration data."""
        if self.model is None or stats.model_sha256 != self.model.sha256:
            raise QvizError("the evaluation statistics were collected on another model")
        self.eval_stats.set(stats)

    def representativeness(
        self, key: TensorKey, *, eval_alone: bool = False
    ) -> Representativeness | None:
        """How the evaluation data falls against `key`'s range (`eval_alone`: with the range
        the evaluation data alone would choose, a second search — for the tensor on view)."""
        return self.eval_stats.compare(
            key, self.config_for(key), self.stats, self.result(key), eval_alone=eval_alone
        )

    def convergence(self, key: TensorKey) -> list[tuple[int, float, float]]:
        return self.eval_stats.convergence(key, self.config_for(key), self.stats) or []

    def stats_saved(self, path: Path) -> None:
        """The statistics were written to `path` (a session saved now refers to it)."""
        self.stats_path = Path(path)
        self._set_modified(True)

    def set_data_path(self, path: Path | None) -> None:
        """The calibration data (calibrating on it is the app's job)."""
        self.data_path = None if path is None else Path(path)
        self._data_changed()

    def set_eval_data_path(self, path: Path | None) -> None:
        """The evaluation data; None measures on the calibration data."""
        self.eval_data_path = None if path is None else Path(path)
        self._data_changed()

    def _data_changed(self) -> None:
        self.eval_stats.set(None)  # of data no longer the evaluation data
        self.revision += 1
        self.data_revision += 1
        self.measures.invalidate(self.revision)
        self._set_modified(True)
        self.events.data.emit()
        self._pinned_measures_changed()

    # ================================================================= selection and view
    def select(self, key: TensorKey | tuple[str, TensorKind] | None) -> None:
        if key is not None:
            key = TensorKey(*key)  # a plain (name, kind) pair is accepted
        if key is not None and key not in self._index:
            raise QvizError(f"no tensor {key.name!r} ({key.kind.value}) in this model")
        if key != self.selection:
            self.selection = key
            self.events.selection.emit()

    def set_log_counts(self, on: bool) -> None:
        if on != self.log_counts:
            self.log_counts = on
            self.events.view.emit()

    def set_criteria_text(self, text: str | None) -> tuple[Criterion, ...]:
        """The acceptance criteria typed by the user (None: the defaults); QvizError names the
        first that does not read, and the criteria in force stay as they were."""
        criteria = self.measures.set_criteria_text(text)
        self._set_modified(True)
        return criteria

    # ================================================================= settings (undoable)
    def apply(self, key: TensorKey, cfg: TensorConfig, scope: ApplyScope) -> list[TensorKey]:
        """Set `cfg` on `key`, its op type, or every tensor of its kind (one undo step);
        returns the changed keys.

        "All" changes the default for the kind and drops that kind's overrides, so tensors
        added to the default later follow it; the other scopes write overrides.
        """
        affected = self._index.scope_keys(key, scope)
        if scope is ApplyScope.ALL:
            config = self.config.with_default(key.kind, cfg)
            for k in affected:
                if k.name in config.overrides:
                    config = config.without_override(k.name)
        else:
            config = self.config
            for k in affected:
                config = config.with_override(k.name, cfg)
        where = {
            ApplyScope.TENSOR: key.name,
            ApplyScope.OP_TYPE: f"every {self._index.tensor(key).layer.op_type} {key.kind.value}",
            ApplyScope.ALL: f"every {key.kind.value}",
        }[scope]
        return self.set_config(config, f"{cfg.label} → {where}", focus=key)

    def set_manual_range(self, key: TensorKey, lo: float, hi: float) -> list[TensorKey]:
        """A clip range dragged or typed: the tensor switches to Manual (one undo step).

        One dragged band is one range, so a per-channel or per-group weight becomes
        per-tensor: that is what the drag previewed, and the numbers must not jump on release.
        """
        if not (math.isfinite(lo) and math.isfinite(hi)) or not hi > lo:
            raise QvizError(f"the clip range must have low < high, got [{lo:.4g}, {hi:.4g}]")
        cfg = self.config_for(key)
        new = replace(cfg, spec=MethodSpec(Method.MANUAL, manual_range=(float(lo), float(hi))))
        if key.kind is TensorKind.WEIGHT and not isinstance(cfg.granularity, PerTensor):
            new = replace(new, granularity=PerTensor())
        config = self.config.with_override(key.name, new)
        return self.set_config(config, f"clip range [{lo:.4g}, {hi:.4g}] → {key.name}", focus=key)

    def set_config(
        self, config: QuantConfig, label: str = "Configuration", focus: TensorKey | None = None
    ) -> list[TensorKey]:
        """Replace the whole configuration as one undo step; returns the changed tensors."""
        if config == self.config:
            return []
        self.check_transforms(config)  # one line when its transforms cannot be made here
        self.defaults_note = None  # the user's choices from now on
        before = self.config
        self.history.record(label, config, focus)
        changed = self._config_changed(before)
        self.events.history.emit()
        return changed

    def undo(self) -> HistoryEntry[QuantConfig, TensorKey] | None:
        """Go back one action; returns the action undone (None when there is none)."""
        before = self.config
        step = self.history.undo()
        if step is None:
            return None
        undone, _ = step
        self._after_jump(before, undone.focus)
        return undone

    def redo(self) -> HistoryEntry[QuantConfig, TensorKey] | None:
        before = self.config
        entry = self.history.redo()
        if entry is None:
            return None
        self._after_jump(before, entry.focus)
        return entry

    def goto_history(self, index: int) -> None:
        """Jump to any step of the history (the history view)."""
        before = self.config
        entry = self.history.goto(index)
        self._after_jump(before, entry.focus)

    def _after_jump(self, before: QuantConfig, focus: TensorKey | None) -> None:
        if focus is not None and focus in self._index:
            self.select(focus)  # show what the step was about
        self._config_changed(before)
        self.events.history.emit()

    def _config_changed(self, before: QuantConfig) -> list[TensorKey]:
        config = self.config
        changed = [
            k for k in self._index
            if before.for_tensor(k.name, k.kind) != config.for_tensor(k.name, k.kind)
        ]
        rescaled = self.context_changes(before, config)  # transforms touching other tensors
        if rescaled:
            self._markers.clear()
            changed = list(dict.fromkeys([*changed, *rescaled]))
        if not changed:
            return []
        for k in changed:
            # Drops the tensor's result, or restores the one measured for these settings
            # before (an undo); listeners of `config` read whichever it is.
            self._results.settings_changed(k, self.config_for(k), self.context_of(k))
        self.revision += 1
        self.measures.invalidate(self.revision)
        self._set_modified(True)
        self.events.config.emit(tuple(changed))
        self.measures.check_sensitivity(self._quantized_results())
        return changed

    # ================================================================= results
    def analyze(self, key: TensorKey) -> TensorResult | None:
        """The tensor's result, measured now if missing (milliseconds, from stored
        statistics); None when it cannot be measured (no statistics) or failed — a QvizError
        (e.g. a format the tensor cannot take) is kept as its error text."""
        result = self._results.result(key)
        if result is not None or self.model is None or not self.can_analyze(key):
            return result
        if self._results.error(key) is not None:
            return None
        try:
            result = self.analyze_with(key, self.config_for(key))
        except QvizError as exc:
            self._results.put_error(key, str(exc))
            return None
        self._results.put(key, result)
        return result

    def analyze_jobs(self) -> list[AnalysisJob]:
        """Jobs for every tensor without a result (or error) that can be measured now."""
        return [
            self.analysis_job(t, self.config_for(t.key))
            for t in self._index.tensors
            if not self._results.has_outcome(t.key) and self.can_analyze(t.key)
        ]

    def accept_results(self, outcomes: Iterable[AnalysisOutcome]) -> tuple[TensorKey, ...]:
        """Results computed on a worker thread; those for settings no longer in force are
        dropped (their tensors' own new jobs will deliver). Announces what was kept."""
        kept = []
        for key, outcome in outcomes:
            if key not in self._index:
                continue
            if isinstance(outcome, QvizError):
                self._results.put_error(key, str(outcome))
            elif outcome.config == self.config_for(key) and outcome.context == self.context_of(key):
                self._results.put(key, outcome)
            else:
                continue
            kept.append(key)
        if kept:
            self.events.results.emit(tuple(kept))
            self.measures.check_sensitivity(self._quantized_results())
        return tuple(kept)

    def _quantized_results(self) -> list[TensorResult] | None:
        """Every quantized tensor's result, or None while one is not measured yet."""
        out = []
        for t in self._index.tensors:
            if not self.config_for(t.key).quantize:
                continue
            r = self._results.result(t.key)
            if r is None:
                return None
            out.append(r)
        return out

    # ================================================================= derived views
    def weight_values(self, name: str) -> np.ndarray:
        return self._index.weight_values(name)

    @property
    def plots(self) -> LayerPlots:
        return self._plots

    def summary(self, n_worst: int = 3) -> Summary:
        scored = []
        for t in self._index.tensors:
            result = self._results.result(t.key)
            if result is None:
                continue
            # A tensor kept float (a mixed-precision choice) adds no quantization noise.
            quantized = self.config_for(t.key).quantize
            sqnr = float(result.metrics.sqnr_db) if quantized else math.inf
            scored.append((t.key, sqnr, self.element_count(t.key)))
        summary = summarize(self._index, scored, n_worst)
        return replace(summary, unrepresentative=self.unrepresentative())

    def unrepresentative(self) -> tuple[TensorKey, ...] | None:
        """Activations whose evaluation data clips more than sampling explains (None: no
        statistics of the evaluation data yet)."""
        if self.eval_stats.stats is None:
            return None
        return tuple(
            t.key for t in self._index.tensors
            if (r := self.representativeness(t.key)) is not None and r.flagged
        )

    # ================================================================= measurements
    def measure_inputs(self, what: str, config: QuantConfig | None = None) -> MeasureInputs:
        """Frozen inputs for an end-to-end measurement of `config` (default: the current
        one), or a QvizError saying what is missing."""
        if self.model is None:
            raise QvizError(f"{what} needs a model: open one first (Ctrl+O)")
        if self.stats is None:
            raise QvizError(
                f"{what} needs calibration statistics: open calibration data (Ctrl+D) first"
            )
        path = self.evaluation_path
        if path is None:
            raise QvizError(
                f"{what} runs the model on data, and none is open: open the data (Ctrl+D)"
            )
        holdout = self.evaluation_holdout
        current = config is None or config == self.config
        return MeasureInputs(
            self.model, self.stats, self.config if config is None else config, path,
            self.revision, self._results.known() if current else {}, holdout,
            self.evaluation_label,
        )

    def accept_evaluation(self, outcome: EvaluationOutcome) -> bool:
        """An evaluation finished; False when it was for earlier settings (dropped)."""
        kept = self.measures.accept_evaluation(outcome, self.revision)
        if kept and self.pinned is not None and self.pinned.like(outcome) is None:
            self.accept_pinned_evaluation(outcome, self.data_revision)  # A's, if it is A
        return kept

    def accept_sensitivity(self, report: object) -> bool:
        """A sensitivity report finished; False when it was measured on another model."""
        ok = self.measures.accept_sensitivity(report, self.model)
        if ok:
            self.measures.check_sensitivity(self._quantized_results())
            self._set_modified(True)
        return ok

    def accept_mixed(self, outcome: MixedOutcome) -> bool:
        return self.measures.accept_mixed(outcome, self.model)

    # ================================================================= saved state
    @property
    def _untouched(self) -> bool:
        """Nothing chosen yet: the history holds only its start, at the defaults."""
        return len(self.history.entries) == 1 and self.config == QuantConfig()

    def reset_history(self, config: QuantConfig) -> None:
        """Start the undo history again at `config` (a session just opened)."""
        self.defaults_note = None
        before = self.config
        self.history.reset(config)
        self._config_changed(before)
        self.events.history.emit()

    def mark_saved(self) -> None:
        """The document was written down: nothing differs from the file any more."""
        self._set_modified(False)

    def _set_modified(self, modified: bool) -> None:
        if modified != self.modified:
            self.modified = modified
            self.events.modified.emit(modified)

