"""Streaming float-vs-quantized sums, one batch at a time (float64 throughout).

`evaluate` and the sensitivity analysis fold the very same sums, so their numbers agree to
the bit; memory is one batch whatever the size of the data.
"""

from __future__ import annotations

import math
import re
from enum import Enum

import numpy as np
import onnx

from qviz.core.errors import QvizError
from qviz.core.evaluation.results import Mismatch, OutputComparison
from qviz.core.graph.qdq import QdqModel

__all__ = [
    "MismatchAccumulator",
    "OutputAccumulator",
    "OutputKind",
    "OutputRole",
    "class_axis",
    "looks_like_class_scores",
    "output_kind",
    "output_step",
    "sqnr_db",
]


def class_axis(ndim: int) -> int | None:
    """The axis top-1 and softmax run along: 1 for [N, C] and [N, C, H, W...] (segmentation
    maps), the last for [N, T, V] (sequences); None for outputs of fewer than 2 dimensions."""
    if ndim < 2:
        return None
    if ndim == 3:
        return 2
    return 1


class OutputKind(Enum):
    """What a model output holds, which decides how its softmax is taken for the KL."""

    LOGITS = "logits"
    PROBABILITIES = "probabilities"  # produced by Softmax: used as they are
    LOG_PROBABILITIES = "log-probabilities"  # produced by LogSoftmax


class OutputRole(Enum):
    """Whether an output holds class scores, which decides if top-1 agreement and accuracy
    mean anything. An argmax over a sentence embedding "agrees" 80 % of the time and says
    nothing; cosine, SQNR and KL are reported for every output."""

    AUTO = "auto"  # class scores where the labels fit it, or the graph or its name says so
    CLASSES = "classes"
    VALUES = "values"  # embeddings, regression, features: no top-1 metrics


# Output names that say "class scores" (split on non-letters, lower case).
_CLASS_WORDS = frozenset(
    "logits logit prob probs probabilities scores score class classes classifier cls "
    "predictions softmax".split()
)


def looks_like_class_scores(model: onnx.ModelProto, name: str) -> bool:
    """True where the graph says ``name`` holds class scores: produced by Softmax,
    LogSoftmax or a Gemm (a classifier head), or named logits, probabilities, scores..."""
    words = {w for w in re.split(r"[^a-z]+", name.lower()) if w}
    if words & _CLASS_WORDS:
        return True
    for node in model.graph.node:
        if name in node.output:
            return node.op_type in ("Softmax", "LogSoftmax", "Gemm")
    return False


def output_kind(model: onnx.ModelProto, name: str) -> OutputKind:
    for node in model.graph.node:
        if name in node.output:
            if node.op_type == "Softmax":
                return OutputKind.PROBABILITIES
            if node.op_type == "LogSoftmax":
                return OutputKind.LOG_PROBABILITIES
    return OutputKind.LOGITS


