"""Power-law rehearsal against its controls at the same rehearsal budget (reference/methods.md section 1 (d)).

Protocol (a CPU-sized version, not the paper's, whose constants could not be checked): permuted MNIST,
5 tasks (every task permuted), the first 300 training images per class (3000 per task) and 100 test
images per class; MLP 784-100-100-10; plain fine-tuning (strategy=naive) so that rehearsal is the only
thing against forgetting; SGD lr 0.05, batch 10, 1 epoch per task and per rehearsal phase. After each new
task t, a rehearsal phase of R = 600 samples of tasks 1..t-1 with counts from stochastic rounding:
  none         no rehearsal
  uniform      equal shares
  exponential  shares ~ exp(-lag), lambda = 1
  power        shares ~ lag^-1 (alpha = 1), lag = phases since the task was introduced
Seeds 0, 1, 2 (training seed = stream seed). Reported: ACC, BWT (GEM, with learned_at), and the final
accuracy on each task, mean +- std over seeds.

    python benchmarks/power_law_controls.py                # writes results/power_law_controls.{json,md}
    python benchmarks/power_law_controls.py --seeds 0      # one seed, quicker
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from clbench.engine import run

HERE = Path(__file__).resolve().parent
ARMS = {"none": ["scenario.schedule=none"], "uniform": ["scenario.schedule=uniform"],
        "exponential": ["scenario.schedule=exponential", "scenario.lam=1.0"],
        "power": ["scenario.schedule=power", "scenario.alpha=1.0"]}
PROTOCOL = ["benchmark=power-law-pmnist", "strategy=naive", "scenario.base.n_experiences=5",
            "dataset.train_per_class=300", "dataset.test_per_class=100", "scenario.budget=600",
            "scenario.counts=stochastic_rounding", "scenario.mode=phase", "scenario.lag=introduced",
            "train.lr=0.05", "train.batch_size=10", "train.epochs=1", "model.width=100",
            "wandb.mode=disabled", "device=cpu", "progress=false"]


def default_root() -> str:
    return os.environ.get("CLBENCH_DATA") or str(HERE.parent.parent / "shared" / "datasets")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--root", default=default_root())
    ap.add_argument("--out", default=str(HERE / "results" / "power_law_controls"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arm, over in ARMS.items():
            for seed in args.seeds:
                t0 = time.perf_counter()
                res, _ = run(PROTOCOL + over + [f"seed={seed}", f"data.root={args.root}", f"out={tmp}"],
                             loggers=[])
                R = np.array(res["accuracy_matrix"])
                rows.setdefault(arm, []).append({
                    "seed": seed, "acc": res["metrics"]["acc"], "bwt": res["metrics"]["bwt"],
                    "final_row": R[-1].tolist(), "rows": len(R),
                    "rehearsed": res["stream"]["rehearsal"]["total_rehearsed"],
                    "counts": [p["counts"] for p in res["stream"]["rehearsal"]["phases"]],
                    "seconds": round(time.perf_counter() - t0, 1)})
                print(f"{arm:12s} seed {seed}: acc {res['metrics']['acc']:.4f} bwt {res['metrics']['bwt']:.4f} "
                      f"rehearsed {rows[arm][-1]['rehearsed']} ({rows[arm][-1]['seconds']} s)", flush=True)
    summary = {}
    lines = ["| arm | ACC (%) | BWT (%) | final accuracy per task, task 1 .. 5 (%) | rehearsed samples |",
             "|---|---|---|---|---|"]
    for arm, rs in rows.items():
        acc, bwt = np.array([r["acc"] for r in rs]) * 100, np.array([r["bwt"] for r in rs]) * 100
        final = np.array([r["final_row"] for r in rs]) * 100
        summary[arm] = {"acc_mean": acc.mean(), "acc_std": acc.std(ddof=1) if len(rs) > 1 else 0.0,
                        "bwt_mean": bwt.mean(), "bwt_std": bwt.std(ddof=1) if len(rs) > 1 else 0.0,
                        "final_row_mean": final.mean(0).tolist()}
        s = summary[arm]
        lines.append(f"| {arm} | {s['acc_mean']:.2f} ± {s['acc_std']:.2f} | "
                     f"{s['bwt_mean']:.2f} ± {s['bwt_std']:.2f} | " + " / ".join(f"{v:.1f}" for v in s["final_row_mean"]) + f" | {rs[0]['rehearsed']} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    json.dump({"protocol": PROTOCOL, "arms": ARMS, "seeds": args.seeds, "runs": rows, "summary": summary},
              open(out.with_suffix(".json"), "w"), indent=1)
    md = ["# Power-law rehearsal vs. controls (permuted MNIST subset, naive learner)", "",
          __doc__.split("    python")[0].strip(), "", f"Seeds: {args.seeds} (mean ± sample std).", ""] + lines
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
