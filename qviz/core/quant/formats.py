"""Number formats and quantization granularities: what a tensor is quantized *to*, and how finely.

The names and conventions follow ``docs/architecture.md`` ("Numbers"). Integer ranges follow
onnxruntime's quantization tool (``onnxruntime.quantization.quant_utils``): symmetric signed
formats drop the most negative code (int8 symmetric is -127..127) so that the range is
symmetric about zero, exactly as ORT's ``ONNX_INT_TYPE_SYMMETRIC_RANGE`` does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import ClassVar

import ml_dtypes
import numpy as np
import onnx

from qviz.core.errors import QvizError

__all__ = [
    "FORMAT_BLOCK_SIZE",
    "FP4_MAX",
    "NF4_LEVELS",
    "WEIGHT_ONLY_KINDS",
    "FormatKind",
    "Granularity",
    "GranularityKind",
    "NumberFormat",
    "PerAxis",
    "PerGroup",
    "PerTensor",
    "check_granularity",
]


class FormatKind(Enum):
    """The family of number format a tensor is quantized to."""

    INT = "int"
    FP8_E4M3FN = "fp8_e4m3fn"
    FP8_E5M2 = "fp8_e5m2"
    NF4 = "nf4"
    # OCP Microscaling FP4: E2M1 values, one power-of-two (E8M0) scale per block of 32.
    MXFP4 = "mxfp4"
    # NVIDIA's FP4: E2M1 values, one E4M3 scale per block of 16 times one float32 scale per
    # tensor.
    NVFP4 = "nvfp4"


#: Kinds that only weights take: a codebook (NF4), or block formats whose scales production
#: computes per block at run time for activations (MX/NV FP4), which static calibration
#: cannot stand for.
WEIGHT_ONLY_KINDS = frozenset({FormatKind.NF4, FormatKind.MXFP4, FormatKind.NVFP4})
#: The block (group) size each block format is defined with.
FORMAT_BLOCK_SIZE: dict[FormatKind, int] = {FormatKind.MXFP4: 32, FormatKind.NVFP4: 16}
#: E2M1, the element type of both FP4 formats: +-{0, 0.5, 1, 1.5, 2, 3, 4, 6}.
FP4_E2M1 = np.dtype(ml_dtypes.float4_e2m1fn)
FP4_MAX = 6.0


# The 16 NormalFloat-4 levels of QLoRA (Dettmers et al. 2023, appendix E), as published in
# bitsandbytes (``functional.get_4bit_type("nf4")``). They are quantiles of N(0, 1) scaled to
# [-1, 1], with an exact zero so that zero-padding and ReLU zeros are lossless. Read-only so no
# caller can corrupt the codebook shared by every NF4 tensor.
NF4_LEVELS: np.ndarray = np.array(
    [
        -1.0,
        -0.6961928009986877,
        -0.5250730514526367,
        -0.39491748809814453,
        -0.28444138169288635,
        -0.18477343022823334,
        -0.09105003625154495,
        0.0,
        0.07958029955625534,
        0.16093020141124725,
        0.24611230194568634,
        0.33791524171829224,
        0.44070982933044434,
        0.5626170039176941,
        0.7229568362236023,
        1.0,
    ],
    dtype=np.float32,
)
NF4_LEVELS.setflags(write=False)

# Largest finite magnitude of each FP8 format (the value ONNX saturates to with saturate=1).
_FP8_MAX: dict[FormatKind, float] = {
    FormatKind.FP8_E4M3FN: float(ml_dtypes.finfo(ml_dtypes.float8_e4m3fn).max),  # 448
    FormatKind.FP8_E5M2: float(ml_dtypes.finfo(ml_dtypes.float8_e5m2).max),  # 57344
}

_FP8_STORAGE: dict[FormatKind, np.dtype] = {
    FormatKind.FP8_E4M3FN: np.dtype(ml_dtypes.float8_e4m3fn),
    FormatKind.FP8_E5M2: np.dtype(ml_dtypes.float8_e5m2),
}

_FP8_ONNX: dict[FormatKind, int] = {
    FormatKind.FP8_E4M3FN: onnx.TensorProto.FLOAT8E4M3FN,
    FormatKind.FP8_E5M2: onnx.TensorProto.FLOAT8E5M2,
}

# ONNX has integer tensor types only for these widths; every other width is simulated.
_ONNX_INT: dict[tuple[int, bool], int] = {
    (8, True): onnx.TensorProto.INT8,
    (8, False): onnx.TensorProto.UINT8,
    (4, True): onnx.TensorProto.INT4,
    (4, False): onnx.TensorProto.UINT4,
    (16, True): onnx.TensorProto.INT16,
    (16, False): onnx.TensorProto.UINT16,
}

_MIN_INT_BITS = 2
_MAX_INT_BITS = 8
# ONNX's 16-bit integer types (ORT's QDQ quantizer writes them for 16-bit activations): the one
# width above a byte, stored in int16/uint16 rather than in an 8-bit container.
_WIDE_INT_BITS = 16

# Accepted spellings, lower-cased with "-" and " " folded to "_". The first spelling of each
# kind is the canonical one that ``NumberFormat.spec`` writes.
_FLOAT_ALIASES: dict[str, FormatKind] = {
    "fp8_e4m3fn": FormatKind.FP8_E4M3FN,
    "e4m3": FormatKind.FP8_E4M3FN,
    "e4m3fn": FormatKind.FP8_E4M3FN,
    "fp8_e4m3": FormatKind.FP8_E4M3FN,
    "float8_e4m3fn": FormatKind.FP8_E4M3FN,
    "fp8_e5m2": FormatKind.FP8_E5M2,
    "e5m2": FormatKind.FP8_E5M2,
    "float8_e5m2": FormatKind.FP8_E5M2,
    "nf4": FormatKind.NF4,
    "mxfp4": FormatKind.MXFP4,
    "mx_fp4": FormatKind.MXFP4,
    "nvfp4": FormatKind.NVFP4,
    "nv_fp4": FormatKind.NVFP4,
}
_INT_RE = re.compile(r"(u?)int(\d+)")
_FORMAT_CHOICES = (
    "int2..int8, int16, uint2..uint8, uint16, fp8_e4m3fn, fp8_e5m2, nf4, mxfp4, nvfp4"
)


def _valid_int_bits(bits: int) -> bool:
    return _MIN_INT_BITS <= bits <= _MAX_INT_BITS or bits == _WIDE_INT_BITS


@dataclass(frozen=True)
class NumberFormat:
    """A quantized number format.

    ``bits``, ``signed`` and ``symmetric`` only vary for ``INT``. FP8, NF4 and the FP4 block
    formats are always signed and symmetric with zero point 0, and their width is fixed (8 and
    4); whatever is passed for those fields is replaced by the fixed value in
    ``__post_init__`` so that, e.g., a GUI "symmetric" checkbox can be passed straight
    through and equal formats compare equal. MXFP4 and NVFP4 fix their scales too (a power
    of two; an E4M3 value times a per-tensor float32), so ``pow2_scale`` does not apply.
    """

    kind: FormatKind = FormatKind.INT
    bits: int = 8
    signed: bool = True
    symmetric: bool = True
    pow2_scale: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.kind, FormatKind):
            raise TypeError(f"kind must be a FormatKind, not {type(self.kind).__name__}")
        if self.kind is FormatKind.INT:
            # bool is an int subclass; int(True) bits would be a silent bug.
            if isinstance(self.bits, bool) or not isinstance(self.bits, int):
                raise TypeError(f"bits must be an int, not {type(self.bits).__name__}")
            if not _valid_int_bits(self.bits):
                raise QvizError(
                    f"integer formats have {_MIN_INT_BITS} to {_MAX_INT_BITS} bits or "
                    f"{_WIDE_INT_BITS}, not {self.bits}"
                )
        else:
            # Frozen dataclass: object.__setattr__ is the documented way to normalize fields.
            four = self.kind in (FormatKind.NF4, FormatKind.MXFP4, FormatKind.NVFP4)
            object.__setattr__(self, "bits", 4 if four else 8)
            object.__setattr__(self, "signed", True)
            object.__setattr__(self, "symmetric", True)
            if self.kind in FORMAT_BLOCK_SIZE:
                object.__setattr__(self, "pow2_scale", False)

    # ------------------------------------------------------------------ ranges
    @property
    def qmin(self) -> float:
        """Smallest value the *scale computation* maps the range onto (ORT convention).

        INT signed symmetric: -(2^(b-1)-1); signed asymmetric: -2^(b-1); unsigned: 0;
        FP8: -max finite; NF4: -1. ``quantize`` saturates to :attr:`saturation_range`, which
        differs only for signed symmetric INT (one extra code below, as ONNX saturates to the
        full type range).
        """
        if self.kind is FormatKind.INT:
            if not self.signed:
                return 0.0
            half = 2 ** (self.bits - 1)
            return float(-(half - 1) if self.symmetric else -half)
        return -self.qmax

    @property
    def qmax(self) -> float:
        """Largest value the scale computation maps the range onto: 2^(b-1)-1 signed,
        2^b-1 unsigned, 448 (e4m3fn), 57344 (e5m2), 1 (NF4)."""
        if self.kind is FormatKind.INT:
            return float(2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1)
        if self.kind is FormatKind.NF4:
            return 1.0
        if self.kind in FORMAT_BLOCK_SIZE:
            return FP4_MAX
        return _FP8_MAX[self.kind]

    @property
    def saturation_range(self) -> tuple[float, float]:
        """The range ``quantize`` clips to: the storage type's full range (ONNX QuantizeLinear
        saturates to the type, e.g. int8 -128..127 even for a symmetric -127..127 scale)."""
        if self.kind is FormatKind.INT:
            if self.signed:
                half = 2 ** (self.bits - 1)
                return float(-half), float(half - 1)
            return 0.0, float(2**self.bits - 1)
        return self.qmin, self.qmax

    # ------------------------------------------------------------------ names
    @property
    def spec(self) -> str:
        """The text :meth:`parse` accepts back ("int8", "uint4", "fp8_e4m3fn", "nf4").

        Symmetry and power-of-two scales are separate arguments of :meth:`parse`, so
        ``NumberFormat.parse(f.spec, f.symmetric, f.pow2_scale) == f``.
        """
        if self.kind is FormatKind.INT:
            return f"{'' if self.signed else 'u'}int{self.bits}"
        return self.kind.value

    @property
    def label(self) -> str:
        """Human text: "int8 sym", "uint4 asym", "fp8 e4m3fn", "nf4 (simulation only)"."""
        if self.kind is FormatKind.INT:
            text = f"{self.spec} {'sym' if self.symmetric else 'asym'}"
        elif self.kind in WEIGHT_ONLY_KINDS:
            text = self.kind.value
        else:
            text = self.kind.value.replace("_", " ")
        if self.pow2_scale:
            text += " pow2"
        if self.simulation_only:
            text += " (simulation only)"
        return text

    # ------------------------------------------------------------------ runtime types
    @property
    def simulation_only(self) -> bool:
        """True when ONNX Runtime executes the format nowhere: NF4, and MXFP4/NVFP4 (ONNX
        Runtime's CPU kernels have no FP4 block format; qviz stores their dequantized values
        and measures them exactly in simulation).

        INT 2, 3, 5, 6 and 7 bits have no ONNX type of their own, but weights in those widths
        run natively held in int8/uint8 (ONNX Runtime's reduce_range is 7-bit weights);
        only activations in those widths are simulated (see ``native_activation``).
        """
        return self.kind in WEIGHT_ONLY_KINDS

    @property
    def weight_only(self) -> bool:
        """True for formats only weights take (NF4, MXFP4, NVFP4)."""
        return self.kind in WEIGHT_ONLY_KINDS

    @property
    def block_size(self) -> int | None:
        """The block size a block format is defined with (MXFP4 32, NVFP4 16), else None:
        such a format is quantized per group of exactly that size."""
        return FORMAT_BLOCK_SIZE.get(self.kind)

    @property
    def native_activation(self) -> bool:
        """True when QuantizeLinear alone expresses this format on an activation."""
        return self.onnx_dtype is not None

    @property
    def onnx_dtype(self) -> int | None:
        """The ``onnx.TensorProto`` element type of the quantized tensor, or None if ONNX has
        no such type."""
        if self.kind is FormatKind.INT:
            return _ONNX_INT.get((self.bits, self.signed))
        if self.kind in WEIGHT_ONLY_KINDS:
            return None
        return _FP8_ONNX[self.kind]

    @property
    def storage_dtype(self) -> np.dtype:
        """numpy dtype holding quantized values and zero points: int8/uint8 for every INT
        width up to 8 (int4 and 2..7-bit values unpacked, one per byte), int16/uint16 for
        16 bits, ml_dtypes FP8 types, uint8 codebook indices for NF4, and ml_dtypes' E2M1
        for MXFP4/NVFP4."""
        if self.kind is FormatKind.INT:
            if self.bits == _WIDE_INT_BITS:
                return np.dtype(np.int16 if self.signed else np.uint16)
            return np.dtype(np.int8 if self.signed else np.uint8)
        if self.kind is FormatKind.NF4:
            return np.dtype(np.uint8)
        if self.kind in FORMAT_BLOCK_SIZE:
            return FP4_E2M1
        return _FP8_STORAGE[self.kind]

    # ------------------------------------------------------------------ parsing
    @classmethod
    def parse(cls, text: str, symmetric: bool = True, pow2_scale: bool = False) -> NumberFormat:
        """Read a format name: "int2".."int8", "uint2".."uint8", "fp8_e4m3fn" (alias "e4m3"),
        "fp8_e5m2" (alias "e5m2"), "nf4", "mxfp4", "nvfp4". Case, spaces and dashes are
        forgiven.

        Raises QvizError (one line, listing the choices) for anything else.
        """
        key = re.sub(r"[\s\-]+", "_", str(text).strip().lower())
        if key in _FLOAT_ALIASES:
            return cls(kind=_FLOAT_ALIASES[key], pow2_scale=pow2_scale)
        match = _INT_RE.fullmatch(key)
        if match is not None:
            bits = int(match.group(2))
            if _valid_int_bits(bits):
                return cls(
                    kind=FormatKind.INT,
                    bits=bits,
                    signed=not match.group(1),
                    symmetric=symmetric,
                    pow2_scale=pow2_scale,
                )
        raise QvizError(f"unknown format {text!r}: choose {_FORMAT_CHOICES}")


class GranularityKind(Enum):
    """How many scales a tensor gets: one, one per channel, or one per block of a channel."""

    PER_TENSOR = "per-tensor"
    PER_CHANNEL = "per-channel"
    PER_GROUP = "per-group"


_GRANULARITY_ALIASES: dict[str, GranularityKind] = {
    "per_tensor": GranularityKind.PER_TENSOR,
    "tensor": GranularityKind.PER_TENSOR,
    "per_channel": GranularityKind.PER_CHANNEL,
    "channel": GranularityKind.PER_CHANNEL,
    "per_axis": GranularityKind.PER_CHANNEL,
    "per_group": GranularityKind.PER_GROUP,
    "group": GranularityKind.PER_GROUP,
    "blocked": GranularityKind.PER_GROUP,
    "per_block": GranularityKind.PER_GROUP,
}
# "per-group (64)", "per-group:64", "group64": the group size written inside the text wins.
_GROUP_RE = re.compile(r"(?P<name>[a-z_]+?)_*[(:=]?_*(?P<size>\d+)_*\)?")
_GRANULARITY_CHOICES = "per-tensor, per-channel, per-group (N)"
DEFAULT_GROUP_SIZE = 128


class Granularity:
    """How finely a tensor is scaled: the base of a small family of frozen types,
    :class:`PerTensor`, :class:`PerAxis` and :class:`PerGroup` (as torchao's granularity
    types). Each member carries only the parameter that applies to it."""

    kind: ClassVar[GranularityKind]

    @property
    def label(self) -> str:
        """Human text ("per-tensor", "per-channel", "per-group (128)") that :meth:`parse`
        reads back."""
        return self.kind.value

    @staticmethod
    def of(kind: GranularityKind, group_size: int = DEFAULT_GROUP_SIZE) -> Granularity:
        """The member for ``kind`` (``group_size`` is used only for PER_GROUP)."""
        if kind is GranularityKind.PER_TENSOR:
            return PerTensor()
        if kind is GranularityKind.PER_CHANNEL:
            return PerAxis()
        return PerGroup(group_size)

    @staticmethod
    def parse(text: str, group_size: int = DEFAULT_GROUP_SIZE) -> Granularity:
        """Read "per-tensor", "per-channel" or "per-group" (also "tensor", "channel",
        "group", "blocked"); a size inside the text ("per-group (64)") overrides
        ``group_size``. Raises QvizError for anything else."""
        key = re.sub(r"[\s\-]+", "_", str(text).strip().lower())
        kind = _GRANULARITY_ALIASES.get(key)
        if kind is None:
            match = _GROUP_RE.fullmatch(key)
            if match is not None:
                named = _GRANULARITY_ALIASES.get(match.group("name").strip("_"))
                if named is GranularityKind.PER_GROUP:
                    kind = named
                    group_size = int(match.group("size"))
        if kind is None:
            raise QvizError(f"unknown granularity {text!r}: choose {_GRANULARITY_CHOICES}")
        return Granularity.of(kind, group_size)


@dataclass(frozen=True)
class PerTensor(Granularity):
    """One scale for the whole tensor."""

    kind: ClassVar[GranularityKind] = GranularityKind.PER_TENSOR


@dataclass(frozen=True)
class PerAxis(Granularity):
    """One scale per slice along ``axis``; None means the layer's output-channel axis (the
    usual per-channel weight quantization), which differs between op types."""

    kind: ClassVar[GranularityKind] = GranularityKind.PER_CHANNEL
    axis: int | None = None

    def __post_init__(self) -> None:
        bad = isinstance(self.axis, bool) or not isinstance(self.axis, int)
        if self.axis is not None and bad:
            raise TypeError(f"axis must be an int or None, not {type(self.axis).__name__}")

    @property
    def label(self) -> str:
        return self.kind.value if self.axis is None else f"per-axis ({self.axis})"


@dataclass(frozen=True)
class PerGroup(Granularity):
    """One scale per block of ``group_size`` values along the reduction axis (ONNX
    ``block_size``)."""

    kind: ClassVar[GranularityKind] = GranularityKind.PER_GROUP
    group_size: int = DEFAULT_GROUP_SIZE

    def __post_init__(self) -> None:
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int):
            raise TypeError(f"group_size must be an int, not {type(self.group_size).__name__}")
        if self.group_size < 1:
            raise QvizError(f"group size must be a positive integer, not {self.group_size}")

    @property
    def label(self) -> str:
        return f"per-group ({self.group_size})"


def check_granularity(fmt: NumberFormat, granularity: Granularity) -> None:
    """QvizError unless `granularity` suits `fmt`: a block format (MXFP4, NVFP4) is defined
    with one scale per block of its own size along the reduction axis."""
    block = fmt.block_size
    if block is None:
        return
    if not isinstance(granularity, PerGroup) or granularity.group_size != block:
        raise QvizError(
            f"{fmt.spec} has one scale per block of {block}: choose per-group ({block}), "
            f"not {granularity.label}"
        )
