"""The transform knobs of the quantization settings: one row each, for the selected tensor.

Activations: SmoothQuant (off, a strength alpha in [0, 1], or auto) and cross-layer
equalization — both rescale the activation's channels, shared by every layer reading it.
Weights: GPTQ rounding and bias correction. The row belongs to the settings panel
(`ControlsPanel`), which builds the tensor's `TensorConfig` with `transforms()` and applies it
like any other setting: one undo step, "this tensor / op type / all" alike.
"""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QHBoxLayout, QWidget

from qviz.core.model.loading import TensorKind
from qviz.core.transforms.settings import NO_TRANSFORMS, SmoothQuant, Transforms

_OFF, _ALPHA, _AUTO = "off", "alpha", "auto"


class TransformControls(QWidget):
    """SmoothQuant and equalization for activations, GPTQ and bias correction for weights."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._kind = TensorKind.ACTIVATION
        self.smooth_combo = QComboBox()
        self.smooth_combo.addItem("SmoothQuant off", _OFF)
        self.smooth_combo.addItem("SmoothQuant α", _ALPHA)
        self.smooth_combo.addItem("SmoothQuant auto", _AUTO)
        self.smooth_combo.setToolTip(
            "Move loud activation channels into the weights: X/s and s·W, s = "
            "max|X|^α / max|W|^(1−α) per channel. Auto: per layer, the α whose estimated "
            "output error is smallest. Folded into the LayerNorm / RMSNorm / layer before "
            "it where the graph allows, an explicit Mul where not."
        )
        self.alpha_spin = QDoubleSpinBox()
        self.alpha_spin.setRange(0.0, 1.0)
        self.alpha_spin.setSingleStep(0.05)
        self.alpha_spin.setDecimals(2)
        self.alpha_spin.setValue(0.5)
        self.alpha_spin.setKeyboardTracking(False)
        self.alpha_spin.setToolTip("SmoothQuant migration strength α (0: none, 1: all)")
        self.equalize_check = QCheckBox("Equalize")
        self.equalize_check.setToolTip(
            "Cross-layer equalization: balance the ranges of a Conv/Gemm pair joined by ReLU, "
            "ReLU6, LeakyReLU or nothing (helps per-tensor weight scales)"
        )
        self.gptq_check = QCheckBox("GPTQ")
        self.gptq_check.setToolTip(
            "Round the weight column by column against its input's Gram matrix (the grid is "
            "unchanged; needs statistics collected with Gram matrices)"
        )
        self.bias_check = QCheckBox("Bias correction")
        self.bias_check.setToolTip(
            "Remove each output channel's expected shift from weight quantization, using the "
            "input's per-channel means"
        )
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        for w in (self.smooth_combo, self.alpha_spin, self.equalize_check, self.gptq_check,
                  self.bias_check):
            layout.addWidget(w)
        layout.addStretch(1)
        self.smooth_combo.currentIndexChanged.connect(self._on_edit)
        self.alpha_spin.valueChanged.connect(self._on_edit)
        for box in (self.equalize_check, self.gptq_check, self.bias_check):
            box.toggled.connect(self._on_edit)
        self.show_for(TensorKind.ACTIVATION, NO_TRANSFORMS)

    def inputs(self) -> list[QWidget]:
        return [self.smooth_combo, self.alpha_spin, self.equalize_check, self.gptq_check,
                self.bias_check]

    def show_for(self, kind: TensorKind, t: Transforms) -> None:
        """Show `t` with the knobs `kind` takes (the others hidden); emits nothing."""
        self._kind = kind
        widgets = self.inputs()
        for w in widgets:
            w.blockSignals(True)
        try:
            act = kind is TensorKind.ACTIVATION
            for w in (self.smooth_combo, self.alpha_spin, self.equalize_check):
                w.setVisible(act)
            for w in (self.gptq_check, self.bias_check):
                w.setVisible(not act)
            sq = t.smoothquant
            mode = _OFF if sq is None else (_AUTO if sq.auto else _ALPHA)
            self.smooth_combo.setCurrentIndex(self.smooth_combo.findData(mode))
            if sq is not None and sq.alpha is not None:
                self.alpha_spin.setValue(sq.alpha)
            self.equalize_check.setChecked(t.equalize)
            self.gptq_check.setChecked(t.gptq)
            self.bias_check.setChecked(t.bias_correction)
            self.sync()
        finally:
            for w in widgets:
                w.blockSignals(False)

    def transforms(self) -> Transforms:
        """The transforms the knobs show (only those the tensor's kind takes)."""
        if self._kind is TensorKind.WEIGHT:
            return Transforms(gptq=self.gptq_check.isChecked(),
                              bias_correction=self.bias_check.isChecked())
        mode = self.smooth_combo.currentData()
        smooth = None
        if mode == _AUTO:
            smooth = SmoothQuant(None)
        elif mode == _ALPHA:
            smooth = SmoothQuant(round(float(self.alpha_spin.value()), 4))
        return Transforms(smoothquant=smooth, equalize=self.equalize_check.isChecked())

    def sync(self) -> None:
        """Alpha is typed only for "SmoothQuant α" (and while the knobs are enabled)."""
        alpha = self.smooth_combo.currentData() == _ALPHA
        self.alpha_spin.setEnabled(self.smooth_combo.isEnabled() and alpha)

    def _on_edit(self) -> None:
        self.sync()
        self.changed.emit()
