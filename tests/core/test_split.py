"""Holding out part of one data set for evaluation: disjoint, deterministic, every class in
both parts, and the same samples as reading the whole set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qviz.core.data.dataset import load_data
from qviz.core.data.split import Holdout, Part, split
from qviz.core.demo import demo_paths
from qviz.core.errors import QvizError
from qviz.core.model.loading import load_model


@pytest.fixture(scope="module")
def demo_data():  # type: ignore[no-untyped-def]
    model = load_model(demo_paths().model)
    return model, load_data(demo_paths().data, model.inputs)


def _all(dataset, batch: int = 64) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.concatenate([b["input"] for b in dataset.batches(batch)])


def test_parts_are_disjoint_and_cover_the_set(demo_data) -> None:  # type: ignore[no-untyped-def]
    _, data = demo_data
    whole = _all(data)
    holdout = Holdout()
    cal, ev = split(data, holdout, Part.CALIBRATION), split(data, holdout, Part.EVALUATION)
    assert len(cal) + len(ev) == len(data) and len(ev) == len(data) // 5
    index = np.arange(len(data))
    np.testing.assert_array_equal(_all(ev, 37), whole[index % 5 == 4])
    np.testing.assert_array_equal(_all(cal, 100), whole[index % 5 != 4])
    assert data.labels is not None and ev.labels is not None and cal.labels is not None
    np.testing.assert_array_equal(ev.labels, data.labels[index % 5 == 4])
    # Every class is in both parts (the demo's test images are in class order by chunks).
    assert set(np.unique(ev.labels)) == set(np.unique(cal.labels)) == set(range(10))
    assert "400 of 2000 samples held out for evaluation" in ev.description
    assert split(data, holdout, Part.EVALUATION).description == ev.description  # deterministic


def test_a_folder_of_one_sample_files_splits_too(tmp_path: Path, demo_data) -> None:  # type: ignore[no-untyped-def]
    model, data = demo_data
    folder = tmp_path / "samples"
    folder.mkdir()
    images = _all(data)[:12]
    for i, image in enumerate(images):
        np.savez(folder / f"{i:02d}.npz", input=image)
    ev = split(load_data(folder, model.inputs), Holdout(3), Part.EVALUATION)
    np.testing.assert_array_equal(_all(ev), images[2::3])


def test_too_few_samples_or_a_bad_fraction_is_one_line(demo_data) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(QvizError, match="N >= 2"):
        Holdout(1)
    _, data = demo_data
    few = data.with_samples(data.chunks[:1], None, "x")
    with pytest.raises(QvizError, match="too few"):
        split(few, Holdout(len(few) + 1), Part.EVALUATION)
