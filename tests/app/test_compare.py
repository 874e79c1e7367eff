"""A/B comparison in the window: pin the configuration as A, keep exploring as B, and every
view shows A beside B with the same numbers the core computes. Offscreen, no sleeps."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import QSettings, QThreadPool
from pytestqt.qtbot import QtBot

from qviz.app.main_window import MainWindow
from qviz.app.views import plot_style as st
from qviz.app.views.layer_table import Column
from qviz.core.calibration.analysis import TensorKey, analyze_tensor
from qviz.core.calibration.methods import Method
from qviz.core.demo import demo_paths
from qviz.core.evaluation.evaluate import Metric
from qviz.core.model.loading import TensorKind
from qviz.core.text import fmt_signed
from tests.app.evaluation_fixtures import demo_stats_file

__all__ = ["demo_stats_file"]

W, A = TensorKind.WEIGHT, TensorKind.ACTIVATION
CONV_W = TensorKey("features.3.weight", W)
RELU = TensorKey("relu", A)
RUN_MS = 120_000


@pytest.fixture
def window(qtbot: QtBot, tmp_path: Path, demo_stats_file: Path) -> Iterator[MainWindow]:
    settings = QSettings(str(tmp_path / "qviz.ini"), QSettings.Format.IniFormat)
    w = MainWindow(settings, batch_size=256)
    qtbot.addWidget(w)
    w.resize(1600, 1000)
    w.show()
    demo = demo_paths()
    with qtbot.waitSignal(w.evaluation.evaluated, timeout=RUN_MS):
        w.files.open_model(demo.model, data_path=demo.data, stats_path=demo_stats_file)
    qtbot.waitUntil(lambda: not w.busy, timeout=RUN_MS)
    yield w
    w.close()
    assert w.jobs.live_threads() == 0 and w.analysis.live_threads() == 0
    assert w.evaluation.live.live_threads() == 0
    assert QThreadPool.globalInstance().waitForDone(10_000)


def test_pin_a_then_explore_b(qtbot: QtBot, window: MainWindow) -> None:
    doc, controls = window.doc, window.controls
    assert not window.compare_label.isVisible() and window.table.view.isColumnHidden(Column.VS_A)
    window.commands.pin.trigger()
    assert doc.pinned is not None and doc.pinned.evaluation is doc.measures.evaluation
    assert window.compare_label.isVisible() and "A:" in window.compare_label.text()
    a_config = doc.config

    # B: 4-bit weights on one conv.
    doc.select(CONV_W)
    with qtbot.waitSignal(window.evaluation.evaluated, timeout=RUN_MS):
        controls.bits_spin.setValue(4)
    b = doc.result(CONV_W)
    assert doc.model is not None and doc.stats is not None and b is not None
    a = analyze_tensor(doc.model, doc.stats, doc.tensor(CONV_W), a_config.for_tensor(*CONV_W))

    # The metrics panel: A's numbers and the change from A, beside B's.
    panel = window.layer_view.metrics_panel
    assert panel.text(W, "a_sqnr").startswith(st.fmt_db(a.metrics.sqnr_db) + " · ")
    assert panel.text(W, "d_sqnr") == f"{st.fmt_num(b.metrics.sqnr_db - a.metrics.sqnr_db)} dB"
    assert panel.text(A, "d_sqnr") == "same as A"
    # The histogram shows A's band as two lines beside B's.
    band = window.layer_view.weight_hist.pinned_band
    assert band == pytest.approx(a.metrics.envelope)
    # The table: the change of SQNR from A, only where something changed.
    assert not window.table.view.isColumnHidden(Column.VS_A)
    expected = fmt_signed(float(b.metrics.sqnr_db) - float(a.metrics.sqnr_db), 2)
    assert window.table.cell_text(CONV_W, Column.VS_A) == expected
    assert window.table.cell_text(RELU, Column.VS_A) == "same"

    # The model panel: A's end-to-end numbers beside B's, and the difference.
    model_panel = window.model_panel
    pinned = doc.pinned
    b_eval = doc.measures.evaluation
    assert pinned.evaluation is not None and b_eval is not None
    acc_a = pinned.evaluation.evaluation.quantized_metrics[Metric.ACCURACY]
    acc_b = b_eval.evaluation.quantized_metrics[Metric.ACCURACY]
    assert model_panel.text("accuracy", "a") == f"{acc_a:.2f} %"
    assert model_panel.text("accuracy", "ab") == f"{acc_b - acc_a:+.2f} points".replace("-", "−")
    depth_a = {p.tensor: p.sqnr_db for p in pinned.evaluation.evaluation.depth}
    drawn = model_panel.depth_view.pinned_values
    assert drawn == pytest.approx([depth_a[t] for t in model_panel.depth_view.tensors])

    # Swap: A becomes current (the 8-bit weights), B is pinned; undo takes it back.
    window.commands.swap.trigger()
    assert doc.config == a_config and doc.pinned.config != a_config
    assert controls.bits_spin.value() == 8
    window.commands.undo.trigger()
    assert doc.config_for(CONV_W).fmt.bits == 4
    # Unpin: every comparison goes away.
    window.commands.unpin.trigger()
    assert doc.pinned is None and not window.compare_label.isVisible()
    assert window.table.view.isColumnHidden(Column.VS_A)
    assert window.layer_view.weight_hist.pinned_band is None
    assert not panel._row_labels["a_sqnr"].isVisible()


def test_a_and_b_are_compared_like_with_like(qtbot: QtBot, window: MainWindow) -> None:
    """B's live numbers beside A's live ones; after Run ▸ Evaluate, B's full evaluation beside
    A's, measured the same way (never a 256-sample simulation against a full native run)."""
    doc, panel = window.doc, window.model_panel
    window.commands.pin.trigger()
    doc.select(CONV_W)
    with qtbot.waitSignal(window.evaluation.evaluated, timeout=RUN_MS):
        window.controls.bits_spin.setValue(4)
    pinned = doc.pinned
    b = doc.measures.evaluation
    assert pinned is not None and b is not None and not b.full
    assert pinned.live is not None and pinned.full is None
    assert pinned.live.evaluation.n_samples == b.evaluation.n_samples

    window.evaluation.evaluate_full()
    qtbot.waitUntil(
        lambda: doc.pinned is not None and doc.pinned.full is not None, timeout=RUN_MS
    )
    qtbot.waitUntil(lambda: not window.busy and not window.evaluation.pinned_live.is_busy,
                    timeout=RUN_MS)
    a_full, b_full = doc.pinned.full, doc.measures.evaluation
    assert a_full is not None and b_full is not None and b_full.full
    assert a_full.evaluation.n_samples == b_full.evaluation.n_samples
    assert a_full.evaluation.mode is b_full.evaluation.mode
    acc_a = a_full.evaluation.quantized_metrics[Metric.ACCURACY]
    acc_b = b_full.evaluation.quantized_metrics[Metric.ACCURACY]
    assert panel.text("accuracy", "a") == f"{acc_a:.2f} %"
    assert panel.text("accuracy", "ab") == f"{acc_b - acc_a:+.2f} points".replace("-", "−")


