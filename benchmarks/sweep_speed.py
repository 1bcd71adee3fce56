"""Sweep executors on this machine: wall time of the same digits sweep run serially, on a 2-process
pool, and through a local Ray instance; and whether they give identical results.

    python benchmarks/sweep_speed.py [--repeats 3] [--seeds 5] [--epochs 10]

Each measurement is a fresh `clbench sweep` process into an empty folder, timed end to end (Python
start, config composition, worker start-up, the runs, the aggregate table): what a user waits for.
The modes are interleaved (A B C D, A B C D, ...) so a busy spell of a shared machine hits them alike;
the medians are reported with the spread, the load average and the summed in-run compute seconds
(from the sweep manifest), which separate start-up overhead from the runs themselves.

Writes benchmarks/results/sweep_speed.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLBENCH = [sys.executable, "-m", "clbench"]

# Every run uses its config's `threads` (default 1) in every mode: the modes differ only in where runs execute.
MODES = {
    "local workers=1 (serial)": ["executor=local", "workers=1"],
    "local workers=2 (1 thread each)": ["executor=local", "workers=2"],
    "ray (local instance, 1 CPU per run)": ["executor=ray", "ray.num_cpus=1"],
}


def one(mode_args: list[str], grid: list[str], out: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # Ray: start a local instance
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    p = subprocess.run([*CLBENCH, "sweep", *grid, *mode_args, f"out={out}"], env=env, capture_output=True,
                       text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"sweep failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    manifest = json.loads((out / "sweep.json").read_text())
    runs = manifest["runs"]
    matrices = {}
    for r in runs:
        with open(out / r["run_id"] / "result.json") as f:
            matrices[r["run_id"]] = json.load(f)["accuracy_matrix"]
    return {"wall_s": wall, "run_s_sum": sum(r["seconds"] for r in runs), "n_runs": len(runs),
            "run_s_median": statistics.median(r["seconds"] for r in runs),
            "per_run": [[r["label"], r["seconds"], r["worker"]] for r in runs],
            "load_before": load0, "load_after": os.getloadavg()[0], "matrices": matrices}


CONTROL = """
import sys, time, torch
torch.set_num_threads(1)
from clbench.config import compose
from clbench.engine import run
cfg = compose(["train.epochs=%d", "wandb.mode=disabled", "out=%s", "progress=false", "strategy=replay", "seed=" + sys.argv[1]])
run(cfg, overwrite=True, console=False)  # warm-up: imports, data
ts = []
for _ in range(3):
    t = time.perf_counter(); run(cfg, overwrite=True, console=False); ts.append(time.perf_counter() - t)
