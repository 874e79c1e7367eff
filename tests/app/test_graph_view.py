"""The graph view in the window, driven by real clicks: a click on a node selects its layer
everywhere, a selection in the table highlights the node, double-clicks open and close
groups, the search box finds nodes, the measure picker recolours; on the demo and on a
1,500-node transformer stack. Offscreen, no sleeps."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from PySide6.QtCore import QPoint, QSettings, Qt, QThreadPool
from pytestqt.qtbot import QtBot

from qviz.app.main_window import MainWindow
from qviz.app.views.graph_view import GraphView
from qviz.app.views.layer_table import Column
from qviz.core.calibration.analysis import TensorKey
from qviz.core.data.dataset import load_data
from qviz.core.demo import demo_paths
from qviz.core.graphview.measures import CLIPPED_SCALE, SQNR_SCALE, NodeMeasure
from qviz.core.model.loading import TensorKind, load_model
from qviz.core.runtime.cpu import u8s8_may_saturate
from qviz.core.runtime.defaults import SAFE_WEIGHT_BITS
from qviz.core.stats.collect import collect_stats, run_to_completion
from qviz.core.stats.stats_file import save_stats
from tools.make_decoder import decoder_spec, write_decoder

W, A = TensorKind.WEIGHT, TensorKind.ACTIVATION
RUN_MS = 60_000


@pytest.fixture(scope="module")
def demo_stats_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    demo = demo_paths()
    model = load_model(demo.model)
    stats = run_to_completion(collect_stats(model, load_data(demo.data, model.inputs)))
    path = tmp_path_factory.mktemp("stats") / "demo.qvstats"
    save_stats(stats, path)
    return path


@pytest.fixture
def window(qtbot: QtBot, tmp_path: Path) -> Iterator[MainWindow]:
    settings = QSettings(str(tmp_path / "qviz.ini"), QSettings.Format.IniFormat)
    w = MainWindow(settings, batch_size=256)
    qtbot.addWidget(w)
    w.resize(1600, 1000)
    w.show()
    w.commands.live_evaluation.trigger()  # off: these tests are about the graph
    yield w
    w.close()
    assert w.jobs.live_threads() == 0
    assert QThreadPool.globalInstance().waitForDone(10_000)


def show_graph(qtbot: QtBot, window: MainWindow) -> GraphView:
    """View ▸ Graph, as the user does, floated big enough to click in."""
    toggle = window.graph_dock.toggleViewAction()
    view_menu = next(m for m in window.menuBar().findChildren(type(window.commands.recent_menu))
                     if m.title() == "&View")
    assert toggle in view_menu.actions()
    toggle.trigger()
    window.graph_dock.setFloating(True)
    window.graph_dock.resize(600, 900)
    view = window.graph_dock.view
    qtbot.waitUntil(lambda: view.layout_shown is not None and view.readings is not None,
                    timeout=RUN_MS)
    return view


@pytest.fixture
def demo(qtbot: QtBot, window: MainWindow, demo_stats_file: Path) -> GraphView:
    with qtbot.waitSignal(window.files.calibrated, timeout=RUN_MS):
        window.files.open_stats(demo_stats_file)
    qtbot.waitUntil(lambda: not window.busy, timeout=RUN_MS)
    return show_graph(qtbot, window)


def item_point(view: GraphView, item_id: str) -> QPoint:
    """Where an item is on the canvas's viewport (scrolled into view first)."""
    if item_id in view.nodes:
        item = view.nodes[item_id]
        view.canvas.ensureVisible(item, 10, 10)
        return view.canvas.mapFromScene(item.sceneBoundingRect().center())
    frame = view.frames[item_id]
    view.canvas.ensureVisible(frame, 10, 10)
    r = frame.rect()
    return view.canvas.mapFromScene(r.left() + 30.0, r.top() + 6.0)  # on its label


def node_of(view: GraphView, layer: str) -> str:
    assert view.model_graph is not None
    nid = view.model_graph.layer_node(layer)
    assert nid is not None
    return nid


