"""A short report of the chosen configuration and its measured effect.

`build_report` gathers, as plain data, what a reviewer needs to sign a configuration off: per
tensor the format, granularity, method, range, scale and SQNR; when an `Evaluation` is at
hand, accuracy/agreement of the float and quantized models, the delta, PASS/FAIL against
the acceptance criteria (`qviz.core.evaluation.criteria`), size and latency; and two plots
(per-tensor SQNR bars, error along depth) as SVG text. `Report.to_json`, `to_markdown` and
`to_html` render it; `write_report` writes the page, its SVG images and the JSON, each file
atomically.
"""

from __future__ import annotations

import contextlib
import html
import json
import math
import os
import secrets
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

import qviz
from qviz.core.calibration.analysis import TensorResult, quant_tensors
from qviz.core.calibration.config import QuantConfig, method_label
from qviz.core.errors import QvizError
from qviz.core.evaluation.criteria import Criterion, Verdict, check_all
from qviz.core.evaluation.evaluate import Evaluation, Metric
from qviz.core.files import svg as svg
from qviz.core.files.atomic import write_text_atomic
from qviz.core.files.outputs import (
    check_output,
    remove_stale_temporaries,
    temporary_prefix,
    write_error,
)
from qviz.core.jsonnum import json_number as _num
from qviz.core.model.loading import LoadedModel, TensorKind

# Reference line on the SQNR chart: below 20 dB the quantization noise carries a tenth of the
# signal's power, which visibly hurts most models (the same reading aid as the layer table).
SQNR_REFERENCE_DB = 20.0
WEIGHT_COLOR = svg.PALETTE[0]
ACTIVATION_COLOR = svg.PALETTE[1]


class Outcome(Enum):
    """The report's overall verdict over its acceptance criteria."""

    PASS = "PASS"
    FAIL = "FAIL"


class PageFormat(Enum):
    """What `write_report` writes, chosen from the output path's suffix."""

    HTML = "html"  # page.html + page.<plot>.svg + page.json
    MARKDOWN = "md"  # page.md + page.<plot>.svg + page.json
    JSON = "json"  # page.json only
    FOLDER = "folder"  # report.html, report.md, report.json and the SVGs inside a folder

    @classmethod
    def for_path(cls, path: Path) -> PageFormat:
        suffix = path.suffix.lower()
        if suffix in (".html", ".htm"):
            return cls.HTML
        if suffix in (".md", ".markdown"):
            return cls.MARKDOWN
        if suffix == ".json":
            return cls.JSON
        if suffix == "" or path.is_dir():
            return cls.FOLDER
        raise QvizError(
            f"a report is written as .html, .md, .json or a folder, not '{path.suffix}'"
        )


@dataclass(frozen=True)
class TensorRow:
    """One quantized tensor as the report lists it."""

    name: str
    layer: str
    kind: TensorKind
    op_type: str
    depth: int
    format: str
    granularity: str
    method: str
    lo: float  # clip range (min/max over channels for per-channel tensors)
    hi: float
    scale_min: float
    scale_max: float
    n_scales: int
    zero_point: str  # "0", or "0..3 (16)" across channels
    sqnr_db: float
    clipped_fraction: float


@dataclass(frozen=True)
class Plot:
    """An SVG chart and the file name it gets beside the page (after the page's stem)."""

    key: str  # "sqnr", "depth"
    title: str
    caption: str
    svg: str


