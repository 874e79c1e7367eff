"""The transform options shared by report, evaluate, sensitivity, mixed and export.

They set the defaults of every tensor of their kind, as the other quantization options do:
``--smoothquant`` and ``--equalize`` on activations (every layer reading one shares its
scale), ``--gptq`` and ``--bias-correction`` on weights.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from qviz.cli.given import record_given
from qviz.core.calibration.config import QuantConfig
from qviz.core.transforms.settings import SmoothQuant, Transforms


def add_transform_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("transforms")
    g.add_argument("--smoothquant", metavar="ALPHA|auto", default=None,
                   help="SmoothQuant: move activation outliers into the weights with strength "
                        "ALPHA in [0, 1], or auto (per layer, the alpha with the smallest "
                        "estimated output error); needs per-channel statistics")
    g.add_argument("--equalize", action="store_true",
                   help="cross-layer equalization of Conv/Gemm pairs joined by ReLU, ReLU6, "
                        "LeakyReLU or nothing")
    g.add_argument("--bias-correction", action="store_true",
                   help="remove each output channel's expected shift from weight quantization "
                        "(from the input's per-channel means)")
    g.add_argument("--gptq", action="store_true",
                   help="GPTQ rounding of weights (needs Gram matrices: qviz collect --gram)")
    record_given(g._group_actions)  # transforms are settings too (`settings_given`)


def apply_transform_options(args: argparse.Namespace, config: QuantConfig) -> QuantConfig:
    """`config` with the transforms the options ask for on its defaults (QvizError for an
    alpha outside [0, 1])."""
    smooth = None if args.smoothquant is None else SmoothQuant.parse(args.smoothquant)
    acts = Transforms(smoothquant=smooth, equalize=bool(args.equalize))
    weights = Transforms(bias_correction=bool(args.bias_correction), gptq=bool(args.gptq))
    return replace(
        config,
        weights=replace(config.weights, transforms=weights),
        activations=replace(config.activations, transforms=acts),
    )
