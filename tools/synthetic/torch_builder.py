"""The synthetic decoder as a PyTorch module, turned into ONNX by qviz's own PyTorch import.

The module mirrors Hugging Face's Llama layout (``model.layers.N.self_attn.q_proj`` ...) and
takes its weights from :func:`tools.synthetic.spec.make_weight`, so it is the same function as
the directly built graph. It is saved as a ``torch.export`` program with a symbolic batch and
sequence length and opened with ``qviz.core.model.loading.load_model``, which exports it with
``torch.onnx.export(dynamo=True)`` and checks the export against PyTorch on a sample: the
project's PyTorch route is what makes these files. Meant for small sizes (the exporter holds
several copies of the weights).

Simplified against Llama: multi-head attention without grouped K/V heads, no KV cache and no
attention-mask input (causal only, every token valid), no biases, untied LM head, float32.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import external_data_helper
from torch import nn

from qviz.core.model.loading import LoadedModel, load_model
from tools.synthetic.spec import (
    DECODER_NOTE,
    DecoderSpec,
    iter_weights,
    metadata,
    rotary_tables,
)

INPUT = "input_ids"
OUTPUT = "logits"
# The layers whose input is an RMSNorm output (the tensors carrying the planted channels).
_NORM_CONSUMERS = (".self_attn.q_proj", ".mlp.gate_proj", "lm_head")


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Attention(nn.Module):
    def __init__(self, spec: DecoderSpec) -> None:
        super().__init__()
        d = spec.hidden
        self.heads, self.head_dim = spec.heads, spec.head_dim
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.head_dim).transpose(1, 2)

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = self.head_dim // 2
        turned = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + turned * sin

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q = self._rotate(self._split(self.q_proj(x)), cos, sin)
        k = self._rotate(self._split(self.k_proj(x)), cos, sin)
        v = self._split(self.v_proj(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + mask
        ctx = torch.softmax(scores, dim=-1) @ v
        return self.o_proj(ctx.transpose(1, 2).reshape(b, n, d))


class MLP(nn.Module):
    def __init__(self, spec: DecoderSpec) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(spec.hidden, spec.intermediate, bias=False)
        self.up_proj = nn.Linear(spec.hidden, spec.intermediate, bias=False)
        self.down_proj = nn.Linear(spec.intermediate, spec.hidden, bias=False)
        self.act_fn = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, spec: DecoderSpec) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(spec.hidden, spec.eps)
        self.self_attn = Attention(spec)
        self.post_attention_layernorm = RMSNorm(spec.hidden, spec.eps)
        self.mlp = MLP(spec)

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        h = h + self.self_attn(self.input_layernorm(h), cos, sin, mask)
        return h + self.mlp(self.post_attention_layernorm(h))


class DecoderModel(nn.Module):
    def __init__(self, spec: DecoderSpec) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(spec.vocab, spec.hidden)
        self.layers = nn.ModuleList(DecoderLayer(spec) for _ in range(spec.layers))
        self.norm = RMSNorm(spec.hidden, spec.eps)
        cos, sin = rotary_tables(spec)
        self.register_buffer("rotary_cos", torch.from_numpy(cos), persistent=False)
        self.register_buffer("rotary_sin", torch.from_numpy(sin), persistent=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        n = input_ids.shape[1]
        cos, sin = self.rotary_cos, self.rotary_sin
        assert isinstance(cos, torch.Tensor) and isinstance(sin, torch.Tensor)
        cos, sin = cos[:n], sin[:n]
        mask = torch.full((n, n), float("-inf")).triu(1)
        h = self.embed_tokens(input_ids)
        for layer in self.layers:
            h = layer(h, cos, sin, mask)
        return self.norm(h)


class DecoderLM(nn.Module):
    """input_ids [batch, seq] (int64) -> logits [batch, seq, vocab]."""

    def __init__(self, spec: DecoderSpec) -> None:
        super().__init__()
        self.model = DecoderModel(spec)
        self.lm_head = nn.Linear(spec.hidden, spec.vocab, bias=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.model(input_ids))


def decoder_module(spec: DecoderSpec) -> DecoderLM:
    """The decoder in eval mode, holding exactly the weights the ONNX builder writes."""
    module = DecoderLM(spec).eval()
    params = dict(module.named_parameters())
    for w, array in iter_weights(spec):
        target = params[w.name]
        # nn.Linear keeps [out, in]; the spec stores MatMul weights [in, out].
        value = array.T if array.ndim == 2 and not w.name.endswith("embed_tokens.weight") \
            else array
        with torch.no_grad():
            target.copy_(torch.from_numpy(np.ascontiguousarray(value)))
    return module


def save_program(spec: DecoderSpec, path: Path) -> Path:
    """Save the decoder as a ``torch.export`` program with symbolic batch and sequence."""
    module = decoder_module(spec)
    # Sizes of 1 would be specialized by torch.export; 2 and 3 keep both axes symbolic.
    example = torch.zeros((2, min(3, spec.max_seq)), dtype=torch.int64)
    batch = torch.export.Dim("batch")
    seq = torch.export.Dim("seq", max=spec.max_seq)
    program = torch.export.export(module, (example,), dynamic_shapes=({0: batch, 1: seq},))
    torch.export.save(program, str(path))
    return Path(path)


def load_through_qviz(spec: DecoderSpec, sample: np.ndarray) -> LoadedModel:
    """Export the decoder with qviz's PyTorch import (``sample``: input_ids [1, seq])."""
    with tempfile.TemporaryDirectory(prefix="make-decoder-") as tmp:
        program = save_program(spec, Path(tmp) / "decoder.pt2")
        loaded = load_model(program, sample={INPUT: sample})
    bad = [n for n in loaded.notes if n.startswith("WARNING")]
    if bad:
        raise RuntimeError(f"the PyTorch export does not match PyTorch: {bad[0]}")
    return loaded


