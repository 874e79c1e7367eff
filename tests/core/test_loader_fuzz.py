"""Every file loader, fed damaged and random input (hypothesis): a QvizError or a result,
never another exception. Truncations, bit flips, random JSON, and valid documents with one
field replaced by a random value; example counts stay modest so CI stays fast."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qviz.core.calibration.analysis import analyze
from qviz.core.calibration.config import QuantConfig
from qviz.core.data.dataset import Preprocess, load_data, random_data
from qviz.core.errors import QvizError
from qviz.core.files.config_file import load_config, save_config
from qviz.core.files.export import (
    export_ort_overrides,
    export_trt_cache,
    load_ort_overrides,
    load_ort_quantize_options,
    read_trt_cache,
)
from qviz.core.files.session_file import SessionFile, load_session, save_session
from qviz.core.model.loading import load_model
from qviz.core.progress import run_to_completion
from qviz.core.stats.collect import collect_stats
from qviz.core.stats.stats_file import load_stats, save_stats
from tests.core import model_factory as mf

FUZZ = settings(
    max_examples=int(__import__("os").environ.get("FUZZ_N", "25")),
    deadline=None,
    database=None,  # nothing written beside the tests
    derandomize=not __import__("os").environ.get("FUZZ_N"),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=20,
)


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One valid file of every kind qviz reads, from a small conv net."""
    folder = tmp_path_factory.mktemp("golden")
    model_path = mf.save(mf.make_conv_net(), folder / "net.onnx")
    model = load_model(model_path)
    stats = run_to_completion(collect_stats(model, random_data(model.inputs, 8), bins=64))
    config = QuantConfig()
    results = analyze(model, stats, config)
    files = {"model": model_path, "stats": folder / "net.qvstats",
             "config": folder / "net.json", "session": folder / "s.qviz.json",
             "ort": folder / "ort.json", "trt": folder / "net.cache",
             "npz": folder / "data.npz", "npy": folder / "data.npy",
             "npz_compressed": folder / "packed.npz",
             "preprocess": folder / "prep.json"}
    save_stats(stats, files["stats"])
    save_config(files["config"], model, config, results)
    save_session(files["session"], SessionFile(model_path=model_path, stats_path=files["stats"],
                                               config=config))
    export_ort_overrides(results, files["ort"], model)
    export_trt_cache(results, files["trt"])
    x = np.random.default_rng(0).standard_normal((6, 3, 8, 8)).astype(np.float32)
    np.savez(files["npz"], x=x, labels=np.arange(6))
    np.savez_compressed(files["npz_compressed"], x=x, labels=np.arange(6))
    np.save(files["npy"], x)
    files["preprocess"].write_text(json.dumps(Preprocess(size=(8, 8)).to_dict()))
    return files


def _load_data(path: Path) -> Any:
    model = load_model(mf.save(mf.make_conv_net(), path.parent / "m.onnx"))
    ds = load_data(path, model.inputs)
    return [b["x"].shape for b in ds.batches(4)]  # reading streams too


LOADERS: dict[str, Callable[[Path], Any]] = {
    "model": load_model,
    "stats": load_stats,
    "config": load_config,
    "session": load_session,
    "ort": load_ort_overrides,
    "ort_options": load_ort_quantize_options,
    "trt": read_trt_cache,
    "npz": _load_data,
    "npz_compressed": _load_data,
    "npy": _load_data,
    "preprocess": Preprocess.from_json,
}
# Which golden file each loader reads, and the suffix its damaged copies keep.
SOURCE = {"ort_options": "ort"}


def _check(loader: Callable[[Path], Any], path: Path) -> None:
    """Success or QvizError; anything else fails the test (the CLI prints a QvizError on one
    line whatever text from the file it quotes)."""
    try:
        loader(path)
    except QvizError:
        pass


