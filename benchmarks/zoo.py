"""Strategy zoo evidence: every classic baseline (and the Avalanche bridge) on real MNIST, several seeds.

Two protocols, chosen to match Mammoth's published table (reference/frameworks.md C2) where possible:

  smnist  Split MNIST, class-IL, 5 tasks x 2 digits, all 60k training images, 1 epoch, SGD, MLP 784-100-100-10
          (Mammoth's MNISTMLP and seq-mnist protocol). Per-method lr / batch / memory batch / hyper-parameters
          from Mammoth's utils/best_args.py (seq-mnist, buffer 500). GDumb retrains on its 500-sample memory
          for 30 epochs (its learner never sees the stream; one epoch over 500 samples would be meaningless).
  pmnist  Permuted MNIST, domain-IL. SHORTER than Mammoth (20 tasks x 60k): 10 tasks x 10k random training
          images per task, 1 epoch, batch 128, SGD, MLP 784-100-100-10 without bias (clbench's permuted-mnist
          benchmark). Per-method lr and hyper-parameters from Mammoth's best_args (perm-mnist, buffer 500).
          naive is shown at lr 0.2 (Mammoth's SGD setting) and at lr 0.1 (the lr of EWC/SI) so the
          regularisers are compared at equal step size.

Seeds 0, 1, 2 for every arm (the table's `seeds` column). On the shared CPU the runs were done in several
invocations with `--arms` (finished runs are skipped, results accumulate in zoo.json). The pmnist EWC arm is
also run with its Fisher estimated from 1000 samples per task (cheaper; same mean in expectation).

Run (CPU, one thread each, ~20-40 min for everything on a quiet 2-core machine):
    OMP_NUM_THREADS=1 python benchmarks/zoo.py --protocol smnist pmnist --seeds 0 1 2
Writes benchmarks/results/zoo.json (every run's ACC/BWT/forgetting/R) and zoo.md (mean +- std table).
Needs MNIST under the data root ($CLBENCH_DATA or --data, torchvision raw layout).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from clbench.engine import run

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

SMNIST = ["benchmark=split-mnist", "model.width=100", "model.depth=2", "model.bias=true",
          "train.optimizer=sgd", "train.epochs=1", "train.batch_size=10", "train.momentum=0.0"]
PMNIST = ["benchmark=permuted-mnist", "scenario.n_experiences=10", "scenario.train_samples_per_task=10000",
          "train.optimizer=sgd", "train.epochs=1", "train.batch_size=128", "train.momentum=0.0"]

# (label, overrides): Mammoth best_args (aimagelab/mammoth utils/best_args.py) for seq-mnist / perm-mnist.
ARMS = {
    "smnist": [
        ("naive", ["strategy=naive", "train.lr=0.03"]),
        ("avalanche:Naive", ["strategy=avalanche:Naive", "train.lr=0.03"]),
        ("joint", ["strategy=joint", "train.lr=0.03"]),
        ("replay (reservoir, 500)", ["strategy=replay", "strategy.buffer_size=500", "strategy.mem_batch_size=10",
                                     "train.lr=0.1"]),
        ("replay (class-balanced, 500)", ["strategy=replay", "strategy.buffer=class_balanced",
                                          "strategy.buffer_size=500", "strategy.mem_batch_size=10", "train.lr=0.1"]),
        ("der (500)", ["strategy=der", "strategy.buffer_size=500", "strategy.mem_batch_size=128",
                       "strategy.alpha=1.0", "train.lr=0.03"]),
        ("derpp (500)", ["strategy=derpp", "strategy.buffer_size=500", "strategy.mem_batch_size=10",
                         "strategy.alpha=1.0", "strategy.beta=0.5", "train.lr=0.03"]),
        ("agem (500)", ["strategy=agem", "strategy.mem_per_experience=100", "strategy.ref_batch_size=128",
                        "train.lr=0.1"]),
        ("ewc online", ["strategy=ewc", "strategy.mode=online", "strategy.ewc_lambda=90", "strategy.gamma=1.0",
                        "train.lr=0.03"]),
        ("si", ["strategy=si", "strategy.si_c=1.0", "strategy.xi=0.9", "train.lr=0.1"]),
        ("lwf", ["strategy=lwf", "strategy.alpha=1.0", "strategy.temperature=2.0", "train.lr=0.03",
                 "train.weight_decay=0.0005"]),
        ("gdumb (500, 30 ep.)", ["strategy=gdumb", "strategy.buffer_size=500", "train.lr=0.03", "train.epochs=30"]),
    ],
    "pmnist": [
        ("naive (lr 0.2)", ["strategy=naive", "train.lr=0.2"]),
        ("naive (lr 0.1)", ["strategy=naive", "train.lr=0.1"]),
        ("avalanche:Naive (lr 0.2)", ["strategy=avalanche:Naive", "train.lr=0.2"]),
        ("ewc online", ["strategy=ewc", "strategy.mode=online", "strategy.ewc_lambda=0.7", "strategy.gamma=1.0",
                        "train.lr=0.1"]),
        # the Fisher over all 10k samples of every task costs ~10 min per run on the shared CPU; this arm
        # estimates it from 1000 random samples per task (an unbiased estimate of the same mean)
        ("ewc online (Fisher 1k)", ["strategy=ewc", "strategy.mode=online", "strategy.ewc_lambda=0.7",
                                    "strategy.gamma=1.0", "strategy.fisher_samples=1000", "train.lr=0.1"]),
        ("si", ["strategy=si", "strategy.si_c=0.5", "strategy.xi=1.0", "train.lr=0.1"]),
        ("replay (500)", ["strategy=replay", "strategy.buffer_size=500", "strategy.mem_batch_size=128",
                          "train.lr=0.2"]),
        ("derpp (500)", ["strategy=derpp", "strategy.buffer_size=500", "strategy.mem_batch_size=128",
                         "strategy.alpha=1.0", "strategy.beta=0.5", "train.lr=0.2"]),
        ("agem (500)", ["strategy=agem", "strategy.mem_per_experience=50", "strategy.ref_batch_size=128",
                        "train.lr=0.1"]),
    ],
}

# Mammoth's published numbers (first-commit README, frameworks.md C2), buffer 500 where it applies.
MAMMOTH = {
    "smnist": {"naive": 19.60, "joint": 95.57, "replay (reservoir, 500)": 86.12, "der (500)": 90.54,
               "derpp (500)": 91.00, "agem (500)": 46.66, "ewc online": 20.46, "si": 19.27, "lwf": 19.62},
    "pmnist": {"naive (lr 0.2)": 40.70, "ewc online": 75.79, "ewc online (Fisher 1k)": 75.79, "si": 65.86, "replay (500)": 80.60,
               "derpp (500)": 88.21, "agem (500)": 67.56},
}


def run_one(protocol: str, label: str, overrides: list[str], seed: int, data: str, out: str) -> dict:
    base = SMNIST if protocol == "smnist" else PMNIST
    args = [*base, *overrides, f"seed={seed}", "wandb.mode=disabled", "progress=false", f"out={out}",
            f"data.root={data}"]
    t0 = time.perf_counter()
    result, _ = run(args, console=False)
    m = result["metrics"]
    return {"protocol": protocol, "arm": label, "seed": seed, "overrides": overrides,
            "acc": m["acc"], "bwt": m["bwt"], "forgetting": m.get("forgetting"),
            "accuracy_matrix": result["accuracy_matrix"], "strategy_state": result["strategy_state"],
            "wall_s": time.perf_counter() - t0}


def summarise(rows: list[dict]) -> str:
    lines = ["| protocol | arm | ACC % (mean ± std) | BWT % | Mammoth (paper) | seeds |", "|---|---|---|---|---|---|"]
    for protocol, arms in ARMS.items():
        for label, _ in arms:
            rs = [r for r in rows if r["protocol"] == protocol and r["arm"] == label]
            if not rs:
                continue
            acc = [100 * r["acc"] for r in rs]
            bwt = [100 * r["bwt"] for r in rs]
            sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0  # noqa: E731
            ref = MAMMOTH.get(protocol, {}).get(label)
            lines.append(f"| {protocol} | {label} | {statistics.mean(acc):.2f} ± {sd(acc):.2f} | "
                         f"{statistics.mean(bwt):.2f} ± {sd(bwt):.2f} | {'' if ref is None else f'{ref:.2f}'} | "
                         f"{','.join(str(r['seed']) for r in rs)} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--protocol", nargs="+", default=["smnist", "pmnist"], choices=list(ARMS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--arms", nargs="*", default=None, help="only these arm labels (substring match)")
    ap.add_argument("--data", default=os.environ.get("CLBENCH_DATA", str(HERE.parent.parent / "shared" / "datasets")))
    ap.add_argument("--out", default="/tmp/clbench_zoo_runs")
    ap.add_argument("--tag", default="zoo")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{args.tag}.json"
    rows = json.loads(path.read_text())["runs"] if path.exists() else []
    done = {(r["protocol"], r["arm"], r["seed"]) for r in rows}
    for protocol in args.protocol:
        for seed in args.seeds:
            for label, overrides in ARMS[protocol]:
                if args.arms and not any(a in label for a in args.arms):
                    continue
                if (protocol, label, seed) in done:
                    continue
                r = run_one(protocol, label, overrides, seed, args.data, args.out)
                rows.append(r)
                print(f"{protocol:7s} {label:30s} seed={seed} ACC={100 * r['acc']:.2f} BWT={100 * r['bwt']:.2f} "
                      f"({r['wall_s']:.0f}s)", flush=True)
                path.write_text(json.dumps({"runs": rows}, indent=1))   # incremental: a crash keeps what ran
    table = summarise(rows)
    (RESULTS / f"{args.tag}.md").write_text(f"# Strategy zoo on real MNIST\n\n{__doc__}\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    sys.exit(main())
