"""The settings of the selected tensor: method, granularity, format, and where to apply them.

A thin view of the document's selection: it shows the selected tensor's `TensorConfig` (and
follows the document when that changes, by an edit here, a drag, an undo...). Any edit builds a
new `TensorConfig` from the widgets and applies it to the document (`Document.apply`), one undo
step; the document announces the change and every view redraws from it.
"""

from __future__ import annotations

import html
import math
import time
from dataclasses import dataclass

from PySide6.QtCore import Qt
from PySide6.QtGui import QStandardItemModel
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QWidget,
)

from qviz.app.dialogs.error_dialog import ErrorReporter
from qviz.app.views.metrics_panel import elide_middle
from qviz.app.views.transform_controls import TransformControls
from qviz.core.calibration.analysis import TensorKey
from qviz.core.calibration.config import TensorConfig, format_supported, granularity_supported
from qviz.core.calibration.methods import DEFAULT_PERCENTILE, Method, MethodSpec
from qviz.core.document.document import Document
from qviz.core.document.tensors import ApplyScope
from qviz.core.model.loading import TensorKind
from qviz.core.quant.formats import (
    DEFAULT_GROUP_SIZE,
    FormatKind,
    Granularity,
    GranularityKind,
    NumberFormat,
    PerGroup,
)

METHODS: tuple[tuple[Method, str, str], ...] = (
    (Method.MINMAX, "MinMax", "Clip at the observed minimum and maximum: nothing clipped, "
     "but outliers stretch the step"),
    (Method.PERCENTILE, "Percentile", "Clip at the p-th percentile of |x|: trades a few "
     "clipped outliers for a finer step"),
    (Method.ENTROPY, "Entropy", "Range minimizing the KL divergence between the float and "
     "quantized histograms (TensorRT-style)"),
    (Method.MSE, "MSE", "Range minimizing the mean squared quantization error"),
    (Method.MANUAL, "Manual", "Your own clip range: type it here or drag the band on the "
     "histogram"),
    (Method.IMPORTED, "Imported", "The scale and zero point of the quantized model's own Q/DQ "
     "pair for this tensor (a model quantized by another tool)"),
)
GRANULARITIES: tuple[tuple[GranularityKind, str, str], ...] = (
    (GranularityKind.PER_TENSOR, "Per-tensor", "One scale for the whole tensor"),
    (GranularityKind.PER_CHANNEL, "Per-channel", "One scale per output channel (weights only)"),
    (GranularityKind.PER_GROUP, "Per-group", "One scale per block of the reduction axis "
     "(weights only)"),
)
# (combo id, label, tooltip); "int"/"uint" take the bits spin box, the rest have fixed width.
FORMATS: tuple[tuple[str, str, str], ...] = (
    ("int", "INT (signed)", "Signed integer: int8 is what ONNX Runtime's INT8 kernels run"),
    ("uint", "UINT (unsigned)", "Unsigned integer: suits non-negative tensors such as ReLU "
     "outputs"),
    ("fp8_e4m3fn", "FP8 E4M3FN", "8-bit float, 4 exponent bits: more precision, max 448"),
    ("fp8_e5m2", "FP8 E5M2", "8-bit float, 5 exponent bits: more range, max 57344"),
    ("nf4", "NF4", "4-bit NormalFloat codebook (QLoRA), weights only, simulated"),
    ("mxfp4", "MXFP4", "OCP Microscaling FP4: E2M1 values, a power-of-two scale per block of "
     "32; weights only, simulated"),
    ("nvfp4", "NVFP4", "NVIDIA FP4: E2M1 values, an E4M3 scale per block of 16 times one "
     "per tensor; weights only, simulated"),
)
_FORMAT_KIND = {
    "int": FormatKind.INT, "uint": FormatKind.INT, "fp8_e4m3fn": FormatKind.FP8_E4M3FN,
    "fp8_e5m2": FormatKind.FP8_E5M2, "nf4": FormatKind.NF4, "mxfp4": FormatKind.MXFP4,
    "nvfp4": FormatKind.NVFP4,
}


