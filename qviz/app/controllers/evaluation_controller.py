"""Keeps the model-level numbers live: a debounced re-evaluation on a subset after every change,
and the full evaluation one click away.

Nothing here draws. The controller reads the open `Document` on the GUI thread, hands the
frozen pieces (model, statistics, configuration, data path) to a core generator that runs on
a `BackgroundRunner`, and announces each result that still describes the current settings.

* Live: after calibration and after any settings change, a single-shot timer (restarted by
  each change, so a burst of edits costs one run) starts `evaluate(limit=LIVE_LIMIT,
  native=False, latency=False)`: the simulation, deterministic and quick (about 1.5 s on the
  demo). Starting a run supersedes the previous one; the runner drops what a superseded run
  would still report.
* Full: `full_job()` is the whole data set with ONNX Runtime's fused INT8 kernels, the fusion
  report and latency. The window runs it as a job (status bar progress, Esc cancels) and
  hands the value back to `accept_full`.

Every settings change bumps `generation`; a result computed for an older generation is
dropped (`dropped` says so), whichever runner it came back on.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal

from qviz.app.controllers.workers import BackgroundRunner, JobFactory, RunCancelled, ShouldStop
from qviz.core.calibration.analysis import TensorResult, analyze
from qviz.core.calibration.config import QuantConfig
from qviz.core.data.dataset import Dataset, load_data
from qviz.core.document.document import Document
from qviz.core.errors import QvizError
from qviz.core.evaluation.evaluate import Evaluation, EvaluationCancelled, evaluate
from qviz.core.model.loading import LoadedModel
from qviz.core.progress import Progress
from qviz.core.stats.collect import CalibrationStats

LIVE_LIMIT = 256
DEBOUNCE_MS = 400
BATCH_SIZE = 64


@dataclass(frozen=True)
class EvaluationOutcome:
    """One evaluation and what it was computed for."""

    evaluation: Evaluation
    results: tuple[TensorResult, ...]  # the analysed tensors the Q/DQ graph was built from
    config: QuantConfig
    full: bool
    generation: int
    elapsed_s: float
    data_name: str

    @property
    def label(self) -> str:
        """Where the numbers come from, as the panel says it: "simulation, 256 samples"."""
        n = self.evaluation.n_samples
        if self.full:
            return f"native INT8, all {n} samples"
        return f"simulation, {n} samples"


@dataclass(frozen=True)
class _JobValue:
    dataset: Dataset
    data_key: tuple[Path, str]  # (data path, model sha256) the dataset was read for
    outcome: EvaluationOutcome


@dataclass(eq=False)
class _Settings:
    """What an evaluation depends on. Model and statistics are compared by identity (a new
    load or calibration is a new object); the configuration by value."""

    model: LoadedModel
    stats: CalibrationStats
    config: QuantConfig
    data_path: Path

    def same(self, other: _Settings | None) -> bool:
        return (
            other is not None
            and self.model is other.model
            and self.stats is other.stats
            and self.config == other.config
            and self.data_path == other.data_path
        )


def evaluation_job(
    settings: _Settings,
    dataset: Dataset | None,
    *,
    full: bool,
    limit: int | None,
    batch_size: int,
    generation: int,
    should_stop: ShouldStop,
) -> Generator[Progress, None, _JobValue]:
    """Analyse every tensor for the settings and evaluate the Q/DQ model (worker thread)."""
    started = time.perf_counter()
    model = settings.model
    if dataset is None:
        yield Progress(0, 0, 0.0, None, f"reading {settings.data_path.name}")
        dataset = load_data(settings.data_path, model.inputs)
    results = analyze(model, settings.stats, settings.config)
    gen = evaluate(
        model,
        results,
        dataset,
        native=full,
        limit=None if full else limit,
        batch_size=batch_size,
        latency=full,
        should_stop=should_stop,
    )
    try:
        evaluation = yield from gen
    except EvaluationCancelled as exc:  # the runner knows its own cancellation type
        raise RunCancelled() from exc
    outcome = EvaluationOutcome(
        evaluation=evaluation,
        results=tuple(results),
        config=settings.config,
        full=full,
        generation=generation,
        elapsed_s=time.perf_counter() - started,
        data_name=settings.data_path.name,
    )
    return _JobValue(dataset, (settings.data_path, model.sha256), outcome)


class EvaluationController(QObject):
    """Schedules live evaluations and validates every result against the current settings.

    Signals (GUI thread): `invalidated()` when the settings changed (shown numbers are now
    for earlier settings), `started(full)` when a run begins, `evaluated(outcome)` with a
    result for the current settings, `unavailable(reason)` when there is nothing to evaluate
    (no statistics, no data), `problem(message)` when a live run failed with a user-level
    error (a QvizError: shown in the panel, not as a dialog, since it repeats on every
    edit), `failed(exc)` for anything else, `dropped(generation)` for a result computed for
    superseded settings.
    """

    invalidated = Signal()
    started = Signal(bool)
    evaluated = Signal(object)
    unavailable = Signal(str)
    problem = Signal(str)
    failed = Signal(object)
    dropped = Signal(int)

    def __init__(
        self,
        doc: Document,
        parent: QObject | None = None,
        *,
        live_limit: int = LIVE_LIMIT,
        debounce_ms: int = DEBOUNCE_MS,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        super().__init__(parent)
        self.doc = doc
        self.live_limit = live_limit
        self.batch_size = batch_size
        self.live_enabled = True
        self.live = BackgroundRunner("live-evaluation", self)
        self.live.succeeded.connect(self._on_live_succeeded)
        self.live.failed.connect(self._on_live_failed)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(debounce_ms)
        self._timer.timeout.connect(self.evaluate_live_now)
        self._generation = 0
        self._settings: _Settings | None = None
        self._dataset: tuple[tuple[Path, str], Dataset] | None = None
        self._closed = False
        self.current: EvaluationOutcome | None = None  # newest result for the settings
        self.last_full: EvaluationOutcome | None = None  # newest full one, maybe outdated

    # ----------------------------------------------------------------- state
    @property
    def generation(self) -> int:
        return self._generation

    @property
    def is_pending(self) -> bool:
        """A live evaluation is scheduled or running."""
        return self._timer.isActive() or self.live.is_busy

    def unavailable_reason(self) -> str | None:
        doc = self.doc
        if doc.model is None:
            return "Open a model (Ctrl+O) to evaluate it"
        if doc.stats is None:
            return "Calibrate (Ctrl+D) to evaluate the quantized model"
        if doc.data_path is None:
            return (
                "No evaluation data: the statistics came from a file. Open the data "
                "(Ctrl+D) to measure accuracy"
            )
        return None

    def _current_settings(self) -> _Settings | None:
        doc = self.doc
        if self.unavailable_reason() is not None:
            return None
        assert doc.model is not None and doc.stats is not None and doc.data_path is not None
        return _Settings(doc.model, doc.stats, doc.config, Path(doc.data_path))

    def _cached_dataset(self, settings: _Settings) -> Dataset | None:
        if self._dataset is None:
            return None
        key, dataset = self._dataset
        return dataset if key == (settings.data_path, settings.model.sha256) else None

    # ----------------------------------------------------------------- changes
    def settings_changed(self) -> None:
        """Call after anything that may change the numbers (debounced live evaluation)."""
        if self._closed:
            return
        settings = self._current_settings()
        if settings is None:
            self._invalidate(None)
            reason = self.unavailable_reason()
            assert reason is not None
            self.unavailable.emit(reason)
            return
        if settings.same(self._settings):
            return  # a redraw that changed nothing the model computes
        if self._settings is not None and settings.stats is not self._settings.stats:
            self._dataset = None  # recalibrated: the data file may have changed on disk
        self._invalidate(settings)
        if self.live_enabled:
            self._timer.start()

    def reset(self) -> None:
        """A new model: forget results and the cached data."""
        self._dataset = None
        self.last_full = None
        self._invalidate(None)
        reason = self.unavailable_reason()
        if reason is not None:
            self.unavailable.emit(reason)

    def _invalidate(self, settings: _Settings | None) -> None:
        self._generation += 1
        self._settings = settings
        self.current = None
        self._timer.stop()
        self.live.discard()
        self.invalidated.emit()

    def set_live_enabled(self, on: bool) -> None:
        self.live_enabled = on
        if not on:
            self._timer.stop()
            self.live.discard()
        elif self.current is None and self._settings is not None:
            self._timer.start()

    # ----------------------------------------------------------------- live runs
    def evaluate_live_now(self) -> int | None:
        """Start the live evaluation now (the timer calls this); returns its generation."""
        self._timer.stop()
        if self._closed:
            return None
        settings = self._settings
        if settings is None:
            settings = self._current_settings()
            if settings is None:
                return None
            self._invalidate(settings)
        make = partial(
            evaluation_job,
            settings,
            self._cached_dataset(settings),
            full=False,
            limit=self.live_limit,
            batch_size=self.batch_size,
            generation=self._generation,
        )
        self.live.start(lambda should_stop: make(should_stop=should_stop), "Live evaluation")
        self.started.emit(False)
        return self._generation

    def _on_live_succeeded(self, value: object) -> None:
        assert isinstance(value, _JobValue)
        self._accept(value)

    def _on_live_failed(self, exc: BaseException) -> None:
        if isinstance(exc, QvizError):
            self.problem.emit(str(exc).strip().splitlines()[0] if str(exc).strip() else "")
        else:
            self.failed.emit(exc)

    # ----------------------------------------------------------------- full runs
    def full_job(self) -> JobFactory:
        """The full evaluation (all samples, native INT8, fusion, latency) as a job for the
        window's runner; QvizError when there is nothing to evaluate."""
        reason = self.unavailable_reason()
        if reason is not None:
            raise QvizError(reason)
        settings = self._settings
        current = self._current_settings()
        assert current is not None
        if not current.same(settings):
            self._invalidate(current)
            settings = current
        assert settings is not None
        make = partial(
            evaluation_job,
            settings,
            self._cached_dataset(settings),
            full=True,
            limit=None,
            batch_size=self.batch_size,
            generation=self._generation,
        )
        self.started.emit(True)
        return lambda should_stop: make(should_stop=should_stop)

    def accept_full(self, value: Any) -> EvaluationOutcome | None:
        """The full job's value; returns the outcome, or None when it was dropped."""
        assert isinstance(value, _JobValue)
        return self._accept(value)

    # ----------------------------------------------------------------- results
    def _accept(self, value: _JobValue) -> EvaluationOutcome | None:
        outcome = value.outcome
        self._dataset = (value.data_key, value.dataset)
        if outcome.full:
            self.last_full = outcome
        if outcome.generation != self._generation:
            self.dropped.emit(outcome.generation)
            return None
        if not outcome.full and self.current is not None and self.current.full:
            return None  # the full evaluation of the same settings says more
        self.current = outcome
        self.evaluated.emit(outcome)
        return outcome

    # ----------------------------------------------------------------- closing
    def shutdown(self, timeout_s: float = 5.0) -> bool:
        """Stop the timer and any live run; wait until its thread is left."""
        self._closed = True
        self._timer.stop()
        return self.live.shutdown(timeout_s)
