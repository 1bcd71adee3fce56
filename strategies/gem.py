"""Gradient Episodic Memory (GEM), the quadratic-program form.

Lopez-Paz & Ranzato (2017), "Gradient Episodic Memory for Continual Learning", NeurIPS 2017,
arXiv:1706.08840. Follows the authors' code (facebookresearch/GradientEpisodicMemory model/gem.py) and
Mammoth's port (aimagelab/mammoth models/gem.py, the code behind the DER paper's GEM rows):

    for each minibatch (x, y) of task t:
        for each past task k with an episodic memory M_k:
            g_k = grad of the loss on all of M_k                     (at the current parameters)
        g = grad of the loss on (x, y)
        if <g, g_k> < 0 for some k:                                  (the step would raise a past task's loss)
            v* = argmin_v  1/2 v^T (G G^T + eps I) v + (G g)^T v   subject to  v >= gamma      (dual QP)
            g  = G^T v* + g                                          (the projected gradient)
        SGD step with g
    after task t: M_t = memory_per_task random training samples of task t

G stacks the g_k as rows. The dual is solved in float64 with quadprog (Goldfarb-Idnani), the solver the
authors use. With eps = 0 the projected g has <g, g_k> >= 0 for every k; the ridge eps I (authors: 1e-3,
for numerical safety) relaxes that to <g, g_k> >= -eps * v*_k. gamma (`margin`, the authors'
`memory_strength`) is a lower bound on the dual variables: it pushes the step towards the old tasks'
gradients beyond mere non-interference.

Deviations:
- Memory: as Mammoth (MM0, the code of the published tables), a total `buffer_size` split evenly over the
  experiences (buffer_size // n_experiences per task: 10 per task on P-MNIST at buffer 200), filled at the end
  of each task with a random subset of its training data. The authors keep 256 samples per task written as a
  ring buffer during the task (the task's last samples): set `memory_per_task=256` for their budget.
- Past tasks are experiences (every earlier experience gets its own constraint), as in both codes.
- In task-IL the memory loss of task k uses task k's head (logits masked to its classes), as the authors do
  on CIFAR-100; Mammoth's S-MNIST run trains class-IL and never masks.
"""
from __future__ import annotations

import numpy as np
import quadprog
import torch
import torch.nn.functional as F
from torch import Tensor

from clbench.buffer import ReservoirBuffer
from clbench.hparams import HP, uniform
from clbench.strategy import Strategy
from clbench.stream import Batch, Experience
from clbench.strategies.parts import random_subset
from clbench.strategies.agem import flat_grad, set_flat_grad


def project_to_cone(g: Tensor, G: Tensor, margin: float, eps: float) -> tuple[Tensor, np.ndarray]:
    """GEM's projection of g (p,) against the task gradients G (k, p): (projected g, dual solution v*)."""
    Gd = G.detach().double().cpu().numpy()
    gd = g.detach().double().cpu().numpy()
    P = Gd @ Gd.T
    P = 0.5 * (P + P.T) + eps * np.eye(len(Gd))
    # quadprog minimises 1/2 v^T P v - a^T v subject to C^T v >= b
    v = quadprog.solve_qp(P, -(Gd @ gd), np.eye(len(Gd)), np.full(len(Gd), float(margin)))[0]
    projected = Gd.T @ v + gd
    return torch.from_numpy(projected).to(g.device, g.dtype), v


