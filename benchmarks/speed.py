"""Speed, side by side: one continual-learning experiment run three ways in one invocation.

    clbench     clbench.engine.prepare + execute (the Python API behind `clbench run`)
    avalanche   Avalanche 0.6.0: its SplitMNIST, Naive + ReplayPlugin, EvaluationPlugin(accuracy only)
    bare        a plain PyTorch loop written below: in-memory tensors, a reservoir buffer, no framework

Experiment (issue 8): split-MNIST class-IL, 5 experiences x 2 classes (order 0..9), MLP 784-400-400-10,
replay with a 500-sample buffer, every step 128 new + 128 memory samples, 1 epoch per experience, SGD
lr 0.01 momentum 0.9 (optimizer state reset at each experience), evaluation on all 5 test tasks before
training and after each experience (batches of 1000, inference mode).

Every run is a fresh subprocess, so peak memory (ru_maxrss) and CPU time belong to one method. Methods
are interleaved (the order rotates from run to run) so that noise from other load on the machine is
spread over all three. Reported per method: medians over all runs of the training+evaluation wall time
(from the first evaluation to the last, excluding imports and data loading), the wall time of the
whole process, its CPU time (user+sys), its peak RSS (and peak CUDA memory), and the final accuracy
(mean over the 5 tasks after the last experience) as mean +- std over seeds.

    python benchmarks/speed.py                      # seeds 0 1 2, 1 repeat, results/speed.{json,md}
    python benchmarks/speed.py --repeats 3          # 9 runs per method
    python benchmarks/speed.py --quick              # smoke check: 2000 samples/experience, seed 0
    python benchmarks/speed.py --device cuda        # on a GPU (device recorded with every number)
    python benchmarks/speed.py --protocol pmnist20 --seeds 0   # permuted MNIST, 20 tasks (benchmarks/speed_pmnist.py)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
METHODS = ("clbench", "avalanche", "bare")
PROTOCOLS = ("split-mnist", "pmnist20")   # pmnist20: Mammoth's P-MNIST at 20 tasks (benchmarks/speed_pmnist.py)
ALL_METHODS = (*METHODS, "clbench_seen_next")
MARK = "@@SPEED_RESULT@@ "

# The protocol, in one place; every method reads it from here.
P = dict(n_experiences=5, class_order=list(range(10)), width=400, depth=2, buffer_size=500, batch_size=128,
         mem_batch_size=128, epochs=1, lr=0.01, momentum=0.9, eval_batch_size=1000)
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081   # the usual MNIST statistics (what Avalanche's transform uses)


def default_root() -> str:
    env = os.environ.get("CLBENCH_DATA")
    if env:
        return env
    shared = HERE.parent.parent / "shared" / "datasets"
    return str(shared if shared.is_dir() else Path("data").resolve())


# ---------------------------------------------------------------------------------------------------------
# helpers shared by the workers
# ---------------------------------------------------------------------------------------------------------
def _rss_now_mb() -> float:
    """Current resident set size of this process (Linux /proc), MB."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def _sync(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _resolve_device(name: str):
    import torch
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _subset_positions(n: int, keep: int | None, seed: int = 0):
    """Positions of a fixed random subset (quick mode), the same rule for every method."""
    import torch
    if keep is None or keep >= n:
        return None
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:keep].sort().values


def make_mlp(n_in: int = 784):
    """784-400-400-10 with the same layer creation order as clbench's MLP, so that the same
    torch.manual_seed gives the same initial weights in all three methods."""
    from torch import nn
    layers = [nn.Flatten()]
    d = n_in
    for _ in range(P["depth"]):
        layers += [nn.Linear(d, P["width"]), nn.ReLU()]
        d = P["width"]
    layers.append(nn.Linear(d, 10))
    return nn.Sequential(*layers)


