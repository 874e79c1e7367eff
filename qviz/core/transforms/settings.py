"""What the user chose to transform, per tensor: part of the immutable configuration.

Activations carry the transforms that rescale their channels (SmoothQuant, cross-layer
equalization): the scale is shared by every layer reading the activation. Weights carry the
transforms that change how they are rounded or what their layer adds (GPTQ, bias correction).
A transform set on the other kind of tensor has no effect (the controls never offer it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from qviz.core.errors import QvizError

__all__ = ["NO_TRANSFORMS", "SmoothQuant", "Transforms"]


@dataclass(frozen=True)
class SmoothQuant:
    """SmoothQuant's migration strength: ``alpha`` in [0, 1], or None for "auto" (per layer,
    the alpha whose estimated output error is smallest)."""

    alpha: float | None = 0.5

    def __post_init__(self) -> None:
        if self.alpha is None:
            return
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, int | float):
            raise QvizError(f"SmoothQuant alpha must be a number in [0, 1] or auto, "
                            f"not {self.alpha!r}")
        if not (math.isfinite(self.alpha) and 0.0 <= self.alpha <= 1.0):
            raise QvizError(f"SmoothQuant alpha must be in [0, 1] (or auto), not {self.alpha:g}")
        object.__setattr__(self, "alpha", float(self.alpha))

    @property
    def auto(self) -> bool:
        return self.alpha is None

    @property
    def spec(self) -> str:
        """What :meth:`parse` reads back: "auto" or the alpha ("0.5")."""
        return "auto" if self.alpha is None else f"{self.alpha:g}"

    @classmethod
    def parse(cls, text: str) -> SmoothQuant:
        """"auto" or a number in [0, 1]; QvizError (one line) otherwise."""
        key = str(text).strip().lower()
        if key == "auto":
            return cls(None)
        try:
            value = float(key)
        except ValueError:
            raise QvizError(f"SmoothQuant alpha must be a number in [0, 1] or auto, "
                            f"not {text!r}") from None
        return cls(value)


@dataclass(frozen=True)
class Transforms:
    """The transforms applied to one tensor (see the module docstring for which kind)."""

    smoothquant: SmoothQuant | None = None
    equalize: bool = False
    bias_correction: bool = False
    gptq: bool = False

    @property
    def any(self) -> bool:
        return self != NO_TRANSFORMS

    @property
    def rescales_channels(self) -> bool:
        """SmoothQuant or equalization: the activation's channels are rescaled."""
        return self.smoothquant is not None or self.equalize

    @property
    def changes_weight(self) -> bool:
        """GPTQ or bias correction: the weight's analysis needs the statistics."""
        return self.gptq or self.bias_correction

    @property
    def label(self) -> str:
        """"SmoothQuant 0.5, equalize" etc.; "" when there is none."""
        parts = []
        if self.smoothquant is not None:
            parts.append(f"SmoothQuant {self.smoothquant.spec}")
        if self.equalize:
            parts.append("equalize")
        if self.gptq:
            parts.append("GPTQ")
        if self.bias_correction:
            parts.append("bias correction")
        return ", ".join(parts)


NO_TRANSFORMS = Transforms()
