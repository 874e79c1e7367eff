"""The Export dialog's timing: the exported Q/DQ model against float, and the layers whose
integer kernel is slower than float here, left float before writing (unless the box is
unticked or the layer was set explicitly: `qviz.core.runtime.slow_layers`)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from qviz.core.calibration.analysis import TensorResult
from qviz.core.calibration.config import QuantConfig
from qviz.core.data.dataset import Dataset, load_data, random_data
from qviz.core.errors import QvizError
from qviz.core.graph.qdq import QdqModel
from qviz.core.model.loading import LoadedModel
from qviz.core.runtime.sessions import Threads
from qviz.core.runtime.slow_layers import SlowLayers, leave_slow_layers_float
from qviz.core.runtime.speed import SpeedProfile, layer_speed
from qviz.core.runtime.speed_check import CHECK_BUDGET, SpeedCheck, check_speed, timing_feeds

__all__ = ["TimingRequest", "check_exported_speed", "float_slow_layers"]


class TimingRequest(Protocol):
    """What the timing reads of the dialog's ExportRequest."""

    @property
    def model(self) -> LoadedModel: ...
    @property
    def config(self) -> QuantConfig: ...
    @property
    def speed_batch(self) -> int | None: ...
    @property
    def threads(self) -> int: ...
    @property
    def data_path(self) -> Path | None: ...
    @property
    def slow_layers(self) -> SlowLayers: ...


def _timing_data(req: TimingRequest) -> Dataset:
    assert req.speed_batch is not None
    return (
        random_data(req.model.inputs, req.speed_batch) if req.data_path is None
        else load_data(req.data_path, req.model.inputs)
    )  # fmt: skip


def check_exported_speed(
    req: TimingRequest, model: LoadedModel, results: list[TensorResult], qdq: QdqModel
) -> tuple[SpeedCheck | None, str]:
    """The exported model timed against `model` (the float model it was built from: the
    transformed one when transforms apply)."""
    assert req.speed_batch is not None
    try:
        data = _timing_data(req)
        feeds = timing_feeds(data, req.speed_batch)
        check = check_speed(model, results, feeds, qdq=qdq,
                            threads=Threads(intra_op=req.threads), random_input=data.is_random)
    except QvizError as exc:
        return None, str(exc)
    return check, ""


def float_slow_layers(
    req: TimingRequest, model: LoadedModel, results: list[TensorResult]
) -> tuple[list[TensorResult], tuple[str, ...]]:
    """The configuration without the layers whose integer kernel is slower than float here
    (`qviz.core.runtime.slow_layers`), and one line per layer left float."""
    if req.speed_batch is None or req.slow_layers is SlowLayers.QUANTIZE:
        return results, ()
    try:
        feeds = timing_feeds(_timing_data(req), req.speed_batch)
    except QvizError:
        return results, ()  # the speed check says why it could not time the model

    def measure(q: QdqModel) -> SpeedProfile:
        return layer_speed(model, q, feeds, threads=Threads(intra_op=req.threads),
                           budget=CHECK_BUDGET)

    kept, floated = leave_slow_layers_float(model, results, req.config, measure)
    return kept, tuple(f.line("the Export dialog's slow-layers box unticked") for f in floated)
