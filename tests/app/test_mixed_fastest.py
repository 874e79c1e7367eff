"""Run ▸ Mixed precision… with the "fastest" objective: the search times every layer, the
answer is confirmed by a timing against float shown in the summary, and the Pareto plot shows
predicted latency against the metric (size one click away). Offscreen, on the demo."""

from __future__ import annotations

import math

from pytestqt.qtbot import QtBot

from qviz.app.main_window import MainWindow
from qviz.app.views.pareto_view import XAxis
from qviz.core.runtime.speed_check import is_slower
from qviz.core.search.mixed import MixedResult, Objective
from qviz.core.text import KIB
from tests.app.evaluation_fixtures import demo_stats_file, evaluated_window, make_window

__all__ = ["demo_stats_file", "evaluated_window", "make_window"]  # fixtures used here
MIXED_MS = 300_000


def test_fastest_search_from_the_dialog(qtbot: QtBot, evaluated_window: MainWindow) -> None:
    window = evaluated_window
    dialog = window.open_mixed_dialog()
    assert not dialog.speed_batch_spin.isVisible()
    dialog.set_request("accuracy_drop<=1", ("int8", "float"), Objective.FASTEST, limit=256,
                       speed_batch=2, threads=1)
    assert dialog.speed_batch_spin.isVisible() and dialog.threads_spin.isVisible()
    request = dialog.request()
    assert (request.objective, request.speed_batch, request.threads) == (Objective.FASTEST, 2, 1)
    with qtbot.waitSignal(window.sensitivity.mixedFinished, timeout=MIXED_MS) as blocker:
        dialog.run_button.click()
    result = blocker.args[0]
    assert isinstance(result, MixedResult) and result.objective is Objective.FASTEST
    assert result.speed_table is not None and result.speed_table.batch_size == 2
    summary = dialog.summary_label.text()
    for batch, t in result.timings:
        assert batch == 2 and "Timed at batch 2" in summary and not is_slower(t.speedup)

    pareto = dialog.pareto
    assert pareto.axis is XAxis.LATENCY and pareto.axis_combo.isEnabled()
    xs = sorted(float(s.pos().x()) for s in pareto.points.points())
    predicted = sorted(p.latency_ms for p in result.points
                       if p.latency_ms is not None and math.isfinite(p.value))
    assert xs == predicted
    pareto.set_axis(XAxis.SIZE)
    xs = sorted(float(s.pos().x()) for s in pareto.points.points())
    assert xs == sorted(p.size_bytes / KIB for p in result.points if math.isfinite(p.value))
    # A point still applies its configuration to the document.
    pareto.click_point(result.chosen.index)
    assert window.doc.config == result.chosen.config
