"""MAS's lambda per benchmark, chosen on a validation split: the evidence behind configs/strategy/mas.yaml.

    clbench sweep sweep=mas-lambda            # split-digits, 7 lambdas x 3 seeds (seconds per run)
    clbench sweep sweep=mas-lambda-mnist      # seq/perm/rot-mnist, 3 lambdas x 1 seed (minutes per run)
    python benchmarks/mas_lambda.py           # this table

The sweeps hold out 10 % of each class's training samples (eval.validation=0.1) and drop the test split at load
time (eval.test=false), so nothing here has seen test data. Rule, fixed before the runs: per benchmark, the lambda
with the highest mean validation ACC among the lambdas none of whose runs diverged (a diverged run stops with a
non-finite loss and is listed as failed in the sweep's manifest). Reads every sweep.json under the folders given
(default sweeps/mas-lambda), writes benchmarks/results/mas_lambda.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from clbench.metrics import pm
from clbench.report import aggregate, load_results

ROOT = Path(__file__).resolve().parents[1]


def lambda_of(overrides: list[str]) -> float:
    return float(next(o.split("=", 1)[1] for o in overrides if o.startswith("strategy.mas_lambda=")))


def benchmark_of(overrides: list[str]) -> str:
    return next(o.split("=", 1)[1] for o in overrides if o.startswith("benchmark="))


def collect(folders: list[Path]) -> dict:
    """{benchmark: {lambda: {"done": n, "diverged": n, "acc": stat, "acc_task_masked": stat}}}"""
    cells: dict = {}
    for folder in folders:
        for manifest in sorted(folder.rglob("sweep.json")):
            for run in json.loads(manifest.read_text())["runs"]:
                cell = cells.setdefault(benchmark_of(run["overrides"]), {}).setdefault(
                    lambda_of(run["overrides"]), {"done": 0, "diverged": 0, "other": 0})
                if run["status"] in ("done", "cached"):
                    cell["done"] += 1
                elif run["status"] == "failed" and str(run.get("error", "")).startswith("TrainingDiverged"):
                    cell["diverged"] += 1
                else:                                          # pending, or failed for another reason
                    cell["other"] += 1
            results = load_results(manifest.parent)
            for r in results:                                  # score the validation split, never the test split
                r["metrics"] = r["validation_metrics"]
            for row in aggregate(results):
                r = next(x for x in results if x["run_id"] in row["run_ids"])
                cell = cells[row["benchmark"]][float(r["config"]["strategy"]["mas_lambda"])]
                cell.update({k: row["metrics"].get(k) for k in ("acc", "acc_task_masked")})
    return cells


def choose(per_lambda: dict):
    """None until every run of the benchmark has an outcome (done or diverged)."""
    if any(c["other"] for c in per_lambda.values()):
        return None
    stable = {lam: c for lam, c in per_lambda.items() if c["diverged"] == 0 and c.get("acc")}
    return max(stable, key=lambda lam: stable[lam]["acc"]["mean"]) if stable else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="*", type=Path, default=[ROOT / "sweeps" / "mas-lambda"])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "mas_lambda")
    args = ap.parse_args(argv)
    cells = collect(args.folders)
    if not cells:
        print(f"no sweep.json under {', '.join(map(str, args.folders))}: run the sweeps first", file=sys.stderr)
        return 1
    lines = ["| benchmark | lambda | runs | diverged | not finished | validation ACC (%) | "
             "validation ACC task-masked (%) | chosen |", "|---|---|---|---|---|---|---|---|"]
    chosen = {}
    for bench in sorted(cells):
        chosen[bench] = choose(cells[bench])
        for lam in sorted(cells[bench]):
            c = cells[bench][lam]
            lines.append(f"| {bench} | {lam:g} | {c['done'] + c['diverged'] + c['other']} | {c['diverged']} "
                         f"| {c['other']} | {pm(c.get('acc'))} "
                         f"| {pm(c.get('acc_task_masked'))} | {'**yes**' if lam == chosen[bench] else ''} |")
    table = "\n".join(lines)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(table + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(
        {"rule": "highest mean validation ACC among lambdas with no diverged run", "chosen": chosen,
         "cells": {b: {str(lam): c for lam, c in v.items()} for b, v in cells.items()}}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
