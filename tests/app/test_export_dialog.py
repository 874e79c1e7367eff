"""File ▸ Export…: every format written from the window to tmp_path, read back; a bad path is
reported and the app keeps working. Offscreen, waits on signals, no sleeps."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
from pytestqt.qtbot import QtBot

from qviz.app.dialogs.export_dialog import ExportDialog, ExportResult, default_name
from qviz.app.main_window import MainWindow
from qviz.core.calibration.analysis import TensorKey, analyze
from qviz.core.files.config_file import load_config, results_from_saved
from qviz.core.files.export import ExportFormat, load_ort_overrides, read_trt_cache, trt_scale
from qviz.core.model.loading import TensorKind
from qviz.core.quant.formats import NumberFormat
from tests.app.evaluation_fixtures import (
    RUN_MS,
    MakeWindow,
    demo_stats_file,
    evaluated_window,
    make_window,
)

__all__ = ["demo_stats_file", "evaluated_window", "make_window"]  # fixtures used here


def open_dialog(window: MainWindow) -> ExportDialog:
    dialog = window.open_export_dialog()
    assert dialog is not None and dialog.isVisible()
    return dialog


def export(qtbot: QtBot, dialog: ExportDialog, fmt: ExportFormat, path: Path) -> ExportResult:
    dialog.set_format(fmt)
    dialog.set_path(path)
    with qtbot.waitSignal(dialog.exported, timeout=RUN_MS) as blocker:
        assert dialog.export_now()
    result = blocker.args[0]
    assert isinstance(result, ExportResult) and result.fmt is fmt
    assert "Wrote" in dialog.status_label.text()
    return result


def no_temporaries(folder: Path) -> bool:
    return not any(p.name.endswith(".tmp") for p in folder.rglob("*"))


def test_every_format_is_written_and_reads_back(
    qtbot: QtBot, evaluated_window: MainWindow, tmp_path: Path
) -> None:
    window = evaluated_window
    doc = window.doc
    assert doc.model is not None and doc.stats is not None
    results = analyze(doc.model, doc.stats, doc.config)
    dialog = open_dialog(window)

    (tmp_path / "out").mkdir()  # a save dialog offers existing folders only
    qdq = tmp_path / "out" / "model.qdq.onnx"
    export(qtbot, dialog, ExportFormat.QDQ, qdq)
    graph = onnx.load(str(qdq))
    onnx.checker.check_model(graph)
    ops = {n.op_type for n in graph.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops

    config = tmp_path / "out" / "model.qviz-config.json"
    export(qtbot, dialog, ExportFormat.CONFIG, config)
    saved = load_config(config)
    assert saved.quant_config == doc.config
    assert saved.model_sha256 == doc.model.sha256
    reloaded = results_from_saved(doc.model, saved)
    assert [(r.name, r.kind) for r in reloaded] == [(r.name, r.kind) for r in results]
    for a, b in zip(reloaded, results, strict=True):
        np.testing.assert_array_equal(a.qparams.scale, b.qparams.scale)

    overrides = tmp_path / "out" / "model.ort-overrides.json"
    export(qtbot, dialog, ExportFormat.ORT_OVERRIDES, overrides)
    loaded = load_ort_overrides(overrides)
    assert set(loaded) == {r.name for r in results}

    cache = tmp_path / "out" / "model.cache"
    dialog.trt_version_edit.setText("8501")
    export(qtbot, dialog, ExportFormat.TRT_CACHE, cache)
    header, scales = read_trt_cache(cache)
    assert header == "TRT-8501-EntropyCalibration2"
    acts = [r for r in results if r.kind is TensorKind.ACTIVATION]
    assert scales == {r.name: trt_scale(r) for r in acts}

    page = tmp_path / "out" / "report.html"
    assert dialog.include_evaluation_check.isEnabled()
    assert dialog.include_evaluation_check.isChecked()
    result = export(qtbot, dialog, ExportFormat.REPORT, page)
    assert page in result.written and page.read_text().startswith("<!DOCTYPE html>")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    current = window.evaluation.current
    assert current is not None
    assert report["evaluation"]["samples"] == current.evaluation.n_samples
    assert report["verdict"] == ("PASS" if window.model_panel.passed else "FAIL")
    assert [c["criterion"] for c in report["criteria"]] == [
        c.spec for c in window.doc.measures.criteria
    ]
    assert (tmp_path / "out" / "report.depth.svg").is_file()

    markdown = tmp_path / "out" / "plain.md"
    dialog.include_evaluation_check.setChecked(False)
    export(qtbot, dialog, ExportFormat.REPORT, markdown)
    plain = json.loads((tmp_path / "out" / "plain.json").read_text())
    assert plain["evaluation"] is None and plain["criteria"] == []
    assert no_temporaries(tmp_path)
    assert "Exported" in window.status_text()
    dialog.close()


def test_a_bad_path_is_reported_and_the_app_keeps_working(
    qtbot: QtBot, evaluated_window: MainWindow, tmp_path: Path
) -> None:
    window = evaluated_window
    blocker_file = tmp_path / "a-file"
    blocker_file.write_text("not a folder")
    dialog = open_dialog(window)
    dialog.set_format(ExportFormat.QDQ)
    dialog.set_path(blocker_file / "model.onnx")  # a folder that is a file
    with qtbot.waitSignal(window.reporter.errorShown, timeout=RUN_MS) as blocker:
        dialog.export_now()
    message = blocker.args[0]
    assert "cannot write" in message and "bug" not in message
    assert "Export failed" in dialog.status_label.text()
    qtbot.waitUntil(lambda: not dialog.busy)
    assert dialog.export_button.isEnabled()
    assert blocker_file.read_text() == "not a folder"
    assert no_temporaries(tmp_path)

    # A suffix a report cannot have: refused with one clear line, nothing written.
    dialog.set_format(ExportFormat.REPORT)
    dialog.set_path(tmp_path / "report.pdf")
    with qtbot.waitSignal(window.reporter.errorShown, timeout=RUN_MS) as blocker:
        dialog.export_now()
    assert ".pdf" in blocker.args[0]
    assert not (tmp_path / "report.pdf").exists()

    # The same dialog then writes where it can, and the window still evaluates changes.
    export(qtbot, dialog, ExportFormat.QDQ, tmp_path / "good.onnx")
    onnx.load(str(tmp_path / "good.onnx"))
    dialog.close()
    key = TensorKey("features.3.weight", TensorKind.WEIGHT)
    window.doc.select(key)
    cfg = window.doc.config_for(key)
    with qtbot.waitSignal(window.evaluation.evaluated, timeout=RUN_MS):
        window.controls.apply(replace(cfg, fmt=NumberFormat.parse("int4")))


def test_default_names_follow_the_format_until_the_user_types_one(
    evaluated_window: MainWindow, tmp_path: Path
) -> None:
    window = evaluated_window
    dialog = open_dialog(window)
    model_path = window.doc.model_path
    for fmt in ExportFormat:
        dialog.set_format(fmt)
        assert Path(dialog.path_edit.text()).name == default_name(fmt, model_path)
    assert default_name(ExportFormat.QDQ, model_path) == "model.qdq.onnx"
    dialog.set_path(tmp_path / "mine.bin")
    dialog.set_format(ExportFormat.CONFIG)
    assert dialog.path_edit.text() == str(tmp_path / "mine.bin")
    # The TensorRT version must be digits; the field does not take anything else.
    dialog.set_format(ExportFormat.TRT_CACHE)
    assert dialog.trt_version_edit.isVisibleTo(dialog)
    assert not dialog.include_evaluation_check.isVisibleTo(dialog)
    dialog.close()


def test_export_needs_a_model(make_window: MakeWindow) -> None:
    window = make_window()
    assert window.open_export_dialog() is None
    assert "open a model" in window.status_text()


def test_no_export_or_save_replaces_a_file_the_session_reads(
    qtbot: QtBot, evaluated_window: MainWindow, tmp_path: Path
) -> None:
    window = evaluated_window
    doc = window.doc
    assert doc.model_path is not None
    before = doc.model_path.read_bytes()
    dialog = open_dialog(window)
    dialog.set_format(ExportFormat.QDQ)
    dialog.set_path(doc.model_path)  # the model itself
    with qtbot.waitSignal(window.reporter.errorShown, timeout=RUN_MS) as blocker:
        assert not dialog.export_now()
    assert doc.model_path.name in blocker.args[0] and "bug" not in blocker.args[0]
    dialog.close()
    # Saving the session or the statistics onto the model is refused the same way.
    with qtbot.waitSignal(window.reporter.errorShown, timeout=RUN_MS):
        assert not window.files.save_session_to(doc.model_path)
    with qtbot.waitSignal(window.reporter.errorShown, timeout=RUN_MS):
        assert not window.files.save_stats_to(doc.model_path)
    assert doc.model_path.read_bytes() == before
    assert window.files.save_session_to(tmp_path / "fine.qvsession")
