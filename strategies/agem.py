"""Averaged Gradient Episodic Memory (A-GEM).

Chaudhry, Ranzato, Rohrbach, Elhoseiny (2019), "Efficient Lifelong Learning with A-GEM", ICLR 2019,
arXiv:1812.00420. Follows the authors' code (facebookresearch/agem) and Mammoth `models/agem.py`:

    for each minibatch of the current experience:
        g     = grad of the loss on the minibatch
        g_ref = grad of the loss on a random batch of ref_batch_size episodic-memory samples
        if g . g_ref < 0:                            # the step would increase the memory loss
            g = g - (g . g_ref / g_ref . g_ref) g_ref   # project onto the half-space g . g_ref >= 0
        SGD step with g
    after the experience: store mem_per_experience random samples of it in the episodic memory

Memory size: the paper stores a fixed number of samples per task (`mem_per_experience`; PMNIST: 250 = 25 per
class); Mammoth instead splits a total buffer evenly over the tasks (`buffer_size`: buffer_size // n_experiences
samples of each experience; it overrides mem_per_experience when set).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from clbench.buffer import ReservoirBuffer
from clbench.hparams import HP
from clbench.strategy import Strategy
from clbench.stream import Batch, Experience
from clbench.strategies.parts import random_subset


def flat_grad(params) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])


def set_flat_grad(params, g: torch.Tensor) -> None:
    i = 0
    for p in params:
        n = p.numel()
        p.grad = g[i:i + n].view_as(p).clone()
        i += n


def project(g: torch.Tensor, g_ref: torch.Tensor) -> torch.Tensor:
    """A-GEM's projection: g unchanged if it agrees with g_ref, else its component orthogonal to g_ref."""
    dot = torch.dot(g, g_ref)
    if dot >= 0:
        return g
    return g - dot / torch.dot(g_ref, g_ref).clamp_min(1e-12) * g_ref


class AGEM(Strategy):
    """A-GEM: project the gradient so the loss on an episodic-memory batch does not increase."""

    description = "A-GEM: gradient projected against the average gradient on an episodic memory"
    paper = "Chaudhry et al. 2019, Efficient Lifelong Learning with A-GEM, ICLR, arXiv:1812.00420"
    code = "facebookresearch/agem; aimagelab/mammoth models/agem.py"
    hparams = {
        "mem_per_experience": HP(250, "samples stored per experience (A-GEM paper, PMNIST)", low=0),
        "buffer_size": HP(None, "total memory split evenly over the experiences, as Mammoth (null: "
                                "mem_per_experience per experience)", type=int, low=0),
        "ref_batch_size": HP(256, "memory samples for the reference gradient (A-GEM paper)", low=1),
    }
    checkpoint_attrs = ("memory", "n_projected", "n_steps")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.per_experience = (int(self.hp.mem_per_experience) if self.hp.buffer_size is None
                               else int(self.hp.buffer_size) // self.info.n_experiences)
        capacity = self.per_experience * self.info.n_experiences
        # capacity covers every experience's share, so reservoir insertion just appends
        self.memory = ReservoirBuffer(capacity, self.device, self.generator)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.n_projected = self.n_steps = 0

    def reference_gradient(self) -> torch.Tensor:
        mem = self.memory.sample(int(self.hp.ref_batch_size))
        self.optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(self.forward(mem["x"], mem["t"]), mem["y"]).backward()
        return flat_grad(self.params)

    def after_backward(self, batch: Batch) -> None:
        self.n_steps += 1
        if len(self.memory) == 0:
            return
        # 1. the minibatch gradient, 2. the reference gradient on the memory
        g = flat_grad(self.params)
        g_ref = self.reference_gradient()
        # 3. project if they disagree, and write the result back for the optimizer step
        g_new = project(g, g_ref)
        self.n_projected += int(g_new is not g)
        set_flat_grad(self.params, g_new)

    def after_experience(self, exp: Experience) -> None:
        # 4. episodic memory: a random subset of this experience
        self.memory.add(random_subset(exp, self.per_experience, self.generator))

    def extra_state(self) -> dict:
        return {"buffer": self.memory.state(), "projected_steps": self.n_projected, "steps": self.n_steps}
