"""What the layer table's cells say, beside the numbers: columns, colours, the texts and
tooltips of the sensitivity, sim-vs-native and comparison columns, and the summary line.
Read from the document; no widget here."""

from __future__ import annotations

import math
from enum import IntEnum

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor

from qviz.app.views import plot_style as st
from qviz.core.calibration.analysis import TensorKey
from qviz.core.document.document import Document
from qviz.core.document.summary import Summary
from qviz.core.evaluation.display import fmt_metric_change
from qviz.core.model.loading import TensorKind
from qviz.core.runtime.fusion import WEIGHT_ONLY_KERNELS, FusionReport
from qviz.core.runtime.slowdown import NOISE
from qviz.core.runtime.speed import LayerSpeed
from qviz.core.runtime.speed_text import fmt_ms, fmt_speedup, threads_text
from qviz.core.search.sensitivity import LayerSensitivity

# SQNR colour scale. 35 dB is about int8 per-channel quality on a well-behaved tensor; below
# 20 dB the quantization noise is a tenth of the signal's power, which visibly hurts most
# models. The thresholds are a reading aid, not a verdict: end-to-end accuracy decides.
GOOD_DB = 35.0
FAIR_DB = 20.0
GOOD_BG = QColor("#c8e6c9")
FAIR_BG = QColor("#ffe0b2")
BAD_BG = QColor("#ffcdd2")
SQNR_TOOLTIP = (
    f"Signal-to-quantization-noise ratio of the tensor, higher is better. Green ≥ {GOOD_DB:g} dB, "
    f"amber {FAIR_DB:g}–{GOOD_DB:g} dB, red < {FAIR_DB:g} dB."
)

SORT_ROLE = Qt.ItemDataRole.UserRole
KEY_ROLE = Qt.ItemDataRole.UserRole + 1


class Column(IntEnum):
    # The numbers come right after the names: in a narrow pane they must stay in view
    # without scrolling; tensor name, shape and size are reference detail, last.
    LAYER = 0
    KIND = 1
    OP = 2
    SQNR = 3
    CLIPPED = 4
    METHOD = 5
    GRANULARITY = 6
    FORMAT = 7
    TENSOR = 8
    SHAPE = 9
    PARAMS = 10
    # Filled from the last sensitivity report (hidden until there is one); the window moves
    # them beside SQNR, so the end-to-end view sits next to the local one.
    DROP = 11
    RECOVERY = 12
    # From the last native (full) evaluation's fusion report; shown after Clipped.
    NATIVE = 13
    # While a configuration is pinned for comparison: this tensor's SQNR now minus under A.
    VS_A = 14
    # With statistics of the evaluation data: how much of it the calibration range clips.
    EVAL_CLIPPED = 15
    # From the last full evaluation's per-layer speed (hidden until there is one); shown
    # after sim vs native. A layer's numbers on each of its rows.
    FLOAT_MS = 16
    QUANT_MS = 17
    SPEEDUP = 18
    # Group rows: the power mean of the group's SQNRs (shown beside SQNR when there are groups).
    WEIGHTED = 19


