"""Images as model input: decoding (Pillow, or qviz's PNG reader), resizing and normalizing."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from qviz.core.data.arrays import InMemory
from qviz.core.data.batching import Chunk, Dataset
from qviz.core.data.checks import check_batched
from qviz.core.data.layout import FeedReason, InputFeed, shape_text
from qviz.core.data.png import decode_png
from qviz.core.errors import QvizError
from qviz.core.files.validate import read_json
from qviz.core.model.loading import InputSpec

PNG_SUFFIXES = frozenset({".png"})
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
_LAYOUTS = ("NCHW", "NHWC")
#: Larger images are typos (and a resize would need gigabytes).
MAX_IMAGE_SIDE = 1 << 14


@dataclass(frozen=True)
class Preprocess:
    """How images become model input: resize, scale, normalize, lay out.

    ``value = (pixel * scale - mean[c]) / std[c]`` per channel after resizing to ``size``
    (height, width) with an antialiased bilinear filter; ``size=None`` takes the model's fixed
    height and width, or keeps each image's own size when those are dynamic. ``mean``/``std``
    have one entry (all channels) or one per channel.
    """

    size: tuple[int, int] | None = None
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: str = "NCHW"
    grayscale: bool = False

    def __post_init__(self) -> None:
        if self.size is not None:
            size = tuple(self.size)
            if (
                len(size) != 2
                or not all(isinstance(s, int) and not isinstance(s, bool) for s in size)
                or not all(1 <= s <= MAX_IMAGE_SIDE for s in size)
            ):
                raise QvizError(
                    f"preprocess size must be two integers in 1..{MAX_IMAGE_SIDE}, got {self.size}"
                )
            object.__setattr__(self, "size", (int(size[0]), int(size[1])))
        try:
            object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
            object.__setattr__(self, "std", tuple(float(s) for s in self.std))
            object.__setattr__(self, "scale", float(self.scale))
        except (TypeError, ValueError) as exc:
            raise QvizError(f"preprocess scale, mean and std must be numbers ({exc})") from None
        if not all(math.isfinite(m) for m in self.mean):
            raise QvizError(f"preprocess mean must be finite, got {self.mean}")
        object.__setattr__(self, "layout", str(self.layout).upper())
        if self.layout not in _LAYOUTS:
            raise QvizError(f"preprocess layout must be NCHW or NHWC, got '{self.layout}'")
        if not self.mean or not self.std:
            raise QvizError("preprocess mean and std need at least one value")
        if any(s == 0 or not math.isfinite(s) for s in self.std):
            raise QvizError(f"preprocess std must be finite and non-zero, got {self.std}")
        if not math.isfinite(self.scale) or self.scale <= 0:
            raise QvizError(f"preprocess scale must be positive, got {self.scale}")
        channels = 1 if self.grayscale else 3
        for label, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, channels):
                raise QvizError(
                    f"preprocess {label} has {len(values)} values; give 1 or {channels}"
                )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what :meth:`from_dict` reads back)."""
        return {
            "size": list(self.size) if self.size else None,
            "scale": self.scale,
            "mean": list(self.mean),
            "std": list(self.std),
            "layout": self.layout,
            "grayscale": self.grayscale,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocess:
        """Build from a mapping with the field names; unknown keys are an error."""
        known = {"size", "scale", "mean", "std", "layout", "grayscale"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise QvizError(f"unknown preprocess setting(s): {', '.join(map(repr, unknown))}")
        kwargs: dict[str, Any] = {}
        try:
            if data.get("size") is not None:
                size = data["size"]
                kwargs["size"] = (int(size), int(size)) if isinstance(size, int) else tuple(size)
            if "scale" in data:
                kwargs["scale"] = _number(data["scale"])
            for key in ("mean", "std"):
                if key in data:
                    v = data[key]
                    kwargs[key] = (_number(v),) if isinstance(v, int | float | str) else tuple(
                        _number(x) for x in v
                    )
            if "layout" in data:
                kwargs["layout"] = str(data["layout"])
            if "grayscale" in data:
                kwargs["grayscale"] = bool(data["grayscale"])
        except (TypeError, ValueError, ZeroDivisionError) as exc:
            raise QvizError(f"bad preprocess setting: {exc}") from exc
        return cls(**kwargs)

    @classmethod
    def from_json(cls, path: str | Path) -> Preprocess:
        """Read a JSON object with the field names (``{"size": [224, 224], ...}``)."""
        p = Path(path)
        data = read_json(p, "a preprocess file", max_bytes=1 << 20)
        if not isinstance(data, dict):
            raise QvizError(f"preprocess file '{p.name}' must hold a JSON object")
        return cls.from_dict(data)

    @classmethod
    def parse(cls, text: str) -> Preprocess:
        """Parse command-line text: ``key=value`` pairs separated by commas, semicolons or
        spaces; lists use ``/`` (``mean=0.485/0.456/0.406``) or continue after commas; size is
        ``224x224`` or ``224``; scale may be a fraction (``1/255``); ``grayscale`` alone means
        true. Example: ``size=224x224,scale=1/255,mean=0.485/0.456/0.406,layout=NCHW``.
        """
        fields: dict[str, list[str]] = {}
        current: str | None = None
        for token in re.split(r"[,;\s]+", text.strip()):
            if not token:
                continue
            if "=" in token:
                key, _, value = token.partition("=")
                current = key.strip().lower()
                fields[current] = [value.strip()]
            elif token.lower() == "grayscale":
                fields["grayscale"] = ["true"]
                current = None
            elif current in ("mean", "std"):
                fields[current].append(token)
            else:
                raise QvizError(f"cannot read preprocess setting '{token}' in '{text}'")
        data: dict[str, Any] = {}
        try:
            for key, values in fields.items():
                if key == "size":
                    parts = re.split(r"[x/]", values[0].lower())
                    parts = [p for p in parts if p] + values[1:]
                    dims = [int(p) for p in parts]
                    data["size"] = (dims[0], dims[0]) if len(dims) == 1 else tuple(dims)
                elif key in ("mean", "std"):
                    data[key] = tuple(
                        _number(v) for item in values for v in item.split("/") if v
                    )
                elif key == "scale":
                    data["scale"] = _number(values[0])
                elif key == "grayscale":
                    data["grayscale"] = values[0].lower() in ("1", "true", "yes", "on")
                else:
                    data[key] = values[0]
        except (ValueError, ZeroDivisionError) as exc:
            raise QvizError(f"cannot read preprocess settings '{text}': {exc}") from exc
        return cls.from_dict(data)

    #: The brief's name for :meth:`parse`.
    from_cli = parse

    def describe(self) -> str:
        size = f"{self.size[0]}x{self.size[1]}" if self.size else "native size"
        return (
            f"{size}, scale {self.scale:.6g}, mean {self.mean}, std {self.std}, {self.layout}"
            + (", grayscale" if self.grayscale else "")
        )


def _number(value: Any) -> float:
    """A float from a number or text such as "0.5" or "1/255"."""
    if isinstance(value, str) and "/" in value:
        return float(Fraction(value.strip()))
    return float(value)


@dataclass(frozen=True)
class ImagePlan:
    """A Preprocess resolved against the model input: what every image becomes."""

    prep: Preprocess
    channels: int

    def apply(self, image: np.ndarray) -> np.ndarray:
        """uint8/uint16 (H, W, C) -> float32 (1, C, H, W) or (1, H, W, C)."""
        prep = self.prep
        img: np.ndarray = image.astype(np.float32)
        if image.dtype == np.uint16:
            img /= 257.0  # 16-bit PNGs: same 0..255 scale as 8-bit images
        if img.shape[2] in (2, 4):
            img = img[:, :, :-1]  # drop alpha
        if self.channels == 1 and img.shape[2] == 3:
            # ITU-R 601-2 luma, as Pillow's convert("L").
            img = img @ np.array([0.299, 0.587, 0.114], np.float32)[:, None]
        elif self.channels == 3 and img.shape[2] == 1:
            img = np.repeat(img, 3, axis=2)
        if prep.size is not None and img.shape[:2] != prep.size:
            img = _resize(img, prep.size)
        img = img * np.float32(prep.scale)
        img = (img - np.asarray(prep.mean, np.float32)) / np.asarray(prep.std, np.float32)
        if prep.layout == "NCHW":
            img = img.transpose(2, 0, 1)
        return np.ascontiguousarray(img[None], dtype=np.float32)


def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of a triangle filter widened when shrinking (antialiasing), the
    same filter Pillow's BILINEAR resize uses."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    centers = (np.arange(n_out) + 0.5) * scale
    pixels = np.arange(n_in) + 0.5
    w = np.maximum(0.0, 1.0 - np.abs(pixels[None, :] - centers[:, None]) / support)
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def _resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    wy = _resize_matrix(img.shape[0], h)
    wx = _resize_matrix(img.shape[1], w)
    out = np.tensordot(wy, img, axes=(1, 0))  # (h, W, C)
    return np.tensordot(wx, out, axes=(1, 1)).transpose(1, 0, 2)  # (h, w, C)


def plan_images(
    inputs: tuple[InputSpec, ...], preprocess: Preprocess | None
) -> tuple[ImagePlan, str]:
    if len(inputs) > 1:
        raise QvizError(
            f"image folders feed single-input models; this one has {len(inputs)} inputs"
        )
    spec = inputs[0] if inputs else None
    shape = spec.shape if spec is not None else ()
    prep = preprocess
    if prep is None:
        # No settings given: read the layout and channel count off the model's input.
        layout, gray = "NCHW", False
        if len(shape) == 4:
            if shape[1] not in (1, 3) and shape[3] in (1, 3):
                layout = "NHWC"
            channels = shape[1] if layout == "NCHW" else shape[3]
            gray = channels == 1
        prep = Preprocess(layout=layout, grayscale=gray)
    if len(shape) == 4:
        h_axis, w_axis, c_axis = (2, 3, 1) if prep.layout == "NCHW" else (1, 2, 3)
        want_c = shape[c_axis]
        have_c = 1 if prep.grayscale else 3
        if want_c is not None and want_c != have_c:
            hint = "set grayscale" if want_c == 1 else (
                "use layout NHWC" if prep.layout == "NCHW" and shape[3] in (1, 3) else
                "use layout NCHW" if prep.layout == "NHWC" and shape[1] in (1, 3) else
                "check the layout"
            )
            raise QvizError(
                f"input '{spec.name if spec else ''}' expects {want_c} channels on axis "
                f"{c_axis} ({shape_text(shape)}, {prep.layout}) but images give {have_c}: {hint}"
            )
        height, width = shape[h_axis], shape[w_axis]
        if prep.size is None and height is not None and width is not None:
            prep = Preprocess(
                size=(int(height), int(width)), scale=prep.scale,
                mean=prep.mean, std=prep.std, layout=prep.layout, grayscale=prep.grayscale,
            )
        elif prep.size is not None:
            for axis, value in ((h_axis, prep.size[0]), (w_axis, prep.size[1])):
                if shape[axis] is not None and shape[axis] != value:
                    raise QvizError(
                        f"preprocess size {prep.size[0]}x{prep.size[1]} does not fit input "
                        f"'{spec.name if spec else ''}' {shape_text(shape)}"
                    )
    elif shape:
        raise QvizError(
            f"input '{spec.name if spec else ''}' has shape {shape_text(shape)}; images need "
            "a 4-D input (NCHW or NHWC)"
        )
    return ImagePlan(prep, 1 if prep.grayscale else 3), (spec.name if spec else "input")


def load_images(
    folder: Path,
    files: list[tuple[Path, int | None]],
    class_names: tuple[str, ...] | None,
    inputs: tuple[InputSpec, ...],
    feeds: tuple[InputFeed, ...],
    preprocess: Preprocess | None,
) -> Dataset:
    plan, name = plan_images(inputs, preprocess)
    chunks: list[Chunk] = [ImageChunk(f, name, plan) for f, _ in files]
    # Decode the first image now: an unreadable format or a shape mismatch shows at load.
    first = plan.apply(read_image(files[0][0]))
    if feeds:
        feed = feeds[0]
        if feed.batch_axis != 0:
            raise QvizError(
                f"input '{feed.name}' {shape_text(feed.spec.shape)} is batched along axis "
                f"{feed.batch_axis}; image folders feed inputs batched along axis 0"
            )
    else:
        spec = InputSpec(name, (None, *first.shape[1:]), np.dtype(np.float32))
        feed = InputFeed(spec, 0, FeedReason.FROM_DATA)
    check_batched(InMemory(first), feed, f"'{files[0][0].name}'")
    labels = None
    if class_names is not None:
        labels = np.array([label for _, label in files], dtype=np.int64)
    classes = f" in {len(class_names)} classes" if class_names else ""
    description = f"folder {folder.name}/: {len(files)} images{classes}, {plan.prep.describe()}"
    return Dataset(
        inputs=(feed.spec,), feeds=(feed,), chunks=chunks, description=description, labels=labels,
        class_names=class_names,
    )


def read_image(path: Path) -> np.ndarray:
    """An image as uint8 (or uint16) (H, W, C): Pillow when installed, else our PNG reader."""
    try:
        from PIL import Image  # type: ignore[import-not-found]  # optional
    except ImportError:
        Image = None
    try:
        if Image is not None:
            with Image.open(path) as im:
                im = im.convert("RGBA" if im.mode in ("RGBA", "LA", "P", "PA") else (
                    "L" if im.mode in ("L", "1", "I;16", "I") else "RGB"))
                arr = np.asarray(im)
        else:
            if path.suffix.lower() not in PNG_SUFFIXES:
                raise QvizError(
                    f"reading {path.suffix} images needs Pillow: pip install pillow "
                    "(PNG files are read without it)"
                )
            arr = decode_png(path.read_bytes())
    except QvizError:
        raise
    except Exception as exc:  # Pillow raises many types; all mean "not a readable image"
        raise QvizError(f"cannot read image '{path.name}': {exc}") from exc
    return arr[:, :, None] if arr.ndim == 2 else arr


class ImageChunk(Chunk):
    """One image file, decoded and preprocessed when read."""

    def __init__(self, path: Path, name: str, prep: ImagePlan) -> None:
        super().__init__(1, {}, path.name)
        self.path, self.name, self.prep = path, name, prep

    @property
    def shapes_known(self) -> bool:
        return False

    def read(self, name: str, start: int, stop: int) -> np.ndarray:
        return self.prep.apply(read_image(self.path))
