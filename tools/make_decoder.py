"""Make synthetic Llama-style decoders (and a planted-outlier block) with their data.

Usage::

    .venv/bin/python tools/make_decoder.py -o /tmp/dec/tiny.onnx              # the test model
    .venv/bin/python tools/make_decoder.py --params 22e6 -o /tmp/dec/d22m.onnx
    .venv/bin/python tools/make_decoder.py --params 1e9 -o /tmp/dec/d1b.onnx  # 4 GB .onnx.data
    .venv/bin/python tools/make_decoder.py --block -o /tmp/dec/block.onnx      # issue-10 block

A decoder is token embedding (Gather), N blocks of RMSNorm -> multi-head causal self-attention
with rotary embeddings -> residual add -> RMSNorm -> SwiGLU MLP -> residual add, then a final
RMSNorm and an LM head; input ``input_ids`` int64 [batch, seq], output ``logits`` float32
[batch, seq, vocab], batch and seq symbolic. Weights are random, deterministic in ``--seed``.
A few hidden channels (``--outliers``) are planted 10-100x louder than the rest in every
RMSNorm output, as in real LLMs; the model's ``metadata_props`` say which channels, how loud
and in which tensors (see tools/synthetic/spec.py). Simplified against Llama: no grouped K/V
heads, no KV cache, no attention-mask input, untied LM head, no biases, float32.

Small models (up to 50 M weights by default) are built as a PyTorch module and turned into
ONNX by qviz's own PyTorch import (``load_model`` on a ``torch.export`` program), larger ones
directly as an ONNX graph whose weights are streamed into ``NAME.onnx.data`` one tensor at a
time (peak memory about one tensor). Both give the same function on the same weights.

Beside the model: ``NAME.calib.npz`` and ``NAME.eval.npz`` with ``input_ids`` (Zipf-distributed
token ids; for ``--block``, ``hidden_states``), independent draws of the same seed.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `tools.synthetic` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from tools.synthetic import onnx_builder
from tools.synthetic.block import BlockSpec, write_block
from tools.synthetic.data import Split, hidden_states, token_ids, write_npz
from tools.synthetic.spec import (
    DEFAULT_GAINS,
    DecoderSpec,
    intermediate_for,
    spec_for_params,
    tiny_spec,
)

#: "auto" builds through PyTorch up to this many weights, directly as ONNX above.
TORCH_MAX_PARAMS = 50_000_000
#: "auto" writes external data from this many weight bytes on.
EXTERNAL_MIN_BYTES = 64 << 20


def decoder_spec(
    *,
    params: float | None = None,
    layers: int | None = None,
    hidden: int | None = None,
    heads: int | None = None,
    intermediate: int | None = None,
    vocab: int | None = None,
    max_seq: int = 256,
    outliers: int | None = None,
    gain_range: tuple[float, float] = DEFAULT_GAINS,
    seed: int = 0,
) -> DecoderSpec:
    """The spec ``--params`` picks (or the tiny test model), with explicit sizes overriding."""
    if params is not None:
        base = spec_for_params(params, max_seq=max_seq, seed=seed, gain_range=gain_range)
    else:
        base = tiny_spec(max_seq=max_seq, seed=seed, gain_range=gain_range)
    d = hidden or base.hidden
    if heads is None:
        heads = base.heads if d % base.heads == 0 and (d // base.heads) % 2 == 0 \
            else max(1, d // 64)
    if intermediate is None:
        intermediate = base.intermediate if hidden is None else intermediate_for(d)
    return DecoderSpec(
        layers=layers or base.layers,
        hidden=d,
        heads=heads,
        intermediate=intermediate,
        vocab=vocab or base.vocab,
        max_seq=max_seq,
        outliers=base.outliers if outliers is None else outliers,
        gain_range=gain_range,
        seed=seed,
    )


def data_paths(model_path: Path) -> tuple[Path, Path]:
    """Where a model's calibration and evaluation data go: NAME.calib.npz, NAME.eval.npz."""
    stem = model_path.name[: -len(".onnx")] if model_path.name.endswith(".onnx") \
        else model_path.name
    return model_path.with_name(f"{stem}.calib.npz"), model_path.with_name(f"{stem}.eval.npz")


def write_decoder(
    spec: DecoderSpec,
    path: Path,
    *,
    builder: str = "auto",
    external: bool | None = None,
    calib_samples: int = 64,
    eval_samples: int = 64,
    data_seq: int = 64,
) -> list[Path]:
    """Write the decoder and its data; returns every file written.

    ``builder``: "torch" (qviz's PyTorch import), "onnx" (direct, streamed) or "auto" (torch
    up to TORCH_MAX_PARAMS weights). ``external``: weights in ``NAME.onnx.data`` (None: from
    EXTERNAL_MIN_BYTES on). Data files are skipped when their sample count is 0.
    """
    if not 1 <= data_seq <= spec.max_seq:
        raise ValueError(f"data sequence length must be in [1, {spec.max_seq}], got {data_seq}")
    if builder not in ("auto", "torch", "onnx"):
        raise ValueError(f"builder must be auto, torch or onnx, got {builder!r}")
    if external is None:
        external = spec.weight_bytes >= EXTERNAL_MIN_BYTES
    calib = token_ids(spec.vocab, max(calib_samples, 1), data_seq, seed=spec.seed,
                      split=Split.CALIBRATION)
    if builder == "auto":
        builder = "torch" if spec.params <= TORCH_MAX_PARAMS and _has_torch() else "onnx"
    if builder == "torch":
        from tools.synthetic import torch_builder

        written = torch_builder.write_decoder(spec, path, calib[:1], external=external)
    else:
        written = onnx_builder.write_decoder(spec, path, external=external)
    calib_path, eval_path = data_paths(Path(path))
    if calib_samples > 0:
        written.append(write_npz(calib_path, input_ids=calib))
    if eval_samples > 0:
        written.append(write_npz(eval_path, input_ids=token_ids(
            spec.vocab, eval_samples, data_seq, seed=spec.seed, split=Split.EVALUATION)))
    return written


