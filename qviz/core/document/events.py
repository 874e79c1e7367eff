"""The document's events: what changed, so that each view redraws only what it draws.

Events carry no state, only which tensors changed where that matters: a listener reads the
document itself, so it can never act on a copy that is already out of date. They are emitted
on the thread that changed the document (the GUI thread in the app).
"""

from __future__ import annotations

from psygnal import Signal, SignalGroup


class DocumentEvents(SignalGroup):
    """Every change a `Document` announces."""

    #: A model was opened (every tensor, result and measurement before it is gone).
    model = Signal()
    #: Calibration statistics were set or replaced (activation results are recomputed).
    stats = Signal()
    #: Statistics of the evaluation data arrived (or were dropped).
    eval_stats = Signal()
    #: The calibration or evaluation data set changed.
    data = Signal()
    #: The configuration changed: the keys of the tensors whose settings differ.
    config = Signal(tuple)
    #: Results (or errors) arrived for these tensors, for their current settings.
    results = Signal(tuple)
    #: Another tensor was selected (or none).
    selection = Signal()
    #: Parts of the selected layer's view computed in the background arrived
    #: (`Document.accept_parts`): the layer view draws again from its caches.
    parts = Signal()
    #: A view setting changed (log-scale counts).
    view = Signal()
    #: The acceptance criteria changed.
    criteria = Signal()
    #: The end-to-end evaluation shown changed: a new one, or the old one no longer current.
    evaluation = Signal()
    #: The sensitivity report, its metric or its staleness changed.
    sensitivity = Signal()
    #: A mixed-precision answer arrived or was dropped.
    mixed = Signal()
    #: A configuration was pinned as "A" for comparison, unpinned, swapped, or its numbers
    #: arrived.
    pinned = Signal()
    #: Results of the pinned configuration arrived for these tensors.
    pinned_results = Signal(tuple)
    #: The undo history moved (a new step, an undo, a redo).
    history = Signal()
    #: Whether the document differs from its saved session changed.
    modified = Signal(bool)
