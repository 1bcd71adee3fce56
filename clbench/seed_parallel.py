"""Seed-parallel runs: several seeds of one configuration trained in one process as one vectorised model.

    outcomes = run_seeds([cfg_seed0, cfg_seed1, ...])     # what `clbench sweep ... seed_parallel=on` does

Every seed keeps everything that is its own: it is an ordinary run (`clbench.engine.run`: its stream, its
Strategy with its initial weights, generator, minibatch order and replay memory, its optimizer, evaluators,
checkpoints, loggers and result.json), in a thread of its own. The seeds share one thing, the arithmetic of
the training step: each seed's parameters become views into one stacked tensor per parameter, and each step

    every seed draws its own minibatch and memory sample (its own generator)   -> loss_batch(batch)
    one forward and backward for all seeds: Linear layers as baddbmm on the stacked weights, then each
    seed's cross-entropy on its own slice of the logits (task-IL: its own head mask); the backward of their
    sum puts each seed's gradient into its own .grad
    every seed takes its own optimizer step and after_step (buffer insertion), as its separate run does

On CPU the stacked arithmetic gives bit-identical losses and gradients to the per-seed one (baddbmm and bmm
compute each seed's slice exactly as addmm and mm do), so each seed's result.json is the separate run's, apart
from the timing and process-memory fields (the group's, `timing.seed_group` says so). tests/test_seed_parallel.py
checks this. On a GPU, batched and single matrix products may round differently; benchmarks/seed_parallel.py
measures the difference there.

What can run this way (`why_not` names the first reason otherwise, and the caller runs the seeds separately):
a strategy that declares `seed_parallel = True` in its own class body (naive, replay, cumulative) with the
base Strategy's loss, forward, step and after_backward; no callbacks; train.amp and train.compile off; a model
built only from layers with an exact stacked form (Linear, ReLU, Flatten, Identity, the MLP and Sequential
containers, the input normalisation). Seeds whose minibatches differ in shape at some step (e.g. class orders
drawn per seed over classes of different sizes) stop the group with SeedGroupError; `run_seeds` then runs the
seeds that did not finish separately, resuming from the checkpoints the group wrote.
"""
from __future__ import annotations

import copy
import functools
import signal
import threading
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clbench.config import SEED_KEYS
from clbench.errors import ClbenchError, RunInterrupted, failure
from clbench.models import MLP, Normalize
from clbench.strategy import Strategy

CONTAINERS = (MLP, nn.Sequential)                       # forward() is a plain composition of children
ELEMENTWISE = (nn.ReLU, nn.Identity, Normalize)          # act the same on a leading seed dimension
IGNORED_KEYS = ("out", "config_source")                  # not part of what a run computes


class SeedGroupError(ClbenchError):
    """The seeds of a group cannot go on in lock-step (their steps differ in shape or count, or one failed)."""


# ----- what can run seed-parallel --------------------------------------------------------------------------
def strategy_why_not(cls) -> Optional[str]:
    """None when the strategy class has declared, and keeps, the seed-parallel contract; else the reason."""
    if not cls.__dict__.get("seed_parallel", False):
        return f"strategy {cls.__name__} does not declare seed_parallel = True"
    for hook in ("loss", "forward", "train_step", "loss_and_gradients", "step", "after_backward"):
        if getattr(cls, hook) is not getattr(Strategy, hook):
            return f"strategy {cls.__name__} overrides {hook}()"
    return None


def why_not(cfgs: list[dict]) -> Optional[str]:
    """Why these configurations cannot train as one seed group (None: they can), from the configs alone."""
    from clbench.registry import MODELS, STRATEGIES
    if len(cfgs) < 2:
        return "fewer than two seeds"
    strip = lambda c: {k: v for k, v in c.items() if k not in (*SEED_KEYS, *IGNORED_KEYS)}  # noqa: E731
    if any(strip(c) != strip(cfgs[0]) for c in cfgs[1:]):
        return "the configurations differ in more than their seeds"
    cfg = cfgs[0]
    if len({int(c["seed"]) for c in cfgs}) != len(cfgs):
        return "a seed appears twice"
    reason = strategy_why_not(STRATEGIES.get(cfg["strategy"]["name"].split(":")[0]))
    if reason:
        return reason
    if cfg.get("callbacks"):
        return "callbacks are not part of the seed-parallel step"
    if cfg["train"].get("amp", "off") != "off" or cfg["train"].get("compile", "off") != "off":
        return "train.amp / train.compile are off in seed-parallel runs"
    if not issubclass(MODELS.get(cfg["model"]["name"]), CONTAINERS):
        return f"model '{cfg['model']['name']}' has no exact stacked form (MLPs do)"
    return None


