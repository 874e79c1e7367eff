"""The main window, offscreen: demo calibration, settings, clip drags, cancel, close, errors.

Every wait is on a signal (or a condition qtbot polls while running the event loop); nothing
sleeps. Each test ends with no background run alive.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QMimeData, QPointF, QSettings, Qt, QThreadPool, QUrl
from PySide6.QtGui import QDropEvent
from PySide6.QtWidgets import QWidget
from pytestqt.qtbot import QtBot

from qviz.app import main_window as main_window_module
from qviz.app.controllers import files as files_module
from qviz.app.main_window import MainWindow
from qviz.app.recent_files import RecentFiles
from qviz.app.views import plot_style as st
from qviz.app.views.layer_table import Column
from qviz.core.calibration.analysis import TensorKey, TensorResult, analyze_tensor
from qviz.core.calibration.config import TensorConfig
from qviz.core.calibration.methods import Method, MethodSpec
from qviz.core.calibration.metrics import histogram_metrics
from qviz.core.data.dataset import load_data
from qviz.core.demo import demo_paths
from qviz.core.document.document import ApplyScope
from qviz.core.errors import QvizError
from qviz.core.files.session_file import load_session
from qviz.core.model.loading import TensorKind, load_model
from qviz.core.quant.formats import Granularity, GranularityKind, NumberFormat, PerTensor
from qviz.core.stats.collect import collect_stats, run_to_completion
from qviz.core.stats.stats_file import save_stats

W = TensorKind.WEIGHT
A = TensorKind.ACTIVATION
CONV_W = TensorKey("features.3.weight", W)
CONV_A = TensorKey("relu", A)
CALIBRATION_MS = 60_000
DATA = Path(__file__).resolve().parents[1] / "data"

MakeWindow = Callable[..., MainWindow]


@pytest.fixture
def make_window(qtbot: QtBot, tmp_path: Path) -> Iterator[MakeWindow]:
    windows: list[MainWindow] = []

    def make(batch_size: int = 256) -> MainWindow:
        # Own settings file: tests never touch the user's recent files.
        settings = QSettings(str(tmp_path / f"qviz{len(windows)}.ini"), QSettings.Format.IniFormat)
        window = MainWindow(settings, batch_size=batch_size)
        qtbot.addWidget(window)
        window.resize(1600, 1000)
        window.show()
        windows.append(window)
        return window

    yield make
    for window in windows:
        window.close()
        assert window.jobs.live_threads() == 0
        assert window.analysis.live_threads() == 0
    assert QThreadPool.globalInstance().waitForDone(10_000)


def open_demo(qtbot: QtBot, window: MainWindow) -> None:
    with qtbot.waitSignal(window.files.calibrated, timeout=CALIBRATION_MS):
        window.files.open_demo()
    qtbot.waitUntil(lambda: not window.busy, timeout=CALIBRATION_MS)


@pytest.fixture(scope="module")
def demo_stats_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's statistics, collected once per module with the core (no Qt): most tests
    start from them instead of calibrating again. Calibration through the window is tested
    on its own below."""
    demo = demo_paths()
    model = load_model(demo.model)
    stats = run_to_completion(collect_stats(model, load_data(demo.data, model.inputs)))
    path = tmp_path_factory.mktemp("stats") / "demo.qvstats"
    save_stats(stats, path)
    return path


@pytest.fixture
def demo_window(qtbot: QtBot, make_window: MakeWindow, demo_stats_file: Path) -> MainWindow:
    """A window showing the demo with its statistics, every tensor measured."""
    window = make_window()
    with qtbot.waitSignal(window.files.calibrated, timeout=CALIBRATION_MS):
        window.files.open_stats(demo_stats_file)
    qtbot.waitUntil(lambda: not window.busy, timeout=CALIBRATION_MS)
    return window


def core_result(window: MainWindow, key: tuple[str, TensorKind], cfg: TensorConfig) -> TensorResult:
    """What the core computes for these settings, independently of the window's caches."""
    doc = window.doc
    assert doc.model is not None and doc.stats is not None
    return analyze_tensor(doc.model, doc.stats, doc.tensor(key), cfg)


