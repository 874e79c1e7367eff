"""End-to-end effect of a quantization configuration on the task.

`evaluate` runs the float model and the Q/DQ model over the same batches and folds every
batch into streaming sums (memory is bounded by one batch, whatever the data size):

* the task: accuracy of each model when the data has labels, and always how the quantized
  outputs compare with the float ones (top-1 agreement, SQNR, cosine, KL of the softmax);
* where error enters: at every quantized activation, in depth order, the SQNR of the value
  the quantized model feeds its layer against the float model's value there (from the
  simulation, which can expose every tensor without changing what ORT fuses);
* native INT8 (``native=True``): the quantized numbers come from ONNX Runtime with graph
  optimizations on, i.e. from its fused integer kernels, and the simulation-vs-native
  mismatch is measured per output;
* what it buys: model size (initializer bytes as stored) and the measured latency of the
  float and native INT8 sessions, timed side by side on the same batch.

Simulation runs the Q/DQ graph with every ORT optimization disabled, so each Q/DQ is computed
as the ONNX operator it is, bit for bit what qviz's `quantize`/`dequantize` compute.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnxruntime as ort

from qviz.core.data.feeding import StateCarry
from qviz.core.errors import QvizError
from qviz.core.errors import first_line as _first_line
from qviz.core.graph.qdq import QdqModel, build_qdq, initializer_bytes
from qviz.core.jsonnum import json_number as _num
from qviz.core.model.loading import LoadedModel
from qviz.core.progress import Progress, ProgressClock, run_to_completion
from qviz.core.runtime.fusion import (
    FusionReport,
    KernelPrecision,
    fusion_report,
    native_session_options,
)

if TYPE_CHECKING:
    from qviz.core.calibration.analysis import TensorResult
    from qviz.core.data.dataset import Dataset

__all__ = [
    "DepthPoint",
    "Evaluation",
    "EvaluationCancelled",
    "Latency",
    "Metric",
    "Mismatch",
    "ModelSize",
    "OutputAccumulator",
    "OutputComparison",
    "OutputKind",
    "RunMode",
    "class_axis",
    "evaluate",
    "float_session_options",
    "make_session",
    "measure_latency",
    "output_kind",
    "run_to_completion",
    "simulation_session_options",
]


class RunMode(Enum):
    """How the quantized model is run."""

    SIMULATION = "simulation"  # optimizations off: every Q/DQ evaluated as an operator
    NATIVE = "native"  # optimizations on: ORT's fused integer kernels


class Metric(Enum):
    """End-to-end numbers, as keyed in `Evaluation` (and its JSON)."""

    ACCURACY = "accuracy"  # % of samples whose top-1 matches the label
    AGREEMENT = "top1_agreement"  # % of samples whose top-1 matches the float model's
    SQNR = "output_sqnr_db"  # 10 log10(sum f^2 / sum (f - q)^2) over the output
    COSINE = "output_cosine"  # mean over samples of cos(f, q)
    KL = "output_kl"  # mean KL(softmax f || softmax q), nats (outputs of a Softmax as is)
    MAX_ABS_ERROR = "output_max_abs_error"

    @property
    def label(self) -> str:
        return {
            Metric.ACCURACY: "accuracy (%)",
            Metric.AGREEMENT: "top-1 agreement (%)",
            Metric.SQNR: "output SQNR (dB)",
            Metric.COSINE: "output cosine",
            Metric.KL: "KL(softmax float || softmax quantized)",
            Metric.MAX_ABS_ERROR: "output max |error|",
        }[self]


class EvaluationCancelled(Exception):
    """Raised inside the generator when `should_stop()` asked it to stop."""


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class OutputComparison:
    """Float vs quantized for one model output. Top-1 based numbers are None for outputs
    without a class axis (fewer than 2 dimensions)."""

    name: str
    agreement_pct: float | None
    sqnr_db: float
    cosine: float
    kl: float | None
    max_abs_error: float
    float_accuracy: float | None = None
    quantized_accuracy: float | None = None


@dataclass(frozen=True)
class Mismatch:
    """Simulation vs native on one output.

    ``step`` is the output's quantization step when the output leaves the graph through a
    per-tensor DequantizeLinear; then ``max_steps`` is the largest difference in steps. The
    usual float output has no step, and only ``max_abs_diff`` is meaningful.
    """

    output: str
    max_abs_diff: float
    fraction_differing: float
    n_elements: int
    step: float | None = None

    @property
    def max_steps(self) -> float | None:
        return None if self.step is None else self.max_abs_diff / self.step

    @property
    def unit_note(self) -> str:
        if self.step is None:
            return "absolute difference (the output is float, not Q/DQ'd: no step)"
        return f"output steps of {self.step:.4g}"


@dataclass(frozen=True)
class DepthPoint:
    """Error accumulated up to one quantized activation: the quantized model's value there
    (after its own Q/DQ) against the float model's."""

    tensor: str
    layer: str
    depth: int
    sqnr_db: float
    relative_rms_error: float


