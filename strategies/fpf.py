"""FPF and k-FPF: Forgetting Prioritized Finetuning, and the module-drift measure that motivates it.

Zhao, Zhou, Long, Jiang, Zhang (ICML 2023), "Does Continual Learning Equally Forget All Parameters?",
arXiv:2304.04158. No code was released; this is a reconstruction from the paper's description.

The paper's analysis: per module m, the change between the end of task t-1 and the end of task t,
normalised by the module's size, drift_m(t) = ||theta_{m,t} - theta_{m,t-1}||_1 / |theta_m|; few modules
(in ResNets the BN layers and the last FC layer) drift much more than the others, and forgetting is
attributed to them.

    FPF(model, buffer, modules M, iters I, lr eta):        # "Forgetting Prioritized Finetuning"
        only the parameters of M trainable; BN layers of M in train mode (their statistics follow the buffer)
        repeat I times: (x, y[, z]) ~ buffer
                        L = CE(f(x), y) [+ kd * MSE(f(x), z)]        # z: logits stored at insertion (-KD)
                        SGD step (lr eta) on M

    fpf callback:   `strategy=<any> callbacks=[fpf]`: the strategy trains as usual; FPF runs at the end of
                    every experience on the strategy's own buffer (its reservoir when it has none).
    kfpf strategy:  k-FPF: plain SGD on the stream (no replay), the stream offered to a reservoir buffer
                    (with logits for -KD); FPF every ceil(total steps / k) steps (the first k - 1 calls), total
                    steps estimated as n_experiences x the steps of the first experience, and the k-th call at
                    the end of the stream, so that the final model is a finetuned one (as the paper evaluates).
    module_drift:   `callbacks=[module_drift]` logs drift_m after every experience around any strategy
                    (result.json `logs` and `strategy_state`); `benchmarks/fpf_sensitivity.py` tabulates it.

Choices of ours (the paper's values could not be read): modules default to the classifier plus every
BatchNorm layer (the paper's ResNet class-IL choice; an MLP has no BN); `modules=auto` picks the n_auto
modules with the largest drift over the last experience; iters 300, lr 0.05, batch 32.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clbench.buffer import Storage, make_buffer
from clbench.errors import bad_value
from clbench.hparams import HP, loguniform, randint
from clbench.strategy import Callback, Strategy
from clbench.stream import Batch, Experience

BN = (nn.BatchNorm1d, nn.BatchNorm2d)


# ----- the paper's per-module drift ----------------------------------------------------------------------
def parametrised_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Modules that own parameters directly (Linear, Conv, BatchNorm, ...), by their path in the model."""
    return {name: m for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))}


def snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {name: torch.cat([p.detach().flatten() for p in m.parameters(recurse=False)]).clone()
            for name, m in parametrised_modules(model).items()}


def drift(before: dict[str, Tensor], after: dict[str, Tensor]) -> dict[str, float]:
    """(1/|theta_m|) ||theta_m(after) - theta_m(before)||_1 per module."""
    return {name: float((after[name] - before[name]).abs().mean()) for name in before}


# ----- FPF itself ------------------------------------------------------------------------------------------
def resolve_modules(model: nn.Module, names: list[str], key: str) -> list[str]:
    """Module paths matching the configured names (a name selects a module and everything under it); 'bn'
    selects every BatchNorm layer."""
    mods = parametrised_modules(model)
    chosen = []
    for name in names:
        hits = [m for m, mod in mods.items() if (isinstance(mod, BN) if name == "bn" else
                                                   (m == name or m.startswith(name + ".")))]
        if not hits and name != "bn":
            raise bad_value(key, f"the model has no module '{name}'; modules with parameters: "
                            f"{', '.join(mods)}")
        chosen += [h for h in hits if h not in chosen]
    return chosen


