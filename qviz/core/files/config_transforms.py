"""How the config file records transforms (schema 2).

* Each tensor configuration may carry ``"transforms"``: ``{"smoothquant": "auto" | "0.5" |
  null, "equalize": bool, "gptq": bool, "bias_correction": bool}`` (absent: none).
* The document's ``"rescalings"`` lists every activation a SmoothQuant or equalization scale
  was applied to, with the exact scales (float64 decimals, which JSON reads back bit for bit),
  the alpha used and how the graph expresses it — so a pipeline rebuilds the same transformed
  model from the file alone, no statistics needed.
* A weight entry with bias correction carries ``"corrected_bias"`` (the float32 values the
  graph's bias takes, as decimals and IEEE-754 hex like the scales); with GPTQ,
  ``"gptq": true``: its rounded weights live in the exported model, not in this file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from qviz.core.errors import QvizError
from qviz.core.files.float_hex import float32_from_hex, float32_hex
from qviz.core.transforms.plan import ScalingKind, TransformPlan
from qviz.core.transforms.settings import NO_TRANSFORMS, SmoothQuant, Transforms

__all__ = [
    "SavedRescaling",
    "decode_rescalings",
    "decode_transforms",
    "encode_rescalings",
    "encode_transforms",
]

JsonDict = dict[str, Any]


def encode_transforms(t: Transforms) -> JsonDict | None:
    """The tensor's transforms, or None when it has none (the key is then left out)."""
    if not t.any:
        return None
    return {
        "smoothquant": None if t.smoothquant is None else t.smoothquant.spec,
        "equalize": t.equalize,
        "gptq": t.gptq,
        "bias_correction": t.bias_correction,
    }


def decode_transforms(d: Any, what: str) -> Transforms:
    if d is None:
        return NO_TRANSFORMS
    if not isinstance(d, Mapping):
        raise QvizError(f"{what}: 'transforms' must be an object")
    flags = {}
    for key in ("equalize", "gptq", "bias_correction"):
        value = d.get(key, False)
        if not isinstance(value, bool):
            raise QvizError(f"{what}: transforms.{key} must be true or false, got {value!r}")
        flags[key] = value
    sq = d.get("smoothquant")
    smooth = None if sq is None else SmoothQuant.parse(str(sq))
    return Transforms(smoothquant=smooth, **flags)


@dataclass(frozen=True, eq=False)
class SavedRescaling:
    """One activation's rescaling as the config file records it."""

    activation: str
    kind: ScalingKind
    scales: np.ndarray
    alpha: float | None
    expressed_as: str


def encode_rescalings(plan: TransformPlan | None) -> list[JsonDict]:
    if plan is None:
        return []
    return [
        {
            "activation": act,
            "kind": a.kind.value,
            "alpha": a.alpha,
            "auto": a.search is not None,
            "expressed_as": a.site.expression,
            "scales": [float(v) for v in a.scales],
        }
        for act, a in plan.scalings.items()
    ]


def decode_rescalings(entries: Any, source: str) -> tuple[SavedRescaling, ...]:
    if entries is None:
        return ()
    if not isinstance(entries, list):
        raise QvizError(f"{source}: 'rescalings' must be a list")
    out = []
    for i, e in enumerate(entries):
        what = f"{source}: rescalings[{i}]"
        try:
            kind = ScalingKind(e["kind"])
            scales = np.array([float(v) for v in e["scales"]], dtype=np.float64)
            activation = str(e["activation"])
        except (KeyError, TypeError, ValueError):
            raise QvizError(f"{what} needs activation, kind and scales") from None
        if not (np.isfinite(scales).all() and (scales > 0).all()):
            raise QvizError(f"{what}: scales must be finite and positive")
        alpha = e.get("alpha")
        if alpha is not None and not (isinstance(alpha, int | float) and math.isfinite(alpha)):
            raise QvizError(f"{what}: alpha must be a number")
        out.append(SavedRescaling(activation, kind, scales,
                                  None if alpha is None else float(alpha),
                                  str(e.get("expressed_as", ""))))
    return tuple(out)


def encode_bias(values: np.ndarray) -> JsonDict:
    v = np.asarray(values, dtype=np.float32).reshape(-1)
    return {"values": [float(x) for x in v], "hex": [float32_hex(x) for x in v]}


def decode_bias(d: Any, what: str) -> np.ndarray | None:
    if d is None:
        return None
    try:
        hexes: Sequence[str] = d["hex"]
        decimals = [float(x) for x in d["values"]]
    except (KeyError, TypeError, ValueError):
        raise QvizError(f"{what}: corrected_bias needs values and hex") from None
    values = np.array([float32_from_hex(str(h)) for h in hexes], dtype=np.float32)
    if len(decimals) != values.size or (np.array(decimals, np.float64).astype(np.float32)
                                        != values).any():
        raise QvizError(f"{what}: corrected_bias values and hex disagree; edit both or neither")
    return values
