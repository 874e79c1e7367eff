"""Options shared by the subcommands: quantization settings, model and data arguments."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from qviz.core.calibration.config import QuantConfig, TensorConfig
from qviz.core.calibration.methods import Method, MethodSpec
from qviz.core.data.dataset import Dataset, Preprocess, load_data, random_data
from qviz.core.errors import QvizError
from qviz.core.model.loading import LoadedModel
from qviz.core.quant.formats import (
    Granularity,
    GranularityKind,
    NumberFormat,
    PerGroup,
    PerTensor,
)

CHOOSABLE_METHODS = [m.value for m in Method if m is not Method.MANUAL]
FORMAT_FAMILIES = ["int", "uint", "fp8_e4m3fn", "fp8_e5m2", "nf4", "mxfp4", "nvfp4"]


def add_quant_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("quantization settings")
    g.add_argument("--method", choices=CHOOSABLE_METHODS, default="entropy",
                   help="how activation ranges are chosen (and weights', unless --weight-method)")
    g.add_argument("--weight-method", choices=CHOOSABLE_METHODS, default=None,
                   help="how weight ranges are chosen (default: minmax)")
    g.add_argument("--percentile", type=float, default=99.99,
                   help="percentile p for --method percentile (default 99.99)")
    g.add_argument("--granularity", choices=[k.value for k in GranularityKind],
                   default="per-channel", help="weight granularity; activations are per-tensor")
    g.add_argument("--group-size", type=int, default=128, help="block size for per-group")
    g.add_argument("--format", dest="fmt", choices=FORMAT_FAMILIES, default="int",
                   help="number format family (nf4, mxfp4 and nvfp4 are weight-only: "
                        "activations stay int8 unless --weight-only; mxfp4 and nvfp4 are "
                        "per group of 32 and 16)")
    g.add_argument("--bits", type=int, default=8, help="bits for int/uint formats (2-8)")
    sym = g.add_mutually_exclusive_group()
    sym.add_argument("--symmetric", dest="symmetric", action="store_true", default=True,
                     help="symmetric ranges, zero point at 0 (default)")
    sym.add_argument("--asymmetric", dest="symmetric", action="store_false",
                     help="asymmetric ranges with a zero point")
    g.add_argument("--pow2-scale", action="store_true", help="round scales up to powers of two")
    g.add_argument("--act-format", metavar="FORMAT", default=None,
                   help="activation format (e.g. uint8, int8, fp8_e4m3fn); default: with --format "
                        "int, unsigned asymmetric of the same bits (ONNX Runtime's pairing), "
                        "otherwise the weights' format")
    g.add_argument("--weight-only", action="store_true",
                   help="quantize the weights only; activations stay float (as large "
                        "language models are quantized: int4/int8 per group, FP4)")
    act_sym = g.add_mutually_exclusive_group()
    act_sym.add_argument("--act-symmetric", dest="act_symmetric", action="store_true",
                         default=None, help="symmetric activation ranges")
    act_sym.add_argument("--act-asymmetric", dest="act_symmetric", action="store_false",
                         help="asymmetric activation ranges with a zero point")


def _format(family: str, bits: int, symmetric: bool, pow2: bool) -> NumberFormat:
    text = f"{family}{bits}" if family in ("int", "uint") else family
    return NumberFormat.parse(text, symmetric=symmetric, pow2_scale=pow2)


def config_from_args(args: argparse.Namespace) -> QuantConfig:
    """The QuantConfig that `qviz report/export/evaluate` options describe."""
    if not 0.0 < args.percentile <= 100.0:
        raise QvizError(f"--percentile must be in (0, 100], got {args.percentile}")
    if args.group_size < 1:
        raise QvizError(f"--group-size must be positive, got {args.group_size}")
    weight_fmt = _format(args.fmt, args.bits, args.symmetric, args.pow2_scale)
    act_symmetric = args.symmetric if args.act_symmetric is None else args.act_symmetric
    if args.act_format is not None:
        act_fmt = NumberFormat.parse(args.act_format, symmetric=act_symmetric,
                                     pow2_scale=args.pow2_scale)
    elif weight_fmt.weight_only:  # weight-only format: activations stay int8
        act_fmt = NumberFormat(symmetric=act_symmetric, pow2_scale=args.pow2_scale)
    elif args.fmt == "int" and args.act_symmetric is None:
        # The app's default and ONNX Runtime's pairing: signed symmetric weights, unsigned
        # asymmetric activations (all codes used on ReLU outputs).
        act_fmt = _format("uint", args.bits, False, args.pow2_scale)
    else:
        act_fmt = _format(args.fmt, args.bits, act_symmetric, args.pow2_scale)
    if act_fmt.weight_only:
        raise QvizError(f"{act_fmt.spec} is a weight-only format; choose another --act-format")
    weight_method = Method(args.weight_method or "minmax")
    granularity = Granularity.parse(args.granularity, group_size=args.group_size)
    if weight_fmt.block_size is not None:  # a block format brings its own blocks
        granularity = PerGroup(weight_fmt.block_size)
    weights = TensorConfig(
        spec=MethodSpec.of(weight_method, percentile=args.percentile),
        granularity=granularity,
        fmt=weight_fmt,
    )
    activations = TensorConfig(
        spec=MethodSpec.of(Method(args.method), percentile=args.percentile),
        granularity=PerTensor(),
        fmt=act_fmt,
        quantize=not getattr(args, "weight_only", False),
    )
    return QuantConfig(weights=weights, activations=activations)


def add_data_options(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    g = parser.add_argument_group("data")
    src = g.add_mutually_exclusive_group(required=required)
    src.add_argument("--data", type=Path,
                     help=".npz, .npy, a folder of .npz samples, or a folder of images")
    src.add_argument("--random", type=int, metavar="N",
                     help="use N samples of RANDOM input (labelled as such in every output)")
    g.add_argument("--preprocess", metavar="JSON_OR_SPEC",
                   help="image preprocessing: a JSON file, or "
                        "'size=224x224,scale=0.00392,mean=0.485/0.456/0.406,"
                        "std=0.229/0.224/0.225,layout=NCHW'")


def load_dataset(args: argparse.Namespace, model: LoadedModel) -> Dataset:
    if getattr(args, "random", None) is not None:
        if args.random < 1:
            raise QvizError(f"--random needs a positive sample count, got {args.random}")
        return random_data(model.inputs, args.random)
    preprocess = None
    if getattr(args, "preprocess", None):
        spec = args.preprocess
        preprocess = (
            Preprocess.from_json(Path(spec)) if spec.endswith(".json") else Preprocess.parse(spec)
        )
    return load_data(args.data, model.inputs, preprocess)


def add_model_and_source(parser: argparse.ArgumentParser) -> None:
    """MODEL plus where its quantization comes from: a saved config or stats + settings."""
    parser.add_argument("model", help="model: .onnx, TorchScript, .pt2, or package.module:factory")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--config", type=Path, help="qviz config file (its saved scales are used as they are)"
    )
    source.add_argument(
        "--stats",
        type=Path,
        help="stats file from `qviz collect`; the quantization settings below derive the "
        "configuration (as in `qviz report`)",
    )


def quant_defaults() -> dict[str, Any]:
    """The quantization options' default values, by argparse destination."""
    parser = argparse.ArgumentParser(add_help=False)
    add_quant_options(parser)
    return vars(parser.parse_args([]))


def refuse_settings_with_config(
    args: argparse.Namespace,
    config: Path,
    *,
    where: str = "with --stats",
    flags: Mapping[str, str] | None = None,
) -> None:
    """A config file carries its own settings; silently ignoring --bits would mislead."""
    names = flags or {}
    given = [
        names.get(k, f"--{k.replace('_', '-')}")
        for k, v in quant_defaults().items()
        if getattr(args, k) != v
    ]
    if given:
        raise QvizError(
            f"{', '.join(given)} only apply {where}; the config file {config} holds its own "
            "settings"
        )