@dataclass(frozen=True)
class Report:
    title: str
    model_source: str
    model_sha256: str
    qviz_version: str
    defaults: Mapping[str, str]  # "weights"/"activations" -> config label
    n_overrides: int
    tensors: tuple[TensorRow, ...]
    evaluation: Evaluation | None
    verdicts: tuple[Verdict, ...]  # one per acceptance criterion (needs an evaluation)
    plots: tuple[Plot, ...]
    notes: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()  # quantizable tensors the configuration keeps float

    @property
    def outcome(self) -> Outcome | None:
        """PASS when every criterion passes, FAIL when one fails (a criterion that cannot be
        measured fails, as in `qviz evaluate`), None without criteria."""
        if not self.verdicts:
            return None
        return Outcome.PASS if all(v.passed for v in self.verdicts) else Outcome.FAIL

    # -- JSON --------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (non-finite numbers spelled "inf"/"-inf"/"nan")."""
        outcome = self.outcome
        return {
            "schema_version": 1,
            "file": "qviz-report",
            "qviz_version": self.qviz_version,
            "title": self.title,
            "model": {"source": self.model_source, "sha256": self.model_sha256},
            "defaults": dict(self.defaults),
            "overrides": self.n_overrides,
            "tensors": [
                {
                    "name": t.name,
                    "layer": t.layer,
                    "kind": t.kind.value,
                    "op_type": t.op_type,
                    "format": t.format,
                    "granularity": t.granularity,
                    "method": t.method,
                    "range": [_num(t.lo), _num(t.hi)],
                    "scale": [_num(t.scale_min), _num(t.scale_max)],
                    "n_scales": t.n_scales,
                    "zero_point": t.zero_point,
                    "sqnr_db": _num(t.sqnr_db),
                    "clipped_fraction": _num(t.clipped_fraction),
                }
                for t in self.tensors
            ],
            "kept_float": list(self.skipped),
            "criteria": [
                {
                    "criterion": v.criterion.spec,
                    "passed": v.passed,
                    "value": _num(v.value),
                    "text": v.text,
                }
                for v in self.verdicts
            ],
            "verdict": None if outcome is None else outcome.value,
            "evaluation": None if self.evaluation is None else self.evaluation.to_json(),
            "notes": list(self.notes),
        }

    def to_json_text(self) -> str:
        return json.dumps(self.to_json(), indent=1, allow_nan=False) + "\n"

    # -- Markdown ----------------------------------------------------------------------
    def to_markdown(self, image_names: Mapping[str, str] | None = None) -> str:
        """GitHub-flavoured Markdown; `image_names` maps plot keys to the SVG files' names
        relative to the page (plots without a name are left out)."""
        images = image_names or {}
        out = [f"# {self.title}", ""]
        out += [f"- Model: `{self.model_source}` (sha256 `{self.model_sha256[:16]}…`)"]
        out += [f"- {kind.capitalize()}: {label}" for kind, label in self.defaults.items()]
        out += [f"- Per-tensor overrides: {self.n_overrides}", f"- qviz {self.qviz_version}", ""]
        out += self._markdown_effect()
        for plot in self.plots:
            if plot.key in images:
                out += [f"## {plot.title}", "", f"![{plot.title}]({images[plot.key]})", "",
                        plot.caption, ""]
        out += ["## Configuration", ""]
        header = ["tensor", "layer", "kind", "format", "granularity", "method", "range",
                  "scale", "zero point", "SQNR dB", "clipped %"]
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "---|" * len(header))
        for t in self.tensors:
            row = [f"`{t.name}`", t.layer, t.kind.value, t.format, t.granularity, t.method,
                   f"[{_fmt(t.lo)}, {_fmt(t.hi)}]", _scale_text(t), t.zero_point,
                   _fmt(t.sqnr_db, 2), _fmt(100 * t.clipped_fraction, 3)]
            out.append("| " + " | ".join(_md_cell(c) for c in row) + " |")
        out.append("")
        if self.skipped:
            out += ["Kept in float: " + ", ".join(f"`{s}`" for s in self.skipped), ""]
        if self.notes:
            out += ["## Notes", ""] + [f"- {n}" for n in self.notes] + [""]
        return "\n".join(out)

    def _markdown_effect(self) -> list[str]:
        ev = self.evaluation
        if ev is None:
            return ["## Measured effect", "",
                    "Not measured: export the report with evaluation data to see it.", ""]
        outcome = self.outcome
        out = ["## Measured effect", ""]
        if outcome is not None:
            out += [f"**{outcome.value}**", ""]
            out += [f"- {v.text}" for v in self.verdicts] + [""]
        out += [f"{ev.n_samples} samples of {ev.data_description}; quantized model run as "
                f"{_mode_text(ev)}.", ""]
        out += ["| metric | float | quantized | delta |", "|---|---|---|---|"]
        out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in _metric_rows(ev)]
        out.append("")
        out += [f"- {line}" for line in _size_latency_lines(ev)] + [""]
        return out

    # -- HTML --------------------------------------------------------------------------
    def to_html(self, image_names: Mapping[str, str] | None = None) -> str:
        """A standalone HTML page; plots are <img> elements pointing at `image_names`."""
        images = image_names or {}
        e = html.escape
        body: list[str] = [f"<h1>{e(self.title)}</h1>", "<ul>"]
        body.append(f"<li>Model: <code>{e(self.model_source)}</code> "
                    f"(sha256 <code>{e(self.model_sha256[:16])}…</code>)</li>")
        body += [f"<li>{e(kind.capitalize())}: {e(label)}</li>"
                 for kind, label in self.defaults.items()]
        body.append(f"<li>Per-tensor overrides: {self.n_overrides}</li>")
        body.append(f"<li>qviz {e(self.qviz_version)}</li></ul>")
        body.append("<h2>Measured effect</h2>")
        ev = self.evaluation
        if ev is None:
            body.append("<p>Not measured: export the report with evaluation data to see it.</p>")
        else:
            outcome = self.outcome
            if outcome is not None:
                cls = "pass" if outcome is Outcome.PASS else "fail"
                body.append(f"<p class='verdict {cls}'>{outcome.value}</p><ul>")
                for v in self.verdicts:
                    body.append(f"<li class='{'pass' if v.passed else 'fail'}'>{e(v.text)}</li>")
                body.append("</ul>")
            body.append(f"<p>{ev.n_samples} samples of {e(ev.data_description)}; quantized "
                        f"model run as {e(_mode_text(ev))}.</p>")
            body.append("<table><tr><th>metric</th><th>float</th><th>quantized</th>"
                        "<th>delta</th></tr>")
            for row in _metric_rows(ev):
                body.append("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>")
            body.append("</table><ul>")
            body += [f"<li>{e(line)}</li>" for line in _size_latency_lines(ev)]
            body.append("</ul>")
        for plot in self.plots:
            if plot.key in images:
                body.append(f"<h2>{e(plot.title)}</h2>")
                body.append(f"<figure><img src='{e(images[plot.key], quote=True)}' "
                            f"alt='{e(plot.title, quote=True)}'>"
                            f"<figcaption>{e(plot.caption)}</figcaption></figure>")
        body.append("<h2>Configuration</h2><table><tr>")
        header = ["tensor", "layer", "kind", "format", "granularity", "method", "range",
                  "scale", "zero point", "SQNR dB", "clipped %"]
        body.append("".join(f"<th>{h}</th>" for h in header) + "</tr>")
        for t in self.tensors:
            cells = [t.name, t.layer, t.kind.value, t.format, t.granularity, t.method,
                     f"[{_fmt(t.lo)}, {_fmt(t.hi)}]", _scale_text(t), t.zero_point,
                     _fmt(t.sqnr_db, 2), _fmt(100 * t.clipped_fraction, 3)]
            body.append("<tr>" + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>")
        body.append("</table>")
        if self.skipped:
            body.append("<p>Kept in float: " + ", ".join(
                f"<code>{e(s)}</code>" for s in self.skipped) + "</p>")
        if self.notes:
            body.append("<h2>Notes</h2><ul>" + "".join(
                f"<li>{e(n)}</li>" for n in self.notes) + "</ul>")
        return (
            "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>{e(self.title)}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n"
        )


_CSS = (
    "body{font-family:Helvetica,Arial,sans-serif;max-width:1000px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;"
    "text-align:left}th{background:#f3f3f3}code{font-size:12px}.verdict{font-size:22px;"
    "font-weight:bold}.pass{color:#1b7f3b}.fail{color:#b00020}"
    "img{max-width:100%}"
)


# --------------------------------------------------------------------------- building



def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "—"
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    return f"{value:.{digits}g}" if digits > 3 else f"{value:.{digits}f}"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def _scale_text(t: TensorRow) -> str:
    if t.n_scales == 1:
        return _fmt(t.scale_min)
    return f"{_fmt(t.scale_min)}..{_fmt(t.scale_max)} ({t.n_scales})"


def _zp_text(zp: np.ndarray) -> str:
    a = np.asarray(zp).astype(np.float64).reshape(-1)
    if a.size == 1 or a.min() == a.max():
        return f"{a[0]:g}"
    return f"{a.min():g}..{a.max():g} ({a.size})"


def _mode_text(ev: Evaluation) -> str:
    if ev.mode.value == "native":
        return "ONNX Runtime's native INT8 kernels"
    return "simulation (Q/DQ evaluated op by op)"


def _metric_rows(ev: Evaluation) -> list[tuple[str, str, str, str]]:
    rows = []
    for m in Metric:
        q = ev.quantized_metrics.get(m)
        f = ev.float_metrics.get(m)
        if q is None and f is None:
            continue
        d = ev.delta.get(m)
        digits = 2 if m in (Metric.ACCURACY, Metric.AGREEMENT, Metric.SQNR) else 4
        delta = "" if d is None else (f"{d:+.2f}" if digits == 2 else f"{d:+.4g}")
        rows.append((m.label, _fmt(f, digits) if f is not None else "", _fmt(q, digits), delta))
    return rows


def _size_latency_lines(ev: Evaluation) -> list[str]:
    size = ev.size
    nominal = " (simulated formats at nominal width)" if size.nominal else ""
    lines = [
        f"size: {size.float_bytes / 1024:.1f} KiB float → {size.quantized_bytes / 1024:.1f} KiB "
        f"quantized ({size.ratio:.2f}× smaller){nominal}"
    ]
    if ev.latency is not None:
        lat = ev.latency
        lines.append(
            f"latency (batch {lat.batch_size}, median of {lat.repeats}): "
            f"{lat.float_ms:.3f} ms float → {lat.native_ms:.3f} ms native INT8 "
            f"({lat.speedup:.2f}× speed-up)"
        )
    for mm in ev.mismatch:
        lines.append(
            f"simulation vs native on '{mm.output}': max difference {mm.max_abs_diff:.3g} "
            f"({mm.unit_note}), {100 * mm.fraction_differing:.4f}% of elements differ"
        )
    return lines


def _row(r: TensorResult) -> TensorRow:
    m = r.metrics
    scale = np.asarray(r.qparams.scale, dtype=np.float64).reshape(-1)
    return TensorRow(
        name=r.name,
        layer=r.layer.name,
        kind=r.kind,
        op_type=r.layer.op_type,
        depth=r.layer.depth,
        format=r.config.fmt.label,
        granularity=r.config.granularity.label,
        method=method_label(r.config.spec),
        lo=m.envelope[0],
        hi=m.envelope[1],
        scale_min=float(scale.min()),
        scale_max=float(scale.max()),
        n_scales=int(scale.size),
        zero_point=_zp_text(r.qparams.zero_point),
        sqnr_db=float(m.sqnr_db),
        clipped_fraction=float(m.clipped_fraction),
    )


def sqnr_plot(rows: Sequence[TensorRow]) -> Plot:
    labels = [f"{t.layer} ({'w' if t.kind is TensorKind.WEIGHT else 'a'})" for t in rows]
    colors = [WEIGHT_COLOR if t.kind is TensorKind.WEIGHT else ACTIVATION_COLOR for t in rows]
    chart = svg.bar_chart(
        labels, [t.sqnr_db for t in rows],
        title="SQNR per quantized tensor", y_label="SQNR (dB)",
        threshold=SQNR_REFERENCE_DB, threshold_label=f"{SQNR_REFERENCE_DB:g} dB",
        colors=colors, legend=[("weight", WEIGHT_COLOR), ("activation", ACTIVATION_COLOR)],
    )
    return Plot(
        "sqnr", "SQNR per quantized tensor",
        "Each tensor quantized on its own (higher is better), in graph order. Below the "
        f"dashed {SQNR_REFERENCE_DB:g} dB line the noise carries a tenth of the signal's power. "
        "Hatched bars are exact (infinite SQNR).",
        chart,
    )


def depth_plot(ev: Evaluation, rows: Sequence[TensorRow]) -> Plot | None:
    if not ev.depth:
        return None
    local = {t.name: t.sqnr_db for t in rows if t.kind is TensorKind.ACTIVATION}
    labels = [p.layer for p in ev.depth]
    chart = svg.line_chart(
        labels,
        [
            svg.Series("accumulated: quantized vs float model",
                       tuple(p.sqnr_db for p in ev.depth)),
            svg.Series("local: this tensor quantized alone",
                       tuple(local.get(p.tensor) for p in ev.depth)),
        ],
        title="Error along depth (SQNR at each quantized layer input)", y_label="SQNR (dB)",
    )
    return Plot(
        "depth", "Error along depth",
        "At each quantized activation, in depth order: the SQNR of the value the quantized "
        "model feeds the layer against the float model's (accumulated), and of that tensor "
        "quantized alone (local). Where the accumulated curve drops faster than the local one, "
        "error from earlier layers is being amplified.",
        chart,
    )


def build_report(
    model: LoadedModel,
    results: Sequence[TensorResult],
    evaluation: Evaluation | None = None,
    *,
    config: QuantConfig | None = None,
    criteria: Sequence[Criterion] = (),
    title: str | None = None,
    notes: Sequence[str] = (),
) -> Report:
    """The report of `results` (and of `evaluation`'s measurements, when given)."""
    rows = tuple(sorted((_row(r) for r in results), key=lambda t: t.depth))
    quantized = {(r.name, r.kind) for r in results}
    skipped = [t.name for t in quant_tensors(model) if t.key not in quantized]
    defaults: dict[str, str] = {}
    if config is not None:
        defaults = {"weights": config.weights.label, "activations": config.activations.label}
    plots = [sqnr_plot(rows)] if rows else []
    verdicts: tuple[Verdict, ...] = ()
    all_notes = list(notes)
    if criteria and evaluation is None:
        raise QvizError("acceptance criteria need an evaluation: give evaluation data")
    if evaluation is not None:
        verdicts = check_all(criteria, evaluation)
        depth = depth_plot(evaluation, rows)
        if depth is not None:
            plots.append(depth)
        all_notes += list(evaluation.notes)
    return Report(
        title=title or f"Quantization report: {Path(str(model.source)).name}",
        model_source=str(model.source),
        model_sha256=model.sha256,
        qviz_version=qviz.__version__,
        defaults=defaults,
        n_overrides=0 if config is None else len(config.overrides),
        tensors=rows,
        evaluation=evaluation,
        verdicts=verdicts,
        plots=tuple(plots),
        notes=tuple(dict.fromkeys(all_notes)),
        skipped=tuple(dict.fromkeys(skipped)),
    )


# --------------------------------------------------------------------------- writing


@contextlib.contextmanager
def _new_folder(target: Path) -> Iterator[Path]:
    """A temporary folder beside `target`, renamed onto it when the block succeeds (a new
    folder appears whole or not at all)."""
    target = check_output(target, folder=True)
    remove_stale_temporaries(target)
    tmp = target.parent / f"{temporary_prefix(target)}{secrets.token_hex(4)}.tmp"
    try:
        tmp.mkdir()  # 0o777 & ~umask: the usual mode
    except OSError as exc:
        raise write_error(target, exc, existed=False) from exc
    try:
        yield tmp
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_page_files(report: Report, folder: Path, stem: str, image_prefix: str,
                      kinds: Sequence[PageFormat]) -> list[Path]:
    written = []
    images = {}
    # Images first, page last: a page never points at an image that is not there yet.
    for plot in report.plots:
        name = f"{image_prefix}{plot.key}.svg"
        write_text_atomic(folder / name, plot.svg)
        images[plot.key] = name
        written.append(folder / name)
    write_text_atomic(folder / f"{stem}.json", report.to_json_text())
    written.append(folder / f"{stem}.json")
    for kind in kinds:
        if kind is PageFormat.HTML:
            page = folder / f"{stem}.html"
            write_text_atomic(page, report.to_html(images))
        else:
            page = folder / f"{stem}.md"
            write_text_atomic(page, report.to_markdown(images))
        written.append(page)
    return written


#: The plots a report may hold (each written as an SVG file beside the page).
PLOT_KEYS = ("sqnr", "depth")


def report_files(path: str | Path) -> tuple[Path, ...]:
    """Every file `write_report` may write for ``path`` (the folder itself first, for a
    folder): what must be checked before anything is measured or written."""
    target = Path(path)
    kind = PageFormat.for_path(target)
    if kind is PageFormat.JSON:
        return (target,)
    if kind in (PageFormat.HTML, PageFormat.MARKDOWN):
        folder, stem = target.parent, target.stem
        plots = [folder / f"{stem}.{key}.svg" for key in PLOT_KEYS]
        return (target, folder / f"{stem}.json", *plots)
    names = ["report.html", "report.md", "report.json", *(f"{key}.svg" for key in PLOT_KEYS)]
    return (target, *(target / n for n in names))


def write_report(report: Report, path: str | Path) -> tuple[Path, ...]:
    """Write the report; the output's suffix picks the form (see `PageFormat`).

    `x.html` / `x.md`: the page, `x.sqnr.svg`, `x.depth.svg` and `x.json` beside it.
    `x.json`: the JSON only. A path without a suffix: a folder with report.html, report.md,
    report.json and the SVGs; a new folder is built under a temporary name and renamed into
    place, an existing one is updated file by file (each file atomically).
    Returns the paths written.
    """
    target = Path(path)
    kind = PageFormat.for_path(target)
    if kind is PageFormat.JSON:
        write_text_atomic(target, report.to_json_text())
        return (target,)
    if kind in (PageFormat.HTML, PageFormat.MARKDOWN):
        return tuple(_write_page_files(report, target.parent, target.stem, f"{target.stem}.",
                                       [kind]))
    both = [PageFormat.HTML, PageFormat.MARKDOWN]
    if target.exists():
        if not target.is_dir():
            raise QvizError(f"{target} exists and is not a folder")
        return tuple(_write_page_files(report, target, "report", "", both))
    with _new_folder(target) as tmp:
        names = [p.name for p in _write_page_files(report, tmp, "report", "", both)]
    return tuple(target / n for n in names)
