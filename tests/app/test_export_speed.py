"""File ▸ Export of a Q/DQ model times it against float at the chosen batch: the dialog says
how fast it ran, and warns in one line when it is slower (int4 weights on the demo: no integer
kernel on CPU), with the file written either way. Offscreen, waits on signals."""

from __future__ import annotations

from pathlib import Path

import onnx
from pytestqt.qtbot import QtBot

from qviz.app.dialogs.export_dialog import ExportResult
from qviz.app.main_window import MainWindow
from qviz.core.calibration.analysis import TensorKey
from qviz.core.calibration.config import TensorConfig
from qviz.core.calibration.methods import Method, MethodSpec
from qviz.core.document.document import ApplyScope
from qviz.core.files.export import ExportFormat
from qviz.core.model.loading import TensorKind
from qviz.core.quant.formats import NumberFormat, PerAxis
from tests.app.evaluation_fixtures import RUN_MS, demo_stats_file, evaluated_window, make_window

__all__ = ["demo_stats_file", "evaluated_window", "make_window"]  # fixtures used here

INT4 = TensorConfig(MethodSpec(Method.MINMAX), PerAxis(), NumberFormat.parse("int4"))


def export_qdq(qtbot: QtBot, window: MainWindow, path: Path, batch: int) -> ExportResult:
    dialog = window.open_export_dialog()
    assert dialog is not None
    dialog.set_format(ExportFormat.QDQ)
    assert dialog.speed_options.isVisible() and dialog.speed_check.isChecked()
    dialog.speed_batch_spin.setValue(batch)
    dialog.threads_spin.setValue(1)
    dialog.set_path(path)
    with qtbot.waitSignal(dialog.exported, timeout=RUN_MS) as blocker:
        assert dialog.export_now()
    result = blocker.args[0]
    assert isinstance(result, ExportResult) and path.is_file()
    onnx.checker.check_model(onnx.load(path))
    text = dialog.status_label.text()
    assert "Wrote" in text
    check = result.speed
    assert check is not None and not result.speed_problem
    assert check.speed.batch_size == batch and check.speed.threads == 1
    assert not check.random_input  # the session's data, not noise
    assert dialog.speed_text == (check.warning or check.summary)
    assert ("Warning:" in text) == (check.warning is not None)
    dialog.close()
    return result


def test_export_dialog_times_the_model_and_warns_when_slower(
    qtbot: QtBot, evaluated_window: MainWindow, tmp_path: Path
) -> None:
    window = evaluated_window
    int8 = export_qdq(qtbot, window, tmp_path / "int8.onnx", batch=4)
    assert int8.speed is not None
    # Every weight in int4: ORT has no 4-bit conv/gemm kernel, so each weight is dequantized
    # on every run and the layers run in float behind Q/DQ nodes.
    window.doc.select(TensorKey("features.3.weight", TensorKind.WEIGHT))
    window.controls.apply(INT4, ApplyScope.ALL)
    int4 = export_qdq(qtbot, window, tmp_path / "int4.onnx", batch=4)
    check = int4.speed
    assert check is not None and check.slower and check.warning is not None
    assert check.warning.startswith("SLOWER than float")
    assert "weights in int4" in check.warning
    assert check.speedup < int8.speed.speedup


def test_the_slow_layers_box_leaves_slow_kernels_float_by_default(
    qtbot: QtBot, evaluated_window: MainWindow, tmp_path: Path
) -> None:
    """Ticked (the default): each layer the measurement found slow is written float and
    named in the notes; unticked: every layer is written quantized."""
    window = evaluated_window
    assert window.doc.model is not None
    layers = [layer.name for layer in window.doc.model.layers]

    def float_weights(path: Path) -> set[str]:
        names = {i.name for i in onnx.load(path).graph.initializer}
        return {name for name in layers if f"{name}.weight" in names}

    for ticked in (True, False):
        dialog = window.open_export_dialog()
        assert dialog is not None
        dialog.set_format(ExportFormat.QDQ)
        assert dialog.slow_layers_check.isChecked()  # on by default
        dialog.slow_layers_check.setChecked(ticked)
        dialog.threads_spin.setValue(1)
        path = tmp_path / f"slow_{ticked}.onnx"
        dialog.set_path(path)
        with qtbot.waitSignal(dialog.exported, timeout=RUN_MS) as blocker:
            assert dialog.export_now()
        result = blocker.args[0]
        dialog.close()
        named = {n.split()[0] for n in result.notes if " left float: " in n}
        assert float_weights(path) == named
        if not ticked:
            assert named == set()
