"""train.amp and train.compile, measured: the speed.py experiment (split-MNIST, replay 500, MLP 400-400, 1 epoch)
run by clbench in float32, with bf16 autocast, and compiled, in one invocation (each run a fresh process, the
variants interleaved).

    python benchmarks/amp_compile.py                     # CPU: fp32, bf16, compile (torch.compile default mode)
    python benchmarks/amp_compile.py --device cuda --variants fp32 bf16 fp16 compile compile-reduce-overhead

Train+eval wall time includes the compilation (the first steps of each new input shape): what a run costs.
Writes benchmarks/results/amp_compile.{json,md} (amp_compile_cuda.* on a GPU).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from speed import RESULTS, default_root, interleaved, machine, save_report, spawn  # noqa: E402

VARIANTS = {
    "fp32": [],
    "bf16": ["train.amp=bf16"],
    "fp16": ["train.amp=fp16"],                                  # CUDA only
    "compile": ["train.compile=default"],
    "compile-reduce-overhead": ["train.compile=reduce-overhead"],  # CUDA graphs on a GPU
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", nargs="+", default=["fp32", "bf16", "compile"], choices=list(VARIANTS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-root", default=default_root())
    ap.add_argument("--max-train-per-exp", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    stem = Path(args.out) if args.out else RESULTS / "amp_compile"
    if args.device != "cpu":
        stem = stem.with_name(f"{stem.name}_{args.device.replace(':', '')}")
    loadavg_before = [round(x, 2) for x in os.getloadavg()]
    runs = []
    for rep, seed, v in interleaved(args.variants, args.seeds, args.repeats):
        wargs = argparse.Namespace(device=args.device, threads=args.threads, data_root=args.data_root,
                                   avalanche_buffer="reservoir", protocol="split-mnist",
                                   max_train_per_exp=args.max_train_per_exp, clbench_override=VARIANTS[v])
        r = spawn("clbench", seed, wargs)
        r.update(variant=v, repeat=rep)
        runs.append(r)
        print(f"  {v:<24s} seed {seed}: train+eval {r['train_eval_s']:7.2f}s (train {r['train_s']:.2f}, "
              f"eval {r['eval_s']:.2f})  acc {100 * r['final_acc']:.2f}%  [{r['device']}]", flush=True)
    summary = {}
    for v in args.variants:
        rs = [r for r in runs if r["variant"] == v]
        summary[v] = {"train_eval_s": statistics.median(r["train_eval_s"] for r in rs),
                      "train_s": statistics.median(r["train_s"] for r in rs),
                      "eval_s": statistics.median(r["eval_s"] for r in rs),
                      "final_acc": statistics.mean(r["final_acc"] for r in rs),
                      "device": sorted({r["device"] for r in rs})}
    base = summary[args.variants[0]]
    lines = ["# train.amp and train.compile (clbench, split-MNIST replay, the speed.py protocol)", "",
             f"Command: `python benchmarks/amp_compile.py {' '.join(argv if argv is not None else sys.argv[1:])}`  ",
             f"Date: {time.strftime('%Y-%m-%d %H:%M:%S')}; device: {args.device}; torch threads: {args.threads}; "
             f"CPU: {machine()['cpu']}; load average before/after: {loadavg_before} / "
             f"{[round(x, 2) for x in os.getloadavg()]}. Seeds {args.seeds}, repeats {args.repeats} (medians).", "",
             f"| variant | overrides | train+eval (s) | train (s) | eval (s) | train+eval / {args.variants[0]} | "
             f"final acc (%) |", "|---|---|---:|---:|---:|---:|---:|"]
    for v, s in summary.items():
        lines.append(f"| {v} | `{' '.join(VARIANTS[v]) or '(defaults)'}` | {s['train_eval_s']:.2f} | "
                     f"{s['train_s']:.2f} | {s['eval_s']:.2f} | {s['train_eval_s'] / base['train_eval_s']:.2f} | "
                     f"{100 * s['final_acc']:.2f} |")
    report = {"command": lines[2], "args": vars(args), "machine": machine(), "summary": summary, "runs": runs}
    save_report(stem, report, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
