"""Where the built-in demo (a Fashion-MNIST CNN and 2,000 labelled test images) lives."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qviz.core.errors import QvizError

DEMO_DIR = Path(__file__).resolve().parents[2] / "resources" / "demo"


@dataclass(frozen=True)
class DemoPaths:
    model: Path
    data: Path


def demo_paths() -> DemoPaths:
    """The demo's model and data; qviz is meant to be installed from its checkout (pip -e)."""
    paths = DemoPaths(DEMO_DIR / "model.onnx", DEMO_DIR / "data.npz")
    for p in (paths.model, paths.data):
        if not p.is_file():
            raise QvizError(f"the built-in demo is missing ({p}); install qviz from its checkout")
    return paths