def assert_shows(window: MainWindow, key: tuple[str, TensorKind], expected: TensorResult) -> None:
    """The metrics panel and the table row show the core's numbers for `key`."""
    panel = window.layer_view.metrics_panel  # type: ignore[attr-defined]
    m = expected.metrics
    assert panel.text(key[1], "tensor") == key[0]
    assert panel.text(key[1], "sqnr") == st.fmt_db(m.sqnr_db)
    assert panel.text(key[1], "clipped") == st.fmt_pct(m.clipped_fraction)
    assert panel.text(key[1], "mse") == st.fmt_num(m.mse)
    assert panel.text(key[1], "step") == st.summarize(m.step)
    assert window.table.cell_text(key, Column.SQNR) == st.fmt_num(m.sqnr_db)
    assert window.table.cell_text(key, Column.CLIPPED) == st.fmt_pct(m.clipped_fraction)
    shown = window.doc.result(key)
    assert shown is not None
    assert float(shown.metrics.sqnr_db) == pytest.approx(float(m.sqnr_db), rel=1e-12)


# --- the demo, end to end ------------------------------------------------------------------------


def test_demo_opens_calibrates_and_fills_the_table(qtbot: QtBot, make_window: MakeWindow) -> None:
    window = make_window()
    open_demo(qtbot, window)
    assert window.windowTitle().startswith("model.onnx")
    # One sample in five of the demo's 2000 is held out for evaluation: calibration saw 1600.
    assert window.doc.stats is not None and window.doc.stats.n_samples == 1600
    assert "held out" in window.doc.stats.data_description
    assert window.table.model.leaf_count() == 12
    for key in window.table.visible_keys():
        expected = core_result(window, key, window.doc.config_for(key))
        assert window.table.cell_text(key, Column.SQNR) == st.fmt_num(expected.metrics.sqnr_db)
    summary = window.table.summary_label.text()
    assert "12 tensors" in summary and "weighted SQNR" in summary and "worst" in summary
    assert not window.job_status.progress_bar.isVisible()
    assert "Statistics ready" in window.status_text()


@pytest.mark.parametrize("method", [Method.MINMAX, Method.PERCENTILE, Method.ENTROPY, Method.MSE])
def test_each_method_and_granularity_matches_the_core(
    qtbot: QtBot, demo_window: MainWindow, method: Method
) -> None:
    window = demo_window
    controls = window.controls
    window.doc.select(CONV_W)
    assert window.doc.selection == CONV_W
    # Through the widgets, as a user would.
    controls.percentile_spin.setValue(99.9)
    controls.method_combo.setCurrentIndex(controls.method_combo.findData(method))
    controls.group_spin.setValue(8)
    for gkind in GranularityKind:
        cfg = TensorConfig(MethodSpec.of(method, 99.9), Granularity.of(gkind, 8), NumberFormat())
        try:
            expected = core_result(window, CONV_W, cfg)
        except QvizError as exc:
            # A combination the core refuses (per-group Entropy): the same one clear
            # message, and the row says so.
            with qtbot.waitSignal(window.reporter.errorShown, timeout=5_000) as blocker:
                controls.granularity_combo.setCurrentIndex(
                    controls.granularity_combo.findData(gkind)
                )
            assert str(exc) in blocker.args[0]
            assert window.table.cell_text(CONV_W, Column.SQNR) == "error"
            assert window.layer_view.metrics_panel.text(W, "sqnr") == "—"  # type: ignore[attr-defined]
            continue
        controls.granularity_combo.setCurrentIndex(controls.granularity_combo.findData(gkind))
        assert window.doc.config_for(CONV_W) == cfg
        assert_shows(window, CONV_W, expected)
        assert window.table.cell_text(CONV_W, Column.GRANULARITY) == cfg.granularity.label

    # The activation of the same layer, per-tensor only.
    window.doc.select(CONV_A)
    controls.method_combo.setCurrentIndex(controls.method_combo.findData(method))
    expected_cfg = TensorConfig(MethodSpec(method, 99.9 if method is Method.PERCENTILE else
                                           window.doc.config_for(CONV_A).spec.percentile))
    cfg = window.doc.config_for(CONV_A)
    assert cfg.spec.method is method
    assert_shows(window, CONV_A, core_result(window, CONV_A, cfg))
    assert cfg.granularity == expected_cfg.granularity


