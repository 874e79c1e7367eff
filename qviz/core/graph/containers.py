"""Where quantized values live in an ONNX graph: element types, containers and opsets.

ONNX has element types for int8, uint8, int4, uint4 and the FP8 formats. INT widths it has no
type for (2, 3, 5, 6, 7 bits) are held in an int8/uint8 *container*; NF4 has none. The
default-domain opset a Q/DQ graph needs follows from its formats.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import ml_dtypes
import numpy as np
import onnx

from qviz.core.model.loading import TensorKind
from qviz.core.quant.formats import FormatKind, NumberFormat

if TYPE_CHECKING:  # analysis imports the calibration stack; the graph builder needs none of it
    from qviz.core.calibration.analysis import TensorResult

__all__ = [
    "BLOCKED_OPSET",
    "FP8_OPSET",
    "INT8_ONNX",
    "MIN_OPSET",
    "container_dtype",
    "container_format",
    "format_text",
    "in_container",
    "onnx_array",
    "required_opset",
]

#: Lowest default-domain opset of a Q/DQ graph: per-axis DequantizeLinear needs 13.
MIN_OPSET = 13
#: FP8 QuantizeLinear/DequantizeLinear (with ``saturate``) exist from opset 19.
FP8_OPSET = 19
#: INT4/UINT4 (and INT16/UINT16) Q/DQ and blocked (per-group) quantization exist from opset 21.
BLOCKED_OPSET = 21
#: The ONNX types of the only formats with QLinear kernels on CPU.
INT8_ONNX = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)


def container_dtype(fmt: NumberFormat) -> int | None:
    """The ONNX element type the Q/DQ graph stores `fmt`'s quantized values in, or None (NF4).

    The format's own type where ONNX has one (int8, uint8, int4, uint4, float8); int8/uint8
    for INT widths ONNX has no type for (2, 3, 5, 6, 7 bits), whose values fit in a byte.
    Weights in a container are exact and run natively (QLinearConv, QGemm... read int8/uint8);
    activations in one are exact only with a Clip after the DequantizeLinear (see
    :mod:`qviz.core.graph.qdq`), which no integer kernel fuses.
    """
    if fmt.onnx_dtype is not None:
        return fmt.onnx_dtype
    if fmt.kind is FormatKind.INT:
        return onnx.TensorProto.INT8 if fmt.signed else onnx.TensorProto.UINT8
    return None


def in_container(fmt: NumberFormat) -> bool:
    """INT 2, 3, 5, 6 or 7 bits: stored in an int8/uint8 container narrower than its type."""
    return fmt.kind is FormatKind.INT and fmt.onnx_dtype is None


def format_text(fmt: NumberFormat) -> str:
    """The format's label without the "(simulation only)" that formats.py puts on every
    width ONNX has no type for: whether a tensor is simulation only is decided here."""
    return fmt.label.removesuffix(" (simulation only)")


def container_format(fmt: NumberFormat) -> NumberFormat:
    """The 8-bit ONNX format a 2..7-bit INT activation is quantized into before clipping."""
    return NumberFormat(FormatKind.INT, 8, fmt.signed, fmt.symmetric)


def onnx_array(values: np.ndarray, fmt: NumberFormat) -> np.ndarray:
    """Values in the numpy dtype `numpy_helper.from_array` maps to the format's ONNX type:
    qviz keeps int4/uint4 unpacked in int8/uint8; ONNX wants ml_dtypes' 4-bit types."""
    if fmt.onnx_dtype == onnx.TensorProto.INT4:
        return values.astype(ml_dtypes.int4)
    if fmt.onnx_dtype == onnx.TensorProto.UINT4:
        return values.astype(ml_dtypes.uint4)
    return np.asarray(values, dtype=fmt.storage_dtype)


def required_opset(results: Iterable[TensorResult]) -> int:
    """The lowest default-domain opset whose Q/DQ ops express every tensor of `results`."""
    need = MIN_OPSET
    for r in results:
        fmt = r.config.fmt
        if container_dtype(fmt) is None and r.kind is TensorKind.WEIGHT:
            continue  # NF4, stored as float: no Q/DQ type involved
        if fmt.kind in (FormatKind.FP8_E4M3FN, FormatKind.FP8_E5M2):
            need = max(need, FP8_OPSET)
        if fmt.onnx_dtype in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4,
                              onnx.TensorProto.INT16, onnx.TensorProto.UINT16):
            need = max(need, BLOCKED_OPSET)  # 4- and 16-bit Q/DQ types are opset 21's
        if r.qparams.block_size is not None:
            need = max(need, BLOCKED_OPSET)
    return need
