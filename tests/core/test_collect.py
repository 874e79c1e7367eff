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