def test_format_bits_and_symmetry_follow_the_controls(demo_window: MainWindow) -> None:
    window = demo_window
    controls = window.controls
    window.doc.select(CONV_A)
    controls.format_combo.setCurrentIndex(controls.format_combo.findData("uint"))
    controls.bits_spin.setValue(4)
    controls.symmetric_check.setChecked(False)
    cfg = window.doc.config_for(CONV_A)
    assert cfg.fmt == NumberFormat.parse("uint4", symmetric=False)
    assert_shows(window, CONV_A, core_result(window, CONV_A, cfg))
    # Formats an activation cannot take are not offered.
    nf4 = controls.format_combo.findData("nf4")
    assert not controls.format_combo.model().item(nf4).isEnabled()


def test_apply_to_all_layers_of_an_op_type(qtbot: QtBot, demo_window: MainWindow) -> None:
    window = demo_window
    controls = window.controls
    # The Gemm's weights keep the session's default, which follows the CPU detection.
    gemm_weight = window.doc.config_for(TensorKey("classifier.0.weight", W)).fmt
    window.doc.select(CONV_W)
    controls.set_scope(ApplyScope.OP_TYPE)
    with qtbot.waitSignal(window.analysis.finished, timeout=CALIBRATION_MS):
        controls.bits_spin.setValue(4)
    int4 = NumberFormat.parse("int4")
    conv_weights = [t.key for t in window.doc.tensors if t.kind is W and t.layer.op_type == "Conv"]
    assert len(conv_weights) == 4
    for key in conv_weights:
        cfg = window.doc.config_for(key)
        assert cfg.fmt == int4
        assert window.table.cell_text(key, Column.FORMAT) == int4.label
        expected = core_result(window, key, cfg)
        assert window.table.cell_text(key, Column.SQNR) == st.fmt_num(expected.metrics.sqnr_db)
    assert window.doc.config_for(TensorKey("classifier.0.weight", W)).fmt == gemm_weight


def test_dragging_the_clip_region_moves_the_metrics(demo_window: MainWindow) -> None:
    window = demo_window
    window.doc.select(CONV_A)
    hist = window.layer_view.activation_hist  # type: ignore[attr-defined]
    stats = window.doc.stats.tensors["relu"]  # type: ignore[union-attr]
    before = window.doc.result(CONV_A)
    assert before is not None
    for hi in (0.5 * stats.max, 0.25 * stats.max):
        hist.set_region(-hi, hi)  # emits exactly what a mouse drag emits
        cfg = window.doc.config_for(CONV_A)
        assert cfg.spec.method is Method.MANUAL
        lo_m, hi_m = cfg.spec.manual_range  # type: ignore[misc]
        # The stored range is the one the quantizer covers: for the default uint8 asymmetric
        # format the zero point is rounded, so hi may move by less than one step.
        step = (hi_m - lo_m) / 255
        assert hi_m == pytest.approx(hi, abs=step)
        expected = core_result(window, CONV_A, cfg)
        np.testing.assert_allclose(
            expected.metrics.sqnr_db,
            histogram_metrics(stats, lo_m, hi_m, cfg.fmt).sqnr_db,
        )
        assert_shows(window, CONV_A, expected)
        assert window.controls.method_combo.currentData() is Method.MANUAL
        assert window.controls.hi_spin.value() == pytest.approx(hi_m, rel=1e-5)
    assert window.doc.result(CONV_A).metrics.sqnr_db != before.metrics.sqnr_db  # type: ignore[union-attr]
    assert window.isWindowModified()


def test_dragging_a_per_channel_weight_band_sets_one_manual_range(demo_window: MainWindow) -> None:
    window = demo_window
    window.doc.select(CONV_W)
    hist = window.layer_view.weight_hist  # type: ignore[attr-defined]
    hist.set_region(-0.1, 0.1)
    cfg = window.doc.config_for(CONV_W)
    assert cfg.spec.method is Method.MANUAL
    assert cfg.granularity.kind is GranularityKind.PER_TENSOR
    assert_shows(window, CONV_W, core_result(window, CONV_W, cfg))


