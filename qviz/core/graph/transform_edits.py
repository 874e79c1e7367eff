"""The Q/DQ builder's hook for weight transforms: corrected biases written into the graph.

Bias correction (``qviz.core.transforms``) leaves a corrected bias on the weight's result;
here it replaces the layer's bias constant, becomes a new bias input (Conv/Gemm without
one) or a new Add after the layer (MatMul without one, or a computed bias: the Add then
carries the correction only). GPTQ's rounded weights need no graph edit: the builder
quantizes them instead of the float weight (:func:`weight_values`), giving exactly GPTQ's
codes. Runs on the builder's copy before anything else looks at the graph.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper, numpy_helper

from qviz.core.model.loading import TensorKind
from qviz.core.model.onnx_graph import FreshNames
from qviz.core.transforms.bias import BiasKind

if TYPE_CHECKING:
    from qviz.core.calibration.analysis import TensorResult

__all__ = ["apply_bias_corrections", "weight_values"]


def weight_values(r: TensorResult, read: Callable[[str], np.ndarray]) -> np.ndarray:
    """The float weight the builder quantizes: GPTQ's rounded values when there are some."""
    if r.applied is not None and r.applied.values is not None:
        return r.applied.values
    return read(r.name)


def apply_bias_corrections(
    graph: onnx.GraphProto, names: FreshNames, results: Sequence[TensorResult]
) -> list[str]:
    """Write every corrected bias of `results` into `graph`; returns notes."""
    nodes = {n.name: n for n in graph.node}
    inits = {t.name: t for t in graph.initializer}
    readers: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    inserted: dict[str, onnx.NodeProto] = {}
    notes: list[str] = []
    for r in results:
        a = r.applied
        if r.kind is not TensorKind.WEIGHT or a is None or a.bias is None or a.bias_site is None:
            continue
        site, bias = a.bias_site, np.asarray(a.bias, dtype=np.float32)
        node = nodes.get(site.node)
        if node is None:
            notes.append(f"bias correction of '{r.layer.name}' skipped: node '{site.node}' is gone")
            continue
        if site.kind in (BiasKind.INPUT, BiasKind.ADD):
            assert site.input_index is not None
            old = inits[node.input[site.input_index]]
            dtype = helper.tensor_dtype_to_np_dtype(old.data_type)
            value = bias.astype(dtype).reshape(tuple(old.dims) or bias.shape)
            if readers.get(old.name, 0) == 1:
                old.CopyFrom(numpy_helper.from_array(value, old.name))
            else:  # shared with another node: this layer gets its own copy
                fresh = names.fresh(f"{old.name}_corrected")
                graph.initializer.append(numpy_helper.from_array(value, fresh))
                node.input[site.input_index] = fresh
        elif site.kind is BiasKind.NEW_INPUT:
            fresh = names.fresh(f"{r.layer.name}.bias_corrected")
            graph.initializer.append(numpy_helper.from_array(bias, fresh))
            while len(node.input) < 2:
                node.input.append("")
            node.input.append(fresh)
        else:  # NEW_ADD: y -> y_uncorrected, Add(y_uncorrected, correction) -> y
            out = node.output[0]
            raw = names.fresh(f"{out}_uncorrected")
            const = names.fresh(f"{r.layer.name}.bias_correction")
            shape = (bias.size,) + (1,) * site.trailing
            graph.initializer.append(numpy_helper.from_array(bias.reshape(shape), const))
            node.output[0] = raw
            inserted[node.name] = helper.make_node(
                "Add", [raw, const], [out], name=names.fresh(f"{node.name}_bias_correction")
            )
    if inserted:
        ordered = []
        for n in list(graph.node):
            ordered.append(n)
            if n.name in inserted:
                ordered.append(inserted[n.name])
        del graph.node[:]
        graph.node.extend(ordered)
    return notes
