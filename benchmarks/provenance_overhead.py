"""Overhead of provenance (code hashing and data fingerprinting) on a default run, as a ratio.

Each repeat is a fresh subprocess doing what `clbench run benchmark=B` does (W&B off, CPU), with the
provenance steps timed separately, in one invocation:

    prepare          compose the config, load + check the dataset, build stream, model, strategy
    cold provenance  what the first run of a process pays: git state (2-3 git calls), the code identity
                     (hash + parse every module of the closure), the data fingerprint (sha256 of every
                     tensor of train and test)
    warm provenance  what each later run of the same process pays (a sweep worker): cached hashes, a
                     stat per module and per data file
    execute          train and evaluate (engine.execute; its own provenance call is the warm one)

overhead = cold provenance / (prepare + cold provenance + execute), likewise for warm; medians over
repeats. Benchmarks: split-digits (the `clbench run` default: replay, 5 epochs) and split-mnist (the
real MNIST, 60000 + 10000 images, 4 epochs) when it is under the data root.

    python benchmarks/provenance_overhead.py                       # split-digits x 5, split-mnist x 2
    python benchmarks/provenance_overhead.py --benchmarks split-digits --repeats 3
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
from speed import MARK, RESULTS, default_root, machine, run_worker, save_report  # noqa: E402

REPEATS = {"split-digits": 5, "split-mnist": 2}


def worker(args) -> dict:
    import torch
    torch.set_num_threads(args.threads)
    from clbench import provenance as P
    from clbench.config import compose
    from clbench.engine import execute, prepare

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose([f"benchmark={args.benchmark}", "wandb.mode=disabled", "progress=false", "device=cpu",
                       f"out={tmp}", f"data.root={args.data_root}"])
        t = time.perf_counter()
        run = prepare(cfg)
        prepare_s = time.perf_counter() - t
        ds = run.stream.dataset
        t = time.perf_counter()
        P.git_state()
        git_s = time.perf_counter() - t
        t = time.perf_counter()
        code = P.code_identity(cfg)
        code_s = time.perf_counter() - t
        t = time.perf_counter()
        P.data_fingerprint(ds)
        data_s = time.perf_counter() - t
        t = time.perf_counter()
        P.collect(cfg, ds)
        warm_s = time.perf_counter() - t
        t = time.perf_counter()
        result = execute(run, Path(tmp))
        execute_s = time.perf_counter() - t
    cold_s = git_s + code_s + data_s
    return {"benchmark": args.benchmark, "prepare_s": prepare_s, "git_s": git_s, "code_s": code_s, "data_s": data_s,
            "cold_s": cold_s, "warm_s": warm_s, "execute_s": execute_s, "run_s": prepare_s + cold_s + execute_s,
            "n_modules": len(code["modules"]), "data_bytes": sum(t.numel() * t.element_size() for t in
                                                                 (ds.x_train, ds.y_train, ds.x_test, ds.y_test)),
            "acc": result["metrics"]["acc"], "threads": torch.get_num_threads()}


def summarize(runs: list[dict]) -> dict:
    med = lambda k: statistics.median(r[k] for r in runs)  # noqa: E731
    s = {k: med(k) for k in ("prepare_s", "git_s", "code_s", "data_s", "cold_s", "warm_s", "execute_s", "run_s")}
    s.update(n=len(runs), n_modules=runs[0]["n_modules"], data_mb=runs[0]["data_bytes"] / 2**20,
             cold_ratio=statistics.median(r["cold_s"] / r["run_s"] for r in runs),
             warm_ratio=statistics.median(r["warm_s"] / r["run_s"] for r in runs))
    return s


def markdown(report: dict) -> str:
    lines = ["# Provenance overhead on a default run", "",
             f"Command: `{report['command']}`  ",
             f"Machine: {report['machine'].get('cpu')} ({report['machine'].get('cpu_count')} logical CPUs, shared), "
             f"torch {report['machine'].get('torch')}, {report['threads']} torch thread(s), CPU. Medians over "
             "fresh processes in one invocation; ratios are per process, then the median.", "",
             "| benchmark | n | modules | data (MB) | run (s) | git (ms) | code (ms) | data (ms) | cold (ms) | "
             "cold / run | warm (ms) | warm / run |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for b, s in report["summary"].items():
        lines.append(f"| {b} | {s['n']} | {s['n_modules']} | {s['data_mb']:.1f} | {s['run_s']:.2f} | "
                     f"{1e3 * s['git_s']:.1f} | {1e3 * s['code_s']:.1f} | {1e3 * s['data_s']:.1f} | "
                     f"{1e3 * s['cold_s']:.1f} | {100 * s['cold_ratio']:.2f} % | {1e3 * s['warm_s']:.2f} | "
                     f"{100 * s['warm_ratio']:.3f} % |")
    lines += ["", "cold: the first run of a process (git state, hashing and parsing every module of the code "
              "closure, sha256 of every train/test tensor); warm: each later run in the same process (a sweep "
              "worker), served from the per-process caches. run = prepare + cold + execute "
              "(training and evaluation); imports are not counted.", ""]
    for b in report.get("skipped", []):
        lines.append(f"Skipped {b}: {report['skipped'][b]}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--benchmarks", default="split-digits,split-mnist")
    ap.add_argument("--repeats", type=int, help="processes per benchmark (default: split-digits 5, split-mnist 2)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-root", default=default_root())
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--benchmark", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(MARK + json.dumps(worker(args)), flush=True)
        return 0

    runs, skipped = [], {}
    for bench in args.benchmarks.split(","):
        if bench == "split-mnist" and not (Path(args.data_root) / "MNIST" / "raw").is_dir():
            skipped[bench] = f"no MNIST under {args.data_root}"
            continue
        for i in range(args.repeats or REPEATS.get(bench, 3)):
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--benchmark", bench,
                   "--threads", str(args.threads), "--data-root", args.data_root]
            r = run_worker(cmd, args.threads, f"{bench} #{i}")
            print(f"{bench} #{i}: run {r['run_s']:.2f}s, cold provenance {1e3 * r['cold_s']:.1f} ms "
                  f"(git {1e3 * r['git_s']:.1f}, code {1e3 * r['code_s']:.1f}, data {1e3 * r['data_s']:.1f}), "
                  f"warm {1e3 * r['warm_s']:.2f} ms", flush=True)
            runs.append(r)
    summary = {b: summarize([r for r in runs if r["benchmark"] == b]) for b in dict.fromkeys(r["benchmark"] for r in runs)}
    report = {"command": "python benchmarks/provenance_overhead.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": machine(), "threads": args.threads, "summary": summary, "skipped": skipped, "runs": runs}
    save_report(RESULTS / "provenance_overhead", report, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
