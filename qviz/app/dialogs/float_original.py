"""Asking for the float original of a quantized model (File ▸ Open Quantized Model…, or any
open that turns out to be a quantized model)."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QFileDialog, QMessageBox, QWidget

from qviz.app.controllers.files import FloatChoice

__all__ = ["ask_float_original"]

FLOAT_FILTER = "ONNX models (*.onnx);;All files (*)"


def ask_float_original(parent: QWidget, quantized: Path) -> FloatChoice | None:
    """The user's answer: a float original, derive one, or None (cancel)."""
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Question)
    box.setWindowTitle("Quantized model")
    box.setText(f"<b>{quantized.name}</b> is already quantized (Q/DQ or QOperator).")
    box.setInformativeText(
        "With its float original qviz measures what each Q/DQ pair costs. Without it, qviz "
        "derives a float model by removing the pairs and dequantizing the weights: the "
        "weights' own quantization error then cannot be seen."
    )
    choose = box.addButton("Choose Float Model…", QMessageBox.ButtonRole.AcceptRole)
    derive = box.addButton("Derive from the Quantized Model", QMessageBox.ButtonRole.ActionRole)
    box.addButton(QMessageBox.StandardButton.Cancel)
    box.setDefaultButton(choose)
    box.exec()
    clicked = box.clickedButton()
    if clicked is derive:
        return FloatChoice(None)
    if clicked is not choose:
        return None
    name, _ = QFileDialog.getOpenFileName(
        parent, f"Float original of {quantized.name}", str(quantized.parent), FLOAT_FILTER
    )
    return FloatChoice(Path(name)) if name else None
