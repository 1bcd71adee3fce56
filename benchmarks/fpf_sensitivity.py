"""FPF's module-sensitivity analysis (Zhao et al., ICML 2023, "Does Continual Learning Equally Forget All
Parameters?"): how much each module of the network changes over each experience, normalised by its size,

    drift_m(t) = ||theta_m(end of experience t) - theta_m(end of experience t-1)||_1 / |theta_m|,

for one or more strategies on a benchmark. The modules with the largest drift after the first experience are
the forgetting-prone ones FPF finetunes (`callbacks.fpf.modules`, or `modules=[auto]`).

    OMP_NUM_THREADS=1 python benchmarks/fpf_sensitivity.py benchmark=seq-mnist data.root=/work/shared/datasets \\
        --strategies naive replay --seeds 0 1 2 --out benchmarks/results/fpf_sensitivity.md
    python benchmarks/fpf_sensitivity.py --from-runs RUN_DIR [RUN_DIR ...]   # runs made with callbacks=[module_drift]

Each run is a plain `clbench run <overrides> strategy=<s> seed=<n> callbacks=[module_drift]`; the drift is in
its result.json (`strategy_state["callback:ModuleDrift"]["drift"]` and the `drift.<module>` logs).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

COMMON = ["wandb.mode=disabled", "progress=false", "callbacks=[module_drift]"]


def drift_of(result: dict) -> list[dict]:
    state = result.get("strategy_state", {}).get("callback:ModuleDrift")
    if not state:
        raise SystemExit(f"run {result.get('run_id')} has no module drift (run it with callbacks=[module_drift])")
    return state["drift"]


def table(label: str, drifts: list[list[dict]]) -> str:
    """Markdown: one row per module, one column per experience, mean (and std over runs) x 1e3."""
    modules = list(drifts[0][0])
    n_exp = len(drifts[0])
    head = ["module"] + [f"exp {t}" for t in range(n_exp)] + ["mean exp>=1"]
    lines = [f"**{label}** (n = {len(drifts)} runs; drift x 1e3, mean ± std)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in modules:
        cells = []
        for t in range(n_exp):
            vals = [1e3 * d[t][m] for d in drifts]
            sd = f" ± {statistics.stdev(vals):.2f}" if len(vals) > 1 else ""
            cells.append(f"{statistics.mean(vals):.2f}{sd}")
        later = [1e3 * d[t][m] for d in drifts for t in range(1, n_exp)]
        cells.append(f"{statistics.mean(later):.2f}" if later else "-")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    ranked = sorted(modules, key=lambda m: -statistics.mean(d[t][m] for d in drifts for t in range(1, n_exp)))
    lines += ["", f"most forgetting-prone after the first experience: {', '.join(ranked)}", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", help="clbench run overrides (benchmark=..., data.root=..., train.*)")
    p.add_argument("--strategies", nargs="+", default=["naive"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--from-runs", nargs="+", default=None, help="run folders made with callbacks=[module_drift]")
    p.add_argument("--out", default=None, help="also write the tables to this markdown file")
    args = p.parse_args(argv)
    groups: dict[str, list[list[dict]]] = {}
    if args.from_runs:
        for folder in args.from_runs:
            r = json.loads((Path(folder) / "result.json").read_text())
            label = f"{r['config']['benchmark']['name']} / {r['config']['strategy']['name']}"
            groups.setdefault(label, []).append(drift_of(r))
    else:
        from clbench.engine import run
        for s in args.strategies:
            for seed in args.seeds:
                result, _ = run([*args.overrides, *COMMON, f"strategy={s}", f"seed={seed}"], console=False)
                label = f"{result['config']['benchmark']['name']} / {s}"
                groups.setdefault(label, []).append(drift_of(result))
    text = "\n".join(table(label, d) for label, d in groups.items())
    print(text)
    if args.out:
        cmd = "python benchmarks/fpf_sensitivity.py " + " ".join(argv if argv is not None else sys.argv[1:])
        Path(args.out).write_text(f"# Module drift (FPF's sensitivity analysis)\n\n`{cmd}`\n\n{text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
