"""The tree of module paths the layer table shows, and each group's numbers."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as hs

from qviz.core.calibration.analysis import TensorKey
from qviz.core.document.grouping import (
    Group,
    TensorScore,
    build_tree,
    common_label,
    kinds_label,
    path_tokens,
    summarize_group,
    summarize_groups,
)
from qviz.core.document.summary import weighted_sqnr_db
from qviz.core.model.loading import TensorKind

W, A = TensorKind.WEIGHT, TensorKind.ACTIVATION


def decoder_items(n_layers: int) -> list[tuple[TensorKey, str]]:
    """(tensor, layer name) of a Llama-style decoder, in graph order, as the loader names
    them (a PyTorch export: matmuls between activations carry a suffix)."""
    items: list[tuple[TensorKey, str]] = []
    for i in range(n_layers):
        base = f"model.layers.{i}"
        items.append((TensorKey(f"{base}.norm1", A), f"{base}.self_attn.q_proj"))
        for proj in ("q_proj", "k_proj", "v_proj"):
            items.append((TensorKey(f"{base}.{proj}.weight", W), f"{base}.self_attn.{proj}"))
        items.append((TensorKey(f"{base}.scores_in", A), f"{base}.self_attn (matmul)"))
        items.append((TensorKey(f"{base}.o_in", A), f"{base}.self_attn.o_proj"))
        items.append((TensorKey(f"{base}.o_proj.weight", W), f"{base}.self_attn.o_proj"))
        items.append((TensorKey(f"{base}.up.weight", W), f"{base}.mlp.up_proj"))
    items.append((TensorKey("lm_head.weight", W), "lm_head"))
    return items


def names(group: Group, labels: dict[TensorKey, str]) -> list[str]:
    return [c.label if isinstance(c, Group) else labels[c] for c in group.children]


def test_path_tokens_keep_block_numbers_with_their_list() -> None:
    assert [t for t, _ in path_tokens("model.layers.3.self_attn.q_proj")] == [
        "model", "layers.3", "self_attn", "q_proj"]
    assert [t for t, _ in path_tokens("/model/layers.3/mlp/MatMul")] == [
        "model", "layers.3", "mlp", "MatMul"]
    assert [t for t, _ in path_tokens("model.layers.0.self_attn (matmul_1)")] == [
        "model", "layers.0", "self_attn", "(matmul_1)"]
    assert [t for t, _ in path_tokens("Conv_12")] == ["Conv_12"]
    assert [t for t, _ in path_tokens("features.0")] == ["features.0"]
    # The offsets cut the original name: a group's path is the name up to its last part.
    name = "model.layers.3.self_attn.q_proj"
    assert [name[:end] for _, end in path_tokens(name)][:2] == ["model", "model.layers.3"]


def test_a_decoder_reads_block_then_module_then_layer() -> None:
    items = decoder_items(3)
    tree = build_tree(items)
    labels = dict(tree.labels)
    assert names(tree.root, labels) == [
        "model.layers.0", "model.layers.1", "model.layers.2", "lm_head"]
    block = tree.groups["model.layers.1"]
    assert names(block, labels) == ["self_attn", "mlp"]
    attn = tree.groups["model.layers.1.self_attn"]
    assert names(attn, labels) == [
        "q_proj", "q_proj", "k_proj", "v_proj", "(matmul)", "o_proj", "o_proj"]
    # A group of one layer (mlp holds up_proj only) is kept: it is a module of its own.
    assert names(tree.groups["model.layers.1.mlp"], labels) == ["up_proj"]
    key = TensorKey("model.layers.1.k_proj.weight", W)
    assert tree.ancestors(key) == ("model.layers.1", "model.layers.1.self_attn")
    assert tree.ancestors(TensorKey("lm_head.weight", W)) == ()
    # Graph order is kept below every group, and every tensor is somewhere once.
    assert tree.root.keys == tuple(k for k, _ in items)


def test_a_shared_prefix_is_stripped_and_single_child_chains_merge() -> None:
    items = [
        (TensorKey("a", W), "bert.encoder.attention.self.query"),
        (TensorKey("b", W), "bert.encoder.attention.self.key"),
        (TensorKey("c", W), "bert.encoder.attention.output.dense"),
        (TensorKey("d", W), "bert.encoder.intermediate.dense"),
    ]
    tree = build_tree(items)
    assert tree.prefix == "bert.encoder"
    labels = dict(tree.labels)
    assert names(tree.root, labels) == ["attention", "intermediate"]
    attention = tree.groups["bert.encoder.attention"]
    assert names(attention, labels) == ["self", "output"]
    assert names(tree.groups["bert.encoder.attention.self"], labels) == ["query", "key"]
    # Two levels with nothing between them are one row: "x.y", not "x ▸ y".
    chain = build_tree([(TensorKey("p", W), "m.x.y.a"), (TensorKey("q", W), "m.x.y.b"),
                        (TensorKey("r", W), "m.z")])
    assert names(chain.root, dict(chain.labels)) == ["x.y", "z"]
    assert chain.prefix == "m"


def test_flat_names_stay_flat() -> None:
    """The demo CNN (features.0 … classifier.2) and graphs without module paths: no groups."""
    items = [(TensorKey(f"features.{i}.weight", W), f"features.{i}") for i in (0, 3, 6)]
    items += [(TensorKey("x", A), "Conv_12"), (TensorKey("y", A), "MatMul_3")]
    tree = build_tree(items)
    assert not tree.has_groups and tree.prefix == ""
    assert names(tree.root, dict(tree.labels)) == [
        "features.0", "features.3", "features.6", "Conv_12", "MatMul_3"]


@given(hs.lists(
    hs.lists(hs.sampled_from(["a", "b", "layers", "0", "1", "12", "mlp", "(mm)"]),
             min_size=1, max_size=5).map(".".join),
    min_size=1, max_size=30,
))
def test_every_tensor_is_in_the_tree_once_in_graph_order(layer_names: list[str]) -> None:
    """Once each; every group's rows in graph order, a group placed where its first tensor
    is (so a module used again later gathers its tensors in one place)."""
    items = [(TensorKey(f"t{i}", W), n) for i, n in enumerate(layer_names)]
    order = {k: i for i, (k, _) in enumerate(items)}
    tree = build_tree(items)
    assert sorted(tree.root.keys, key=order.__getitem__) == [k for k, _ in items]

    def walk(g: Group) -> list[TensorKey]:
        out: list[TensorKey] = []
        for c in g.children:
            out.extend(walk(c) if isinstance(c, Group) else [c])
        return out

    assert walk(tree.root) == list(tree.root.keys)
    for path, group in tree.groups.items():
        assert group.keys == tuple(walk(group))
        firsts = [order[c.keys[0] if isinstance(c, Group) else c] for c in group.children]
        assert firsts == sorted(firsts)
        assert group.label  # every group row says something
        for key in group.keys:
            assert path in tree.ancestors(key)


def test_group_numbers_are_the_summary_lines_over_the_group() -> None:
    tree = build_tree(decoder_items(2))
    keys = tree.root.keys
    scores = {
        k: TensorScore(sqnr_db=10.0 + 3 * i, size=100.0 * (i + 1), clipped=0.001 * i)
        for i, k in enumerate(keys) if i % 5 != 4  # some not measured yet
    }
    kept_float = keys[2]
    scores[kept_float] = TensorScore(math.inf, 500.0, 0.0)
    params = {k: 64.0 for k in keys if k.kind is W}
    block = tree.groups["model.layers.1"]
    s = summarize_group(block, scores, params)
    measured = [k for k in block.keys if k in scores]
    assert s.n_tensors == len(block.keys) == 8
    assert s.n_weights == 5 and s.n_activations == 3
    assert s.n_measured == len(measured)
    assert s.params == 5 * 64.0
    expected = weighted_sqnr_db((scores[k].sqnr_db, scores[k].size) for k in measured)
    assert s.weighted_sqnr_db == expected
    worst = min(measured, key=lambda k: scores[k].sqnr_db)
    assert s.worst == (worst, scores[worst].sqnr_db)
    assert s.max_clipped == max(scores[k].clipped for k in measured)
    # The root's numbers are the model's: the same power mean as the summary line.
    everything = summarize_groups(tree, scores, params)[""]
    assert everything.weighted_sqnr_db == weighted_sqnr_db(
        (v.sqnr_db, v.size) for v in scores.values())
    assert everything.worst is not None and everything.worst[0] == keys[0]
    # A tensor kept float is exact: never the worst.
    only_float = summarize_group(block, {block.keys[0]: TensorScore(math.inf, 1.0, 0.0)}, {})
    assert only_float.weighted_sqnr_db == math.inf
    assert only_float.worst == (block.keys[0], math.inf)


def test_a_group_with_nothing_measured_has_no_numbers() -> None:
    tree = build_tree(decoder_items(1))
    s = summarize_group(tree.groups["model.layers.0"], {}, {})
    assert s.n_measured == 0 and s.worst is None
    assert math.isnan(s.weighted_sqnr_db) and math.isnan(s.max_clipped)


def test_kinds_label_says_weights_then_activations() -> None:
    w1, w2, a1 = TensorKey("w1", W), TensorKey("w2", W), TensorKey("a1", A)
    group = Group("g", "g", (w1, w2, a1), (w1, w2, a1))
    assert kinds_label(group, {w1: "int8", w2: "int8", a1: "uint8"}) == "int8 / uint8"
    assert kinds_label(group, {w1: "int8", w2: "int8", a1: "int8"}) == "int8"
    assert kinds_label(group, {w1: "int8", w2: "int4", a1: "uint8"}) == "mixed / uint8"
    only_w = Group("g", "g", (w1, w2), (w1, w2))
    assert kinds_label(only_w, {w1: "mse", w2: "mse"}) == "mse"


@pytest.mark.parametrize(("values", "expected"), [
    (["minmax", "minmax"], "minmax"), (["minmax", "mse"], "mixed"), ([], ""),
])
def test_common_label(values: list[str], expected: str) -> None:
    keys = [TensorKey(f"k{i}", W) for i in range(len(values))]
    group = Group("g", "g", tuple(keys), tuple(keys))
    assert common_label(group, dict(zip(keys, values, strict=True))) == expected