print(sorted(ts)[1])
"""


def control(epochs: int, tmp: Path) -> dict:
    """No sweep machinery: the median time of one warm run in 1 plain process, then in 2 at once.
    If two independent processes are each much slower, the machine has no spare core to give."""
    code = CONTROL % (epochs, tmp / "control")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one_p = float(subprocess.run([sys.executable, "-c", code, "0"], env=env, capture_output=True, text=True,
                                 check=True).stdout.split()[-1])
    procs = [subprocess.Popen([sys.executable, "-c", code, str(i)], env=env, stdout=subprocess.PIPE, text=True)
             for i in (1, 2)]
    two_p = [float(p.communicate()[0].split()[-1]) for p in procs]
    return {"one_process_run_s": one_p, "two_processes_run_s": two_p,
            "throughput_ratio_two_vs_one": 2 * one_p / max(two_p)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--no-control", action="store_true", help="skip the 1-vs-2 plain-process control")
    ap.add_argument("--tag", default="sweep_speed", help="output file stem under benchmarks/results/")
    ap.add_argument("--modes", default=",".join(str(i) for i in range(len(MODES))),
                    help="comma-separated indices into MODES (default: all)")
    args = ap.parse_args()
    grid = ["benchmark=split-digits", "strategy=naive,replay", f"seed=range({args.seeds})",
            f"train.epochs={args.epochs}", "wandb.mode=disabled"]
    names = [list(MODES)[int(i)] for i in args.modes.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="sweep_speed_"))
    raw: dict[str, list[dict]] = {n: [] for n in names}
    try:
        for rep in range(args.repeats):
            for i, name in enumerate(names):
                out = tmp / f"r{rep}_m{i}"
                m = one(MODES[name], grid, out)
                raw[name].append(m)
                print(f"repeat {rep} | {name:<46s} wall {m['wall_s']:6.1f}s  runs {m['run_s_sum']:6.1f}s  "
                      f"load {m['load_before']:.1f}->{m['load_after']:.1f}", flush=True)
                shutil.rmtree(out, ignore_errors=True)
        ctrl = None if args.no_control else control(args.epochs, tmp)
        if ctrl:
            print(f"control (no sweep): one warm run {ctrl['one_process_run_s']:.2f}s in 1 process; "
                  f"{', '.join(f'{t:.2f}' for t in ctrl['two_processes_run_s'])}s in 2 processes at once", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    # identical results: every mode and repeat against the first measurement
    ref = raw[names[0]][0]["matrices"]
    identical = {n: all(m["matrices"] == ref for m in ms) for n, ms in raw.items()}
    summary = {}
    base = statistics.median(m["wall_s"] for m in raw[names[0]])
    for n, ms in raw.items():
        walls = [m["wall_s"] for m in ms]
        summary[n] = {
            "wall_s_median": statistics.median(walls), "wall_s_min": min(walls), "wall_s_max": max(walls),
            "wall_s_all": [round(w, 2) for w in walls],
            "run_s_sum_median": statistics.median(m["run_s_sum"] for m in ms),
            "per_run_s_median": statistics.median(m["run_s_median"] for m in ms),
            "speedup_vs_first_mode": base / statistics.median(walls),
            "load_avg_1min": [round(m["load_before"], 2) for m in ms],
            "identical_results_to_first_mode": identical[n],
            "per_run_s_and_worker": [m["per_run"] for m in ms],
        }
    record = {
        "protocol": {"grid": grid, "n_runs": raw[names[0]][0]["n_runs"], "repeats": args.repeats,
                     "timing": "end-to-end wall time of a fresh `clbench sweep` process into an empty folder",
                     "machine": f"{os.cpu_count()} CPU cores, shared with other jobs during the measurement",
                     "python": sys.version.split()[0]},
        "results": summary,
        "control_plain_processes": ctrl,
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    res_dir = HERE / "results"
    res_dir.mkdir(exist_ok=True)
    (res_dir / f"{args.tag}.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [f"# Sweep executors: wall time of one digits sweep ({record['protocol']['n_runs']} runs)", "",
             f"Grid: `{' '.join(grid)}`; {args.repeats} repeats per mode, interleaved; "
             f"{record['protocol']['machine']}; {record['when']}.", "",
             "| mode | wall s (median) | min-max | in-run s (sum) | per run s (median) | speed-up vs first | "
             "load avg | identical results |",
             "|---|---|---|---|---|---|---|---|"]
    for n, s in summary.items():
        lines.append(f"| {n} | {s['wall_s_median']:.1f} | {s['wall_s_min']:.1f}-{s['wall_s_max']:.1f} | "
                     f"{s['run_s_sum_median']:.1f} | {s['per_run_s_median']:.2f} | {s['speedup_vs_first_mode']:.2f}x | "
                     f"{', '.join(f'{x:.1f}' for x in s['load_avg_1min'])} | {s['identical_results_to_first_mode']} |")
    lines += ["", "Wall time is end to end (Python start, worker/Ray start-up, runs, aggregate table). "
              "In-run seconds are summed over runs from the sweep manifest (they include each worker's "
              "first-run imports); the per-run median is robust to those first runs. The load average (1 min, before each "
              "repeat) shows how busy the shared machine was."]
    if ctrl:
        lines += ["", f"Control without the sweep machinery (one warm `replay` run, {args.epochs} epochs, 1 thread): "
                  f"{ctrl['one_process_run_s']:.2f} s alone; "
                  f"{' and '.join(f'{t:.2f}' for t in ctrl['two_processes_run_s'])} s with two plain processes at once "
                  f"(throughput x{ctrl['throughput_ratio_two_vs_one']:.2f}). Where two independent processes gain "
                  f"nothing, neither can two workers."]
    (res_dir / f"{args.tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
