"""The graph view's core: every node of the graph, groups by module path, what is visible
with groups collapsed, the Sugiyama layout, its cache, and search; on the demo and on a
1,500-node transformer stack."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import onnx
import pytest
from onnx import helper

from qviz.core.demo import demo_paths
from qviz.core.graphview.groups import (
    default_expanded,
    group_tree,
    short_name,
    visible_graph,
)
from qviz.core.graphview.layout import FRAME_LABEL_H, GraphLayout, LayoutCache
from qviz.core.graphview.model_graph import ModelGraph
from qviz.core.graphview.opgraph import NodeKind, node_scope, op_graph
from qviz.core.model.loading import LoadedModel, load_model
from tests.core.graph_factory import NODES_PER_BLOCK, make_transformer_stack
from tests.core.model_factory import save
from tools.make_decoder import decoder_spec, write_decoder

BLOCKS = 40


@pytest.fixture(scope="module")
def demo() -> LoadedModel:
    return load_model(demo_paths().model)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    path = tmp_path_factory.mktemp("stack") / "stack.onnx"
    return load_model(save(make_transformer_stack(BLOCKS), path))


@pytest.fixture(scope="module")
def decoder(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """The synthetic decoder (tools/make_decoder.py), 24 layers: 1,263 nodes."""
    path = tmp_path_factory.mktemp("decoder") / "decoder.onnx"
    write_decoder(decoder_spec(layers=24), path, builder="onnx", calib_samples=0,
                  eval_samples=0)
    return load_model(path)


# --------------------------------------------------------------------------- the graph


def test_every_node_of_the_demo_is_drawn_with_its_edges(demo: LoadedModel) -> None:
    g = op_graph(demo)
    onnx_nodes = demo.model.graph.node
    assert g.n_ops == len(onnx_nodes) == 12
    kinds = [n.kind for n in g]
    assert kinds[0] is NodeKind.INPUT and kinds[-1] is NodeKind.OUTPUT
    # Every non-constant input of every node comes from exactly one edge.
    produced = {o for n in onnx_nodes for o in n.output} | {"input"}
    expected = {(x, i) for i, n in enumerate(onnx_nodes) for x in n.input if x in produced}
    got = {(e.tensor, g.node(e.dst).index) for e in g.edges if e.dst.startswith("n:")}
    assert got == expected
    assert [e.src for e in g.edges if e.dst == "out:logits"] == ["n:11"]
    # The six quantizable layers are nodes, known by their display names.
    for layer in demo.layers:
        nid = g.node_of_layer(layer.name)
        assert nid is not None and g.node(nid).index == layer.depth
    conv = g.node(g.node_of_layer("features.0") or "")
    assert conv.op_type == "Conv" and conv.weights == ("features.0.weight",
                                                       "features.0.weight_bias")
    assert conv.inputs == ("input",)


def test_module_paths_come_from_torch_metadata_then_exporter_names() -> None:
    torch_node = helper.make_node("Relu", ["a"], ["b"], name="node_relu")
    entry = torch_node.metadata_props.add()
    entry.key = "pkg.torch.onnx.name_scopes"
    entry.value = "['', 'encoder', 'encoder.layers.3', 'relu']"
    assert node_scope(torch_node) == ("encoder", "layers", "3")
    named = helper.make_node("MatMul", ["a", "w"], ["b"], name="/model/layers.0/mlp/up_proj/MatMul")
    assert node_scope(named) == ("model", "layers", "0", "mlp", "up_proj")
    dotted = helper.make_node("MatMul", ["a", "w"], ["b"], name="model.layers.0.mlp.up_proj")
    assert node_scope(dotted) == ("model", "layers", "0", "mlp", "up_proj")
    assert node_scope(helper.make_node("Relu", ["a"], ["b"], name="Relu_3")) == ()


def test_nodes_with_bodies_are_linked_to_the_outer_tensors_they_read() -> None:
    then = helper.make_graph([helper.make_node("Relu", ["x"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", onnx.TensorProto.FLOAT, [2])])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", onnx.TensorProto.FLOAT, [2])])
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], name="branch", then_branch=then,
                          else_branch=other)],
        "g",
        [helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, []),
         helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
    )
    model = LoadedModel(helper.make_model(graph), Path("if.onnx"), "0" * 64, (), ("y",), ())
    g = op_graph(model)
    assert {(e.src, e.tensor) for e in g.edges if e.dst == "n:0"} == {("in:c", "c"),
                                                                       ("in:x", "x")}


# --------------------------------------------------------------------------- groups


def test_demo_groups_by_torch_module(demo: LoadedModel) -> None:
    g = op_graph(demo)
    tree = group_tree(g)
    assert set(tree.groups) == {"g:features", "g:classifier"}
    assert tree.groups["g:features"].n_ops == 8
    assert tree.groups["g:classifier"].n_ops == 3
    # The lone Reshape (module "flatten") is no group of one: it sits at the top.
    assert tree.top == ("in:input", "g:features", "n:8", "g:classifier", "out:logits")
    # A small model opens whole.
    shown = default_expanded(tree)
    assert shown == {"g:features", "g:classifier"}
    assert len(visible_graph(g, tree, shown).items) == len(g)
    assert short_name(g.node("n:2")) == "features.3"


def test_a_large_stack_opens_as_its_blocks(stack: LoadedModel) -> None:
    g = op_graph(stack)
    assert g.n_ops == BLOCKS * NODES_PER_BLOCK + 8
    tree = group_tree(g)
    blocks = [f"g:model.layers.{i}" for i in range(BLOCKS)]
    for i, gid in enumerate(blocks):
        grp = tree.groups[gid]
        assert grp.label == f"layers.{i}" and grp.n_ops == NODES_PER_BLOCK
        assert len(tree.nodes_in(gid)) == NODES_PER_BLOCK
        assert tree.parent(gid) == "g:model.layers"
    # The activation pair of an MLP is a group inside the MLP group.
    assert tree.parent("g:model.layers.0.mlp.act_fn") == "g:model.layers.0.mlp"
    # Every op is in exactly one innermost place.
    placed = [n for n in tree.top if not n.startswith("g:")]
    placed += [c for grp in tree.groups.values() for c in grp.children if not c.startswith("g:")]
    assert sorted(placed) == sorted(n.id for n in g)

    shown = default_expanded(tree)
    visible = visible_graph(g, tree, shown)
    assert len(visible.items) <= 150
    ids = {it.id for it in visible.items}
    assert set(blocks) <= ids
    # Collapsed blocks are chained by the residual stream, one edge per pair of blocks.
    pairs = {(e.src, e.dst) for e in visible.edges}
    for a, b in itertools.pairwise(blocks):
        assert (a, b) in pairs
    assert all(e.src != e.dst for e in visible.edges)
    # Every graph edge is drawn once, inside a collapsed group, or as part of a joined edge.
    inside = sum(1 for e in g.edges
                 if tree.representative(visible.expanded, e.src)
                 == tree.representative(visible.expanded, e.dst))
    assert inside + sum(len(e.edges) for e in visible.edges) == len(g.edges)

    assert default_expanded(tree, budget=10**6) == frozenset(tree.groups)
    # A budget the blocks do not fit: still the blocks, not one node "layers" (too sparse).
    assert default_expanded(tree, budget=20) == shown
    # The top level alone (input, model, LM head, output) is sparse: one level is opened.
    assert len(tree.top) == 4
    assert default_expanded(tree, budget=1) == {"g:model"}


def test_expanding_collapsing_and_revealing(stack: LoadedModel) -> None:
    mg = ModelGraph(stack)
    shown = mg.default_expanded
    block = "g:model.layers.7"
    assert block not in shown
    opened = mg.toggle(shown, block)
    ids = {it.id for it in mg.visible(opened).items}
    assert block not in ids and "g:model.layers.7.self_attn" in ids
    assert mg.toggle(opened, block) == shown
    # Revealing a node opens every group that holds it; its representative is then itself.
    q_proj = mg.search("layers.7/self_attn/q_proj")[0]
    assert mg.representative(shown, q_proj) == block
    revealed = mg.tree.reveal(shown, q_proj)
    assert mg.representative(revealed, q_proj) == q_proj
    # A group opened inside a collapsed one shows nothing until its parent opens.
    inner = frozenset(shown | {"g:model.layers.7.self_attn"})
    assert mg.tree.effective(inner) == shown


# --------------------------------------------------------------------------- layout


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def check_layout(layout: GraphLayout) -> None:
    """Every item boxed, no two boxes overlapping, edges from border to border, flowing
    downward, frames around their groups' items."""
    boxes = layout.boxes
    assert set(boxes) == {it.id for it in layout.visible.items}
    # No two boxes overlap: sweep by top edge, comparing each box with those still open.
    rects = sorted((b.y, b.x, b.w, b.h) for b in boxes.values())
    open_: list[tuple[float, float, float, float]] = []
    for y, x, w, h in rects:
        open_ = [r for r in open_ if r[0] + r[3] > y]
        assert not any(_overlap((x, y, w, h), (r[1], r[0], r[2], r[3])) for r in open_)
        open_.append((y, x, w, h))
    down = 0
    stubs = [r for r in layout.routes if r.auxiliary]
    for route in stubs:  # a short arrow into the top of its target
        dst = boxes[route.edge.dst]
        (x0, y0), (x1, y1) = route.points
        assert x0 == x1 and dst.x < x1 < dst.x + dst.w and y1 == dst.y and y0 < y1
    assert len({r.edge.dst for r in stubs}) == len(stubs)  # one per target
    for route in layout.routes:
        if route.auxiliary:
            continue
        src, dst = boxes[route.edge.src], boxes[route.edge.dst]
        (x0, y0), (x1, y1) = route.points[0], route.points[-1]
        assert src.x - 1e-6 <= x0 <= src.x + src.w + 1e-6
        assert src.y - 1e-6 <= y0 <= src.y + src.h + 1e-6
        assert dst.x - 1e-6 <= x1 <= dst.x + dst.w + 1e-6
        assert dst.y - 1e-6 <= y1 <= dst.y + dst.h + 1e-6
        down += dst.y > src.y
    assert down == len(layout.routes) - len(stubs)  # a DAG is drawn top to bottom
    assert 0 <= min(b.x for b in boxes.values()) and 0 <= min(b.y for b in boxes.values())
    assert max(b.x + b.w for b in boxes.values()) <= layout.width
    assert max(b.y + b.h for b in boxes.values()) <= layout.height


