"""Cost of checkpointing after every experience (issue 13), on permuted MNIST, as ratios.

For each strategy, one run with checkpoints (the default: the full state after every experience) and one
with `checkpoint.enabled=false`, interleaved, in this process. Each checkpoint write (serialise + write +
fsync + rename, `clbench.state.save`) is timed and its size recorded, so the cost is reported two ways:
    save share   = time spent in checkpoint writes / wall time of the checkpointed run  (exact, low noise)
    wall ratio   = wall with checkpoints / wall without                                  (end to end, noisy)

    python benchmarks/checkpoint_cost.py                                   # 1000 images per class per task
    python benchmarks/checkpoint_cost.py --train-per-class 6000 --strategies naive gpm   # the full tasks
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import RESULTS, default_root, machine  # noqa: E402


def measure(strategy: str, args, checkpoint: bool, out: Path) -> dict:
    from clbench import state as S
    from clbench.engine import run
    saves: list[tuple[float, int]] = []
    original = S.save

    def timed_save(path, state):
        t0 = time.perf_counter()
        original(path, state)
        saves.append((time.perf_counter() - t0, Path(path).stat().st_size))

    S.save = timed_save
    try:
        t0 = time.perf_counter()
        result, _ = run([f"benchmark=permuted-mnist", f"strategy={strategy}", f"seed={args.seed}",
                         f"dataset.train_per_class={args.train_per_class}", "train.epochs=1",
                         f"checkpoint.enabled={str(checkpoint).lower()}", f"data.root={args.root}",
                         "wandb.mode=disabled", "progress=false", "device=cpu", f"out={out}", "resume=false"],
                        console=False)
        wall = time.perf_counter() - t0
    finally:
        S.save = original
    return {"wall_s": wall, "saves": len(saves), "save_s": sum(s for s, _ in saves),
            "checkpoint_bytes": max((b for _, b in saves), default=0), "acc": result["metrics"]["acc"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--strategies", nargs="+", default=["naive", "replay", "ewc", "gpm", "der"])
    ap.add_argument("--train-per-class", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--root", default=default_root())
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for strategy in args.strategies:
            on = measure(strategy, args, True, Path(tmp) / "on")
            off = measure(strategy, args, False, Path(tmp) / "off")
            assert on["acc"] == off["acc"], "checkpointing must not change the result"
            rows.append({"strategy": strategy, **{f"on_{k}": v for k, v in on.items()}, "off_wall_s": off["wall_s"],
                         "save_share": on["save_s"] / on["wall_s"], "wall_ratio": on["wall_s"] / off["wall_s"]})
    lines = ["# Checkpoint cost on permuted-mnist (10 tasks, checkpoint after every experience)", "",
             f"`python benchmarks/checkpoint_cost.py --train-per-class {args.train_per_class}`; machine: {json.dumps(machine())}; "
             "one run per arm, interleaved in one process.", "",
             "| strategy | checkpoints | size (MB) | time in writes (s) | save share | wall on / off (s) | wall ratio |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['strategy']} | {r['on_saves']} | {r['on_checkpoint_bytes'] / 1e6:.2f} | "
                     f"{r['on_save_s']:.2f} | {100 * r['save_share']:.2f} % | {r['on_wall_s']:.1f} / "
                     f"{r['off_wall_s']:.1f} | {r['wall_ratio']:.3f} |")
    lines.append(f"\nMedian save share: {100 * statistics.median(r['save_share'] for r in rows):.2f} %. "
                 "Accuracy is identical with and without checkpoints (asserted).")
    name = f"checkpoint_cost_{args.train_per_class}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
