"""Quantization parameters read from a model quantized elsewhere, as a method's one parameter.

`ImportedParams` is what ``Method.IMPORTED`` carries: the exact scale and zero point (and axis
and block size) a Q/DQ pair of an imported model holds, plus, for a weight, the integer codes
the model stores (a tool such as GPTQ may choose codes other than rounding the float weight).
Two of them are equal when their parameters are bit for bit the same, so equal choices are
equal method specs (and equal cache keys); the codes ride along without taking part.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from qviz.core.quant.formats import FormatKind, NumberFormat
from qviz.core.quant.qparams import QParams
from qviz.core.quant.quantize import dequantize

__all__ = ["ImportedParams", "qparams_digest"]


def qparams_digest(qp: QParams) -> str:
    """sha256 of the bits of a QParams: its layout and its scale and zero-point arrays."""
    h = hashlib.sha256(f"{qp.axis}|{qp.block_size}|".encode())
    for arr in (qp.scale, qp.zero_point):
        a = np.ascontiguousarray(arr)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class ImportedParams:
    """The parameters of one imported Q/DQ pair (see the module docstring).

    ``codes`` (weights only) are the stored quantized values, in the format's storage dtype
    and the weight's shape; None for activations, or when only the parameters are known (a
    configuration file records scales, not codes).
    """

    qparams: QParams = field(compare=False, hash=False, repr=False)
    codes: np.ndarray | None = field(default=None, compare=False, hash=False, repr=False)
    digest: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "digest", qparams_digest(self.qparams))
        if self.codes is not None:
            codes = np.array(self.codes)
            codes.setflags(write=False)
            object.__setattr__(self, "codes", codes)

    def effective_range(self, fmt: NumberFormat) -> tuple[np.ndarray, np.ndarray]:
        """The range the parameters map onto the format's ``[qmin, qmax]`` (float64, one
        entry per scale), as `TensorMetrics.lo/hi` report it."""
        scale = self.qparams.scale.astype(np.float64)
        if fmt.kind is not FormatKind.INT:
            return fmt.qmin * scale, fmt.qmax * scale
        zp = self.qparams.zero_point.astype(np.float64)
        return (fmt.qmin - zp) * scale, (fmt.qmax - zp) * scale

    def dequantized(self, fmt: NumberFormat) -> np.ndarray | None:
        """The float32 values the stored codes stand for (None without codes)."""
        if self.codes is None:
            return None
        return dequantize(self.codes, self.qparams, fmt)

    def without_codes(self) -> ImportedParams:
        return ImportedParams(self.qparams)