def test_demo_layout(demo: LoadedModel) -> None:
    mg = ModelGraph(demo)
    layout = mg.layout(mg.default_expanded)
    check_layout(layout)
    frames = {f.group: f for f in layout.frames}
    assert set(frames) == {"g:features", "g:classifier"}
    for gid, frame in frames.items():
        for nid in mg.tree.nodes_in(gid):
            b = layout.boxes[nid]
            assert frame.x < b.x and b.x + b.w < frame.x + frame.w
            assert frame.y + FRAME_LABEL_H < b.y and b.y + b.h < frame.y + frame.h


def test_stack_layouts_are_fast_and_cached(stack: LoadedModel) -> None:
    cache = LayoutCache()
    mg = ModelGraph(stack, cache)
    start = time.perf_counter()
    layout = mg.layout(mg.default_expanded)
    assert time.perf_counter() - start < 5.0  # about 10 ms here; generous for CI
    check_layout(layout)
    assert mg.layout(set(mg.default_expanded)) is layout  # any iterable, same key
    assert cache.hits == 1 and cache.misses == 1
    # A second load of the same file reuses the drawing.
    assert ModelGraph(stack, cache).layout(mg.default_expanded) is layout
    # Opening one block lays out again, once.
    opened = mg.toggle(mg.default_expanded, "g:model.layers.3")
    again = mg.layout(opened)
    assert again is not layout and mg.layout(opened) is again
    check_layout(again)


