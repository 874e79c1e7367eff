"""The report's speed section: each layer's time in the float and the quantized model (ONNX
Runtime's profiler, interleaved runs), the whole model timed without the profiler, and the
layers that run slower quantized with why and what would fix it — as Markdown and as HTML."""

from __future__ import annotations

import html

from qviz.core.evaluation.results import Evaluation
from qviz.core.runtime.speed_text import SPEED_HEADER, fmt_ms, fmt_speedup, speed_rows, threads_text

__all__ = ["speed_html", "speed_markdown"]


def _intro(ev: Evaluation) -> list[str]:
    speed = ev.speed
    assert speed is not None
    lines = [
        f"Batch {speed.batch_size}, {threads_text(speed.threads)}: median milliseconds per run "
        f"over {speed.runs} profiled runs of each model, interleaved."
    ]
    t = speed.timing
    if t is not None:
        lines.append(
            f"Whole model without the profiler ({t.runs} runs each): float {fmt_ms(t.a_ms)} ms, "
            f"quantized {fmt_ms(t.b_ms)} ms — {fmt_speedup(t.speedup)}."
        )
    if speed.qdq_ms > 0:
        lines.append(f"Q/DQ nodes left at run time cost {fmt_ms(speed.qdq_ms)} ms per run.")
    return lines


def speed_markdown(ev: Evaluation) -> list[str]:
    """The section as Markdown lines (none without a speed profile)."""
    if ev.speed is None:
        return []
    out = ["## Speed per layer", "", *(f"{x}" for x in _intro(ev)), ""]
    out.append("| " + " | ".join(SPEED_HEADER) + " |")
    out.append("|" + "---|" * len(SPEED_HEADER))
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"
            for row in speed_rows(ev.speed)]
    out.append("")
    if ev.slow_layers:
        out += ["Slower quantized than float:", ""]
        out += [f"- **{s.layer}** ({s.cause.value}): {fmt_ms(s.quantized_ms)} ms against "
                f"{fmt_ms(s.float_ms)} ms float — {s.reason}. Fix: {s.fix}."
                for s in ev.slow_layers]
        out.append("")
    return out


def speed_html(ev: Evaluation) -> list[str]:
    """The section as HTML elements (none without a speed profile)."""
    if ev.speed is None:
        return []
    e = html.escape
    body = ["<h2>Speed per layer</h2>"]
    body += [f"<p>{e(line)}</p>" for line in _intro(ev)]
    body.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in SPEED_HEADER) + "</tr>")
    body += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>"
             for row in speed_rows(ev.speed)]
    body.append("</table>")
    if ev.slow_layers:
        body.append("<p>Slower quantized than float:</p><ul>")
        body += [f"<li><b>{e(s.layer)}</b> ({e(s.cause.value)}): {e(fmt_ms(s.quantized_ms))} ms "
                 f"against {e(fmt_ms(s.float_ms))} ms float — {e(s.reason)}. "
                 f"Fix: {e(s.fix)}.</li>" for s in ev.slow_layers]
        body.append("</ul>")
    return body
