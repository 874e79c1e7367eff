"""Per-layer speed in the app: Run ▸ Evaluate times every layer, and the table's speed
columns, the model panel's "Speed per layer" tab and its "Slower layers" row show that
profile; a click on a bar selects the layer. Offscreen, on the demo; waits on signals."""

from __future__ import annotations

import math

from PySide6.QtCore import Qt
from pytestqt.qtbot import QtBot

from qviz.app.main_window import MainWindow
from qviz.app.views.layer_table import Column
from qviz.app.views.table_cells import BAD_BG, speed_text
from qviz.core.calibration.analysis import TensorKey
from qviz.core.model.loading import TensorKind
from qviz.core.runtime.speed_text import fmt_ms
from tests.app.evaluation_fixtures import RUN_MS, demo_stats_file, evaluated_window, make_window

__all__ = ["demo_stats_file", "evaluated_window", "make_window"]  # fixtures used here

CONV_W = TensorKey("features.3.weight", TensorKind.WEIGHT)


def test_full_evaluation_shows_speed_per_layer(
    qtbot: QtBot, evaluated_window: MainWindow
) -> None:
    window = evaluated_window
    table, view = window.table, window.model_panel.speed_view
    for col in (Column.FLOAT_MS, Column.QUANT_MS, Column.SPEEDUP):
        assert table.view.isColumnHidden(col)  # nothing timed yet
    assert view.layer_names == [] and "Ctrl+R" in view.empty_text.toPlainText()
    with qtbot.waitSignal(window.evaluation.evaluated, timeout=RUN_MS) as blocker:
        window.commands.evaluate.trigger()
    qtbot.waitUntil(lambda: not window.jobs.is_busy, timeout=RUN_MS)
    ev = blocker.args[0].evaluation
    speed = ev.speed
    assert speed is not None and ev.latency is not None
    assert speed.batch_size == ev.latency.batch_size

    # The table: each tensor's row holds its layer's numbers.
    layer = window.doc.tensor(CONV_W).layer.name
    x = speed.layer(layer)
    assert x is not None
    for col in (Column.FLOAT_MS, Column.QUANT_MS, Column.SPEEDUP):
        assert not table.view.isColumnHidden(col)
    assert table.cell_text(CONV_W, Column.FLOAT_MS) == fmt_ms(x.float_ms)
    assert table.cell_text(CONV_W, Column.QUANT_MS) == fmt_ms(x.quantized_ms)
    assert table.cell_text(CONV_W, Column.SPEEDUP) == f"{x.speedup:.2f}×"
    model = table.model
    index = model.index_of(CONV_W, Column.SPEEDUP)
    assert index.isValid()
    tip = model.data(index, Qt.ItemDataRole.ToolTipRole)
    assert x.kernel in tip and "speed-up" in tip
    slow = {s.layer for s in ev.slow_layers}
    for t in window.doc.tensors:
        bg = model.data(model.index_of(t.key, Column.SPEEDUP), Qt.ItemDataRole.BackgroundRole)
        is_red = bg is not None and bg.color() == BAD_BG
        assert is_red == (t.layer.name in slow), t.layer.name
        assert speed_text(window.doc, t.key, Column.SPEEDUP) == table.cell_text(
            t.key, Column.SPEEDUP)

    # The panel: the slower layers in one row, the bars in the speed tab.
    panel = window.model_panel
    slower = panel.text("slower")
    assert slower == "none" if not slow else slower.startswith(f"{len(slow)}: ")
    ordered = sorted(speed.layers, key=lambda v: v.depth)
    assert view.layer_names == [v.name for v in ordered]
    assert view.heights("float") == [v.float_ms for v in ordered]
    assert view.heights("qdq") == [v.qdq_ms for v in ordered]
    totals = [k + q + lay for k, q, lay in zip(
        view.heights("kernel"), view.heights("qdq"), view.heights("layout"), strict=True)]
    assert all(math.isclose(t, v.quantized_ms) for t, v in zip(totals, ordered, strict=True))
    i = view.layer_names.index(layer)
    assert x.kernel in view.tooltip_at(i)
    for s in ev.slow_layers:
        assert s.fix in view.tooltip_at(view.layer_names.index(s.layer))
    view.select_index(0)
    assert window.doc.tensor(window.doc.selection).layer.name == ordered[0].name  # type: ignore[arg-type]
