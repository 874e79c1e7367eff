"""The files a model reads besides itself, so that no write replaces one of them."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

__all__ = ["external_data_files", "model_files"]


def model_files(model: str | Path | None, *, near: Iterable[Path]) -> list[Path]:
    """The model file and, when a written file lies in its folder, the external data it names
    (the only case where a write could replace one)."""
    if model is None or not str(model) or not Path(model).is_file():
        return []
    path = Path(model)
    files = [path]
    folder = path.resolve().parent
    if path.suffix.lower() == ".onnx" and any(
        folder == p.resolve().parent or folder in p.resolve().parents for p in near
    ):
        files += external_data_files(path)
    return files


def external_data_files(path: Path) -> list[Path]:
    """The external data files an ``.onnx`` model names (read without loading the weights)."""
    import onnx
    from onnx import external_data_helper

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # an unreadable model is refused when it is loaded, not here
        return []

    def tensors(graph: onnx.GraphProto) -> Iterable[onnx.TensorProto]:
        yield from graph.initializer
        for node in graph.node:
            for attr in node.attribute:
                yield from ([attr.t] if attr.HasField("t") else [])
                yield from attr.tensors
                for sub in [attr.g] if attr.HasField("g") else []:
                    yield from tensors(sub)
                for sub in attr.graphs:
                    yield from tensors(sub)

    found: dict[Path, None] = {}
    for tensor in tensors(proto.graph):
        if external_data_helper.uses_external_data(tensor):
            location = external_data_helper.ExternalDataInfo(tensor).location
            found.setdefault(path.parent / location, None)
    return list(found)
