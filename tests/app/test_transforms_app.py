"""Transforms in the window, through real widgets, on the planted-outlier block: the input
channel view flags the planted channels; SmoothQuant from the settings panel rescales the
activation (one undo step) and the weight it feeds is re-measured though its own settings did
not change; the histograms keep the untransformed tensor as a faint overlay and the metrics
panel its "before" numbers; undo restores the first numbers; GPTQ without Gram matrices is a
message, and with them (Run ▸ Recalibrate with Gram Matrices) it works. Offscreen, no sleeps."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from PySide6.QtCore import QSettings, QThreadPool
from pytestqt.qtbot import QtBot

from qviz.app.main_window import MainWindow
from qviz.app.views import plot_style as st
from qviz.core.calibration.analysis import TensorKey
from qviz.core.calibration.methods import Method, MethodSpec
from qviz.core.document.tensors import ApplyScope
from qviz.core.model.loading import TensorKind
from qviz.core.transforms.settings import SmoothQuant, Transforms
from tools.make_decoder import write_block_and_data
from tools.synthetic.block import NORM_OUTPUT, BlockSpec

NORM = TensorKey(NORM_OUTPUT, TensorKind.ACTIVATION)
FC1_W = TensorKey("block.mlp.fc1.weight", TensorKind.WEIGHT)
FC2_W = TensorKey("block.mlp.fc2.weight", TensorKind.WEIGHT)
RUN_MS = 60_000


@pytest.fixture(scope="module")
def block_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    model, calib = write_block_and_data(BlockSpec(), tmp_path_factory.mktemp("b") / "b.onnx",
                                           calib_samples=32, eval_samples=0)
    return model, calib


@pytest.fixture
def window(qtbot: QtBot, tmp_path: Path, block_files: tuple[Path, Path]
           ) -> Iterator[MainWindow]:
    settings = QSettings(str(tmp_path / "qviz.ini"), QSettings.Format.IniFormat)
    w = MainWindow(settings)
    qtbot.addWidget(w)
    w.resize(1600, 1000)
    w.show()
    w.commands.live_evaluation.trigger()  # off: these tests are about settings
    with qtbot.waitSignal(w.files.calibrated, timeout=RUN_MS):
        w.files.open_model(block_files[0], data_path=block_files[1])
    qtbot.waitUntil(lambda: not w.busy, timeout=RUN_MS)
    doc = w.doc
    doc.select(NORM)
    doc.apply(NORM, replace(doc.config_for(NORM), spec=MethodSpec(Method.MSE)), ApplyScope.ALL)
    qtbot.waitUntil(lambda: not w.busy, timeout=RUN_MS)
    yield w
    w.close()
    assert w.jobs.live_threads() == 0 and w.analysis.live_threads() == 0
    assert QThreadPool.globalInstance().waitForDone(10_000)


def test_input_channel_view_flags_the_planted_channels(window: MainWindow) -> None:
    view = window.layer_view.input_channels
    assert view.data is not None
    assert {int(i) for i in view.data.loud} == set(BlockSpec().outlier_plan())
    assert "3 loud channels" in view.caption.text()
    assert "SmoothQuant (settings) moves loud channels" in view.caption.text()
    assert view.data.sqnr_db is not None and view.data.sqnr_db.size == 64


def test_smoothquant_from_the_panel_and_undo(qtbot: QtBot, window: MainWindow) -> None:
    doc, controls, view = window.doc, window.controls, window.layer_view
    before_act = doc.result(NORM)
    before_w = doc.result(FC1_W)
    assert before_act is not None and before_w is not None
    panel = view.metrics_panel
    assert not panel._row_labels["t_sqnr"].isVisible()

    knobs = controls.transforms
    assert knobs.smooth_combo.isVisible() and not knobs.gptq_check.isVisible()
    knobs.smooth_combo.setCurrentIndex(knobs.smooth_combo.findData("auto"))
    qtbot.waitUntil(lambda: not window.busy, timeout=RUN_MS)
    act, w = doc.result(NORM), doc.result(FC1_W)
    assert act is not None and w is not None
    assert doc.config_for(NORM).transforms.smoothquant == SmoothQuant(None)
    assert doc.config_for(FC1_W).transforms == Transforms()  # its own settings: unchanged
    assert w.context and w.context == act.context  # re-measured for the rescaling
    assert act.metrics.sqnr_db > before_act.metrics.sqnr_db + 6
    assert "SmoothQuant auto" in doc.history.current.label
    # Before and after together.
    assert view.activation_hist.before.visible and view.weight_hist.before.visible
    assert panel._row_labels["t_sqnr"].isVisible()
    assert panel.text(TensorKind.ACTIVATION, "t_sqnr") == st.fmt_db(before_act.metrics.sqnr_db)
    assert "LayerNormalization" in panel.text(TensorKind.ACTIVATION, "t_what")
    # The view shows the rescaled channels beside the untransformed ones: the planted channels
    # stand out far less (auto picks alpha for the output error, so one may stay over the
    # flagging threshold).
    after_ch, before_ch = view.input_channels.data, view.input_channels.before
    assert after_ch is not None and before_ch is not None
    assert after_ch.loud.size < before_ch.loud.size == len(BlockSpec().outlier_plan())
    assert "SmoothQuant (settings)" not in view.input_channels.caption.text()
    assert (after_ch.absmax.max() / after_ch.median_absmax
            < before_ch.absmax.max() / before_ch.median_absmax / 5)
    assert window.layer_view.data is not None

    doc.undo()
    qtbot.waitUntil(lambda: not window.busy, timeout=RUN_MS)
    again_act, again_w = doc.result(NORM), doc.result(FC1_W)
    assert again_act is not None and again_w is not None
    assert again_act.metrics.sqnr_db == before_act.metrics.sqnr_db
    assert again_w.metrics.sqnr_db == before_w.metrics.sqnr_db and again_w.context == ""
    assert not view.activation_hist.before.visible
    assert knobs.smooth_combo.currentData() == "off"


def test_gptq_needs_grams_then_works(qtbot: QtBot, window: MainWindow) -> None:
    doc, controls = window.doc, window.controls
    messages: list[str] = []
    window.reporter.errorShown.connect(messages.append)
    doc.select(FC2_W)
    controls.transforms.gptq_check.setChecked(True)
    qtbot.waitUntil(lambda: bool(messages), timeout=RUN_MS)
    assert "Gram" in messages[-1] and "Recalibrate with Gram Matrices" in messages[-1]
    assert doc.result(TensorKey("gelu.out", TensorKind.ACTIVATION)) is not None  # rest works
    with qtbot.waitSignal(window.files.calibrated, timeout=RUN_MS):
        window.commands.recalibrate_gram.trigger()
    qtbot.waitUntil(lambda: not window.busy, timeout=RUN_MS)
    assert window.doc.stats is not None and FC2_W.name in window.doc.stats.grams
    r = doc.analyze(FC2_W)
    assert r is not None and r.applied is not None and r.applied.values is not None
    before, after = r.applied.output_sqnr_db
    assert after > before
    assert "→" in window.layer_view.metrics_panel.text(TensorKind.WEIGHT, "t_output")


def test_refused_transform_is_a_message_and_nothing_changes(qtbot: QtBot,
                                                             window: MainWindow) -> None:
    """Statistics without per-channel histograms: SmoothQuant says 'recollect' once."""
    doc = window.doc
    assert doc.stats is not None
    old = replace(doc.stats, tensors={k: replace(t, moments=None)
                                      for k, t in doc.stats.tensors.items()})
    doc.set_stats(old)
    qtbot.waitUntil(lambda: not window.busy, timeout=RUN_MS)
    messages: list[str] = []
    window.reporter.errorShown.connect(messages.append)
    before = doc.config
    doc.select(NORM)
    window.controls.transforms.smooth_combo.setCurrentIndex(1)  # SmoothQuant α
    assert messages and "recollect to use SmoothQuant" in messages[-1]
    assert doc.config == before
