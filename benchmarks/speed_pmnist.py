"""The permuted-MNIST-20 workers of benchmarks/speed.py (`--protocol pmnist20`): Mammoth's P-MNIST protocol at length.

    python benchmarks/speed.py --protocol pmnist20 --seeds 0        # clbench, clbench_seen_next, avalanche, bare

Protocol (Mammoth's perm-mnist, Buzzega et al. 2020; clbench's `perm-mnist` benchmark): 20 tasks, each the full
60,000/10,000 MNIST images under its own fixed pixel permutation (task 1 permuted too), domain-IL (one 10-way
head), inputs scaled to [0, 1] (ToTensor only), MLP 784-100-100-10 with Xavier-uniform weights and zero biases,
experience replay with a 500-sample reservoir, every step 128 new + 128 memory samples, 1 epoch, plain SGD lr
0.01 (never reset), evaluation on all 20 test tasks (batches of 1000) before training and after every experience.

    clbench            clbench.engine (benchmark perm-mnist, strategy replay), eval.schedule=full
    clbench_seen_next  the same with eval.schedule=seen_next: the tasks learned so far and the next one (about
                       the evaluation Mammoth's own loop does: seen tasks, plus the next with its other metrics)
    avalanche          Avalanche 0.6: PermutedMNIST, Naive + ReplayPlugin (ReservoirSamplingBuffer(500)),
                       accuracy on the whole test stream before training and after every experience
    bare               a plain PyTorch loop: the images as one float tensor, index-slice minibatches, the same
                       permutations (taken from clbench's scenario, so the data are the same), a reservoir buffer

clbench and the bare loop use the same initial weights and one generator in the same order, so with the same
seed they compute the same accuracy matrix (checked and printed). Mammoth itself is not installed here; its
published figure on this protocol on a 2-core CPU (about 221 s train+eval, 5.3 s for the first task rising to
16.5 s for the last, and about 22 s for a bare loop) is quoted in docs/speed.md, not re-measured.
"""
from __future__ import annotations

import time
from pathlib import Path

P = dict(n_experiences=20, width=100, depth=2, buffer_size=500, batch_size=128, mem_batch_size=128, epochs=1,
         lr=0.01, eval_batch_size=1000)
DESCRIPTION = ("permuted MNIST, 20 tasks x full MNIST (Mammoth's perm-mnist protocol), MLP 784-100-100-10 (Xavier), "
               f"replay buffer {P['buffer_size']}, {P['batch_size']} new + {P['mem_batch_size']} memory samples per "
               f"step, {P['epochs']} epoch, SGD lr {P['lr']}, evaluation on all 20 tasks before training and after "
               "each experience (clbench_seen_next: the tasks learned so far and the next one)")


def _common():
    import speed  # noqa: F401  (the shared helpers; this module is imported by speed.py's workers)
    return speed


def clbench_overrides(args, schedule: str) -> list[str]:
    return ["benchmark=perm-mnist", "strategy=replay", f"seed={args.seed}", "strategy.buffer=reservoir",
            f"strategy.buffer_size={P['buffer_size']}", f"strategy.mem_batch_size={P['mem_batch_size']}",
            f"train.batch_size={P['batch_size']}", f"train.epochs={P['epochs']}", f"train.lr={P['lr']}",
            f"eval.batch_size={P['eval_batch_size']}", f"eval.schedule={schedule}", "wandb.mode=disabled",
            "progress=false", "checkpoint.enabled=false", f"data.root={args.data_root}",
            f"device={args.device}"] + list(args.clbench_override)


