"""Options shared by the subcommands: quantization settings, model, data and run arguments.

Every number an option takes is checked where argparse reads it (its ``type``), so a value
out of its domain is one line and exit code 2 before anything is loaded.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qviz.core.calibration.config import QuantConfig, TensorConfig
from qviz.core.calibration.methods import Method, MethodSpec
from qviz.core.data.dataset import Dataset, FeedLayout, Preprocess, load_data, random_data
from qviz.core.errors import QvizError
from qviz.core.files.validate import MAX_GROUP_SIZE
from qviz.core.model.loading import LoadedModel
from qviz.core.quant.formats import (
    FormatKind,
    Granularity,
    GranularityKind,
    NumberFormat,
    PerTensor,
)
from qviz.core.runtime.defaults import recommended_defaults
from qviz.core.runtime.sessions import KernelPrecision
from qviz.core.search.reference import DEFAULT_LIMIT
from qviz.core.search.sensitivity_cache import SensitivityCache

if TYPE_CHECKING:
    from qviz.core.evaluation.accumulators import OutputRole
    from qviz.core.evaluation.criteria import Criterion

CHOOSABLE_METHODS = [m.value for m in Method if m is not Method.MANUAL]
#: The activations' method of a new configuration (`QuantConfig()`), as the app starts.
DEFAULT_METHOD = QuantConfig().activations.spec.method.value
FORMAT_FAMILIES = ["int", "uint", "fp8_e4m3fn", "fp8_e5m2", "nf4"]
MIN_BINS = 16
MAX_BATCH_SIZE = 1 << 20
#: Sample counts (--random, --limit...) beyond this are typos rather than data sets.
MAX_SAMPLES = 1 << 40


# --------------------------------------------------------------------------- value types


def int_in(low: int, high: int, what: str = "") -> Callable[[str], int]:
    """An argparse type: an integer in [low, high]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}{what}, got {value}")
        if value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high}{what}, got {value}")
        return value

    return parse