# ---------------------------------------------------------------------------------------------------------
# 1. clbench
# ---------------------------------------------------------------------------------------------------------
def clbench_overrides(args) -> list[str]:
    return ["benchmark=split-mnist", "strategy=replay", f"seed={args.seed}", "stream_seed=0",
            f"scenario.n_experiences={P['n_experiences']}", f"scenario.class_order={P['class_order']}",
            "strategy.buffer=reservoir", f"strategy.buffer_size={P['buffer_size']}",
            f"strategy.mem_batch_size={P['mem_batch_size']}",
            f"train.batch_size={P['batch_size']}", f"train.epochs={P['epochs']}", "train.optimizer=sgd",
            f"train.lr={P['lr']}", f"train.momentum={P['momentum']}", "train.weight_decay=0.0",
            "train.reset_optimizer=true", "model.name=mlp", "model.bias=true", f"model.width={P['width']}",
            f"model.depth={P['depth']}", f"eval.batch_size={P['eval_batch_size']}", "wandb.mode=disabled",
            "progress=false", f"data.root={args.data_root}", f"device={args.device}"] + list(args.clbench_override)


def run_clbench(args) -> dict:
    import torch
    from clbench.config import compose
    from clbench.engine import execute, prepare

    cfg = compose(clbench_overrides(args))
    run = prepare(cfg)
    for exp in run.stream:   # quick mode: the same-size subset of every experience
        keep = _subset_positions(len(exp.train), args.max_train_per_exp)
        if keep is not None:
            exp.train.indices = exp.train.indices[keep.to(exp.train.indices.device)]
            exp.train.t = exp.train.t[keep.to(exp.train.t.device)]
    rss_ready = _rss_now_mb()
    _sync(run.device)
    t0 = time.perf_counter()
    c0 = time.process_time()
    result = execute(run, Path("."))
    _sync(run.device)
    wall = time.perf_counter() - t0
    R = result["accuracy_matrix"]
    return dict(device=str(run.device), train_eval_s=wall, train_eval_cpu_s=time.process_time() - c0,
                train_s=result["timing"]["train_s"], eval_s=result["timing"]["eval_s"],
                final_acc=sum(R[-1]) / len(R[-1]), final_row=R[-1], rss_ready_mb=rss_ready,
                n_train=[len(e.train) for e in run.stream],
                buffer=result["strategy_state"].get("buffer"),
                peak_cuda_mb=(torch.cuda.max_memory_allocated(run.device) / 2**20
                              if run.device.type == "cuda" else None))


# ---------------------------------------------------------------------------------------------------------
# 2. Avalanche 0.6.0
# ---------------------------------------------------------------------------------------------------------
def run_avalanche(args) -> dict:
    import torch
    from torch import nn
    from avalanche.benchmarks.classic import SplitMNIST
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin
    from avalanche.training.storage_policy import ExperienceBalancedBuffer, ReservoirSamplingBuffer
    from avalanche.training.supervised import Naive

    device = _resolve_device(args.device)
    # SplitMNIST reads <dataset_root>/MNIST/raw/*-ubyte through torchvision's MNIST; with the files
    # present its download=True finds them and downloads nothing.
    bm = SplitMNIST(n_experiences=P["n_experiences"], seed=0, fixed_class_order=P["class_order"],
                    dataset_root=args.data_root)
    torch.manual_seed(args.seed)
    model = make_mlp()
    storage = (ReservoirSamplingBuffer(P["buffer_size"]) if args.avalanche_buffer == "reservoir"
               else ExperienceBalancedBuffer(max_size=P["buffer_size"], adaptive_size=True))
    replay = ReplayPlugin(mem_size=P["buffer_size"], batch_size=P["batch_size"],
                          batch_size_mem=P["mem_batch_size"], storage_policy=storage)
    evaluator = EvaluationPlugin(accuracy_metrics(experience=True), loggers=[])
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=P["lr"], momentum=P["momentum"]),
                     criterion=nn.CrossEntropyLoss(), train_mb_size=P["batch_size"], train_epochs=P["epochs"],
                     eval_mb_size=P["eval_batch_size"], device=device, plugins=[replay], evaluator=evaluator)
    experiences = list(bm.train_stream)
    for exp in experiences:
        keep = _subset_positions(len(exp.dataset), args.max_train_per_exp)
        if keep is not None:
            exp.dataset = exp.dataset.subset(keep.tolist())
    rss_ready = _rss_now_mb()
    keys = [f"Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp{j:03d}" for j in range(P["n_experiences"])]
    t0 = time.perf_counter()
    c0 = time.process_time()
    train_s = eval_s = 0.0
    te = time.perf_counter()
    strategy.eval(bm.test_stream)                 # the row before training, as clbench does
    _sync(device)
    eval_s += time.perf_counter() - te
    for exp in experiences:
        tt = time.perf_counter()
        strategy.train(exp, num_workers=0)
        _sync(device)
        train_s += time.perf_counter() - tt
        te = time.perf_counter()
        res = strategy.eval(bm.test_stream)
        _sync(device)
        eval_s += time.perf_counter() - te
    wall = time.perf_counter() - t0
    row = [float(res[k]) for k in keys]
    return dict(device=str(device), train_eval_s=wall, train_eval_cpu_s=time.process_time() - c0,
                train_s=train_s, eval_s=eval_s, final_acc=sum(row) / len(row), final_row=row,
                rss_ready_mb=rss_ready, n_train=[len(e.dataset) for e in experiences],
                buffer={"size": len(storage.buffer), "policy": type(storage).__name__},
                peak_cuda_mb=(torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None))


