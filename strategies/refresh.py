"""Refresh learning: unlearn, then relearn, every minibatch -- a callback around any strategy.

Z. Wang, Y. Li, L. Shen, H. Huang (ICLR 2024), "A Unified and General Framework for Continual Learning",
arXiv:2403.13249; code joey-wang123/CL-refresh-learning (models/derpp.py, the only model with refresh).

    `strategy=derpp callbacks=[refresh]`: the strategy is built as usual (same hyper-parameters, same optimiser,
    same seed, so its minibatch order and buffer draws are identical to a plain run); the refresh callback
    only inserts an unlearn step before each of the strategy's training steps (its `around_step` hook):

    for each minibatch (x, y):
        UNLEARN  (current batch, cross-entropy only, as in the code)
          mode=code  (released code):  g = grad CE(x, y) at theta (one SGD ascent step of a copy, lr 0.01)
                     for each parameter tensor p:  u = ||p|| / (||lr g|| + 1e-20) * lr g
                                                   p <- p + delta / (1 + 0.001 F) * (u + 0.001 N(0, I))
          mode=paper (Fisher-preconditioned ascent with Langevin noise, Hessian ~ identity):
                     p <- p + gamma * g / (F + damping) + noise_scale * sqrt(2 gamma / (F + damping)) * N(0, I)
        RELEARN  the strategy's own training step, unchanged (its loss, its optimiser, its hooks)
    after each experience: F <- tau * F + F_new, F_new = mean_i p(y_i|x_i) (grad log p(y_i|x_i))^2 over
    the experience's training data (per-example; F = 0 during the first experience, as in the code).

Refresh draws its noise from its own generator, so it never perturbs the strategy's random streams.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from clbench.hparams import HP
from clbench.strategy import Callback, Strategy
from clbench.stream import Batch, Experience


class Refresh(Callback):
    """Refresh learning (unlearn-then-relearn) around any strategy."""

    description = "refresh learning: Fisher-damped unlearn step before each training step of any strategy"
    paper = "Wang, Li, Shen, Huang 2024, A Unified and General Framework for Continual Learning, ICLR, arXiv:2403.13249"
    code = "joey-wang123/CL-refresh-learning models/derpp.py"
    hparams = {
        "mode": HP("code", "code: as the released code; paper: Fisher-preconditioned ascent + noise",
                   choices=("code", "paper")),
        "delta": HP(1e-5, "code: step size, relative to each tensor's norm", low=0),
        "unlearn_lr": HP(0.01, "code: lr of the ascent step of the copy (matters only through the 1e-20)", gt=0),
        "fisher_coef": HP(0.001, "code: preconditioner 1 / (1 + fisher_coef * F)", low=0),
        "noise": HP(0.001, "code: noise std added to the norm-rescaled direction", low=0),
        "gamma": HP(1e-4, "paper: unlearning rate", low=0),
        "damping": HP(1.0, "paper: F + damping replaces F (F = 0 on the first experience)", gt=0),
        "noise_scale": HP(1.0, "paper: 1.0 is the Langevin noise sqrt(2 gamma F^-1); 0 turns it off", low=0),
        "tau": HP(1e-5, "Fisher decay across experiences (code: 1e-5, i.e. the last one only)", low=0),
        "fisher_samples": HP(None, "cap on the samples of an experience used for F (null: all, as the code)",
                             type=int, low=1),
    }
    checkpoint_attrs = ("fisher", "generator", "n_unlearn")

    def __init__(self, params=None, seed: int = 0):
        super().__init__(params, seed)
        self.generator = torch.Generator().manual_seed(int(seed) + 104729)   # refresh's own noise stream
        self.n_unlearn = 0

    def setup(self, strategy: Strategy) -> None:
        self.temp = copy.deepcopy(strategy.model)
        self.fisher = {n: torch.zeros_like(p) for n, p in strategy.model.named_parameters()}

    # ----- the loop: the strategy's, with an unlearn step before each of its steps ------------------
    def around_step(self, strategy: Strategy, batch: Batch, step) -> torch.Tensor:
        self.unlearn(strategy, batch)
        return step(batch)                       # RELEARN: the strategy's step, unchanged

    def after_experience(self, strategy: Strategy, exp: Experience) -> None:
        self.update_fisher(strategy, exp)

    def unlearn(self, strategy: Strategy, batch: Batch) -> None:
        """One unlearning step on the current batch (gradient *ascent* on its cross-entropy)."""
        model = strategy.model
        self.temp.load_state_dict(model.state_dict())
        self.temp.train()
        params = list(self.temp.parameters())
        logits = self.temp(batch.x)
        if strategy.task_aware:
            logits = strategy.mask_logits(logits, batch.t)
        grads = torch.autograd.grad(F.cross_entropy(logits, batch.y), params, allow_unused=True)
        with torch.no_grad():
            for (name, p), g in zip(model.named_parameters(), grads):
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
    def update_fisher(self, strategy: Strategy, exp: Experience, chunk: int = 256) -> None:
        """Diagonal empirical Fisher weighted by p(y|x), per example, as the code's batch-size-1 loop."""
        n = len(exp.train)
        cap = self.hp.fisher_samples
        pos = torch.randperm(n, generator=self.generator)[: int(cap)] if cap else torch.arange(n)
        self.temp.load_state_dict(strategy.model.state_dict())
        self.temp.eval()    # per-example passes: BatchNorm uses its running statistics
        params = {k: v.detach() for k, v in self.temp.named_parameters()}
        buffers = {k: v.detach() for k, v in self.temp.named_buffers()}
        task_aware = strategy.task_aware

        def log_p(prm, x, y, t):
            logits = functional_call(self.temp, (prm, buffers), (x[None],))
            if task_aware:
                logits = strategy.mask_logits(logits, t[None])
            return F.log_softmax(logits, 1)[0].gather(0, y[None])[0]

        per_example = vmap(grad(log_p), in_dims=(None, 0, 0, 0))
        new = {k: torch.zeros_like(v) for k, v in params.items()}
        for start in range(0, len(pos), chunk):
            b = exp.train.get(pos[start:start + chunk].to(exp.train.device))
            with torch.no_grad():
                logits = self.temp(b.x)
                if task_aware:
                    logits = strategy.mask_logits(logits, b.t)
                p_y = F.softmax(logits, 1).gather(1, b.y[:, None]).squeeze(1)
            g = per_example(params, b.x, b.y, b.t)
            for k in new:
                new[k] += torch.einsum("b,b...->...", p_y, g[k] ** 2)
        tau = float(self.hp.tau)
        for k in self.fisher:
            self.fisher[k] = tau * self.fisher[k] + new[k] / max(len(pos), 1)

    def extra_state(self) -> dict:
        return {"mode": self.hp.mode, "unlearn_steps": self.n_unlearn,
                "fisher_mean": float(sum(f.sum() for f in self.fisher.values())
                                     / sum(f.numel() for f in self.fisher.values()))}