def test_keyboard_shortcuts_choose_methods_and_toggle_log(demo_window: MainWindow) -> None:
    window = demo_window
    window.doc.select(CONV_A)
    assert window.commands.methods[Method.MSE].shortcut().toString() == "4"
    window.commands.methods[Method.MSE].trigger()
    assert window.doc.config_for(CONV_A).spec.method is Method.MSE
    assert window.commands.log_counts.shortcut().toString() == "Ctrl+L"
    window.commands.log_counts.trigger()
    assert window.layer_view.activation_hist.log_counts  # type: ignore[attr-defined]
    assert window.commands.cancel.shortcut().toString() == "Esc"
    assert window.commands.open_model.shortcut().toString() == "Ctrl+O"
    assert window.commands.open_data.shortcut().toString() == "Ctrl+D"
    assert window.commands.filter.shortcut().toString() == "Ctrl+F"


def test_every_control_explains_itself(make_window: MakeWindow) -> None:
    window = make_window()
    widgets: list[QWidget] = [*window.controls._inputs(), window.table.filter_edit,
                              window.job_status.cancel_button, window.job_status.progress_bar]
    for w in widgets:
        assert w.toolTip(), f"{type(w).__name__} has no tooltip"
    for action in window.actions():
        tip = action.toolTip()
        assert tip and tip != action.text().replace("&", ""), action.text()


def test_table_sorts_by_sqnr_and_filters(demo_window: MainWindow) -> None:
    window = demo_window
    table = window.table
    table.view.sortByColumn(Column.SQNR, Qt.SortOrder.AscendingOrder)
    keys = table.visible_keys()
    sqnrs = [window.doc.result(k).metrics.sqnr_db for k in keys]  # type: ignore[union-attr]
    assert sqnrs == sorted(sqnrs)
    worst_key, _ = window.doc.summary().worst[0]
    assert keys[0] == worst_key
    table.filter_edit.setText("relu")
    assert {k[0] for k in table.visible_keys()} == {"relu", "relu_1", "relu_2", "relu_4"}
    table.filter_edit.setText("")
    assert len(table.visible_keys()) == 12
    # A click on a row shows that layer.
    table.view.setCurrentIndex(table.proxy.index(0, 0))
    assert window.doc.selection == keys[0]


# --- background work: cancel, close, errors ------------------------------------------------------


def test_cancel_a_calibration_midway(qtbot: QtBot, make_window: MakeWindow) -> None:
    window = make_window(batch_size=1)  # 2000 batches: a long run to cancel
    demo = demo_paths()
    with qtbot.waitSignal(window.files.modelLoaded, timeout=CALIBRATION_MS):
        window.files.open_model(demo.model)
    progress: list[int] = []
    window.jobs.progressed.connect(lambda p: progress.append(p.done))
    with qtbot.waitSignal(
        window.jobs.progressed, timeout=CALIBRATION_MS, check_params_cb=lambda p: p.done >= 3
    ):
        window.files.open_data(demo.data)
    assert window.is_calibrating and window.job_status.cancel_button.isVisible()
    done_at_cancel = progress[-1]
    with qtbot.waitSignal(window.files.calibrationCancelled, timeout=CALIBRATION_MS):
        window.commands.cancel.trigger()  # Esc
    assert window.doc.stats is None
    # Stopped within a batch or so of the request (signals already queued may trail).
    assert max(progress) < 2000
    assert "cancelled" in window.status_text().lower()
    qtbot.waitUntil(lambda: not window.busy, timeout=CALIBRATION_MS)
    assert not window.job_status.progress_bar.isVisible()
    assert done_at_cancel < 2000
    # Still usable: calibrate for real.
    window.batch_size = 500
    with qtbot.waitSignal(window.files.calibrated, timeout=CALIBRATION_MS):
        window.files.recalibrate()
    assert window.doc.stats is not None


def test_close_during_calibration_ends_cleanly(qtbot: QtBot, make_window: MakeWindow) -> None:
    window = make_window(batch_size=1)
    with qtbot.waitSignal(
        window.jobs.progressed, timeout=CALIBRATION_MS, check_params_cb=lambda p: p.done >= 2
    ):
        window.files.open_demo()
    assert window.jobs.is_busy
    window.close()
    assert window.jobs.live_threads() == 0
    assert not window.jobs.is_busy
    assert QThreadPool.globalInstance().waitForDone(10_000)


