"""Does the torch thread count change a run's numbers? Same config, same seeds, separate processes.

    python benchmarks/threads_repro.py --data-root /path/to/datasets   # full split-MNIST, replay, 1 epoch, seed 3
    python benchmarks/threads_repro.py --config benchmark=split-digits seed=3

For the config given, runs `clbench run` in fresh processes with threads=1, threads=2 and threads=1
again, and compares the accuracy matrices: bit-identical or not, and the largest difference. The
repeat with the same thread count shows whether the run is reproducible at all on this machine; the
other shows what the thread count alone changes. Writes benchmarks/results/threads_repro.{json,md}
(appending one entry per config).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from speed import default_root  # noqa: E402
DEFAULT = ["benchmark=split-mnist", "strategy=replay", "train.epochs=1", "seed=3"]


def run(config: list[str], threads: int, out: Path, data_root: str) -> dict:
    cmd = [sys.executable, "-m", "clbench", "run", *config, f"threads={threads}", f"out={out}",
           f"data.root={data_root}", "wandb.mode=disabled", "progress=false", "device=cpu"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    (result_file,) = out.glob("*/result.json")   # one run per fresh folder
    r = json.loads(result_file.read_text())
    return {"threads": threads, "env_threads": r["env"]["threads"], "R": r["accuracy_matrix"],
            "acc": r["metrics"]["acc"], "seconds": round(time.perf_counter() - t0, 1), "env": r["env"]}


def max_diff(a, b) -> float:
    return max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", nargs="*", default=DEFAULT, help="run overrides (default: %(default)s)")
    ap.add_argument("--data-root", default=default_root(), help="root holding MNIST/raw")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [run(args.config, t, Path(tmp) / f"{i}_t{t}", args.data_root) for i, t in enumerate((1, 2, 1))]
    one, two, again = runs
    entry = {
        "config": args.config, "date": time.strftime("%Y-%m-%d %H:%M"),
        "torch": one["env"]["torch"], "blas": one["env"]["blas"], "cpu": one["env"]["cpu"],
        "cpu_capability": one["env"]["cpu_capability"],
        "runs": [{k: v for k, v in r.items() if k != "env"} for r in runs],
        "same_threads_identical": one["R"] == again["R"],
        "one_vs_two_identical": one["R"] == two["R"],
        "one_vs_two_max_abs_diff": max_diff(one["R"], two["R"]),
        "one_vs_two_acc": [one["acc"], two["acc"]],
    }
    res = HERE / "results"
    res.mkdir(exist_ok=True)
    path = res / "threads_repro.json"
    entries = [e for e in (json.loads(path.read_text()) if path.exists() else []) if e["config"] != args.config]
    entries.append(entry)
    path.write_text(json.dumps(entries, indent=2) + "\n")
    lines = ["# Thread count and reproducibility (benchmarks/threads_repro.py)", "",
             "Each config run three times in fresh processes on the CPU: threads=1, threads=2, threads=1 again.", "",
             "| config | torch / BLAS / CPU | threads=1 twice: identical R | 1 vs 2 threads: identical R | max abs diff in R | acc (1 thread, 2 threads) |",
             "|---|---|---|---|---|---|"]
    for e in entries:
        lines.append(f"| `{' '.join(e['config'])}` | {e['torch']} / {e['blas']} / {e['cpu']} ({e['cpu_capability']}) | "
                     f"{'yes' if e['same_threads_identical'] else 'NO'} | {'yes' if e['one_vs_two_identical'] else 'no'} | "
                     f"{e['one_vs_two_max_abs_diff']:.4f} | {e['one_vs_two_acc'][0]:.4f}, {e['one_vs_two_acc'][1]:.4f} |")
    (res / "threads_repro.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
