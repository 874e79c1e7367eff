"""Data layout: each input's batch axis from the model's signature or from the user, never a
guess; scalars and fixed inputs fed whole; ambiguous layouts refused in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qviz.core.data.dataset import FeedLayout, load_data, random_data
from qviz.core.data.layout import FeedReason, StateLink, resolve_feeds
from qviz.core.errors import QvizError
from qviz.core.model.loading import InputSpec

F32 = np.dtype(np.float32)
L, H, F = 2, 4, 3
# A recurrent cell: x (batch, F), state (L, batch, H) and a scalar step size.
CELL = (
    InputSpec("x", (None, F), F32, ("batch", None)),
    InputSpec("h", (L, None, H), F32, (None, "batch", None)),
    InputSpec("t", (), F32),
)


def axes(inputs: tuple[InputSpec, ...], layout: FeedLayout | None = None) -> dict:
    return {f.name: (f.batch_axis, f.reason) for f in resolve_feeds(inputs, layout)}


def test_axes_come_from_the_signature() -> None:
    assert axes(CELL) == {
        "x": (0, FeedReason.DYNAMIC),
        "h": (1, FeedReason.DYNAMIC),
        "t": (None, FeedReason.SCALAR),
    }


def test_several_dynamic_axes_use_the_shared_or_named_symbol() -> None:
    seq = (
        InputSpec("ids", (None, None), F32, ("batch_size", "sequence")),
        InputSpec("h", (L, None, H), F32, (None, "batch_size", None)),
    )
    assert axes(seq)["ids"] == (0, FeedReason.SYMBOL)
    seq_first = (InputSpec("x", (None, None, F), F32, ("seq", "N", None)),)
    assert axes(seq_first)["x"] == (1, FeedReason.SYMBOL)


def test_ambiguous_layouts_are_refused_with_the_way_to_state_them() -> None:
    unnamed = (InputSpec("x", (None, None, F), F32),)
    with pytest.raises(QvizError, match=r"batch axis of input 'x'.*--batch-axis x=AXIS"):
        resolve_feeds(unnamed)
    assert axes(unnamed, FeedLayout.parse(["x=1"]))["x"] == (1, FeedReason.STATED)
    shapeless = (InputSpec("x", (), F32, has_shape=False),)
    with pytest.raises(QvizError, match="declares no shape"):
        resolve_feeds(shapeless)


def test_fixed_inputs_are_a_fixed_batch_alone_and_whole_beside_dynamic_ones() -> None:
    assert axes((InputSpec("x", (1, 3, 8, 8), F32),))["x"] == (0, FeedReason.FIXED_BATCH)
    mixed = (InputSpec("x", (None, F), F32), InputSpec("mask", (4, 4), F32))
    assert axes(mixed)["mask"] == (None, FeedReason.FIXED_WHOLE)


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        ((["x=one"], [], []), "must be an integer or 'none'"),
        ((["x"], [], []), "takes NAME=AXIS"),
        (([], ["t=nan"], []), "must be finite"),
        (([], ["t=abc"], []), "is not a number"),
        (([], [], ["h"]), "takes OUTPUT=INPUT"),
        ((["x=0", "x=1"], [], []), "names input 'x' twice"),
        (([], ["h=0"], ["y=h"]), "both --const and --state"),
    ],
)
def test_bad_layout_texts(texts: tuple[list[str], list[str], list[str]], message: str) -> None:
    with pytest.raises(QvizError, match=message):
        FeedLayout.parse(*texts)


def test_stated_names_and_axes_are_checked_against_the_model() -> None:
    with pytest.raises(QvizError, match="no input 'y'"):
        resolve_feeds(CELL, FeedLayout.parse(["y=0"]))
    with pytest.raises(QvizError, match="has rank 2"):
        resolve_feeds(CELL, FeedLayout.parse(["x=2"]))
    with pytest.raises(QvizError, match="has no batch axis"):
        resolve_feeds(CELL, FeedLayout(states=(StateLink("y", "t"),)))


def save(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def test_samples_are_stacked_along_each_inputs_batch_axis(tmp_path: Path) -> None:
    n = 5
    x = np.arange(n * F, dtype=np.float32).reshape(n, F)
    h = np.arange(n * L * H, dtype=np.float32).reshape(n, L, H)
    path = save(tmp_path / "d.npz", x=x, h=h, t=np.float32(0.5))
    ds = load_data(path, CELL)
    assert "h: float32 (2, 4) per sample on axis 1" in ds.description
    assert "t: float32 () the same for every sample" in ds.description
    batches = list(ds.batches(2))
    assert [ds.samples_in(b) for b in batches] == [2, 2, 1]
    first = batches[0]
    assert first["x"].shape == (2, F) and first["h"].shape == (L, 2, H) and first["t"].shape == ()
    np.testing.assert_array_equal(first["h"][:, 1], h[1])  # sample 1 sits on axis 1
    np.testing.assert_array_equal(ds.head(first, 1)["h"], h[:1].transpose(1, 0, 2))


def test_a_scalar_given_per_sample_is_refused_not_misfed(tmp_path: Path) -> None:
    """The misfeed from the issue: the scalar with a sample axis, the state's L taken as the
    batch. Now one line that says how to give it."""
    n = 6
    path = save(tmp_path / "d.npz", x=np.zeros((n, F), np.float32),
                h=np.zeros((n, L, H), np.float32), t=np.full(n, 0.5, np.float32))
    with pytest.raises(QvizError, match=r"input 't' is a scalar .*--const t=VALUE"):
        load_data(path, CELL)
    # Stated as a constant (and left out of the data), it feeds every batch.
    path2 = save(tmp_path / "d2.npz", x=np.zeros((n, F), np.float32),
                 h=np.zeros((n, L, H), np.float32))
    ds = load_data(path2, CELL, layout=FeedLayout.parse(constants=["t=0.5"]))
    assert float(next(ds.batches(4))["t"]) == 0.5 and len(ds) == n
    with pytest.raises(QvizError, match="both by --const and by"):
        load_data(path, CELL, layout=FeedLayout.parse(constants=["t=0.5"]))


def test_an_array_given_once_feeds_every_sample(tmp_path: Path) -> None:
    n = 3
    h0 = np.ones((L, H), np.float32)
    path = save(tmp_path / "d.npz", x=np.zeros((n, F), np.float32), h=h0, t=np.float32(1))
    ds = load_data(path, CELL)
    (batch,) = list(ds.batches(8))
    assert batch["h"].shape == (L, n, H) and (batch["h"] == 1).all()


def test_stateful_data_runs_one_sample_at_a_time_in_order(tmp_path: Path) -> None:
    n = 4
    x = np.arange(n * F, dtype=np.float32).reshape(n, F)
    path = save(tmp_path / "d.npz", x=x, h=np.zeros((L, H), np.float32), t=np.float32(1))
    ds = load_data(path, CELL, layout=FeedLayout(states=(StateLink("h_out", "h"),)))
    batches = list(ds.batches(32))
    assert len(batches) == n and all(b["x"].shape == (1, F) for b in batches)
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in batches]), x)
    assert "then output 'h_out' of the sample before" in ds.description


def test_random_data_follows_the_layout() -> None:
    ds = random_data(CELL, 5, layout=FeedLayout.parse(constants=["t=2"]))
    batch = next(ds.batches(5))
    assert batch["h"].shape == (L, 5, H) and float(batch["t"]) == 2.0
    assert "RANDOM" in ds.description
