"""Riemannian Walk (RWalk).

Chaudhry, Dokania, Ajanthan, Torr (2018), "Riemannian Walk for Incremental Learning: Understanding
Forgetting and Intransigence", ECCV 2018, arXiv:1801.10112. Follows the authors' baseline code
(facebookresearch/agem, model/model.py `create_fisher_ops`, `create_pathint_ops`, `task_updates`, and the
RWALK branch of the training loop in fc_permute_mnist.py):

    every step i of task t, with g the gradient of the unregularised loss on the minibatch:
        if (i + 1) % update_every == 0:                                            (every Delta t steps)
            s_t  += relu( w / (xi + F * (theta - theta_w)^2) )     path score over the window, KL-scaled
            F    <- (1 - alpha) F + alpha * mean over the window of g^2           online Fisher (EWC++)
            theta_w <- theta;  w <- 0
        SGD step on  L = CE + lambda * sum_k (F^_k + s^_k) (theta_k - theta*_k)^2
        w += -g * (theta_after - theta_before)                                    loss change per parameter
    after task t:
        s <- s_t (first task)  or  (s + s_t) / 2                                   average the scores
        s^ = s normalised to [0, 1] over all parameters (min-max);  F^ = F likewise
        theta* <- theta;  s_t, w <- 0

g^2 is the square of the minibatch gradient (the authors' `ders` of the mean loss), not a per-sample Fisher.

Deviations from the authors' code (each a place where the code and the paper disagree; we follow the paper):
- The code's window accumulator of g^2 (`tmp_fisher_vars`) is reset only at the end of a task, so its
  "mean over the window" grows with the step count; here it is reset every window, the paper's Eq. 6.
- The code combines task scores with `score += (score + new) / 2` (assign_add); the paper averages,
  s = (s + new) / 2. The first task's score is the window sum itself in both (the code doubles it first).
- The code drops the half in the paper's KL term (1/2 F dtheta^2); we keep the code's form (no 1/2), so
  xi = 1e-3 means what it means there.
In class-IL the paper adds exemplars; this strategy is the regulariser alone (combine it with a replay
method for the paper's class-IL numbers).
"""
from __future__ import annotations

import torch
from torch import Tensor

from clbench.hparams import HP, loguniform
from clbench.strategy import Strategy
from clbench.stream import Batch, Experience
from clbench.strategies.parts import quadratic_penalty

EPSILON = 1e-32      # the authors' guard in the min-max normalisation


def min_max(d: dict[str, Tensor]) -> dict[str, Tensor]:
    """Normalise a set of tensors jointly to [0, 1] (minimum and maximum over all of them)."""
    lo = min(float(v.min()) for v in d.values())
    hi = max(float(v.max()) for v in d.values())
    return {k: (v - lo) / (hi - lo + EPSILON) for k, v in d.items()}