def finite_float(text: str) -> float:
    """An argparse type: a finite number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def percentile(text: str) -> float:
    """An argparse type: a percentile in (0, 100]."""
    value = finite_float(text)
    if not 0.0 < value <= 100.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 100], got {value:g}")
    return value


def output_path(text: str) -> Path:
    """An argparse type for -o: argparse would turn "" into "." (the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty: give the file to write")
    return Path(text)


def input_path(text: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty: give a path")
    return Path(text)


batch_size_type = int_in(1, MAX_BATCH_SIZE)
sample_count = int_in(1, MAX_SAMPLES)


class OldSpelling(argparse.Action):
    """An option's old spelling, kept for one release and hidden from --help: it works as
    the new one does and says, once on stderr, what to write instead."""

    def __init__(self, option_strings: list[str], dest: str, *, new: str,
                 store: Any = None, **kwargs: Any) -> None:
        self.new = new
        self.store = store  # for a flag: the constant it stores
        if store is not None:
            kwargs["nargs"] = 0
        kwargs.setdefault("default", argparse.SUPPRESS)  # the new spelling's default stands
        kwargs["help"] = argparse.SUPPRESS
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        deprecated(option_string or self.option_strings[0], self.new)
        setattr(namespace, self.dest, self.store if self.store is not None else values)


def deprecated(old: str, new: str) -> None:
    sys.stderr.write(f"qviz: note: {old} is deprecated and goes in the next release; "
                     f"write {new}\n")


def add_quant_options(parser: argparse.ArgumentParser, *, format_alias: bool = True) -> None:
    """The settings that make a configuration. ``format_alias``: ``--format`` is an old
    spelling of ``--number-format`` (not in `qviz export`, where it named the file type)."""
    g = parser.add_argument_group("quantization settings")
    g.add_argument("--method", choices=CHOOSABLE_METHODS, default=DEFAULT_METHOD,
                   help="how activation ranges are chosen (weights: --weight-method)")
    g.add_argument("--weight-method", choices=CHOOSABLE_METHODS, default="minmax",
                   help="how weight ranges are chosen")
    g.add_argument("--percentile", type=percentile, default=99.99,
                   help="percentile p for the percentile method")
    g.add_argument("--granularity", choices=[k.value for k in GranularityKind],
                   default="per-channel", help="weight granularity; activations are per-tensor")
    g.add_argument("--group-size", type=int_in(1, MAX_GROUP_SIZE), default=128,
                   help="block size for per-group")
    if format_alias:
        g.add_argument("--format", dest="fmt", choices=FORMAT_FAMILIES, action=OldSpelling,
                       new="--number-format")
    g.add_argument("--number-format", dest="fmt", choices=FORMAT_FAMILIES, default="int",
                   help="number format family of the weights (nf4 is weight-only: activations "
                        "stay int8)")
    g.add_argument("--bits", type=int_in(2, 8), default=None,
                   help="bits for int/uint formats, 2-8 (default: 8; weights 7 on CPUs whose "
                        "int8 kernels may saturate 8-bit weights, said on stderr)")
    sym = g.add_mutually_exclusive_group()
    sym.add_argument("--symmetric", dest="symmetric", action="store_true", default=True,
                     help="symmetric weight ranges, zero point at 0 (default)")
    sym.add_argument("--asymmetric", dest="symmetric", action="store_false",
                     help="asymmetric ranges with a zero point")
    g.add_argument("--pow2-scale", action="store_true", help="round scales up to powers of two")
    g.add_argument("--act-format", dest="act_format", action=OldSpelling,
                   new="--act-number-format")
    g.add_argument("--act-number-format", dest="act_format", metavar="FORMAT", default=None,
                   help="activation number format (e.g. uint8, int8, fp8_e4m3fn); default: "
                        "with --number-format int, unsigned asymmetric of 8 bits (ONNX "
                        "Runtime's pairing), otherwise the weights' format")
    act_sym = g.add_mutually_exclusive_group()
    act_sym.add_argument("--act-symmetric", dest="act_symmetric", action="store_true",
                         default=None, help="symmetric activation ranges (default: as the "
                         "weights, except with --number-format int)")
    act_sym.add_argument("--act-asymmetric", dest="act_symmetric", action="store_false",
                         help="asymmetric activation ranges with a zero point (default with "
                         "--number-format int)")


def _format(family: str, bits: int, symmetric: bool, pow2: bool) -> NumberFormat:
    text = f"{family}{bits}" if family in ("int", "uint") else family
    return NumberFormat.parse(text, symmetric=symmetric, pow2_scale=pow2)


def weight_bits(args: argparse.Namespace) -> tuple[int, int]:
    """The weights' and the activations' bits: --bits, or the defaults that hold on this CPU
    (`recommended_defaults`: 7-bit int weights where the int8 kernels may saturate)."""
    if args.bits is not None:
        return args.bits, args.bits
    if args.fmt != "int":
        return 8, 8
    defaults = recommended_defaults()
    bits = defaults.config.weights.fmt.bits
    if defaults.note is not None and not getattr(args, "_bits_note_said", False):
        sys.stderr.write(f"qviz: note: {defaults.note} Write --bits 8 to choose 8.\n")
        args._bits_note_said = True
    return bits, 8


def config_from_args(args: argparse.Namespace) -> QuantConfig:
    """The QuantConfig that `qviz report/export/evaluate` options describe."""
    w_bits, a_bits = weight_bits(args)
    weight_fmt = _format(args.fmt, w_bits, args.symmetric, args.pow2_scale)
    act_symmetric = args.symmetric if args.act_symmetric is None else args.act_symmetric
    if args.act_format is not None:
        act_fmt = NumberFormat.parse(args.act_format, symmetric=act_symmetric,
                                     pow2_scale=args.pow2_scale)
    elif weight_fmt.kind is FormatKind.NF4:  # weight-only format: activations stay int8
        act_fmt = NumberFormat(symmetric=act_symmetric, pow2_scale=args.pow2_scale)
    elif args.fmt == "int" and args.act_symmetric is None:
        # The app's default and ONNX Runtime's pairing: signed symmetric weights, unsigned
        # asymmetric activations (all codes used on ReLU outputs).
        act_fmt = _format("uint", a_bits, False, args.pow2_scale)
    else:
        act_fmt = _format(args.fmt, a_bits, act_symmetric, args.pow2_scale)
    if act_fmt.kind is FormatKind.NF4:
        raise QvizError("nf4 is a weight-only format; choose another --act-number-format")
    weight_method = Method(args.weight_method)
    weights = TensorConfig(
        spec=MethodSpec.of(weight_method, percentile=args.percentile),
        granularity=Granularity.parse(args.granularity, group_size=args.group_size),
        fmt=weight_fmt,
    )
    activations = TensorConfig(
        spec=MethodSpec.of(Method(args.method), percentile=args.percentile),
        granularity=PerTensor(),
        fmt=act_fmt,
    )
    return QuantConfig(weights=weights, activations=activations)


def add_data_options(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    g = parser.add_argument_group("data")
    src = g.add_mutually_exclusive_group(required=required)
    src.add_argument("--data", type=input_path,
                     help=".npz, .npy, a folder of .npz samples, or a folder of images")
    src.add_argument("--random", type=sample_count, metavar="N",
                     help="use N samples of RANDOM input (labelled as such in every output)")
    g.add_argument("--preprocess", metavar="JSON_OR_SPEC",
                   help="image preprocessing: a JSON file, or "
                        "'size=224x224,scale=0.00392,mean=0.485/0.456/0.406,"
                        "std=0.229/0.224/0.225,layout=NCHW'")
    lay = parser.add_argument_group(
        "data layout (read from the model's signature; state it where that is ambiguous)"
    )
    lay.add_argument("--batch-axis", action="append", default=[], metavar="NAME=AXIS",
                     help="the axis of input NAME that holds samples (NAME=none: feed the "
                          "array whole, the same for every batch); repeatable")
    lay.add_argument("--const", action="append", default=[], metavar="NAME=VALUE",
                     help="feed input NAME a constant: every element VALUE (e.g. a scalar "
                          "time step); repeatable")
    lay.add_argument("--state", action="append", default=[], metavar="OUTPUT=INPUT",
                     help="stateful model: feed output OUTPUT back as input INPUT of the next "
                          "sample (the data gives the first value); samples then run one at "
                          "a time, in order; repeatable")


def layout_from_args(args: argparse.Namespace) -> FeedLayout:
    return FeedLayout.parse(
        getattr(args, "batch_axis", None) or (),
        getattr(args, "const", None) or (),
        getattr(args, "state", None) or (),
    )


def load_dataset(args: argparse.Namespace, model: LoadedModel) -> Dataset:
    """The data the options name, laid out for ``model`` (stated layout checked against it)."""
    from qviz.core.data.feeding import check_states

    layout = layout_from_args(args)
    check_states(model, layout.states)
    if getattr(args, "random", None) is not None:
        return random_data(model.inputs, args.random, layout=layout)
    preprocess = None
    if getattr(args, "preprocess", None):
        spec = args.preprocess
        preprocess = (
            Preprocess.from_json(Path(spec)) if spec.endswith(".json") else Preprocess.parse(spec)
        )
    return load_data(args.data, model.inputs, preprocess, layout)


def add_model_and_source(parser: argparse.ArgumentParser) -> None:
    """MODEL plus where its quantization comes from: a saved config or stats + settings."""
    parser.add_argument("model", help="model: .onnx, TorchScript, .pt2, or package.module:factory")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--config", type=input_path,
        help="qviz config file (its saved scales are used as they are)",
    )
    source.add_argument(
        "--stats",
        type=input_path,
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
    names = {"fmt": "--number-format", "act_format": "--act-number-format", **(flags or {})}
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


# ----------------------------------------------------------------------- measurement runs


def add_kernel_options(g: argparse._ArgumentGroup, *, native: bool) -> None:
    """Where the quantized numbers come from, the same two words in every command that runs
    the quantized model; ``native`` is the command's default."""
    which = g.add_mutually_exclusive_group()
    which.add_argument(
        "--native", dest="native", action="store_true", default=native,
        help="run ONNX Runtime's fused integer kernels, as production does" +
        (" (default)" if native else "; the mismatch with the simulation is reported"),
    )
    which.add_argument(
        "--simulation", dest="native", action="store_false",
        help="run the Q/DQ simulation op by op (float arithmetic on quantized values)" +
        ("" if native else " (default)"),
    )
    g.add_argument(
        "--precise-int8",
        action="store_true",
        help="native runs use ORT's exact U8U8 kernels (session.x64quantprecision=1): no "
        "16-bit saturation on AVX2 CPUs without VNNI",
    )


def add_output_role(g: argparse._ArgumentGroup) -> None:
    from qviz.core.evaluation.accumulators import OutputRole

    g.add_argument(
        "--outputs", choices=[r.value for r in OutputRole], default=OutputRole.AUTO.value,
        help="what the model's outputs hold: class scores (top-1 agreement and accuracy "
        "apply) or values such as embeddings (cosine, SQNR and KL only); auto: class scores "
        "where the labels fit, the output comes from Softmax, LogSoftmax or Gemm, or its name "
        "says logits, probabilities or scores",
    )


def role_from_args(args: argparse.Namespace, criteria: Sequence[Criterion] = ()) -> OutputRole:
    """--outputs; a criterion on top-1 agreement says the outputs are class scores."""
    from qviz.core.evaluation.accumulators import OutputRole
    from qviz.core.evaluation.criteria import CriterionMetric

    role = OutputRole(args.outputs)
    if role is OutputRole.AUTO and any(c.metric is CriterionMetric.AGREEMENT for c in criteria):
        return OutputRole.CLASSES
    return role


def add_limit(g: argparse._ArgumentGroup, default: int | None, what: str) -> None:
    shown = "all" if default is None else str(default)
    g.add_argument("--limit", type=parse_limit, default=default, metavar="N",
                   help=f"{what} (default {shown}; 'all' for every sample)")


def add_run_options(p: argparse.ArgumentParser) -> None:
    """How the variants run: shared by `qviz sensitivity` and `qviz mixed`."""
    g = p.add_argument_group("measurement")
    add_limit(g, DEFAULT_LIMIT, "samples each variant runs on")
    g.add_argument("--batch-size", type=batch_size_type, default=128,
                   help="samples per run of the model")
    add_kernel_options(g, native=True)
    g.add_argument("--cache-dir", type=input_path, help="sensitivity cache folder "
                   "(default ~/.cache/qviz/sensitivity)")  # fmt: skip
    g.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")


def parse_limit(text: str) -> int | None:
    """``N`` (at least 1) or ``all``."""
    if text.strip().lower() == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a sample count or 'all', got {text!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    if value > MAX_SAMPLES:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_SAMPLES}, got {value}")
    return value


def check_run_options(args: argparse.Namespace) -> None:
    if not args.native and args.precise_int8:
        raise QvizError(
            "--precise-int8 chooses native kernels; it does not apply with --simulation"
        )
    if args.no_cache and args.cache_dir is not None:
        raise QvizError("--cache-dir and --no-cache contradict each other")
    if args.cache_dir is not None and args.cache_dir.exists() and not args.cache_dir.is_dir():
        raise QvizError(f"--cache-dir {args.cache_dir} is a file, not a folder")


def cache_from_args(args: argparse.Namespace) -> SensitivityCache | None:
    return None if args.no_cache else SensitivityCache(args.cache_dir)


def precision_from_args(args: argparse.Namespace) -> KernelPrecision:
    return KernelPrecision.PRECISE if args.precise_int8 else KernelPrecision.DEFAULT