def test_clicking_a_node_selects_its_layer_everywhere(
    qtbot: QtBot, window: MainWindow, demo: GraphView
) -> None:
    doc = window.doc
    nid = node_of(demo, "classifier.0")
    assert doc.selection != TensorKey("classifier.0.weight", W)
    with qtbot.waitSignal(window.table.view.selectionModel().currentRowChanged, timeout=5000):
        qtbot.mouseClick(demo.canvas.viewport(), Qt.MouseButton.LeftButton,
                         pos=item_point(demo, nid))
    assert doc.selection == TensorKey("classifier.0.weight", W)
    assert window.table.current_key() == doc.selection
    assert demo.nodes[nid].selected
    assert sum(n.selected for n in demo.nodes.values()) == 1
    # A float node (a Relu) selects the activation it produces: the next layer's input.
    relu = "n:3"
    assert demo.model_graph is not None and demo.model_graph.graph.node(relu).op_type == "Relu"
    qtbot.mouseClick(demo.canvas.viewport(), Qt.MouseButton.LeftButton,
                     pos=item_point(demo, relu))
    assert doc.selection == TensorKey("relu_1", A)
    assert window.table.current_key() == TensorKey("relu_1", A)
    assert demo.nodes[node_of(demo, "features.6")].selected  # the layer reading it


