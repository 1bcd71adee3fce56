"""Scaling: does clbench's cost per task stay flat as the stream grows?

permuted-MNIST (domain-IL, one 10-way head) with 5, 10 and 20 tasks, experience replay (reservoir buffer
of 500, 128 new + 128 memory samples per step), MLP 784-400-400-10, 1 epoch, SGD lr 0.01 momentum 0.9,
evaluation on all T test tasks before training and after every experience (eval.schedule=full).

Each (T, seed) run is a fresh subprocess (so peak RSS is its own) driven through clbench's Python API
(`prepare` + `execute`); the script times every experience's training (from the engine's experience_start
logger hook to the evaluation after it) and every evaluation (wrapping the run's `evaluator.evaluate`), and reads the replay buffer's footprint and the process RSS after
every experience. Reported per T: training time per task (mean and its spread over the experiences),
evaluation time per call and per evaluated task, the evaluation share of the total, and the buffer's
size/bytes as it fills.

    python benchmarks/scaling.py                          # T = 5 10 20, seed 0, full MNIST per task
    python benchmarks/scaling.py --train-samples 10000    # 10,000 training images per task (faster)
    python benchmarks/scaling.py --train-samples 10000 --test-per-class 200   # what ran on the busy machine
    python benchmarks/scaling.py --quick                  # smoke check: T = 2 4, 1,000 images per task
    python benchmarks/scaling.py --tasks 5 10 20 50 --schedules full seen_next   # eval.schedule before/after

With several `--schedules` (eval.schedule: full scores every task after every experience, seen_next the tasks
learned so far and the next one), every T runs once per schedule, interleaved, and the report gives the time
per task of each and their ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from speed import MARK, RESULTS, _rss_now_mb, _sync, default_root, machine, run_worker, save_report  # noqa: E402

P = dict(buffer_size=500, batch_size=128, mem_batch_size=128, epochs=1, lr=0.01, momentum=0.9, width=400,
         depth=2, eval_batch_size=1000)


def overrides(args) -> list[str]:
    o = ["benchmark=permuted-mnist", "strategy=replay", f"seed={args.seed}", "stream_seed=0",
         f"eval.schedule={args.worker_schedule}",
         f"scenario.n_experiences={args.worker_tasks}", f"strategy.buffer_size={P['buffer_size']}",
         f"strategy.mem_batch_size={P['mem_batch_size']}", f"train.batch_size={P['batch_size']}",
         f"train.epochs={P['epochs']}", "train.optimizer=sgd", f"train.lr={P['lr']}",
         f"train.momentum={P['momentum']}", "train.weight_decay=0.0", "model.name=mlp", "model.bias=true",
         f"model.width={P['width']}", f"model.depth={P['depth']}", f"eval.batch_size={P['eval_batch_size']}",
         "wandb.mode=disabled", "progress=false", f"data.root={args.data_root}", f"device={args.device}"]
    if args.train_samples:
        o.append(f"scenario.train_samples_per_task={args.train_samples}")
    if args.test_per_class:
        o.append(f"dataset.test_per_class={args.test_per_class}")
    return o + list(args.clbench_override)


def worker(args) -> dict:
    import torch
    from clbench.config import compose
    from clbench.engine import execute, prepare
    from clbench.loggers import Logger

    torch.set_num_threads(args.threads)
    run = prepare(compose(overrides(args)))
    strategy, evaluator = run.strategy, run.evaluator
    train_s, eval_s, train_cpu, eval_cpu, buffer, rss = [], [], [], [], [], []
    started = {}

    class Clock(Logger):   # the engine's own hooks: an experience starts training, then its row is evaluated
        def experience_start(self, run, exp, n_steps):
            started["t"], started["c"] = time.perf_counter(), time.process_time()

        def experience_end(self, run, exp):
            b = getattr(strategy, "buffer", None)
            buffer.append(b.state() if b is not None else None)
            rss.append(_rss_now_mb())

    def timed_evaluate(s, model=None, row=None, _evaluate=evaluator.evaluate):
        _sync(run.device)
        t0, c0 = time.perf_counter(), time.process_time()
        if started:       # training of this experience ended where its evaluation starts
            train_s.append(t0 - started.pop("t"))
            train_cpu.append(c0 - started.pop("c"))
        out = _evaluate(s, model=model, row=row)
        _sync(run.device)
        eval_s.append(time.perf_counter() - t0)
        eval_cpu.append(time.process_time() - c0)
        return out

    evaluator.evaluate = timed_evaluate      # an instance attribute: the engine calls it
    run.loggers = [Clock()]
    t0 = time.perf_counter()
    result = execute(run, Path("."))
    wall = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return dict(tasks=args.worker_tasks, seed=args.seed, schedule=args.worker_schedule, device=str(run.device),
                threads=torch.get_num_threads(),
                n_train=[len(e.train) for e in run.stream], n_test=[len(t.test) for t in run.stream.eval_tasks],
                train_s=train_s, eval_s=eval_s, train_cpu_s=train_cpu, eval_cpu_s=eval_cpu, train_eval_s=wall, buffer=buffer, rss_mb=rss,
                peak_rss_mb=ru.ru_maxrss / 1024, process_cpu_s=ru.ru_utime + ru.ru_stime,
                final_acc=result["metrics"].get("acc"), accuracy_matrix=result["accuracy_matrix"])


def spawn(tasks: int, seed: int, args, schedule: str = "full") -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker-tasks", str(tasks), "--seed", str(seed),
           "--worker-schedule", schedule,
           "--device", args.device, "--threads", str(args.threads), "--data-root", args.data_root]
    if args.train_samples:
        cmd += ["--train-samples", str(args.train_samples)]
    if args.test_per_class:
        cmd += ["--test-per-class", str(args.test_per_class)]
    for o in args.clbench_override:
        cmd += ["--clbench-override", o]
    return run_worker(cmd, args.threads, f"T={tasks} seed {seed} schedule {schedule}")


def summarize(r: dict) -> dict:
    """Per-run numbers, from CPU time (robust on a shared machine) and wall time."""
    T = r["tasks"]
    third = max(1, T // 3)
    n_test = sum(r["n_test"])
    out = {"tasks": T, "seed": r["seed"], "schedule": r.get("schedule", "full"), "device": r["device"],
           "train_eval_s": r["train_eval_s"],
           "peak_rss_mb": r["peak_rss_mb"], "rss_after_first_mb": r["rss_mb"][0],
           "rss_after_last_mb": r["rss_mb"][-1], "final_acc": r["final_acc"],
           "buffer_bytes_after_each": [b["bytes"] if b else None for b in r["buffer"]],
           "buffer_size_after_each": [b["size"] if b else None for b in r["buffer"]]}
    for clock, tr, ev in (("cpu", r["train_cpu_s"], r["eval_cpu_s"]), ("wall", r["train_s"], r["eval_s"])):
        out[clock] = {
            "train_per_task_s_mean": statistics.mean(tr),
            "train_per_task_s_min_max": [min(tr), max(tr)],
            # drift: mean of the last third of the experiences over the first third (1.0 = flat)
            "train_last_over_first": statistics.mean(tr[-third:]) / statistics.mean(tr[:third]),
            "eval_per_call_s_mean": statistics.mean(ev),
            "eval_per_call_last_over_first": statistics.mean(ev[-third:]) / statistics.mean(ev[:third]),
            "eval_per_test_image_us": 1e6 * statistics.mean(ev) / n_test,
            "eval_share": sum(ev) / (sum(ev) + sum(tr)),
            "train_total_s": sum(tr), "eval_total_s": sum(ev),
            "eval_per_task_s": sum(ev) / T, "total_per_task_s": (sum(ev) + sum(tr)) / T,
        }
    return out


def markdown(report: dict) -> str:
    a, rows = report["args"], report["summary"]
    n_train = report["runs"][0]["n_train"][0] if report["runs"] else "-"
    n_test = report["runs"][0]["n_test"][0] if report["runs"] else "-"
    lines = ["# Scaling: permuted-MNIST with a growing number of tasks (clbench, replay)", "",
             f"Command: `{report['command']}`  ",
             f"Date: {report['date']}; device: {', '.join(sorted({r['device'] for r in rows}))}; torch threads: "
             f"{a['threads']}; CPU: {report['machine']['cpu']} ({report['machine']['cpu_count']} logical cores); "
             f"load average before/after: {report['loadavg_before']} / {report['loadavg_after']}  ",
             f"Protocol: replay (reservoir, {P['buffer_size']} samples, {P['batch_size']} new + "
             f"{P['mem_batch_size']} memory per step), MLP 784-400-400-10, {P['epochs']} epoch, SGD lr {P['lr']} "
             f"momentum {P['momentum']}; {n_train} training images per task; evaluation on all T test tasks "
             f"({n_test} images each) before training and after every experience. Seeds: {a['seeds']}.", "",
             "Times are CPU seconds of the process (wall times, inflated by other load, are in the JSON).", "",
             "| T | seed | train / task (s), mean [min, max] | train last/first third | eval / call (s) | "
             "eval last/first third | eval per test image (us) | eval share | train+eval wall (s) | "
             "peak RSS (MB) | RSS after 1st / last exp (MB) | final acc (%) |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for s in rows:
        c = s["cpu"]
        lo, hi = c["train_per_task_s_min_max"]
        per_image = f"{c['eval_per_test_image_us']:.1f}" if s["schedule"] == "full" else "-"   # full rows only
        lines.append(f"| {s['tasks']}{'' if s['schedule'] == 'full' else ' (' + s['schedule'] + ')'} | {s['seed']} | "
                     f"{c['train_per_task_s_mean']:.2f} [{lo:.2f}, {hi:.2f}] | "
                     f"{c['train_last_over_first']:.2f} | {c['eval_per_call_s_mean']:.2f} | "
                     f"{c['eval_per_call_last_over_first']:.2f} | {per_image} | "
                     f"{100 * c['eval_share']:.1f}% | {s['train_eval_s']:.1f} | {s['peak_rss_mb']:.0f} | "
                     f"{s['rss_after_first_mb']:.0f} / {s['rss_after_last_mb']:.0f} | "
                     f"{100 * (s['final_acc'] or 0):.2f} |")
    schedules = sorted({s["schedule"] for s in rows})
    if len(schedules) > 1:
        lines += ["", "Evaluation schedule (eval.schedule), CPU seconds per task (training of the task + the evaluation "
                  "after it, the row before training spread over the T tasks):", "",
                  "| T | seed | train / task (full / seen_next) | eval / task, full | eval / task, seen_next | total / task, full | "
                  "total / task, seen_next | seen_next / full (total) | eval share full -> seen_next |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        by = {(s["tasks"], s["seed"], s["schedule"]): s["cpu"] for s in rows}
        for T, seed in sorted({(s["tasks"], s["seed"]) for s in rows}):
            f, c = by.get((T, seed, "full")), by.get((T, seed, "seen_next"))
            if not (f and c):
                continue
            lines.append(f"| {T} | {seed} | {f['train_per_task_s_mean']:.2f} / {c['train_per_task_s_mean']:.2f} | "
                         f"{f['eval_per_task_s']:.2f} | {c['eval_per_task_s']:.2f} | {f['total_per_task_s']:.2f} | "
                         f"{c['total_per_task_s']:.2f} | {c['total_per_task_s'] / f['total_per_task_s']:.2f} | "
                         f"{100 * f['eval_share']:.0f}% -> {100 * c['eval_share']:.0f}% |")
    if rows:
        big = max(rows, key=lambda s: s["tasks"])
        lines += ["", f"Replay buffer after each experience (T={big['tasks']}): size "
                  f"{big['buffer_size_after_each']}, bytes {big['buffer_bytes_after_each']}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, nargs="+", default=[5, 10, 20])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--train-samples", type=int, default=None,
                    help="training images per task (scenario.train_samples_per_task; default: all 60,000)")
    ap.add_argument("--test-per-class", type=int, default=None,
                    help="test images per class and task (dataset.test_per_class; default: all, 10,000 per task)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-root", default=default_root())
    ap.add_argument("--clbench-override", action="append", default=[])
    ap.add_argument("--quick", action="store_true", help="smoke check: T = 2 4, 1,000 images per task")
    ap.add_argument("--out", default=None)
    ap.add_argument("--schedules", nargs="+", default=["full"], choices=("full", "seen_next"),
                    help="eval.schedule values to run for every T (interleaved)")
    ap.add_argument("--worker-tasks", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--worker-schedule", default="full", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker_tasks:
        print(MARK + json.dumps(worker(args)), flush=True)
        return 0
    if args.quick:
        args.tasks, args.seeds = [2, 4], args.seeds[:1]
        args.train_samples = args.train_samples or 1000
    stem = Path(args.out) if args.out else RESULTS / ("speed_scaling_quick" if args.quick else "speed_scaling")
    if args.device != "cpu":
        stem = stem.with_name(f"{stem.name}_{args.device.replace(':', '')}")
    loadavg_before = [round(x, 2) for x in os.getloadavg()]
    runs, summary = [], []
    cells = [(seed, T) for seed in args.seeds for T in args.tasks]
    for k, (seed, T) in enumerate(cells):
        for schedule in args.schedules[k % len(args.schedules):] + args.schedules[:k % len(args.schedules)]:
            r = spawn(T, seed, args, schedule)
            runs.append(r)
            s = summarize(r)
            summary.append(s)
            c = s["cpu"]
            print(f"  T={T:<3d} seed {seed} {schedule}: CPU train/task {c['train_per_task_s_mean']:.2f}s "
                  f"(last/first {c['train_last_over_first']:.2f}), eval/task {c['eval_per_task_s']:.2f}s, "
                  f"eval share {100 * c['eval_share']:.1f}%, peak RSS {s['peak_rss_mb']:.0f} MB, "
                  f"acc {100 * (s['final_acc'] or 0):.2f}% [{s['device']}]", flush=True)
    summary.sort(key=lambda s: (s["seed"], s["tasks"], s["schedule"]))
    report = {"command": "python benchmarks/scaling.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "protocol": P, "args": vars(args), "machine": machine(),
              "loadavg_before": loadavg_before, "loadavg_after": [round(x, 2) for x in os.getloadavg()],
              "summary": summary, "runs": runs}
    save_report(stem, report, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