# ---------------------------------------------------------------------------------------------------------
# 3. the bare PyTorch loop
# ---------------------------------------------------------------------------------------------------------
def reservoir_slots(seen: int, n: int, cap: int, g) -> dict:
    """Reservoir sampling (Algorithm R) vectorised over a batch of n samples, `seen` samples into the stream: the
    k-th sample (0-based) takes slot k while k < cap, else slot j ~ U{0..k} if j < cap; the last writer wins.
    Returns {slot: position in the batch}, drawing from `g` as clbench's ReservoirBuffer does."""
    import torch
    ranks = torch.arange(seen, seen + n, dtype=torch.float64)
    j = torch.floor(torch.rand(n, generator=g, dtype=torch.float64) * (ranks + 1)).long()
    slot = torch.where(ranks < cap, ranks.long(), j)
    return {s_: p_ for p_, s_ in enumerate(slot.tolist()) if s_ < cap}


def run_bare(args) -> dict:
    import torch
    import torch.nn.functional as F
    from torchvision.datasets import MNIST

    device = _resolve_device(args.device)
    # One CPU generator for minibatch order, memory draws and reservoir decisions, used in the same
    # order as clbench's Strategy/ReservoirBuffer: with the same seed both compute the same numbers.
    g = torch.Generator().manual_seed(args.seed)

    def tensors(train: bool):
        ds = MNIST(args.data_root, train=train, download=False)
        x = ds.data.reshape(len(ds.data), -1).to(device).float()   # normalised once, in place
        x.div_(255).sub_(MNIST_MEAN).div_(MNIST_STD)
        return x, ds.targets.to(device)

    x_tr, y_tr = tensors(True)
    x_te, y_te = tensors(False)
    groups = [P["class_order"][2 * i:2 * i + 2] for i in range(P["n_experiences"])]
    train_idx, test_idx = [], []
    for cls in groups:
        cls_t = torch.tensor(cls, device=device)
        idx = torch.isin(y_tr, cls_t).nonzero().squeeze(1)
        keep = _subset_positions(len(idx), args.max_train_per_exp)
        train_idx.append(idx if keep is None else idx[keep.to(device)])
        test_idx.append(torch.isin(y_te, cls_t).nonzero().squeeze(1))
    torch.manual_seed(args.seed)
    model = make_mlp().to(device)

    cap = P["buffer_size"]
    buf_x = torch.empty(cap, x_tr.shape[1], device=device)
    buf_y = torch.empty(cap, dtype=torch.long, device=device)
    n_buf = seen = 0

    @torch.inference_mode()
    def evaluate() -> list[float]:
        model.eval()
        accs = []
        for idx in test_idx:
            correct = 0
            for s in range(0, len(idx), P["eval_batch_size"]):
                b = idx[s:s + P["eval_batch_size"]]
                correct += int((model(x_te[b]).argmax(1) == y_te[b]).sum())
            accs.append(correct / len(idx))
        model.train()
        return accs

    rss_ready = _rss_now_mb()
    t0 = time.perf_counter()
    c0 = time.process_time()
    train_s = eval_s = 0.0
    te = time.perf_counter()
    evaluate()
    _sync(device)
    eval_s += time.perf_counter() - te
    for idx in train_idx:
        tt = time.perf_counter()
        opt = torch.optim.SGD(model.parameters(), lr=P["lr"], momentum=P["momentum"])
        for _ in range(P["epochs"]):
            order = idx[torch.randperm(len(idx), generator=g).to(device)]
            for s in range(0, len(order), P["batch_size"]):
                b = order[s:s + P["batch_size"]]
                x, y = x_tr[b], y_tr[b]
                if n_buf:
                    m = torch.randperm(n_buf, generator=g)[:P["mem_batch_size"]].to(device)
                    x, y = torch.cat([x, buf_x[m]]), torch.cat([y, buf_y[m]])
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(x), y).backward()
                opt.step()
                last = reservoir_slots(seen, len(b), cap, g)
                if last:
                    sl = torch.tensor(list(last), device=device)
                    ps = b[torch.tensor(list(last.values()), device=device)]
                    buf_x[sl], buf_y[sl] = x_tr[ps], y_tr[ps]
                seen += len(b)
                n_buf = min(seen, cap)
        _sync(device)
        train_s += time.perf_counter() - tt
        te = time.perf_counter()
        row = evaluate()
        _sync(device)
        eval_s += time.perf_counter() - te
    wall = time.perf_counter() - t0
    return dict(device=str(device), train_eval_s=wall, train_eval_cpu_s=time.process_time() - c0,
                train_s=train_s, eval_s=eval_s, final_acc=sum(row) / len(row), final_row=row,
                rss_ready_mb=rss_ready, n_train=[len(i) for i in train_idx],
                buffer={"size": n_buf, "seen": seen, "bytes": buf_x.numel() * buf_x.element_size()},
                peak_cuda_mb=(torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None))


