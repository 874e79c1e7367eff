"""Per-layer speed: ORT's profile parsed, its optimized nodes traced back to qviz's layers,
their times charged to kernels, Q/DQ and layout, and the slower layers explained.

Timing on a shared machine is noise: these tests assert the structure (which node maps where,
which kernel ran, how times add up) on real ORT sessions, and check the arithmetic with
controlled times put into real profiles — never how fast anything ran.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qviz.core.calibration.analysis import analyze
from qviz.core.calibration.config import QuantConfig, TensorConfig
from qviz.core.calibration.methods import Method, MethodSpec
from qviz.core.data.dataset import Dataset, load_data
from qviz.core.demo import DEMO_DIR
from qviz.core.graph.qdq import QdqModel, build_qdq
from qviz.core.model.loading import LoadedModel, TensorKind, load_model
from qviz.core.quant.formats import NumberFormat, PerTensor
from qviz.core.runtime.fusion import INTEGER_KERNELS, fusion_report
from qviz.core.runtime.node_map import map_nodes, strip_decorations
from qviz.core.runtime.profile import (
    NodeTime,
    SessionProfile,
    TimingBudget,
    parse_profile,
    profile_pair,
)
from qviz.core.runtime.sessions import SessionConfig
from qviz.core.runtime.slowdown import SlowCause, explain_slow_layers
from qviz.core.runtime.speed import LayerSpeed, SpeedProfile, attribute, layer_speed, named_float
from qviz.core.runtime.speed_text import fmt_ms, fmt_speedup, speed_lines
from qviz.core.stats.collect import CalibrationStats, collect_stats
from qviz.core.stats.collect import run_to_completion as collect_all

pytestmark = pytest.mark.skipif(
    not (DEMO_DIR / "model.onnx").is_file(), reason="the built-in demo is not there"
)
ONE_RUN = TimingBudget(seconds=0.0, min_runs=1, max_runs=1, warmup=0)


@pytest.fixture(scope="module")
def demo() -> tuple[LoadedModel, Dataset, CalibrationStats]:
    model = load_model(DEMO_DIR / "model.onnx")
    data = load_data(DEMO_DIR / "data.npz", model.inputs)
    stats = collect_all(collect_stats(model, data, batch_size=250))
    return model, data, stats


def feeds(data: Dataset, batch: int = 2) -> dict[str, np.ndarray]:
    return next(iter(data.batches(batch)))


def int8_qdq(
    model: LoadedModel, stats: CalibrationStats, cfg: QuantConfig | None = None
) -> QdqModel:
    return build_qdq(model, analyze(model, stats, cfg or QuantConfig()))


def profiles(model: LoadedModel, qdq: QdqModel, x: dict[str, np.ndarray]) -> tuple[
    SessionProfile, SessionProfile
]:
    return profile_pair(named_float(model), SessionConfig.for_float(), qdq.model,
                        SessionConfig.for_native(), x, ONE_RUN)


def controlled(profile: SessionProfile, ms: dict[str, float] | float) -> SessionProfile:
    """The same profile with every node's time replaced: by name, or one value for all."""
    nodes = {
        n: NodeTime(n, t.op_type, ms if isinstance(ms, float) else ms.get(n, 0.0))
        for n, t in profile.nodes.items()
    }
    return replace(profile, nodes=nodes)


# --------------------------------------------------------------------------- the profile file


def test_parse_profile_skips_warmup_sums_repeats_and_takes_medians() -> None:
    def run(ts: int, dur: int) -> dict[str, object]:
        return {"cat": "Session", "name": "model_run", "ts": ts, "dur": dur}

    def node(name: str, ts: int, dur: int) -> dict[str, object]:
        return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur,
                "args": {"op_name": "Conv"}}

    events = [
        run(0, 100), node("a", 10, 90),  # warm-up: left out
        run(200, 50), node("a", 210, 10), node("b", 220, 5), node("b", 230, 5),
        {"cat": "Node", "name": "a_fence_before", "ts": 205, "dur": 0},
        run(300, 60), node("a", 310, 30),  # b did not run here: counts 0
        run(400, 70), node("a", 410, 20), node("b", 420, 40),
    ]  # fmt: skip
    nodes, runs = parse_profile(events, skip_runs=1)
    assert runs == [0.05, 0.06, 0.07]
    assert nodes["a"].ms == pytest.approx(0.020) and nodes["a"].op_type == "Conv"
    assert nodes["b"].ms == pytest.approx(0.010)  # median of 0.010, 0, 0.040


def test_timing_budget_refuses_nonsense() -> None:
    from qviz.core.errors import QvizError

    with pytest.raises(QvizError):
        TimingBudget(min_runs=0)
    with pytest.raises(QvizError):
        TimingBudget(min_runs=5, max_runs=2)


# --------------------------------------------------------------------------- mapping


def test_ort_decorations_are_stripped() -> None:
    assert strip_decorations("node_Conv_65_token_1") == "node_Conv_65"
    assert strip_decorations("fused node_linear") == "node_linear"
    assert strip_decorations("fused relu_nchwc_token_12") == "relu"
    assert strip_decorations("plain") == "plain"


