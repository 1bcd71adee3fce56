"""L2 anchor: fine-tuning with a quadratic pull towards the weights at the end of the previous experience.

    L = CE(f(x), y) + lambda/2 * ||theta - theta_prev||^2      (theta_prev: the previous model, frozen)
"""
from __future__ import annotations

import torch.nn.functional as F

from clbench.hparams import HP, loguniform
from clbench.strategy import Strategy


class L2Anchor(Strategy):
    """Fine-tuning with an L2 penalty towards the previous experience's weights."""

    description = "fine-tuning + L2 pull towards the previous experience's weights"
    hparams = {"lamda": HP(1.0, "weight of the L2 penalty", low=0, search=loguniform(0.01, 100))}
    keeps_previous_model = True                         # the base class keeps self.previous_model (and saves it)

    def loss(self, batch):
        ce = F.cross_entropy(self.forward(batch.x, batch.t), batch.y)
        if self.previous_model is None:
            return ce
        l2 = sum((p - q).pow(2).sum() for p, q in zip(self.model.parameters(), self.previous_model.parameters()))
        return ce + self.hp.lamda / 2 * l2
