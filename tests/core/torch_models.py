"""A tiny PyTorch model for import tests, loadable as ``tests.core.torch_models:make_net``.

Module paths (``features.0``, ``classifier.3``...) are what qviz should show as layer names.
BatchNorm statistics are made non-trivial so that folding BatchNorm into the Conv is visible
in the outputs.
"""

from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    """x[N,3,8,8] -> features (Conv, BN, ReLU, grouped Conv, ReLU, pool) -> classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Conv2d(4, 8, 3, padding=1, groups=2),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(8, 16),
            nn.ReLU(),
            nn.Linear(16, 5),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def make_net(seed: int = 0) -> TinyNet:
    """A TinyNet with deterministic weights and BatchNorm running statistics."""
    gen = torch.Generator().manual_seed(seed)
    net = TinyNet()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        bn = net.features[1]
        assert isinstance(bn, nn.BatchNorm2d)
        bn.running_mean.copy_(torch.randn(4, generator=gen) * 0.1)
        bn.running_var.copy_(torch.rand(4, generator=gen) + 0.5)
    return net


def make_net_seed1() -> TinyNet:
    """Another factory (different weights) for state-dict tests."""
    return make_net(seed=1)


class TinyAttention(nn.Module):
    """Self-attention over x[N,S,8]: projections plus two matmuls between activations."""

    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.scale = d**-0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        scores = torch.matmul(q, k.transpose(-2, -1)) * self.scale
        return self.out(torch.matmul(scores.softmax(dim=-1), v))


def make_attention(seed: int = 0) -> TinyAttention:
    """A TinyAttention with deterministic weights."""
    torch.manual_seed(seed)
    return TinyAttention()


class FixedBatchNet(nn.Module):
    """Flattens with ``reshape(1, -1)``: only a batch of one can be exported."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.reshape(1, -1))


def make_fixed_batch_net() -> FixedBatchNet:
    """A FixedBatchNet with deterministic weights."""
    torch.manual_seed(0)
    return FixedBatchNet()


def make_not_a_module() -> str:
    """A broken factory: returns something that is not a module."""
    return "not a module"


def make_wide_mlp() -> nn.Module:
    """x[N,64] -> Linear(64, 64) -> ReLU -> Linear(64, 10): weights over 1 kB, which the
    export keeps in its data file (and qviz in the export's temporary folder)."""
    gen = torch.Generator().manual_seed(3)
    net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return net.eval()
