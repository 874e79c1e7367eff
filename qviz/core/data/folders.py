"""Data folders: one ``.npz`` file per sample (or several), or images (one subfolder per class)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from qviz.core.data.arrays import open_npz
from qviz.core.data.batching import Chunk, Dataset
from qviz.core.data.checks import (
    LABELS_KEY,
    chunk_from_arrays,
    default_specs,
    load_labels,
    resolve_names,
)
from qviz.core.data.images import IMAGE_SUFFIXES, Preprocess, load_images
from qviz.core.data.layout import InputFeed, count_text
from qviz.core.errors import QvizError
from qviz.core.model.loading import InputSpec


def natural_key(path: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def load_folder(
    folder: Path,
    inputs: tuple[InputSpec, ...],
    feeds: tuple[InputFeed, ...],
    preprocess: Preprocess | None,
) -> Dataset:
    try:
        entries = sorted(folder.iterdir(), key=natural_key)
    except OSError as exc:
        raise QvizError(f"cannot list data folder '{folder}': {exc.strerror or exc}") from exc
    files = [e for e in entries if e.is_file() and not e.name.startswith(".")]
    npz = [f for f in files if f.suffix.lower() == ".npz"]
    images = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
    if npz and images:
        raise QvizError(f"data folder '{folder.name}' mixes .npz files and images; use one kind")
    if npz:
        return load_npz_folder(folder, npz, inputs, feeds)
    if images:
        return load_images(folder, [(f, None) for f in images], None, inputs, feeds, preprocess)
    # One subfolder per class (ImageNet style).
    classes = [e for e in entries if e.is_dir() and not e.name.startswith(".")]
    labelled: list[tuple[Path, int | None]] = []
    class_names: list[str] = []
    for d in classes:
        found = sorted(
            (f for f in d.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES),
            key=natural_key,
        )
        if found:
            labelled += [(f, len(class_names)) for f in found]
            class_names.append(d.name)
    if labelled:
        return load_images(folder, labelled, tuple(class_names), inputs, feeds, preprocess)
    raise QvizError(f"the data set is empty: no .npz files or images in '{folder}'")


def load_npz_folder(
    folder: Path, files: list[Path], inputs: tuple[InputSpec, ...], feeds: tuple[InputFeed, ...]
) -> Dataset:
    chunks: list[Chunk] = []
    labels: list[np.ndarray] = []
    names: dict[str, str] | None = None
    has_labels: bool | None = None
    whole: dict[str, np.ndarray] | None = None
    model_known = bool(inputs)
    for f in files:
        found = open_npz(f)
        where = f"'{folder.name}/{f.name}'"
        keys = [k for k in found if k != LABELS_KEY]
        if names is None:
            names = resolve_names(keys, feeds, where, model_known=model_known)
            has_labels = LABELS_KEY in found
            if not model_known:
                feeds = default_specs(names, found)
        elif sorted(keys) != sorted(names.values()):
            raise QvizError(
                f"{where} has arrays {', '.join(keys)}; the first file had "
                f"{', '.join(names.values())}"
            )
        chunk, file_whole = chunk_from_arrays(
            found, names, feeds, where, folder=True, model_known=model_known
        )
        if whole is None:
            whole = file_whole
        for name, value in file_whole.items():
            # An input fed whole takes one array for the whole data set.
            if value.shape != whole[name].shape or not np.array_equal(value, whole[name]):
                raise QvizError(
                    f"{where}: input '{name}' has no batch axis (fed whole), but its value "
                    "differs from the first file's; give it once (--const) or state its batch "
                    f"axis with --batch-axis {name}=AXIS"
                )
        if chunk.n == 0:
            continue
        chunks.append(chunk)
        if (LABELS_KEY in found) != has_labels:
            raise QvizError(f"{where}: some files have '{LABELS_KEY}' and some do not")
        if has_labels:
            file_labels = load_labels(found, chunk.n, where)
            assert file_labels is not None
            labels.append(file_labels.reshape(chunk.n, *file_labels.shape[1:]))
    n = sum(c.n for c in chunks)
    dataset = Dataset(
        inputs=tuple(f.spec for f in feeds),
        chunks=chunks,
        description=folder.name,
        labels=np.concatenate(labels) if labels else None,
        feeds=feeds,
        whole=whole or {},
    )
    dataset.description = (
        f"folder {folder.name}/: {len(files)} .npz files, {count_text(n, 'sample')} "
        f"({dataset.layout_text()})" + (", with labels" if has_labels else "")
    )
    return dataset