def test_selecting_in_the_table_highlights_the_node(
    qtbot: QtBot, window: MainWindow, demo: GraphView
) -> None:
    table = window.table
    key = TensorKey("features.9.weight", W)
    row = table.visible_keys().index(key)
    rect = table.view.visualRect(table.proxy.index(row, Column.LAYER))
    qtbot.mouseClick(table.view.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert window.doc.selection == key
    nid = node_of(demo, "features.9")
    assert demo.nodes[nid].selected
    assert [i for i, n in demo.nodes.items() if n.selected] == [nid]


def test_double_clicks_close_and_open_a_group(qtbot: QtBot, demo: GraphView) -> None:
    assert "g:features" in demo.frames  # the demo opens whole
    conv = node_of(demo, "features.3")
    kept = demo.nodes[node_of(demo, "classifier.0")]
    qtbot.mouseDClick(demo.canvas.viewport(), Qt.MouseButton.LeftButton,
                      pos=item_point(demo, "g:features"))
    assert "g:features" in demo.nodes and "g:features" not in demo.frames
    assert conv not in demo.nodes
    assert demo.nodes["g:features"].title == "features"
    assert demo.nodes[node_of(demo, "classifier.0")] is kept  # items are reused, not remade
    # The collapsed group shows the worst SQNR of its layers.
    reading = demo.reading("g:features")
    assert reading is not None and reading.colour == SQNR_SCALE.colour(reading.value or 0.0)
    assert demo.nodes["g:features"].style.fill == reading.colour
    qtbot.mouseDClick(demo.canvas.viewport(), Qt.MouseButton.LeftButton,
                      pos=item_point(demo, "g:features"))
    assert conv in demo.nodes and "g:features" in demo.frames


def test_search_marks_matches_and_enter_goes_to_each(qtbot: QtBot, demo: GraphView) -> None:
    demo.search_edit.setFocus()
    qtbot.keyClicks(demo.search_edit, "gemm")
    gemms = {node_of(demo, "classifier.0"), node_of(demo, "classifier.2")}
    assert set(demo.matches) == gemms
    assert {i for i, n in demo.nodes.items() if n.search_hit} == gemms
    assert demo.match_label.text() == "2 matches"
    qtbot.keyClick(demo.search_edit, Qt.Key.Key_Return)
    assert demo.match_label.text() == "1 of 2"
    qtbot.keyClick(demo.search_edit, Qt.Key.Key_Return)
    assert demo.match_label.text() == "2 of 2"
    shown = demo.canvas.mapToScene(demo.canvas.viewport().rect()).boundingRect()
    assert shown.contains(demo.nodes[node_of(demo, "classifier.2")].sceneBoundingRect())
    demo.search_edit.clear()
    assert not any(n.search_hit for n in demo.nodes.values())


def test_measures_recolour_in_place_and_follow_the_settings(
    qtbot: QtBot, window: MainWindow, demo: GraphView
) -> None:
    doc = window.doc
    nid = node_of(demo, "features.3")
    item = demo.nodes[nid]
    sqnr = demo.reading(nid)
    assert sqnr is not None and item.style.fill == SQNR_SCALE.colour(sqnr.value or 0.0)
    # The default weights follow qviz's CPU detection: int7 where int8 kernels saturate.
    badge = f"int{SAFE_WEIGHT_BITS}" if u8s8_may_saturate() else "int8"
    assert item.style.value_text == sqnr.text and item.style.weight_badge == badge
    assert "Local SQNR" in demo.legend_label.text()
    demo.measure_combo.setCurrentIndex(demo.measure_combo.findData(NodeMeasure.CLIPPED))
    clipped = demo.reading(nid)
    assert clipped is not None and clipped.value is not None and clipped.value > 0
    assert demo.nodes[nid] is item and item.style.fill == CLIPPED_SCALE.colour(clipped.value)
    assert "Clipped" in demo.legend_label.text()
    # Sensitivity before any report: no colours, and the legend says how to get them.
    demo.set_measure(NodeMeasure.DROP)
    assert item.style.fill is None and "Sensitivity" in demo.legend_label.text()
    demo.set_measure(NodeMeasure.SQNR)
    # Keep the layer float: its node turns grey, its badge and Q/DQ edge go.
    layer = next(t.layer for t in doc.tensors if t.layer.name == "features.3")
    config = doc.config
    for name in (layer.weight, *layer.activations):
        assert name is not None
        kind = W if name == layer.weight else A
        config = config.with_override(name, replace(doc.config_for(TensorKey(name, kind)),
                                                    quantize=False))
    doc.set_config(config, "features.3 float")
    qtbot.waitUntil(lambda: not item.style.quantized, timeout=5000)
    assert demo.nodes[nid] is item
    assert item.style.fill is None and item.style.weight_badge == ""
    into = [e for (_, dst, _), e in demo.edges.items() if dst == nid]
    assert into and not any(e.quantized for e in into)
    tip = demo.tooltip(nid)
    assert "kept float" in tip and "features.3" in tip
    doc.undo()
    qtbot.waitUntil(lambda: item.style.quantized, timeout=5000)
    assert any(e.quantized for (_, dst, _), e in demo.edges.items() if dst == nid)
    assert "Local SQNR" in demo.tooltip(nid)


def test_the_synthetic_decoder_opens_as_its_blocks(
    qtbot: QtBot, window: MainWindow, tmp_path: Path
) -> None:
    path = tmp_path / "decoder.onnx"
    write_decoder(decoder_spec(layers=24), path, builder="onnx", calib_samples=0,
                  eval_samples=0)
    window.files.open_model(path)
    qtbot.waitUntil(lambda: window.doc.model is not None and not window.busy, timeout=RUN_MS)
    view = show_graph(qtbot, window)
    assert view.model_graph is not None and view.model_graph.graph.n_ops > 1000
    blocks = [f"g:model.layers.{i}" for i in range(24)]
    assert set(blocks) <= set(view.nodes)
    assert len(view.nodes) <= 150
    assert any(aux for (_, _, aux) in view.edges)  # the shared tables' stubs
    # Weights are measured without data: the blocks are coloured by their worst weight.
    qtbot.waitUntil(lambda: view.nodes[blocks[5]].style.fill is not None, timeout=RUN_MS)
    qtbot.mouseDClick(view.canvas.viewport(), Qt.MouseButton.LeftButton,
                      pos=item_point(view, blocks[5]))
    assert blocks[5] in view.frames and "g:model.layers.5.self_attn" in view.nodes
    # Clicking a projection inside selects it in the table.
    q_proj = view.model_graph.search("model.layers.5.self_attn.q_proj")[0]
    view.set_expanded(view.model_graph.tree.reveal(view.expanded, q_proj))
    qtbot.mouseClick(view.canvas.viewport(), Qt.MouseButton.LeftButton,
                     pos=item_point(view, q_proj))
    key = window.doc.selection
    assert key is not None and key.kind is W and "layers.5" in key.name
    assert window.doc.tensor(key).layer.name == view.model_graph.graph.node(q_proj).layer
    assert window.table.current_key() == key
    assert view.nodes[q_proj].selected
