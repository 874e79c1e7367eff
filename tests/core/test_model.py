"""Model loading and layer discovery on tiny ONNX graphs built in code."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qviz.core.errors import QvizError
from qviz.core.model import onnx_graph
from qviz.core.model.loading import InputSpec, LoadedModel, TensorKind, from_proto, load_model
from qviz.core.runtime.sessions import DATA_FOLDER_KEY

try:  # works whether or not tests/ is a package
    from tests.core import model_factory as mf
except ImportError:
    import model_factory as mf


def run(model: LoadedModel, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    if model.data_dir is not None:
        options.add_session_config_entry(DATA_FOLDER_KEY, str(model.data_dir))
    session = ort.InferenceSession(
        model.model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, feeds)


def conv_input(n: int = 2) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 3, 8, 8)).astype(np.float32)


# ------------------------------------------------------------------------ loading files


def test_load_conv_net_from_file(tmp_path: Path) -> None:
    path = mf.save(mf.make_conv_net(), tmp_path / "net.onnx")
    model = load_model(path)
    assert model.source == path
    assert model.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert model.inputs == (InputSpec("x", (None, 3, 8, 8), np.dtype(np.float32)),)
    assert model.outputs == ("probs",)
    assert [layer.name for layer in model.layers] == ["conv1", "conv2", "fc"]
    assert model.notes == ()
    (probs,) = run(model, {"x": conv_input()})
    assert probs.shape == (2, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_load_model_accepts_str_paths(tmp_path: Path) -> None:
    path = mf.save(mf.make_mlp(), tmp_path / "mlp.onnx")
    assert load_model(str(path)).outputs == ("y",)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("random.onnx", bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8)),
         "not a valid ONNX"),
        ("empty.onnx", b"", "not a valid ONNX"),
        ("text.onnx", b"hello, I am not a model\n" * 10, "not a valid ONNX"),
    ],
)
def test_garbage_files_are_refused(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(QvizError, match=message):
        load_model(path)


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    data = mf.make_conv_net().SerializeToString()
    for cut in (len(data) // 3, len(data) // 2, len(data) - 7):
        path = tmp_path / f"cut{cut}.onnx"
        path.write_bytes(data[:cut])
        with pytest.raises(QvizError):
            load_model(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(QvizError, match="not found"):
        load_model(tmp_path / "nope.onnx")


def test_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(QvizError, match="folder"):
        load_model(tmp_path)


@pytest.mark.parametrize("name", ["model.tflite", "model.h5", "README"])
def test_unsupported_extension(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"\x00" * 16)
    with pytest.raises(QvizError, match="unsupported model file type"):
        load_model(path)


def test_a_quantized_model_is_imported_not_refused(tmp_path: Path) -> None:
    # Q/DQ models open with their pairs as an "imported" configuration (tests/core/
    # test_imported.py); with no float original given, one is derived from the model.
    path = mf.save(mf.make_quantized_model(n_pairs=3), tmp_path / "qdq.onnx")
    model = load_model(path)
    assert model.imported is not None and model.imported.derived
    assert any("imported 3 activation pairs" in n for n in model.notes)


def test_integer_ops_without_a_qdq_form_are_named() -> None:
    model = mf.make_mlp()
    model.graph.node.append(
        helper.make_node("MatMulInteger", ["a", "b"], ["c"], name="mmi")
    )
    with pytest.raises(QvizError, match="MatMulInteger node 'mmi' has no exact Q/DQ form"):
        from_proto(model)


def test_invalid_graph_is_refused() -> None:
    model = mf.make_mlp()
    model.graph.node[2].input[0] = "does_not_exist"
    with pytest.raises(QvizError, match="invalid"):
        from_proto(model)


def test_too_old_opset_is_refused() -> None:
    model = mf.make_mlp()
    model.opset_import[0].version = 5
    with pytest.raises(QvizError, match="opset 5 is too old"):
        from_proto(model)


# --------------------------------------------------------------------- graph rewrites


def test_opset11_model_is_upgraded_and_runs(tmp_path: Path) -> None:
    old = load_model(mf.save(mf.make_conv_net(opset=11), tmp_path / "old.onnx"))
    new = load_model(mf.save(mf.make_conv_net(opset=17), tmp_path / "new.onnx"))
    opset = {o.domain: o.version for o in old.model.opset_import}[""]
    assert opset == 17
    assert any("opset 11 was upgraded to 17" in n for n in old.notes)
    onnx.checker.check_model(old.model, full_check=True)
    x = conv_input(3)
    np.testing.assert_allclose(run(old, {"x": x})[0], run(new, {"x": x})[0], atol=1e-6)
    assert [layer.name for layer in old.layers] == [layer.name for layer in new.layers]


@pytest.mark.parametrize("copy_whole_bytes", [64 << 20, 0])
def test_upgrade_keeps_large_weights_exactly(
    monkeypatch: pytest.MonkeyPatch, copy_whole_bytes: int
) -> None:
    # Large tensors go through the converter as placeholders and are put back afterwards;
    # with the threshold at 0 the copy-without-weights path for huge models is taken too.
    monkeypatch.setattr(onnx_graph, "COPY_WHOLE_BYTES", copy_whole_bytes)
    old = from_proto(mf.make_mlp(opset=11))
    new = from_proto(mf.make_mlp(opset=17))
    assert any("upgraded" in n for n in old.notes)
    for name in ("fc1.weight", "fc2.weight", "fc2.bias"):
        np.testing.assert_array_equal(old.weight(name), new.weight(name))
    assert not any(
        e.value == "__qviz_stripped__" for t in old.model.graph.initializer for e in t.external_data
    )
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    np.testing.assert_allclose(run(old, {"x": x})[0], run(new, {"x": x})[0], rtol=1e-6)


def test_strict_shape_check_failure_is_a_note() -> None:
    model = mf.make_mlp()
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 11  # declared wrong
    loaded = from_proto(model)
    assert any("strict ONNX shape check failed" in n for n in loaded.notes)


def test_opset13_and_newer_are_kept() -> None:
    for opset in (13, 17, 21):
        model = from_proto(mf.make_mlp(opset=opset))
        assert {o.domain: o.version for o in model.model.opset_import}[""] == opset


def test_constant_nodes_become_initializers() -> None:
    model = from_proto(mf.make_constant_weight_model())
    assert not [n for n in model.model.graph.node if n.op_type == "Constant"]
    assert {"const_w", "const_b"} <= {t.name for t in model.model.graph.initializer}
    (layer,) = model.layers
    assert layer.weight == "const_w" and layer.weight_shape == (2, 1, 3, 3)
    assert layer.param_count == 2 * 9 + 2  # weight + bias (bias came from value_floats)
    np.testing.assert_array_equal(model.weight("const_b"), [0.5, -0.5])
    assert any("2 Constant nodes" in n for n in model.notes)
    x = np.ones((1, 1, 5, 5), np.float32)
    assert run(model, {"x": x})[0].shape == (1, 2, 3, 3)


def test_external_data_is_loaded(tmp_path: Path) -> None:
    path = mf.save(mf.make_conv_net(), tmp_path / "ext.onnx", external_data=True)
    assert (tmp_path / "ext.onnx.data").is_file()
    model = load_model(path)
    reference = from_proto(mf.make_conv_net())
    np.testing.assert_array_equal(model.weight("conv2.weight"), reference.weight("conv2.weight"))
    x = conv_input()
    np.testing.assert_allclose(run(model, {"x": x})[0], run(reference, {"x": x})[0])


def test_missing_external_data_is_named(tmp_path: Path) -> None:
    path = mf.save(mf.make_conv_net(), tmp_path / "ext.onnx", external_data=True)
    (tmp_path / "ext.onnx.data").unlink()
    with pytest.raises(QvizError, match=r"external data file 'ext\.onnx\.data'.*missing"):
        load_model(path)


def test_shape_inference_fills_activation_shapes() -> None:
    model = from_proto(mf.make_conv_net())
    shapes = {
        vi.name: [d.dim_value or d.dim_param for d in vi.type.tensor_type.shape.dim]
        for vi in model.model.graph.value_info
    }
    assert shapes["c2"] == ["N", 8, 8, 8]
    assert shapes["flat"] == ["N", 8]


def test_multi_input_multi_output() -> None:
    model = from_proto(mf.make_multi_io())
    assert [i.name for i in model.inputs] == ["a", "b"]
    assert model.outputs == ("ya", "yb")
    assert [(layer.name, layer.activations) for layer in model.layers] == [
        ("gemm_a", ("a",)),
        ("matmul_b", ("b",)),
    ]
    a = np.ones((2, 4), np.float32)
    b = np.ones((2, 6), np.float32)
    ya, yb = run(model, {"a": a, "b": b})
    np.testing.assert_allclose(ya, a @ model.weight("wa").T, rtol=1e-5)
    np.testing.assert_allclose(yb, b @ model.weight("wb") + ya, rtol=1e-5)


def test_initializers_listed_as_inputs_are_not_inputs() -> None:
    model = mf.make_mlp()
    model.ir_version = 3
    for init in model.graph.initializer:
        model.graph.input.append(
            helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
        )
    loaded = from_proto(model)
    assert [i.name for i in loaded.inputs] == ["x"]


# ------------------------------------------------------------------------------ layers


def layer_by_op(model: LoadedModel, op: str) -> list:
    return [layer for layer in model.layers if layer.op_type == op]


def test_conv_axes() -> None:
    model = from_proto(mf.make_conv_net())
    conv1, conv2 = layer_by_op(model, "Conv")
    assert (conv1.channel_axis, conv1.reduction_axis) == (0, 1)
    assert conv2.weight_shape == (8, 2, 3, 3)
    assert conv2.param_count == 8 * 2 * 9 + 8
    assert conv1.depth < conv2.depth
    assert model.activation_channel_axis("x") == 1
    assert model.activation_channel_axis("r1") == 1


def test_conv_transpose_axes() -> None:
    model = from_proto(mf.make_conv_transpose())
    (layer,) = model.layers
    assert layer.op_type == "ConvTranspose"
    assert layer.weight_shape == (6, 2, 3, 3)
    assert (layer.channel_axis, layer.reduction_axis) == (1, 0)
    assert model.activation_channel_axis("x") == 1


@pytest.mark.parametrize(
    ("trans_b", "axes", "shape"), [(0, (1, 0), (16, 32)), (1, (0, 1), (32, 16))]
)
def test_gemm_axes(trans_b: int, axes: tuple[int, int], shape: tuple[int, int]) -> None:
    model = from_proto(mf.make_mlp(trans_b=trans_b))
    (gemm,) = layer_by_op(model, "Gemm")
    assert gemm.weight_shape == shape
    assert (gemm.channel_axis, gemm.reduction_axis) == axes
    assert gemm.activations == ("x",)
    assert model.activation_channel_axis("x") == 1


def test_matmul_with_constant_weight_axes() -> None:
    model = from_proto(mf.make_mlp())
    (mm,) = layer_by_op(model, "MatMul")
    assert mm.weight == "fc2.weight" and mm.weight_shape == (32, 10)
    assert (mm.channel_axis, mm.reduction_axis) == (1, 0)
    assert mm.param_count == 320  # MatMul has no bias input; the Add is another node


def test_matmul_with_batched_3d_weight() -> None:
    w = numpy_helper.from_array(np.ones((2, 4, 5), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="bmm")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 5])],
        [w],
    )
    model = from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    (layer,) = model.layers
    assert (layer.channel_axis, layer.reduction_axis) == (2, 1)
    assert model.activation_channel_axis("x") == 2


def test_matmul_between_activations() -> None:
    model = from_proto(mf.make_matmul_attention())
    names = [layer.name for layer in model.layers]
    assert names == ["q_proj", "k_proj", "v_proj", "qk", "pv", "out_proj"]
    qk = model.layers[3]
    assert qk.weight is None and qk.weight_shape is None
    assert qk.channel_axis is None and qk.reduction_axis is None
    assert qk.activations == ("q", "kt") and qk.param_count == 0
    assert model.layers[4].activations == ("probs", "v")
    # Feature axes: the head dim (8) whether it is last (q, v) or second (k^T);
    # the attention probabilities have only sequence axes, so no channel axis.
    assert model.activation_channel_axis("q") == 2
    assert model.activation_channel_axis("kt") == 1
    assert model.activation_channel_axis("v") == 2
    assert model.activation_channel_axis("probs") is None
    assert model.activation_channel_axis("not_a_tensor") is None


def test_attention_runs_with_variable_length_and_mask() -> None:
    model = from_proto(mf.make_matmul_attention())
    assert [i.shape for i in model.inputs] == [(None, None, 8), (None, None)]
    for length in (3, 7):
        x = np.random.default_rng(length).standard_normal((2, length, 8)).astype(np.float32)
        mask = np.ones((2, length), np.float32)
        mask[1, -1] = 0.0
        (y,) = run(model, {"x": x, "mask": mask})
        assert y.shape == (2, length, 8) and np.isfinite(y).all()


def test_if_model_notes_subgraphs() -> None:
    model = from_proto(mf.make_if_model())
    assert [layer.name for layer in model.layers] == ["head"]
    (note,) = model.notes
    assert "If node 'branch_if'" in note and "not analysed" in note
    assert "1 MatMul" in note
    for x in (np.ones((2, 4), np.float32), -np.ones((2, 4), np.float32)):
        assert run(model, {"x": x})[0].shape == (2, 3)


def test_computed_weight_is_skipped_with_a_note() -> None:
    model = from_proto(mf.make_computed_weight_model())
    assert model.layers == ()
    assert any("conv_computed" in n and "computed" in n for n in model.notes)


def test_weight_returns_float32() -> None:
    model = mf.make_mlp()
    half = np.arange(6, dtype=np.float16).reshape(2, 3)
    model.graph.initializer.append(numpy_helper.from_array(half, "half"))  # unused, allowed
    loaded = from_proto(model)
    w = loaded.weight("half")
    assert w.dtype == np.float32
    np.testing.assert_array_equal(w, half.astype(np.float32))
    assert loaded.weight("fc1.weight").dtype == np.float32
    with pytest.raises(KeyError):
        loaded.weight("nope")


def test_tensor_kind_values() -> None:
    assert TensorKind("weight") is TensorKind.WEIGHT
    assert TensorKind("activation") is TensorKind.ACTIVATION


# ------------------------------------------------------------------------ display names


def _tag(node: onnx.NodeProto, scopes: list[str]) -> None:
    entry = node.metadata_props.add()
    entry.key, entry.value = "pkg.torch.onnx.name_scopes", repr(scopes)


def _rename_initializer(model: onnx.ModelProto, old: str, new: str) -> None:
    for init in model.graph.initializer:
        if init.name == old:
            init.name = new
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def test_display_names_from_torch_metadata() -> None:
    model = mf.make_matmul_attention()
    nodes = {n.name: n for n in model.graph.node}
    for proj in ("q", "k", "v"):
        # As the dynamo exporter writes them: parameter paths and module scopes agree.
        _rename_initializer(model, f"{proj}.weight", f"attn.{proj}.weight")
        _tag(nodes[f"{proj}_proj"], ["", "attn", f"attn.{proj}", "linear"])
    # A transposed weight the exporter named "val_7": the scope names the module.
    _rename_initializer(model, "out.weight", "val_7")
    _tag(nodes["out_proj"], ["", "attn", "attn.out", "linear_3"])
    _tag(nodes["qk"], ["", "attn", "matmul"])
    # Namespace only: the path is parsed out of it; the node name tells the two apart.
    entry = nodes["pv"].metadata_props.add()
    entry.key = "namespace"
    entry.value = ": __main__.M/attn: mod.Attention/matmul_1: aten.matmul.default"
    names = [layer.name for layer in from_proto(model).layers]
    assert names == ["attn.q", "attn.k", "attn.v", "attn (matmul)", "attn (pv)", "attn.out"]


def test_torch_parameter_names_win_over_scopes() -> None:
    # The exporter folds BatchNorm into Conv and the fused node inherits the BN scope
    # ("features.1"), while the weight keeps the Conv's parameter name.
    model = mf.make_conv_net()
    model.producer_name = "pytorch"
    nodes = {n.name: n for n in model.graph.node}
    _tag(nodes["conv1"], ["", "features", "features.1", "_native_batch_norm_legit"])
    names = [layer.name for layer in from_proto(model).layers]
    assert names == ["conv1", "conv2", "fc"]


def test_names_are_unique_for_shared_weights() -> None:
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "shared.weight")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "shared.weight"], ["h"], name=""),
            helper.make_node("MatMul", ["h", "shared.weight"], ["y"], name=""),
        ],
        "tied",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.producer_name = "pytorch"
    names = [layer.name for layer in from_proto(model).layers]
    assert len(set(names)) == 2
    assert names[0].startswith("shared") and names[1].startswith("shared")


def test_unnamed_nodes_get_op_and_index() -> None:
    model = mf.make_mlp()
    for node in model.graph.node:
        node.name = ""
    assert [layer.name for layer in from_proto(model).layers] == ["Gemm_0", "MatMul_2"]


def test_importing_the_model_module_does_not_import_torch() -> None:
    code = (
        "import sys, qviz.core.model.loading, qviz.core.data.dataset; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
