"""Seed-parallel throughput: 5 seeds of one configuration, separately or as one vectorised model, in one invocation.

For each benchmark, three ways to get the same 5 results (each a fresh process, timed end to end: what a user
waits for, Python start and data loading included), interleaved so a busy spell of the machine hits them alike:

    separate processes   `clbench run ... seed=s` once per seed, one after another
    sweep                `clbench sweep ... seed=0,1,2,3,4 workers=1`: one process, the runs one after another
    sweep seed_parallel  the same with seed_parallel=true: the seeds train as one model (clbench/seed_parallel.py)

Every mode gets one core (threads=1, OMP_NUM_THREADS=1): on P cores each mode scales the same way (P processes,
or P groups of seeds: the sweep splits a configuration's seeds into `workers` groups), so the per-core ratio is
the comparison. Reported: wall time, seeds per hour, the ratios, and whether every mode gave the same accuracy
matrices (seed-parallel runs are bit-identical to separate ones on CPU).

    python benchmarks/seed_parallel.py                               # split-digits, split-mnist, permuted-mnist
    python benchmarks/seed_parallel.py --benchmarks split-digits --repeats 3
    python benchmarks/seed_parallel.py --device cuda                 # on a GPU (threads still 1 per process)

Writes benchmarks/results/seed_parallel.{json,md} (seed_parallel_cuda.* with --device cuda).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from speed import RESULTS, default_root, machine, median, save_report  # noqa: E402

CLBENCH = [sys.executable, "-m", "clbench"]
# The benchmarks' own protocols (presets included); permuted-mnist with GEM's 1,000 training images per task.
BENCHMARKS = {
    "split-digits": ["benchmark=split-digits", "strategy=replay"],
    "split-mnist": ["benchmark=split-mnist", "strategy=replay"],
    "permuted-mnist": ["benchmark=permuted-mnist", "strategy=replay", "scenario.train_samples_per_task=1000"],
}
MODES = ("separate processes", "sweep", "sweep seed_parallel")


def _env(threads: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    return env


def _call(cmd: list[str], env: dict) -> None:
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")


def one(mode: str, overrides: list[str], seeds: list[int], out: Path, env: dict) -> dict:
    """One mode end to end into an empty folder; returns the wall time and every seed's accuracy matrix."""
    t0 = time.perf_counter()
    if mode == "separate processes":
        for s in seeds:
            _call([*CLBENCH, "run", *overrides, f"seed={s}", f"out={out}"], env)
    else:
        extra = ["seed_parallel=true"] if mode == "sweep seed_parallel" else []
        _call([*CLBENCH, "sweep", *overrides, "seed=" + ",".join(map(str, seeds)), "workers=1", "threads=1",
               f"out={out}", *extra], env)
    wall = time.perf_counter() - t0
    matrices, grouped = {}, 0
    for f in sorted(out.glob("*/result.json")):
        r = json.loads(f.read_text())
        matrices[str(r["seed"])] = r["accuracy_matrix"]
        grouped += "seed_group" in r["timing"]
    if len(matrices) != len(seeds):
        raise RuntimeError(f"{mode}: {len(matrices)} results for {len(seeds)} seeds in {out}")
    return {"wall_s": wall, "seeds_per_hour": 3600 * len(seeds) / wall, "matrices": matrices,
            "seed_parallel_runs": grouped}


def markdown(report: dict) -> str:
    a = report["args"]
    lines = ["# Seed-parallel runs: 5 seeds, separately or as one vectorised model", "",
             f"Command: `{report['command']}`  ",
             f"Date: {report['date']}; device: {a['device']}; one core per mode (threads=1); CPU: "
             f"{report['machine']['cpu']} ({report['machine']['cpu_count']} logical cores); load average "
             f"before/after: {report['loadavg_before']} / {report['loadavg_after']}  ",
             f"Seeds {a['seeds']}; repeats {a['repeats']} (median wall time); each mode a fresh process tree, "
             f"timed end to end (Python start and data loading included).", "",
             "| benchmark | overrides | separate processes (s) | sweep (s) | sweep seed_parallel (s) | seeds/hour "
             "(separate / sweep / seed_parallel) | seed_parallel vs separate | seed_parallel vs sweep | "
             "same matrices |", "|---|---|---:|---:|---:|---|---:|---:|---|"]
    for b in report["summary"]:
        w, sph = b["wall_s"], b["seeds_per_hour"]
        lines.append(f"| {b['benchmark']} | `{' '.join(b['overrides'][1:])}` | {w['separate processes']:.1f} | "
                     f"{w['sweep']:.1f} | {w['sweep seed_parallel']:.1f} | "
                     f"{' / '.join(format(sph[m], '.0f') for m in MODES)} | "
                     f"{w['separate processes'] / w['sweep seed_parallel']:.2f}x | "
                     f"{w['sweep'] / w['sweep seed_parallel']:.2f}x | {'yes' if b['same_matrices'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--benchmarks", nargs="+", default=list(BENCHMARKS), choices=list(BENCHMARKS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--data-root", default=default_root())
    ap.add_argument("--override", action="append", default=[], help="extra clbench key=value for every run")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    stem = Path(args.out) if args.out else RESULTS / "seed_parallel"
    if args.device != "cpu":
        stem = stem.with_name(f"{stem.name}_{args.device.replace(':', '')}")
    env = _env(1)
    common = ["wandb.mode=disabled", "progress=false", f"data.root={args.data_root}", f"device={args.device}",
              *args.override]
    loadavg_before = [round(x, 2) for x in os.getloadavg()]
    runs, summary, k = [], [], 0
    tmp = Path(tempfile.mkdtemp(prefix="clbench-seedpar-"))
    try:
        for name in args.benchmarks:
            overrides = [*BENCHMARKS[name], *common]
            per_mode: dict[str, list[dict]] = {m: [] for m in MODES}
            for rep in range(args.repeats):
                for mode in MODES[k % 3:] + MODES[:k % 3]:     # rotate the order from cell to cell
                    out = tmp / f"{name}-{rep}-{mode.replace(' ', '_')}"
                    r = one(mode, overrides, args.seeds, out, env)
                    shutil.rmtree(out, ignore_errors=True)
                    r.update(benchmark=name, mode=mode, repeat=rep)
                    runs.append(r)
                    per_mode[mode].append(r)
                    print(f"  {name:<15s} {mode:<20s} {r['wall_s']:7.1f}s  {r['seeds_per_hour']:7.0f} seeds/h  "
                          f"(seed-parallel runs: {r['seed_parallel_runs']})", flush=True)
                k += 1
            wall = {m: median([x["wall_s"] for x in per_mode[m]]) for m in MODES}
            first = per_mode[MODES[0]][0]["matrices"]
            summary.append({"benchmark": name, "overrides": BENCHMARKS[name], "wall_s": wall,
                            "seeds_per_hour": {m: 3600 * len(args.seeds) / wall[m] for m in MODES},
                            "seed_parallel_runs": per_mode["sweep seed_parallel"][0]["seed_parallel_runs"],
                            "same_matrices": all(x["matrices"] == first for m in MODES for x in per_mode[m])})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report = {"command": "python benchmarks/seed_parallel.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "args": vars(args), "machine": machine(),
              "loadavg_before": loadavg_before, "loadavg_after": [round(x, 2) for x in os.getloadavg()],
              "summary": summary, "runs": [{k: v for k, v in r.items() if k != "matrices"} for r in runs]}
    save_report(stem, report, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