WORKERS = {"clbench": run_clbench, "avalanche": run_avalanche, "bare": run_bare}


def worker_main(args) -> None:
    import torch
    torch.set_num_threads(args.threads)
    if args.protocol == "pmnist20":
        from speed_pmnist import WORKERS as PMNIST_WORKERS
        out = PMNIST_WORKERS[args.worker](args)
    else:
        out = WORKERS[args.worker](args)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    out.update(method=args.worker, seed=args.seed, threads=torch.get_num_threads(),
               process_cpu_s=ru.ru_utime + ru.ru_stime, peak_rss_mb=ru.ru_maxrss / 1024)
    print(MARK + json.dumps(out), flush=True)


# ---------------------------------------------------------------------------------------------------------
# the driver: interleaved subprocesses, medians, ratios, files
# ---------------------------------------------------------------------------------------------------------
def spawn(method: str, seed: int, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", method, "--seed", str(seed),
           "--device", args.device, "--threads", str(args.threads), "--data-root", args.data_root,
           "--avalanche-buffer", args.avalanche_buffer, "--protocol", args.protocol]
    if args.max_train_per_exp:
        cmd += ["--max-train-per-exp", str(args.max_train_per_exp)]
    for o in args.clbench_override:
        cmd += ["--clbench-override", o]
    return run_worker(cmd, args.threads, f"{method} (seed {seed})")


