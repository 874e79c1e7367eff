"""Calibration methods: from statistics to a clip range ``(lo, hi)``.

Every method is a pure function of a :class:`TensorStats` (or of many histograms at once, for
per-channel and per-group weights), so switching method in the GUI never re-runs the model.
Histogram methods (percentile, entropy, MSE) see the histogram's values, i.e. finite values
with ``|x| < EXTREME_THRESHOLD``: a range stretched to a -3.4e38 mask fill is useless whatever
the method. MinMax uses the exact min/max (extremes included), which is exactly why the GUI
flags ``dominated_by_extremes``.

The returned range is the *raw* range:
:func:`qviz.core.quant.qparams.compute_qparams` then widens it to include zero and
symmetrises it for symmetric formats, as onnxruntime does. Histogram methods clamp their
range to the data's [min, max] as onnxruntime's calibrators do (so a ReLU output gets
``(0, t)`` rather than ``(-t, t)``; the scale is the same).

This module holds the methods' types and entry points; each histogram method's search is in
its own module (``percentile``, ``entropy``, ``mse``), TensorRT's KL criterion drawn by the
error curve in ``kl_curve``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import numpy as np
from numpy.typing import ArrayLike

from qviz.core.calibration.entropy import entropy_ranges
from qviz.core.calibration.mse import mse_ranges
from qviz.core.calibration.percentile import percentile_ranges
from qviz.core.errors import QvizError
from qviz.core.quant.formats import NumberFormat
from qviz.core.quant.imported_params import ImportedParams
from qviz.core.stats.histogram import HistogramRows
from qviz.core.stats.tensor_stats import TensorStats

__all__ = [
    "DEFAULT_PERCENTILE",
    "Method",
    "MethodSpec",
    "choose_range",
    "choose_row_ranges",
    "data_extent",
]


class Method(Enum):
    """How a clip range is chosen from statistics."""

    MINMAX = "minmax"
    PERCENTILE = "percentile"
    ENTROPY = "entropy"
    MSE = "mse"
    MANUAL = "manual"
    # The exact scale and zero point of a model quantized by another tool (its Q/DQ pair).
    IMPORTED = "imported"


DEFAULT_PERCENTILE = 99.99


@dataclass(frozen=True)
class MethodSpec:
    """A method and the one parameter that applies to it, nothing else: ``percentile``
    (PERCENTILE only, in (0, 100]; 99.99 when not given) or ``manual_range`` (MANUAL only,
    ``lo < hi``; checked when the range is chosen, so a spec can exist before the user has
    set a range) or ``imported`` (IMPORTED only: the parameters of a Q/DQ pair read from a
    quantized model; like a manual range, checked when used). A parameter given to a method
    it does not apply to is a TypeError, so equal choices are equal specs (and equal cache
    keys); :meth:`of` drops them instead, for callers that hold every parameter whatever the
    method (a form, command-line options)."""

    method: Method = Method.MINMAX
    percentile: float | None = None
    manual_range: tuple[float, float] | None = None
    imported: ImportedParams | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.method, Method):
            raise TypeError(f"method must be a Method, not {type(self.method).__name__}")
        if self.method is Method.PERCENTILE:
            p = DEFAULT_PERCENTILE if self.percentile is None else float(self.percentile)
            if not (0.0 < p <= 100.0):
                raise QvizError(f"percentile must be in (0, 100], not {self.percentile}")
            object.__setattr__(self, "percentile", p)
        elif self.percentile is not None:
            raise TypeError(f"a percentile applies to Method.PERCENTILE, not {self.method}")
        if self.method is Method.MANUAL:
            if self.manual_range is not None:
                lo, hi = (float(v) for v in self.manual_range)
                object.__setattr__(self, "manual_range", (lo, hi))
        elif self.manual_range is not None:
            raise TypeError(f"a manual range applies to Method.MANUAL, not {self.method}")
        if self.imported is not None and self.method is not Method.IMPORTED:
            raise TypeError(f"imported parameters apply to Method.IMPORTED, not {self.method}")

    @classmethod
    def of(
        cls,
        method: Method,
        percentile: float | None = None,
        manual_range: tuple[float, float] | None = None,
    ) -> MethodSpec:
        """The spec for ``method``, keeping only the parameter that applies to it."""
        return cls(
            method,
            percentile if method is Method.PERCENTILE else None,
            manual_range if method is Method.MANUAL else None,
        )

    @property
    def quantile(self) -> float:
        """The percentile as a fraction in (0, 1] (PERCENTILE only)."""
        if self.percentile is None:
            raise TypeError(f"{self.method} has no percentile")
        return self.percentile / 100.0


# ---------------------------------------------------------------------- entry points
def choose_range(stats: TensorStats, spec: MethodSpec, fmt: NumberFormat) -> tuple[float, float]:
    """The clip range ``(lo, hi)`` (Python floats) that ``spec`` picks for ``stats``.

    * MINMAX: the exact ``(min, max)``, as onnxruntime's ``MinMaxCalibrater``.
    * PERCENTILE, ENTROPY, MSE: see :func:`choose_row_ranges` (one histogram).
    * MANUAL: ``spec.manual_range``; QvizError unless finite with ``lo < hi``.
    * IMPORTED: the range the imported per-tensor parameters cover (QvizError without them,
      or for per-channel ones: a single range cannot stand for them).

    A tensor with no finite values gives ``(0.0, 0.0)`` for every method but MANUAL and
    IMPORTED.
    """
    if spec.method is Method.MANUAL:
        return _manual_range(spec)
    if spec.method is Method.IMPORTED:
        lo_i, hi_i = _imported_ranges(spec, fmt)
        if lo_i.size != 1:
            raise QvizError("imported per-channel parameters have no single clip range")
        return float(lo_i.reshape(-1)[0]), float(hi_i.reshape(-1)[0])
    if spec.method is Method.MINMAX or stats.count == 0 or stats.histogram.total <= 0:
        return stats.min, stats.max
    vmin, vmax = data_extent(stats)
    lo, hi = choose_row_ranges(
        HistogramRows.from_histogram(stats.histogram),
        np.array([vmin]),
        np.array([vmax]),
        spec,
        fmt,
    )
    return float(lo[0]), float(hi[0])


def data_extent(stats: TensorStats) -> tuple[float, float]:
    """[min, max] of the histogram's values: the exact min/max unless extremes were seen, in
    which case the outer edges of the occupied bins stand in for the side they dominate."""
    hist = stats.histogram
    occupied = np.flatnonzero(hist.counts > 0)
    if occupied.size == 0:
        return stats.min, stats.max
    edges_lo = hist.lo + occupied[0] * hist.bin_width
    edges_hi = hist.lo + (occupied[-1] + 1) * hist.bin_width
    vmin = max(stats.min, edges_lo)
    vmax = min(stats.max, edges_hi)
    return vmin, max(vmin, vmax)


def choose_row_ranges(
    rows: HistogramRows | None,
    vmin: ArrayLike,
    vmax: ArrayLike,
    spec: MethodSpec,
    fmt: NumberFormat,
) -> tuple[np.ndarray, np.ndarray]:
    """Clip ranges for ``R`` histograms at once (one tensor, or a weight's channels/blocks).

    ``vmin``/``vmax`` (R,) are each row's exact data extent; results are clamped to it.
    ``rows`` may be None for MINMAX and MANUAL, which need no histogram.

    PERCENTILE (``p = spec.percentile``) matches onnxruntime's ``HistogramCalibrater`` /
    ``HistogramCollector.compute_percentile`` (the first point where the CDF reaches the
    target, interpolated inside the bin rather than snapped to its lower edge):

    * symmetric formats (signed INT sym, FP8, NF4, and uint sym, which ORT also maps
      symmetrically): ORT's ``symmetric=True`` rule, the ``p``-th percentile ``t`` of ``|x|``
      and the range ``(-t, t)``;
    * asymmetric INT on two-sided data: ORT's ``symmetric=False`` rule, ``(100-p)/2`` percent
      cut from each tail;
    * asymmetric INT on one-sided data (min >= 0, e.g. ReLU; or max <= 0): the whole
      ``100-p`` percent is cut from the open tail and the bounded side keeps its exact
      min/max. Deviation from ORT, on purpose: cutting the bounded side just moves ``lo``
      off 0 and ``compute_qparams`` widens it straight back to 0, so ORT ends up clipping
      only ``(100-p)/2`` percent where the user asked for ``100-p``.

    ENTROPY: onnxruntime's ``EntropyCalibrater`` (``HistogramCollector.collect_value`` and
    ``get_entropy_threshold`` in ``onnxruntime/quantization/calibrate.py``, 1.32), adapted
    to qviz's histograms:

    * onnxruntime histograms the signed values over ``[-amax, amax]``; each row's histogram
      is re-binned onto that layout (:func:`entropy.symmetric_counts`) with as many bins ``B`` as it
      has (2048 for an activation, 512 for a weight row; at least 128, at most 4096);
    * the candidates are onnxruntime's windows growing around the zero bin,
      ``[-i w, (i + 1) w)`` for ``i = 64 .. B/2`` (``w = 2 amax / B``; the last one is the
      whole range), scored by :func:`entropy.ort_entropy_kl` (``num_quantized_bins = 128``, the
      outliers folded into both end bins, ``smooth_distribution``, scipy's KL);
    * the first window with the smallest KL gives ``(lo, hi)``, which is then intersected
      with the data's [min, max] exactly as onnxruntime does: a ReLU output gets
      ``(0, t)``, and data reaching further on one side keeps that side's exact extreme (a
      normalised image with half its pixels at the background value -0.81 keeps
      ``[-0.81, 2.02]``).

    This equals onnxruntime's ``EntropyCalibrater`` with ``extra_options={"num_bins":
    2048}`` (the thresholds are the same up to how the counts of qviz's bins fall onto
    onnxruntime's). With onnxruntime's own default ``num_bins=128`` there is a single
    window, the whole range, so its default entropy calibration returns min/max. As in
    onnxruntime the range does not depend on the format: every format gets it, and
    ``compute_qparams`` then symmetrises it for symmetric formats and keeps it for
    asymmetric ones (onnxruntime's ``compute_scale_zp``), FP8 and NF4 included; on
    one-sided data half the windows' bins are empty, as in onnxruntime's histogram. The
    TensorRT criterion (:func:`kl_curve.kl_divergence_curve`) is still what the error curve draws.

    MSE: the clip that minimises the expected squared error (rounding plus clipping) of the
    real quantizer (``fake_quantize``) over the histogram's values, represented by sub-bin
    sample points: see :func:`mse.search_mse_ranges`.

    MINMAX gives ``(vmin, vmax)``; MANUAL broadcasts ``spec.manual_range``; IMPORTED gives
    the imported parameters' ranges (one per scale; R must match, or be 1 for per-tensor).
    """
    lo_d = np.asarray(vmin, dtype=np.float64).reshape(-1)
    hi_d = np.asarray(vmax, dtype=np.float64).reshape(-1)
    method = spec.method
    if method is Method.MINMAX:
        return lo_d.copy(), hi_d.copy()
    if method is Method.IMPORTED:
        lo_i, hi_i = (a.reshape(-1) for a in _imported_ranges(spec, fmt))
        if lo_i.size not in (1, lo_d.size):
            raise QvizError(
                f"the imported parameters hold {lo_i.size} scales, not {lo_d.size}"
            )
        return np.broadcast_to(lo_i, lo_d.shape).copy(), np.broadcast_to(hi_i, lo_d.shape).copy()
    if method is Method.MANUAL:
        m_lo, m_hi = _manual_range(spec)
        return np.full(lo_d.shape, m_lo), np.full(lo_d.shape, m_hi)
    if rows is None:
        raise ValueError(f"the {method.value} method needs histograms")
    amax = np.maximum(np.abs(lo_d), np.abs(hi_d))
    if method is Method.PERCENTILE:
        lo, hi = percentile_ranges(rows, lo_d, hi_d, amax, spec.quantile, fmt)
    elif method is Method.ENTROPY:
        lo, hi = entropy_ranges(rows, amax)
    elif method is Method.MSE:
        lo, hi = mse_ranges(rows, lo_d, hi_d, fmt)
    else:  # pragma: no cover - the Enum is exhaustive
        raise AssertionError(method)
    return _clamp(lo, hi, lo_d, hi_d)


def _clamp(
    lo: np.ndarray, hi: np.ndarray, lo_d: np.ndarray, hi_d: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    lo = np.clip(lo, lo_d, hi_d)
    hi = np.clip(hi, lo_d, hi_d)
    return lo, np.maximum(hi, lo)


def _imported_ranges(spec: MethodSpec, fmt: NumberFormat) -> tuple[np.ndarray, np.ndarray]:
    if spec.imported is None:
        raise QvizError("imported method chosen but the model holds no parameters for it")
    return spec.imported.effective_range(fmt)


def _manual_range(spec: MethodSpec) -> tuple[float, float]:
    if spec.manual_range is None:
        raise QvizError("manual method chosen but no range was given")
    lo, hi = spec.manual_range
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise QvizError(f"manual range must be finite, not [{lo}, {hi}]")
    if not lo < hi:
        raise QvizError(f"manual range needs low < high, not [{lo:g}, {hi:g}]")
    return lo, hi
