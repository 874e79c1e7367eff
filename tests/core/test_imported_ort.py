"""Models quantized by onnxruntime's quantize_static, imported: the issue's "done when".

* the demo CNN (QDQ, per-channel int8) opens against its float original and derived; `evaluate`
  reproduces the accuracy plain ONNX Runtime gives for the file exactly; the report shows every
  tensor ORT quantized with ORT's own scale and zero point; sensitivity ranks its pairs;
* a transformer block quantized everywhere (its -3.4e38 mask addition included) shows the
  masked scores as the worst tensor, locally and end to end, and removing that one pair and
  exporting recovers the output in plain ONNX Runtime.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from qviz.core.calibration.analysis import TensorKey, analyze
from qviz.core.calibration.methods import Method
from qviz.core.data.dataset import load_data
from qviz.core.demo import demo_paths
from qviz.core.evaluation.evaluate import Metric, evaluate
from qviz.core.files.export import export_qdq
from qviz.core.graph.qdq import build_qdq
from qviz.core.imported.configs import imported_config
from qviz.core.imported.repair import as_imported
from qviz.core.model.loading import LoadedModel, TensorKind, load_model
from qviz.core.search.sensitivity import layer_sensitivity
from qviz.core.stats.collect import CalibrationStats, collect_stats, run_to_completion
from tools.quantized_examples import MASKED_SCORES, quantize_block, quantize_demo

A, W = TensorKind.ACTIVATION, TensorKind.WEIGHT


@pytest.fixture(scope="module")
def demo_qdq(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return quantize_demo(tmp_path_factory.mktemp("ort") / "demo_qdq.onnx")


@pytest.fixture(scope="module")
def demo_import(demo_qdq: Path) -> tuple[LoadedModel, CalibrationStats]:
    model = load_model(demo_qdq, float_model=demo_paths().model)
    data = load_data(demo_paths().data, model.inputs)
    return model, run_to_completion(collect_stats(model, data, batch_size=256))


def _ort_accuracy(path: Path, batch: int) -> float:
    demo = np.load(demo_paths().data)
    x, labels = demo["input"], demo["labels"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    hits = 0
    for i in range(0, len(x), batch):
        (logits,) = session.run(None, {"input": x[i : i + batch]})
        hits += int((logits.argmax(1) == labels[i : i + batch]).sum())
    return 100.0 * hits / len(x)


def _ort_qparams(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every float tensor ORT quantized, with the scale and zero point it wrote."""
    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear":
            out[n.input[0].removesuffix("_QuantizeLinear_Input")] = (
                inits[n.input[1]], inits[n.input[2]])
        elif n.op_type == "DequantizeLinear" and n.input[0].endswith("_quantized"):
            if inits[n.input[0]].dtype != np.int32:  # weights, not int32 biases
                out[n.input[0].removesuffix("_quantized")] = (
                    inits[n.input[1]], inits[n.input[2]])
    return out


def test_evaluate_reproduces_plain_onnxruntime_exactly(demo_qdq: Path) -> None:
    model = load_model(demo_qdq, float_model=demo_paths().model)
    data = load_data(demo_paths().data, model.inputs)
    qdq = as_imported(model)
    # The graph qviz runs is the file itself, byte for byte.
    assert qdq.model.SerializeToString() == model.imported.quantized.SerializeToString()
    ev = run_to_completion(evaluate(model, qdq, data, native=True, batch_size=64, latency=False))
    assert ev.quantized_metrics[Metric.ACCURACY] == _ort_accuracy(demo_qdq, 64)
    assert ev.float_metrics[Metric.ACCURACY] == _ort_accuracy(demo_paths().model, 64)
    assert ev.fusion is not None and len(ev.fusion.fused) == 6  # 4 Conv, 2 Gemm


def test_every_tensor_ort_quantized_is_imported_with_its_scale(
    demo_qdq: Path, demo_import: tuple[LoadedModel, CalibrationStats]
) -> None:
    model, stats = demo_import
    results = {r.name: r for r in analyze(model, stats, imported_config(model))}
    expected = _ort_qparams(demo_qdq)
    assert set(results) == set(expected)  # 6 weights, 8 activations (input to logits)
    for name, (scale, zp) in expected.items():
        r = results[name]
        assert r.config.spec.method is Method.IMPORTED
        assert np.array_equal(r.qparams.scale, scale.astype(np.float32)), name
        assert np.array_equal(r.qparams.zero_point, zp), name
        assert np.array_equal(r.metrics.scale, scale.astype(np.float32)), name
        assert np.isfinite(r.metrics.sqnr_db) and r.metrics.sqnr_db > 30, name
    # Weights are measured against the float original: real, non-zero error.
    assert 0 < results["features.0.weight"].metrics.mse


def test_derived_float_has_the_same_tensors_and_zero_weight_error(demo_qdq: Path) -> None:
    derived = load_model(demo_qdq)
    given = load_model(demo_qdq, float_model=demo_paths().model)
    assert derived.imported is not None and derived.imported.derived
    assert [layer.name for layer in derived.layers] == [layer.name for layer in given.layers]
    assert derived.sha256 != given.sha256
    assert any("derived" in n for n in derived.notes)
    # The float model carries the weights the quantized one holds: no error to see there.
    data = load_data(demo_paths().data, derived.inputs, )
    stats = run_to_completion(collect_stats(derived, data, batch_size=500))
    weights = [r for r in analyze(derived, stats, imported_config(derived)) if r.kind is W]
    assert weights and all(r.metrics.mse == 0 for r in weights)
    # The restored Relus make the derived model compute what the float one does.
    ev = run_to_completion(evaluate(derived, as_imported(derived), data, native=True,
                                    batch_size=64, latency=False))
    assert ev.quantized_metrics[Metric.ACCURACY] == _ort_accuracy(demo_qdq, 64)
    assert abs(ev.float_metrics[Metric.ACCURACY] - _ort_accuracy(demo_paths().model, 64)) <= 0.5


