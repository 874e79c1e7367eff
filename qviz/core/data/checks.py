"""Data arrays checked against the model's inputs: names, ranks, fixed sizes, types, labels.

Each input's batch axis is decided first (`qviz.core.data.layout`); an array then has a
leading sample axis (one more axis than one sample has), or is given once (a sample's shape:
the same for every sample), and an input fed whole gets exactly its own shape.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from qviz.core.data.arrays import AddSampleAxis, LazyArray, Repeated
from qviz.core.data.batching import Chunk
from qviz.core.data.layout import InputFeed, default_feeds, shape_text
from qviz.core.errors import QvizError
from qviz.core.model.loading import InputSpec

LABELS_KEY = "labels"


def resolve_names(
    keys: Sequence[str], feeds: Sequence[InputFeed], where: str, *, model_known: bool = True
) -> dict[str, str]:
    """Map model input name -> data key, for the inputs the data must give (not --const)."""
    if not model_known:
        return {k: k for k in keys}
    given_twice = [f.name for f in feeds if f.constant is not None and f.name in keys]
    if given_twice:
        raise QvizError(
            f"input '{given_twice[0]}' is given both by --const and by {where}; keep one"
        )
    needed = [f.name for f in feeds if f.constant is None]
    all_names = ", ".join(f.name for f in feeds)
    if not needed:
        if keys:
            raise QvizError(
                f"{where} has arrays the model does not take: {', '.join(keys)} (every input "
                f"is given by --const; labels go under '{LABELS_KEY}')"
            )
        return {}
    if len(needed) == 1:
        name = needed[0]
        if name in keys:
            extra = [k for k in keys if k != name]
            if extra:
                raise QvizError(
                    f"{where} has arrays the model does not take: {', '.join(extra)} "
                    f"(its input is '{name}'; labels go under '{LABELS_KEY}')"
                )
            return {name: name}
        if len(keys) == 1 and len(feeds) == 1:
            return {name: keys[0]}
        raise QvizError(
            f"{where} has arrays {', '.join(keys) or '(none)'}, but the model's input is "
            f"'{name}'" + (f" (inputs: {all_names})" if len(feeds) > 1 else "")
        )
    missing = [n for n in needed if n not in keys]
    if missing:
        raise QvizError(
            f"{where} has no array for input '{missing[0]}' "
            f"(model inputs: {all_names}; data has: {', '.join(keys) or 'nothing'})"
        )
    extra = [k for k in keys if k not in needed]
    if extra:
        raise QvizError(
            f"{where} has arrays the model does not take: {', '.join(extra)} "
            f"(model inputs: {all_names}; labels go under '{LABELS_KEY}')"
        )
    return {n: n for n in needed}


def castable(src: np.dtype, dst: np.dtype) -> bool:
    """Casts that keep meaning: bool->anything numeric, int->int/float, float->float."""
    if src == dst:
        return True
    if src.kind == "b":
        return dst.kind in "biuf"
    if src.kind in "iu":
        return dst.kind in "iuf"
    if src.kind == "f":
        return dst.kind == "f"
    return False


def _check_dtype(arr: LazyArray, spec: InputSpec, where: str) -> None:
    if not castable(arr.dtype, spec.dtype):
        raise QvizError(
            f"input '{spec.name}' expects {spec.dtype} but {where} holds {arr.dtype} "
            "(no safe conversion)"
        )


def _mismatch(got: tuple[int, ...], want: tuple[int | None, ...], offset: int) -> str | None:
    """'its axis K is X where the model needs Y' for the first fixed size that differs."""
    for axis, (g, w) in enumerate(zip(got[offset:], want, strict=True)):
        if w is not None and g != w:
            return f"its axis {axis + offset} is {g} where the model needs {w}"
    return None


def _per_sample_words(feed: InputFeed) -> str:
    return f"per sample (batch axis {feed.batch_axis} of {shape_text(feed.spec.shape)})"


def check_batched(arr: LazyArray, feed: InputFeed, where: str) -> bool:
    """Check an array for a batched input; True when it has a leading sample axis, False
    when it is one sample's value given once."""
    _check_dtype(arr, feed.spec, where)
    sample = feed.sample_shape
    shape = tuple(arr.shape)
    if sample is None:  # the model declares no shape: the data's leading axis is samples
        assert feed.batch_axis is not None
        if len(shape) < feed.batch_axis + 1:
            raise QvizError(
                f"input '{feed.name}' is batched along axis {feed.batch_axis}, but {where} has "
                f"shape {shape_text(shape)}"
            )
        return True
    head = f"input '{feed.name}' takes {shape_text(sample)} {_per_sample_words(feed)}, but "
    if len(shape) == len(sample) + 1:
        wrong = _mismatch(shape, sample, 1)
        if wrong is None:
            return True
        raise QvizError(f"{head}{where} has shape {shape_text(shape)}: {wrong}")
    if len(shape) == len(sample) and _mismatch(shape, sample, 0) is None:
        return False
    raise QvizError(
        f"{head}{where} has shape {shape_text(shape)}: give N samples as "
        f"{shape_text((None, *sample))} (samples first), or one value of {shape_text(sample)} "
        "for every sample"
    )