def _log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    shifted = x - np.max(x, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


# Probabilities a quantized Softmax rounds to exactly 0 would make the KL infinite; clamp.
_MIN_PROBABILITY = 1e-12


def _log_probabilities(x: np.ndarray, axis: int, kind: OutputKind) -> np.ndarray:
    if kind is OutputKind.LOG_PROBABILITIES:
        return x
    if kind is OutputKind.PROBABILITIES:
        p = np.clip(x, _MIN_PROBABILITY, None)
        return np.log(p / np.sum(p, axis=axis, keepdims=True))
    return _log_softmax(x, axis)


class OutputAccumulator:
    """Streaming float-vs-quantized sums for one output (float64 throughout).

    Feed it batches with `update` (float output, quantized output, labels or None) and read the
    `OutputComparison` with `result`; `evaluate` and the sensitivity analysis fold the very
    same sums, so their numbers agree to the bit."""

    def __init__(
        self, name: str, kind: OutputKind = OutputKind.LOGITS, *, classes: bool | None = True
    ) -> None:
        self.name = name
        self.kind = kind
        # Class scores (top-1 agreement and accuracy apply): None decides by the labels,
        # class scores exactly when the labels fit the output.
        self.classes = classes
        self.n_samples = 0
        self.positions = 0  # top-1 positions (samples x spatial)
        self.agree = 0
        self.correct_float = 0
        self.correct_quant = 0
        self.labelled = 0
        self.signal = 0.0
        self.noise = 0.0
        self.cosine_sum = 0.0
        self.kl_sum = 0.0
        self.max_abs = 0.0
        self.axis: int | None = None

    def update(self, f: np.ndarray, q: np.ndarray, labels: np.ndarray | None) -> None:
        f64 = np.asarray(f, dtype=np.float64)
        q64 = np.asarray(q, dtype=np.float64)
        if f64.shape != q64.shape:
            raise QvizError(
                f"output '{self.name}': float shape {f64.shape} differs from quantized "
                f"shape {q64.shape}"
            )
        n = f64.shape[0] if f64.ndim else 1
        self.n_samples += n
        diff = f64 - q64
        self.signal += float(np.sum(f64 * f64))
        self.noise += float(np.sum(diff * diff))
        if diff.size:
            self.max_abs = max(self.max_abs, float(np.max(np.abs(diff))))
        fs, qs = f64.reshape(n, -1), q64.reshape(n, -1)
        dot = np.sum(fs * qs, axis=1)
        norms = np.linalg.norm(fs, axis=1) * np.linalg.norm(qs, axis=1)
        both_zero = (np.linalg.norm(fs, axis=1) == 0) & (np.linalg.norm(qs, axis=1) == 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            cos = np.where(norms > 0, dot / norms, np.where(both_zero, 1.0, 0.0))
        self.cosine_sum += float(np.sum(cos))
        self.axis = class_axis(f64.ndim)
        if self.axis is None:
            return
        top_f = np.argmax(f64, axis=self.axis)
        top_q = np.argmax(q64, axis=self.axis)
        self.positions += top_f.size
        self.agree += int(np.sum(top_f == top_q))
        log_p = _log_probabilities(f64, self.axis, self.kind)
        log_q = _log_probabilities(q64, self.axis, self.kind)
        kl = np.sum(np.exp(log_p) * (log_p - log_q), axis=self.axis)
        self.kl_sum += float(np.sum(kl))
        if labels is not None:
            target = _targets(labels, f64.shape, self.axis)
            if target is not None:
                self.labelled += target.size
                self.correct_float += int(np.sum(top_f == target))
                self.correct_quant += int(np.sum(top_q == target))
                if self.classes is None:
                    self.classes = True

    def result(self) -> OutputComparison:
        top1 = self.axis is not None and self.positions > 0
        kl = top1  # KL of the softmax: for every output of 2+ dimensions
        top1 = top1 and bool(self.classes)
        acc = self.labelled > 0 and bool(self.classes)
        return OutputComparison(
            name=self.name,
            agreement_pct=100.0 * self.agree / self.positions if top1 else None,
            sqnr_db=sqnr_db(self.signal, self.noise),
            cosine=self.cosine_sum / self.n_samples if self.n_samples else math.nan,
            kl=self.kl_sum / self.positions if kl else None,
            max_abs_error=self.max_abs,
            float_accuracy=100.0 * self.correct_float / self.labelled if acc else None,
            quantized_accuracy=100.0 * self.correct_quant / self.labelled if acc else None,
        )


def _targets(labels: np.ndarray, shape: tuple[int, ...], axis: int) -> np.ndarray | None:
    """Class indices shaped like the top-1 of an output of `shape`; one-hot labels (shaped
    like the output) are accepted too. None when the labels do not fit the output: another
    shape, or a class the output has no score for."""
    top_shape = shape[:axis] + shape[axis + 1 :]
    labels = np.asarray(labels)
    if labels.shape == top_shape:
        if labels.size and int(np.max(labels)) >= shape[axis]:
            return None
        return labels.astype(np.int64)
    if labels.shape == shape:
        return np.argmax(labels, axis=axis)
    return None


def sqnr_db(signal: float, noise: float) -> float:
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


class MismatchAccumulator:
    def __init__(self, name: str, step: float | None) -> None:
        self.name, self.step = name, step
        self.max_abs = 0.0
        self.differing = 0
        self.elements = 0

    def update(self, sim: np.ndarray, native: np.ndarray) -> None:
        a = np.asarray(sim, dtype=np.float64)
        b = np.asarray(native, dtype=np.float64)
        d = np.abs(a - b)
        self.elements += d.size
        self.differing += int(np.count_nonzero(a != b))
        if d.size:
            self.max_abs = max(self.max_abs, float(np.max(d)))

    def result(self) -> Mismatch:
        frac = self.differing / self.elements if self.elements else 0.0
        return Mismatch(self.name, self.max_abs, frac, self.elements, self.step)


def output_step(qdq: QdqModel, output: str) -> float | None:
    """The step of a graph output produced by a per-tensor DequantizeLinear, else None."""
    graph = qdq.model.graph
    inits = {i.name: i for i in graph.initializer}
    for node in graph.node:
        if output in node.output and node.op_type == "DequantizeLinear":
            scale = inits.get(node.input[1])
            if scale is not None and not scale.dims:
                return float(onnx.numpy_helper.to_array(scale))
    return None