HEADERS: dict[Column, tuple[str, str]] = {
    Column.LAYER: (
        "Layer",
        "Layer name: the torch module path when the model records it, grouped by module "
        "(each row names what follows its group's path; the full name is in its tooltip)",
    ),
    Column.KIND: ("Kind", "W = weight (constant), A = activation (input to the layer)"),
    Column.TENSOR: ("Tensor", "Name of the tensor in the ONNX graph"),
    Column.OP: ("Op", "ONNX operator of the layer"),
    Column.SHAPE: ("Shape", "Tensor shape (? = dynamic axis, e.g. batch)"),
    Column.PARAMS: (
        "Params",
        "Number of weight parameters (activations: values per sample; a group: its weights')",
    ),
    Column.METHOD: ("Method", "Calibration method choosing the clip range"),
    Column.GRANULARITY: ("Granularity", "One scale per tensor, per output channel, or per group"),
    Column.FORMAT: ("Format", "Number format the tensor is quantized to"),
    Column.SQNR: ("SQNR dB", SQNR_TOOLTIP + " A group shows its worst tensor's."),
    Column.WEIGHTED: (
        "Weighted dB",
        "A group's weighted SQNR: its tensors' noise-to-signal powers averaged with their "
        "element counts as weights, in dB (as the summary line does for the whole model).",
    ),
    Column.CLIPPED: (
        "Clipped",
        "Fraction of values outside the clip range (saturated); a group shows its largest",
    ),
    Column.DROP: (
        "Δ alone",
        "Δ if quantized alone (Run ▸ Sensitivity): how much the task metric gets worse with "
        "only this layer quantized and the rest float, in the metric's units (accuracy: "
        "points). Larger means the layer hurts more. Grey: measured for earlier settings.",
    ),
    Column.RECOVERY: (
        "Recovery",
        "Recovery if float (Run ▸ Sensitivity): how much the task metric improves with only "
        "this layer kept float and the rest quantized, in the metric's units (accuracy: points). "
        "Larger means keeping this layer float helps more. Grey: measured for earlier settings.",
    ),
    Column.NATIVE: (
        "Sim vs native",
        "Whether ONNX Runtime ran the layer as an integer kernel (✓ and its name; ⚠ when its "
        "u8s8 sums can saturate on this CPU) or left it in float (✗ and why), from the last "
        "full evaluation (Run ▸ Evaluate, Ctrl+R). Grey: measured for earlier settings.",
    ),
    Column.EVAL_CLIPPED: (
        "Eval clipped",
        "Fraction of the evaluation data's values this activation's calibration range clips. "
        "⚠: more than sampling explains (the calibration data does not represent the "
        "evaluation data here). Hover for the ranges.",
    ),
    Column.FLOAT_MS: (
        "Float ms",
        "The layer's time per run in the float model (median over interleaved runs, ONNX "
        "Runtime's profiler, the evaluation's batch), from the last full evaluation (Ctrl+R). "
        "Grey: measured for earlier settings.",
    ),
    Column.QUANT_MS: (
        "Quant ms",
        "The layer's time per run in the quantized model: its kernel plus the Q/DQ nodes and "
        "layout changes ONNX Runtime runs for it (the tooltip breaks it down).",
    ),
    Column.SPEEDUP: (
        "Speed-up",
        "Float ms ÷ quantized ms: above 1 the quantized layer is faster. Red: slower than "
        "float (the tooltip says why and what would fix it).",
    ),
    Column.VS_A: (
        "Δ vs A",
        "The tensor's SQNR now (B) minus its SQNR under the configuration pinned as A "
        "(Edit ▸ Pin as A): positive means B quantizes it better.",
    ),
}
SENSITIVITY_COLUMNS = (Column.DROP, Column.RECOVERY)
SPEED_COLUMNS = (Column.FLOAT_MS, Column.QUANT_MS, Column.SPEEDUP)
STALE_FG = QColor("#9e9e9e")
# The columns a settings change can alter (contiguous); dataChanged covers only these.
VALUE_COLUMNS = (Column.SQNR, Column.CLIPPED, Column.METHOD, Column.GRANULARITY, Column.FORMAT)


def sqnr_background(sqnr_db: float) -> QColor | None:
    if math.isnan(sqnr_db):
        return None
    if sqnr_db >= GOOD_DB:
        return GOOD_BG
    if sqnr_db >= FAIR_DB:
        return FAIR_BG
    return BAD_BG



def vs_pinned(doc: Document, key: TensorKey) -> float | None:
    """SQNR now minus SQNR under the pinned configuration (None: nothing pinned, or one of
    them not measured yet; a tensor kept float counts as exact)."""
    if doc.pinned is None:
        return None
    now, pinned = doc.result(key), doc.pinned_result(key, compute=False)
    b = math.inf if not doc.config_for(key).quantize else (
        None if now is None else float(now.metrics.sqnr_db)
    )
    a = math.inf if not doc.pinned.config.for_tensor(key.name, key.kind).quantize else (
        None if pinned is None else float(pinned.metrics.sqnr_db)
    )
    if a is None or b is None or a == b:
        return None if a is None or b is None else 0.0
    diff = b - a
    return None if math.isnan(diff) else diff


