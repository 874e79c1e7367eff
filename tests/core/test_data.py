"""Data loading: formats, validation errors, streaming batches, images, random data."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from qviz.core.data import arrays as arrays_module
from qviz.core.data import dataset as data_module
from qviz.core.data.dataset import (
    Dataset,
    Preprocess,
    decode_png,
    load_data,
    peek_sample,
    random_data,
)
from qviz.core.errors import QvizError
from qviz.core.model.loading import InputSpec

F32 = np.dtype(np.float32)
IMAGE_INPUT = (InputSpec("x", (None, 3, 8, 8), F32),)
SEQ_INPUTS = (
    InputSpec("x", (None, None, 8), F32, ("N", "S", None)),
    InputSpec("mask", (None, None), F32, ("N", "S")),
)


def images(n: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 8, 8))


def collect(ds: Dataset, batch_size: int, name: str = "x") -> np.ndarray:
    return np.concatenate([b[name] for b in ds.batches(batch_size)])


# -------------------------------------------------------------------------- array files


def test_npz_with_labels(tmp_path: Path) -> None:
    x = images()
    np.savez(tmp_path / "d.npz", x=x, labels=np.arange(10))
    ds = load_data(tmp_path / "d.npz", IMAGE_INPUT)
    assert len(ds) == 10 and not ds.is_random
    np.testing.assert_array_equal(ds.labels, np.arange(10))
    batches = list(ds.batches(4))
    assert [b["x"].shape[0] for b in batches] == [4, 4, 2]
    assert all(b["x"].dtype == np.float32 and b["x"].flags.c_contiguous for b in batches)
    np.testing.assert_array_equal(collect(ds, 4), x.astype(np.float32))  # float64 cast
    first = ds.first_sample()
    assert first["x"].shape == (1, 3, 8, 8) and first["x"].dtype == np.float32
    assert "d.npz" in ds.description and "10 samples" in ds.description


def test_single_input_model_takes_any_one_key(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", pixels=images(3))
    ds = load_data(tmp_path / "d.npz", IMAGE_INPUT)
    assert list(ds.first_sample()) == ["x"]


def test_npy_for_single_input(tmp_path: Path) -> None:
    x = images(5).astype(np.float32)
    np.save(tmp_path / "d.npy", x)
    ds = load_data(tmp_path / "d.npy", IMAGE_INPUT)
    np.testing.assert_array_equal(collect(ds, 2), x)
    assert ds.labels is None


def test_npy_is_memory_mapped(tmp_path: Path) -> None:
    np.save(tmp_path / "d.npy", images(5).astype(np.float32))
    ds = load_data(tmp_path / "d.npy", IMAGE_INPUT)
    assert isinstance(ds._chunks[0].arrays["x"].array, np.memmap)


def test_uncompressed_npz_is_memory_mapped(tmp_path: Path) -> None:
    x = images(6).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    ds = load_data(tmp_path / "d.npz", IMAGE_INPUT)
    assert isinstance(ds._chunks[0].arrays["x"].array, np.memmap)
    np.testing.assert_array_equal(collect(ds, 4), x)


def test_compressed_npz_streams(tmp_path: Path) -> None:
    x = images(9).astype(np.float32)
    np.savez_compressed(tmp_path / "d.npz", x=x, labels=np.arange(9) % 3)
    ds = load_data(tmp_path / "d.npz", IMAGE_INPUT)
    assert isinstance(ds._chunks[0].arrays["x"], arrays_module.ZipStream)
    for size in (1, 4, 9, 20):
        np.testing.assert_array_equal(collect(ds, size), x)
    np.testing.assert_array_equal(ds.first_sample()["x"], x[:1])
    np.testing.assert_array_equal(ds.labels, np.arange(9) % 3)


def test_multi_input_npz(tmp_path: Path) -> None:
    a = np.ones((4, 4), np.float32)
    b = np.zeros((4, 6), np.float32)
    np.savez(tmp_path / "d.npz", a=a, b=b)
    inputs = (InputSpec("a", (None, 4), F32), InputSpec("b", (None, 6), F32))
    (batch,) = list(load_data(tmp_path / "d.npz", inputs).batches(8))
    assert set(batch) == {"a", "b"} and batch["b"].shape == (4, 6)


def test_integer_inputs_keep_their_type(tmp_path: Path) -> None:
    ids = np.arange(12, dtype=np.int32).reshape(3, 4)
    np.savez(tmp_path / "d.npz", ids=ids)
    ds = load_data(tmp_path / "d.npz", (InputSpec("ids", (None, 4), np.dtype(np.int64)),))
    (batch,) = list(ds.batches(3))
    assert batch["ids"].dtype == np.int64
    np.testing.assert_array_equal(batch["ids"], ids)


def test_fixed_batch_model_gets_exact_batches(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=images(5))
    ds = load_data(tmp_path / "d.npz", (InputSpec("x", (1, 3, 8, 8), F32),))
    assert [b["x"].shape[0] for b in ds.batches(32)] == [1] * 5
    ds2 = load_data(tmp_path / "d.npz", (InputSpec("x", (2, 3, 8, 8), F32),))
    assert [b["x"].shape[0] for b in ds2.batches(32)] == [2, 2]  # the remainder is dropped


# ------------------------------------------------------------------------- npz folders


def test_folder_of_variable_length_samples(tmp_path: Path) -> None:
    lengths = [3, 3, 5, 5, 5, 2]
    for i, n in enumerate(lengths):
        np.savez(tmp_path / f"s{i}.npz", x=np.full((n, 8), i, np.float32),
                 mask=np.ones(n, np.float32), labels=i)
    ds = load_data(tmp_path, SEQ_INPUTS)
    assert len(ds) == 6
    np.testing.assert_array_equal(ds.labels, np.arange(6))
    batches = list(ds.batches(2))
    assert [b["x"].shape for b in batches] == [(2, 3, 8), (2, 5, 8), (1, 5, 8), (1, 2, 8)]
    # Order is kept (labels stay aligned).
    order = [int(v) for b in batches for v in b["x"][:, 0, 0]]
    assert order == list(range(6))
    assert [b["x"].shape[0] for b in ds.batches(1)] == [1] * 6


def test_folder_files_are_in_natural_order(tmp_path: Path) -> None:
    for i in (10, 2, 1):
        np.savez(tmp_path / f"sample_{i}.npz", x=np.full((1, 3, 8, 8), i, np.float32))
    ds = load_data(tmp_path, IMAGE_INPUT)
    assert [int(b["x"][0, 0, 0, 0]) for b in ds.batches(1)] == [1, 2, 10]


def test_folder_files_may_hold_several_samples(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", x=images(3))
    np.savez(tmp_path / "b.npz", x=images(2))
    ds = load_data(tmp_path, IMAGE_INPUT)
    assert len(ds) == 5
    assert [b["x"].shape[0] for b in ds.batches(4)] == [4, 1]


def test_folder_with_inconsistent_keys(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", x=np.ones((3, 8)), mask=np.ones(3))
    np.savez(tmp_path / "b.npz", x=np.ones((3, 8)), attention=np.ones(3))
    with pytest.raises(QvizError, match=r"b\.npz"):
        load_data(tmp_path, SEQ_INPUTS)


# ------------------------------------------------------------------------ bad inputs


def test_input_name_mismatch_multi_input(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.ones((2, 3, 8)), attention_mask=np.ones((2, 3)))
    with pytest.raises(QvizError, match="no array for input 'mask'"):
        load_data(tmp_path / "d.npz", SEQ_INPUTS)


def test_extra_arrays_are_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.ones((2, 3, 8)), mask=np.ones((2, 3)), y=np.ones(2))
    with pytest.raises(QvizError, match="does not take: y"):
        load_data(tmp_path / "d.npz", SEQ_INPUTS)


def test_single_input_with_several_unknown_keys(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", a=images(2), b=images(2))
    with pytest.raises(QvizError, match="model's input is 'x'"):
        load_data(tmp_path / "d.npz", IMAGE_INPUT)


def test_npy_for_multi_input_model(tmp_path: Path) -> None:
    np.save(tmp_path / "d.npy", np.ones((2, 3, 8)))
    with pytest.raises(QvizError, match="2 inputs"):
        load_data(tmp_path / "d.npy", SEQ_INPUTS)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((4, 3, 8, 9), r"axis 3 is 9 where the model needs 8"),
        ((4, 1, 8, 8), r"axis 1 is 1 where the model needs 3"),
        ((4, 3, 8), r"give N samples as \(\?, 3, 8, 8\)"),
        ((4, 1, 3, 8, 8), r"give N samples as \(\?, 3, 8, 8\)"),
    ],
)
def test_shape_mismatch(tmp_path: Path, shape: tuple[int, ...], message: str) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros(shape, np.float32))
    with pytest.raises(QvizError, match=message):
        load_data(tmp_path / "d.npz", IMAGE_INPUT)


@pytest.mark.parametrize(
    ("array", "spec_dtype"),
    [
        (np.zeros((2, 4), np.float32), np.int64),  # floats are not token ids
        (np.array([["a"] * 4] * 2), np.float32),  # strings
        (np.zeros((2, 4), np.complex64), np.float32),
    ],
)
def test_dtype_not_castable(tmp_path: Path, array: np.ndarray, spec_dtype: type) -> None:
    np.savez(tmp_path / "d.npz", ids=array)
    with pytest.raises(QvizError, match="no safe conversion"):
        load_data(tmp_path / "d.npz", (InputSpec("ids", (None, 4), np.dtype(spec_dtype)),))


def test_object_arrays_are_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "d.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(QvizError, match="pickle"):
        load_data(tmp_path / "d.npy", IMAGE_INPUT)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_names_input_and_sample(tmp_path: Path, bad: float) -> None:
    x = images(20)
    x[17, 1, 2, 3] = bad
    np.savez(tmp_path / "d.npz", x=x)
    with pytest.raises(QvizError, match=r"^data contains NaN/Inf in input 'x' \(sample 17\)$"):
        load_data(tmp_path / "d.npz", IMAGE_INPUT)


def test_nan_in_large_data_is_found_while_streaming(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(data_module, "EAGER_SCAN_BYTES", 0)  # pretend the data is huge
    x = images(10)
    x[6, 0, 0, 0] = np.nan
    np.savez(tmp_path / "d.npz", x=x)
    ds = load_data(tmp_path / "d.npz", IMAGE_INPUT)
    batches = ds.batches(4)
    next(batches)
    with pytest.raises(QvizError, match=r"input 'x' \(sample 6\)"):
        next(batches)


def test_nan_in_folder_counts_samples_across_files(tmp_path: Path) -> None:
    for i in range(4):
        x = np.ones((1, 3, 8, 8))
        if i == 3:
            x[0, 0, 0, 0] = np.inf
        np.savez(tmp_path / f"{i}.npz", x=x)
    with pytest.raises(QvizError, match=r"sample 3\)"):
        load_data(tmp_path, IMAGE_INPUT)


def test_empty_npz(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((0, 3, 8, 8), np.float32))
    with pytest.raises(QvizError, match="empty"):
        load_data(tmp_path / "d.npz", IMAGE_INPUT)


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(QvizError, match="empty"):
        load_data(tmp_path, IMAGE_INPUT)


def test_label_count_mismatch(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=images(4), labels=np.arange(3))
    with pytest.raises(QvizError, match="3 labels for 4 samples"):
        load_data(tmp_path / "d.npz", IMAGE_INPUT)


def test_sample_count_mismatch_between_inputs(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.ones((3, 5, 8)), mask=np.ones((2, 5)))
    with pytest.raises(QvizError, match="different sample counts"):
        load_data(tmp_path / "d.npz", SEQ_INPUTS)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("d.npz", b"not a zip at all", "not an .npz archive"),
        ("d.npy", b"\x93NUMPY garbage", "cannot read data file"),
        ("d.csv", b"1,2,3", "unsupported data file type"),
    ],
)
def test_unreadable_files(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(QvizError, match=message):
        load_data(tmp_path / name, IMAGE_INPUT)


def test_truncated_npz(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=images(50))
    data = (tmp_path / "d.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(QvizError):
        load_data(tmp_path / "cut.npz", IMAGE_INPUT)


def test_missing_data(tmp_path: Path) -> None:
    with pytest.raises(QvizError, match="not found"):
        load_data(tmp_path / "nope.npz", IMAGE_INPUT)


def test_peek_sample_without_model(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", img=images(3), labels=np.arange(3))
    sample = peek_sample(tmp_path / "d.npz")
    assert list(sample) == ["img"] and sample["img"].shape == (1, 3, 8, 8)
    np.save(tmp_path / "d.npy", images(3))
    assert list(peek_sample(tmp_path / "d.npy")) == ["input"]


# --------------------------------------------------------------------------- random


def test_random_data_is_labelled_random_and_deterministic() -> None:
    inputs = (*SEQ_INPUTS, InputSpec("ids", (None, 4), np.dtype(np.int64)))
    ds = random_data(inputs, 5, seed=3)
    assert ds.is_random and "RANDOM" in ds.description and ds.labels is None
    assert len(ds) == 5
    batches = list(ds.batches(2))
    assert [b["x"].shape for b in batches] == [(2, 32, 8), (2, 32, 8), (1, 32, 8)]
    assert batches[0]["ids"].dtype == np.int64
    again = random_data(inputs, 5, 3)
    np.testing.assert_array_equal(collect(ds, 2), collect(again, 5))  # batch size independent
    other = random_data(inputs, 5, 4)
    assert not np.array_equal(collect(ds, 5), collect(other, 5))


def test_random_data_needs_samples() -> None:
    with pytest.raises(QvizError, match="positive"):
        random_data(IMAGE_INPUT, 0)


def test_real_data_is_not_random(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=images(2))
    ds = load_data(tmp_path / "d.npz", IMAGE_INPUT)
    assert not ds.is_random and "RANDOM" not in ds.description


# ------------------------------------------------------------------------ Preprocess


def test_preprocess_parse_forms() -> None:
    p = Preprocess.parse(
        "size=224x200,scale=1/255,mean=0.485/0.456/0.406,std=0.229,0.224,0.225,layout=nhwc"
    )
    assert p.size == (224, 200) and p.layout == "NHWC"
    assert p.scale == pytest.approx(1 / 255)
    assert p.mean == (0.485, 0.456, 0.406) and p.std == (0.229, 0.224, 0.225)
    q = Preprocess.from_cli("size=28 scale=0.5; grayscale")
    assert q.size == (28, 28) and q.grayscale and q.scale == 0.5


@pytest.mark.parametrize(
    "text",
    ["size=0x4", "layout=NCWH", "std=0", "mean=1/2/3/4", "scale=-1", "banana", "colour=red"],
)
def test_preprocess_parse_errors(text: str) -> None:
    with pytest.raises(QvizError):
        Preprocess.parse(text)


def test_preprocess_json_round_trip(tmp_path: Path) -> None:
    p = Preprocess(size=(32, 16), mean=(0.5,), std=(0.25,), layout="NHWC", grayscale=True)
    (tmp_path / "p.json").write_text(json.dumps(p.to_dict()))
    assert Preprocess.from_json(tmp_path / "p.json") == p
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(QvizError, match="invalid JSON"):
        Preprocess.from_json(tmp_path / "bad.json")


# --------------------------------------------------------------------------- images


def encode_png(pixels: np.ndarray, *, color: int, depth: int = 8, filters: tuple[int, ...] = (0,),
               palette: np.ndarray | None = None) -> bytes:
    """A minimal PNG writer (for tests) that applies the given filter types row by row."""
    h = pixels.shape[0]
    if depth == 16:
        rows = pixels.astype(">u2").reshape(h, -1).view(np.uint8)
    elif depth < 8:
        bits = np.unpackbits(pixels.reshape(h, -1, 1).astype(np.uint8), axis=2)[:, :, 8 - depth:]
        rows = np.packbits(bits.reshape(h, -1), axis=1)
    else:
        rows = pixels.reshape(h, -1).astype(np.uint8)
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color]
    bpp = max(1, channels * depth // 8)
    out = bytearray()
    prev = np.zeros(rows.shape[1], np.int32)
    for y in range(h):
        kind = filters[y % len(filters)]
        cur = rows[y].astype(np.int32)
        left = np.concatenate([np.zeros(bpp, np.int32), cur[:-bpp]])
        upper_left = np.concatenate([np.zeros(bpp, np.int32), prev[:-bpp]])
        if kind == 0:
            pred = np.zeros_like(cur)
        elif kind == 1:
            pred = left
        elif kind == 2:
            pred = prev
        elif kind == 3:
            pred = (left + prev) // 2
        else:
            p = left + prev - upper_left
            pa, pb, pc = np.abs(p - left), np.abs(p - prev), np.abs(p - upper_left)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, upper_left))
        out.append(kind)
        out += ((cur - pred) % 256).astype(np.uint8).tobytes()
        prev = cur

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    width = pixels.shape[1]
    png = b"\x89PNG\r\n\x1a\n" + chunk(
        b"IHDR", struct.pack(">IIBBBBB", width, h, depth, color, 0, 0, 0)
    )
    if palette is not None:
        png += chunk(b"PLTE", palette.astype(np.uint8).tobytes())
    return png + chunk(b"IDAT", zlib.compress(bytes(out))) + chunk(b"IEND", b"")


@pytest.mark.parametrize("filters", [(0,), (1,), (2,), (3,), (4,), (0, 1, 2, 3, 4)])
@pytest.mark.parametrize(("color", "channels"), [(0, 1), (2, 3), (4, 2), (6, 4)])
def test_decode_png_filters_and_colour_types(
    filters: tuple[int, ...], color: int, channels: int
) -> None:
    pixels = np.random.default_rng(color).integers(0, 256, (7, 5, channels), dtype=np.uint8)
    decoded = decode_png(encode_png(pixels, color=color, filters=filters))
    np.testing.assert_array_equal(decoded, pixels)


def test_decode_png_16bit_palette_and_low_depth() -> None:
    deep = np.random.default_rng(0).integers(0, 65536, (4, 3, 3), dtype=np.uint16)
    np.testing.assert_array_equal(decode_png(encode_png(deep, color=2, depth=16, filters=(4,))),
                                  deep)
    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]])
    index = np.array([[0, 1, 2], [2, 1, 0]])
    decoded = decode_png(encode_png(index, color=3, palette=palette, filters=(1,)))
    np.testing.assert_array_equal(decoded, palette[index])
    gray1 = np.array([[0, 1, 1, 0, 1, 0, 0, 1, 1]])
    np.testing.assert_array_equal(decode_png(encode_png(gray1, color=0, depth=1))[:, :, 0],
                                  gray1 * 255)


def write_image_folder(root: Path, classes: dict[str, int], size: tuple[int, int] = (12, 10),
                       color: int = 2) -> dict[Path, np.ndarray]:
    written = {}
    rng = np.random.default_rng(0)
    channels = {0: 1, 2: 3}[color]
    for name, count in classes.items():
        folder = root / name if name else root
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (*size, channels), dtype=np.uint8)
            path = folder / f"img{i}.png"
            path.write_bytes(encode_png(pixels, color=color, filters=(4, 1)))
            written[path] = pixels
    return written


def test_image_folder_with_classes(tmp_path: Path) -> None:
    write_image_folder(tmp_path, {"cat": 2, "dog": 3}, size=(8, 8))
    prep = Preprocess(mean=(0.5,), std=(0.25,))
    ds = load_data(tmp_path, IMAGE_INPUT, prep)
    assert len(ds) == 5 and ds.class_names == ("cat", "dog")
    np.testing.assert_array_equal(ds.labels, [0, 0, 1, 1, 1])
    pixels = decode_png((tmp_path / "cat" / "img0.png").read_bytes())
    expected = ((pixels / 255.0 - 0.5) / 0.25).transpose(2, 0, 1)[None].astype(np.float32)
    np.testing.assert_allclose(ds.first_sample()["x"], expected, rtol=1e-5, atol=1e-5)
    assert [b["x"].shape for b in ds.batches(4)] == [(4, 3, 8, 8), (1, 3, 8, 8)]
    assert "5 images in 2 classes" in ds.description


def test_images_resized_to_the_models_size(tmp_path: Path) -> None:
    write_image_folder(tmp_path, {"": 3}, size=(20, 14))
    ds = load_data(tmp_path, IMAGE_INPUT)  # no Preprocess: size and layout from the model
    (batch,) = list(ds.batches(8))
    assert batch["x"].shape == (3, 3, 8, 8)
    assert 0.0 <= batch["x"].min() and batch["x"].max() <= 1.0
    assert ds.labels is None


def test_images_nhwc_and_grayscale(tmp_path: Path) -> None:
    write_image_folder(tmp_path, {"": 2}, size=(8, 8))
    nhwc = (InputSpec("img", (None, 8, 8, 3), F32),)
    assert load_data(tmp_path, nhwc).first_sample()["img"].shape == (1, 8, 8, 3)
    gray = (InputSpec("img", (None, 1, 8, 8), F32),)
    assert load_data(tmp_path, gray).first_sample()["img"].shape == (1, 1, 8, 8)
    with pytest.raises(QvizError, match="set grayscale"):
        load_data(tmp_path, gray, Preprocess())
    with pytest.raises(QvizError, match="use layout NHWC"):
        load_data(tmp_path, nhwc, Preprocess(layout="NCHW"))


def test_constant_image_stays_constant_when_resized(tmp_path: Path) -> None:
    pixels = np.full((30, 17, 3), 200, np.uint8)
    (tmp_path / "flat.png").write_bytes(encode_png(pixels, color=2))
    ds = load_data(tmp_path, IMAGE_INPUT, Preprocess(scale=1.0))
    np.testing.assert_allclose(ds.first_sample()["x"], 200.0, rtol=1e-5)


def test_image_folder_needs_pillow_for_jpeg(tmp_path: Path) -> None:
    try:
        import PIL  # noqa: F401
    except ImportError:
        (tmp_path / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        with pytest.raises(QvizError, match="pip install pillow"):
            load_data(tmp_path, IMAGE_INPUT)
    else:
        pytest.skip("Pillow is installed: JPEG files are readable")


def test_broken_image_is_named(tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(QvizError, match=r"broken\.png"):
        load_data(tmp_path, IMAGE_INPUT)


def test_images_and_npz_do_not_mix(tmp_path: Path) -> None:
    write_image_folder(tmp_path, {"": 1})
    np.savez(tmp_path / "x.npz", x=images(1))
    with pytest.raises(QvizError, match="mixes"):
        load_data(tmp_path, IMAGE_INPUT)