def _copy_name(golden: dict[str, Path], kind: str, tmp_path: Path) -> tuple[bytes, Path]:
    source = golden[SOURCE.get(kind, kind)]
    return source.read_bytes(), tmp_path / f"damaged{''.join(source.suffixes)}"


@pytest.mark.parametrize("kind", sorted(LOADERS))
@FUZZ
@given(data=st.data())
def test_truncated_files(golden: dict[str, Path], tmp_path: Path, kind: str,
                         data: st.DataObject) -> None:
    blob, path = _copy_name(golden, kind, tmp_path)
    cut = data.draw(st.integers(0, len(blob) - 1), label="cut")
    path.write_bytes(blob[:cut])
    _check(LOADERS[kind], path)


@pytest.mark.parametrize("kind", sorted(LOADERS))
@FUZZ
@given(data=st.data())
def test_bit_flips(golden: dict[str, Path], tmp_path: Path, kind: str,
                   data: st.DataObject) -> None:
    blob, path = _copy_name(golden, kind, tmp_path)
    raw = bytearray(blob)
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(0, 7)),
                               min_size=1, max_size=8), label="flips")
    for pos, bit in flips:
        raw[pos] ^= 1 << bit
    path.write_bytes(bytes(raw))
    _check(LOADERS[kind], path)


JSON_KINDS = ["config", "session", "ort", "ort_options", "preprocess"]


@pytest.mark.parametrize("kind", JSON_KINDS)
@FUZZ
@given(doc=JSON)
def test_random_json(golden: dict[str, Path], tmp_path: Path, kind: str, doc: Any) -> None:
    _, path = _copy_name(golden, kind, tmp_path)
    path.write_text(json.dumps(doc))
    _check(LOADERS[kind], path)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON document a value sits."""
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:3]):
            out += _paths(v, (*prefix, i))
    return out


def _replace(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    copy = dict(doc) if isinstance(doc, dict) else list(doc)
    copy[head] = _replace(copy[head], rest, value)
    return copy


@pytest.mark.parametrize("kind", JSON_KINDS)
@FUZZ
@given(data=st.data())
def test_one_field_replaced(golden: dict[str, Path], tmp_path: Path, kind: str,
                            data: st.DataObject) -> None:
    blob, path = _copy_name(golden, kind, tmp_path)
    doc = json.loads(blob)
    where = data.draw(st.sampled_from(_paths(doc)), label="field")
    value = data.draw(JSON | st.sampled_from([0, -1, 0.0, -5.5, 1e300, 300, "nan", "inf", []]),
                      label="value")
    path.write_text(json.dumps(_replace(doc, where, value)))
    _check(LOADERS[kind], path)


@FUZZ
@given(data=st.data())
def test_stats_meta_field_replaced(golden: dict[str, Path], tmp_path: Path,
                                   data: st.DataObject) -> None:
    """The stats file's meta.json with one field replaced (the zip itself intact)."""
    with zipfile.ZipFile(golden["stats"]) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    doc = json.loads(members["meta.json"])
    where = data.draw(st.sampled_from(_paths(doc)), label="field")
    value = data.draw(JSON | st.sampled_from([0, -5, 1e300, "x", [], {}]), label="value")
    members["meta.json"] = json.dumps(_replace(doc, where, value)).encode()
    path = tmp_path / "edited.qvstats"
    with zipfile.ZipFile(path, "w") as zf:
        for name, raw in members.items():
            zf.writestr(name, raw)
    _check(load_stats, path)


def test_deep_and_huge_json_are_one_line(golden: dict[str, Path], tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    for loader in (load_config, load_session, load_ort_overrides, Preprocess.from_json):
        with pytest.raises(QvizError, match="nested too deeply"):
            loader(deep)
    value: Any = []
    for _ in range(100):  # within Python's recursion limit, beyond any qviz document
        value = [value]
    nested = tmp_path / "nested.json"
    nested.write_text(json.dumps({"schema_version": 1, "a": value}))
    with pytest.raises(QvizError, match="nested too deeply"):
        load_config(nested)
