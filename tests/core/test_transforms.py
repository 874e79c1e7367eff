"""Channel rescalings (SmoothQuant, cross-layer equalization): where they live in the graph,
that the float model keeps its function, and that the quantized model gets better."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnxruntime as ort
import pytest

from qviz.core.calibration.config import QuantConfig, TensorConfig
from qviz.core.calibration.methods import Method, MethodSpec
from qviz.core.errors import QvizError
from qviz.core.model.loading import LoadedModel, TensorKind, from_proto
from qviz.core.quant.formats import NumberFormat, PerTensor
from qviz.core.stats.collect import CalibrationStats
from qviz.core.transforms.plan import ScalingKind, transform_model
from qviz.core.transforms.settings import SmoothQuant, Transforms
from tests.core.transform_models import calibrated, conv_pair, output_sqnr, softmax_mlp
from tools.synthetic.block import NORM_OUTPUT, BlockSpec, block_proto

MSE_ACTS = replace(QuantConfig().activations, spec=MethodSpec(Method.MSE))


def _config(acts: Transforms, weights: TensorConfig | None = None) -> QuantConfig:
    base = QuantConfig()
    return QuantConfig(weights=weights or base.weights,
                       activations=replace(MSE_ACTS, transforms=acts))


def _outputs(model: LoadedModel, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.model.SerializeToString(),
                                providers=["CPUExecutionProvider"])
    return sess.run(None, {model.inputs[0].name: x})[0]


@pytest.fixture(scope="module")
def block() -> tuple[LoadedModel, CalibrationStats, object]:
    return calibrated(block_proto(BlockSpec()), n=48)


@pytest.mark.parametrize("text", ["1.5", "-0.1", "nan", "half"])
def test_alpha_outside_zero_one_is_one_line(text: str) -> None:
    with pytest.raises(QvizError) as info:
        SmoothQuant.parse(text)
    assert "\n" not in str(info.value) and "[0, 1]" in str(info.value)


def test_alpha_parses() -> None:
    assert SmoothQuant.parse("auto").auto and SmoothQuant.parse(" 0.25 ").alpha == 0.25
    assert SmoothQuant.parse("1").spec == "1" and SmoothQuant(None).spec == "auto"


def test_smoothquant_folds_into_the_layernorm_and_keeps_the_function(block) -> None:
    model, stats, data = block
    plan = transform_model(model, stats, _config(Transforms(smoothquant=SmoothQuant(0.5))))
    applied = plan.scalings[NORM_OUTPUT]
    assert applied.kind is ScalingKind.SMOOTHQUANT and applied.site.folded
    assert "LayerNormalization 'block.norm'" in applied.site.expression
    # The planted channels get the largest scales.
    planted = {2, 14, 49}
    assert set(np.argsort(-applied.scales)[:3]) == planted
    x = np.concatenate([b["hidden_states"] for b in data.batches(48)])
    np.testing.assert_allclose(_outputs(plan.model, x), _outputs(model, x), rtol=1e-4, atol=1e-4)
    # The rescaled activation's statistics are those of X / s.
    before, after = stats.tensors[NORM_OUTPUT], plan.stats.tensors[NORM_OUTPUT]
    assert before.channel_max is not None and after.channel_max is not None
    np.testing.assert_allclose(after.channel_max, before.channel_max / applied.scales)
    assert after.abs_max < before.abs_max / 5
    # Contexts name what the scale touched: the activation and the weight reading it.
    assert plan.context(NORM_OUTPUT, TensorKind.ACTIVATION) == \
        plan.context("block.mlp.fc1.weight", TensorKind.WEIGHT) != ""
    assert plan.context("block.mlp.fc2.weight", TensorKind.WEIGHT) != ""


def test_smoothquant_auto_gains_6_db_at_the_output(block) -> None:
    model, stats, data = block
    none, _ = output_sqnr(model, stats, data, _config(Transforms()))
    auto, plan = output_sqnr(model, stats, data, _config(Transforms(smoothquant=SmoothQuant(None))))
    assert auto >= none + 6.0, (none, auto)
    search = plan.scalings[NORM_OUTPUT].search
    assert search is not None and search.best == plan.scalings[NORM_OUTPUT].alpha
    assert search.errors[list(search.alphas).index(search.best)] == search.errors.min()


def test_explicit_mul_where_nothing_can_take_the_scale() -> None:
    model, stats, data = calibrated(softmax_mlp())
    plan = transform_model(model, stats, _config(Transforms(smoothquant=SmoothQuant(0.5))))
    site = plan.scalings["p"].site
    assert not site.folded and "Softmax" in site.mul_reason
    assert "x" in plan.skipped and "model input" in plan.skipped["x"]
    ops = [n.op_type for n in plan.model.model.graph.node]
    assert ops.count("Mul") == 1
    x = np.concatenate([b["x"] for b in data.batches(64)])
    np.testing.assert_allclose(_outputs(plan.model, x), _outputs(model, x), rtol=1e-4, atol=1e-5)
    assert [layer.name for layer in plan.model.layers] == [layer.name for layer in model.layers]


@pytest.mark.parametrize("act", ["Relu", "Relu6", "LeakyRelu", None])
def test_equalization_balances_the_pair_and_keeps_the_function(act: str | None) -> None:
    model, stats, data = calibrated(conv_pair(act))
    plan = transform_model(model, stats, _config(Transforms(equalize=True)))
    mid = model.layers[1].activations[0]
    applied = plan.scalings[mid]
    assert applied.kind is ScalingKind.EQUALIZE
    w1, w2 = plan.model.weight("w1"), plan.model.weight("w2")
    r1 = np.abs(w1).reshape(8, -1).max(axis=1)
    r2 = np.abs(w2).transpose(1, 0, 2, 3).reshape(8, -1).max(axis=1)
    np.testing.assert_allclose(r1, r2, rtol=1e-5)
    x = np.concatenate([b["x"] for b in data.batches(64)])
    np.testing.assert_allclose(_outputs(plan.model, x), _outputs(model, x), rtol=1e-4, atol=1e-5)
    if act == "Relu6":
        ops = [n.op_type for n in plan.model.model.graph.node]
        assert "Clip" not in ops and "Min" in ops


def test_equalization_helps_per_tensor_int4_weights() -> None:
    model, stats, data = calibrated(conv_pair("Relu"))
    w4 = replace(QuantConfig().weights, fmt=NumberFormat(bits=4), granularity=PerTensor())
    none, _ = output_sqnr(model, stats, data, _config(Transforms(), w4))
    eq, _ = output_sqnr(model, stats, data, _config(Transforms(equalize=True), w4))
    assert eq > none + 3.0, (none, eq)


def test_equalization_says_why_it_does_not_apply(block) -> None:
    model, stats, _ = block
    plan = transform_model(model, stats, _config(Transforms(equalize=True)))
    assert plan.identity
    assert "LayerNormalization" in plan.skipped[NORM_OUTPUT]
    assert all("\n" not in why for why in plan.skipped.values())


def test_statistics_without_per_channel_data_say_recollect(block) -> None:
    model, stats, _ = block
    old = replace(stats, tensors={k: replace(t, moments=None) for k, t in stats.tensors.items()})
    with pytest.raises(QvizError, match="recollect to use SmoothQuant"):
        transform_model(model, old, _config(Transforms(smoothquant=SmoothQuant(0.5))))


def test_plans_are_cached_and_identity_without_rescaling(block) -> None:
    model, stats, _ = block
    cfg = _config(Transforms(smoothquant=SmoothQuant(0.3)))
    assert transform_model(model, stats, cfg) is transform_model(model, stats, cfg)
    plain = transform_model(model, stats, _config(Transforms()))
    assert plain.identity and plain.model is model and plain.stats is stats


def test_a_shared_weight_is_not_rescaled() -> None:
    proto = softmax_mlp()
    # fc2 reads its weight, and so does another MatMul: scaling it would change both.
    from onnx import helper

    proto.graph.node.append(helper.make_node("MatMul", ["p", "w2"], ["z"], name="fc3"))
    proto.graph.output.append(helper.make_tensor_value_info("z", 1, ["N", 4, 8]))
    model = from_proto(proto, sha256="shared")
    _, stats, _ = calibrated(proto)
    stats = replace(stats, model_sha256=model.sha256)
    plan = transform_model(model, stats, _config(Transforms(smoothquant=SmoothQuant(0.5))))
    assert "shared" in plan.skipped["p"]


def test_stored_weight_statistics_of_rescaled_weights_are_dropped(block) -> None:
    """A stats file's statistics of a weight describe the untransformed weight: the plan keeps
    those of the weights no rescaling touched and drops the others (measured again later)."""
    from qviz.core.stats.weight_stats import compute_weight_stats

    model, stats, _ = block
    names = ["block.mlp.fc1.weight", "block.mlp.fc2.weight"]
    stored = {n: compute_weight_stats(model.weight(n), n, 0) for n in names}
    with_weights = replace(stats, weights=stored)
    plan = transform_model(model, with_weights, _config(Transforms(smoothquant=SmoothQuant(0.5))))
    assert plan.stats is not None
    rescaled = {n for n in names if plan.context(n, TensorKind.WEIGHT)}
    assert rescaled and set(plan.stats.weights) == set(names) - rescaled
    assert plan.stats.weights.get(next(iter(rescaled))) is None


def test_smoothquant_on_a_model_with_external_data_reads_and_writes_files(
    tmp_path, monkeypatch, block
) -> None:
    """A model whose weights are in a data file (every large model): the norm weights are
    read from that file (not from the working folder), the rescaled tensors go to a folder of
    the transformed model's own, and it computes what the in-memory transform computes."""
    from qviz.core.model.loading import load_model
    from qviz.core.runtime.sessions import SessionConfig, build_session
    from tests.core.model_factory import save

    inline, stats, data = block
    (tmp_path / "model").mkdir()
    path = save(block_proto(BlockSpec()), tmp_path / "model" / "block.onnx", external_data=True)
    monkeypatch.chdir(tmp_path)  # data files resolved against the working folder would fail
    on_disk = load_model(path)
    assert on_disk.data_dir is not None
    cfg = _config(Transforms(smoothquant=SmoothQuant(0.5)))
    expected = transform_model(inline, stats, cfg).model
    plan = transform_model(on_disk, replace(stats, model_sha256=on_disk.sha256), cfg)
    assert plan.scalings and plan.model.data_dir not in (None, on_disk.data_dir)
    x = next(iter(data.batches(16)))[inline.inputs[0].name]
    session = build_session(plan.model.model, SessionConfig.for_float(),
                            data_dir=plan.model.data_dir)
    np.testing.assert_allclose(session.run(None, {inline.inputs[0].name: x})[0],
                               _outputs(expected, x), rtol=1e-5, atol=1e-5)

    # Its Q/DQ graph in a folder of its own too (as a large model's is): every tensor the
    # rescaled model kept in its folder is copied, though both folders name their file alike.
    from qviz.core.calibration.analysis import analyze
    from qviz.core.graph import qdq_builder
    from qviz.core.graph.qdq import build_qdq

    monkeypatch.setattr(qdq_builder, "INLINE_NEW_BYTES", 0)
    qdq = build_qdq(plan.model, analyze(plan.model, plan.stats, cfg))
    assert qdq.data_dir not in (None, plan.model.data_dir)
    sim = build_session(qdq.model, SessionConfig.for_simulation(), data_dir=qdq.data_dir)
    inline_plan = transform_model(inline, stats, cfg)
    want = build_qdq(inline_plan.model, analyze(inline_plan.model, inline_plan.stats, cfg))
    ref = build_session(want.model, SessionConfig.for_simulation())
    feed = {inline.inputs[0].name: x}
    np.testing.assert_allclose(sim.run(None, feed)[0], ref.run(None, feed)[0],
                               rtol=1e-5, atol=1e-5)


def test_skipped_sites_are_one_note_per_reason() -> None:
    """A decoder skips the same sites in every block: one line per reason, not one per site."""
    from qviz.core.transforms.plan import TransformPlan

    model = from_proto(softmax_mlp(), sha256="notes")
    skipped = {f"block{i}.scores_in": f"MatMul 'block{i}.scores' has no constant weight"
               for i in range(5)}
    skipped["p"] = "it has no per-channel statistics (no fixed feature axis)"
    notes = TransformPlan(model, None, model, None, skipped=skipped).notes
    assert notes == (
        "5 activations not rescaled, e.g. 'block0.scores_in': MatMul 'block0.scores' has no "
        "constant weight",
        "'p' not rescaled: it has no per-channel statistics (no fixed feature axis)",
    )
