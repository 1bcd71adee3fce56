"""Cost of per-batch input transforms (permuted / rotated streams) against precomputed copies.

Permuted and rotated streams keep one copy of the images and apply each task's pixel map to every
minibatch (`PixelMap`, an index gather on uint8). The alternative is to precompute a transformed copy
of the data per task. This script measures, on the real MNIST (uint8, 1 x 28 x 28, CPU, 1 thread):
  - the time to fetch a minibatch (batch 10 and 128) from a split with the transform and from a
    precomputed copy (plain indexing), median over 2000 fetches;
  - the time to transform the whole test set (10000 images), i.e. the extra work per evaluation row;
  - the memory a precomputed copy would take per task (train + test).

    python benchmarks/scenario_transforms.py        # writes results/scenario_transforms.{json,md}
"""
from __future__ import annotations

import json
import sys
import statistics
import time
from pathlib import Path

import torch

from clbench.data.vision import load_mnist
from clbench.scenarios.common import PixelMap
from clbench.scenarios.permuted import permutation
from clbench.scenarios.rotated import rotation_map
from clbench.stream import TensorSplit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from speed import default_root  # noqa: E402


def median_ms(fn, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> None:
    torch.set_num_threads(1)
    root = default_root()
    ds = load_mnist(root)
    g = torch.Generator().manual_seed(0)
    maps = {"permutation": PixelMap(permutation(784, 0, 1)), "rotation 37 deg": PixelMap(rotation_map(28, 28, 37.0))}
    out = {"device": "cpu", "threads": 1, "n_train": len(ds.y_train), "n_test": len(ds.y_test)}
    precomputed = TensorSplit(ds.x_train.clone(), ds.y_train)
    for bs in (10, 128):
        pos = [torch.randint(0, len(ds.y_train), (bs,), generator=g) for _ in range(2000)]
        it = iter(pos)
        out[f"fetch_batch{bs}_precomputed_ms"] = median_ms(lambda: precomputed.get(next(it)), 2000)
        for name, pm in maps.items():
            split = TensorSplit(ds.x_train, ds.y_train, transform=pm)
            it = iter(pos)
            out[f"fetch_batch{bs}_{name}_ms"] = median_ms(lambda: split.get(next(it)), 2000)
    for name, pm in maps.items():
        out[f"transform_test_set_{name}_ms"] = median_ms(lambda: pm(ds.x_test), 20)
    out["precomputed_copy_per_task_mb"] = (ds.x_train.numel() + ds.x_test.numel()) / 2**20
    out["pixel_map_per_task_kb"] = 784 * 8 / 1024
    lines = ["| measurement | value |", "|---|---|"] + [f"| {k} | {v:.4g} |" if isinstance(v, float) else
                                                       f"| {k} | {v} |" for k, v in out.items()]
    (HERE / "results").mkdir(exist_ok=True)
    json.dump(out, open(HERE / "results" / "scenario_transforms.json", "w"), indent=1)
    (HERE / "results" / "scenario_transforms.md").write_text(
        "# Per-batch transforms vs. precomputed copies (MNIST, CPU, 1 thread)\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