def eval_clipped_text(doc: Document, key: TensorKey) -> str:
    r = doc.representativeness(key)
    if r is None:
        return ""
    return st.fmt_pct(r.eval_clipped) + (" ⚠" if r.flagged else "")


def eval_clipped_tooltip(doc: Document, key: TensorKey) -> str | None:
    r = doc.representativeness(key, eval_alone=True)  # one tensor, on hover: the full answer
    if r is None or r.eval_range is None:
        return None
    verdict = (
        "More than sampling explains: the calibration data does not represent the "
        "evaluation data for this tensor." if r.flagged else
        "Within what sampling explains."
    )
    return "\n".join([
        f"{key.name}: the calibration range {st.fmt_range(*r.cal_range)} clips "
        f"{st.fmt_pct(r.eval_clipped)} of {r.eval_samples} evaluation samples' values "
        f"(and {st.fmt_pct(r.cal_clipped)} of the calibration data's).",
        f"{st.fmt_pct(r.unseen)} of the evaluation values lie beyond anything calibration saw.",
        f"On the evaluation data alone the same method would choose {st.fmt_range(*r.eval_range)}.",
        verdict,
    ])


def native_text(report: FusionReport | None, layer: str) -> str:
    """The sim-vs-native cell: '✓ QLinearConv', '⚠ QLinearConv' (may saturate), '✗ reason'."""
    if report is None:
        return ""
    kernel = report.kernels.get(layer)
    if kernel is not None:
        if layer in report.saturating:
            return f"⚠ {kernel}"
        return f"✓ {kernel}" + (" (weight-only)" if kernel in WEIGHT_ONLY_KERNELS else "")
    reason = report.unfused.get(layer)
    if reason is not None:
        return f"✗ float: {reason}"
    return "—"


def native_tooltip(report: FusionReport | None, layer: str, current: bool) -> str:
    if report is None:
        return (
            "Run ▸ Evaluate (Ctrl+R) to see which layers ONNX Runtime runs as integer kernels"
        )
    kernel = report.kernels.get(layer)
    if kernel is not None:
        text = f"{layer}: ONNX Runtime runs it as {kernel}"
        if layer in report.saturating:
            text += (
                ". On this CPU (AVX2 without VNNI) its u8s8 int8 sums can saturate with 8-bit "
                "weights: native results may differ from the simulation. 7-bit weights (int7) "
                "or the precise int8 kernels avoid it."
            )
    elif layer in report.unfused:
        text = f"{layer}: left in float by ONNX Runtime — {report.unfused[layer]}"
        if layer in report.fixes:
            text += f"\nWhat would fuse it: {report.fixes[layer]}"
    else:
        text = f"{layer}: not quantized when it was evaluated"
    if not current:
        text += "\n(Measured for earlier settings: run Evaluate again, Ctrl+R.)"
    return text


def layer_speed_of(doc: Document, key: TensorKey) -> LayerSpeed | None:
    speed = doc.measures.speed
    return None if speed is None else speed.layer(doc.tensor(key).layer.name)


def speed_value(doc: Document, key: TensorKey, col: Column) -> float | None:
    """The number a speed column holds for a tensor's layer (None: nothing to show)."""
    x = layer_speed_of(doc, key)
    if x is None:
        return None
    if col is Column.FLOAT_MS:
        return x.float_ms
    if col is Column.QUANT_MS:
        return x.quantized_ms
    return x.speedup


def speed_text(doc: Document, key: TensorKey, col: Column) -> str:
    value = speed_value(doc, key, col)
    if value is None:
        return ""
    if col is Column.SPEEDUP:
        return f"{value:.2f}×" if math.isfinite(value) else ""
    return fmt_ms(value)


def speed_background(doc: Document, key: TensorKey) -> QColor | None:
    """Red for a quantized layer slower than float beyond the noise, green when faster."""
    x = layer_speed_of(doc, key)
    if x is None or not x.quantized or not doc.measures.fusion_current:
        return None
    if x.speedup < 1 / (1 + NOISE):
        return BAD_BG
    if x.speedup > 1 + NOISE:
        return GOOD_BG
    return None