@dataclass(frozen=True)
class ModelSize:
    """Initializer bytes as stored (4-bit: half a byte). ``nominal`` is True when some weights
    are simulated formats, counted at their nominal width although stored as float32."""

    float_bytes: int
    quantized_bytes: int
    nominal: bool = False

    @property
    def ratio(self) -> float:
        return self.float_bytes / self.quantized_bytes if self.quantized_bytes else math.inf


@dataclass(frozen=True)
class Latency:
    """Median wall time per batch of the float and native INT8 sessions on the same batch."""

    float_ms: float
    native_ms: float
    batch_size: int
    repeats: int
    precision: KernelPrecision = KernelPrecision.DEFAULT

    @property
    def speedup(self) -> float:
        return self.float_ms / self.native_ms if self.native_ms > 0 else math.inf


def _frozen_metrics(m: Mapping[Metric, float]) -> Mapping[Metric, float]:
    return MappingProxyType(dict(m))


@dataclass(frozen=True)
class Evaluation:
    """Everything `evaluate` measured. Metrics describe the first model output; ``outputs``
    has every output. ``delta`` is quantized minus float (accuracy in points)."""

    mode: RunMode
    n_samples: int
    data_description: str
    has_labels: bool
    float_metrics: Mapping[Metric, float]
    quantized_metrics: Mapping[Metric, float]
    delta: Mapping[Metric, float]
    outputs: tuple[OutputComparison, ...]
    size: ModelSize
    mismatch: tuple[Mismatch, ...] = ()
    fusion: FusionReport | None = None
    depth: tuple[DepthPoint, ...] = ()
    latency: Latency | None = None
    precision: KernelPrecision = KernelPrecision.DEFAULT
    notes: tuple[str, ...] = ()
    simulated_tensors: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("float_metrics", "quantized_metrics", "delta"):
            object.__setattr__(self, name, _frozen_metrics(getattr(self, name)))

    @property
    def accuracy_drop(self) -> float | None:
        """Float accuracy minus quantized accuracy, in points (positive = lost)."""
        d = self.delta.get(Metric.ACCURACY)
        return None if d is None else -d

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (infinite values spelled "inf", as qviz's files do)."""

        def metrics(m: Mapping[Metric, float]) -> dict[str, Any]:
            return {k.value: _num(v) for k, v in m.items()}

        return {
            "mode": self.mode.value,
            "data": self.data_description,
            "samples": self.n_samples,
            "labels": self.has_labels,
            "float": metrics(self.float_metrics),
            "quantized": metrics(self.quantized_metrics),
            "delta": metrics(self.delta),
            "outputs": [
                {
                    "name": o.name,
                    "top1_agreement": _num(o.agreement_pct),
                    "output_sqnr_db": _num(o.sqnr_db),
                    "output_cosine": _num(o.cosine),
                    "output_kl": _num(o.kl),
                    "output_max_abs_error": _num(o.max_abs_error),
                    "float_accuracy": _num(o.float_accuracy),
                    "quantized_accuracy": _num(o.quantized_accuracy),
                }
                for o in self.outputs
            ],
            "native": {
                "kernel_precision": self.precision.value,
                "fusion": None if self.fusion is None else self.fusion.to_json(),
                "mismatch": [
                    {
                        "output": m.output,
                        "max_abs_diff": _num(m.max_abs_diff),
                        "step": _num(m.step),
                        "max_steps": _num(m.max_steps),
                        "fraction_differing": _num(m.fraction_differing),
                        "elements": m.n_elements,
                        "unit": m.unit_note,
                    }
                    for m in self.mismatch
                ],
            },
            "size_bytes": {
                "float": self.size.float_bytes,
                "quantized": self.size.quantized_bytes,
                "ratio": _num(self.size.ratio),
                "nominal": self.size.nominal,
            },
            "latency_ms": None
            if self.latency is None
            else {
                "float": _num(self.latency.float_ms),
                "native_int8": _num(self.latency.native_ms),
                "speedup": _num(self.latency.speedup),
                "batch_size": self.latency.batch_size,
                "repeats": self.latency.repeats,
            },
            "depth": [
                {
                    "tensor": p.tensor,
                    "layer": p.layer,
                    "depth": p.depth,
                    "sqnr_db": _num(p.sqnr_db),
                    "relative_rms_error": _num(p.relative_rms_error),
                }
                for p in self.depth
            ],
            "simulated_tensors": list(self.simulated_tensors),
            "notes": list(self.notes),
        }



# --------------------------------------------------------------------------- sessions


def simulation_session_options() -> ort.SessionOptions:
    """Every optimization off: each Q/DQ is evaluated as the ONNX operator it is."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return options


def float_session_options() -> ort.SessionOptions:
    """The float model as production runs it: every optimization on."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


def make_session(model: onnx.ModelProto, options: ort.SessionOptions) -> ort.InferenceSession:
    """A CPU session; ORT's errors become one QvizError line."""
    try:
        return ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # ORT raises its own exception types; all mean "cannot run"
        raise QvizError(f"ONNX Runtime cannot run the model: {_first_line(exc)}") from exc



def _run(
    session: ort.InferenceSession, names: Sequence[str], feeds: Mapping[str, np.ndarray]
) -> list[np.ndarray]:
    try:
        return session.run(list(names), dict(feeds))
    except Exception as exc:
        raise QvizError(f"the model failed on the data: {_first_line(exc)}") from exc


def _with_outputs(model: onnx.ModelProto, tensors: Sequence[str]) -> onnx.ModelProto:
    """A copy of `model` that also outputs `tensors` (graph inputs are read from the feeds)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    present = {o.name for o in out.graph.output} | {i.name for i in out.graph.input}
    for name in tensors:
        if name not in present:
            # Element type only: shapes may vary from sample to sample.
            out.graph.output.append(
                onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            )
            present.add(name)
    return out


# --------------------------------------------------------------------------- accumulators


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

    def __init__(self, name: str, kind: OutputKind = OutputKind.LOGITS) -> None:
        self.name = name
        self.kind = kind
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

    def result(self) -> OutputComparison:
        top1 = self.axis is not None and self.positions > 0
        acc = self.labelled > 0
        return OutputComparison(
            name=self.name,
            agreement_pct=100.0 * self.agree / self.positions if top1 else None,
            sqnr_db=_sqnr(self.signal, self.noise),
            cosine=self.cosine_sum / self.n_samples if self.n_samples else math.nan,
            kl=self.kl_sum / self.positions if top1 else None,
            max_abs_error=self.max_abs,
            float_accuracy=100.0 * self.correct_float / self.labelled if acc else None,
            quantized_accuracy=100.0 * self.correct_quant / self.labelled if acc else None,
        )


def _targets(labels: np.ndarray, shape: tuple[int, ...], axis: int) -> np.ndarray | None:
    """Class indices shaped like the top-1 of an output of `shape`; one-hot labels (shaped
    like the output) are accepted too. None when the labels do not fit the output."""
    top_shape = shape[:axis] + shape[axis + 1 :]
    labels = np.asarray(labels)
    if labels.shape == top_shape:
        return labels.astype(np.int64)
    if labels.shape == shape:
        return np.argmax(labels, axis=axis)
    return None


def _sqnr(signal: float, noise: float) -> float:
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


class _MismatchAccumulator:
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


def _output_step(qdq: QdqModel, output: str) -> float | None:
    """The step of a graph output produced by a per-tensor DequantizeLinear, else None."""
    graph = qdq.model.graph
    inits = {i.name: i for i in graph.initializer}
    for node in graph.node:
        if output in node.output and node.op_type == "DequantizeLinear":
            scale = inits.get(node.input[1])
            if scale is not None and not scale.dims:
                return float(onnx.numpy_helper.to_array(scale))
    return None


# --------------------------------------------------------------------------- latency


def measure_latency(
    float_session: ort.InferenceSession,
    native_session: ort.InferenceSession,
    feeds: Mapping[str, np.ndarray],
    *,
    warmup: int = 3,
    repeats: int = 20,
) -> tuple[float, float]:
    """Median milliseconds per run of each session on the same feeds, runs interleaved so
    that frequency scaling and other load hit both alike."""
    for _ in range(warmup):
        float_session.run(None, dict(feeds))
        native_session.run(None, dict(feeds))
    times_f: list[float] = []
    times_n: list[float] = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        float_session.run(None, dict(feeds))
        t1 = time.perf_counter()
        native_session.run(None, dict(feeds))
        t2 = time.perf_counter()
        times_f.append((t1 - t0) * 1e3)
        times_n.append((t2 - t1) * 1e3)
    return statistics.median(times_f), statistics.median(times_n)


# --------------------------------------------------------------------------- evaluate


def model_size(model: LoadedModel, qdq: QdqModel) -> ModelSize:
    """Initializer bytes of the float and Q/DQ graphs (simulated weights at nominal width)."""
    nominal = {t.stored_name: float(t.fmt.bits) for t in qdq.simulated if t.stored_name is not None}
    return ModelSize(
        initializer_bytes(model.model), initializer_bytes(qdq.model, nominal), bool(nominal)
    )


def check_limits(data: Dataset, limit: int | None, batch_size: int) -> int:
    """How many samples a run over `data` uses; a bad limit or batch size is the user's error."""
    if batch_size < 1:
        raise QvizError(f"batch size must be at least 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise QvizError(f"the sample limit must be at least 1, got {limit}")
    total = len(data) if limit is None else min(limit, len(data))
    if total == 0:
        raise QvizError("the evaluation data set is empty")
    return total


def evaluate(
    model: LoadedModel,
    quantized: Sequence[TensorResult] | QdqModel,
    data: Dataset,
    *,
    native: bool = False,
    precision: KernelPrecision = KernelPrecision.DEFAULT,
    limit: int | None = None,
    batch_size: int = 64,
    latency: bool = True,
    latency_repeats: int = 20,
    should_stop: Callable[[], bool] = lambda: False,
) -> Generator[Progress, None, Evaluation]:
    """Run the float and quantized models over `data` (the first `limit` samples), yielding
    Progress after each batch; return the `Evaluation`.

    `quantized` is the analysed tensors (`analyze`, or `results_from_saved` for a config
    file) or a Q/DQ model already built from them. With ``native`` the quantized numbers come
    from ORT's optimized (fused INT8) session, and the simulation-vs-native mismatch is
    measured; without it they come from the simulation. Raises `EvaluationCancelled` when
    `should_stop()` turns true between batches.
    """
    total = check_limits(data, limit, batch_size)
    qdq = quantized if isinstance(quantized, QdqModel) else build_qdq(model, quantized)
    if not qdq.layers:
        raise QvizError("the configuration quantizes no layer: nothing to evaluate")

    clock = ProgressClock(total, "evaluating")
    yield clock.report(0, "preparing sessions")
    outputs = list(model.outputs)
    input_names = {i.name for i in model.inputs}
    acts = qdq.activations
    float_depth = [t.name for t in acts if t.name not in input_names]
    sim_depth = [t.graph_name for t in acts]
    float_session = make_session(_with_outputs(model.model, float_depth), float_session_options())
    sim_session = make_session(_with_outputs(qdq.model, sim_depth), simulation_session_options())
    notes: list[str] = []
    native_session = None
    if native:
        native_session = make_session(qdq.model, native_session_options(precision))
    elif latency:
        # Only for timing: a graph ORT cannot optimize must not spoil the simulation.
        try:
            native_session = make_session(qdq.model, native_session_options(precision))
        except QvizError as exc:
            notes.append(f"no native latency: {exc}")

    out_acc = [OutputAccumulator(o, output_kind(model.model, o)) for o in outputs]
    mismatch_acc = [_MismatchAccumulator(o, _output_step(qdq, o)) for o in outputs]
    depth_sums = np.zeros((len(acts), 2), dtype=np.float64)  # sum f^2, sum (f - q)^2
    labels = data.labels
    done = 0
    first_batch: dict[str, np.ndarray] | None = None
    # Stateful models: each session carries the state its own previous run produced.
    carry_f, carry_s, carry_n = (StateCarry.of(data) for _ in range(3))
    for feeds in data.batches(batch_size):
        if should_stop():
            raise EvaluationCancelled()
        n = min(data.samples_in(feeds), total - done)
        if n <= 0:
            break
        feeds = data.head(feeds, n)
        if first_batch is None:
            first_batch = feeds
        fed = carry_f.feeds(feeds)
        f_values = carry_f.run(_run, float_session, outputs + float_depth, feeds)
        s_values = carry_s.run(_run, sim_session, outputs + sim_depth, feeds)
        f_out, s_out = f_values[: len(outputs)], s_values[: len(outputs)]
        q_out = s_out
        if native:
            assert native_session is not None
            q_out = carry_n.run(_run, native_session, outputs, feeds)
            for acc, s, q in zip(mismatch_acc, s_out, q_out, strict=True):
                acc.update(s, q)
        batch_labels = None if labels is None else labels[done : done + n]
        for acc, f, q in zip(out_acc, f_out, q_out, strict=True):
            acc.update(f, q, batch_labels)
        f_named = dict(zip(float_depth, f_values[len(outputs) :], strict=True))
        for i, (t, q) in enumerate(zip(acts, s_values[len(outputs) :], strict=True)):
            f = fed[t.name] if t.name in input_names else f_named[t.name]
            f64 = np.asarray(f, dtype=np.float64)
            diff = f64 - np.asarray(q, dtype=np.float64)
            depth_sums[i, 0] += float(np.sum(f64 * f64))
            depth_sums[i, 1] += float(np.sum(diff * diff))
        done += n
        yield clock.report(done)
        if done >= total:
            break

    fusion = None
    measured = None
    if native_session is not None:
        yield clock.report(done, "checking which layers ONNX Runtime fused")
        fusion = fusion_report(qdq, precision)
        notes.extend(fusion.notes)
    if latency and first_batch is not None and native_session is not None:
        yield clock.report(done, "measuring latency")
        plain_float = make_session(model.model, float_session_options())
        f_ms, n_ms = measure_latency(
            plain_float, native_session, first_batch, repeats=latency_repeats
        )
        measured = Latency(f_ms, n_ms, data.samples_in(first_batch), latency_repeats, precision)

    comparisons = tuple(a.result() for a in out_acc)
    primary = comparisons[0]
    float_metrics: dict[Metric, float] = {}
    quant_metrics: dict[Metric, float] = {}
    delta: dict[Metric, float] = {}
    if primary.float_accuracy is not None and primary.quantized_accuracy is not None:
        float_metrics[Metric.ACCURACY] = primary.float_accuracy
        quant_metrics[Metric.ACCURACY] = primary.quantized_accuracy
        delta[Metric.ACCURACY] = primary.quantized_accuracy - primary.float_accuracy
    elif labels is not None:
        notes.append(f"the labels do not fit output '{primary.name}': no accuracy")
    if primary.agreement_pct is not None:
        quant_metrics[Metric.AGREEMENT] = primary.agreement_pct
    quant_metrics[Metric.SQNR] = primary.sqnr_db
    quant_metrics[Metric.COSINE] = primary.cosine
    if primary.kl is not None:
        quant_metrics[Metric.KL] = primary.kl
    quant_metrics[Metric.MAX_ABS_ERROR] = primary.max_abs_error

    depth = tuple(
        DepthPoint(
            t.name,
            t.layer,
            t.depth,
            _sqnr(s, e),
            math.sqrt(e / s) if s > 0 else (0.0 if e == 0 else math.inf),
        )
        for t, (s, e) in zip(acts, depth_sums, strict=True)
    )
    mismatches = tuple(a.result() for a in mismatch_acc) if native else ()
    if native:
        notes.append("error along depth is measured in the simulation")
    simulated = tuple(t.name for t in qdq.simulated)
    if simulated:
        nominal = " (weights ONNX cannot store are sized at their nominal width)"
        notes.append(
            f"{len(simulated)} tensors are simulation only: no integer kernel reads them"
            + (nominal if any(t.stored_name for t in qdq.simulated) else "")
        )
    if data.is_random:
        notes.append("evaluated on RANDOM input, not real data")
    notes.extend(qdq.notes)
    return Evaluation(
        mode=RunMode.NATIVE if native else RunMode.SIMULATION,
        n_samples=done,
        data_description=data.description,
        has_labels=labels is not None,
        float_metrics=float_metrics,
        quantized_metrics=quant_metrics,
        delta=delta,
        outputs=comparisons,
        size=model_size(model, qdq),
        mismatch=mismatches,
        fusion=fusion,
        depth=depth,
        latency=measured,
        precision=precision,
        notes=tuple(dict.fromkeys(notes)),
        simulated_tensors=simulated,
    )
