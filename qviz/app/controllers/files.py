"""Opening and saving: models, calibration and evaluation data, statistics, sessions.

Every open that reads or computes runs as a foreground job (status bar progress, Esc cancels);
its result goes into the document on the GUI thread. A failure is reported once and leaves the
document as it was. Cancelling a recalibration keeps the statistics the document had, and the
status line says which ones are shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PySide6.QtCore import QObject, Signal

from qviz.app.controllers.jobs import JobController, JobKind
from qviz.app.controllers.workers import call_as_job
from qviz.app.dialogs.error_dialog import ErrorReporter
from qviz.app.recent_files import RecentFiles
from qviz.core.data.split import Holdout
from qviz.core.demo import demo_paths
from qviz.core.document.document import Document
from qviz.core.document.jobs import calibrate, load_stats_and_model
from qviz.core.document.session import adopt_session, to_session
from qviz.core.errors import QvizError
from qviz.core.files.inputs import model_files
from qviz.core.files.outputs import check_output
from qviz.core.files.session_file import (
    PathKind,
    SessionFile,
    classify_path,
    load_session,
    save_session,
)
from qviz.core.model.loading import LoadedModel, load_model
from qviz.core.stats.collect import CalibrationStats
from qviz.core.stats.stats_file import save_stats


class FileController(QObject):
    """File ▸ Open…/Save… for one document."""

    modelLoaded = Signal()
    calibrated = Signal()  # statistics in place: calibrated, or read from a file
    calibrationCancelled = Signal()
    sessionSaved = Signal(Path)

    def __init__(
        self,
        doc: Document,
        jobs: JobController,
        reporter: ErrorReporter,
        recent: RecentFiles,
        batch_size: int = 32,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.doc = doc
        self.jobs = jobs
        self.reporter = reporter
        self.recent = recent
        self.batch_size = batch_size
        self.session_path: Path | None = None
        jobs.cancelled.connect(self._on_cancelled)

    @property
    def is_calibrating(self) -> bool:
        return self.jobs.kind is JobKind.CALIBRATE

    # ----------------------------------------------------------------- opening
    def open_path(self, path: str | Path) -> None:
        """Open whatever `path` is: model, data, statistics or session."""
        with self.reporter.guard(f"Opening {Path(path).name}"):
            self.open_paths([Path(path)])

    def open_paths(self, paths: Sequence[Path]) -> None:
        """Open several files at once (a drop): a model and its data or statistics together."""
        with self.reporter.guard("Opening the files"):
            kinds = {p: classify_path(p) for p in paths}
            by_kind = {k: [p for p, kk in kinds.items() if kk is k] for k in PathKind}
            if by_kind[PathKind.SESSION]:
                self.open_session(by_kind[PathKind.SESSION][0])
            elif by_kind[PathKind.MODEL]:
                data = by_kind[PathKind.DATA][0] if by_kind[PathKind.DATA] else None
                stats = by_kind[PathKind.STATS][0] if by_kind[PathKind.STATS] else None
                self.open_model(by_kind[PathKind.MODEL][0], data_path=data, stats_path=stats)
            elif by_kind[PathKind.STATS]:
                self.open_stats(by_kind[PathKind.STATS][0])
            elif by_kind[PathKind.DATA]:
                self.open_data(by_kind[PathKind.DATA][0])

    def open_demo(self) -> None:
        with self.reporter.guard("Opening the demo"):
            paths = demo_paths()
            self.open_model(paths.model, data_path=paths.data)

    def open_model(
        self,
        path: str | Path,
        *,
        data_path: str | Path | None = None,
        stats_path: str | Path | None = None,
        eval_data_path: str | Path | None = None,
        session: SessionFile | None = None,
    ) -> None:
        """Load a model in the background; then read `stats_path` or calibrate on data."""
        p = Path(path)
        data = Path(data_path) if data_path is not None else None
        stats = Path(stats_path) if stats_path is not None else None

        def done(model: LoadedModel) -> None:
            self._install_model(model, p, session)
            if eval_data_path is not None:
                self.doc.set_eval_data_path(Path(eval_data_path))
            if data is not None:
                self.doc.set_data_path(data)
            if stats is not None:
                self.open_stats(stats)
            elif self.doc.data_path is not None:
                self.open_data(self.doc.data_path)
            else:
                self.reporter.status(
                    f"Loaded {p.name}: {len(self.doc.tensors)} tensors. Open calibration data "
                    f"(Ctrl+D) to measure the activations."
                )

        self.jobs.start(JobKind.LOAD, call_as_job(lambda: load_model(p)), f"Loading {p.name}", done)

    def open_data(self, path: str | Path) -> None:
        """Calibrate the open model on this data (remembered for later if no model is open)."""
        p = Path(path)
        self.recent.add(p)
        self.doc.set_data_path(p)
        model = self.doc.model
        if model is None:
            self.reporter.status(f"{p.name} will be used for calibration once a model is open")
            return
        batch_size, holdout = self.batch_size, self.doc.evaluation_holdout
        self.jobs.start(
            JobKind.CALIBRATE,
            lambda should_stop: calibrate(model, p, batch_size, should_stop, holdout),
            f"Calibrating on {p.name}",
            lambda stats: self._install_stats(stats, None),
            failed=lambda _exc: self.calibrationCancelled.emit(),
        )

    def open_eval_data(self, path: str | Path | None) -> None:
        """Measure end to end on this data (None: on a part held out of the calibration data,
        or on the calibration data itself, as the document's hold-out says)."""
        p = None if path is None else Path(path)
        if p is not None:
            self.recent.add(p)
        held_out = self.doc.evaluation_holdout
        self.doc.set_eval_data_path(p)
        self.reporter.status(f"End-to-end numbers are now measured on {self.doc.evaluation_label}")
        if held_out != self.doc.evaluation_holdout:
            self.recalibrate()  # the samples calibration may use have changed

    def set_holdout(self, holdout: Holdout | None) -> None:
        """One data set: evaluate on one sample in N held out of it (None: on the calibration
        data itself); calibrates again when the samples calibration may use changed."""
        before = self.doc.evaluation_holdout
        if self.doc.eval_data_path is not None:
            self.doc.set_eval_data_path(None)
        self.doc.set_holdout(holdout)
        self.reporter.status(f"End-to-end numbers are now measured on {self.doc.evaluation_label}")
        if before != self.doc.evaluation_holdout:
            self.recalibrate()

    def recalibrate(self) -> None:
        if self.doc.data_path is None:
            self.reporter.status("No calibration data: open some with Ctrl+D")
            return
        self.open_data(self.doc.data_path)

    def open_stats(self, path: str | Path) -> None:
        """Read statistics (and their model, if another one is open) in the background."""
        p = Path(path)
        current = self.doc.model

        def done(value: tuple[LoadedModel | None, CalibrationStats]) -> None:
            model, stats = value
            if model is not None:
                self._install_model(model, Path(model.source), None)
            self.recent.add(p)
            self._install_stats(stats, p)

        self.jobs.start(
            JobKind.READ_STATS,
            call_as_job(lambda: load_stats_and_model(p, current)),
            f"Reading {p.name}",
            done,
        )

    def open_session(self, path: str | Path) -> None:
        p = Path(path)
        with self.reporter.guard(f"Opening {p.name}"):
            session = load_session(p)
            if session.model_path is None:
                raise QvizError(f"{p.name} names no model")
            self.recent.add(p)
            self.session_path = p
            for note in session.notes:  # what could not be read, said once
                self.reporter.status(f"{p.name}: {note}")
            self.doc.set_data_path(None)
            self.open_model(
                session.model_path,
                data_path=session.data_path,
                stats_path=session.stats_path,
                eval_data_path=session.eval_data_path,
                session=session,
            )

    # ----------------------------------------------------------------- results of jobs
    def _install_model(self, model: LoadedModel, path: Path, session: SessionFile | None) -> None:
        self.doc.set_model(model, path)
        if session is not None:
            adopt_session(self.doc, session)
        self.recent.add(path)
        self.modelLoaded.emit()

    def _install_stats(self, stats: CalibrationStats, path: Path | None) -> None:
        self.doc.set_stats(stats, path)
        where = f"{stats.n_samples} samples of {stats.data_description}"
        notes = f" Note: {'; '.join(stats.notes)}" if stats.notes else ""
        self.reporter.status(f"Statistics ready: {where}. Select a layer to explore.{notes}")
        self.calibrated.emit()

    def _on_cancelled(self, kind: JobKind) -> None:
        if kind is not JobKind.CALIBRATE:
            return
        stats = self.doc.stats
        if stats is None:
            self.reporter.status(
                "Calibration cancelled: activations are not measured. Recalibrate with F5."
            )
        else:
            self.reporter.status(
                f"Recalibration cancelled: showing the previous statistics ({stats.n_samples} "
                f"samples of {stats.data_description})."
            )
        self.calibrationCancelled.emit()

    # ----------------------------------------------------------------- saving
    def inputs(self, target: Path, *extra: Path | None, stats: bool) -> list[Path | None]:
        """The files the open session reads (a save must never replace one of them)."""
        doc = self.doc
        found: list[Path | None] = [doc.data_path, doc.eval_data_path, *extra]
        found += model_files(doc.model_path, near=[target])
        if stats:
            found.append(doc.stats_path)
        return found

    def save_session_to(self, path: str | Path) -> bool:
        p = Path(path)
        with self.reporter.guard(f"Saving {p.name}"):
            if self.doc.model is None:
                raise QvizError("nothing to save: open a model first")
            check_output(p, inputs=self.inputs(p, stats=True))  # never onto a file it refers to
            save_session(p, to_session(self.doc))
            self.session_path = p
            self.recent.add(p)
            self.doc.mark_saved()
            self.reporter.status(f"Session saved to {p}")
            self.sessionSaved.emit(p)
            return True
        return False

    def save_stats_to(self, path: str | Path) -> bool:
        p = Path(path)
        with self.reporter.guard(f"Saving {p.name}"):
            if self.doc.stats is None:
                raise QvizError("no statistics yet: calibrate first")
            check_output(p, inputs=self.inputs(p, self.session_path, stats=False))
            save_stats(self.doc.stats, p)
            self.doc.stats_saved(p)
            self.recent.add(p)
            self.reporter.status(f"Statistics saved to {p}")
            return True
        return False