def test_the_synthetic_decoder_opens_as_its_blocks_with_its_shared_tables_as_stubs(
    decoder: LoadedModel,
) -> None:
    mg = ModelGraph(decoder)
    assert mg.graph.n_ops > 1000
    blocks = [f"g:model.layers.{i}" for i in range(24)]
    assert all(mg.tree.groups[b].label == f"layers.{i}" for i, b in enumerate(blocks))
    layout = mg.layout(mg.default_expanded)
    assert set(blocks) <= set(layout.boxes) and len(layout.boxes) <= 150
    check_layout(layout)
    # The causal mask and the rotary tables feed every block: stubs, not 24 long lines each.
    stubs = [r for r in layout.routes if r.auxiliary]
    assert {r.edge.dst for r in stubs} >= set(blocks[2:])
    assert all(r.label for r in stubs)
    fed = {e.src for r in stubs for e in r.edge.edges}
    assert {mg.graph.node(n).op_type for n in fed} >= {"Slice"}
    # Every graph edge is still drawn once: as a line, in a stub, or inside a collapsed group.
    drawn = sum(len(r.edge.edges) for r in layout.routes)
    inside = sum(1 for e in mg.graph.edges
                 if mg.representative(mg.default_expanded, e.src)
                 == mg.representative(mg.default_expanded, e.dst))
    assert drawn + inside == len(mg.graph.edges)
    # All of it open: seconds, not the 25 s the fan-out edges cost when routed.
    whole = mg.layout(mg.tree.groups)
    assert len(whole.boxes) == len(mg.graph) and whole.seconds < 30.0  # about 1.2 s here
    assert len(whole.frames) == len(mg.tree.groups)
    check_layout(whole)


