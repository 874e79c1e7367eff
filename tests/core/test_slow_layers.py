"""An export leaves a layer float when its integer kernel is slower than float here, decided
from one measured profile (beyond the noise margin), except a layer set explicitly. What is
slow is qviz's own measurement on this machine, never assumed."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from qviz.core.calibration.analysis import analyze
from qviz.core.calibration.config import QuantConfig
from qviz.core.data.dataset import load_data
from qviz.core.demo import DEMO_DIR
from qviz.core.graph.qdq import QdqModel, build_qdq
from qviz.core.model.loading import LoadedModel, load_model
from qviz.core.runtime.fusion import fusion_report
from qviz.core.runtime.profile import TimingBudget
from qviz.core.runtime.slow_layers import leave_slow_layers_float
from qviz.core.runtime.slowdown import NOISE, SlowCause, explain_slow_layers
from qviz.core.runtime.speed import SpeedProfile, layer_speed
from qviz.core.stats.collect import collect_stats, run_to_completion

pytestmark = pytest.mark.skipif(
    not (DEMO_DIR / "model.onnx").is_file(), reason="the built-in demo is not there"
)


def once(model: LoadedModel, feeds: dict) -> Callable[[QdqModel], SpeedProfile]:
    """One real profile, reused: every decision below reads the same measurement."""
    seen: list[SpeedProfile] = []

    def measure(qdq: QdqModel) -> SpeedProfile:
        if not seen:
            seen.append(layer_speed(model, qdq, feeds, budget=TimingBudget(0.3, 3, 30),
                                    whole_model=False))
        return seen[0]

    return measure


def test_slow_kernels_are_left_float_unless_set_explicitly() -> None:
    model = load_model(DEMO_DIR / "model.onnx")
    data = load_data(DEMO_DIR / "data.npz", model.inputs)
    stats = run_to_completion(collect_stats(model, data, batch_size=256))
    config = QuantConfig()
    results = analyze(model, stats, config)
    qdq = build_qdq(model, results)
    fusion = fusion_report(qdq)
    measure = once(model, next(iter(data.batches(1))))
    kept, floated = leave_slow_layers_float(model, results, config, measure, qdq=qdq,
                                            fusion=fusion)
    speed = measure(qdq)
    slow_kernels = {
        s.layer for s in explain_slow_layers(speed, fusion, model.layers)
        if s.cause is SlowCause.SLOW_KERNEL
    }
    names = {f.layer for f in floated}
    assert names <= slow_kernels
    for f in floated:
        x = speed.layer(f.layer)
        assert x is not None and x.kernel_ms > x.float_ms * (1 + NOISE)
        assert f.layer in f.text and "--slow-layers quantize" in f.text
        assert f.float_bytes > 0
    assert {r.layer.name for r in kept} == {r.layer.name for r in results} - names
    # The same profile gives the same decision.
    again = leave_slow_layers_float(model, results, config, measure, qdq=qdq, fusion=fusion)
    assert again[1] == floated
    # A layer whose precision the configuration sets explicitly stays quantized.
    if floated:
        first = floated[0].layer
        own = [r for r in results if r.layer.name == first]
        explicit = config
        for r in own:
            explicit = explicit.with_override(r.name, config.default_for(r.kind))
        _, floated2 = leave_slow_layers_float(model, results, explicit, measure, qdq=qdq,
                                              fusion=fusion)
        assert {f.layer for f in floated2} == names - {first}
