"""A/B between an imported model's own quantization and qviz's choice for the same tensors."""

from __future__ import annotations

from qviz.core.document.document import Document
from qviz.core.errors import QvizError
from qviz.core.imported.configs import imported_config, own_choice_config

__all__ = ["compare_with_own_choice"]


def compare_with_own_choice(doc: Document) -> None:
    """Pin the imported configuration as A and make qviz's own choice (same tensors, formats
    and granularities; ranges from qviz's default methods) the current one, B. Two undo
    steps at most: back to the imported settings if they were changed, then B."""
    model = doc.model
    if model is None or model.imported is None:
        raise QvizError("comparing with qviz's own choice needs a quantized model: open one "
                        "(File ▸ Open Quantized Model…)")
    imported = imported_config(model)
    if doc.config != imported:
        doc.set_config(imported, "imported settings")
    doc.pin("imported")
    doc.set_config(own_choice_config(model), "qviz's own choice for the imported tensors")