def _tiny_conv_graph() -> onnx.GraphProto:
    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu_node"),
        helper.make_node("Reshape", ["r", "shape"], ["y"], name="reshape"),
    ]
    shape = numpy_helper.from_array(np.array([1, -1], np.int64), "shape")
    return helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w, shape],
    )  # fmt: skip


def test_a_fused_kernel_covers_the_ops_between_its_inputs_and_outputs() -> None:
    src = _tiny_conv_graph()
    # ORT's shapes: Conv + Relu fused (named after its output tensor, in NCHWc), a reorder it
    # added itself, then the Reshape kept as it was.
    opt = helper.make_graph(
        [
            helper.make_node("ReorderInput", ["x"], ["x_nchwc"], name="ReorderInput"),
            helper.make_node("Conv", ["x_nchwc", "w_reordered"], ["t0"], name="r_nchwc",
                             domain="com.microsoft.nchwc"),
            helper.make_node("ReorderOutput", ["t0"], ["r"], name="ReorderOutput"),
            helper.make_node("Reshape", ["r", "shape"], ["y"], name="reshape"),
        ],
        "opt", [], [],
    )  # fmt: skip
    m = map_nodes(src, opt)
    assert m.covers["reshape"] == ("reshape",)
    assert m.covers["ReorderInput"] == ()
    # "r_nchwc" computes tensor "r": Conv and Relu, from the reordered x (which means x).
    assert set(m.covers["r_nchwc"]) == {"conv", "relu_node"}
    # The reorder back holds "r" in another layout: it computes nothing of the source.
    assert m.covers["ReorderOutput"] == ()
    assert m.named == {"reshape": "reshape"}
    # Both reorders serve the conv: the one in front feeds it, the one behind is fed by it.
    def is_conv(n: str) -> bool:
        return "conv" in m.covers.get(n, ())

    assert m.nearest("ReorderInput", is_conv) == "r_nchwc"
    assert m.nearest("ReorderOutput", is_conv) == "r_nchwc"


def test_every_demo_layer_maps_to_one_kernel_in_both_models(
    demo: tuple[LoadedModel, Dataset, CalibrationStats],
) -> None:
    model, data, stats = demo
    qdq = int8_qdq(model, stats)
    fp, qp = profiles(model, qdq, feeds(data))
    speed = attribute(model, qdq, controlled(fp, 1.0), controlled(qp, 1.0), batch_size=2)
    fusion = fusion_report(qdq)
    assert [x.name for x in speed.layers] == [layer.name for layer in model.layers]
    for x in speed.layers:
        assert x.quantized
        assert x.float_kernel and x.float_ms >= 1.0, x
        # What the profile says ran is what the fusion report says ORT fused it into.
        assert x.kernel == fusion.kernels[x.name] and x.kernel in INTEGER_KERNELS, x
        assert x.kernel_ms == pytest.approx(1.0), x  # one kernel per layer, nothing split
    # The model's input arrives in float: ORT quantizes it on every run, for features.0.
    first = speed.layers[0]
    assert first.qdq_ms == pytest.approx(1.0) and len(first.qdq_nodes) == 1
    assert not any(x.weight_dequantized for x in speed.layers)
    # Every profiled node is charged exactly once: the sums add up.
    for profile, side in ((fp, "float"), (qp, "quantized")):
        total = len(profile.nodes) * 1.0
        layers = sum(
            (x.float_ms if side == "float" else x.quantized_ms) for x in speed.layers
        )
        other = speed.other_float_ms if side == "float" else speed.other_quantized_ms
        assert layers + other == pytest.approx(total), side
    assert {n.index for n in speed.nodes} >= {layer.depth for layer in model.layers}


def test_charges_follow_controlled_times(
    demo: tuple[LoadedModel, Dataset, CalibrationStats],
) -> None:
    model, data, stats = demo
    qdq = int8_qdq(model, stats)
    fp, qp = profiles(model, qdq, feeds(data))
    first = model.layers[0]
    fmap, qmap = map_nodes(named_float(model).graph, fp.optimized), map_nodes(
        qdq.model.graph, qp.optimized
    )
    f_first = [n for n, c in fmap.covers.items() if first.node_name in c]
    q_first = [n for n, c in qmap.covers.items() if first.node_name in c]
    q_input = [n for n, t in qp.nodes.items() if t.op_type == "QuantizeLinear"]
    assert len(q_first) == 1 and len(q_input) == 1
    fmsv = {n: 0.5 for n in f_first}
    qms = {q_first[0]: 2.0, q_input[0]: 0.25}
    speed = attribute(model, qdq, controlled(fp, fmsv), controlled(qp, qms), batch_size=2)
    x = speed.layer(first.name)
    assert x is not None
    assert x.float_ms == pytest.approx(0.5 * len(f_first))
    assert x.kernel_ms == pytest.approx(2.0) and x.qdq_ms == pytest.approx(0.25)
    assert x.speedup == pytest.approx(x.float_ms / 2.25)
    assert speed.slower_layers() == (x,)
    slow = explain_slow_layers(speed, fusion_report(qdq), model.layers, {first.name: 8})
    assert [s.layer for s in slow] == [first.name]
    assert slow[0].cause is SlowCause.SLOW_KERNEL
    assert "keep the layer float" in slow[0].fix and "more to store" in slow[0].fix


