"""Small, dependency-free SVG charts for reports.

Reports are read in a browser or a Markdown viewer on machines that may have neither Qt nor
matplotlib, and `qviz/core` must not import either, so the two plots a report needs (bars per
layer, curves along depth) are drawn here as plain SVG text. The output is deterministic: the
same numbers always give the same bytes, which keeps reports diffable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape

# A colour-blind-safe palette (Okabe-Ito), in the order series are drawn.
PALETTE: tuple[str, ...] = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9")
FONT = "font-family='Helvetica, Arial, sans-serif'"
_TOP = 52  # title, then a one-row legend, then the plot
_LEFT = 70
_RIGHT = 56  # room for the reference line's label



@dataclass(frozen=True)
class Series:
    """One curve of a line chart; None or non-finite values leave a gap."""

    label: str
    values: tuple[float | None, ...]
    color: str | None = None


@dataclass(frozen=True)
class _Frame:
    """Where the plotting area lies inside the picture, and the data range it shows."""

    left: float
    top: float
    width: float
    height: float
    y_min: float
    y_max: float

    def y(self, value: float) -> float:
        span = self.y_max - self.y_min or 1.0
        clamped = min(max(value, self.y_min), self.y_max)
        return self.top + self.height * (1.0 - (clamped - self.y_min) / span)


def _frame(width: int, height: int, labels: Sequence[str], y_min: float, y_max: float) -> _Frame:
    """The plot area, leaving below it just the room the slanted x labels need."""
    longest = min(max((len(t) for t in labels), default=1), 28)
    bottom = 24 + 5.6 * longest * math.sin(math.radians(60))
    return _Frame(_LEFT, _TOP, width - _LEFT - _RIGHT, height - _TOP - bottom, y_min, y_max)


def _finite(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def _tick_step(lo: float, hi: float, n: int) -> float:
    raw = (hi - lo) / max(n, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1.0, 2.0, 5.0, 10.0) if m * power >= raw)


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About `n` round tick values (1, 2 or 5 times a power of ten apart) from the first at or
    below `lo` to the first at or above `hi`."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0]
    if hi <= lo:
        hi = lo + 1.0
    step = _tick_step(lo, hi, n)
    first = math.floor(lo / step + 1e-9)
    last = math.ceil(hi / step - 1e-9)
    return [round(k * step, 12) for k in range(first, last + 1)]


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _num(value: float) -> str:
    """Coordinates with two decimals: enough for the eye, and stable across platforms."""
    return f"{value:.2f}"


def _axis_range(values: Sequence[float], *, include_zero: bool) -> tuple[float, float]:
    if not values:
        return (0.0, 1.0)
    lo, hi = min(values), max(values)
    if include_zero:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi == lo:
        pad = abs(hi) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    ticks = nice_ticks(lo, hi)
    return (ticks[0], ticks[-1])


def _header(width: int, height: int, title: str) -> list[str]:
    label = escape(title, {"'": "&apos;"})
    return [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
        f"viewBox='0 0 {width} {height}' role='img' aria-label='{label}'>",
        f"<rect x='0' y='0' width='{width}' height='{height}' fill='white'/>",
        f"<text x='{width / 2:.1f}' y='20' text-anchor='middle' font-size='15' {FONT}>"
        f"{escape(title)}</text>",
    ]


def _y_axis(frame: _Frame, label: str) -> list[str]:
    parts = []
    for tick in nice_ticks(frame.y_min, frame.y_max):
        if tick < frame.y_min - 1e-12 or tick > frame.y_max + 1e-12:
            continue
        y = frame.y(tick)
        parts.append(
            f"<line x1='{_num(frame.left)}' y1='{_num(y)}' x2='{_num(frame.left + frame.width)}' "
            f"y2='{_num(y)}' stroke='#e4e4e4'/>"
        )
        parts.append(
            f"<text x='{_num(frame.left - 6)}' y='{_num(y + 4)}' text-anchor='end' "
            f"font-size='11' {FONT}>{_fmt(tick)}</text>"
        )
    cx, cy = 16, frame.top + frame.height / 2
    parts.append(
        f"<text x='{cx}' y='{_num(cy)}' text-anchor='middle' font-size='12' {FONT} "
        f"transform='rotate(-90 {cx} {_num(cy)})'>{escape(label)}</text>"
    )
    parts.append(
        f"<line x1='{_num(frame.left)}' y1='{_num(frame.top)}' x2='{_num(frame.left)}' "
        f"y2='{_num(frame.top + frame.height)}' stroke='#444'/>"
    )
    return parts


def _x_labels(frame: _Frame, labels: Sequence[str], centers: Sequence[float]) -> list[str]:
    # Thin the labels out so they never overlap; the full names are in the report's table.
    step = max(1, math.ceil(len(labels) / 40))
    base = frame.top + frame.height + 8
    parts = []
    for i in range(0, len(labels), step):
        text = labels[i] if len(labels[i]) <= 28 else labels[i][:27] + "…"
        x = centers[i]
        parts.append(
            f"<text x='{_num(x)}' y='{_num(base)}' text-anchor='end' font-size='10' {FONT} "
            f"transform='rotate(-60 {_num(x)} {_num(base)})'>{escape(text)}</text>"
        )
    return parts


def bar_chart(
    labels: Sequence[str],
    values: Sequence[float | None],
    *,
    title: str,
    y_label: str,
    threshold: float | None = None,
    threshold_label: str = "",
    colors: Sequence[str] | None = None,
    legend: Sequence[tuple[str, str]] = (),
    width: int = 900,
    height: int = 420,
) -> str:
    """A vertical bar per label. Non-finite values (an exact tensor has SQNR = inf) are drawn
    as full-height hatched bars and marked "∞" so they are not mistaken for zero.
    `legend` is (label, colour) pairs, drawn in the top-left corner."""
    finite = _finite(values)
    if threshold is not None:
        finite.append(threshold)
    y_min, y_max = _axis_range(finite, include_zero=True)
    frame = _frame(width, height, labels, y_min, y_max)
    parts = _header(width, height, title)
    parts.append(
        "<defs><pattern id='hatch' width='6' height='6' patternUnits='userSpaceOnUse'>"
        "<path d='M0,6 L6,0' stroke='#888' stroke-width='1'/></pattern></defs>"
    )
    parts += _y_axis(frame, y_label)
    n = max(len(labels), 1)
    slot = frame.width / n
    bar_w = max(1.0, slot * 0.75)
    centers = [frame.left + slot * (i + 0.5) for i in range(len(labels))]
    zero_y = frame.y(0.0)
    for i, value in enumerate(values):
        x = centers[i] - bar_w / 2
        color = colors[i] if colors is not None else PALETTE[0]
        name = escape(labels[i])
        if value is None or math.isnan(value):
            continue
        if math.isinf(value):
            top = frame.top if value > 0 else frame.top + frame.height
            y0, y1 = sorted((top, zero_y))
            parts.append(
                f"<rect x='{_num(x)}' y='{_num(y0)}' width='{_num(bar_w)}' "
                f"height='{_num(y1 - y0)}' fill='url(#hatch)' stroke='{color}'>"
                f"<title>{name}: {'∞' if value > 0 else '-∞'}</title></rect>"
            )
            continue
        y = frame.y(value)
        y0, y1 = sorted((y, zero_y))
        parts.append(
            f"<rect x='{_num(x)}' y='{_num(y0)}' width='{_num(bar_w)}' "
            f"height='{_num(max(y1 - y0, 0.5))}' fill='{color}'>"
            f"<title>{name}: {_fmt(value)}</title></rect>"
        )
    if threshold is not None:
        y = frame.y(threshold)
        parts.append(
            f"<line x1='{_num(frame.left)}' y1='{_num(y)}' x2='{_num(frame.left + frame.width)}' "
            f"y2='{_num(y)}' stroke='#333' stroke-dasharray='6 4'/>"
        )
        if threshold_label:
            parts.append(
                f"<text x='{_num(frame.left + frame.width + 4)}' y='{_num(y + 4)}' "
                f"font-size='11' fill='#333' {FONT}>"
                f"{escape(threshold_label)}</text>"
            )
    parts.append(
        f"<line x1='{_num(frame.left)}' y1='{_num(zero_y)}' x2='{_num(frame.left + frame.width)}' "
        f"y2='{_num(zero_y)}' stroke='#444'/>"
    )
    parts += _legend(frame, legend)
    parts += _x_labels(frame, labels, centers)
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _legend(frame: _Frame, entries: Sequence[tuple[str, str]]) -> list[str]:
    """A one-row legend in the band between the title and the plot, so it never hides data."""
    parts = []
    x = frame.left
    y = frame.top - 8
    for label, color in entries:
        parts.append(
            f"<rect x='{_num(x)}' y='{_num(y - 9)}' width='14' height='10' fill='{color}'/>"
        )
        parts.append(
            f"<text x='{_num(x + 20)}' y='{_num(y)}' font-size='11' {FONT}>{escape(label)}</text>"
        )
        x += 34 + 6.5 * len(label)
    return parts


def line_chart(
    x_labels: Sequence[str],
    series: Sequence[Series],
    *,
    title: str,
    y_label: str,
    width: int = 900,
    height: int = 420,
) -> str:
    """One polyline per series over the same categorical x axis (e.g. layers in depth order)."""
    finite = [v for s in series for v in _finite(s.values)]
    y_min, y_max = _axis_range(finite, include_zero=True)
    frame = _frame(width, height, x_labels, y_min, y_max)
    parts = _header(width, height, title)
    parts += _y_axis(frame, y_label)
    n = max(len(x_labels), 1)
    slot = frame.width / n
    centers = [frame.left + slot * (i + 0.5) for i in range(len(x_labels))]
    for k, s in enumerate(series):
        color = s.color or PALETTE[k % len(PALETTE)]
        # Split at gaps so a missing point does not draw a misleading straight line across it.
        runs: list[list[tuple[float, float]]] = [[]]
        for i, value in enumerate(s.values[: len(centers)]):
            if value is None or not math.isfinite(value):
                runs.append([])
                continue
            runs[-1].append((centers[i], frame.y(value)))
        for run in runs:
            if len(run) > 1:
                pts = " ".join(f"{_num(x)},{_num(y)}" for x, y in run)
                parts.append(
                    f"<polyline points='{pts}' fill='none' stroke='{color}' stroke-width='2'/>"
                )
            for x, y in run:
                parts.append(f"<circle cx='{_num(x)}' cy='{_num(y)}' r='3' fill='{color}'/>")
    parts.append(
        f"<line x1='{_num(frame.left)}' y1='{_num(frame.top + frame.height)}' "
        f"x2='{_num(frame.left + frame.width)}' y2='{_num(frame.top + frame.height)}' "
        "stroke='#444'/>"
    )
    parts += _legend(
        frame, [(s.label, s.color or PALETTE[k % len(PALETTE)]) for k, s in enumerate(series)]
    )
    parts += _x_labels(frame, x_labels, centers)
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