@dataclass(frozen=True)
class TensorInfo:
    """What the panel needs to know about the selected tensor besides its config."""

    name: str
    kind: TensorKind
    layer: str
    op_type: str
    current_range: tuple[float, float] | None = None  # clip range now, to seed Manual


class ControlsPanel(QGroupBox):
    """Widgets for the selected tensor's TensorConfig, writing to the document."""

    def __init__(
        self, doc: Document, reporter: ErrorReporter, parent: QWidget | None = None
    ) -> None:
        super().__init__("Quantization settings", parent)
        self._doc = doc
        self._reporter = reporter
        self._info: TensorInfo | None = None
        self._imported: TensorConfig | None = None  # the selected tensor's imported setting
        self._updating = False
        #: Milliseconds the last edit took to reach every view (the document's listeners
        #: redraw synchronously), as the status line reports it.
        self.last_update_ms = float("nan")

        # Two fixed lines, long names elided: a label that wraps inside the splitter loses its
        # last line (the pane keeps the height it had), and a long name would widen the pane.
        self.target_label = QLabel("No tensor selected")
        self.target_label.setMinimumHeight(2 * self.target_label.fontMetrics().lineSpacing() + 4)
        self.target_label.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        self.target_label.setToolTip("The tensor these settings are shown for")

        self.method_combo = QComboBox()
        for i, (method, label, tip) in enumerate(METHODS):
            self.method_combo.addItem(f"{label}  ({i + 1})", method)
            self.method_combo.setItemData(i, tip, Qt.ItemDataRole.ToolTipRole)
        self.method_combo.setToolTip("Calibration method that picks the clip range (keys 1–5)")

        self.percentile_spin = QDoubleSpinBox()
        self.percentile_spin.setRange(50.0, 100.0)
        self.percentile_spin.setDecimals(4)
        self.percentile_spin.setSingleStep(0.01)
        self.percentile_spin.setSuffix(" %")
        self.percentile_spin.setValue(DEFAULT_PERCENTILE)
        self.percentile_spin.setKeyboardTracking(False)
        self.percentile_spin.setToolTip("Percentile p for the Percentile method (of |x|)")

        self.lo_spin = _range_spin("Low end of the manual clip range")
        self.hi_spin = _range_spin("High end of the manual clip range")

        self.granularity_combo = QComboBox()
        for i, (gkind, label, tip) in enumerate(GRANULARITIES):
            self.granularity_combo.addItem(label, gkind)
            self.granularity_combo.setItemData(i, tip, Qt.ItemDataRole.ToolTipRole)
        self.granularity_combo.setToolTip(
            "How many scales: per tensor, per output channel, or per group (activations are "
            "per-tensor: that is what INT8 kernels accept)"
        )
        self.group_spin = QSpinBox()
        self.group_spin.setRange(1, 65536)
        self.group_spin.setValue(DEFAULT_GROUP_SIZE)
        self.group_spin.setKeyboardTracking(False)
        self.group_spin.setToolTip("Group size: values per scale along the reduction axis")

        self.format_combo = QComboBox()
        for i, (fid, label, tip) in enumerate(FORMATS):
            self.format_combo.addItem(label, fid)
            self.format_combo.setItemData(i, tip, Qt.ItemDataRole.ToolTipRole)
        self.format_combo.setToolTip("Number format the tensor is quantized to")
        self.bits_spin = QSpinBox()
        self.bits_spin.setRange(2, 16)
        self.bits_spin.setValue(8)
        self.bits_spin.setSuffix(" bits")
        self.bits_spin.setToolTip(
            "Bit width of integer formats (2–8 or 16; ONNX runs 4, 8 and 16 — 16-bit "
            "activations with 8-bit weights are A16W8)"
        )
        self._bits = 8
        self.symmetric_check = QCheckBox("Symmetric")
        self.symmetric_check.setChecked(True)
        self.symmetric_check.setToolTip(
            "Symmetric: zero point 0, range ±max|x|. Off: asymmetric, the range fits [min, max]"
        )

        self.scope_combo = QComboBox()
        self.scope_combo.setToolTip(
            "Which tensors a change applies to: this one, every tensor of the same kind in "
            "layers of this op type, or every tensor of this kind"
        )
        self.apply_button = QPushButton("Apply")
        self.apply_button.setToolTip(
            "Apply the settings shown to the tensors chosen in 'Apply to' now"
        )

        form = QFormLayout(self)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.addRow(self.target_label)
        form.addRow("Method", _row(self.method_combo, QLabel("p"), self.percentile_spin))
        form.addRow("Manual range", _row(self.lo_spin, QLabel("to"), self.hi_spin))
        form.addRow("Granularity", _row(self.granularity_combo, QLabel("group"), self.group_spin))
        form.addRow("Format", _row(self.format_combo, self.bits_spin, self.symmetric_check))
        # --- transforms (qviz.core.transforms): their own row, applied like any setting ---
        self.transforms = TransformControls()
        form.addRow("Transforms", self.transforms)
        self.transforms.changed.connect(self._emit)
        form.addRow("Apply to", _row(self.scope_combo, self.apply_button))

        self.method_combo.currentIndexChanged.connect(self._on_method_changed)
        self.percentile_spin.valueChanged.connect(self._emit)
        self.lo_spin.valueChanged.connect(self._emit)
        self.hi_spin.valueChanged.connect(self._emit)
        self.granularity_combo.currentIndexChanged.connect(self._emit)
        self.group_spin.valueChanged.connect(self._emit)
        self.format_combo.currentIndexChanged.connect(self._emit)
        self.bits_spin.valueChanged.connect(self._on_bits)
        self.symmetric_check.toggled.connect(self._emit)
        self.apply_button.clicked.connect(self._emit)
        self.set_tensor(None, None)
        doc.events.selection.connect(self.show_selection)
        doc.events.model.connect(self.show_selection)
        doc.events.config.connect(self._on_changed)
        doc.events.results.connect(self._on_changed)

    # ----------------------------------------------------------------- following the document
    def show_selection(self) -> None:
        doc = self._doc
        key = doc.selection
        if doc.model is None or key is None or not doc.has(key):
            self.set_tensor(None, None)
            return
        tensor = doc.tensor(key)
        shown = doc.result(key)
        current = None if shown is None else shown.metrics.envelope
        info = TensorInfo(key.name, key.kind, tensor.layer.name, tensor.layer.op_type, current)
        self.set_tensor(info, doc.config_for(key))

    def _on_changed(self, keys: tuple[TensorKey, ...]) -> None:
        if self._doc.selection in keys:
            self.show_selection()

    # ----------------------------------------------------------------- public API
    def set_tensor(self, info: TensorInfo | None, cfg: TensorConfig | None) -> None:
        """Show `cfg` for the tensor `info` (None: nothing selected, all disabled)."""
        self._updating = True
        try:
            self._info = info
            enabled = info is not None and cfg is not None
            for w in self._inputs():
                w.setEnabled(enabled)
            if info is None or cfg is None:
                self.target_label.setText("No tensor selected")
                self.target_label.setToolTip("The tensor these settings are shown for")
                return
            kind_word = "weight" if info.kind is TensorKind.WEIGHT else "activation"
            owner = f"{kind_word} of {elide_middle(info.layer, 52)} ({info.op_type})"
            self.target_label.setText(f"<b>{html.escape(elide_middle(info.name, 56))}</b><br>"
                                      f"{html.escape(owner)}")
            self.target_label.setToolTip(f"{info.name} — {kind_word} of {info.layer} "
                                         f"({info.op_type})")
            self._fill_scope(info)
            self._imported = self._imported_config()
            _enable_items(self.method_combo,
                          lambda m: m is not Method.IMPORTED or self._imported is not None)
            _set_data(self.method_combo, cfg.spec.method)
            if cfg.spec.percentile is not None:
                self.percentile_spin.setValue(cfg.spec.percentile)
            manual = cfg.spec.manual_range or info.current_range
            if manual is not None and all(math.isfinite(v) for v in manual):
                self.lo_spin.setValue(manual[0])
                self.hi_spin.setValue(manual[1])
            _set_data(self.granularity_combo, cfg.granularity.kind)
            if isinstance(cfg.granularity, PerGroup):
                self.group_spin.setValue(cfg.granularity.group_size)
            fid = cfg.fmt.kind.value if cfg.fmt.kind is not FormatKind.INT else (
                "int" if cfg.fmt.signed else "uint"
            )
            _set_data(self.format_combo, fid)
            self.bits_spin.setMaximum(16 if cfg.fmt.bits == 16 else 8)  # 16: imported int16
            self.bits_spin.setValue(cfg.fmt.bits)
            self._bits = cfg.fmt.bits
            self.symmetric_check.setChecked(cfg.fmt.symmetric)
            self.transforms.show_for(info.kind, cfg.transforms)
            # Only offer what this kind of tensor can take.
            allowed_g = granularity_supported(info.kind, cfg.fmt)
            _enable_items(self.granularity_combo, lambda g: g in allowed_g)
            allowed_f = format_supported(info.kind)
            _enable_items(self.format_combo, lambda f: _FORMAT_KIND[f] in allowed_f)
            self._sync_enabled()
        finally:
            self._updating = False

    def config(self) -> TensorConfig | None:
        """The TensorConfig the widgets show now."""
        if self._info is None:
            return None
        method = self.method_combo.currentData()
        if method is Method.IMPORTED and self._imported is not None:
            return self._imported  # the pair's parameters fix its format and granularity
        manual = None
        if method is Method.MANUAL:
            manual = (self.lo_spin.value(), self.hi_spin.value())
        spec = MethodSpec.of(method, self.percentile_spin.value(), manual)
        gkind = self.granularity_combo.currentData()
        granularity = Granularity.of(gkind, self.group_spin.value())
        fid = self.format_combo.currentData()
        if fid in ("int", "uint"):
            text = f"{fid}{self.bits_spin.value()}"
        else:
            text = fid
        fmt = NumberFormat.parse(text, symmetric=self.symmetric_check.isChecked())
        if fmt.block_size is not None:  # a block format brings its own blocks
            granularity = Granularity.of(GranularityKind.PER_GROUP, fmt.block_size)
        return TensorConfig(spec, granularity, fmt, transforms=self.transforms.transforms())

    def scope(self) -> ApplyScope:
        return self.scope_combo.currentData() or ApplyScope.TENSOR

    def set_scope(self, scope: ApplyScope) -> None:
        _set_data(self.scope_combo, scope)

    def choose_method(self, method: Method) -> None:
        """Select a method as if the user picked it (keyboard shortcuts 1–5)."""
        if self._info is not None and (method is not Method.IMPORTED or self._imported):
            _set_data(self.method_combo, method)

    # ----------------------------------------------------------------- internals
    def _inputs(self) -> list[QWidget]:
        return [
            self.method_combo, self.percentile_spin, self.lo_spin, self.hi_spin,
            self.granularity_combo, self.group_spin, self.format_combo, self.bits_spin,
            self.symmetric_check, self.scope_combo, self.apply_button, *self.transforms.inputs(),
        ]

    def _imported_config(self) -> TensorConfig | None:
        doc, key = self._doc, self._doc.selection
        if doc.model is None or doc.model.imported is None or key is None:
            return None
        from qviz.core.imported.configs import imported_tensor_config

        return imported_tensor_config(doc.model, key, doc.tensor(key).layer)

    def _fill_scope(self, info: TensorInfo) -> None:
        kind_word = "weights" if info.kind is TensorKind.WEIGHT else "activations"
        current = self.scope()
        self.scope_combo.clear()
        self.scope_combo.addItem("This tensor", ApplyScope.TENSOR)
        self.scope_combo.addItem(f"All {info.op_type} {kind_word}", ApplyScope.OP_TYPE)
        self.scope_combo.addItem(f"All {kind_word}", ApplyScope.ALL)
        _set_data(self.scope_combo, current)

    def _sync_enabled(self) -> None:
        """Grey out what does not apply to the current choices, so nothing looks dead."""
        if self._info is None:
            return
        method = self.method_combo.currentData()
        self.percentile_spin.setEnabled(method is Method.PERCENTILE)
        self.lo_spin.setEnabled(method is Method.MANUAL)
        self.hi_spin.setEnabled(method is Method.MANUAL)
        per_group = self.granularity_combo.currentData() is GranularityKind.PER_GROUP
        # An imported pair's parameters fix its granularity and format.
        free = method is not Method.IMPORTED
        self.granularity_combo.setEnabled(free)
        self.format_combo.setEnabled(free)
        self.group_spin.setEnabled(per_group and free)
        is_int = self.format_combo.currentData() in ("int", "uint")
        self.bits_spin.setEnabled(is_int and free)
        self.symmetric_check.setEnabled(is_int and free)
        if not is_int:
            fid = self.format_combo.currentData()
            self.bits_spin.blockSignals(True)
            self.bits_spin.setValue(4 if fid in ("nf4", "mxfp4", "nvfp4") else 8)
            self.bits_spin.blockSignals(False)
        self.transforms.sync()
        # Manual ranges and imported pairs belong to one tensor; copying one to every layer
        # makes no sense.
        manual = method in (Method.MANUAL, Method.IMPORTED)
        self.scope_combo.setEnabled(not manual)
        self.apply_button.setEnabled(not manual)

    def _on_bits(self, value: int) -> None:
        # Integer widths are 2..8 and 16: stepping past 8 goes to 16 and back.
        if 8 < value < 16:
            self.bits_spin.blockSignals(True)
            self.bits_spin.setValue(16 if value > self._bits else 8)
            self.bits_spin.blockSignals(False)
        self._bits = self.bits_spin.value()
        self._emit()

    def _on_method_changed(self) -> None:
        if not self._updating and self.method_combo.currentData() is Method.MANUAL:
            # Start from where the range is now, so choosing Manual changes nothing yet.
            info = self._info
            if info is not None and info.current_range is not None:
                self._updating = True
                self.lo_spin.setValue(info.current_range[0])
                self.hi_spin.setValue(info.current_range[1])
                self._updating = False
        self._emit()

    def _emit(self) -> None:
        self._sync_enabled()
        if self._updating:
            return
        cfg = self.config()
        key = self._doc.selection
        if cfg is None or key is None:
            return
        own = cfg.spec.method in (Method.MANUAL, Method.IMPORTED)
        scope = ApplyScope.TENSOR if own else self.scope()
        self.apply(cfg, scope)

    def apply(self, cfg: TensorConfig, scope: ApplyScope = ApplyScope.TENSOR) -> None:
        """Apply `cfg` to the selected tensor, its op type or all its kind (one undo step)."""
        key = self._doc.selection
        if key is None:
            return
        with self._reporter.guard("Applying the settings"):
            started = time.perf_counter()
            changed = self._doc.apply(key, cfg, scope)
            self.last_update_ms = (time.perf_counter() - started) * 1000.0
            self._reporter.status(
                f"{self._doc.history.current.label} ({len(changed)} changed; redrawn in "
                f"{self.last_update_ms:.0f} ms)"
            )


def _range_spin(tip: str) -> QDoubleSpinBox:
    spin = QDoubleSpinBox()
    spin.setRange(-1e12, 1e12)
    spin.setDecimals(6)
    spin.setKeyboardTracking(False)
    spin.setToolTip(tip)
    return spin


def _row(*widgets: QWidget) -> QWidget:
    box = QWidget()
    layout = QHBoxLayout(box)
    layout.setContentsMargins(0, 0, 0, 0)
    for i, w in enumerate(widgets):
        layout.addWidget(w, 1 if i == 0 else 0)
    return box


def _set_data(combo: QComboBox, value: object) -> None:
    index = combo.findData(value)
    if index >= 0:
        combo.setCurrentIndex(index)


def _enable_items(combo: QComboBox, allowed: object) -> None:
    model = combo.model()
    if not isinstance(model, QStandardItemModel):
        return
    for i in range(combo.count()):
        item = model.item(i)
        if item is not None:
            item.setEnabled(bool(allowed(combo.itemData(i))))  # type: ignore[operator]
