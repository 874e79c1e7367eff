"""Calibration and evaluation data for the synthetic models: deterministic ``.npz`` files.

Token ids follow a Zipf-Mandelbrot law, ``p(rank) ∝ 1 / (rank + 2.7) ** 1.1``, which is
close to the frequency of word pieces in natural text; ranks are mapped to ids by a fixed
permutation so the frequent tokens are spread over the vocabulary (and the embedding rows).
Calibration and evaluation sets are independent draws (different streams of the seed).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import numpy as np

from qviz.core.files.atomic import atomic_path

ZIPF_EXPONENT = 1.1
ZIPF_OFFSET = 2.7


class Split(Enum):
    """Which data set: each is its own random stream, so they never share samples."""

    CALIBRATION = 1
    EVALUATION = 2


def zipf_probabilities(vocab: int) -> np.ndarray:
    ranks = np.arange(vocab, dtype=np.float64)
    weights = 1.0 / (ranks + ZIPF_OFFSET) ** ZIPF_EXPONENT
    return weights / weights.sum()


def token_ids(vocab: int, samples: int, seq: int, *, seed: int, split: Split) -> np.ndarray:
    """int64 [samples, seq] token ids, Zipf-distributed, deterministic in (seed, split)."""
    if samples < 1 or seq < 1:
        raise ValueError(f"samples and seq must be positive, got {samples} and {seq}")
    rank_to_id = np.random.default_rng([seed, 11]).permutation(vocab)
    rng = np.random.default_rng([seed, 100 + split.value])
    ranks = rng.choice(vocab, size=(samples, seq), p=zipf_probabilities(vocab))
    return rank_to_id[ranks].astype(np.int64)


def hidden_states(hidden: int, samples: int, seq: int, *, seed: int,
                  split: Split) -> np.ndarray:
    """float32 [samples, seq, hidden] residual-stream vectors for the outlier block.

    Standard normal per token, with a per-channel scale in [0.5, 2] shared by all samples (a
    residual stream's channels are not all equally loud, even without outliers).
    """
    if samples < 1 or seq < 1:
        raise ValueError(f"samples and seq must be positive, got {samples} and {seq}")
    scale = np.exp(np.random.default_rng([seed, 12]).uniform(np.log(0.5), np.log(2.0), hidden))
    rng = np.random.default_rng([seed, 200 + split.value])
    x = rng.standard_normal((samples, seq, hidden), dtype=np.float32)
    x *= scale.astype(np.float32)
    return x


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    """Write an uncompressed ``.npz`` (memory-mappable by qviz) atomically."""
    path = Path(path)
    with atomic_path(path, make_parents=True) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]
    return path