def test_disconnected_parts_are_put_side_by_side() -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["a"], ["b"], name="r1"),
         helper.make_node("Relu", ["c"], ["d"], name="r2")],
        "g",
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [2]) for n in "ac"],
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [2]) for n in "bd"],
    )
    model = LoadedModel(helper.make_model(graph), Path("two.onnx"), "1" * 64, (), ("b", "d"), ())
    mg = ModelGraph(model)
    layout = mg.layout(mg.default_expanded)
    check_layout(layout)
    assert layout.boxes["n:1"].x > layout.boxes["n:0"].x + layout.boxes["n:0"].w


# --------------------------------------------------------------------------- search


def test_search_by_name_op_tensor_and_module_path(demo: LoadedModel, stack: LoadedModel) -> None:
    mg = ModelGraph(demo)
    g = mg.graph
    assert mg.search("gemm") == ("n:9", "n:11")  # op type, any case
    assert mg.search("node_Reshape") == ("n:8",)  # node name
    assert mg.search("features.6.weight") == ("n:4",)  # a weight
    assert mg.search("getitem_3") == ("n:2", "n:3")  # a tensor: producer and reader
    assert mg.search("classifier") == tuple(n.id for n in g if n.path[:1] == ("classifier",))
    assert mg.search("  ") == () and mg.search("no such thing") == ()
    big = ModelGraph(stack)
    found = big.search("layers.12.mlp")  # a module path across groups
    assert len(found) == 6
    assert all(big.tree.representative(big.default_expanded, n) == "g:model.layers.12"
               for n in found)


def test_a_graph_without_module_paths_is_split_in_graph_order() -> None:
    n = 1000
    nodes = [helper.make_node("Relu", [f"t{i}"], [f"t{i + 1}"], name=f"Relu_{i}")
             for i in range(n)]
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("t0", onnx.TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info(f"t{n}", onnx.TensorProto.FLOAT, [2])])
    model = LoadedModel(helper.make_model(graph), Path("chain.onnx"), "2" * 64, (), (f"t{n}",),
                        ())
    mg = ModelGraph(model)
    tree = mg.tree
    assert all(len(tree.children(g)) <= 120 for g in (None, *tree.groups))
    assert len(tree.top) == 21  # 1,002 items (input, 1,000 ops, output) in runs of 50
    first = tree.groups[tree.top[0]]
    assert first.label == "ops 1–49" and first.children[0] == "in:t0"
    assert tree.groups[tree.top[1]].label == "ops 50–99"
    assert sorted(n for g in tree.top for n in tree.nodes_in(g)) == sorted(x.id for x in mg.graph)
    layout = mg.layout(mg.default_expanded)
    assert len(layout.boxes) == 21
    check_layout(layout)
    # Opening one run shows its 50 nodes between its neighbours.
    opened = mg.layout(mg.toggle(mg.default_expanded, tree.top[3]))
    assert len(opened.boxes) == 20 + 50
    check_layout(opened)
