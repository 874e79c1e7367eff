"""How speed figures read: milliseconds, speed-ups, and the per-layer table as rows of text.

One place for the CLI's tables, the report and the app's tooltips, so a speed-up reads the
same everywhere: ``1.29× faster``, ``0.29× (3.4× slower)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from qviz.core.runtime.slowdown import SlowLayer
from qviz.core.runtime.speed import SpeedProfile

__all__ = ["SPEED_HEADER", "fmt_ms", "fmt_speedup", "speed_lines", "speed_rows", "threads_text"]

SPEED_HEADER = (
    "layer", "float kernel", "float ms", "quantized kernel", "kernel ms", "Q/DQ ms",
    "layout ms", "quantized ms", "speed-up",
)  # fmt: skip


def fmt_ms(ms: float | None) -> str:
    """Milliseconds at the profiler's resolution (1 µs) or three significant digits, whichever
    is coarser: "0.006", "0.057", "1.52", "12.3", "1520"."""
    if ms is None or not math.isfinite(ms):
        return ""
    a = abs(ms)
    digits = 0 if a >= 100 else 1 if a >= 10 else 2 if a >= 1 else 3
    return f"{ms:.{digits}f}"


def fmt_speedup(ratio: float | None) -> str:
    """``1.29× faster``; ``0.29× (3.4× slower)``; ``1.00× (same)``."""
    if ratio is None or not math.isfinite(ratio) or ratio <= 0:
        return ""
    if round(ratio, 2) == 1.0:
        return "1.00× (same)"
    if ratio > 1:
        return f"{ratio:.2f}× faster"
    return f"{ratio:.2f}× ({1 / ratio:.2g}× slower)"


def threads_text(threads: int) -> str:
    return "ORT's thread count" if threads == 0 else f"{threads} thread{'s' * (threads != 1)}"


def speed_rows(speed: SpeedProfile) -> list[tuple[str, ...]]:
    """One row per layer (`SPEED_HEADER`'s columns), then the ops outside any layer."""
    rows: list[tuple[str, ...]] = []
    for x in speed.layers:
        rows.append(
            (
                x.name,
                x.float_kernel,
                fmt_ms(x.float_ms),
                x.kernel if x.quantized else f"{x.kernel} (float)",
                fmt_ms(x.kernel_ms),
                fmt_ms(x.qdq_ms) if x.qdq_ms else "",
                fmt_ms(x.layout_ms) if x.layout_ms else "",
                fmt_ms(x.quantized_ms),
                f"{x.speedup:.2f}×" if math.isfinite(x.speedup) else "",
            )
        )
    rows.append(
        ("other ops", "", fmt_ms(speed.other_float_ms), "", "", "", "",
         fmt_ms(speed.other_quantized_ms), "")
    )  # fmt: skip
    return rows


def speed_lines(speed: SpeedProfile, slow: Sequence[SlowLayer] = ()) -> list[str]:
    """The per-layer table, the whole-model timing and the slower layers with their fixes,
    as lines of text."""
    lines = [
        f"speed per layer (batch {speed.batch_size}, {threads_text(speed.threads)}; median "
        f"ms per run over {speed.runs} profiled runs of each, interleaved):"
    ]
    rows = [SPEED_HEADER, *speed_rows(speed)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(SPEED_HEADER))]
    right = {2, 4, 5, 6, 7, 8}
    for r in rows:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in
                 enumerate(zip(r, widths, strict=True))]
        lines.append("  " + "  ".join(cells).rstrip())
    t = speed.timing
    if t is not None:
        lines.append(
            f"whole model, no profiler ({t.runs} runs each, interleaved): float {fmt_ms(t.a_ms)} "
            f"ms, quantized {fmt_ms(t.b_ms)} ms: {fmt_speedup(t.speedup)} (paired runs' "
            f"middle half {t.ratio_low:.2f}–{t.ratio_high:.2f}×)"
        )
    if speed.qdq_ms > 0:
        lines.append(f"Q/DQ left at run time: {fmt_ms(speed.qdq_ms)} ms per run")
    if slow:
        lines.append("slower quantized than float:")
        lines += [f"  {s.text}" for s in slow]
    return lines
