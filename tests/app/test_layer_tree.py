"""The layer table as a tree of module paths, driven as a user would: open and close groups,
filter, sort, select from the table and from elsewhere; its group numbers are the core's."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from PySide6.QtCore import QModelIndex, QPoint, Qt
from PySide6.QtTest import QTest
from pytestqt.qtbot import QtBot

from qviz.app.main_window import MainWindow
from qviz.app.views import plot_style as st
from qviz.app.views.layer_table import EXPAND_ALL_MAX, Column, LayerTable
from qviz.app.views.layer_tree_model import GROUP_ROLE
from qviz.app.views.table_cells import summary_text
from qviz.core.calibration.analysis import TensorKey
from qviz.core.document.grouping import TensorScore, summarize_group
from qviz.core.document.summary import weighted_sqnr_db
from qviz.core.model.loading import TensorKind
from tests.app.evaluation_fixtures import RUN_MS, MakeWindow, make_window  # noqa: F401
from tools import make_decoder
from tools.synthetic.spec import tiny_spec

W, A = TensorKind.WEIGHT, TensorKind.ACTIVATION
LAYERS = 8


@pytest.fixture(scope="module")
def decoder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A decoder of 8 blocks (about 120 tensors: more than open at once), built directly as
    ONNX in milliseconds, with a little calibration data."""
    path = tmp_path_factory.mktemp("decoder") / "d8.onnx"
    spec = tiny_spec(layers=LAYERS, hidden=32, heads=2, intermediate=64, vocab=64)
    make_decoder.write_decoder(spec, path, builder="onnx", calib_samples=8, eval_samples=0,
                               data_seq=16)
    return path, make_decoder.data_paths(path)[0]


@pytest.fixture
def window(qtbot: QtBot, make_window: MakeWindow, decoder: tuple[Path, Path]) -> MainWindow:  # noqa: F811
    w = make_window()
    model, data = decoder
    with qtbot.waitSignal(w.files.calibrated, timeout=RUN_MS):
        w.files.open_model(model, data_path=data)
    qtbot.waitUntil(lambda: not w.busy, timeout=RUN_MS)
    return w


def top_rows(table: LayerTable) -> list[str]:
    proxy = table.proxy
    return [str(proxy.data(proxy.index(r, 0), Qt.ItemDataRole.DisplayRole))
            for r in range(proxy.rowCount())]


def row_rect_center(table: LayerTable, path_or_key: str | TensorKey):  # type: ignore[no-untyped-def]
    model = table.model
    source = (model.group_index(path_or_key) if isinstance(path_or_key, str)
              else model.index_of(path_or_key))
    index = table.proxy.mapFromSource(source)
    table.view.scrollTo(index)
    return table.view.visualRect(index).center()


def core_summary(window: MainWindow, path: str):  # type: ignore[no-untyped-def]
    """The group's numbers computed straight from the document's results by the core."""
    doc = window.doc
    scores = {}
    for t in doc.tensors:
        r = doc.result(t.key)
        if r is not None:
            q = doc.config_for(t.key).quantize
            scores[t.key] = TensorScore(float(r.metrics.sqnr_db) if q else math.inf,
                                        doc.element_count(t.key),
                                        float(r.metrics.clipped_fraction) if q else 0.0)
    params = {t.key: doc.element_count(t.key) for t in doc.tensors if t.key.kind is W}
    group = window.table.model.tree.groups[path]
    return summarize_group(group, scores, params), scores


def test_a_decoder_opens_as_blocks_with_their_numbers(window: MainWindow) -> None:
    table = window.table
    assert table.model.leaf_count() == len(window.doc.tensors) > EXPAND_ALL_MAX
    # Closed blocks first, in graph order, then the LM head's two tensors.
    rows = top_rows(table)
    assert rows[:LAYERS] == [f"model.layers.{i} (15)" for i in range(LAYERS)]
    assert rows[LAYERS:] == ["lm_head", "lm_head"]
    assert not table.is_expanded("model.layers.3")
    assert not table.view.isColumnHidden(Column.WEIGHTED)
    # Every group's worst and weighted SQNR are the core's, over the group's tensors.
    for path in table.model.tree.groups:
        s, scores = core_summary(window, path)
        assert s.n_measured == s.n_tensors  # everything measured (weights and activations)
        assert s.worst is not None
        assert table.group_text(path, Column.SQNR) == st.fmt_num(s.worst[1])
        assert table.group_text(path, Column.WEIGHTED) == st.fmt_num(s.weighted_sqnr_db)
        keys = table.model.tree.groups[path].keys
        expected = weighted_sqnr_db((scores[k].sqnr_db, scores[k].size) for k in keys)
        assert s.weighted_sqnr_db == expected
        assert s.worst[1] == min(scores[k].sqnr_db for k in keys)
    # The model-wide summary line's worst tensor is the worst of the worst group.
    worst_key, worst_db = window.doc.summary().worst[0]
    assert min(core_summary(window, f"model.layers.{i}")[0].worst[1]  # type: ignore[index]
               for i in range(LAYERS)) <= worst_db or worst_key.name.startswith("lm_head")
    # A tensor's row names it within its group; the tooltip has its full name.
    key = TensorKey("model.layers.3.self_attn.k_proj.weight", W)
    assert table.cell_text(key, Column.LAYER) == "k_proj"
    tip = table.model.data(table.model.index_of(key, Column.LAYER), Qt.ItemDataRole.ToolTipRole)
    assert tip.startswith("model.layers.3.self_attn.k_proj\n")


