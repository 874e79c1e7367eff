"""The shared ONNX graph helpers (walkers, names, opset upgrade) and file hashing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qviz.core.errors import QvizError
from qviz.core.model.hashing import file_sha256, files_sha256
from qviz.core.model.onnx_graph import (
    FreshNames,
    all_graphs,
    all_nodes,
    all_tensors,
    default_opset,
    name_nodes,
    subgraph_references,
    unique_node_names,
    upgrade_opset,
)
from tests.core import model_factory as mf


def _nested_if_model() -> onnx.ModelProto:
    """An If whose then-branch holds another If; a Constant tensor sits in the inner body."""
    const = helper.make_node(
        "Constant",
        [],
        ["c"],
        name="inner_const",
        value=numpy_helper.from_array(np.ones(4, np.float32), "c_value"),
    )
    inner_then = helper.make_graph(
        [const, helper.make_node("Add", ["x", "c"], ["it"], name="inner_add")],
        "inner_then",
        [],
        [helper.make_tensor_value_info("it", TensorProto.FLOAT, [4])],
    )
    inner_else = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["ie"], name="inner_id")],
        "inner_else",
        [],
        [helper.make_tensor_value_info("ie", TensorProto.FLOAT, [4])],
    )
    outer_then = helper.make_graph(
        [
            helper.make_node(
                "If", ["cond"], ["ot"], then_branch=inner_then, else_branch=inner_else
            )
        ],
        "outer_then",
        [],
        [helper.make_tensor_value_info("ot", TensorProto.FLOAT, [4])],
    )
    outer_else = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["oe"], name="outer_neg")],
        "outer_else",
        [],
        [helper.make_tensor_value_info("oe", TensorProto.FLOAT, [4])],
    )
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node(
                "If", ["cond"], ["y"], then_branch=outer_then, else_branch=outer_else
            ),
            helper.make_node("Relu", ["r"], ["r2"]),
        ],
        "nested",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [4]),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [4]),
            helper.make_tensor_value_info("r2", TensorProto.FLOAT, [4]),
        ],
        [numpy_helper.from_array(np.zeros(4, np.float32), "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_walkers_reach_every_body_at_any_depth() -> None:
    model = _nested_if_model()
    names = [g.name for g in all_graphs(model.graph)]
    assert sorted(names) == ["inner_else", "inner_then", "nested", "outer_else", "outer_then"]
    ops = sorted(n.op_type for n in all_nodes(model.graph))
    assert ops == ["Add", "Constant", "Identity", "If", "If", "Neg", "Relu", "Relu"]
    assert sorted(t.name for t in all_tensors(model.graph)) == ["c_value", "w"]
    # Only names read inside the bodies, not the top level's own reads ("r").
    assert subgraph_references(model.graph) == {"cond", "x", "c"}


def test_unnamed_and_duplicate_nodes_get_unique_names() -> None:
    model = _nested_if_model()
    graph = model.graph
    graph.node[2].name = "Relu_0"  # what the unnamed first Relu is about to be called
    name_nodes(graph)
    assert [n.name for n in graph.node] == ["Relu_0", "If_1", "Relu_0"]
    unique_node_names(graph)
    assert [n.name for n in graph.node] == ["Relu_0", "If_1", "Relu_0_1"]


def test_fresh_names_avoid_names_used_inside_bodies() -> None:
    names = FreshNames(_nested_if_model().graph)
    assert names.fresh("inner_add") == "inner_add_1"  # a node name in a nested body
    assert names.fresh("it") == "it_1"  # a tensor in a nested body
    assert names.fresh("it") == "it_2"  # and a name once given is taken
    assert names.fresh("brand_new") == "brand_new"


def test_default_opset() -> None:
    model = mf.make_mlp(opset=13)
    assert default_opset(model) == 13
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    assert default_opset(model) is None
    with pytest.raises(QvizError, match="no default ONNX opset"):
        upgrade_opset(model, 17)


def test_upgrade_opset_converts_and_keeps_weights() -> None:
    model = mf.make_mlp(opset=13)
    assert upgrade_opset(model, 13) is model  # already there: nothing to do
    up = upgrade_opset(model, 21)
    assert default_opset(up) == 21 and default_opset(model) == 13
    assert up.ir_version >= helper.find_min_ir_version_for(list(up.opset_import), True)
    before = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in up.graph.initializer}
    assert before.keys() == after.keys()
    for name, value in before.items():
        np.testing.assert_array_equal(after[name], value)
    onnx.checker.check_model(up, full_check=True)


def test_upgrade_failure_is_one_line_with_the_reason() -> None:
    model = mf.make_mlp(opset=17)
    with pytest.raises(QvizError, match=r"cannot upgrade ONNX opset 17 to 99 \(for testing\): "):
        upgrade_opset(model, 99, " (for testing)")


def test_file_hashes(tmp_path: Path) -> None:
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"x" * (3 << 20) + b"tail")  # several read chunks
    b.write_bytes(b"second")
    assert file_sha256(a) == hashlib.sha256(a.read_bytes()).hexdigest()
    expected = hashlib.sha256(b"salt" + a.read_bytes() + b.read_bytes()).hexdigest()
    assert files_sha256([a, b], salt="salt") == expected
    with pytest.raises(QvizError, match="cannot read"):
        file_sha256(tmp_path / "missing.bin")