def run_worker(cmd: list[str], threads: int, what: str) -> dict:
    """Run one measurement in its own process (so its peak memory and CPU time are its own) and read
    the JSON line it prints after MARK; adds the process's wall time."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    lines = [l for l in p.stdout.splitlines() if l.startswith(MARK)]
    if p.returncode != 0 or not lines:
        raise RuntimeError(f"{what} failed with exit code {p.returncode}:\n{p.stderr[-4000:]}")
    out = json.loads(lines[-1][len(MARK):])
    out["process_wall_s"] = wall
    return out


def interleaved(items: list, seeds: list, repeats: int):
    """(repeat, seed, item) for every run, the order of the items rotating from one (repeat, seed) to the next so
    that a busy spell of this shared machine falls on every item alike."""
    k = 0
    for rep in range(repeats):
        for seed in seeds:
            yield from ((rep, seed, it) for it in items[k % len(items):] + items[:k % len(items)])
            k += 1


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(runs: list[dict], methods) -> dict:
    s = {}
    for m in methods:
        rs = [r for r in runs if r["method"] == m]
        if not rs:
            continue
        by_seed: dict[int, list[float]] = {}
        for r in rs:
            by_seed.setdefault(r["seed"], []).append(r["final_acc"])
        accs = [statistics.mean(v) for v in by_seed.values()]
        s[m] = {
            "n_runs": len(rs),
            "device": sorted({r["device"] for r in rs}),
            "train_eval_s": median([r["train_eval_s"] for r in rs]),
            "train_s": median([r["train_s"] for r in rs]),
            "eval_s": median([r["eval_s"] for r in rs]),
            "train_eval_cpu_s": median([r["train_eval_cpu_s"] for r in rs]),
            "process_wall_s": median([r["process_wall_s"] for r in rs]),
            "process_cpu_s": median([r["process_cpu_s"] for r in rs]),
            "peak_rss_mb": median([r["peak_rss_mb"] for r in rs]),
            "rss_ready_mb": median([r["rss_ready_mb"] for r in rs]),
            "peak_cuda_mb": median([r.get("peak_cuda_mb") for r in rs]),
            "train_eval_s_min_max": [min(r["train_eval_s"] for r in rs), max(r["train_eval_s"] for r in rs)],
            "final_acc_mean": statistics.mean(accs),
            "final_acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "final_acc_by_seed": {str(k): statistics.mean(v) for k, v in sorted(by_seed.items())},
            "final_rows_by_seed": {str(r["seed"]): r["final_row"] for r in sorted(rs, key=lambda r: r["seed"])},
            "per_task_s": [median(v) for v in zip(*[r["per_task_s"] for r in rs])] if "per_task_s" in rs[0] else None,
        }
    return s


def ratios(s: dict) -> dict:
    def r(a, b, key):
        if a in s and b in s and s[b][key]:
            return s[a][key] / s[b][key]
        return None
    out = {}
    for key in ("train_eval_s", "train_eval_cpu_s", "train_s", "eval_s", "process_wall_s", "process_cpu_s",
                "peak_rss_mb"):
        out[key] = {"clbench/bare": r("clbench", "bare", key), "avalanche/clbench": r("avalanche", "clbench", key),
                    "avalanche/bare": r("avalanche", "bare", key),
                    "clbench_seen_next/bare": r("clbench_seen_next", "bare", key),
                    "clbench_seen_next/clbench": r("clbench_seen_next", "clbench", key)}
    acc = {m: s[m]["final_acc_mean"] for m in s}
    if "clbench" in s and "bare" in s:  # same seed, same RNG use: the two should agree exactly
        out["clbench_equals_bare"] = s["clbench"]["final_rows_by_seed"] == s["bare"]["final_rows_by_seed"]
    out["final_acc_max_gap_points"] = 100 * (max(acc.values()) - min(acc.values())) if acc else None
    return out


def machine() -> dict:
    import torch
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    d = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
         "cpu": cpu, "cpu_count": os.cpu_count(), "cuda_available": torch.cuda.is_available()}
    try:
        import importlib.metadata as md
        d["avalanche"] = md.version("avalanche-lib")
        d["clbench"] = md.version("clbench")
    except Exception:  # noqa: BLE001 - versions are informative only
        pass
    if torch.cuda.is_available():
        d["gpu"] = torch.cuda.get_device_name(0)
    return d


def fmt(v, spec=".1f"):
    return "-" if v is None else format(v, spec)


def save_report(stem: Path, report: dict, md: str) -> None:
    """Print the markdown table and write <stem>.json (every run) and <stem>.md."""
    print("\n" + md)
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    stem.with_suffix(".md").write_text(md)
    print(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.md')}")


def markdown(report: dict) -> str:
    s, rt, a = report["summary"], report["ratios"], report["args"]
    lines = [f"# Speed: clbench vs Avalanche {report['machine'].get('avalanche', '')} vs a bare PyTorch loop", "",
             f"Command: `{report['command']}`  ",
             f"Date: {report['date']}; device: {', '.join(sorted({d for m in s.values() for d in m['device']}))}; "
             f"torch threads per process: {a['threads']}; CPU: {report['machine']['cpu']} "
             f"({report['machine']['cpu_count']} logical cores); load average before/after: "
             f"{report['loadavg_before']} / {report['loadavg_after']}  ",
             f"Protocol: split-MNIST class-IL 5x2, MLP 784-400-400-10, replay buffer {P['buffer_size']}, "
             f"{P['batch_size']} new + {P['mem_batch_size']} memory samples per step, {P['epochs']} epoch, "
             f"SGD lr {P['lr']} momentum {P['momentum']}, evaluation on all tasks before training and after each "
             f"experience. Training samples per experience: "
             f"{report['runs'][0]['n_train'] if report['runs'] else '-'}. Seeds {a['seeds']}, repeats {a['repeats']} "
             f"(medians over {len(a['seeds']) * a['repeats']} runs per method, methods interleaved).", "",
             "| method | train+eval wall (s) | train+eval CPU (s) | train (s) | eval (s) | process wall (s) | "
             "process CPU (s) | peak RSS (MB) | RSS before training (MB) | final acc (%) mean ± std over seeds |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m, v in s.items():
        lines.append(f"| {m} | {fmt(v['train_eval_s'], '.2f')} | {fmt(v['train_eval_cpu_s'], '.2f')} | "
                     f"{fmt(v['train_s'], '.2f')} | "
                     f"{fmt(v['eval_s'], '.2f')} | {fmt(v['process_wall_s'], '.2f')} | {fmt(v['process_cpu_s'], '.2f')} | "
                     f"{fmt(v['peak_rss_mb'], '.0f')} | {fmt(v['rss_ready_mb'], '.0f')} | "
                     f"{100 * v['final_acc_mean']:.2f} ± {100 * v['final_acc_std']:.2f} |")
    lines += ["", "| ratio | train+eval wall | train+eval CPU | train | eval | process wall | process CPU | peak RSS |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for pair in ("clbench/bare", "avalanche/clbench", "avalanche/bare"):
        lines.append(f"| {pair} | " + " | ".join(fmt(rt[k][pair], '.2f') for k in
                     ("train_eval_s", "train_eval_cpu_s", "train_s", "eval_s", "process_wall_s", "process_cpu_s",
                      "peak_rss_mb")) + " |")
    lines += ["", f"Largest gap in mean final accuracy between methods: {fmt(rt['final_acc_max_gap_points'], '.2f')} "
              "points.", ""]
    if "clbench_equals_bare" in rt:
        lines += [f"clbench and the bare loop give identical accuracy rows for every seed (same initial weights, "
                  f"same RNG use): {'yes' if rt['clbench_equals_bare'] else 'NO'}.", ""]
    lines += ["Per-seed final accuracy (%):", ""]
    for m, v in s.items():
        lines.append(f"- {m}: " + ", ".join(f"seed {k}: {100 * x:.2f}" for k, x in v["final_acc_by_seed"].items()))
    return "\n".join(lines) + "\n"


MAMMOTH_PUBLISHED = {"train_eval_s": 221.0, "first_task_s": 5.3, "last_task_s": 16.5, "bare_s": 22.0}


def markdown_pmnist(report: dict) -> str:
    """The pmnist20 report: the table, the ratios, per-task times, and Mammoth's published figure beside them."""
    from speed_pmnist import DESCRIPTION
    s, rt, a = report["summary"], report["ratios"], report["args"]
    lines = ["# Speed at length: permuted MNIST, 20 tasks (Mammoth's protocol)", "",
             f"Command: `{report['command']}`  ",
             f"Date: {report['date']}; device: {', '.join(sorted({d for m in s.values() for d in m['device']}))}; "
             f"torch threads per process: {a['threads']}; CPU: {report['machine']['cpu']} "
             f"({report['machine']['cpu_count']} logical cores); load average before/after: "
             f"{report['loadavg_before']} / {report['loadavg_after']}  ",
             f"Protocol: {DESCRIPTION}. Seeds {a['seeds']}, repeats {a['repeats']} (medians, methods interleaved).", "",
             "| method | train+eval wall (s) | train (s) | eval (s) | first task (s) | last task (s) | process wall (s) "
             "| peak RSS (MB) | final acc (%) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m, v in s.items():
        pt = v.get("per_task_s") or [None]
        lines.append(f"| {m} | {fmt(v['train_eval_s'], '.1f')} | {fmt(v['train_s'], '.1f')} | {fmt(v['eval_s'], '.1f')} | "
                     f"{fmt(pt[0], '.2f')} | {fmt(pt[-1], '.2f')} | {fmt(v['process_wall_s'], '.1f')} | "
                     f"{fmt(v['peak_rss_mb'], '.0f')} | {100 * v['final_acc_mean']:.2f} |")
    mp = MAMMOTH_PUBLISHED
    lines += [f"| Mammoth (published, not run here) | {mp['train_eval_s']:.0f} | | | {mp['first_task_s']} | "
              f"{mp['last_task_s']} | | | |", "",
              "| ratio (train+eval wall) | value |", "|---|---:|"]
    for pair, v in rt["train_eval_s"].items():
        if v is not None:
            lines.append(f"| {pair} | {v:.2f} |")
    bare = s.get("bare", {}).get("train_eval_s")
    if bare:
        lines.append(f"| Mammoth/bare, published (221 s / 22 s on their 2-core CPU) | "
                     f"{mp['train_eval_s'] / mp['bare_s']:.2f} |")
    if "clbench_equals_bare" in rt:
        lines += ["", f"clbench and the bare loop give identical accuracy rows for every seed: "
                      f"{'yes' if rt['clbench_equals_bare'] else 'NO'}."]
    lines += ["", "Per-task time (training + evaluation of that row), s:", ""]
    for m, v in s.items():
        if v.get("per_task_s"):
            lines.append(f"- {m}: " + ", ".join(f"{x:.2f}" for x in v["per_task_s"]))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=1, help="runs per (method, seed)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    ap.add_argument("--protocol", choices=PROTOCOLS, default="split-mnist",
                    help="split-mnist (issue 8's experiment) or pmnist20 (Mammoth's P-MNIST, 20 tasks)")
    ap.add_argument("--methods", nargs="+", default=None, choices=ALL_METHODS,
                    help="default: clbench avalanche bare (pmnist20: clbench clbench_seen_next avalanche bare)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads per process")
    ap.add_argument("--data-root", default=default_root(), help="folder holding MNIST/raw")
    ap.add_argument("--max-train-per-exp", type=int, default=None,
                    help="train on a fixed random subset of this many samples per experience (smoke checks)")
    ap.add_argument("--avalanche-buffer", choices=("reservoir", "experience-balanced"), default="reservoir",
                    help="Avalanche storage policy: ReservoirSamplingBuffer (closest to clbench) or the "
                         "ReplayPlugin default ExperienceBalancedBuffer")
    ap.add_argument("--clbench-override", action="append", default=[], help="extra clbench key=value")
    ap.add_argument("--quick", action="store_true", help="smoke check: seed 0, 1 repeat, 2000 samples/experience")
    ap.add_argument("--out", default=None, help="results file stem (default results/speed or speed_quick)")
    ap.add_argument("--worker", choices=ALL_METHODS, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker_main(args)
        return 0
    if args.methods is None:
        args.methods = list(METHODS) if args.protocol == "split-mnist" else ["clbench", "clbench_seen_next",
                                                                              "avalanche", "bare"]
    if args.protocol == "split-mnist" and "clbench_seen_next" in args.methods:
        ap.error("clbench_seen_next is a method of --protocol pmnist20")
    if args.quick:
        args.seeds, args.repeats = args.seeds[:1], 1
        args.max_train_per_exp = args.max_train_per_exp or 2000
    name = "speed" if args.protocol == "split-mnist" else "speed_pmnist20"
    stem = Path(args.out) if args.out else RESULTS / (f"{name}_quick" if args.quick else name)
    if args.device != "cpu":
        stem = stem.with_name(f"{stem.name}_{args.device.replace(':', '')}")

    loadavg_before = [round(x, 2) for x in os.getloadavg()]
    runs = []
    for rep, seed, m in interleaved(args.methods, args.seeds, args.repeats):
        r = spawn(m, seed, args)
        r["repeat"] = rep
        runs.append(r)
        print(f"  {m:<10s} seed {seed} repeat {rep}: train+eval {r['train_eval_s']:7.2f}s "
              f"(cpu {r['train_eval_cpu_s']:.2f}; train {r['train_s']:.2f}, eval {r['eval_s']:.2f})  "
              f"process {r['process_wall_s']:7.2f}s  "
              f"cpu {r['process_cpu_s']:7.2f}s  peak RSS {r['peak_rss_mb']:6.0f} MB  "
              f"acc {100 * r['final_acc']:.2f}%  [{r['device']}]", flush=True)
    summary = summarize(runs, args.methods)
    report = {"command": "python benchmarks/speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "protocol": P, "args": vars(args),
              "machine": machine(), "loadavg_before": loadavg_before,
              "loadavg_after": [round(x, 2) for x in os.getloadavg()],
              "summary": summary, "ratios": ratios(summary), "runs": runs}
    save_report(stem, report, markdown(report) if args.protocol == "split-mnist" else markdown_pmnist(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