def run_clbench(args, schedule: str = "full") -> dict:
    import torch
    from clbench.config import compose
    from clbench.engine import execute, prepare
    from clbench.loggers import Logger

    sp = _common()
    run = prepare(compose(clbench_overrides(args, schedule)))
    for exp in run.stream:   # quick mode: the same-size subset of every experience
        keep = sp._subset_positions(len(exp.train), args.max_train_per_exp)
        if keep is not None:
            exp.train.indices = exp.train.indices[keep.to(exp.train.indices.device)]
            exp.train.t = exp.train.t[keep.to(exp.train.t.device)]
    marks = []

    class Marks(Logger):      # the time of every row of R: per-task time = training + its evaluation
        def log_row(self, run, row_index, row):
            sp._sync(run.device)
            marks.append(time.perf_counter())

    run.loggers = [Marks()]
    rss_ready = sp._rss_now_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    result = execute(run, Path("."))
    wall = time.perf_counter() - t0
    R = result["accuracy_matrix"]
    return dict(device=str(run.device), train_eval_s=wall, train_eval_cpu_s=time.process_time() - c0,
                train_s=result["timing"]["train_s"], eval_s=result["timing"]["eval_s"],
                final_acc=sum(R[-1]) / len(R[-1]), final_row=R[-1], rss_ready_mb=rss_ready,
                per_task_s=[b - a for a, b in zip(marks, marks[1:])], n_train=[len(e.train) for e in run.stream],
                peak_cuda_mb=(torch.cuda.max_memory_allocated(run.device) / 2**20
                              if run.device.type == "cuda" else None))


def run_clbench_seen_next(args) -> dict:
    return run_clbench(args, "seen_next")


def run_avalanche(args) -> dict:
    import torch
    from avalanche.benchmarks.classic import PermutedMNIST
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin
    from avalanche.training.storage_policy import ReservoirSamplingBuffer
    from avalanche.training.supervised import Naive
    from torch import nn

    sp = _common()
    device = sp._resolve_device(args.device)
    # ToTensor only (Mammoth's protocol): no Normalize transform on top of the permutation
    bm = PermutedMNIST(n_experiences=P["n_experiences"], seed=args.seed, dataset_root=args.data_root,
                       train_transform=None, eval_transform=None)
    torch.manual_seed(args.seed)
    model = make_mlp()
    storage = ReservoirSamplingBuffer(P["buffer_size"])
    replay = ReplayPlugin(mem_size=P["buffer_size"], batch_size=P["batch_size"], batch_size_mem=P["mem_batch_size"],
                          storage_policy=storage)
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=P["lr"]),
                     criterion=nn.CrossEntropyLoss(), train_mb_size=P["batch_size"], train_epochs=P["epochs"],
                     eval_mb_size=P["eval_batch_size"], device=device, plugins=[replay],
                     evaluator=EvaluationPlugin(accuracy_metrics(experience=True), loggers=[]))
    experiences = list(bm.train_stream)
    for exp in experiences:
        keep = sp._subset_positions(len(exp.dataset), args.max_train_per_exp)
        if keep is not None:
            exp.dataset = exp.dataset.subset(keep.tolist())
    rss_ready = sp._rss_now_mb()
    keys = [f"Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp{j:03d}" for j in range(P["n_experiences"])]
    t0, c0 = time.perf_counter(), time.process_time()
    train_s = eval_s = 0.0
    te = time.perf_counter()
    strategy.eval(bm.test_stream)
    eval_s += time.perf_counter() - te
    marks = [time.perf_counter()]
    for exp in experiences:
        tt = time.perf_counter()
        strategy.train(exp, num_workers=0)
        sp._sync(device)
        train_s += time.perf_counter() - tt
        te = time.perf_counter()
        res = strategy.eval(bm.test_stream)
        sp._sync(device)
        eval_s += time.perf_counter() - te
        marks.append(time.perf_counter())
    wall = time.perf_counter() - t0
    row = [float(res[k]) for k in keys]
    return dict(device=str(device), train_eval_s=wall, train_eval_cpu_s=time.process_time() - c0, train_s=train_s,
                eval_s=eval_s, final_acc=sum(row) / len(row), final_row=row, rss_ready_mb=rss_ready,
                per_task_s=[b - a for a, b in zip(marks, marks[1:])], n_train=[len(e.dataset) for e in experiences],
                peak_cuda_mb=(torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None))