def write_block_and_data(
    spec: BlockSpec, path: Path, *, calib_samples: int = 64, eval_samples: int = 64,
    data_seq: int = 32,
) -> list[Path]:
    """Write the planted-outlier block and its data (``hidden_states``)."""
    written = [write_block(spec, Path(path))]
    calib_path, eval_path = data_paths(Path(path))
    for n, split, target in ((calib_samples, Split.CALIBRATION, calib_path),
                             (eval_samples, Split.EVALUATION, eval_path)):
        if n > 0:
            x = hidden_states(spec.hidden, n, data_seq, seed=spec.seed, split=split)
            written.append(write_npz(target, hidden_states=x))
    return written


def _has_torch() -> bool:
    try:
        import onnxscript  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="make_decoder.py",
        description="Make a synthetic Llama-style decoder (or --block) with planted outlier "
        "channels, plus calibration/evaluation data beside it.",
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="model file (.onnx)")
    size = p.add_argument_group("size (default: the tiny test model)")
    size.add_argument("--params", type=_positive_float,
                      help="target weight count, e.g. 22e6 or 1e9 (Llama proportions)")
    for name in ("layers", "hidden", "heads", "intermediate", "vocab"):
        size.add_argument(f"--{name}", type=int, help=f"override the {name} of --params")
    size.add_argument("--seq", type=int, default=256,
                      help="longest sequence the model runs (default 256)")
    p.add_argument("--outliers", type=int, help="planted loud channels (decoder 4, block 3)")
    p.add_argument("--gain", type=float, nargs=2, metavar=("LOW", "HIGH"),
                   default=list(DEFAULT_GAINS),
                   help="planted channels' gains, spread geometrically (default 10 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--builder", choices=["auto", "torch", "onnx"], default="auto",
                   help=f"torch: through qviz's PyTorch import (auto: up to "
                        f"{TORCH_MAX_PARAMS:.0e} weights); onnx: direct, streamed")
    p.add_argument("--external-data", choices=["auto", "yes", "no"], default="auto",
                   help=f"weights in NAME.onnx.data (auto: from {EXTERNAL_MIN_BYTES >> 20} MiB)")
    data = p.add_argument_group("data")
    data.add_argument("--calib-samples", type=int, default=64)
    data.add_argument("--eval-samples", type=int, default=64)
    data.add_argument("--data-seq", type=int, help="sequence length (decoder 64, block 32)")
    blk = p.add_argument_group("planted-outlier block (issue 10)")
    blk.add_argument("--block", action="store_true",
                     help="make the LayerNorm + MLP block instead of a decoder")
    blk.add_argument("--ffn", type=int, default=256, help="block MLP width (default 256)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        if min(args.calib_samples, args.eval_samples) < 0:
            raise ValueError("sample counts cannot be negative")
        if args.block:
            bspec = BlockSpec(hidden=args.hidden or 64, ffn=args.ffn,
                              outliers=3 if args.outliers is None else args.outliers,
                              gain_range=(args.gain[0], args.gain[1]), seed=args.seed)
            written = write_block_and_data(bspec, args.output, calib_samples=args.calib_samples,
                                           eval_samples=args.eval_samples,
                                           data_seq=args.data_seq or 32)
            summary = f"block hidden {bspec.hidden}, ffn {bspec.ffn}"
            plan = bspec.outlier_plan()
        else:
            spec = decoder_spec(
                params=args.params, layers=args.layers, hidden=args.hidden, heads=args.heads,
                intermediate=args.intermediate, vocab=args.vocab, max_seq=args.seq,
                outliers=args.outliers, gain_range=(args.gain[0], args.gain[1]),
                seed=args.seed,
            )
            external = {"auto": None, "yes": True, "no": False}[args.external_data]
            written = write_decoder(spec, args.output, builder=args.builder, external=external,
                                    calib_samples=args.calib_samples,
                                    eval_samples=args.eval_samples,
                                    data_seq=args.data_seq or min(64, spec.max_seq))
            summary = (f"decoder {spec.params / 1e6:.2f} M weights: {spec.layers} layers, "
                       f"hidden {spec.hidden}, {spec.heads} heads, intermediate "
                       f"{spec.intermediate}, vocab {spec.vocab}")
            plan = spec.outlier_plan()
    except (ValueError, OSError) as exc:
        print(f"make_decoder.py: error: {exc}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(summary)
    print("planted channels (gain): "
          + ", ".join(f"{c} ({g:g}x)" for c, g in plan.items()) if plan else "none planted")
    for f in written:
        print(f"wrote {f} ({f.stat().st_size / 1e6:.2f} MB)")
    print(f"time {seconds:.2f} s, peak RSS {peak:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
