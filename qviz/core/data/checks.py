"""Data arrays checked against the model's inputs: names, ranks, fixed sizes, types, labels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from qviz.core.data.arrays import AddSampleAxis, LazyArray
from qviz.core.data.batching import Chunk
from qviz.core.errors import QvizError
from qviz.core.model.loading import InputSpec

LABELS_KEY = "labels"


def resolve_names(
    keys: Sequence[str], inputs: tuple[InputSpec, ...], where: str
) -> dict[str, str]:
    """Map model input name -> data key."""
    if not inputs:
        return {k: k for k in keys}
    names = [i.name for i in inputs]
    if len(inputs) == 1:
        if names[0] in keys:
            extra = [k for k in keys if k != names[0]]
            if extra:
                raise QvizError(
                    f"{where} has arrays the model does not take: {', '.join(extra)} "
                    f"(its input is '{names[0]}'; labels go under '{LABELS_KEY}')"
                )
            return {names[0]: names[0]}
        if len(keys) == 1:
            return {names[0]: keys[0]}
        raise QvizError(
            f"{where} has arrays {', '.join(keys) or '(none)'}, but the model's input is "
            f"'{names[0]}'"
        )
    missing = [n for n in names if n not in keys]
    if missing:
        raise QvizError(
            f"{where} has no array for input '{missing[0]}' "
            f"(model inputs: {', '.join(names)}; data has: {', '.join(keys) or 'nothing'})"
        )
    extra = [k for k in keys if k not in names]
    if extra:
        raise QvizError(
            f"{where} has arrays the model does not take: {', '.join(extra)} "
            f"(model inputs: {', '.join(names)}; labels go under '{LABELS_KEY}')"
        )
    return {n: n for n in names}


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


def shape_text(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def check_array(arr: LazyArray, spec: InputSpec, where: str, *, one_sample: bool) -> LazyArray:
    """Validate rank, fixed sizes and dtype; return the array with its sample axis."""
    if not castable(arr.dtype, spec.dtype):
        raise QvizError(
            f"input '{spec.name}' expects {spec.dtype} but {where} holds {arr.dtype} "
            "(no safe conversion)"
        )
    if not spec.shape:
        return arr  # the model does not declare a shape: nothing to check
    rank = len(spec.shape)
    if one_sample and len(arr.shape) == rank - 1:
        arr = AddSampleAxis(arr)
    if len(arr.shape) != rank:
        raise QvizError(
            f"input '{spec.name}' expects rank {rank} {shape_text(spec.shape)} (the first axis "
            f"being samples), but {where} has shape {tuple(arr.shape)}"
        )
    for axis in range(1, rank):
        want = spec.shape[axis]
        if want is not None and arr.shape[axis] != want:
            raise QvizError(
                f"input '{spec.name}' expects shape {shape_text(spec.shape)} but {where} has "
                f"{tuple(arr.shape)} (axis {axis}: {arr.shape[axis]} != {want})"
            )
    return arr


def chunk_from_arrays(
    found: Mapping[str, LazyArray],
    names: Mapping[str, str],
    inputs: tuple[InputSpec, ...],
    where: str,
    *,
    one_sample: bool,
) -> Chunk:
    arrays: dict[str, LazyArray] = {}
    for model_name, key in names.items():
        arr = found[key]
        spec = next((s for s in inputs if s.name == model_name), None)
        if spec is not None:
            arr = check_array(arr, spec, f"{where} ['{key}']" if key else where,
                               one_sample=one_sample)
        elif not arr.shape:
            raise QvizError(f"{where} ['{key}'] is a single value, not samples")
        arrays[model_name] = arr
    counts = {name: a.shape[0] if a.shape else 1 for name, a in arrays.items()}
    if len(set(counts.values())) > 1:
        listing = ", ".join(f"{k}: {v}" for k, v in counts.items())
        raise QvizError(f"{where}: inputs have different sample counts ({listing})")
    return Chunk(next(iter(counts.values()), 0), arrays, where)


def default_specs(
    names: Mapping[str, str], found: Mapping[str, LazyArray]
) -> tuple[InputSpec, ...]:
    """Input specs read off the data itself (when the model's inputs are not known yet)."""
    return tuple(
        InputSpec(name, (None, *found[key].shape[1:]), found[key].dtype)
        for name, key in names.items()
    )


def load_labels(found: Mapping[str, LazyArray], n: int, where: str) -> np.ndarray | None:
    if LABELS_KEY not in found:
        return None
    labels = np.asarray(found[LABELS_KEY].read_all())
    labels = labels.reshape(-1) if labels.ndim == 0 else labels
    if labels.shape[0] != n:
        raise QvizError(f"{where}: {labels.shape[0]} labels for {n} samples")
    return np.array(labels)
