"""Computes, in the background, the parts of the layer view that a large model leaves pending.

In a large model the layer view draws a layer at once from what is cached or cheap and says
"computing…" for the rest (`qviz.core.layerdata.deferred`); it hands the pending parts here.
They are built on a pool thread, one after another; each is stored in the document as it comes
(`Document.accept_parts`), and once the run is over the document announces them
(`Document.parts_ready`): the view draws again, from its caches, and hands over whatever
that draw still lacks (the method markers wait for the method ranges).

Asking again for parts already being computed changes nothing; asking for others (another
layer was selected) supersedes the run: the parts it finished are kept, the rest is dropped.
A part whose build fails is reported once (one dialog for a run's failures) and not asked
for again (its panel says why it is missing); nor is one the run just stored (a cache that
does not keep it would have the view ask for it forever).
"""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import QObject, QThreadPool, Signal

from qviz.app.controllers.workers import BackgroundRunner
from qviz.app.dialogs.error_dialog import ErrorReporter
from qviz.core.document.document import Document
from qviz.core.errors import QvizError
from qviz.core.layerdata.deferred import ComputedPart, Pending, compute_parts


class LayerPartsController(QObject):
    """Builds pending layer-view parts on a worker thread (see the module docstring)."""

    #: A run is over (its parts are stored and announced, or it was superseded or failed).
    idle = Signal()

    def __init__(self, doc: Document, reporter: ErrorReporter, parent: QObject | None = None):
        super().__init__(parent)
        self.doc = doc
        self.reporter = reporter
        # Threads of its own: in the shared pool the parts would queue behind a live
        # evaluation or the analysis of every tensor (seconds on a large model). Two: a
        # superseded run finishes its part while the next one starts.
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(2)
        self.runner = BackgroundRunner("layer parts", self, self.pool)
        self.runner.progressed.connect(self._on_part)
        self.runner.finished.connect(self._on_finished)
        self.runner.failed.connect(lambda exc: reporter.report(exc, "Computing the layer view"))
        self.runner.busyChanged.connect(lambda busy: None if busy else self.idle.emit())
        self._asked: set[tuple] = set()    # keys of the current run's parts
        self._failed: set[tuple] = set()   # keys whose build failed: not asked for again
        self._stored: set[tuple] = set()   # keys of the current run's parts stored so far
        self._just_stored: set[tuple] = set()  # keys the last run stored
        self._errors: list[Exception] = []  # failed parts, reported when the rounds end
        # A new model or statistics: parts computed on the old ones are of no use.
        for event in (doc.events.model, doc.events.stats):
            event.connect(self.discard)

    @property
    def is_busy(self) -> bool:
        return self.runner.is_busy

    def live_threads(self) -> int:
        return self.runner.live_threads()

    def request(self, parts: Sequence[Pending]) -> None:
        """Compute `parts` (those of the layer on view) unless they are being computed."""
        wanted = [p for p in parts
                  if p.key not in self._failed and p.key not in self._just_stored]
        keys = {p.key for p in wanted}
        if not wanted or (self.runner.is_busy and keys <= self._asked):
            return
        self._asked = keys
        self._stored = set()
        if self.runner.is_busy:
            self._report_failures()  # of the run this one supersedes
        self.runner.start(
            lambda should_stop: compute_parts(wanted, should_stop),
            f"Computing {len(wanted)} parts of the layer view",
        )

    def discard(self, *_: object) -> None:
        self.runner.discard()
        self._errors = []
        self._asked = set()
        self._failed.clear()
        self._just_stored = set()

    def shutdown(self, timeout_s: float) -> bool:
        return self.runner.shutdown(timeout_s)

    def _on_part(self, item: object) -> None:
        assert isinstance(item, ComputedPart)  # what compute_parts yields
        if item.error is not None:
            self._failed.add(item.pending.key)
            error = item.error
            if not isinstance(error, QvizError):
                error = QvizError(f"{item.pending.what}: {error}")
            self._errors.append(error)
        # A failed part stores what stands for it, so that its panel says why it is missing.
        if self.doc.accept_parts([item]):
            self._stored.add(item.pending.key)

    def _report_failures(self) -> None:
        """One dialog for the failed parts of a layer's rounds (a vanished data file fails
        them all)."""
        errors, self._errors = self._errors, []
        if len(errors) == 1:
            self.reporter.report(errors[0], "Computing the layer view")
        elif errors:
            self.reporter.report(QvizError(
                f"{len(errors)} parts of the layer view could not be computed: "
                + "; ".join(str(e) for e in errors)
            ), "Computing the layer view")

    def _on_finished(self) -> None:
        self._asked = set()
        self._just_stored, self._stored = self._stored, set()
        if self._just_stored:
            self.doc.parts_ready()  # the view draws again and may ask for a next round
        if not self.runner.is_busy:  # the layer's rounds are over: one dialog for them
            self._report_failures()