def model_why_not(model: nn.Module) -> Optional[str]:
    for m in model.modules():
        if isinstance(m, CONTAINERS + ELEMENTWISE + (nn.Linear,)):
            continue
        if isinstance(m, nn.Flatten) and m.end_dim == -1:
            continue
        return f"layer {type(m).__name__} has no exact stacked form"
    return None


# ----- the stacked model ----------------------------------------------------------------------------------
class StackedLinear(nn.Module):
    """S linear layers at once on [S, N, in] inputs: baddbmm rounds each slice as addmm does for one seed."""

    def __init__(self, weight: Tensor, bias: Optional[Tensor]):
        super().__init__()
        self.weight, self.bias = weight, bias          # [S, out, in], [S, out]: the stacked leaves

    def forward(self, x: Tensor) -> Tensor:
        if self.bias is None:
            return torch.bmm(x, self.weight.transpose(1, 2))
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))


def stack_models(models: list[nn.Module]) -> tuple[nn.Module, list[Tensor]]:
    """One module computing all the seeds' models on [S, N, ...] inputs, and its stacked parameters.

    Every seed's parameter becomes a view into its stacked tensor, so an optimizer step on the seed's own
    parameters updates the stacked weights, and the seed's evaluation reads them."""
    stacked = copy.deepcopy(models[0])
    leaves = []
    names = [n for n, _ in models[0].named_parameters()]
    per_seed = [dict(m.named_parameters()) for m in models]
    tensors = {}
    for name in names:
        leaf = torch.stack([p[name].detach() for p in per_seed]).requires_grad_()
        for s, p in enumerate(per_seed):
            p[name].data = leaf.data[s]
        tensors[name] = leaf
        leaves.append(leaf)
    buffers = [dict(m.named_buffers()) for m in models]
    for name, b in buffers[0].items():
        if any(not torch.equal(b, other[name]) for other in buffers[1:]):
            raise SeedGroupError(f"the seeds' models differ in buffer {name} (e.g. input statistics)")

    def convert(module: nn.Module, prefix: str) -> nn.Module:
        if isinstance(module, nn.Linear):
            return StackedLinear(tensors[f"{prefix}weight"], tensors.get(f"{prefix}bias"))
        if isinstance(module, nn.Flatten):
            return nn.Flatten(module.start_dim + 1 if module.start_dim >= 0 else module.start_dim, module.end_dim)
        for name, child in list(module.named_children()):
            setattr(module, name, convert(child, f"{prefix}{name}."))
        return module

    return convert(stacked, ""), leaves


