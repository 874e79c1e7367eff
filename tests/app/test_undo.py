"""Undo and redo in the window, driven through real widgets: a control change, a drag of a clip
band, "apply to all", a mixed-precision point. After each undo and redo the document, the
plots' data and the table say the same thing. Offscreen, no sleeps."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QSettings, QThreadPool
from pytestqt.qtbot import QtBot

from qviz.app.main_window import MainWindow
from qviz.app.views import plot_style as st
from qviz.app.views.layer_table import Column
from qviz.core.calibration.analysis import TensorKey
from qviz.core.calibration.methods import Method
from qviz.core.data.dataset import load_data
from qviz.core.demo import demo_paths
from qviz.core.document.tensors import ApplyScope
from qviz.core.evaluation.criteria import Criterion
from qviz.core.model.loading import TensorKind, load_model
from qviz.core.quant.formats import NumberFormat
from qviz.core.search.mixed import mixed_precision
from qviz.core.search.sensitivity import run_to_completion
from qviz.core.stats.collect import collect_stats
from qviz.core.stats.collect import run_to_completion as collect_to_completion
from qviz.core.stats.stats_file import save_stats

W, A = TensorKind.WEIGHT, TensorKind.ACTIVATION
CONV_W = TensorKey("features.3.weight", W)
RELU = TensorKey("relu", A)
RUN_MS = 60_000


@pytest.fixture(scope="module")
def demo_stats_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    demo = demo_paths()
    model = load_model(demo.model)
    stats = collect_to_completion(collect_stats(model, load_data(demo.data, model.inputs)))
    path = tmp_path_factory.mktemp("stats") / "demo.qvstats"
    save_stats(stats, path)
    return path


@pytest.fixture
def window(qtbot: QtBot, tmp_path: Path, demo_stats_file: Path) -> Iterator[MainWindow]:
    settings = QSettings(str(tmp_path / "qviz.ini"), QSettings.Format.IniFormat)
    w = MainWindow(settings, batch_size=256)
    qtbot.addWidget(w)
    w.resize(1600, 1000)
    w.show()
    w.commands.live_evaluation.trigger()  # off: these tests are about settings
    with qtbot.waitSignal(w.files.calibrated, timeout=RUN_MS):
        w.files.open_stats(demo_stats_file)
    qtbot.waitUntil(lambda: not w.busy, timeout=RUN_MS)
    yield w
    w.close()
    assert w.jobs.live_threads() == 0 and w.analysis.live_threads() == 0
    assert QThreadPool.globalInstance().waitForDone(10_000)


def shown(window: MainWindow, key: TensorKey) -> tuple[str, str, str]:
    """What the table, the metrics panel and the histogram band say about `key` now."""
    result = window.doc.result(key)
    assert result is not None
    hist = window.layer_view.weight_hist if key.kind is W else window.layer_view.activation_hist
    lo, hi = hist.region_values()
    panel_sqnr = window.layer_view.metrics_panel.text(key.kind, "sqnr")
    assert panel_sqnr == st.fmt_db(result.metrics.sqnr_db)
    assert window.table.cell_text(key, Column.SQNR) == st.fmt_num(result.metrics.sqnr_db)
    band_lo, band_hi = result.metrics.envelope
    assert lo == pytest.approx(band_lo) and hi == pytest.approx(band_hi)
    return (window.table.cell_text(key, Column.METHOD), panel_sqnr, f"{lo:.6g},{hi:.6g}")


def test_undo_redo_a_control_change_and_a_drag(qtbot: QtBot, window: MainWindow) -> None:
    doc, controls = window.doc, window.controls
    doc.select(CONV_W)
    before = shown(window, CONV_W)
    controls.method_combo.setCurrentIndex(controls.method_combo.findData(Method.MSE))
    after_method = shown(window, CONV_W)
    assert after_method[0] == "mse" and after_method != before
    assert "mse" in window.commands.undo.text() and window.commands.undo.isEnabled()

    # A whole drag of the activation band is one step, however many moves it took.
    doc.select(RELU)
    hist = window.layer_view.activation_hist
    steps = len(doc.history.entries)
    stats = doc.stats.tensors["relu"]  # type: ignore[union-attr]
    hist.region.lines[1].setValue(0.5 * stats.max)   # moving, button held: no step yet
    hist.region.lines[1].setValue(0.3 * stats.max)
    assert len(doc.history.entries) == steps
    hist.region.lineMoveFinished()                    # released: one step
    assert len(doc.history.entries) == steps + 1
    dragged = shown(window, RELU)
    assert dragged[0].startswith("manual")

    window.commands.undo.trigger()
    assert doc.config_for(RELU).spec.method is not Method.MANUAL
    assert doc.selection == RELU and shown(window, RELU)[0] != dragged[0]
    window.commands.undo.trigger()
    doc.select(CONV_W)
    assert shown(window, CONV_W) == before
    assert controls.method_combo.currentData() is Method.MINMAX
    window.commands.redo.trigger()
    assert shown(window, CONV_W) == after_method
    assert controls.method_combo.currentData() is Method.MSE
    window.commands.redo.trigger()
    assert shown(window, RELU) == dragged
    assert not window.commands.redo.isEnabled()

    # The history view lists the steps and jumps to any of them.
    window.history_dock.show()
    labels = window.history_view.labels()
    assert len(labels) == 3 and "mse" in labels[1] and "clip range" in labels[2]
    window.history_view.itemClicked.emit(window.history_view.item(0))
    assert doc.history.index == 0
    doc.select(CONV_W)
    assert shown(window, CONV_W) == before


def test_apply_to_all_is_one_step(qtbot: QtBot, window: MainWindow) -> None:
    doc, controls = window.doc, window.controls
    doc.select(CONV_W)
    conv = [t.key for t in doc.tensors if t.kind is W and t.layer.op_type == "Conv"]
    before = {k: window.table.cell_text(k, Column.FORMAT) for k in conv}
    controls.set_scope(ApplyScope.ALL)
    with qtbot.waitSignal(window.analysis.finished, timeout=RUN_MS):
        controls.bits_spin.setValue(4)
    int4 = NumberFormat.parse("int4").label
    assert all(window.table.cell_text(k, Column.FORMAT) == int4 for k in conv)
    assert len(doc.history.entries) == 2
    window.commands.undo.trigger()
    assert {k: window.table.cell_text(k, Column.FORMAT) for k in conv} == before
    qtbot.waitUntil(lambda: not window.busy, timeout=RUN_MS)
    for k in conv:  # the restored results are the earlier ones, shown in every row
        r = doc.result(k)
        assert r is not None and window.table.cell_text(k, Column.SQNR) == st.fmt_num(
            r.metrics.sqnr_db
        )
    window.commands.redo.trigger()
    assert all(window.table.cell_text(k, Column.FORMAT) == int4 for k in conv)


def test_applying_a_mixed_precision_point_can_be_undone(qtbot: QtBot, window: MainWindow) -> None:
    doc = window.doc
    assert doc.model is not None and doc.stats is not None
    data = load_data(demo_paths().data, doc.model.inputs)
    result = run_to_completion(mixed_precision(
        doc.model, doc.stats, doc.config, data, Criterion.parse("accuracy_drop<=0.5"),
        "int4,int8,float",
        limit=128, batch_size=128,
    ))
    point = result.points[-1]
    before = doc.config
    window.sensitivity.apply_point(point)
    assert doc.config == point.config
    assert f"#{point.index}" in (doc.history.undo_label or "")
    window.commands.undo.trigger()
    assert doc.config == before
    rows = {t.key: window.table.cell_text(t.key, Column.FORMAT) for t in doc.tensors}
    assert all(text != "float" for text in rows.values())
    window.commands.redo.trigger()
    assert doc.config == point.config
    floats = [t.key for t in doc.tensors if not point.config.for_tensor(t.name, t.kind).quantize]
    assert all(window.table.cell_text(k, Column.FORMAT) == "float" for k in floats)
    assert np.isfinite(doc.summary().weighted_sqnr_db) or not floats

