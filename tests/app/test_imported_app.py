"""A quantized model in the app: opened with its float original (or derived), shown as
"imported" everywhere, changed tensor by tensor, compared with qviz's own choice, saved and
reopened. Offscreen; every wait is on a signal or a polled condition."""

from __future__ import annotations

from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from qviz.app.controllers.files import FloatChoice
from qviz.app.main_window import MainWindow
from qviz.app.views.layer_table import Column
from qviz.core.calibration.analysis import TensorKey
from qviz.core.calibration.methods import Method
from qviz.core.demo import demo_paths
from qviz.core.imported.configs import imported_config
from qviz.core.model.loading import TensorKind
from tests.app.evaluation_fixtures import MakeWindow, make_window
from tools.quantized_examples import quantize_demo

__all__ = ["make_window"]  # the fixture, used by name

CALIBRATION_MS = 60_000
RELU = TensorKey("relu", TensorKind.ACTIVATION)


@pytest.fixture(scope="module")
def qdq(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return quantize_demo(tmp_path_factory.mktemp("app") / "demo_qdq.onnx")


def _open(qtbot: QtBot, window: MainWindow, qdq: Path, choice: FloatChoice | None) -> None:
    asked: list[Path] = []

    def ask(path: Path) -> FloatChoice | None:
        asked.append(path)
        return choice

    window.files.ask_float_original = ask
    with qtbot.waitSignal(window.files.calibrated, timeout=CALIBRATION_MS):
        window.files.open_model(qdq, data_path=demo_paths().data)
    qtbot.waitUntil(lambda: not window.busy, timeout=CALIBRATION_MS)
    assert asked == [qdq]


def test_open_with_float_original_shows_the_imported_settings(
    qtbot: QtBot, make_window: MakeWindow, qdq: Path
) -> None:
    window = make_window()
    _open(qtbot, window, qdq, FloatChoice(demo_paths().model))
    doc = window.doc
    assert doc.model is not None and doc.model.imported is not None
    assert doc.config == imported_config(doc.model)
    assert "(quantized)" in window.windowTitle()
    panel = window.model_panel
    assert "float original model.onnx" in panel.imported_label.text()
    assert panel.imported_label.isVisibleTo(window)
    # The table names the method of every imported tensor.
    qtbot.waitUntil(lambda: all(doc.result(t.key) is not None for t in doc.tensors),
                    timeout=CALIBRATION_MS)
    table = window.table
    methods = {table.model.index(row, Column.METHOD).data()
               for row in range(table.model.rowCount())}
    assert methods == {"imported"}

    # The controls show it; another method is one click, Imported (key 6) brings it back.
    doc.select(RELU)
    controls = window.controls
    assert controls.method_combo.currentData() is Method.IMPORTED
    assert not controls.format_combo.isEnabled()  # the pair's parameters fix its format
    imported = doc.config_for(RELU)
    window.commands.methods[Method.MSE].trigger()
    assert doc.config_for(RELU).spec.method is Method.MSE
    assert doc.config_for(RELU).fmt == imported.fmt
    window.commands.methods[Method.IMPORTED].trigger()
    assert doc.config_for(RELU) == imported


def test_compare_with_qviz_choice_pins_the_imported_settings(
    qtbot: QtBot, make_window: MakeWindow, qdq: Path
) -> None:
    window = make_window()
    _open(qtbot, window, qdq, FloatChoice(demo_paths().model))
    doc = window.doc
    assert window.commands.compare_own.isEnabled()
    window.commands.compare_own.trigger()
    assert doc.pinned is not None and doc.pinned.label == "imported"
    assert doc.model is not None
    assert doc.pinned.config == imported_config(doc.model)
    assert doc.config_for(RELU).spec.method is not Method.IMPORTED
    assert doc.config_for(RELU).quantize
    # Tensors the import left float stay float in qviz's choice too.
    float_keys = [t.key for t in doc.tensors if not doc.pinned.config.for_tensor(*t.key).quantize]
    assert all(not doc.config_for(k).quantize for k in float_keys)
    # The layer view draws A (imported) over B.
    doc.select(RELU)
    data = doc.layer_data()
    assert data is not None and data.activation is not None
    assert data.activation.pinned_band is not None
    doc.undo()
    assert doc.config == imported_config(doc.model)


def test_derived_float_session_round_trip(
    qtbot: QtBot, make_window: MakeWindow, qdq: Path, tmp_path: Path
) -> None:
    window = make_window()
    _open(qtbot, window, qdq, FloatChoice(None))
    doc = window.doc
    assert doc.model is not None and doc.model.imported is not None
    assert doc.model.imported.derived
    assert "derived" in window.model_panel.imported_label.text()
    doc.select(RELU)
    window.commands.methods[Method.MSE].trigger()
    changed = doc.config
    session = tmp_path / "s.qviz.json"
    assert window.files.save_session_to(session)

    again = make_window()
    again.files.ask_float_original = lambda path: pytest.fail("a session knows its float model")
    with qtbot.waitSignal(again.files.calibrated, timeout=CALIBRATION_MS):
        again.files.open_session(session)
    qtbot.waitUntil(lambda: not again.busy, timeout=CALIBRATION_MS)
    assert again.doc.model is not None and again.doc.model.imported is not None
    assert again.doc.model.imported.derived
    assert again.doc.config == changed


def test_with_float_session_reopens_with_it(
    qtbot: QtBot, make_window: MakeWindow, qdq: Path, tmp_path: Path
) -> None:
    window = make_window()
    _open(qtbot, window, qdq, FloatChoice(demo_paths().model))
    session = tmp_path / "f.qviz.json"
    assert window.files.save_session_to(session)
    again = make_window()
    with qtbot.waitSignal(again.files.calibrated, timeout=CALIBRATION_MS):
        again.files.open_session(session)
    qtbot.waitUntil(lambda: not again.busy, timeout=CALIBRATION_MS)
    imported = again.doc.model.imported if again.doc.model is not None else None
    assert imported is not None and imported.float_source == demo_paths().model
    # The imported settings come back with their weights' codes.
    cfg = again.doc.config_for(TensorKey("features.0.weight", TensorKind.WEIGHT))
    assert cfg.spec.imported is not None and cfg.spec.imported.codes is not None


def test_cancelling_the_question_opens_nothing(
    make_window: MakeWindow, qdq: Path
) -> None:
    window = make_window()
    window.files.ask_float_original = lambda path: None
    window.files.open_model(qdq)
    assert window.doc.model is None
    assert "cancelled" in window.statusBar().currentMessage()


def test_the_app_command_line_takes_the_float_original(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from qviz.cli.gui import build_parser, run_gui

    args = build_parser().parse_args(["q.onnx", "--float", "f.onnx"])
    assert args.float_model == Path("f.onnx")
    assert run_gui(["--float", "f.onnx"]) == 2
    assert "--float needs the quantized model" in capsys.readouterr().err


def test_no_save_replaces_the_float_original(
    qtbot: QtBot, make_window: MakeWindow, qdq: Path, tmp_path: Path
) -> None:
    float_copy = tmp_path / "float.onnx"
    float_copy.write_bytes(demo_paths().model.read_bytes())
    before = float_copy.read_bytes()
    window = make_window()
    _open(qtbot, window, qdq, FloatChoice(float_copy))
    assert not window.files.save_session_to(float_copy)
    assert "float.onnx" in window.reporter.last_message
    assert not window.files.save_stats_to(float_copy)
    assert float_copy.read_bytes() == before
