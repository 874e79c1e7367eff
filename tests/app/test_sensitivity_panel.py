"""Sensitivity and mixed precision from the window, offscreen, on the calibrated demo.

Every wait is on a signal (or a condition qtbot polls while the event loop runs); nothing
sleeps. Runs use a few hundred samples so each test stays well under a minute, and every test
ends with no background run alive.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import pyqtgraph as pg
import pytest
from PySide6.QtCore import QPointF, QSettings, Qt, QThreadPool
from pytestqt.qtbot import QtBot

from qviz.app.controllers.sensitivity_controller import SensitivityController
from qviz.app.main_window import MainWindow
from qviz.app.views.layer_table import SORT_ROLE, STALE_FG, Column
from qviz.core.calibration.analysis import QuantTensor, TensorKey
from qviz.core.calibration.config import QuantConfig, TensorConfig
from qviz.core.calibration.methods import Method, MethodSpec
from qviz.core.data.dataset import load_data
from qviz.core.data.split import Holdout, Part, split
from qviz.core.document.session import to_session
from qviz.core.evaluation.evaluate import Metric, RunMode
from qviz.core.files.session_file import SessionFile, load_session, save_session
from qviz.core.model.loading import TensorKind
from qviz.core.quant.formats import NumberFormat, PerTensor
from qviz.core.search.mixed import MixedResult
from qviz.core.search.sensitivity import SensitivityReport, run_to_completion, sensitivity
from qviz.core.search.sensitivity_cache import SensitivityCache
from qviz.core.text import fmt_bytes

W = TensorKind.WEIGHT
CONV_W = TensorKey("features.3.weight", W)
LIMIT = 256
CALIBRATION_MS = 60_000
RUN_MS = 120_000
MIXED_MS = 240_000

MakeWindow = Callable[..., MainWindow]


@pytest.fixture
def make_window(qtbot: QtBot, tmp_path: Path) -> Iterator[MakeWindow]:
    windows: list[MainWindow] = []

    def make() -> MainWindow:
        settings = QSettings(str(tmp_path / f"qviz{len(windows)}.ini"), QSettings.Format.IniFormat)
        window = MainWindow(settings, batch_size=256)
        qtbot.addWidget(window)
        window.resize(1600, 1000)
        window.show()
        # The window's live re-evaluation (another panel) would share the two CPUs with the
        # runs measured here; these tests are about sensitivity and mixed precision.
        live = window.commands.live_evaluation
        if live is not None and live.isChecked():
            live.trigger()
        controller(window).cache = SensitivityCache(tmp_path / f"cache{len(windows)}")
        window.sensitivity_panel.limit_spin.setValue(LIMIT)
        windows.append(window)
        return window

    yield make
    for window in windows:
        window.close()
        assert window.jobs.live_threads() == 0
        assert window.analysis.live_threads() == 0
        assert controller(window).live_threads() == 0
        assert not controller(window).busy
    assert QThreadPool.globalInstance().waitForDone(10_000)


def controller(window: MainWindow) -> SensitivityController:
    return window.sensitivity


def calibrated_demo(qtbot: QtBot, make_window: MakeWindow) -> MainWindow:
    window = make_window()
    with qtbot.waitSignal(window.files.calibrated, timeout=CALIBRATION_MS):
        window.files.open_demo()
    qtbot.waitUntil(lambda: not window.busy, timeout=CALIBRATION_MS)
    return window


def run_sensitivity(qtbot: QtBot, window: MainWindow) -> SensitivityReport:
    with qtbot.waitSignal(controller(window).sensitivityFinished, timeout=RUN_MS) as blocker:
        window.commands.sensitivity.trigger()
    report = blocker.args[0]
    assert isinstance(report, SensitivityReport)
    return report


def signed(value: float) -> str:
    return f"{value:+.2f}".replace("-", "−")


def click_plot(qtbot: QtBot, widget: pg.PlotWidget, x: float, y: float) -> None:
    """A real left click at data coordinates (x, y) of a plot."""
    scene_pos = widget.getPlotItem().getViewBox().mapViewToScene(QPointF(x, y))
    qtbot.mouseClick(
        widget.viewport(), Qt.MouseButton.LeftButton, pos=widget.mapFromScene(scene_pos)
    )


# --- sensitivity ---------------------------------------------------------------------------------


def test_sensitivity_fills_the_table_and_the_chart_and_is_cached(
    qtbot: QtBot, make_window: MakeWindow
) -> None:
    window = calibrated_demo(qtbot, make_window)
    ctl = controller(window)
    table = window.table
    assert table.view.isColumnHidden(Column.DROP)  # nothing to show before a run
    assert window.commands.sensitivity.shortcut().toString() == "F6"

    report = run_sensitivity(qtbot, window)
    doc = window.doc
    assert doc.measures.sensitivity is report and not report.cached
    assert report.metric is Metric.ACCURACY and report.n_samples == LIMIT
    assert window.sensitivity_dock.isVisible() and not table.view.isColumnHidden(Column.RECOVERY)

    # The core, run on its own with the document's model, statistics, settings and its
    # evaluation data (the samples held out of the calibration data).
    assert doc.model is not None and doc.stats is not None and doc.data_path is not None
    data = split(load_data(doc.data_path, doc.model.inputs), Holdout(), Part.EVALUATION)
    core = run_to_completion(sensitivity(doc.model, doc.stats, doc.config, data, limit=LIMIT))
    assert [s.name for s in report.layers] == [s.name for s in core.layers]
    for mine, theirs in zip(report.layers, core.layers, strict=True):
        assert mine.drop == pytest.approx(theirs.drop, abs=1e-9)
        assert mine.recovery == pytest.approx(theirs.recovery, abs=1e-9)
        assert mine.node_name == theirs.node_name and mine.module_path == theirs.module_path

    # The table's columns hold the core's numbers, for every row of every layer.
    for key in table.visible_keys():
        row = core.layer(doc.tensor(key).layer.name)
        assert row.drop is not None
        assert table.cell_text(key, Column.DROP) == signed(row.drop)
        assert table.cell_text(key, Column.RECOVERY) == signed(row.recovery)
        index = table.model.index_of(key, Column.RECOVERY)
        assert table.model.data(index, SORT_ROLE) == pytest.approx(row.recovery)
    # Sortable: by recovery, the layer that recovers most comes first.
    table.view.sortByColumn(Column.RECOVERY, Qt.SortOrder.DescendingOrder)
    first = table.visible_keys()[0]
    assert core.layer(doc.tensor(first).layer.name).recovery == max(
        s.recovery for s in core.layers
    )
    header = table.view.header()
    # End to end beside local: Clipped, (Eval clipped,) Drop, Recovery side by side, fixed.
    order = [Column.CLIPPED, Column.EVAL_CLIPPED, Column.DROP, Column.RECOVERY]
    first_index = header.visualIndex(Column.CLIPPED)
    assert [header.visualIndex(c) for c in order] == list(range(first_index, first_index + 4))

    # The chart: bars along depth with the same numbers; clicking one selects its layer.
    chart = window.sensitivity_panel.chart
    by_depth = sorted(core.layers, key=lambda s: s.depth)
    assert chart.layer_names() == [s.name for s in by_depth]
    heights = list(chart.recovery_bars.opts["height"])
    assert heights == pytest.approx([s.recovery for s in by_depth])
    local = chart.weight_sqnr.getData()[1]
    assert list(local) == pytest.approx([s.weight_sqnr_db for s in by_depth])
    for i in (2, 0, len(by_depth) - 1):
        chart.click_bar(i)
        selected = doc.selection
        assert selected is not None and doc.tensor(selected).layer.name == by_depth[i].name
        assert selected[1] is W  # the layer's weight row
        assert table.current_key() == selected
        assert chart.current_band.isVisible()
        assert chart.current_band.getRegion() == (pytest.approx(i - 0.5), pytest.approx(i + 0.5))
    summary = window.sensitivity_panel.summary.text()
    assert f"accuracy (%) on {LIMIT} samples of data.npz" in summary
    # A real mouse click on a bar does the same.
    y_mid = sum(chart.plot.getViewBox().viewRange()[1]) / 2
    click_plot(qtbot, chart.plot_widget, 1 + 0.2, y_mid)
    assert doc.selection is not None and doc.tensor(doc.selection).layer.name == by_depth[1].name

    # Re-running the same settings on the same samples hits the cache: nothing runs again.
    assert ctl.cache is not None and ctl.cache.hits == 0 and ctl.cache.stores == 1
    again = run_sensitivity(qtbot, window)
    assert again.cached and ctl.cache.hits == 1 and ctl.cache.stores == 1
    assert [s.recovery for s in again.layers] == [s.recovery for s in report.layers]
    assert "cache" in window.sensitivity_panel.summary.text()


def test_reopened_session_shows_the_report_without_running_it(
    qtbot: QtBot, make_window: MakeWindow, tmp_path: Path
) -> None:
    window = calibrated_demo(qtbot, make_window)
    report = run_sensitivity(qtbot, window)
    path = tmp_path / "s.qviz.json"
    window.files.save_session_to(path)
    assert "sensitivity" in json.loads(path.read_text())

    other = make_window()
    ctl = controller(other)
    with qtbot.waitSignal(other.files.calibrated, timeout=CALIBRATION_MS):
        other.files.open_path(path)
    qtbot.waitUntil(lambda: not other.busy, timeout=CALIBRATION_MS)
    loaded = other.doc.measures.sensitivity
    assert loaded is not None and loaded.cached
    assert ctl.runner.generation == 0  # nothing was run: the session carried it
    assert not other.doc.measures.sensitivity_stale
    assert other.sensitivity_dock.isVisible()
    assert other.sensitivity_panel.chart.layer_names() == [s.name for s in report.layers]
    for key in window.table.visible_keys():
        for col in (Column.DROP, Column.RECOVERY):
            assert other.table.cell_text(key, col) == window.table.cell_text(key, col)

    # Changing a setting makes the report one of earlier settings: greyed, not silently wrong.
    other.doc.select(CONV_W)
    int4 = TensorConfig(MethodSpec(Method.MINMAX), PerTensor(), NumberFormat.parse("int4"))
    other.controls.apply(int4)
    qtbot.waitUntil(lambda: other.doc.measures.sensitivity_stale, timeout=CALIBRATION_MS)
    index = other.table.model.index_of(CONV_W, Column.DROP)
    brush = other.table.model.data(index, Qt.ItemDataRole.ForegroundRole)
    assert brush is not None and brush.color() == STALE_FG
    assert "earlier settings" in other.sensitivity_panel.summary.text()


def test_cancel_sensitivity_midway(qtbot: QtBot, make_window: MakeWindow) -> None:
    window = calibrated_demo(qtbot, make_window)
    ctl = controller(window)
    window.sensitivity_panel.limit_spin.setValue(2000)  # a long run to cancel
    with qtbot.waitSignal(
        ctl.runner.progressed, timeout=RUN_MS, check_params_cb=lambda p: p.done > 0
    ):
        window.run_sensitivity()
    assert window.sensitivity_panel.cancel_button.isVisible()
    with qtbot.waitSignal(ctl.sensitivityCancelled, timeout=RUN_MS):
        window.sensitivity_panel.cancel_button.click()
    qtbot.waitUntil(lambda: not ctl.busy, timeout=RUN_MS)
    assert window.doc.measures.sensitivity is None
    panel = window.sensitivity_panel
    assert not panel.cancel_button.isVisible() and panel.run_button.isEnabled()


def test_sensitivity_without_data_is_one_clear_error(
    qtbot: QtBot, make_window: MakeWindow
) -> None:
    window = make_window()
    with qtbot.waitSignal(window.reporter.errorShown, timeout=5_000) as blocker:
        window.commands.sensitivity.trigger()
    assert "needs a model" in blocker.args[0]
    assert not controller(window).busy


# --- mixed precision -----------------------------------------------------------------------------


def test_mixed_precision_finds_a_passing_mix_and_points_apply(
    qtbot: QtBot, make_window: MakeWindow
) -> None:
    window = calibrated_demo(qtbot, make_window)
    ctl = controller(window)
    window.commands.mixed.trigger()
    dialog = window.mixed_dialog
    assert dialog is not None and dialog.isVisible()
    dialog.set_request("accuracy_drop<=0.5", ("int4", "int8", "float"), limit=LIMIT)
    assert dialog.run_button.isEnabled()
    with qtbot.waitSignal(ctl.mixedFinished, timeout=MIXED_MS) as blocker:
        dialog.run_button.click()
    result = blocker.args[0]
    assert isinstance(result, MixedResult)

    # The proof: 4-bit weights everywhere fail, measured on every sample; the mix meets it.
    assert result.baseline.label == "all int4" and not result.baseline.passed
    base = window.doc.measures.mixed.baseline
    assert base is not None and base.n_samples == 400  # every held-out sample
    assert base.accuracy_drop is not None and base.accuracy_drop > 0.5
    e = result.evaluation
    assert result.passed and e is not None and e.n_samples == 400
    assert e.mode is RunMode.NATIVE
    assert e.accuracy_drop is not None and e.accuracy_drop <= 0.5
    assert result.changed and result.size_bytes < 2 * result.baseline.size_bytes

    # The result panel: PASS, the measured accuracy, the size, and the chosen layers by
    # graph node and torch module path.
    assert dialog.verdict_label.text().startswith("PASS: accuracy drop")
    summary = dialog.summary_label.text()
    accuracy = e.quantized_metrics[Metric.ACCURACY]
    assert f"accuracy {accuracy:.2f} %" in summary and "all 400 samples" in summary
    assert fmt_bytes(result.size_bytes) in summary
    assert f"accuracy {base.quantized_metrics[Metric.ACCURACY]:.2f} %" in summary
    assert "FAIL" in summary  # the all-int4 comparison
    rows = {r[0]: r for r in dialog.choice_rows()}
    assert set(rows) == {c.name for c in result.choices}
    for c in result.changed:
        assert rows[c.name][1:4] == (c.precision, c.node_name, c.module_path or "—")
        assert c.name in summary

    # The Pareto plot: every configuration tried; clicking one applies it to the document.
    # How many configurations the search needs depends on the CPU's int8 kernels (where
    # ORT's u8s8 kernels saturate, promoting a layer to int8 can fail and more are tried;
    # with VNNI the first promotion may already pass), so the points clicked are the two
    # every search has on any CPU: the all-int4 baseline (fails, smallest) and the chosen
    # mix (passes, a different configuration).
    view = dialog.pareto
    assert len(view.points.data) == len(result.points)
    assert result.baseline in result.pareto_front()
    baseline, chosen = result.baseline, result.chosen
    assert baseline.index == 0 and chosen.index != baseline.index
    assert chosen.config != baseline.config and chosen.config == result.config
    with qtbot.waitSignal(ctl.configApplied, timeout=5_000):
        view.click_point(baseline.index)
    assert window.doc.config == baseline.config
    assert view.applied_index == baseline.index
    assert f"#{baseline.index}" in dialog.applied_label.text()
    # A real mouse click on a point applies it too: of the points that are neither the
    # baseline nor the chosen one, the biggest (it stands apart; points a fraction of a KiB
    # apart overlap on screen, and their tooltip lists them all), or else the chosen mix.
    others = [p for p in result.points
              if p.index not in (baseline.index, chosen.index) and math.isfinite(p.value)]
    clicked = max(others, key=lambda p: p.size_bytes) if others else chosen
    with qtbot.waitSignal(ctl.configApplied, timeout=5_000):
        click_plot(qtbot, view.plot_widget, clicked.size_bytes / 1024, clicked.value)
    assert window.doc.config == clicked.config
    assert view.applied_index == clicked.index
    assert f"#{clicked.index}" in dialog.applied_label.text()
    # ...and the table shows it layer by layer, where it differs from the baseline too.
    def shown(config: QuantConfig, t: QuantTensor) -> str:
        cfg = config.for_tensor(t.name, t.kind)
        return cfg.fmt.label if cfg.quantize else "float"

    for t in window.doc.tensors:
        assert window.table.cell_text(t.key, Column.FORMAT) == shown(clicked.config, t)
    assert any(shown(clicked.config, t) != shown(baseline.config, t) for t in window.doc.tensors)
    # Back to the baseline, so that applying the answer below is a change that shows.
    with qtbot.waitSignal(ctl.configApplied, timeout=5_000):
        view.click_point(baseline.index)
    assert window.doc.config == baseline.config

    # "Apply the answer" puts the confirmed configuration in the document.
    with qtbot.waitSignal(ctl.configApplied, timeout=5_000):
        dialog.apply_button.click()
    assert window.doc.config == result.config
    float_layers = {c.name for c in result.choices if c.precision == "float"}
    for t in window.doc.tensors:
        if t.layer.name in float_layers and t.kind is W:
            assert window.table.cell_text(t.key, Column.FORMAT) == "float"
            assert window.table.cell_text(t.key, Column.SQNR) == "float"
    qtbot.waitUntil(lambda: not window.busy, timeout=CALIBRATION_MS)
    assert math.isfinite(window.doc.summary().weighted_sqnr_db)


def test_mixed_precision_cancel_and_bad_criterion(qtbot: QtBot, make_window: MakeWindow) -> None:
    window = calibrated_demo(qtbot, make_window)
    ctl = controller(window)
    dialog = window.open_mixed_dialog()
    dialog.set_request("accuracy drop <= lots")
    assert not dialog.run_button.isEnabled()
    assert "cannot read criterion" in dialog.criterion_hint.text()
    dialog.set_request("sqnr>=30", ("float",))
    assert not dialog.run_button.isEnabled()  # no quantized precision allowed
    dialog.set_request("accuracy_drop<=0.5", limit=2000)
    with qtbot.waitSignal(
        ctl.mixed_runner.progressed, timeout=RUN_MS, check_params_cb=lambda p: p.done > 0
    ):
        dialog.run_button.click()
    assert dialog.cancel_button.isEnabled() and not dialog.run_button.isEnabled()
    with qtbot.waitSignal(ctl.mixedCancelled, timeout=RUN_MS):
        dialog.cancel_button.click()
    qtbot.waitUntil(lambda: not ctl.busy, timeout=RUN_MS)
    assert window.doc.measures.mixed is None
    assert "cancelled" in dialog.verdict_label.text()
    assert dialog.run_button.isEnabled()


# --- the session file ---------------------------------------------------------------------------


def test_session_file_keeps_the_report_and_shrugs_off_a_damaged_one(
    qtbot: QtBot, make_window: MakeWindow, tmp_path: Path
) -> None:
    window = calibrated_demo(qtbot, make_window)
    report = run_sensitivity(qtbot, window)
    session = to_session(window.doc)
    assert session.sensitivity is report
    path = tmp_path / "s.qviz.json"
    save_session(path, session)
    back = load_session(path)
    assert back.sensitivity is not None
    assert back.sensitivity.to_json() | {"cached": False} == report.to_json() | {"cached": False}
    doc = json.loads(path.read_text())
    doc["sensitivity"]["layers"] = "garbage"
    path.write_text(json.dumps(doc))
    damaged = load_session(path)
    assert damaged.sensitivity is None and damaged.config == session.config
    empty = SessionFile(model_path=tmp_path / "m.onnx")
    save_session(path, empty)
    assert "sensitivity" not in json.loads(path.read_text())
