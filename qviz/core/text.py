"""Numbers as people read them: one set of formatters for the app, the CLI and the reports.

Two registers: *display* text (the app, HTML/Markdown reports) uses a true minus sign and
spells infinities as ∞; *plain* text (the CLI's tables) keeps to ASCII so that it pipes and
greps. Each formatter says which it is.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

KIB = 1024.0


def _minus(text: str) -> str:
    return text.replace("-", "−")


def fmt_num(x: float | np.floating, digits: int = 4) -> str:
    """Display: ``digits`` significant digits, no '-0', '—' for NaN, '∞' for infinity."""
    x = float(x)
    if math.isnan(x):
        return "—"
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    if x == 0:
        return "0"
    return _minus(f"{x:.{digits}g}")


def fmt_db(x: float) -> str:
    """Display: an SQNR in dB; an exact tensor says so."""
    if math.isinf(x) and x > 0:
        return "∞ dB (lossless)"
    return f"{fmt_num(x, 4)} dB"


def fmt_pct(fraction: float) -> str:
    """Display: a fraction as a percentage; tiny non-zero fractions stay visibly non-zero."""
    pct = 100.0 * float(fraction)
    if pct == 0:
        return "0 %"
    if pct < 0.001:
        return "< 0.001 %"
    return f"{pct:.3g} %"


def fmt_range(lo: float, hi: float) -> str:
    """Display: a clip range, "[−1.5, 2.25]"."""
    return f"[{fmt_num(lo)}, {fmt_num(hi)}]"


def fmt_zero_point(zp: float | np.generic) -> str:
    """Display: a zero point; FP8 zero points are stored as float8, shown as plain numbers."""
    value = float(zp)
    return str(int(value)) if value == int(value) else fmt_num(value)


def summarize(values: np.ndarray, fmt: Callable[[float], str] = fmt_num) -> str:
    """Display: per-channel values in one cell, 'min / median / max' (a constant as itself)."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    if flat.size == 0:
        return "—"
    if flat.size == 1 or np.all(flat == flat[0]):
        return fmt(float(flat[0]))
    return f"{fmt(float(flat.min()))} / {fmt(float(np.median(flat)))} / {fmt(float(flat.max()))}"


def fmt_bytes(n: float) -> str:
    """Both registers: a size as people read it, "220.0 KiB", "1.66 MiB"."""
    if n >= KIB * KIB * KIB:
        return f"{n / (KIB * KIB * KIB):.3g} GiB"
    if n >= KIB * KIB:
        return f"{n / (KIB * KIB):.3g} MiB"
    if n >= KIB:
        return f"{n / KIB:.4g} KiB"
    return f"{n:.0f} B"


def fmt_count(n: float) -> str:
    """Display: an element count, "9.25 k", "1.2 M"; '—' for none."""
    if n <= 0:
        return "—"
    if n >= 1e9:
        return f"{n / 1e9:.3g} G"
    if n >= 1e6:
        return f"{n / 1e6:.3g} M"
    if n >= 1e4:
        return f"{n / 1e3:.3g} k"
    return f"{n:.0f}"


def fmt_shape(shape: tuple[int | None, ...] | None) -> str:
    """Display: a shape with dynamic axes as '?', "?×3×224×224"."""
    if shape is None:
        return "—"
    return "×".join("?" if d is None else str(d) for d in shape)


def fmt_fixed(value: float | None, digits: int = 2, signed: bool = False) -> str:
    """Plain: a number with ``digits`` decimals ("+0.25" when ``signed``), 'inf', 'nan',
    and '' for a missing value (the CLI's tables)."""
    if value is None:
        return ""
    if not math.isfinite(value):
        return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def fmt_signed(value: float | None, digits: int = 2) -> str:
    """Display: a signed change, "+0.25", "−1.40"; '—' when unknown."""
    if value is None or math.isnan(value):
        return "—"
    return _minus(f"{value:+.{digits}f}")


def fmt_decimals(value: float, digits: int) -> str:
    """Display: ``digits`` decimals; a rounding residue never reads "−0.00"."""
    if math.isnan(value):
        return "not measured"
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    if abs(value) < 0.5 * 10.0**-digits:
        value = 0.0
    return _minus(f"{value:.{digits}f}")