def make_mlp():
    """784-100-100-10 in clbench's layer order, then Xavier-uniform weights and zero biases in the same order
    (clbench.models.xavier_): the same torch.manual_seed gives the same initial weights."""
    from torch import nn
    layers, d = [nn.Flatten()], 784
    for _ in range(P["depth"]):
        layers += [nn.Linear(d, P["width"]), nn.ReLU()]
        d = P["width"]
    model = nn.Sequential(*layers, nn.Linear(d, 10))
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def run_bare(args) -> dict:
    import torch
    import torch.nn.functional as F
    from torchvision.datasets import MNIST

    from clbench.scenarios.permuted import permutation   # the same permutations, so the same data as clbench

    sp = _common()
    device = sp._resolve_device(args.device)
    g = torch.Generator().manual_seed(args.seed)        # minibatch order, memory draws, reservoir: clbench's order

    def tensors(train: bool):
        ds = MNIST(args.data_root, train=train, download=False)
        x = ds.data.reshape(len(ds.data), -1).to(device).float().div_(255)
        return x, ds.targets.to(device)

    x_tr, y_tr = tensors(True)
    x_te, y_te = tensors(False)
    perms = [permutation(784, args.seed, i).to(device) for i in range(P["n_experiences"])]
    keep = sp._subset_positions(len(y_tr), args.max_train_per_exp)
    idx = torch.arange(len(y_tr), device=device) if keep is None else keep.to(device)
    torch.manual_seed(args.seed)
    model = make_mlp().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=P["lr"])     # never reset (Mammoth's protocol)
    cap = P["buffer_size"]
    buf_x = torch.empty(cap, 784, device=device)
    buf_y = torch.empty(cap, dtype=torch.long, device=device)
    n_buf = seen = 0

    @torch.inference_mode()
    def evaluate():
        model.eval()
        row = []
        for perm in perms:
            correct = 0
            for s in range(0, len(y_te), P["eval_batch_size"]):
                xb = x_te[s:s + P["eval_batch_size"]][:, perm]
                correct += int((model(xb).argmax(1) == y_te[s:s + P["eval_batch_size"]]).sum())
            row.append(correct / len(y_te))
        model.train()
        return row

    rss_ready = sp._rss_now_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    train_s = eval_s = 0.0
    te = time.perf_counter()
    evaluate()
    eval_s += time.perf_counter() - te
    marks = [time.perf_counter()]
    for perm in perms:
        tt = time.perf_counter()
        order = idx[torch.randperm(len(idx), generator=g).to(device)]
        for s in range(0, len(order), P["batch_size"]):
            b = order[s:s + P["batch_size"]]
            x, y = x_tr[b][:, perm], y_tr[b]
            xs, ys = x, y
            if n_buf:
                m = torch.randperm(n_buf, generator=g)[:P["mem_batch_size"]].to(device)
                xs, ys = torch.cat([x, buf_x[m]]), torch.cat([y, buf_y[m]])
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xs), ys).backward()
            opt.step()
            last = sp.reservoir_slots(seen, len(b), cap, g)
            if last:
                sl = torch.tensor(list(last), device=device)
                ps = torch.tensor(list(last.values()), device=device)
                buf_x[sl], buf_y[sl] = x[ps], y[ps]
            seen += len(b)
            n_buf = min(seen, cap)
        sp._sync(device)
        train_s += time.perf_counter() - tt
        te = time.perf_counter()
        row = evaluate()
        sp._sync(device)
        eval_s += time.perf_counter() - te
        marks.append(time.perf_counter())
    wall = time.perf_counter() - t0
    return dict(device=str(device), train_eval_s=wall, train_eval_cpu_s=time.process_time() - c0, train_s=train_s,
                eval_s=eval_s, final_acc=sum(row) / len(row), final_row=row, rss_ready_mb=rss_ready,
                per_task_s=[b - a for a, b in zip(marks, marks[1:])], n_train=[len(idx)] * len(perms),
                peak_cuda_mb=(torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None))


WORKERS = {"clbench": run_clbench, "clbench_seen_next": run_clbench_seen_next, "avalanche": run_avalanche,
           "bare": run_bare}