def test_a_layer_left_float_dequantizes_its_weights_every_run(
    demo: tuple[LoadedModel, Dataset, CalibrationStats],
) -> None:
    model, data, stats = demo
    first = model.layers[0]
    assert first.weight is not None
    fp8 = TensorConfig(MethodSpec(Method.MINMAX), PerTensor(), NumberFormat.parse("fp8_e4m3fn"))
    qdq = int8_qdq(model, stats, QuantConfig().with_override(first.weight, fp8))
    fp, qp = profiles(model, qdq, feeds(data))
    speed = attribute(model, qdq, controlled(fp, 1.0), controlled(qp, 1.0), batch_size=2)
    x = speed.layer(first.name)
    assert x is not None
    assert x.kernel not in INTEGER_KERNELS and x.weight_dequantized
    assert x.qdq_nodes and x.qdq_ms > 0
    fusion = fusion_report(qdq)
    assert first.name in fusion.unfused and "int8" in fusion.fixes[first.name]
    slow = explain_slow_layers(speed, fusion)
    mine = [s for s in slow if s.layer == first.name]
    assert mine and mine[0].cause is SlowCause.NOT_FUSED
    assert "dequantized on every run" in mine[0].reason
    assert mine[0].fix == fusion.fixes[first.name]


# --------------------------------------------------------------------------- real runs


def test_layer_speed_times_both_models_side_by_side(
    demo: tuple[LoadedModel, Dataset, CalibrationStats],
) -> None:
    model, data, stats = demo
    qdq = int8_qdq(model, stats)
    budget = TimingBudget(seconds=0.0, min_runs=3, max_runs=3, warmup=1)
    speed = layer_speed(model, qdq, feeds(data, 4), budget=budget)
    assert speed.batch_size == 4 and speed.runs == 3
    assert speed.timing is not None and speed.timing.runs == 3
    assert speed.timing.a_ms > 0 and speed.timing.b_ms > 0
    assert speed.speedup == speed.timing.speedup
    assert all(x.float_ms > 0 and x.kernel_ms > 0 for x in speed.layers)
    doc = speed.to_json()
    assert [r["layer"] for r in doc["layers"]] == [layer.name for layer in model.layers]
    assert doc["whole_model_ms"]["runs"] == 3
    text = "\n".join(speed_lines(speed))
    assert "features.0" in text and "whole model" in text


def test_explanations_for_each_cause() -> None:
    def layer(**kw: object) -> LayerSpeed:
        base: dict[str, object] = dict(name="L", node="n", op_type="Conv", depth=0,
                                       quantized=True, float_ms=1.0, kernel_ms=0.5,
                                       float_kernel="Conv", kernel="QLinearConv")
        base.update(kw)
        return LayerSpeed(**base)  # type: ignore[arg-type]

    def cause(x: LayerSpeed) -> SlowCause | None:
        found = explain_slow_layers(SpeedProfile(1, 0, 1, 0.0, 0.0, (x,)))
        return found[0].cause if found else None

    assert cause(layer()) is None  # faster
    assert cause(layer(kernel_ms=1.02)) is None  # within the noise
    assert cause(layer(kernel_ms=1.5)) is SlowCause.SLOW_KERNEL
    assert cause(layer(qdq_ms=0.8, qdq_nodes=("x_QuantizeLinear",))) is SlowCause.QDQ_OVERHEAD
    assert cause(layer(layout_ms=0.8)) is SlowCause.LAYOUT
    assert cause(layer(kernel="Conv", kernel_ms=1.0, qdq_ms=0.3)) is SlowCause.NOT_FUSED
    assert cause(layer(quantized=False, kernel="Conv", kernel_ms=2.0)) is None  # kept float


def test_speed_text() -> None:
    assert fmt_ms(0.0061) == "0.006" and fmt_ms(1.524) == "1.52" and fmt_ms(1520.4) == "1520"
    assert fmt_speedup(1.29) == "1.29× faster"
    assert fmt_speedup(0.25) == "0.25× (4× slower)"
    assert fmt_speedup(1.001) == "1.00× (same)"


def test_weight_tensor_kind_is_what_the_builder_records(
    demo: tuple[LoadedModel, Dataset, CalibrationStats],
) -> None:
    # The attribution finds weight DequantizeLinear nodes by the stored initializer names the
    # Q/DQ record gives; they must be the DQ nodes' first inputs.
    model, _, stats = demo
    qdq = int8_qdq(model, stats)
    stored = {t.stored_name for t in qdq.tensors if t.kind is TensorKind.WEIGHT}
    dq_inputs = {n.input[0] for n in qdq.model.graph.node if n.op_type == "DequantizeLinear"}
    assert stored and stored <= dq_inputs