def test_pinned_after_a_full_evaluation_a_is_measured_live_once_b_is(
    qtbot: QtBot, window: MainWindow
) -> None:
    """Pinned while a full evaluation is on screen, A has full numbers only; B's next live
    evaluation must be followed by A's live one (it waited for B's run to end)."""
    doc = window.doc
    window.evaluation.evaluate_full()
    qtbot.waitUntil(lambda: doc.measures.evaluation is not None
                    and doc.measures.evaluation.full and not window.busy, timeout=RUN_MS)
    window.commands.pin.trigger()
    qtbot.waitUntil(lambda: doc.pinned is not None and doc.pinned.full is not None,
                    timeout=RUN_MS)
    doc.select(CONV_W)
    with qtbot.waitSignal(window.evaluation.evaluated, timeout=RUN_MS):
        window.controls.bits_spin.setValue(4)
    qtbot.waitUntil(lambda: doc.pinned is not None and doc.pinned.live is not None,
                    timeout=RUN_MS)
    b = doc.measures.evaluation
    assert b is not None and not b.full
    assert doc.pinned.live.evaluation.n_samples == b.evaluation.n_samples


def test_export_either_configuration(qtbot: QtBot, window: MainWindow, tmp_path: Path) -> None:
    from qviz.core.files.config_file import load_config
    from qviz.core.files.export import ExportFormat

    doc = window.doc
    window.commands.pin.trigger()
    doc.select(RELU)
    window.controls.method_combo.setCurrentIndex(
        window.controls.method_combo.findData(Method.ENTROPY)  # not the default (MSE)
    )
    assert doc.config != doc.pinned.config  # type: ignore[union-attr]
    dialog = window.open_export_dialog()
    assert dialog is not None and dialog.which_combo.isVisible()
    for which, config in (("A", doc.pinned.config), ("B", doc.config)):  # type: ignore[union-attr]
        dialog.which_combo.setCurrentIndex(dialog.which_combo.findData(which))
        dialog.set_format(ExportFormat.CONFIG)
        path = tmp_path / f"{which}.json"
        dialog.set_path(path)
        with qtbot.waitSignal(dialog.exported, timeout=RUN_MS):
            dialog.export_now()
        assert load_config(path).quant_config == config
    dialog.close()
