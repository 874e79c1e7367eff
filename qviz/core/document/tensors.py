"""The open model's quantizable tensors: lookups the document and its views need.

Built once per model. Holds the exact weight values once read (the layer view needs them on
every redraw, and the same array object keeps the plot caches keyed by identity valid).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from enum import Enum

import numpy as np

from qviz.core.calibration.analysis import QuantTensor, TensorKey, quant_tensors
from qviz.core.model.loading import LoadedModel, TensorKind
from qviz.core.stats.collect import CalibrationStats


class ApplyScope(Enum):
    """Which tensors a change of settings applies to (always tensors of the selected kind)."""

    TENSOR = "tensor"
    OP_TYPE = "op-type"
    ALL = "all"


class TensorIndex:
    """The quantizable tensors of one model, in graph order."""

    def __init__(self, model: LoadedModel | None) -> None:
        self.model = model
        self.tensors: tuple[QuantTensor, ...] = () if model is None else tuple(quant_tensors(model))
        self._by_key = {t.key: t for t in self.tensors}
        self._shapes = {} if model is None else _value_shapes(model)
        self._weights: dict[str, np.ndarray] = {}

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    def __iter__(self) -> Iterator[TensorKey]:
        return iter(self._by_key)

    def __len__(self) -> int:
        return len(self.tensors)

    def tensor(self, key: TensorKey) -> QuantTensor:
        return self._by_key[key]

    def find(self, name: str, kind: TensorKind | None = None) -> TensorKey | None:
        """The key of a tensor by name (first match when `kind` is unknown, as in v1 files)."""
        for key in self._by_key:
            if key.name == name and (kind is None or key.kind is kind):
                return key
        return None

    def shape(self, key: TensorKey) -> tuple[int | None, ...] | None:
        tensor = self._by_key[key]
        if key.kind is TensorKind.WEIGHT:
            return tensor.layer.weight_shape
        return self._shapes.get(key.name)

    def element_count(self, key: TensorKey, stats: CalibrationStats | None) -> float:
        """Weights: parameters. Activations: values per sample (from the statistics)."""
        tensor = self._by_key[key]
        if key.kind is TensorKind.WEIGHT:
            shape = tensor.layer.weight_shape or ()
            return float(math.prod(shape)) if shape else 0.0
        if stats is not None and key.name in stats.tensors and stats.n_samples:
            return stats.tensors[key.name].count / stats.n_samples
        dims = self._shapes.get(key.name)
        if dims and all(isinstance(d, int) for d in dims[1:]):
            return float(math.prod(d for d in dims[1:] if d is not None))  # leading: batch
        return 0.0

    def weight_values(self, name: str) -> np.ndarray:
        """The float weight tensor, read once."""
        if name not in self._weights:
            assert self.model is not None
            self._weights[name] = self.model.weight(name)
        return self._weights[name]

    def scope_keys(self, key: TensorKey, scope: ApplyScope) -> list[TensorKey]:
        """The tensors a change to `key` under `scope` affects (same kind as `key`)."""
        if scope is ApplyScope.TENSOR:
            return [key]
        if scope is ApplyScope.OP_TYPE:
            op = self._by_key[key].layer.op_type
            return [
                k for k, t in self._by_key.items() if k.kind is key.kind and t.layer.op_type == op
            ]
        return [k for k in self._by_key if k.kind is key.kind]

    def layer_keys(self, key: TensorKey) -> list[TensorKey]:
        """The selected layer's weight and activation: what the layer view shows for `key`."""
        layer = self._by_key[key].layer
        keys: list[TensorKey] = []
        if layer.weight is not None:
            keys.append(TensorKey(layer.weight, TensorKind.WEIGHT))
        if key.kind is TensorKind.ACTIVATION:
            keys.append(key)
        elif layer.activations:
            keys.append(TensorKey(layer.activations[0], TensorKind.ACTIVATION))
        return [k for k in keys if k in self._by_key]

    def keys_of_layer(self, layer_name: str) -> list[TensorKey]:
        """Every tensor of a layer by its display name, weights first."""
        keys = [t.key for t in self.tensors if t.layer.name == layer_name]
        return sorted(keys, key=lambda k: k.kind is not TensorKind.WEIGHT)


def _value_shapes(model: LoadedModel) -> dict[str, tuple[int | None, ...]]:
    """Activation shapes the graph declares (dynamic axes as None), for the table's Shape."""
    shapes: dict[str, tuple[int | None, ...]] = {}
    graph = model.model.graph
    for vi in (*graph.input, *graph.value_info, *graph.output):
        ttype = vi.type.tensor_type
        if not ttype.HasField("shape"):
            continue
        dims: list[int | None] = [
            d.dim_value if d.HasField("dim_value") else None for d in ttype.shape.dim
        ]
        shapes[vi.name] = tuple(dims)
    return shapes


def unique_keys(keys: Sequence[TensorKey]) -> tuple[TensorKey, ...]:
    return tuple(dict.fromkeys(keys))
