"""How fast the graph view lays out graphs, on the demo and on 1k- and 5k-node decoders.

For each model (the built-in demo; the synthetic decoder of ``tools/make_decoder.py`` with
24 and 100 layers, 1,263 and 5,215 nodes, built directly as ONNX):

* build — the node graph and its groups (`ModelGraph`: once per opened model);
* default — the first drawing, groups collapsed to the default depth (what View ▸ Graph
  shows): items drawn and grandalf's Sugiyama layout time;
* cached — the same drawing asked again (the `LayoutCache`);
* open one — one more group opened (double-click on a block);
* all open — every group open: the whole graph flat (no view does this at once; it bounds
  what opening groups one by one can cost). ``--skip-all-open`` leaves it out;
* restyle — what the view computes after a change of settings: the local-SQNR readings of
  every node and group and the Q/DQ marks (every weight measured beforehand; the demo also
  has its activations, from its calibration data).

Usage::

    .venv/bin/python bench/bench_graph_layout.py [--skip-all-open]

Prints seconds of CPU time of this process (the better figure on a shared machine) and wall
time. Layout is pure Python (grandalf); the numbers scale with the items drawn, not the
model's size.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qviz.core.data.dataset import load_data  # noqa: E402
from qviz.core.demo import demo_paths  # noqa: E402
from qviz.core.document.document import Document  # noqa: E402
from qviz.core.graphview.layout import GraphLayout, LayoutCache  # noqa: E402
from qviz.core.graphview.marks import quant_marks  # noqa: E402
from qviz.core.graphview.measures import NodeMeasure, group_readings, read_measure  # noqa: E402
from qviz.core.graphview.model_graph import ModelGraph  # noqa: E402
from qviz.core.model.loading import LoadedModel, load_model  # noqa: E402
from qviz.core.stats.collect import collect_stats, run_to_completion  # noqa: E402
from tools.make_decoder import decoder_spec, write_decoder  # noqa: E402


def timed(fn: Callable[[], object]) -> tuple[object, float, float]:
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - c0, time.perf_counter() - w0


def row(name: str, what: str, drawn: int, cpu: float, wall: float) -> None:
    print(f"{name:<14} {what:<10} {drawn:>7,} {cpu:>9.3f} {wall:>9.3f}")


def restyle(doc: Document, mg: ModelGraph) -> None:
    readings = read_measure(doc, mg.graph, NodeMeasure.SQNR)
    group_readings(readings, mg.tree)
    quant_marks(doc, mg.graph)


def bench(name: str, model: LoadedModel, all_open: bool, data: Path | None = None) -> None:
    mg, cpu, wall = timed(lambda: ModelGraph(model, LayoutCache()))
    assert isinstance(mg, ModelGraph)
    row(name, "build", mg.graph.n_ops, cpu, wall)
    layout, cpu, wall = timed(lambda: mg.layout(mg.default_expanded))
    assert isinstance(layout, GraphLayout)
    row(name, "default", len(layout.boxes), cpu, wall)
    _, cpu, wall = timed(lambda: mg.layout(mg.default_expanded))
    row(name, "cached", len(layout.boxes), cpu, wall)
    closed = [it.id for it in layout.visible.items if it.is_group]
    if closed:
        opened = mg.toggle(mg.default_expanded, closed[len(closed) // 2])
        one, cpu, wall = timed(lambda: mg.layout(opened))
        assert isinstance(one, GraphLayout)
        row(name, "open one", len(one.boxes), cpu, wall)
    if all_open:
        whole, cpu, wall = timed(lambda: mg.layout(mg.tree.groups))
        assert isinstance(whole, GraphLayout)
        row(name, "all open", len(whole.boxes), cpu, wall)
    doc = Document()
    doc.set_model(model, model.source)
    if data is not None:
        doc.set_stats(run_to_completion(collect_stats(model, load_data(data, model.inputs))))
    for t in doc.tensors:
        doc.analyze(t.key)
    _, cpu, wall = timed(lambda: restyle(doc, mg))
    row(name, "restyle", mg.graph.n_ops, cpu, wall)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-all-open", action="store_true",
                        help="do not lay out the whole graph flat")
    args = parser.parse_args(argv)
    print(f"{'model':<14} {'drawing':<10} {'items':>7} {'cpu s':>9} {'wall s':>9}")
    demo = demo_paths()
    bench("demo", load_model(demo.model), not args.skip_all_open, demo.data)
    with tempfile.TemporaryDirectory() as tmp:
        for layers in (24, 100):
            path = Path(tmp) / f"decoder{layers}.onnx"
            write_decoder(decoder_spec(layers=layers), path, builder="onnx", calib_samples=0,
                          eval_samples=0)
            bench(f"decoder {layers}", load_model(path), not args.skip_all_open)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
