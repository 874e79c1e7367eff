"""Is the calibration data representative? Held-out samples of the same data are; a brightened
copy is not, and the tensors it pushes past the calibration ranges are flagged. Convergence
snapshots show the ranges settling as calibration data grows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qviz.core.calibration.config import QuantConfig
from qviz.core.calibration.methods import choose_range
from qviz.core.calibration.metrics import histogram_metrics
from qviz.core.calibration.representative import compare, convergence, sampling_tolerance
from qviz.core.data.dataset import load_data
from qviz.core.data.split import Holdout, Part, split
from qviz.core.demo import demo_paths
from qviz.core.model.loading import LoadedModel, load_model
from qviz.core.stats.collect import CalibrationStats, collect_stats, run_to_completion


@pytest.fixture(scope="module")
def demo() -> tuple[LoadedModel, CalibrationStats, CalibrationStats, CalibrationStats]:
    model = load_model(demo_paths().model)
    data = load_data(demo_paths().data, model.inputs)
    cal_data = split(data, Holdout(), Part.CALIBRATION)
    held_out = split(data, Holdout(), Part.EVALUATION)
    cal = run_to_completion(collect_stats(model, cal_data, batch_size=64, snapshots=True))
    same = run_to_completion(collect_stats(model, held_out, batch_size=64))
    with np.load(demo_paths().data) as z:
        images = z["input"][4::5]
    shifted_data = load_data(demo_paths().data, model.inputs)
    shifted_data = split(shifted_data, Holdout(), Part.EVALUATION)
    # Brighten the held-out images: the same scenes, a shifted distribution.
    brightened = [{"input": b["input"] * 1.6} for b in shifted_data.batches(64)]
    shifted = run_to_completion(_collect_batches(model, brightened))
    assert images.shape[0] == same.n_samples == shifted.n_samples == 400
    return model, cal, same, shifted


def _collect_batches(model: LoadedModel, batches: list[dict[str, np.ndarray]]):  # type: ignore[no-untyped-def]
    import tempfile

    arrays = np.concatenate([b["input"] for b in batches])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bright.npz"
        np.savez(path, input=arrays.astype(np.float32))
        stats = yield from collect_stats(model, load_data(path, model.inputs), batch_size=64)
    return stats


def test_held_out_samples_are_representative_and_a_shifted_set_is_not(demo) -> None:  # type: ignore[no-untyped-def]
    _, cal, same, shifted = demo
    cfg = QuantConfig().activations
    flagged_same = [n for n in cal.tensors
                    if compare(cal.tensors[n], same.tensors[n], cfg, same.n_samples).flagged]
    flagged_shifted = [n for n in cal.tensors
                       if compare(cal.tensors[n], shifted.tensors[n], cfg, 400).flagged]
    assert flagged_same == []
    assert "input" in flagged_shifted  # the brightened pixels themselves
    r = compare(cal.tensors["input"], shifted.tensors["input"], cfg, 400)
    assert r.eval_clipped > r.cal_clipped + r.tolerance and r.unseen > 0.01
    assert r.eval_range is not None
    assert r.eval_range[1] > r.cal_range[1]  # the evaluation data would want a wider range
    assert r.to_json()["representative"] is False


def test_an_analysed_range_gives_the_same_answer_without_a_second_search(demo) -> None:  # type: ignore[no-untyped-def]
    """The document passes its analysis (the range is not chosen again) and asks for the
    evaluation-alone range only for the tensor on view: the numbers are the same."""
    from qviz.core.calibration.analysis import analyze
    from qviz.core.model.loading import TensorKind

    model, cal, _, shifted = demo
    config = QuantConfig()
    results = [r for r in analyze(model, cal, config) if r.kind is TensorKind.ACTIVATION]
    assert results
    for r in results:
        full = compare(cal.tensors[r.name], shifted.tensors[r.name], r.config, 400)
        quick = compare(cal.tensors[r.name], shifted.tensors[r.name], r.config, 400,
                        chosen=(r.qparams, r.metrics), eval_alone=False)
        assert quick.eval_range is None and full.eval_range is not None
        assert (quick.cal_range, quick.cal_clipped, quick.eval_clipped, quick.unseen) == (
            full.cal_range, full.cal_clipped, full.eval_clipped, full.unseen)
        assert quick.flagged == full.flagged


def test_the_tolerance_shrinks_with_more_samples() -> None:
    assert sampling_tolerance(0.01, 100) > sampling_tolerance(0.01, 10_000) > 0


def test_snapshots_show_the_ranges_settling(demo) -> None:  # type: ignore[no-untyped-def]
    _, cal, _, _ = demo
    assert [s.samples for s in cal.snapshots] == [64, 128, 256, 512, 1024]  # batches of 64
    cfg = QuantConfig().activations
    first, last = [], []
    for name, stats in cal.tensors.items():
        points = convergence(cal.snapshots, stats, cal.n_samples, cfg)
        assert [p[0] for p in points] == [64, 128, 256, 512, 1024, 1600]
        # The last point is the range the method chooses on all the calibration data.
        lo, hi = choose_range(stats, cfg.spec, cfg.fmt)
        assert points[-1][1:] == histogram_metrics(stats, lo, hi, cfg.fmt).envelope, name
        his = [p[2] for p in points]
        first.append(abs(his[1] - his[0]) / his[1])
        last.append(abs(his[-1] - his[-2]) / his[-1])
    # Ranges move less at the last doubling of the data than at the first: they settle.
    assert np.median(last) <= np.median(first)
    assert max(last) < 0.1