# ----- the group ------------------------------------------------------------------------------------------
class SeedGroup:
    """The lock-step of S runs: each seed's `loss_and_gradients(batch)` waits until every seed has its batch, then one
    stacked forward/backward serves them all.

    The seeds' threads take turns (`baton`): one runs while the others wait, and a thread hands the baton on only
    while it waits for the stacked step. So the group uses one core's worth of CPU as a separate run does, its
    threads never contend (nor do their loggers: W&B), and once-per-process work (code and data identity, lazy
    imports) is done once."""

    def __init__(self, n: int):
        self.n = n
        self.barrier = threading.Barrier(n, action=self._step)
        self.baton = threading.Lock()
        self.strategies: list[Optional[Strategy]] = [None] * n
        self.pending: list = [None] * n
        self.losses: list[Optional[Tensor]] = [None] * n
        self.model: Optional[nn.Module] = None
        self.leaves: list[Tensor] = []
        self.error: Optional[str] = None
        self.threads: list[Optional[int]] = [None] * n   # each seed's thread id
        self.signum: Optional[int] = None                # SIGTERM/SIGINT received by the main thread

    def attach(self, index: int, run) -> None:
        """Called by the engine once seed `index`'s run is built (clbench.engine.run's `on_ready`)."""
        strategy = run.strategy
        reason = strategy_why_not(type(strategy)) or model_why_not(strategy.model)
        if reason:
            raise SeedGroupError(reason)
        self.strategies[index] = strategy
        self.threads[index] = threading.get_ident()
        strategy.loss_and_gradients = functools.partial(self._gradients, index)
        run.seed_group = self.n

    def _gradients(self, index: int, batch) -> Tensor:
        self.pending[index] = self.strategies[index].loss_batch(batch)
        self.baton.release()                 # the next seed's turn; the last one to arrive runs the step
        try:
            self.barrier.wait()
        except threading.BrokenBarrierError:
            raise SeedGroupError(self.error or "another seed of the group stopped") from None
        finally:
            self.baton.acquire()
        return self.losses[index]

    def _step(self) -> None:
        """One forward and backward for every seed (runs in one thread while the others wait)."""
        try:
            if self.signum is not None:      # every seed stops after this step, checkpointed (the engine's loop)
                from clbench.engine import _Signals
                for ident in self.threads:
                    if ident in _Signals.in_threads:
                        _Signals.in_threads[ident].signum = self.signum
            batches = self.pending
            shapes = {(tuple(b.x.shape), tuple(b.y.shape)) for b in batches}
            if len(shapes) > 1:
                raise SeedGroupError(f"the seeds' minibatches differ in shape at this step: {sorted(shapes)}")
            if self.model is None:       # first step: every seed has loaded its state (a resume too)
                self.model, self.leaves = stack_models([s.model for s in self.strategies])
            for leaf in self.leaves:
                leaf.grad = None
            logits = self.model(torch.stack([b.x for b in batches]))
            losses = []
            for s, (strategy, b) in enumerate(zip(self.strategies, batches)):
                out = strategy.mask_logits(logits[s], b.t) if strategy.task_aware else logits[s]
                losses.append(strategy._checked_loss(F.cross_entropy(out, b.y)))
            torch.stack(losses).sum().backward()
            for s, strategy in enumerate(self.strategies):
                for p, leaf in zip(strategy.model.parameters(), self.leaves):
                    p.grad = leaf.grad[s]
            self.losses = losses
        except BaseException as e:
            self.error = f"{type(e).__name__}: {e}"
            raise


def run_seeds(cfgs: list[dict], overwrite: bool = True, console: bool = False,
              fallback: bool = True) -> list[dict]:
    """Run the seeds as one group; returns one entry per seed: {"result", "path"} or {"error", "traceback"}.

    Seeds the group could not finish (SeedGroupError, or another seed's failure) run again separately when
    `fallback` (resuming from the checkpoints the group wrote), so a seed fails only for a reason of its own.
    SIGTERM/SIGINT stop every seed after the same step with its checkpoint saved, as they stop a single run, and
    raise RunInterrupted: the same command resumes the group.
    """
    from clbench.engine import prepare, run
    reason = why_not(cfgs)
    if reason:
        raise SeedGroupError(f"these runs cannot train as one seed group: {reason}")
    group = SeedGroup(len(cfgs))
    # built one after another: building seeds the global RNG (initial weights), which threads would race for
    runs = [prepare(cfg) for cfg in cfgs]
    out: list[dict] = [{} for _ in cfgs]

    def one(i: int) -> None:
        group.baton.acquire()
        try:
            result, path = run(cfgs[i], overwrite=overwrite, console=console, prepared=runs[i],
                               on_ready=functools.partial(group.attach, i))
            out[i] = {"result": result, "path": path}
        except RunInterrupted as e:
            out[i] = {"interrupted": e}
        except BaseException as e:  # noqa: BLE001 - reported per seed; the other seeds must not wait for it
            out[i] = failure(e)
        finally:
            group.barrier.abort()    # a seed that stopped (or finished) early breaks the lock-step
            group.baton.release()

    def on_signal(signum, frame):   # only the main thread receives signals; the group passes them on
        group.signum = signum

    handlers = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    threads = [threading.Thread(target=one, args=(i,), name=f"seed-{cfgs[i]['seed']}") for i in range(len(cfgs))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    stopped = [o["interrupted"] for o in out if "interrupted" in o]
    if stopped:
        raise stopped[0]
    if fallback and any("error" in o for o in out):
        for i, o in enumerate(out):
            if "error" in o:
                try:
                    result, path = run(cfgs[i], overwrite=overwrite, console=console)
                    out[i] = {"result": result, "path": path, "fallback": o["error"]}
                except Exception as e:  # noqa: BLE001
                    out[i] = failure(e)
    return out
