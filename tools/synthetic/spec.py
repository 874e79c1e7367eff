"""The synthetic decoder's shape, its planted outlier channels and its weights.

One description (:class:`DecoderSpec`) and one weight source (:func:`make_weight`) serve both
builders (the direct ONNX graph and the PyTorch module), so the two produce the same model.

Weights are random and deterministic: tensor number ``i`` of :func:`weight_specs` is drawn
from ``numpy.random.default_rng([seed, i])``, so any tensor can be made alone, in any order,
without holding the others (what lets a 4 GB model be written tensor by tensor).

Planted outliers. Real LLMs carry a few hidden channels that are 10-100x louder than the rest,
in the same channels in every layer (LLM.int8(), SmoothQuant): a per-tensor activation scale
fitted to them is too coarse for every other channel. Here the weights of every RMSNorm
(``input_layernorm``, ``post_attention_layernorm`` and the final ``model.norm``) are set to
``gain`` at the planted channels and to about 1 elsewhere. RMSNorm divides a token by one
scalar, so each norm's output, which is the input of the Q/K/V, gate/up and LM-head MatMuls,
has those channels ``gain`` times louder than a typical channel. The consumers' weights are
scaled for the norm output's total power (as training would), so the outliers carry most of
the signal and clipping them is harmful, as in real models. The residual stream between norms
is not planted: what quantization sees is the MatMul inputs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from enum import Enum

import numpy as np

#: Keys of the ONNX model's ``metadata_props`` that describe a synthetic model.
META_KIND = "qviz.synthetic.kind"
META_SPEC = "qviz.synthetic.spec"
META_CHANNELS = "qviz.synthetic.outlier_channels"
META_GAINS = "qviz.synthetic.outlier_gains"
META_TENSORS = "qviz.synthetic.outlier_tensors"
META_NOTE = "qviz.synthetic.note"

OPSET = 20  # what torch 2.13's dynamo exporter writes; both builders use it
DEFAULT_GAINS = (10.0, 100.0)  # planted channels' gains spread geometrically over this range
NORM_JITTER = 0.05  # non-planted norm weights are 1 + NORM_JITTER * N(0, 1)
# E[(silu(a) * b)^2] for a, b ~ N(0, 1): the power of the down projection's input.
_SWIGLU_POWER = 0.3557


@dataclass(frozen=True)
class DecoderSpec:
    """A Llama-style decoder: sizes, planted outliers, seed.

    ``max_seq`` is the longest sequence the model runs (the rotary tables' length); batch and
    sequence length are symbolic in the graph.
    """

    layers: int
    hidden: int
    heads: int
    intermediate: int
    vocab: int
    max_seq: int = 256
    outliers: int = 4
    gain_range: tuple[float, float] = DEFAULT_GAINS
    seed: int = 0
    rope_theta: float = 10000.0
    eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("layers", "hidden", "heads", "intermediate", "vocab", "max_seq"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.hidden % self.heads or (self.hidden // self.heads) % 2:
            raise ValueError(
                f"hidden ({self.hidden}) must be heads ({self.heads}) x an even head size"
            )
        if not 0 <= self.outliers <= self.hidden // 2:
            raise ValueError(f"outliers must be in [0, hidden/2], got {self.outliers}")
        lo, hi = self.gain_range
        if not 1.0 <= lo <= hi:
            raise ValueError(f"outlier gains must satisfy 1 <= low <= high, got {lo}, {hi}")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def params(self) -> int:
        """Number of weights (rotary tables excluded: they are fixed, not learned)."""
        return sum(math.prod(w.shape) for w in weight_specs(self))

    @property
    def weight_bytes(self) -> int:
        return 4 * self.params

    def outlier_plan(self) -> dict[int, float]:
        """Planted channel -> gain."""
        return outlier_plan(self.hidden, self.outliers, self.gain_range, self.seed)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def outlier_plan(
    channels: int, count: int, gain_range: tuple[float, float], seed: int
) -> dict[int, float]:
    """``count`` channels of ``channels`` drawn with ``seed`` (sorted) -> their gains, spread
    geometrically over ``gain_range`` from the lowest channel to the highest."""
    if count == 0:
        return {}
    rng = np.random.default_rng([seed, 7])
    picked = sorted(int(c) for c in rng.choice(channels, count, replace=False))
    gains = np.geomspace(gain_range[0], gain_range[1], count)
    return {c: round(float(g), 4) for c, g in zip(picked, gains, strict=True)}


class Init(Enum):
    """How a weight is drawn."""

    EMBEDDING = "embedding"  # N(0, 1)
    NORM = "norm"  # 1 + jitter, planted channels at their gain
    FROM_NORM = "from_norm"  # N(0, 1/P): input is a norm output of total power P per token
    OUT_PROJ = "out_proj"  # into the residual stream: N(0, 1/(fan_in * 2 * layers))
    DOWN_PROJ = "down_proj"  # same, for the SwiGLU product's power


@dataclass(frozen=True)
class WeightSpec:
    """One weight: its name, its shape as the ONNX graph stores it, how it is drawn."""

    index: int
    name: str
    shape: tuple[int, ...]
    init: Init


def weight_specs(spec: DecoderSpec) -> list[WeightSpec]:
    """Every weight in graph order. MatMul weights are stored [in, out] (``x @ W``).

    Names follow Hugging Face's Llama, so layer names read as they do for real models.
    """
    d, i_, v = spec.hidden, spec.intermediate, spec.vocab
    entries: list[tuple[str, tuple[int, ...], Init]] = [
        ("model.embed_tokens.weight", (v, d), Init.EMBEDDING)
    ]
    for n in range(spec.layers):
        p = f"model.layers.{n}"
        entries += [
            (f"{p}.input_layernorm.weight", (d,), Init.NORM),
            (f"{p}.self_attn.q_proj.weight", (d, d), Init.FROM_NORM),
            (f"{p}.self_attn.k_proj.weight", (d, d), Init.FROM_NORM),
            (f"{p}.self_attn.v_proj.weight", (d, d), Init.FROM_NORM),
            (f"{p}.self_attn.o_proj.weight", (d, d), Init.OUT_PROJ),
            (f"{p}.post_attention_layernorm.weight", (d,), Init.NORM),
            (f"{p}.mlp.gate_proj.weight", (d, i_), Init.FROM_NORM),
            (f"{p}.mlp.up_proj.weight", (d, i_), Init.FROM_NORM),
            (f"{p}.mlp.down_proj.weight", (i_, d), Init.DOWN_PROJ),
        ]
    entries += [
        ("model.norm.weight", (d,), Init.NORM),
        ("lm_head.weight", (d, v), Init.FROM_NORM),
    ]
    return [WeightSpec(k, name, shape, init) for k, (name, shape, init) in enumerate(entries)]


def norm_output_power(spec: DecoderSpec) -> float:
    """Expected sum over channels of a norm output's square, per token."""
    gains = spec.outlier_plan().values()
    return (spec.hidden - len(gains)) * (1.0 + NORM_JITTER**2) + sum(g * g for g in gains)


def make_weight(spec: DecoderSpec, w: WeightSpec) -> np.ndarray:
    """Draw weight ``w`` (float32, C order), independent of every other weight."""
    rng = np.random.default_rng([spec.seed, 1000 + w.index])
    if w.init is Init.NORM:
        out = 1.0 + NORM_JITTER * rng.standard_normal(w.shape, dtype=np.float32)
        for channel, gain in spec.outlier_plan().items():
            out[channel] = gain
        return out
    out = rng.standard_normal(w.shape, dtype=np.float32)
    if w.init is Init.EMBEDDING:
        return out
    if w.init is Init.FROM_NORM:
        std = 1.0 / math.sqrt(norm_output_power(spec))
    else:
        power = spec.hidden if w.init is Init.OUT_PROJ else spec.intermediate * _SWIGLU_POWER
        std = 1.0 / math.sqrt(power * 2 * spec.layers)
    out *= np.float32(std)
    return out


def iter_weights(spec: DecoderSpec) -> Iterator[tuple[WeightSpec, np.ndarray]]:
    """Every weight in order, made one at a time."""
    for w in weight_specs(spec):
        yield w, make_weight(spec, w)


def rotary_tables(spec: DecoderSpec) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin [max_seq, head_dim] of rotary embeddings (the half-split layout)."""
    hd = spec.head_dim
    inv = 1.0 / (spec.rope_theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    angles = np.arange(spec.max_seq, dtype=np.float64)[:, None] * inv[None, :]
    angles = np.concatenate([angles, angles], axis=1)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


# -------------------------------------------------------------------------- sizes


# (largest parameter count, hidden, heads, vocab): Llama-like proportions per size.
_LADDER: tuple[tuple[float, int, int, int], ...] = (
    (2e6, 64, 4, 512),
    (1.2e7, 256, 4, 4096),
    (6e7, 384, 6, 16000),
    (4e8, 768, 12, 32000),
    (2.5e9, 2048, 16, 32000),
    (math.inf, 4096, 32, 32000),
)


def intermediate_for(hidden: int) -> int:
    """Llama's SwiGLU width: 2/3 of 4 x hidden, rounded up to a multiple of 256 (64 if small)."""
    multiple = 256 if hidden >= 512 else 64
    raw = int(2 * 4 * hidden / 3)
    return -(-raw // multiple) * multiple


def spec_for_params(
    params: float, *, max_seq: int = 256, outliers: int = 4, seed: int = 0,
    gain_range: tuple[float, float] = DEFAULT_GAINS,
) -> DecoderSpec:
    """The Llama-proportioned spec whose weight count is nearest ``params``.

    The hidden size and vocabulary come from a ladder of typical models; the number of layers
    is then solved for (at least one). ``1e9`` gives 17 layers of hidden 2048, 1.005 B weights.
    """
    if params <= 0:
        raise ValueError(f"params must be positive, got {params}")
    _, hidden, heads, vocab = next(row for row in _LADDER if params <= row[0])
    inter = intermediate_for(hidden)
    per_layer = 4 * hidden * hidden + 3 * hidden * inter + 2 * hidden
    fixed = 2 * vocab * hidden + hidden
    layers = max(1, round((params - fixed) / per_layer))
    return DecoderSpec(
        layers=layers, hidden=hidden, heads=heads, intermediate=inter, vocab=vocab,
        max_seq=max_seq, outliers=outliers, seed=seed, gain_range=gain_range,
    )


def tiny_spec(**overrides: object) -> DecoderSpec:
    """The test model: 2 layers of hidden 64, vocabulary 256 (about 0.55 MB of weights)."""
    values: dict[str, object] = dict(
        layers=2, hidden=64, heads=4, intermediate=192, vocab=256, max_seq=64, outliers=3
    )
    values.update(overrides)
    return DecoderSpec(**values)  # type: ignore[arg-type]


DECODER_NOTE = (
    "random weights; on the last axis of every listed tensor (the RMSNorm outputs feeding the "
    "Q/K/V, gate/up and LM-head MatMuls) the planted channels are the loudest, by a factor "
    "that follows their gain (about 0.3 to 1.2 x gain: the residual stream they scale varies "
    "by channel)"
)


def metadata(
    kind: str, spec_json: str, plan: dict[int, float], tensors: list[str], note: str
) -> dict[str, str]:
    """The ``metadata_props`` a synthetic model carries, so tests can find what was planted."""
    return {
        META_KIND: kind,
        META_SPEC: spec_json,
        META_CHANNELS: json.dumps(list(plan)),
        META_GAINS: json.dumps(list(plan.values())),
        META_TENSORS: json.dumps(tensors),
        META_NOTE: note,
    }


def read_metadata(props: dict[str, str]) -> tuple[dict[int, float], list[str]]:
    """(planted channel -> gain, tensors carrying them) from a model's ``metadata_props``."""
    channels = json.loads(props[META_CHANNELS])
    gains = json.loads(props[META_GAINS])
    return dict(zip(channels, gains, strict=True)), list(json.loads(props[META_TENSORS]))
