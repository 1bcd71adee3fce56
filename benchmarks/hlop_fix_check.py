"""Evidence for the HLOP fix (new neuron blocks initialised orthogonal to the old block; docs/methods.md, hlop):

    OMP_NUM_THREADS=1 python benchmarks/hlop_fix_check.py --group digits    # split-digits, class-IL, ~30 s
    OMP_NUM_THREADS=1 python benchmarks/hlop_fix_check.py --group pmnist    # zoo2's pmnist hlop arm, ~2-8 min/seed
    python benchmarks/hlop_fix_check.py --report

- digits: benchmark split-digits with its preset (model.bias=false, 5 epochs), and the same with 10 epochs.
  Before the fix every seed ended with NaN weights in task 5 (leaderboard: ACC 10%).
- pmnist: exactly zoo2.py's `hlop` arm (permuted-mnist fast protocol), to check the published-protocol numbers
  (zoo2.md before the fix: ACC 92.99 ± 0.03, BWT -3.05 ± 0.02) are unchanged.
Writes benchmarks/results/hlop_fix_check_<group>.json and hlop_fix_check.md (mean ± std over seeds).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import zoo2  # noqa: E402  (same run_arm: a plain clbench run per seed)

RESULTS = Path(__file__).resolve().parent / "results"
DIGITS = ["benchmark=split-digits", "strategy=hlop", "model.bias=false"]
ARMS = {
    "digits": {"hlop (5 epochs)": DIGITS, "hlop (10 epochs)": DIGITS + ["train.epochs=10"]},
    "pmnist": {"hlop": zoo2.PROTOCOLS["pmnist"]["hlop"]},
}


def run_digits(overrides: list[str], seed: int, out: str) -> dict:
    from clbench.engine import run
    result, _ = run(overrides + zoo2.COMMON + [f"seed={seed}", f"out={out}"], console=False)
    A = result["accuracy_matrix"]
    return {"seed": seed, "acc": result["metrics"]["acc"], "bwt": result["metrics"].get("bwt"),
            "last_task": A[-1][-1], "accuracy_matrix": A, "strategy_state": result["strategy_state"]}


def pm(values) -> str:
    values = list(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} ± {100 * sd:.2f}"


def report() -> str:
    lines = ["# HLOP fix check (benchmarks/hlop_fix_check.py)", "", "ACC / BWT in %, mean ± std over seeds.", "",
             "| group | arm | seeds | ACC | BWT | last task (A[T,T]) | max ‖HHᵀ−I‖ after the last task |",
             "|---|---|---|---|---|---|---|"]
    for group in ARMS:
        path = RESULTS / f"hlop_fix_check_{group}.json"
        if not path.exists():
            continue
        for arm, runs in json.loads(path.read_text())["arms"].items():
            err = max(v["orthonormality_error"] for r in runs for v in r["strategy_state"]["subspace"][-1].values())
            last = " / ".join(f"{r['accuracy_matrix'][-1][-1]:.3f}" for r in runs)
            lines.append(f"| {group} | {arm} | {','.join(str(r['seed']) for r in runs)} | {pm(r['acc'] for r in runs)} "
                         f"| {pm(r['bwt'] for r in runs)} | {last} | {err:.3f} |")
    text = "\n".join(lines) + "\n"
    (RESULTS / "hlop_fix_check.md").write_text(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--group", choices=sorted(ARMS))
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    ap.add_argument("--out", default="/tmp/clbench_hlop_fix_runs")
    ap.add_argument("--report", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if not args.report:
        if not args.group:
            ap.error("--group is required (or --report)")
        data = {"group": args.group, "arms": {}}
        for arm, overrides in ARMS[args.group].items():
            fn = run_digits if args.group == "digits" else zoo2.run_arm
            data["arms"][arm] = [fn(overrides, seed, args.out) for seed in args.seeds]
            for r in data["arms"][arm]:
                print(f"{args.group} {arm} seed {r['seed']}: acc {r['acc']:.4f} bwt {r['bwt']:.4f}", flush=True)
        (RESULTS / f"hlop_fix_check_{args.group}.json").write_text(json.dumps(data, indent=1))
    print(report())


if __name__ == "__main__":
    main()
