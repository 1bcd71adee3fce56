"""Refresh learning: unlearn, then relearn, every minibatch -- a wrapper around any strategy.

Z. Wang, Y. Li, L. Shen, H. Huang (ICLR 2024), "A Unified and General Framework for Continual Learning",
arXiv:2403.13249; code joey-wang123/CL-refresh-learning (models/derpp.py, the only model with refresh).

    `strategy=refresh strategy.base=derpp`: the base strategy is built as usual (same hyper-parameters,
    same optimiser, same seed, so its minibatch order and buffer draws are identical to a plain run);
    refresh only inserts an unlearn step before each of the base's training steps:

    for each minibatch (x, y):
        UNLEARN  (current batch, cross-entropy only, as in the code)
          mode=code  (released code):  g = grad CE(x, y) at theta (one SGD ascent step of a copy, lr 0.01)
                     for each parameter tensor p:  u = ||p|| / (||lr g|| + 1e-20) * lr g
                                                   p <- p + delta / (1 + 0.001 F) * (u + 0.001 N(0, I))
          mode=paper (Fisher-preconditioned ascent with Langevin noise, Hessian ~ identity):
                     p <- p + gamma * g / (F + damping) + noise_scale * sqrt(2 gamma / (F + damping)) * N(0, I)
        RELEARN  the base strategy's own train_step, unchanged (its loss, its optimiser, its hooks)
    after each experience: F <- tau * F + F_new, F_new = mean_i p(y_i|x_i) (grad log p(y_i|x_i))^2 over
    the experience's training data (per-example; F = 0 during the first experience, as in the code).

Refresh draws its noise from its own generator, so it never perturbs the base's random streams.
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from clbench.config import ConfigError
from clbench.registry import STRATEGIES
from clbench.strategy import Params, Strategy
from clbench.stream import Batch, Experience

MODES = ("code", "paper")


class Refresh(Strategy):
    """Refresh learning (unlearn-then-relearn) around any base strategy."""

    description = "refresh learning: Fisher-damped unlearn step before each step of any base strategy"
    defaults = {
        "base": "replay",        # the wrapped strategy (its hyper-parameters appear alongside these)
        "mode": "code",          # code: as the released code; paper: Fisher-preconditioned ascent + noise
        "delta": 1e-5,           # code: step size, relative to each tensor's norm
        "unlearn_lr": 0.01,      # code: lr of the ascent step of the copy (matters only through the 1e-20)
        "fisher_coef": 0.001,    # code: preconditioner 1 / (1 + fisher_coef * F)
        "noise": 0.001,          # code: noise std added to the norm-rescaled direction
        "gamma": 1e-4,           # paper: unlearning rate
        "damping": 1.0,          # paper: F + damping replaces F (F = 0 on the first experience)
        "noise_scale": 1.0,      # paper: 1.0 is the Langevin noise sqrt(2 gamma F^-1); 0 turns it off
        "tau": 1e-5,             # Fisher decay across experiences (code: 1e-5, i.e. the last one only)
        "fisher_samples": None,  # cap on the samples of an experience used for F (None: all, as the code)
    }

    # ----- config: expose the base strategy's hyper-parameters alongside refresh's ------------------
    @classmethod
    def resolve_defaults(cls, arg: str, overrides: dict) -> dict:
        from clbench.config import strategy_defaults
        base = arg or overrides.get("base", cls.defaults["base"])
        if not isinstance(base, str) or base.split(":")[0] == "refresh":
            raise ConfigError(f"bad value for 'strategy.base': expected the name of another strategy, got {base!r}")
        base_defaults = strategy_defaults(base, {k: v for k, v in overrides.items() if k not in cls.defaults})
        clash = sorted(set(base_defaults) & set(cls.defaults))
        if clash:
            raise ConfigError(f"strategy 'refresh' cannot wrap '{base}': both declare {', '.join(clash)}")
        return {**cls.defaults, "base": base, **base_defaults}

    def __init__(self, model, params: dict, train_cfg: dict, info, device, seed: int = 0):
        params = dict(params)
        if params.get("mode", "code") not in MODES:
            raise ConfigError(f"bad value for 'strategy.mode': expected one of {', '.join(MODES)}, "
                              f"got {params.get('mode')!r}")
        base_name = params.get("base", self.defaults["base"])
        base_params = {k: v for k, v in params.items() if k not in self.defaults and k != "name"}
        self.base: Strategy = STRATEGIES.get(base_name.split(":")[0])(
            model, {"name": base_name, **base_params}, train_cfg, info, device, seed=seed)
        self.hp = Params({k: params.get(k, v) for k, v in self.defaults.items()})
        self.model, self.train_cfg, self.info, self.device = self.base.model, train_cfg, info, device
        self.generator = torch.Generator().manual_seed(int(seed) + 104729)   # refresh's own noise stream
        self.temp = copy.deepcopy(self.model)
        self.fisher = {n: torch.zeros_like(p) for n, p in self.model.named_parameters()}
        self.n_unlearn = 0
        self.base.train_step = self._refresh_step    # instance attribute: the base loop calls this

    def __getattr__(self, name):  # anything refresh does not define is the base's (buffer, experience, ...)
        base = self.__dict__.get("base")
        if base is None:
            raise AttributeError(name)
        return getattr(base, name)

    @property
    def optimizer(self):
        return self.base.optimizer

    @property
    def step_callback(self):
        return self.base.step_callback

    @step_callback.setter
    def step_callback(self, fn):
        self.base.step_callback = fn

    # ----- the loop: the base's, with an unlearn step before each of its steps ---------------------
    def train(self, exp: Experience) -> None:
        self.base.train(exp)
        self.update_fisher(exp)

    def _refresh_step(self, batch: Batch) -> torch.Tensor:
        self.unlearn(batch)
        return type(self.base).train_step(self.base, batch)    # RELEARN: the base step, unchanged

    def unlearn(self, batch: Batch) -> None:
        """One unlearning step on the current batch (gradient *ascent* on its cross-entropy)."""
        self.temp.load_state_dict(self.model.state_dict())
        self.temp.train()
        params = list(self.temp.parameters())
        logits = self.temp(batch.x)
        if self.base.task_aware:
            logits = self.base.mask_logits(logits, batch.t)
        grads = torch.autograd.grad(F.cross_entropy(logits, batch.y), params, allow_unused=True)
        with torch.no_grad():
            for (name, p), g in zip(self.model.named_parameters(), grads):
                if g is None:
                    continue
                noise = torch.randn(p.shape, generator=self.generator).to(p.device)
                if self.hp.mode == "code":
                    step = float(self.hp.unlearn_lr) * g                        # temp - theta after the ascent step
                    u = p.norm() / (step.norm() + 1e-20) * step
                    precond = 1.0 / (1.0 + float(self.hp.fisher_coef) * self.fisher[name])
                    p.add_(float(self.hp.delta) * precond * (u + float(self.hp.noise) * noise))
                else:
                    inv = 1.0 / (self.fisher[name] + float(self.hp.damping))
                    gamma = float(self.hp.gamma)
                    p.add_(gamma * inv * g + float(self.hp.noise_scale) * torch.sqrt(2.0 * gamma * inv) * noise)
        self.n_unlearn += 1

    # ----- Fisher information at the end of an experience ------------------------------------------
    def update_fisher(self, exp: Experience, chunk: int = 256) -> None:
        """Diagonal empirical Fisher weighted by p(y|x), per example, as the code's batch-size-1 loop."""
        n = len(exp.train)
        cap = self.hp.fisher_samples
        pos = torch.randperm(n, generator=self.generator)[: int(cap)] if cap else torch.arange(n)
        self.temp.load_state_dict(self.model.state_dict())
        self.temp.eval()    # per-example passes: BatchNorm uses its running statistics
        params = {k: v.detach() for k, v in self.temp.named_parameters()}
        buffers = {k: v.detach() for k, v in self.temp.named_buffers()}
        task_aware = self.base.task_aware

        def log_p(prm, x, y, t):
            logits = functional_call(self.temp, (prm, buffers), (x[None],))
            if task_aware:
                logits = self.base.mask_logits(logits, t[None])
            return F.log_softmax(logits, 1)[0].gather(0, y[None])[0]

        per_example = vmap(grad(log_p), in_dims=(None, 0, 0, 0))
        new = {k: torch.zeros_like(v) for k, v in params.items()}
        for start in range(0, len(pos), chunk):
            b = exp.train.get(pos[start:start + chunk].to(exp.train.device))
            with torch.no_grad():
                logits = self.temp(b.x)
                if task_aware:
                    logits = self.base.mask_logits(logits, b.t)
                p_y = F.softmax(logits, 1).gather(1, b.y[:, None]).squeeze(1)
            g = per_example(params, b.x, b.y, b.t)
            for k in new:
                new[k] += torch.einsum("b,b...->...", p_y, g[k] ** 2)
        tau = float(self.hp.tau)
        for k in self.fisher:
            self.fisher[k] = tau * self.fisher[k] + new[k] / max(len(pos), 1)

    # ----- everything else is the base's -----------------------------------------------------------
    def predict(self, x, task_id: Optional[int] = None):
        return self.base.predict(x, task_id)

    def eval_model(self):
        return self.base.eval_model()

    def forward(self, x, t=None):
        return self.base.forward(x, t)

    def after_evaluation(self, evaluator) -> None:
        self.base.after_evaluation(evaluator)

    def extra_state(self) -> dict:
        return {**self.base.extra_state(),
                "refresh": {"base": self.hp.base, "mode": self.hp.mode, "unlearn_steps": self.n_unlearn,
                            "fisher_mean": float(sum(f.sum() for f in self.fisher.values())
                                                 / sum(f.numel() for f in self.fisher.values()))}}