def check_whole(arr: LazyArray, feed: InputFeed, where: str) -> np.ndarray:
    """The value of an input fed whole (no batch axis), checked against its shape."""
    _check_dtype(arr, feed.spec, where)
    shape = tuple(arr.shape)
    if feed.spec.has_shape:
        want = feed.spec.shape
        if len(shape) != len(want):
            kind = "a scalar" if not want else f"fed whole as {shape_text(want)}"
            hint = f"give one array of shape {shape_text(want)} (no sample axis)" + (
                f" or --const {feed.name}=VALUE" if not want
                else f", or state its batch axis with --batch-axis {feed.name}=AXIS"
            )
            raise QvizError(
                f"input '{feed.name}' is {kind} (no batch axis: {feed.reason.value}), but "
                f"{where} has shape {shape_text(shape)}: {hint}"
            )
        wrong = _mismatch(shape, want, 0)
        if wrong is not None:
            raise QvizError(
                f"input '{feed.name}' is fed whole as {shape_text(want)}, but {where} has "
                f"shape {shape_text(shape)}: {wrong}"
            )
    return np.asarray(arr.read_all())


def constant_value(feed: InputFeed) -> np.ndarray:
    """The array ``--const NAME=VALUE`` stands for: one sample's shape (or the whole shape),
    every element VALUE."""
    assert feed.constant is not None
    shape = feed.sample_shape
    if shape is None or any(d is None for d in shape):
        shown = "unknown" if shape is None else shape_text(shape)
        raise QvizError(
            f"--const {feed.name}: the input's shape {shown} is not fully known; give its "
            "value in the data instead"
        )
    return np.full(tuple(int(d) for d in shape if d is not None), feed.constant,
                   dtype=feed.spec.dtype)


def chunk_from_arrays(
    found: Mapping[str, LazyArray],
    names: Mapping[str, str],
    feeds: Sequence[InputFeed],
    where: str,
    *,
    folder: bool,
    model_known: bool = True,
) -> tuple[Chunk, dict[str, np.ndarray]]:
    """One file's arrays checked against the feeds: a Chunk of the batched inputs (arrays
    with a sample axis) and the values of the inputs fed whole.

    An array given once is one sample in a folder file, and the same value for every
    sample of a single data file.
    """
    samples: dict[str, LazyArray] = {}
    once: dict[str, np.ndarray] = {}
    whole: dict[str, np.ndarray] = {}
    for feed in feeds:
        if feed.constant is not None:
            value = constant_value(feed)
            (once if feed.batched else whole)[feed.name] = value
            continue
        key = names[feed.name]
        arr = found[key]
        label = f"{where} ['{key}']" if key else where
        if not model_known:
            if not arr.shape:
                raise QvizError(f"{label} is a single value, not samples")
            samples[feed.name] = arr
        elif not feed.batched:
            whole[feed.name] = check_whole(arr, feed, label)
        elif check_batched(arr, feed, label):
            samples[feed.name] = arr
        elif folder:
            samples[feed.name] = AddSampleAxis(arr)
        else:
            once[feed.name] = np.asarray(arr.read_all())
    counts = {name: a.shape[0] for name, a in samples.items()}
    if len(set(counts.values())) > 1:
        listing = ", ".join(f"{k}: {v}" for k, v in counts.items())
        raise QvizError(f"{where}: inputs have different sample counts ({listing})")
    n = next(iter(counts.values()), 1)
    for name, value in once.items():
        samples[name] = Repeated(value, n)
    return Chunk(n, samples, where), whole


def default_specs(
    names: Mapping[str, str], found: Mapping[str, LazyArray]
) -> tuple[InputFeed, ...]:
    """Feeds read off the data itself (when the model's inputs are not known yet)."""
    return default_feeds(
        tuple(
            InputSpec(name, (None, *found[key].shape[1:]), found[key].dtype)
            for name, key in names.items()
        )
    )


def load_labels(found: Mapping[str, LazyArray], n: int, where: str) -> np.ndarray | None:
    if LABELS_KEY not in found:
        return None
    labels = np.asarray(found[LABELS_KEY].read_all())
    labels = labels.reshape(-1) if labels.ndim == 0 else labels
    if labels.shape[0] != n:
        raise QvizError(f"{where}: {labels.shape[0]} labels for {n} samples")
    return np.array(labels)
