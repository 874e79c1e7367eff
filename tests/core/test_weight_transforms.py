"""GPTQ rounding and bias correction: on the weight's grid, what they remove, where the bias
goes in the graph, and that the exported model computes what was measured."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from qviz.core.calibration.analysis import analyze
from qviz.core.calibration.config import QuantConfig
from qviz.core.calibration.methods import Method, MethodSpec
from qviz.core.errors import QvizError
from qviz.core.evaluation.evaluate import evaluate
from qviz.core.files.export import export_qdq
from qviz.core.model.loading import TensorKind
from qviz.core.progress import run_to_completion
from qviz.core.quant.formats import FormatKind, NumberFormat, PerGroup, PerTensor
from qviz.core.quant.quantize import dequantize, quantize
from qviz.core.transforms.bias import BiasKind
from qviz.core.transforms.plan import transform_model
from qviz.core.transforms.settings import SmoothQuant, Transforms
from tests.core.model_factory import make_mlp
from tests.core.transform_models import calibrated, conv_pair, softmax_mlp
from tools.synthetic.block import BlockSpec, block_proto

ACTS = replace(QuantConfig().activations, spec=MethodSpec(Method.MSE))


INT4 = NumberFormat(bits=4)


def _config(fmt: NumberFormat = INT4, granularity=None, **transforms: object) -> QuantConfig:
    w = QuantConfig().weights
    w = replace(w, fmt=fmt, granularity=granularity or w.granularity,
                transforms=Transforms(**transforms))  # type: ignore[arg-type]
    return QuantConfig(weights=w, activations=ACTS)


@pytest.fixture(scope="module")
def block():
    return calibrated(block_proto(BlockSpec()), n=48, gram=True)


def _weight(results, name):
    return next(r for r in results if r.name == name and r.kind is TensorKind.WEIGHT)


@pytest.mark.parametrize("granularity", [None, PerGroup(32), PerTensor()])
def test_gptq_keeps_the_grid_and_lowers_the_output_error(block, granularity) -> None:
    # fc2 reads GELU(fc1(x)): 256 channels made from 64, strongly correlated, which is what
    # GPTQ's error feedback exploits (on uncorrelated inputs it is plain rounding).
    model, stats, _ = block
    plain = _weight(analyze(model, stats, _config(granularity=granularity)),
                    "block.mlp.fc2.weight")
    r = _weight(analyze(model, stats, _config(granularity=granularity, gptq=True)),
                "block.mlp.fc2.weight")
    assert r.applied is not None and r.applied.values is not None
    fmt = r.config.fmt
    codes = quantize(r.applied.values, r.qparams, fmt)
    np.testing.assert_array_equal(dequantize(codes, r.qparams, fmt), r.applied.values)
    assert np.array_equal(r.qparams.scale, plain.qparams.scale)
    before, after = r.applied.output_sqnr_db
    assert r.applied.estimate == "Gram matrix"
    assert after > before + 1.0, (before, after)
    # GPTQ trades weight error for output error.
    assert r.metrics.sqnr_db < plain.metrics.sqnr_db
    assert r.applied.plain_metrics.sqnr_db == plain.metrics.sqnr_db


def test_gptq_without_gram_matrices_says_recollect(block) -> None:
    model, stats, _ = block
    bare = replace(stats, grams={})
    with pytest.raises(QvizError, match="recollect with Gram matrices"):
        analyze(model, bare, _config(gptq=True))


def test_gptq_refuses_a_format_without_an_integer_grid(block) -> None:
    model, stats, _ = block
    with pytest.raises(QvizError) as info:
        analyze(model, stats, _config(fmt=NumberFormat(kind=FormatKind.FP8_E4M3FN), gptq=True))
    assert "\n" not in str(info.value) and "integer grids" in str(info.value)


def test_bias_correction_removes_the_expected_shift(block) -> None:
    model, stats, _ = block
    r = _weight(analyze(model, stats, _config(bias_correction=True)), "block.mlp.fc1.weight")
    a = r.applied
    assert a is not None and a.bias is not None and a.bias_site is not None
    assert a.bias_site.kind is BiasKind.ADD and a.bias_site.node == "block.mlp.fc1/Add"
    mean = stats.tensors["block.norm.output"].moments.mean  # type: ignore[union-attr]
    w = model.weight("block.mlp.fc1.weight").astype(np.float64)
    wq = dequantize(quantize(w, r.qparams, r.config.fmt), r.qparams, r.config.fmt)
    b = model.weight("block.mlp.fc1.bias").astype(np.float64)
    np.testing.assert_allclose(a.bias - b, -(mean @ (wq - w)), rtol=1e-4, atol=1e-7)
    assert a.mean_shift_rms[0] > 0 and a.mean_shift_rms[1] == 0


@pytest.mark.parametrize(
    "proto, weight, kind",
    [
        (make_mlp(trans_b=1), "fc1.weight", BiasKind.INPUT),  # Gemm's own bias
        (conv_pair("Relu"), "w2", BiasKind.NEW_INPUT),  # a Conv without one
        (softmax_mlp(), "w2", BiasKind.NEW_ADD),  # a MatMul without an Add
    ],
)
def test_bias_sites_and_the_export_reproduces_the_measurement(proto, weight, kind,
                                                              tmp_path: Path) -> None:
    model, stats, data = calibrated(proto)
    cfg = _config(fmt=NumberFormat(bits=3), granularity=PerTensor(), bias_correction=True)
    results = analyze(model, stats, cfg)
    r = _weight(results, weight)
    assert r.applied is not None and r.applied.bias_site is not None
    assert r.applied.bias_site.kind is kind
    measured = run_to_completion(evaluate(model, results, data, latency=False))
    out = tmp_path / "q.onnx"
    export_qdq(model, results, out)
    x = np.concatenate([b[model.inputs[0].name] for b in data.batches(64)])
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    q = ort.InferenceSession(str(out), so).run(None, {model.inputs[0].name: x})[0]
    f = ort.InferenceSession(model.model.SerializeToString()).run(None,
                                                                  {model.inputs[0].name: x})[0]
    f64, q64 = f.astype(np.float64), q.astype(np.float64)
    plain_ort = 10 * np.log10((f64**2).sum() / ((f64 - q64) ** 2).sum())
    assert plain_ort == pytest.approx(measured.outputs[0].sqnr_db, abs=1e-3)


def test_every_transform_together_exports_what_was_measured(block, tmp_path: Path) -> None:
    """SmoothQuant folded into the LayerNorm, GPTQ weights, corrected biases: plain ONNX
    Runtime on the exported file against the original float model gives the reported SQNR."""
    model, stats, data = block
    cfg = _config(gptq=True, bias_correction=True)
    cfg = replace(cfg, activations=replace(ACTS, transforms=Transforms(
        smoothquant=SmoothQuant(None))))
    plan = transform_model(model, stats, cfg)
    results = analyze(plan.model, plan.stats, cfg)
    measured = run_to_completion(evaluate(plan.model, results, data, latency=False))
    out = tmp_path / "all.onnx"
    export_qdq(plan.model, results, out)
    x = np.concatenate([b["hidden_states"] for b in data.batches(48)])
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    q = ort.InferenceSession(str(out), so).run(None, {"hidden_states": x})[0].astype(np.float64)
    f = ort.InferenceSession(model.model.SerializeToString()).run(
        None, {"hidden_states": x})[0].astype(np.float64)
    plain_ort = 10 * np.log10((f**2).sum() / ((f - q) ** 2).sum())
    assert plain_ort == pytest.approx(measured.outputs[0].sqnr_db, abs=0.01)
