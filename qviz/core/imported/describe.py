"""How the app and the reports name what a quantized model was opened with."""

from __future__ import annotations

from pathlib import Path

from qviz.core.imported.types import PairKind
from qviz.core.model.loading import LoadedModel

__all__ = ["float_original", "import_summary"]


def float_original(model: LoadedModel | None) -> Path | None:
    """The float original file a quantized model was opened with (None: derived from it, or
    not a quantized model): an input that no save may replace."""
    imported = None if model is None else model.imported
    return None if imported is None else imported.float_source


def import_summary(model: LoadedModel | None) -> str | None:
    """One line: the pairs imported and the float original they are measured against (None
    for a model that was not quantized)."""
    if model is None or model.imported is None:
        return None
    imported = model.imported
    counts = imported.counts()
    pairs = (f"{counts[PairKind.WEIGHT]} weight and {counts[PairKind.ACTIVATION]} activation "
             "pairs")
    origin = (f" (converted from {imported.converted_from})" if imported.converted_from
              else "")
    if imported.derived:
        return (f"Quantized model{origin}: {pairs} imported; float original derived from it "
                "(pairs removed, weights dequantized: weight errors read zero)")
    return (f"Quantized model{origin}: {pairs} imported; float original "
            f"{imported.float_source.name if imported.float_source else ''}")
