"""What per-channel statistics and Gram matrices cost at calibration, measured side by side.

For each model, one collection per variant over the same data, in this process, interleaved
(each variant run `--repeat` times, the median kept) so machine load hits them alike:

* ``none``: per-tensor statistics only (``channel_bins=None``, what qviz kept before);
* ``moments``: plus per-channel count, mean and mean square (``channel_bins=0``);
* ``histograms``: plus a 64-bin histogram per channel (the default);
* ``+ gram``: the default plus every weighted layer's Gram matrix (``--gram``).

Prints seconds, the ratio to ``none``, and the bytes the statistics hold (flat in the number
of samples: checked by collecting twice as many samples).

Run: OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/bench_channel_stats.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qviz.core.data.dataset import load_data  # noqa: E402
from qviz.core.demo import demo_paths  # noqa: E402
from qviz.core.model.loading import load_model  # noqa: E402
from qviz.core.progress import run_to_completion  # noqa: E402
from qviz.core.stats.collect import CalibrationStats, collect_stats  # noqa: E402
from tools.make_decoder import decoder_spec, write_block_and_data, write_decoder  # noqa: E402
from tools.synthetic.block import BlockSpec  # noqa: E402

VARIANTS = {
    "none": {"channel_bins": None},
    "moments": {"channel_bins": 0},
    "histograms": {},
    "+ gram": {"gram": True},
}


def held_bytes(stats: CalibrationStats) -> int:
    total = 0
    for t in stats.tensors.values():
        total += sum(a.nbytes for a in t.to_arrays()[1].values())
    seen = {id(g): g.matrix.nbytes for g in stats.grams.values()}
    return total + sum(seen.values())


def bench(name: str, model_path: Path, data_path: Path, repeat: int) -> None:
    model = load_model(model_path)
    data = load_data(data_path, model.inputs)
    times: dict[str, list[float]] = {k: [] for k in VARIANTS}
    held: dict[str, int] = {}
    for _ in range(repeat):
        for variant, kwargs in VARIANTS.items():
            t = time.perf_counter()
            stats = run_to_completion(collect_stats(model, data, **kwargs))  # type: ignore[arg-type]
            times[variant].append(time.perf_counter() - t)
            held[variant] = held_bytes(stats)
    base = statistics.median(times["none"])
    print(f"== {name}: {len(data)} samples")
    for variant in VARIANTS:
        t = statistics.median(times[variant])
        mib = held[variant] / 2**20
        print(f"  {variant:11s} {t:7.2f} s  x{t / base:5.2f}   statistics {mib:8.2f} MiB")


def flat_memory(model_path: Path, data_path: Path) -> None:
    """The same statistics from N and 2N samples take the same bytes."""
    model = load_model(model_path)
    arrays = np.load(data_path)
    with tempfile.TemporaryDirectory() as tmp:
        twice = Path(tmp) / "twice.npz"
        np.savez(twice, **{k: np.concatenate([v, v]) for k, v in arrays.items()})
        one = run_to_completion(collect_stats(model, load_data(data_path, model.inputs),
                                              gram=True))
        two = run_to_completion(collect_stats(model, load_data(twice, model.inputs),
                                              gram=True))
    print(f"  memory flat in samples: {held_bytes(one)} bytes at N, {held_bytes(two)} at 2N")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="qviz-bench-channels-") as tmp:
        block, calib = write_block_and_data(BlockSpec(), Path(tmp) / "block.onnx",
                                            eval_samples=0)
        bench("planted-outlier block", block, calib, args.repeat)
        flat_memory(block, calib)
        decoder = write_decoder(decoder_spec(), Path(tmp) / "tiny.onnx", eval_samples=0)
        bench("tiny decoder", decoder[0], decoder[1], args.repeat)
        demo = demo_paths()
        bench("demo CNN", demo.model, demo.data, args.repeat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