class RWalk(Strategy):
    """RWalk: quadratic penalty weighted by an online Fisher plus a KL-scaled path-integral score."""

    description = "Riemannian walk: penalty weighted by online Fisher + KL-normalised path-integral score"
    paper = ("Chaudhry et al. 2018, Riemannian Walk for Incremental Learning: Understanding Forgetting and "
             "Intransigence, ECCV, arXiv:1801.10112")
    code = "facebookresearch/agem model/model.py (RWALK)"
    hparams = {
        "rwalk_lambda": HP(1.0, "penalty weight lambda (authors' PMNIST run: 1; Avalanche: 0.1)", low=0,
                           search=loguniform(0.01, 100)),
        "ema_alpha": HP(0.9, "alpha, weight of the newest window in the Fisher EMA (authors' fisher_ema_decay)",
                        gt=0, high=1),
        "update_every": HP(10, "Delta t, steps between Fisher/score updates (authors: 10 on MNIST, 50 on CIFAR)",
                           low=1),
        "xi": HP(1e-3, "damping of the score's denominator (authors' PARAM_XI_STEP)", gt=0),
    }
    checkpoint_attrs = ("fisher", "window_sq", "window_steps", "window_theta", "small_omega", "task_score",
                        "score", "importance", "theta_star", "task_step", "tasks_done")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        zeros = lambda: {n: torch.zeros_like(p) for n, p in self.params.items()}  # noqa: E731
        self.fisher = zeros()              # running (EMA) Fisher F
        self.window_sq = zeros()           # sum of g^2 over the current window
        self.window_steps = 0
        self.window_theta = {n: p.detach().clone() for n, p in self.params.items()}   # theta at the window start
        self.small_omega = zeros()         # w: -sum g * dtheta over the current window
        self.task_score = zeros()          # s_t: this task's path score
        self.score = zeros()               # s: averaged over tasks
        self.importance: dict[str, Tensor] = {}   # F^ + s^ (empty before the first task ends)
        self.theta_star: dict[str, Tensor] = {}
        self.task_step = 0
        self.tasks_done = 0
        self._g: dict[str, Tensor] = {}
        self._before: dict[str, Tensor] = {}

    def before_experience(self, exp: Experience) -> None:
        self.task_step = 0

    def penalty(self) -> Tensor:
        return quadratic_penalty(self.importance, self.params, self.theta_star)

    def loss(self, batch: Batch) -> Tensor:
        # 1. every Delta t steps: path score over the window, then the Fisher EMA, then a new window
        if (self.task_step + 1) % int(self.hp.update_every) == 0:
            self.close_window()
        ce = super().loss(batch)
        return ce + float(self.hp.rwalk_lambda) * self.penalty() if self.importance else ce

    @torch.no_grad()
    def close_window(self) -> None:
        xi, alpha = float(self.hp.xi), float(self.hp.ema_alpha)
        for n, p in self.params.items():
            kl = self.fisher[n] * (p - self.window_theta[n]) ** 2
            self.task_score[n] += torch.relu(self.small_omega[n] / (xi + kl))
            if self.window_steps:
                self.fisher[n] = (1 - alpha) * self.fisher[n] + alpha * self.window_sq[n] / self.window_steps
            self.window_sq[n].zero_()
            self.window_theta[n] = p.detach().clone()
            self.small_omega[n].zero_()
        self.window_steps = 0

    def after_backward(self, batch: Batch) -> None:
        # 2. the unregularised gradient g: the step's gradient minus the penalty's, 2 lambda I (theta - theta*)
        lam = float(self.hp.rwalk_lambda)
        with torch.no_grad():
            for n, p in self.params.items():
                g = p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
                if n in self.importance:
                    g -= 2 * lam * self.importance[n] * (p - self.theta_star[n])
                self._g[n] = g
                self.window_sq[n] += g ** 2
                self._before[n] = p.detach().clone()
        self.window_steps += 1

    def after_step(self, batch: Batch) -> None:
        # 3. w += -g * dtheta (the loss change each parameter caused in this step)
        with torch.no_grad():
            for n, p in self.params.items():
                self.small_omega[n] += -self._g[n] * (p - self._before[n])
        self.task_step += 1

    @torch.no_grad()
    def after_experience(self, exp: Experience) -> None:
        # 4. average the task's score into s; normalise s and F to [0, 1]; new anchor theta*
        if self.tasks_done == 0:
            self.score = {n: v.clone() for n, v in self.task_score.items()}
        else:
            self.score = {n: (self.score[n] + self.task_score[n]) / 2 for n in self.score}
        s_hat, f_hat = min_max(self.score), min_max(self.fisher)
        self.importance = {n: f_hat[n] + s_hat[n] for n in self.params}
        self.theta_star = {n: p.detach().clone() for n, p in self.params.items()}
        for n, p in self.params.items():
            self.window_theta[n] = p.detach().clone()
            self.small_omega[n].zero_()
            self.task_score[n].zero_()
            self.window_sq[n].zero_()
        self.window_steps = 0
        self.tasks_done += 1

    def extra_state(self) -> dict:
        kept = (self.fisher, self.window_sq, self.window_theta, self.small_omega, self.task_score, self.score,
                self.importance, self.theta_star)
        return {"bytes": sum(v.numel() * v.element_size() for d in kept for v in d.values())}
