"""Defaults that hold on the machine: MSE activations, and weights the CPU's int8 kernels run
exactly, so the default configuration's native accuracy matches its simulation."""

from __future__ import annotations

import pytest

from qviz.core.calibration.analysis import analyze
from qviz.core.calibration.config import QuantConfig, TensorConfig
from qviz.core.calibration.methods import Method
from qviz.core.data.dataset import load_data
from qviz.core.demo import demo_paths
from qviz.core.document.document import Document
from qviz.core.evaluation.evaluate import Metric, evaluate, run_to_completion
from qviz.core.model.loading import load_model
from qviz.core.quant.formats import NumberFormat
from qviz.core.runtime.cpu import detect_u8s8_saturation
from qviz.core.runtime.defaults import SAFE_WEIGHT_BITS, recommended_defaults
from qviz.core.stats.collect import collect_stats


def test_activations_default_to_mse() -> None:
    assert QuantConfig().activations.spec.method is Method.MSE


def test_defaults_follow_the_detection(u8s8_saturates: bool) -> None:
    defaults = recommended_defaults()
    bits = defaults.config.weights.fmt.bits
    if u8s8_saturates:
        assert bits == SAFE_WEIGHT_BITS and defaults.note and "saturate" in defaults.note
    else:
        assert bits == 8 and defaults.note is None
    assert defaults.config.activations == QuantConfig().activations


def test_a_new_document_starts_from_them_and_a_choice_replaces_them(u8s8_saturates: bool) -> None:
    model = load_model(demo_paths().model)
    doc = Document()
    doc.set_model(model)
    expected = recommended_defaults()
    assert doc.config == expected.config and doc.defaults_note == expected.note
    assert not doc.history.can_undo  # where the session starts, not a step
    weight = next(t.key for t in doc.tensors if t.kind.value == "weight")
    cfg = doc.config_for(weight)
    int4 = TensorConfig(cfg.spec, cfg.granularity, NumberFormat.parse("int4"))
    doc.set_config(doc.config.with_override(weight.name, int4), "int4")
    assert doc.defaults_note is None
    doc.set_model(model)  # the user's settings are kept for the next model
    assert doc.config_for(weight).fmt.bits == 4


@pytest.mark.timeout(300)
def test_the_default_configuration_measures_natively_what_it_simulates(
    u8s8_saturates: bool,
) -> None:
    """On a CPU whose int8 kernels saturate (as the detection says, or as overridden here),
    the defaults avoid 8-bit weights and native accuracy stays within half a point of the
    simulation. Where the detection is overridden to "no saturation" on a CPU that really
    saturates, int8 weights would not hold: that case is not asserted (the kernels are the
    machine's, whatever qviz is told)."""
    if not u8s8_saturates and detect_u8s8_saturation():
        pytest.skip("int8 weights saturate on this CPU's kernels: only the detected case holds")
    demo = demo_paths()
    model = load_model(demo.model)
    data = load_data(demo.data, model.inputs)
    stats = run_to_completion(collect_stats(model, data, batch_size=256))
    config = recommended_defaults().config
    results = analyze(model, stats, config)
    sim = run_to_completion(evaluate(model, results, data, native=False, latency=False))
    native = run_to_completion(evaluate(model, results, data, native=True, latency=False))
    gap = abs(
        native.quantized_metrics[Metric.ACCURACY] - sim.quantized_metrics[Metric.ACCURACY]
    )
    assert gap <= 0.5
