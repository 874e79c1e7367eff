"""Collection: statistics for every activation, bounded memory, cancellation."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qviz.core.data.dataset import random_data
from qviz.core.model.loading import from_proto
from qviz.core.stats.collect import CollectionCancelled, collect_stats, run_to_completion


def _gemm_on_input() -> onnx.ModelProto:
    """One Gemm reading the graph input directly: its only activation is a graph input."""
    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_activation_that_is_a_graph_input() -> None:
    model = from_proto(_gemm_on_input(), sha256="x")
    data = random_data(model.inputs, 10)
    stats = run_to_completion(collect_stats(model, data, batch_size=4))
    assert set(stats.tensors) == {"x"} and stats.tensors["x"].count == 40
    assert stats.data_is_random and any("RANDOM" in n for n in stats.notes)


def test_more_samples_do_not_grow_statistics() -> None:
    model = from_proto(_gemm_on_input(), sha256="x")
    small = run_to_completion(collect_stats(model, random_data(model.inputs, 50), bins=256))
    big = run_to_completion(collect_stats(model, random_data(model.inputs, 200), bins=256))
    size = lambda s: sum(a.nbytes for t in s.tensors.values() for a in t.to_arrays()[1].values())  # noqa: E731
    assert big.tensors["x"].count == 4 * small.tensors["x"].count
    assert size(big) == size(small)


def test_stop_between_batches() -> None:
    model = from_proto(_gemm_on_input(), sha256="x")
    seen = []
    gen = collect_stats(model, random_data(model.inputs, 100), batch_size=10,
                        should_stop=lambda: len(seen) >= 3)
    with pytest.raises(CollectionCancelled):
        for p in gen:
            seen.append(p)
    assert seen[-1].done < 100


@pytest.mark.parametrize("threads", [2, 3])
def test_batches_folded_on_several_threads_give_the_same_statistics(
    monkeypatch: pytest.MonkeyPatch, threads: int
) -> None:
    """A large model's batch (no overlap with the next run) is folded on several threads;
    every number comes out as folded on one."""
    from qviz.core.data.dataset import load_data
    from qviz.core.demo import demo_paths
    from qviz.core.model.loading import load_model
    from qviz.core.stats import collect

    paths = demo_paths()
    model = load_model(paths.model)
    data = load_data(paths.data, model.inputs)
    monkeypatch.setattr(collect, "OVERLAP_BYTES", 0)  # as in a large model
    folded: list[list[int]] = []
    real = collect._fold

    def spy(pairs, helpers):  # type: ignore[no-untyped-def]
        folded.append([len(pairs), helpers is not None])
        return real(pairs, helpers)

    monkeypatch.setattr(collect, "_fold", spy)
    monkeypatch.setattr(collect, "FOLD_THREADS", 1)
    one = run_to_completion(collect_stats(model, data, batch_size=64, snapshots=True))
    assert folded and not any(parallel for _, parallel in folded)
    folded.clear()
    monkeypatch.setattr(collect, "FOLD_THREADS", threads)
    many = run_to_completion(collect_stats(model, data, batch_size=64, snapshots=True))
    assert folded and all(parallel for _, parallel in folded)
    assert set(one.tensors) == set(many.tensors)
    for name, a in one.tensors.items():
        meta_a, arrays_a = a.to_arrays()
        meta_b, arrays_b = many.tensors[name].to_arrays()
        assert meta_a == meta_b
        assert arrays_a.keys() == arrays_b.keys()
        for key in arrays_a:
            np.testing.assert_array_equal(arrays_a[key], arrays_b[key])
    assert [s.samples for s in one.snapshots] == [s.samples for s in many.snapshots]