def finetune(strategy: Strategy, buffer: Storage, modules: list[str], iters: int, lr: float, batch_size: int,
             kd: float, generator: torch.Generator) -> float:
    """FPF: `iters` SGD steps on the buffer that update only `modules`; returns the last loss."""
    model = strategy.model
    mods = parametrised_modules(model)
    params = [p for m in modules for p in mods[m].parameters(recurse=False)]
    state = [(p, p.requires_grad) for p in model.parameters()]
    modes = [(m, m.training) for m in model.modules()]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    model.eval()
    for m in modules:                       # the finetuned BN layers re-estimate their statistics on the buffer
        if isinstance(mods[m], BN):
            mods[m].train()
    opt = torch.optim.SGD(params, lr=lr)
    loss = torch.zeros(())
    try:
        for _ in range(iters):
            mem = buffer.sample(batch_size, generator=generator)
            logits = strategy.forward(mem["x"], mem["t"])
            loss = F.cross_entropy(logits, mem["y"])
            if kd > 0 and "logits" in mem:
                loss = loss + kd * F.mse_loss(strategy.model(mem["x"]), mem["logits"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        for p, rg in state:
            p.requires_grad_(rg)
        for m, was in modes:
            m.training = was
    return float(loss.detach())


FPF_HPARAMS = {
    "modules": HP(["classifier", "bn"], "modules finetuned (paths in the model; 'bn': every BatchNorm layer; "
                                        "[auto]: the n_auto modules that drifted most in the last experience)",
                  type=list, items=str),
    "n_auto": HP(1, "modules chosen by modules=[auto]", low=1),
    "iters": HP(300, "finetuning steps each time FPF runs", low=0, search=randint(50, 1000)),
    "lr": HP(0.05, "SGD learning rate of the finetuning", gt=0, search=loguniform(0.005, 0.5)),
    "batch_size": HP(32, "buffer samples per finetuning step", low=1),
    "kd": HP(0.0, "weight of the logit matching on buffered logits (FPF-KD; needs a buffer storing logits)",
             low=0, search=loguniform(0.01, 10)),
}


class FPFMixin:
    """What the callback and the strategy share: module choice, drift bookkeeping, one FPF call."""

    def _measures_drift(self) -> bool:
        """FPF keeps a parameter snapshot only to choose modules by drift (modules=[auto])."""
        return isinstance(self, ModuleDrift) or "auto" in self.hp.modules

    def _start_drift(self, model: nn.Module) -> None:
        self.before = snapshot(model) if self._measures_drift() else None

    def _chosen(self, model: nn.Module, key: str) -> list[str]:
        if list(self.hp.modules) == ["auto"]:
            last = self.drifts[-1] if self.drifts else {}
            ranked = sorted(last, key=lambda m: -last[m])
            return ranked[:int(self.hp.n_auto)] or resolve_modules(model, ["classifier"], key)
        return resolve_modules(model, list(self.hp.modules), key)

    def _record_drift(self, strategy: Strategy) -> None:
        if self.before is None:
            return
        d = drift(self.before, snapshot(strategy.model))
        self.drifts.append(d)
        for name, v in d.items():
            strategy.log(f"drift.{name}", v)

    def _fpf(self, strategy: Strategy, buffer: Storage, key: str) -> None:
        if len(buffer) == 0 or int(self.hp.iters) == 0:
            return
        modules = self._chosen(strategy.model, key)
        loss = finetune(strategy, buffer, modules, int(self.hp.iters), float(self.hp.lr), int(self.hp.batch_size),
                        float(self.hp.kd), self.fpf_generator)
        self.n_fpf += 1
        self.finetuned = modules
        strategy.log("fpf.loss", loss)


class FPF(FPFMixin, Callback):
    """FPF around any strategy: finetune the forgetting-prone modules on the buffer after each experience."""

    description = "FPF: after each experience, finetune only the most forgetting-prone modules on the buffer"
    paper = "Zhao, Zhou, Long, Jiang, Zhang 2023, Does Continual Learning Equally Forget All Parameters?, ICML"
    hparams = {**FPF_HPARAMS,
               "buffer_size": HP(200, "reservoir capacity, used only when the strategy has no `buffer` of its own",
                                 low=1)}
    checkpoint_attrs = ("own_buffer", "fpf_generator", "drifts", "n_fpf", "before", "finetuned")

    def __init__(self, params=None, seed: int = 0):
        super().__init__(params, seed)
        self.fpf_generator = torch.Generator().manual_seed(int(seed) + 7919)   # FPF's own stream of draws
        self.drifts: list[dict] = []
        self.n_fpf = 0
        self.finetuned: list[str] = []
        self.own_buffer: Optional[Storage] = None

    def setup(self, strategy: Strategy) -> None:
        self._start_drift(strategy.model)
        if not isinstance(getattr(strategy, "buffer", None), Storage):
            self.own_buffer = make_buffer("reservoir", int(self.hp.buffer_size), strategy.device, self.fpf_generator,
                                          minimum=1)
        resolve_modules(strategy.model, [m for m in self.hp.modules if m != "auto"], "callbacks.fpf.modules")

    def buffer(self, strategy: Strategy) -> Storage:
        return self.own_buffer if self.own_buffer is not None else strategy.buffer

    def before_experience(self, strategy: Strategy, exp: Experience) -> None:
        self._start_drift(strategy.model)

    def after_step(self, strategy: Strategy, batch: Batch) -> None:
        if self.own_buffer is not None:
            self.own_buffer.add(batch)

    def after_experience(self, strategy: Strategy, exp: Experience) -> None:
        self._record_drift(strategy)
        self._fpf(strategy, self.buffer(strategy), "callbacks.fpf.modules")

    def extra_state(self) -> dict:
        return {"fpf_runs": self.n_fpf, "finetuned": self.finetuned, "drift": self.drifts}


class ModuleDrift(FPFMixin, Callback):
    """Only the measurement: per-module drift after every experience, around any strategy."""

    description = "logs each module's size-normalised L1 change over every experience (FPF's analysis)"
    hparams: dict = {}
    checkpoint_attrs = ("drifts", "before")

    def setup(self, strategy: Strategy) -> None:
        self.drifts: list[dict] = []
        self._start_drift(strategy.model)

    def before_experience(self, strategy: Strategy, exp: Experience) -> None:
        self._start_drift(strategy.model)

    def after_experience(self, strategy: Strategy, exp: Experience) -> None:
        self._record_drift(strategy)

    def extra_state(self) -> dict:
        return {"drift": self.drifts}


class KFPF(FPFMixin, Strategy):
    """k-FPF: SGD on the stream without replay; FPF on a reservoir buffer k times over the run."""

    description = "k-FPF: no every-step replay; finetune the forgetting-prone modules on a buffer k times"
    paper = "Zhao, Zhou, Long, Jiang, Zhang 2023, Does Continual Learning Equally Forget All Parameters?, ICML"
    code = "none released; reconstruction (docs/methods.md, Zoo III)"
    hparams = {**FPF_HPARAMS,
               "buffer_size": HP(200, "reservoir capacity", low=1),
               "k": HP(10, "FPF calls over the whole run (period: estimated total steps / k)", low=1,
                       search=randint(1, 50))}
    checkpoint_attrs = ("buffer", "fpf_generator", "drifts", "n_fpf", "before", "period", "finetuned")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.buffer = make_buffer("reservoir", self.hp.buffer_size, self.device, self.generator, minimum=1)
        self.fpf_generator = torch.Generator().manual_seed(int(kwargs.get("seed", 0)) + 7919)
        self.drifts: list[dict] = []
        self.n_fpf = 0
        self.finetuned: list[str] = []
        self._start_drift(self.model)
        self.period: Optional[int] = None
        self._logits: Optional[Tensor] = None
        resolve_modules(self.model, [m for m in self.hp.modules if m != "auto"], "strategy.modules")

    def before_experience(self, exp: Experience) -> None:
        if self.period is None:   # k calls spread over n_experiences x (steps of this experience)
            steps = self.info.n_experiences * int(self.train_cfg["epochs"]) * math.ceil(
                len(exp.train) / int(self.train_cfg["batch_size"]))
            self.period = max(1, math.ceil(steps / int(self.hp.k)))
        self._start_drift(self.model)

    def loss(self, batch: Batch) -> Tensor:
        z = self.model(batch.x)                     # 1. plain SGD on the stream batch, no replay
        self._logits = z.detach() if self.hp.kd > 0 else None
        return F.cross_entropy(self.task_head(z, batch.t), batch.y)

    def after_step(self, batch: Batch) -> None:
        # 2. the stream goes to the reservoir (with its logits for -KD)
        if self._logits is not None:
            self.buffer.add(batch, logits=self._logits)
        else:
            self.buffer.add(batch)
        # 3. every `period` steps, regardless of task boundaries: FPF (k - 1 times; the k-th at the very end)
        if self.global_step % self.period == 0 and self.n_fpf < int(self.hp.k) - 1:
            self._fpf(self, self.buffer, "strategy.modules")

    def after_experience(self, exp: Experience) -> None:
        self._record_drift(self)
        if exp.index == self.info.n_experiences - 1:
            self._fpf(self, self.buffer, "strategy.modules")

    def extra_state(self) -> dict:
        return {"fpf_runs": self.n_fpf, "period": self.period, "finetuned": self.finetuned, "drift": self.drifts,
                "buffer": self.buffer.state()}
