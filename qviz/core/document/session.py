"""The document written down as a session file, and a session file taken back into it."""

from __future__ import annotations

from qviz.core.data.split import Holdout
from qviz.core.document.document import Document
from qviz.core.errors import QvizError
from qviz.core.files.session_file import SessionFile


def to_session(doc: Document) -> SessionFile:
    """Everything the session file holds comes from the document."""
    key = doc.selection
    return SessionFile(
        model_path=doc.model_path,
        data_path=doc.data_path,
        eval_data_path=doc.eval_data_path,
        stats_path=doc.stats_path,
        model_sha256=None if doc.model is None else doc.model.sha256,
        config=doc.config,
        selection=None if key is None else (key.name, key.kind),
        log_counts=doc.log_counts,
        criteria=doc.measures.criteria_text,
        sensitivity=doc.measures.sensitivity,
        holdout_every=None if doc.holdout is None else doc.holdout.every,
    )


def adopt_session(doc: Document, session: SessionFile) -> None:
    """Take a loaded session's choices into `doc` (the caller opens its files); the undo
    history starts at them."""
    doc.reset_history(session.config)
    doc.set_holdout(None if session.holdout_every is None else Holdout(session.holdout_every))
    doc.set_log_counts(session.log_counts)
    if session.selection is not None:
        key = doc.find(*session.selection)
        if key is not None:
            doc.select(key)
    if session.criteria is not None:
        try:
            doc.measures.set_criteria_text(session.criteria)
        except QvizError:
            pass  # a hand-edited session: the defaults stand, as for a new session
    report = session.sensitivity
    if report is not None and doc.model is not None:
        doc.accept_sensitivity(report)
    doc.mark_saved()