def test_bad_model_shows_an_error_and_the_app_still_works(
    qtbot: QtBot, make_window: MakeWindow, tmp_path: Path
) -> None:
    window = make_window()
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"this is not a protobuf" * 10)
    with qtbot.waitSignal(window.reporter.errorShown, timeout=CALIBRATION_MS) as blocker:
        window.files.open_model(bad)
    message = blocker.args[0]
    assert "broken.onnx" in message and "\n" not in message
    assert window.reporter.dialog is not None and window.reporter.dialog.text() == message
    assert window.status_text().startswith("Error:")
    assert not window.busy
    open_demo(qtbot, window)
    assert window.table.model.leaf_count() == 12


def test_a_bug_in_a_worker_is_reported_with_details(
    qtbot: QtBot, make_window: MakeWindow, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_loader(path: object) -> None:
        raise ZeroDivisionError("oops")

    monkeypatch.setattr(files_module, "load_model", broken_loader)
    window = make_window()
    with qtbot.waitSignal(window.reporter.errorShown, timeout=CALIBRATION_MS) as blocker:
        window.files.open_demo()
    assert "ZeroDivisionError" in blocker.args[0] and "bug" in blocker.args[0]
    assert "Traceback" in window.reporter.last_details
    assert not window.busy


def test_unknown_file_dropped_is_an_error_not_a_crash(
    qtbot: QtBot, make_window: MakeWindow, tmp_path: Path
) -> None:
    window = make_window()
    odd = tmp_path / "notes.txt"
    odd.write_text("hello")
    with qtbot.waitSignal(window.reporter.errorShown, timeout=5_000):
        window.files.open_path(odd)


def test_drop_a_model_and_its_data(qtbot: QtBot, make_window: MakeWindow) -> None:
    window = make_window()
    demo = demo_paths()
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(demo.data)), QUrl.fromLocalFile(str(demo.model))])
    event = QDropEvent(
        QPointF(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.NoModifier,
    )
    with qtbot.waitSignal(window.files.calibrated, timeout=CALIBRATION_MS):
        window.dropEvent(event)
    assert window.doc.data_path == demo.data
    qtbot.waitUntil(lambda: not window.busy, timeout=CALIBRATION_MS)


# --- sessions, statistics and recent files -------------------------------------------------------


def test_session_round_trip_through_the_window(
    qtbot: QtBot, demo_window: MainWindow, make_window: MakeWindow, tmp_path: Path
) -> None:
    window = demo_window
    window.doc.select(CONV_W)
    int4_mse = TensorConfig(MethodSpec(Method.MSE), PerTensor(), NumberFormat.parse("int4"))
    window.controls.apply(int4_mse)
    window.doc.select(CONV_A)
    window.commands.log_counts.trigger()
    stats_path = tmp_path / "demo.qvstats"
    window.files.save_stats_to(stats_path)
    path = tmp_path / "s.qviz.json"
    window.files.save_session_to(path)
    assert not window.isWindowModified()
    assert load_session(path).stats_path == stats_path.resolve()

    other = make_window()
    with qtbot.waitSignal(other.files.calibrated, timeout=CALIBRATION_MS):
        other.files.open_path(path)
    assert other.doc.config == window.doc.config
    assert other.doc.selection == CONV_A
    assert other.commands.log_counts.isChecked()
    assert other.doc.stats is not None and other.doc.stats_path == stats_path.resolve()
    qtbot.waitUntil(lambda: not other.busy, timeout=CALIBRATION_MS)
    assert other.table.cell_text(CONV_W, Column.SQNR) == window.table.cell_text(CONV_W, Column.SQNR)


def test_golden_v1_session_opens(qtbot: QtBot, make_window: MakeWindow) -> None:
    window = make_window()
    with qtbot.waitSignal(window.files.calibrated, timeout=CALIBRATION_MS):
        window.files.open_session(DATA / "session_v1.qviz.json")
    qtbot.waitUntil(lambda: not window.busy, timeout=CALIBRATION_MS)
    assert window.doc.selection == CONV_W
    assert window.table.cell_text(CONV_W, Column.METHOD) == "mse"
    assert window.table.cell_text(CONV_W, Column.GRANULARITY) == "per-group (8)"
    assert window.table.cell_text(TensorKey("relu_1", A), Column.METHOD) == "manual [0, 3.5]"
    assert window.controls.method_combo.currentData() is Method.MSE


def test_stats_file_opens_with_its_model(
    qtbot: QtBot, demo_window: MainWindow, make_window: MakeWindow, tmp_path: Path
) -> None:
    path = tmp_path / "demo.qvstats"
    demo_window.files.save_stats_to(path)
    other = make_window()
    with qtbot.waitSignal(other.files.calibrated, timeout=CALIBRATION_MS):
        other.files.open_path(path)
    assert other.doc.model is not None
    assert other.doc.stats is not None and other.doc.stats.n_samples == 2000


def test_recent_files_are_remembered(qtbot: QtBot, make_window: MakeWindow) -> None:
    demo_window = make_window()
    open_demo(qtbot, demo_window)
    demo = demo_paths()
    recent = demo_window.recent.paths()
    assert demo.model.resolve() in recent and demo.data.resolve() in recent
    # A fresh reader of the same settings file (the next run) sees them too.
    again = RecentFiles(demo_window.recent._settings)
    assert again.paths() == recent
    demo_window.fill_recent_menu()
    names = [a.text() for a in demo_window.commands.recent_menu.actions()]
    assert "model.onnx" in names and "data.npz" in names


def test_weighted_sqnr_in_the_summary_is_the_documents(demo_window: MainWindow) -> None:
    summary = demo_window.doc.summary()
    assert math.isfinite(summary.weighted_sqnr_db)
    text = demo_window.table.summary_label.text().replace("\u00a0", " ")
    assert st.fmt_db(summary.weighted_sqnr_db) in text


# --- the `qviz` command ---------------------------------------------------------------------------


def test_qviz_without_arguments_opens_the_demo_and_calibrates(
    qtbot: QtBot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PySide6.QtWidgets import QApplication

    from qviz.cli.gui import run_gui

    settings = QSettings(str(tmp_path / "cli.ini"), QSettings.Format.IniFormat)
    monkeypatch.setattr(main_window_module, "default_settings", lambda: settings)
    seen: dict[str, object] = {}

    def fake_exec() -> int:
        # Stands in for the event loop: run it until the demo is calibrated, then quit.
        [window] = [
            w for w in QApplication.topLevelWidgets() if isinstance(w, MainWindow) and w.isVisible()
        ]
        qtbot.addWidget(window)
        qtbot.waitUntil(lambda: window.doc.stats is not None and not window.busy,
                        timeout=CALIBRATION_MS)
        seen["title"] = window.windowTitle()
        window.close()
        assert window.jobs.live_threads() == 0
        return 0

    monkeypatch.setattr(QApplication, "exec", staticmethod(fake_exec))
    assert run_gui([]) == 0
    assert str(seen["title"]).startswith("model.onnx")


def test_qviz_rejects_data_without_a_model(capsys: pytest.CaptureFixture[str]) -> None:
    from qviz.cli.gui import run_gui

    assert run_gui(["--data", "x.npz"]) == 2
    assert "needs a model" in capsys.readouterr().err


def test_merged_statistics_open_like_any_other(
    qtbot: QtBot, make_window: MakeWindow, tmp_path: Path
) -> None:
    """Two shards of the demo, merged: the window opens the result with its model."""
    from qviz.core.data.shard import Shard, take_shard
    from qviz.core.stats.merge import MergeInput, merge_stats
    from qviz.core.stats.stats_file import SCHEMA_VERSION

    demo = demo_paths()
    model = load_model(demo.model)
    data = take_shard(load_data(demo.data, model.inputs), Shard(1, 10))
    parts = [
        MergeInput(f"part{k}", SCHEMA_VERSION,
                   run_to_completion(collect_stats(model, take_shard(data, Shard(k, 2)))))
        for k in (1, 2)
    ]
    path = tmp_path / "merged.qvstats"
    save_stats(merge_stats(parts), path)
    window = make_window()
    with qtbot.waitSignal(window.files.calibrated, timeout=CALIBRATION_MS):
        window.files.open_path(path)
    qtbot.waitUntil(lambda: not window.busy, timeout=CALIBRATION_MS)
    assert window.doc.stats is not None and window.doc.stats.n_samples == 200
    assert window.doc.stats.provenance.is_merge
    assert window.table.cell_text(CONV_A, Column.SQNR) != ""
