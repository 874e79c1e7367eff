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
from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from qviz.core.data.feeding import StateCarry
from qviz.core.errors import QvizError
from qviz.core.evaluation.accumulators import (
    MismatchAccumulator,
    OutputAccumulator,
    OutputKind,
    OutputRole,
    class_axis,
    looks_like_class_scores,
    output_kind,
    output_step,
    sqnr_db,
)
from qviz.core.evaluation.results import (
    DepthPoint,
    Evaluation,
    EvaluationCancelled,
    Latency,
    Metric,
    Mismatch,
    ModelSize,
    OutputComparison,
    RunMode,
)
from qviz.core.graph.qdq import QdqModel, build_qdq, initializer_bytes
from qviz.core.model.loading import LoadedModel
from qviz.core.progress import Progress, ProgressClock, run_to_completion
from qviz.core.runtime.fusion import fusion_report
from qviz.core.runtime.latency import measure_latency
from qviz.core.runtime.sessions import (
    KernelPrecision,
    SessionConfig,
    build_session,
    with_outputs,
)

if TYPE_CHECKING:
    from qviz.core.calibration.analysis import TensorResult
    from qviz.core.data.dataset import Dataset

# The result types and accumulators live in `results` and `accumulators`; they are
# re-exported here, where callers know them from.
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
    "OutputRole",
    "RunMode",
    "check_limits",
    "class_axis",
    "evaluate",
    "model_size",
    "output_kind",
    "run_to_completion",
]


# --------------------------------------------------------------------------- evaluate


def model_size(model: LoadedModel, qdq: QdqModel) -> ModelSize:
    """Initializer bytes of the float and Q/DQ graphs (simulated weights at nominal width)."""
    nominal = {t.stored_name: float(t.fmt.bits) for t in qdq.simulated if t.stored_name is not None}
    return ModelSize(
        initializer_bytes(model.model), initializer_bytes(qdq.model, nominal), bool(nominal)
    )


def _classes(model: LoadedModel, output: str, role: OutputRole) -> bool | None:
    if role is OutputRole.AUTO:
        return True if looks_like_class_scores(model.model, output) else None
    return role is OutputRole.CLASSES


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
    role: OutputRole = OutputRole.AUTO,
    should_stop: Callable[[], bool] = lambda: False,
) -> Generator[Progress, None, Evaluation]:
    """Run the float and quantized models over `data` (the first `limit` samples), yielding
    Progress after each batch; return the `Evaluation`.

    `quantized` is the analysed tensors (`analyze`, or `results_from_saved` for a config
    file) or a Q/DQ model already built from them. With ``native`` the quantized numbers come
    from ORT's optimized (fused INT8) session, and the simulation-vs-native mismatch is
    measured; without it they come from the simulation. ``role`` says whether the outputs
    hold class scores: top-1 agreement and accuracy are measured only there (`OutputRole.AUTO`
    decides from the labels and the graph). Raises `EvaluationCancelled` when
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
    float_session = build_session(with_outputs(model.model, float_depth), SessionConfig.for_float())
    sim_session = build_session(with_outputs(qdq.model, sim_depth), SessionConfig.for_simulation())
    notes: list[str] = []
    native_session = None
    native_config = SessionConfig.for_native(precision)
    if native:
        native_session = build_session(qdq.model, native_config)
    elif latency:
        # Only for timing: a graph ORT cannot optimize must not spoil the simulation.
        try:
            native_session = build_session(qdq.model, native_config)
        except QvizError as exc:
            notes.append(f"no native latency: {exc}")

    out_acc = [
        OutputAccumulator(o, output_kind(model.model, o), classes=_classes(model, o, role))
        for o in outputs
    ]
    mismatch_acc = [MismatchAccumulator(o, output_step(qdq, o)) for o in outputs]
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
        f_values = carry_f.run(float_session, feeds, outputs + float_depth)
        s_values = carry_s.run(sim_session, feeds, outputs + sim_depth)
        f_out, s_out = f_values[: len(outputs)], s_values[: len(outputs)]
        q_out = s_out
        if native:
            assert native_session is not None
            q_out = carry_n.run(native_session, feeds, outputs)
            for m_acc, s, q in zip(mismatch_acc, s_out, q_out, strict=True):
                m_acc.update(s, q)
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
        plain_float = build_session(model.model, SessionConfig.for_float())
        f_ms, n_ms = measure_latency(
            plain_float, native_session, first_batch, repeats=latency_repeats
        )
        measured = Latency(f_ms, n_ms, data.samples_in(first_batch), latency_repeats, precision)

    comparisons = tuple(a.result() for a in out_acc)
    for a in out_acc:
        if a.axis is not None and not a.classes:
            notes.append(
                f"output '{a.name}' holds values, not class scores (no labels fit it; no "
                "Softmax, Gemm or name says so): no top-1 agreement or accuracy"
            )
    primary = comparisons[0]
    float_metrics: dict[Metric, float] = {}
    quant_metrics = primary.quantized_metrics()
    delta: dict[Metric, float] = {}
    if primary.float_accuracy is not None and primary.quantized_accuracy is not None:
        float_metrics[Metric.ACCURACY] = primary.float_accuracy
        delta[Metric.ACCURACY] = primary.quantized_accuracy - primary.float_accuracy
    elif labels is not None and out_acc[0].classes is not False:
        notes.append(f"the labels do not fit output '{primary.name}': no accuracy")

    depth = tuple(
        DepthPoint(
            t.name,
            t.layer,
            t.depth,
            sqnr_db(s, e),
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
