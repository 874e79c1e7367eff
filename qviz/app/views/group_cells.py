"""What a group row of the layer table says: its name and count, its worst and weighted SQNR,
its largest clipped fraction and its weights' size; settings every tensor in it shares.

The numbers are the core's (`qviz.core.document.grouping.GroupSummary`); this only words them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from qviz.app.views import plot_style as st
from qviz.app.views.table_cells import Column
from qviz.core.calibration.analysis import TensorKey
from qviz.core.document.grouping import Group, GroupSummary
from qviz.core.model.loading import TensorKind
from qviz.core.text import fmt_count

# Columns a group row fills with a label its tensors share: its weights' and its activations'
# settings ("int8 / uint8", "mixed" where they differ), its kind and op where all agree.
SHARED_COLUMNS = (Column.KIND, Column.OP, Column.METHOD, Column.GRANULARITY, Column.FORMAT)


def kind_letter(key: TensorKey) -> str:
    return "W" if key.kind is TensorKind.WEIGHT else "A"


def group_text(group: Group, summary: GroupSummary, col: Column) -> str:
    """The cell of a group row in `col` (shared-setting columns excepted)."""
    if col is Column.LAYER:
        return f"{group.label} ({summary.n_tensors})"
    if col is Column.SQNR:
        return "" if summary.worst is None else st.fmt_num(summary.worst[1])
    if col is Column.WEIGHTED:
        w = summary.weighted_sqnr_db
        return "" if math.isnan(w) else ("float" if math.isinf(w) else st.fmt_num(w))
    if col is Column.CLIPPED:
        return "" if math.isnan(summary.max_clipped) else st.fmt_pct(summary.max_clipped)
    if col is Column.PARAMS:
        return fmt_count(summary.params) if summary.params else ""
    return ""


def group_sort_value(group: Group, summary: GroupSummary, col: Column, first_depth: int) -> Any:
    """What a group sorts by among its siblings: numbers for number columns (unknown last),
    graph order for the name."""
    if col is Column.LAYER:
        return first_depth
    if col is Column.SQNR:
        return math.inf if summary.worst is None else _finite_or_inf(summary.worst[1])
    if col is Column.WEIGHTED:
        return _finite_or_inf(summary.weighted_sqnr_db)
    if col is Column.CLIPPED:
        return -1.0 if math.isnan(summary.max_clipped) else summary.max_clipped
    if col is Column.PARAMS:
        return summary.params
    return None  # the caller uses the shown text


def _finite_or_inf(value: float) -> float:
    return math.inf if math.isnan(value) else value


def group_tooltip(
    group: Group, summary: GroupSummary, layer_of: Callable[[TensorKey], str]
) -> str:
    """The group's full path, what it holds and its numbers. `layer_of(key)` names the layer
    a tensor belongs to (its full name)."""
    lines = [group.path]
    counts = f"{summary.n_tensors} tensors: {summary.n_weights} weights, " \
             f"{summary.n_activations} activations"
    if summary.n_measured < summary.n_tensors:
        counts += f"; {summary.n_measured} measured"
    lines.append(counts)
    if summary.worst is not None:
        key, sqnr = summary.worst
        lines.append(f"worst: {layer_of(key)} {kind_letter(key)} ({st.fmt_db(sqnr)})")
    if not math.isnan(summary.weighted_sqnr_db):
        lines.append(f"weighted SQNR {st.fmt_db(summary.weighted_sqnr_db)} (power mean, "
                     f"element counts as weights)")
    if summary.params:
        lines.append(f"{fmt_count(summary.params)} weight parameters")
    return "\n".join(lines)
