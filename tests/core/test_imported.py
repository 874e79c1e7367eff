"""Importing quantized models: every format read back exactly, the float original matched or
derived, QOperator rewritten, repairs that touch only what changed, and one clear line for
each kind of bad input.

Many Q/DQ models here are written by qviz's own builder (another tool's output, as far as the
importer knows): what the builder wrote is what the import must read, bit for bit.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper
from onnxruntime.quantization import QuantFormat, quantize_dynamic

from qviz.core.calibration.analysis import TensorKey, analyze
from qviz.core.calibration.config import QuantConfig, TensorConfig
from qviz.core.calibration.methods import Method, MethodSpec
from qviz.core.data.dataset import load_data
from qviz.core.demo import demo_paths
from qviz.core.errors import QvizError
from qviz.core.evaluation.evaluate import Metric, evaluate
from qviz.core.files.config_file import load_config, results_from_saved, save_config
from qviz.core.graph.qdq import build_qdq, save_qdq_model
from qviz.core.imported.configs import (
    imported_config,
    own_choice_config,
    restricted_to_imported,
    with_imported_params,
)
from qviz.core.imported.repair import as_imported
from qviz.core.imported.types import PairKind
from qviz.core.model.loading import LoadedModel, TensorKind, from_proto, load_model
from qviz.core.quant.formats import NumberFormat, PerAxis, PerGroup, PerTensor
from qviz.core.quant.imported_params import ImportedParams
from qviz.core.quant.qparams import QParams
from qviz.core.search.precisions import Precision, assignment_config, parse_precisions
from qviz.core.stats.collect import CalibrationStats, collect_stats, run_to_completion
from tests.core import model_factory as mf
from tools.quantized_examples import quantize_demo

A, W = TensorKind.ACTIVATION, TensorKind.WEIGHT
N_SAMPLES = 64


def _data(path: Path, seed: int = 0) -> Path:
    x = np.random.default_rng(seed).normal(size=(N_SAMPLES, 16)).astype(np.float32)
    out = path / "x.npz"
    np.savez(out, x=x)
    return out


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LoadedModel, CalibrationStats]:
    folder = tmp_path_factory.mktemp("mlp")
    path = mf.save(mf.make_mlp(), folder / "mlp.onnx")
    model = load_model(path)
    stats = run_to_completion(collect_stats(model, load_data(_data(folder), model.inputs)))
    return path, model, stats


def _config(weights: str, w_gran: object, acts: str, act_sym: bool = False) -> QuantConfig:
    w_fmt = NumberFormat.parse(weights, symmetric=True)
    a_fmt = NumberFormat.parse(acts, symmetric=act_sym)
    return QuantConfig(
        weights=TensorConfig(MethodSpec(Method.MINMAX), w_gran, w_fmt),  # type: ignore[arg-type]
        activations=TensorConfig(MethodSpec(Method.PERCENTILE), PerTensor(), a_fmt),
    )


CONFIGS = {
    "int8 per-channel / uint8": _config("int8", PerAxis(), "uint8"),
    "int4 blockwise / int8": _config("int4", PerGroup(8), "int8"),
    "uint4 per-tensor / uint8": _config("uint4", PerTensor(), "uint8"),
    "fp8 e4m3fn / fp8 e5m2": _config("fp8_e4m3fn", PerAxis(), "fp8_e5m2"),
    "int8 / int16": _config("int8", PerAxis(), "int16", act_sym=True),
    "int8 / uint16": _config("int8", PerAxis(), "uint16"),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_format_reads_back_bit_for_bit(
    name: str, mlp: tuple[Path, LoadedModel, CalibrationStats], tmp_path: Path
) -> None:
    float_path, model, stats = mlp
    results = analyze(model, stats, CONFIGS[name])
    qdq_path = tmp_path / "q.onnx"
    save_qdq_model(build_qdq(model, results), qdq_path)
    imported = load_model(qdq_path, float_model=float_path)
    assert imported.imported is not None
    for r in results:
        kind = PairKind.WEIGHT if r.kind is W else PairKind.ACTIVATION
        pair = imported.imported.pair(r.name, kind)
        assert pair is not None and pair.fmt is not None, r.name
        qp = pair.params.qparams
        assert (pair.fmt.kind, pair.fmt.bits, pair.fmt.signed) == (
            r.config.fmt.kind, r.config.fmt.bits, r.config.fmt.signed), r.name
        assert np.array_equal(qp.scale, r.qparams.scale), r.name
        assert np.array_equal(qp.zero_point.astype(np.float64),
                              np.asarray(r.qparams.zero_point).astype(np.float64)), r.name
        assert (qp.axis, qp.block_size) == (r.qparams.axis, r.qparams.block_size), r.name
    back = {t.name: t for t in analyze(imported, stats_for(imported, float_path),
                                       imported_config(imported))}
    for r in results:
        mine = back[r.name]
        assert mine.config.spec.method is Method.IMPORTED
        assert mine.metrics.sqnr_db == pytest.approx(r.metrics.sqnr_db, rel=1e-9), r.name
    # The imported model as it is runs, and is the file byte for byte.
    qdq = build_qdq(imported, list(back.values()))
    assert qdq.model.SerializeToString() == imported.imported.quantized.SerializeToString()


def stats_for(model: LoadedModel, float_path: Path) -> CalibrationStats:
    return run_to_completion(collect_stats(model, load_data(_data(float_path.parent),
                                                            model.inputs)))


def test_granularities_and_layers_of_an_imported_blockwise_model(
    mlp: tuple[Path, LoadedModel, CalibrationStats], tmp_path: Path
) -> None:
    float_path, model, stats = mlp
    qdq_path = tmp_path / "q.onnx"
    save_qdq_model(build_qdq(model, analyze(model, stats, CONFIGS["int4 blockwise / int8"])),
                   qdq_path)
    imported = load_model(qdq_path, float_model=float_path)
    config = imported_config(imported)
    assert config.for_tensor("fc2.weight", W).granularity == PerGroup(8)
    assert config.for_tensor("fc2.weight", W).fmt.spec == "int4"
    # qviz's builder quantizes fc1's output for ORT's fusion: a pair on the Relu's input.
    assert imported.imported.pair("h", PairKind.ACTIVATION) is not None
    assert "Relu" in {layer.op_type for layer in imported.layers}
    own = own_choice_config(imported)
    assert own.for_tensor("fc2.weight", W).granularity == PerGroup(8)
    assert own.for_tensor("fc2.weight", W).spec.method is Method.MINMAX


# ------------------------------------------------------------------------ bad input


def _int8_qdq(tmp_path: Path, mlp: tuple[Path, LoadedModel, CalibrationStats]) -> Path:
    _float_path, model, stats = mlp
    qdq_path = tmp_path / "q.onnx"
    save_qdq_model(build_qdq(model, analyze(model, stats, CONFIGS["int8 per-channel / uint8"])),
                   qdq_path)
    return qdq_path


def _one_line(exc: pytest.ExceptionInfo[QvizError]) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_inconsistent_scales_between_q_and_dq_name_both_nodes(
    mlp: tuple[Path, LoadedModel, CalibrationStats], tmp_path: Path
) -> None:
    model = onnx.load(str(_int8_qdq(tmp_path, mlp)))
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear"
              and n.input[0].endswith("_quantized") and "weight" not in n.input[0])
    scale = numpy_helper.to_array(next(t for t in model.graph.initializer
                                       if t.name == dq.input[1]))
    model.graph.initializer.append(numpy_helper.from_array(scale * 2, "other_scale"))
    dq.input[1] = "other_scale"
    with pytest.raises(QvizError) as info:
        from_proto(model)
    text = _one_line(info)
    assert "inconsistent scales" in text and dq.name in text


def test_a_float_model_that_is_not_the_source_is_refused(
    mlp: tuple[Path, LoadedModel, CalibrationStats], tmp_path: Path
) -> None:
    qdq_path = _int8_qdq(tmp_path, mlp)
    other = mf.save(mf.make_conv_net(), tmp_path / "conv.onnx")
    with pytest.raises(QvizError) as info:
        load_model(qdq_path, float_model=other)
    assert "matches no tensor of the float model" in _one_line(info)

    retrained = mf.save(mf.make_mlp(seed=9), tmp_path / "retrained.onnx")
    with pytest.raises(QvizError) as info:
        load_model(qdq_path, float_model=retrained)
    text = _one_line(info)
    assert "weight 'fc1.weight' differs" in text and "not this model's source" in text

    changed = mf.make_mlp()
    next(n for n in changed.graph.node if n.op_type == "Relu").op_type = "Sigmoid"
    sigmoid = mf.save(changed, tmp_path / "sigmoid.onnx")
    with pytest.raises(QvizError) as info:
        load_model(qdq_path, float_model=sigmoid)
    assert "node 'relu' (Relu) of the quantized model is not in the float model" in _one_line(
        info)

    with pytest.raises(QvizError, match="is itself quantized"):
        load_model(qdq_path, float_model=qdq_path)
    with pytest.raises(QvizError, match="is not quantized"):
        load_model(mlp[0], float_model=mlp[0])


def test_dynamic_quantization_is_one_clear_line(tmp_path: Path) -> None:
    out = tmp_path / "dynamic.onnx"
    quantize_dynamic(str(demo_paths().model), str(out))
    with pytest.raises(QvizError) as info:
        load_model(out)
    text = _one_line(info)
    assert "has no exact Q/DQ form" in text and "quantize_static" in text


def test_qlinear_and_integer_ops_are_named_when_unreadable() -> None:
    model = mf.make_mlp()
    model.graph.node.append(helper.make_node("MatMulInteger", ["a", "b"], ["c"], name="mmi"))
    with pytest.raises(QvizError, match=r"MatMulInteger node 'mmi' has no exact Q/DQ form"):
        from_proto(model)


# ------------------------------------------------------------------------ QOperator


def test_qoperator_model_converts_to_qdq_exactly(tmp_path: Path) -> None:
    path = quantize_demo(tmp_path / "qop.onnx", fmt=QuantFormat.QOperator)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QLinearConv", "QGemm"} <= ops
    model = load_model(path, float_model=demo_paths().model)
    assert model.imported is not None and model.imported.converted_from == "QOperator"
    converted = as_imported(model).model
    assert not any(n.op_type.startswith("QLinear") or n.op_type == "QGemm"
                   for n in converted.graph.node)
    x = np.load(demo_paths().data)["input"][:256]
    want = ort.InferenceSession(str(path)).run(None, {"input": x})[0]
    got = ort.InferenceSession(converted.SerializeToString()).run(None, {"input": x})[0]
    assert np.array_equal(want, got)  # ORT fuses the Q/DQ form back into the same kernels
    # Its tensors are the float model's: the Relus it folded map onto their outputs.
    config = imported_config(model)
    assert config.for_tensor("relu", A).spec.method is Method.IMPORTED


# ------------------------------------------------------------------------ configurations


def _imported_int8(
    tmp_path: Path, mlp: tuple[Path, LoadedModel, CalibrationStats]
) -> tuple[LoadedModel, CalibrationStats, QuantConfig]:
    """The int8 Q/DQ mlp imported with its float original, its statistics and settings."""
    imported = load_model(_int8_qdq(tmp_path, mlp), float_model=mlp[0])
    return imported, stats_for(imported, mlp[0]), imported_config(imported)


def test_config_file_and_session_keep_the_imported_parameters(
    mlp: tuple[Path, LoadedModel, CalibrationStats], tmp_path: Path
) -> None:
    imported, stats, config = _imported_int8(tmp_path, mlp)
    results = analyze(imported, stats, config)
    path = tmp_path / "imported.json"
    save_config(path, imported, config, results)
    saved = load_config(path)
    assert saved.model_float_source == str(mlp[0])
    again = results_from_saved(imported, saved)
    assert all(r.config.spec.method is Method.IMPORTED for r in again)
    assert saved.quant_config == config  # parameters compared bit for bit
    qdq = build_qdq(imported, again)
    assert qdq.model.SerializeToString() == imported.imported.quantized.SerializeToString()
    # Settings stored by name only (a session) get the model's pairs back, codes included.
    bare = QuantConfig(config.weights, config.activations, {
        name: replace(cfg, spec=MethodSpec(Method.IMPORTED)) if cfg.spec.imported else cfg
        for name, cfg in config.overrides.items()
    })
    restored = with_imported_params(bare, imported)
    assert restored == config
    assert restored.for_tensor("fc1.weight", W).spec.imported.codes is not None


def test_settings_apply_to_the_imported_tensors_only(tmp_path: Path) -> None:
    model = load_model(quantize_demo(tmp_path / "q.onnx"), float_model=demo_paths().model)
    imported = imported_config(model)
    restricted = restricted_to_imported(QuantConfig(), model)
    for t in model.layers:
        for act in t.activations:
            assert restricted.for_tensor(act, A).quantize == imported.for_tensor(act, A).quantize


def test_mixed_precision_can_keep_or_drop_imported_pairs(tmp_path: Path) -> None:
    model = load_model(quantize_demo(tmp_path / "q.onnx"), float_model=demo_paths().model)
    base = imported_config(model)
    levels = parse_precisions("imported,float")
    assert [p.name for p in levels] == ["imported", "float"]
    keep, drop = levels
    assert keep.keeps_base and not keep.is_float and drop.is_float
    all_kept = assignment_config(model, base, {}, keep)
    assert all_kept == base
    dropped = assignment_config(model, base, {"features.3": drop}, keep)
    assert not dropped.for_tensor("features.3.weight", W).quantize
    assert not dropped.for_tensor("relu", A).quantize
    assert dropped.for_tensor("relu_1", A) == base.for_tensor("relu_1", A)
    assert Precision.parse("imported") == keep


def test_repair_changes_formats_and_adds_pairs(
    mlp: tuple[Path, LoadedModel, CalibrationStats], tmp_path: Path
) -> None:
    imported, stats, config = _imported_int8(tmp_path, mlp)
    # fc2's weight to int4 blockwise, its input to 6-bit (simulated) and fc1's weight float.
    config = config.with_override("fc2.weight", TensorConfig(
        MethodSpec(Method.MINMAX), PerGroup(8), NumberFormat.parse("int4")))
    config = config.with_override("hr", TensorConfig(
        MethodSpec(Method.MSE), PerTensor(), NumberFormat.parse("uint6", symmetric=False)))
    config = config.with_override("fc1.weight", replace(config.for_tensor("fc1.weight", W),
                                                        quantize=False))
    results = analyze(imported, stats, config)
    qdq = build_qdq(imported, results)
    assert qdq.opset >= 21
    by = {t.name: t for t in qdq.tensors}
    assert by["fc2.weight"].qparams.block_size == 8
    assert "fc1.weight" not in by
    graph = qdq.model.graph
    assert any(n.op_type == "Clip" for n in graph.node)  # uint6 held in a uint8 pair
    assert any(t.data_type == onnx.TensorProto.INT4 for t in graph.initializer)
    assert "fc1.weight" in {t.name for t in graph.initializer}  # float again, from the original
    data = load_data(_data(tmp_path), imported.inputs)
    ev = run_to_completion(evaluate(imported, qdq, data, latency=False))
    assert 0.99 < ev.quantized_metrics[Metric.COSINE] < 1.0


def test_imported_analysis_needs_its_parameters() -> None:
    spec = MethodSpec(Method.IMPORTED)
    assert spec.imported is None
    params = ImportedParams(QParams(np.float32(0.1), np.int8(0)))
    with pytest.raises(TypeError, match=r"apply to Method\.IMPORTED"):
        MethodSpec(Method.MINMAX, imported=params)
    # Equal parameters are equal specs (cache keys), whatever codes ride along.
    with_codes = ImportedParams(QParams(np.float32(0.1), np.int8(0)), np.zeros(3, np.int8))
    assert MethodSpec(Method.IMPORTED, imported=params) == MethodSpec(
        Method.IMPORTED, imported=with_codes)
    other = ImportedParams(QParams(np.float32(0.1000001), np.int8(0)))
    assert params != other


def test_a_quantized_model_without_float_opens_derived(tmp_path: Path) -> None:
    model = from_proto(mf.make_quantized_model(n_pairs=3))
    assert model.imported is not None and model.imported.derived
    assert model.imported.counts()[PairKind.ACTIVATION] == 3
    assert {layer.op_type for layer in model.layers} == {"Relu"}
    assert TensorKey("x", A) in {t for t in (TensorKey(a, A) for layer in model.layers
                                             for a in layer.activations)}