def speed_tooltip(doc: Document, key: TensorKey) -> str:
    speed = doc.measures.speed
    if speed is None:
        return "Run ▸ Evaluate (Ctrl+R) to time every layer, float and quantized"
    x = layer_speed_of(doc, key)
    if x is None:
        return "Not timed"
    lines = [
        f"{x.name} — batch {speed.batch_size}, {threads_text(speed.threads)}",
        f"float: {fmt_ms(x.float_ms)} ms ({x.float_kernel or 'no kernel seen'})",
        f"quantized: {fmt_ms(x.quantized_ms)} ms = {x.kernel or '?'} {fmt_ms(x.kernel_ms)}"
        + (f" + Q/DQ {fmt_ms(x.qdq_ms)}" if x.qdq_ms else "")
        + (f" + layout {fmt_ms(x.layout_ms)}" if x.layout_ms else ""),
        f"speed-up: {fmt_speedup(x.speedup)}",
    ]
    if x.weight_dequantized:
        lines.append("its weights are dequantized on every run")
    evaluation = doc.measures.last_full
    slow = [] if evaluation is None else [
        s for s in evaluation.evaluation.slow_layers if s.layer == x.name
    ]
    if slow:
        lines += [f"why: {slow[0].reason}", f"fix: {slow[0].fix}"]
    if not doc.measures.fusion_current:
        lines.append("(Measured for earlier settings: run Evaluate again, Ctrl+R.)")
    return "\n".join(lines)


def sensitivity_row(doc: Document, key: TensorKey) -> LayerSensitivity | None:
    return doc.measures.sensitivity_row(doc.tensor(key).layer.name)


def sensitivity_value(doc: Document, key: TensorKey, col: Column) -> float | None:
    """The number a sensitivity column holds for a tensor's layer (None: nothing to show)."""
    row = sensitivity_row(doc, key)
    if row is None:
        return None
    return row.drop if col is Column.DROP else row.recovery


def sensitivity_text(doc: Document, key: TensorKey, col: Column) -> str:
    report = doc.measures.sensitivity
    if report is None or sensitivity_row(doc, key) is None:
        return ""
    return fmt_metric_change(sensitivity_value(doc, key, col), report.metric)


def sensitivity_tooltip(doc: Document, key: TensorKey) -> str | None:
    report, row = doc.measures.sensitivity, sensitivity_row(doc, key)
    if report is None:
        return "Run ▸ Sensitivity to measure how much each layer matters end to end"
    if row is None:
        return "This layer quantized nothing when sensitivity was measured"
    m = report.metric
    lines = [
        f"{row.name} — {m.label} on {report.n_samples} samples",
        f"float {st.fmt_num(report.float_value)}, all quantized "
        f"{st.fmt_num(report.quantized_value)}",
        f"only this layer quantized: {st.fmt_num(row.quantized_only.value(m))}",
        f"only this layer float: {st.fmt_num(row.float_only.value(m))}",
    ]
    if doc.measures.sensitivity_stale:
        lines.append("Measured for earlier settings: run Sensitivity again.")
    return "\n".join(lines)



def summary_text(summary: Summary, doc: Document) -> str:
    if summary.n_tensors == 0:
        return "No model open"
    parts = [
        f"{summary.n_tensors} tensors ({summary.n_weights} weights, "
        f"{summary.n_activations} activations)"
    ]
    if summary.n_analyzed < summary.n_tensors:
        parts.append(f"{summary.n_analyzed} measured")
    if summary.worst:
        worst = ", ".join(
            f"{doc.tensor(k).layer.name} {'W' if k[1] is TensorKind.WEIGHT else 'A'} "
            f"{st.fmt_num(s, 3)}\u00a0dB"
            for k, s in summary.worst
        )
        parts.append(f"worst: {worst}")
    if summary.unrepresentative:
        n = len(summary.unrepresentative)
        parts.append(
            f"⚠ {n} tensor{'s' if n != 1 else ''} see{'' if n != 1 else 's'} values in "
            "evaluation that calibration did not"
        )
    if not math.isnan(summary.weighted_sqnr_db):
        sqnr = st.fmt_db(summary.weighted_sqnr_db).replace(" dB", "\u00a0dB")
        parts.append(f"model-wide weighted SQNR {sqnr}")
    return " · ".join(parts)