class GEM(Strategy):
    """GEM: each step's gradient projected (by a small QP) so no past task's memory loss increases."""

    description = "GEM: gradient projected by a QP so that no past task's episodic-memory loss increases"
    paper = "Lopez-Paz & Ranzato 2017, Gradient Episodic Memory for Continual Learning, NeurIPS, arXiv:1706.08840"
    code = "facebookresearch/GradientEpisodicMemory model/gem.py; aimagelab/mammoth models/gem.py"
    hparams = {
        "buffer_size": HP(200, "episodic memory over all tasks; each task keeps buffer_size // n_experiences "
                               "(Mammoth)", low=0),
        "memory_per_task": HP(None, "samples kept per task (null: buffer_size // n_experiences; the authors: 256)",
                              type=int, low=1),
        "margin": HP(0.5, "gamma, lower bound on the QP's dual variables (authors' memory_strength)", low=0,
                     search=uniform(0.0, 1.0)),
        "eps": HP(1e-3, "ridge added to G G^T in the QP (authors)", gt=0),
    }
    checkpoint_attrs = ("memory", "n_projected", "n_steps")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        n_exp = self.info.n_experiences
        self.per_task = int(self.hp.memory_per_task or int(self.hp.buffer_size) // max(n_exp, 1))
        # room for every experience's share, so reservoir insertion only ever appends
        self.memory = ReservoirBuffer(self.per_task * n_exp, self.device, self.generator)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.n_projected = self.n_steps = 0
        # all task gradients in one vectorised call, unless batch norm would update running statistics
        self.batched = not any(getattr(m, "track_running_stats", False) for m in self.model.modules())

    def memory_gradients(self) -> Tensor:
        """One row per past experience: the gradient of the loss on all of its memory."""
        mem = self.memory.contents()
        groups = [(mem["experience"] == k).nonzero().squeeze(1) for k in torch.unique(mem["experience"]).tolist()]
        if self.batched:
            return self.batched_gradients(mem, groups)
        rows = []
        for sel in groups:
            self.optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(self.forward(mem["x"][sel], mem["t"][sel]), mem["y"][sel]).backward()
            rows.append(flat_grad(self.params))
        return torch.stack(rows)

    def batched_gradients(self, mem: dict, groups: list[Tensor]) -> Tensor:
        """The same rows from one vectorised call (torch.func): groups padded to one size with zero weights."""
        from torch.func import functional_call, grad, vmap
        size = max(len(g) for g in groups)
        idx = torch.stack([torch.cat([g, g.new_zeros(size - len(g))]) for g in groups])
        weight = torch.stack([(torch.arange(size, device=g.device) < len(g)).float() for g in groups])
        x, y = mem["x"][idx], mem["y"][idx]
        allowed = self.class_mask[mem["t"][idx]] if self.task_aware else None
        names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        params = {n: p.detach() for n, p in self.model.named_parameters() if p.requires_grad}
        buffers = {n: b for n, b in self.model.named_buffers()}

        def group_loss(p, x, y, w, allowed):
            logits = functional_call(self.model, (p, buffers), (x,))
            if allowed is not None:
                logits = logits.masked_fill(~allowed, torch.finfo(logits.dtype).min)
            return (F.cross_entropy(logits, y, reduction="none") * w).sum() / w.sum()

        g = vmap(grad(group_loss), in_dims=(None, 0, 0, 0, 0 if allowed is not None else None))(
            params, x, y, weight, allowed)
        return torch.cat([g[n].reshape(len(groups), -1) for n in names], 1)

    def after_backward(self, batch: Batch) -> None:
        self.n_steps += 1
        if len(self.memory) == 0:
            return
        # 1. the minibatch gradient g (computed by the loop), 2. one gradient per past task
        g = flat_grad(self.params)
        G = self.memory_gradients()
        # 3. a violated constraint <g, g_k> < 0: replace g by its projection (the dual QP)
        if bool((G @ g < 0).any()):
            g, _ = project_to_cone(g, G, float(self.hp.margin), float(self.hp.eps))
            self.n_projected += 1
        set_flat_grad(self.params, g)

    def after_experience(self, exp: Experience) -> None:
        # 4. episodic memory of this task: a random subset of its training data
        mem = random_subset(exp, self.per_task, self.generator)
        self.memory.add(mem, experience=torch.full((len(mem.y),), exp.index, dtype=torch.long, device=exp.train.device))

    def extra_state(self) -> dict:
        return {"buffer": self.memory.state(), "memory_per_task": self.per_task,
                "projected_steps": self.n_projected, "steps": self.n_steps}