def _tidy(model: onnx.ModelProto) -> None:
    """Name the output 'logits' and the symbolic axes 'batch' and 'seq', as the ONNX builder."""
    graph = model.graph
    old_out = graph.output[0].name
    for node in graph.node:
        for i, name in enumerate(node.output):
            if name == old_out:
                node.output[i] = OUTPUT
        for i, name in enumerate(node.input):
            if name == old_out:
                node.input[i] = OUTPUT
    graph.output[0].name = OUTPUT
    dims = graph.input[0].type.tensor_type.shape.dim
    rename = {dims[0].dim_param: "batch", dims[1].dim_param: "seq"}
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param in rename:
                d.dim_param = rename[d.dim_param]


def planted_tensors(loaded: LoadedModel) -> list[str]:
    """The RMSNorm outputs: inputs of the layers that read a norm (one per norm, in order)."""
    return [layer.activations[0] for layer in loaded.layers
            if layer.name.endswith(_NORM_CONSUMERS)]


def decoder_proto(spec: DecoderSpec, sample: np.ndarray) -> onnx.ModelProto:
    """The decoder exported through qviz's PyTorch import, weights inline, metadata set."""
    loaded = load_through_qviz(spec, sample)
    model = onnx.ModelProto()
    model.CopyFrom(loaded.model)
    if loaded.data_dir is not None:  # qviz keeps an export's weights in its data file
        external_data_helper.load_external_data_for_model(model, str(loaded.data_dir))
    _tidy(model)
    props: dict[str, Any] = metadata("decoder", spec.to_json(), spec.outlier_plan(),
                                     planted_tensors(loaded), DECODER_NOTE)
    onnx.helper.set_model_props(model, props)
    return model


def write_decoder(spec: DecoderSpec, path: Path, sample: np.ndarray, *,
                  external: bool) -> list[Path]:
    """Export through qviz and write ``path`` (+ ``.data`` when ``external``), atomically."""
    path = Path(path)
    model = decoder_proto(spec, sample)
    data_name = path.name + ".data"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        onnx.save_model(model, str(tmp / path.name), save_as_external_data=external,
                        all_tensors_to_one_file=True, location=data_name, size_threshold=1024)
        umask = os.umask(0)
        os.umask(umask)
        for f in tmp.iterdir():  # onnx writes the data file private (0600)
            f.chmod(0o666 & ~umask)
        written = [path]
        if external:
            (tmp / data_name).replace(path.with_name(data_name))
            written.append(path.with_name(data_name))
        else:
            path.with_name(data_name).unlink(missing_ok=True)
        (tmp / path.name).replace(path)
        return written
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