def test_sensitivity_ranks_the_imported_pairs(
    demo_import: tuple[LoadedModel, CalibrationStats]
) -> None:
    model, stats = demo_import
    results = analyze(model, stats, imported_config(model))
    data = load_data(demo_paths().data, model.inputs)
    report = run_to_completion(layer_sensitivity(model, results, data, limit=500))
    tensors = {t for s in report.layers for t in s.tensors}
    assert tensors == {r.name for r in results}
    ranking = report.ranking()
    assert len(ranking) == 8  # 4 Conv, 2 Gemm, the Reshape's input, the model output
    # Each layer quantized alone stays close to float: the subsets are real repairs, with
    # the Relus the quantizer had folded put back where their pairs are removed.
    for s in report.layers:
        assert s.quantized_only.value(Metric.ACCURACY) >= 92.0, s.name


def test_unchanged_export_is_the_imported_file_and_a_change_touches_one_pair(
    demo_qdq: Path, demo_import: tuple[LoadedModel, CalibrationStats], tmp_path: Path
) -> None:
    model, stats = demo_import
    config = imported_config(model)
    out = tmp_path / "same.onnx"
    export_qdq(model, analyze(model, stats, config), out)
    original = {t.name: t.SerializeToString() for t in onnx.load(str(demo_qdq)).graph.initializer}
    again = {t.name: t.SerializeToString() for t in onnx.load(str(out)).graph.initializer}
    assert again == original
    # relu_2 read by qviz's MSE range instead: one pair changes, and the int32 bias of the
    # layer reading it follows the new input scale; the rest stays byte for byte.
    cfg = config.for_tensor("relu_2", A)
    changed = config.with_override(
        "relu_2", replace(cfg, spec=replace(cfg.spec, method=Method.MSE, imported=None)))
    qdq = build_qdq(model, analyze(model, stats, changed))
    assert "1 changed" in qdq.notes[0]
    repaired = {t.name: t.SerializeToString() for t in qdq.model.graph.initializer}
    same = {k for k in original if repaired.get(k) == original[k]}
    bias = {f"features.9.weight_bias_quantized{s}" for s in ("", "_scale", "_zero_point")}
    assert same == set(original) - {"relu_2_scale", "relu_2_zero_point"} - bias
    stored = [t for t in qdq.model.graph.initializer if t.name not in original]
    assert {t.data_type for t in stored} >= {onnx.TensorProto.INT32}
    sess = ort.InferenceSession(qdq.model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.load(demo_paths().data)["input"][:8]
    assert sess.run(None, {"input": x})[0].shape == (8, 10)


# ------------------------------------------------------------------------ transformer block


@pytest.fixture(scope="module")
def block(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return quantize_block(tmp_path_factory.mktemp("block"))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a64 @ b64 / np.sqrt((a64 @ a64) * (b64 @ b64)))


def test_the_mask_addition_is_the_worst_pair_and_removing_it_recovers_the_output(
    block: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    float_path, qdq_path, data_path = block
    model = load_model(qdq_path, float_model=float_path)
    data = load_data(data_path, model.inputs)
    stats = run_to_completion(collect_stats(model, data))
    config = imported_config(model)
    results = analyze(model, stats, config)
    assert len(results) >= 40  # quantize_static quantized every op it could
    # Locally: the masked scores (and the mask itself) lose everything to a 1.3e36 step.
    worst = min(results, key=lambda r: (r.metrics.sqnr_db, r.name != MASKED_SCORES))
    assert worst.name == MASKED_SCORES and worst.metrics.sqnr_db < 1.0
    # End to end: keeping the Softmax's input float recovers the most.
    report = run_to_completion(layer_sensitivity(model, results, data))
    top = report.ranking()[0]
    assert MASKED_SCORES in top.tensors, [s.tensors for s in report.ranking()[:3]]

    # Remove that one pair in qviz, export, and run the file in plain ONNX Runtime.
    key = TensorKey(MASKED_SCORES, A)
    fixed = config.with_override(key.name, replace(config.for_tensor(*key), quantize=False))
    out = tmp_path / "repaired.onnx"
    notes = export_qdq(model, analyze(model, stats, fixed), out).notes
    assert any("1 removed" in n for n in notes)
    feeds = dict(np.load(data_path))
    want = ort.InferenceSession(str(float_path)).run(None, feeds)[0]
    before = ort.InferenceSession(str(qdq_path)).run(None, feeds)[0]
    after = ort.InferenceSession(str(out)).run(None, feeds)[0]
    assert _cosine(want, before) < 0.8
    assert _cosine(want, after) > 0.99


def test_mixed_precision_finds_the_pair_to_drop(block: tuple[Path, Path, Path]) -> None:
    from qviz.core.evaluation.criteria import Criterion
    from qviz.core.search.mixed import mixed_precision

    float_path, qdq_path, data_path = block
    model = load_model(qdq_path, float_model=float_path)
    data = load_data(data_path, model.inputs)
    stats = run_to_completion(collect_stats(model, data))
    base = imported_config(model)
    result = run_to_completion(mixed_precision(
        model, stats, base, data, Criterion.parse("cosine>=0.99"), "imported,float"))
    assert result.passed
    dropped = [name for name, cfg in result.config.overrides.items()
               if not cfg.quantize and base.overrides[name].quantize]
    assert dropped == [MASKED_SCORES]