def test_groups_open_and_close_by_mouse_and_keyboard(qtbot: QtBot, window: MainWindow) -> None:
    table = window.table
    view = table.view
    block = "model.layers.2"
    before = len(table.shown_rows())
    # A click on the branch arrow opens a block.
    center = row_rect_center(table, block)
    arrow = QPoint(view.indentation() // 2, center.y())
    QTest.mouseClick(view.viewport(), Qt.MouseButton.LeftButton,
                     Qt.KeyboardModifier.NoModifier, arrow)
    assert table.is_expanded(block)
    shown = table.shown_rows()
    assert shown[shown.index(block) + 1:shown.index(block) + 3] == [
        f"{block}.self_attn", f"{block}.mlp"]
    assert len(shown) == before + 2
    # Right opens the current group, Left closes it.
    attn = f"{block}.self_attn"
    QTest.mouseClick(view.viewport(), Qt.MouseButton.LeftButton,
                     Qt.KeyboardModifier.NoModifier, row_rect_center(table, attn))
    assert view.currentIndex().siblingAtColumn(0).data(GROUP_ROLE) == attn
    selection = window.doc.selection
    QTest.keyClick(view, Qt.Key.Key_Right)
    assert table.is_expanded(attn)
    assert window.doc.selection == selection  # a group row is not a tensor: nothing selected
    QTest.keyClick(view, Qt.Key.Key_Left)
    assert not table.is_expanded(attn)
    # A double click on its name closes the block again.
    center = row_rect_center(table, block)
    QTest.mouseClick(view.viewport(), Qt.MouseButton.LeftButton,
                     Qt.KeyboardModifier.NoModifier, center)
    QTest.mouseDClick(view.viewport(), Qt.MouseButton.LeftButton,
                      Qt.KeyboardModifier.NoModifier, center)
    assert not table.is_expanded(block)


def test_the_filter_keeps_matches_with_their_groups(qtbot: QtBot, window: MainWindow) -> None:
    table = window.table
    qtbot.keyClicks(table.filter_edit, "down_proj")
    keys = table.visible_keys()
    expected = [t.key for t in window.doc.tensors if "down_proj" in t.layer.name]
    assert sorted(keys) == sorted(expected) and len(keys) == 2 * LAYERS
    shown = table.shown_rows()  # every match in sight, under its block and module
    for key in expected:
        assert key in shown
    assert [r for r in shown if isinstance(r, str)][:2] == ["model.layers.0",
                                                           "model.layers.0.mlp"]
    assert "model.layers.0.self_attn" not in shown
    # A group's own path matches too, and keeps everything in it.
    table.filter_edit.setText("layers.5.self_attn")
    assert len(table.visible_keys()) == 10
    table.filter_edit.clear()
    assert len(table.visible_keys()) == len(window.doc.tensors)
    # Closed again as before filtering, but for the selected tensor's groups.
    assert not table.is_expanded("model.layers.5")
    selected = window.doc.selection
    assert selected is not None and table.current_key() == selected
    for path in table.model.tree.ancestors(selected):
        assert table.is_expanded(path)


def test_sorting_orders_groups_by_their_number_and_tensors_within(
    qtbot: QtBot, window: MainWindow
) -> None:
    table = window.table
    header = table.view.header()
    QTest.mouseClick(header.viewport(), Qt.MouseButton.LeftButton,
                     Qt.KeyboardModifier.NoModifier,
                     header.rect().topLeft() + _section_center(table, Column.SQNR))
    assert header.sortIndicatorSection() == Column.SQNR
    proxy = table.proxy
    order = header.sortIndicatorOrder()
    values = [proxy.data(proxy.index(r, Column.SQNR), 256) for r in range(proxy.rowCount())]
    assert values == sorted(values, reverse=order == Qt.SortOrder.DescendingOrder)
    # Within a block, its modules; within a module, its tensors: each level sorted.
    block = proxy.index(0, 0)
    for parent in (block, proxy.index(0, 0, block)):
        inner = [proxy.data(proxy.index(r, Column.SQNR, parent), 256)
                 for r in range(proxy.rowCount(parent))]
        assert inner == sorted(inner, reverse=order == Qt.SortOrder.DescendingOrder)
    if order == Qt.SortOrder.AscendingOrder:  # the worst tensor first, in the worst block
        first = table.visible_keys()[0]
        assert first == window.doc.summary().worst[0][0]


def _section_center(table: LayerTable, col: Column) -> QPoint:
    header = table.view.header()
    x = header.sectionViewportPosition(col) + header.sectionSize(col) // 2
    return QPoint(x, header.height() // 2)


def test_choosing_a_tensor_elsewhere_opens_its_groups(qtbot: QtBot, window: MainWindow) -> None:
    table = window.table
    key = TensorKey("model.layers.6.mlp.down_proj.weight", W)
    assert not table.is_expanded("model.layers.6")
    window.doc.select(key)  # e.g. a click on the depth plot or the sensitivity chart
    assert table.current_key() == key
    assert table.is_expanded("model.layers.6") and table.is_expanded("model.layers.6.mlp")
    assert table.view.viewport().rect().intersects(
        table.view.visualRect(table.proxy.mapFromSource(table.model.index_of(key))))
    # And from the table: a click on a tensor's row shows it in the layer view.
    other = TensorKey("model.layers.6.mlp.gate_proj.weight", W)
    QTest.mouseClick(table.view.viewport(), Qt.MouseButton.LeftButton,
                     Qt.KeyboardModifier.NoModifier, row_rect_center(table, other))
    assert window.doc.selection == other
    panel = window.layer_view.metrics_panel
    assert panel.text(W, "layer") == "model.layers.6.mlp.gate_proj"  # the full name
    # A tensor hidden by the filter is shown rather than selected out of sight.
    table.filter_edit.setText("q_proj")
    window.doc.select(key)
    assert table.filter_edit.text() == "" and table.current_key() == key


def test_a_settings_change_repaints_the_groups_above(qtbot: QtBot, window: MainWindow) -> None:
    table = window.table
    key = TensorKey("model.layers.1.self_attn.v_proj.weight", W)
    window.doc.select(key)
    before = table.group_text("model.layers.1", Column.FORMAT)
    w_fmt, a_fmt = (window.doc.config_for(TensorKey(f"model.layers.1.{n}", k)).fmt.label
                    for n, k in (("self_attn.v_proj.weight", W),
                                 ("input_layernorm.output", A)))
    assert before == (w_fmt if w_fmt == a_fmt else f"{w_fmt} / {a_fmt}")
    from qviz.core.calibration.config import TensorConfig
    from qviz.core.quant.formats import NumberFormat

    cfg = TensorConfig(fmt=NumberFormat.parse("int4"))
    with qtbot.waitSignal(window.doc.events.results, timeout=RUN_MS):
        window.controls.apply(cfg)
    qtbot.waitUntil(lambda: window.doc.result(key) is not None, timeout=RUN_MS)
    assert table.group_text("model.layers.1", Column.FORMAT) == f"mixed / {a_fmt}"
    assert table.group_text("model.layers.1.self_attn", Column.FORMAT) == f"mixed / {a_fmt}"
    assert table.group_text("model.layers.1.mlp", Column.FORMAT) == before
    s, _ = core_summary(window, "model.layers.1")
    assert table.group_text("model.layers.1", Column.WEIGHTED) == st.fmt_num(s.weighted_sqnr_db)
    assert table.cell_text(key, Column.FORMAT) == cfg.fmt.label
    # The summary line, from the scores the tree keeps, says what the document's does.
    assert table.summary_label.text() == summary_text(window.doc.summary(), window.doc)


def test_a_flat_model_stays_a_flat_list(qtbot: QtBot, make_window: MakeWindow) -> None:  # noqa: F811
    w = make_window()
    with qtbot.waitSignal(w.files.calibrated, timeout=RUN_MS):
        w.files.open_demo()
    table = w.table
    assert not table.model.tree.has_groups and not table.view.rootIsDecorated()
    assert table.view.isColumnHidden(Column.WEIGHTED)
    assert table.proxy.rowCount(QModelIndex()) == len(w.doc.tensors)
