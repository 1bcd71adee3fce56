"""Memory Aware Synapses (MAS).

Aljundi, Babiloni, Elhoseiny, Rohrbach, Tuytelaars (2018), "Memory Aware Synapses: Learning what (not) to
forget", ECCV 2018, arXiv:1711.09601. Follows the authors' code (rahafaljundi/MAS-Memory-Aware-Synapses,
MAS_utils/MAS_based_Training.py: `compute_importance_l2`, `MAS_Omega_update`, `Weight_Regularized_SGD`):

    for each minibatch of task t:   L = CE + lambda * sum_k Omega_k (theta_k - theta*_k)^2
    after task t:
        model in eval mode, on the task's training inputs (no labels needed):
            omega_k = 1/N sum_groups | d/d theta_k  sum_{x in group} ||f(x)||_2^2 |      (f: the logits)
        Omega <- Omega + omega          (accumulated over tasks, as the authors' code)
        theta* <- theta                 (the parameters at the end of the task)

With `importance_batch_size=1` (the default) each group is one sample, so omega is the paper's Eq. 2-4:
the mean over samples of |gradient of the squared L2 norm of the output|. The authors' code takes the
gradient of the sum over its training minibatch (the absolute value is then taken per batch, not per
sample); set `importance_batch_size` to that batch size to reproduce it. The penalty gradient 2 lambda
Omega (theta - theta*) is what their `Weight_Regularized_SGD` adds inside the step.

Deviations: in task-IL the output f(x) is the task's head (its classes' logits), as in the authors'
multi-head runs; elsewhere all logits. Avalanche's MAS (FACIL-based) instead averages batch-mean gradients in
train mode and decays Omega by 0.5 per task, so its lambda is on another scale.
"""
from __future__ import annotations

import torch
from torch import Tensor

from clbench.hparams import HP, loguniform
from clbench.strategy import Strategy
from clbench.stream import Batch, Experience
from clbench.strategies.parts import quadratic_penalty


def output_norm_importance(strategy: Strategy, exp: Experience, group: int, max_samples=None,
                           chunk: int = 256) -> dict[str, Tensor]:
    """MAS importance on an experience: mean over groups of |grad of the summed squared output norms|."""
    from torch.func import functional_call, grad, vmap

    model = strategy.model
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    classes = (torch.tensor(strategy.task_classes[exp.task_id], device=strategy.device)
               if strategy.task_aware else None)

    def squared_norm(p, x):                       # sum over a group of ||f(x)||^2
        out = functional_call(model, (p, buffers), (x,))
        out = out[:, classes] if classes is not None else out
        return (out ** 2).sum()

    per_group = vmap(grad(squared_norm), in_dims=(None, 0))
    n = len(exp.train) if max_samples is None else min(int(max_samples), len(exp.train))
    n -= n % group                                 # whole groups only
    order = torch.randperm(len(exp.train), generator=strategy.generator)[:n].to(exp.train.device)
    omega = {k: torch.zeros_like(v) for k, v in params.items()}
    step = max(chunk // group, 1) * group
    was_training = model.training
    model.eval()                                   # the authors compute the importance in eval mode
    for start in range(0, n, step):
        x = exp.train.get(order[start:start + step]).x
        g = per_group(params, x.reshape(-1, group, *x.shape[1:]))
        for k in omega:
            omega[k] += g[k].abs().sum(0)
    model.train(was_training)
    return {k: v / max(n, 1) for k, v in omega.items()}


class MAS(Strategy):
    """MAS: quadratic penalty weighted by how sensitive the output norm is to each parameter."""

    description = "memory aware synapses: penalty weighted by the sensitivity of the output norm (label-free)"
    paper = ("Aljundi et al. 2018, Memory Aware Synapses: Learning what (not) to forget, ECCV, "
             "arXiv:1711.09601")
    code = "rahafaljundi/MAS-Memory-Aware-Synapses MAS_utils/MAS_based_Training.py"
    hparams = {
        "mas_lambda": HP(0.1, "penalty weight lambda (the A-GEM repo's MAS run on PMNIST: 0.1; lr * lambda * max "
                              "Omega above 1 makes the penalty step diverge: presets per benchmark, chosen on a "
                              "validation split)", low=0, search=loguniform(0.001, 10)),
        "importance_batch_size": HP(1, "samples per importance gradient (1: per sample, the paper; the authors' "
                                       "code: its training batch)", low=1),
        "importance_samples": HP(None, "training samples of each task used for the importance (null: all)",
                                 type=int, low=1),
    }
    checkpoint_attrs = ("omega", "theta_star")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.omega: dict[str, Tensor] = {}         # accumulated importance (empty before the first task ends)
        self.theta_star: dict[str, Tensor] = {}

    def penalty(self) -> Tensor:
        return quadratic_penalty(self.omega, dict(self.model.named_parameters()), self.theta_star)

    def loss(self, batch: Batch) -> Tensor:
        ce = super().loss(batch)
        return ce + float(self.hp.mas_lambda) * self.penalty() if self.omega else ce

    def after_experience(self, exp: Experience) -> None:
        new = output_norm_importance(self, exp, int(self.hp.importance_batch_size), self.hp.importance_samples)
        self.omega = {k: self.omega.get(k, 0) + v for k, v in new.items()}
        self.theta_star = {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    def extra_state(self) -> dict:
        return {"bytes": sum(v.numel() * v.element_size() for d in (self.omega, self.theta_star) for v in d.values())}
