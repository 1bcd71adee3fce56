"""EMA replay: experience replay whose predictions come from an exponential moving average of the weights.

    for each minibatch (x, y):
        (x_m, y_m) ~ reservoir buffer                       # as in experience replay
        L = CE(f([x; x_m]), [y; y_m]);  SGD step
        theta_ema <- decay * theta_ema + (1 - decay) * theta
        reservoir-insert (x, y)
    predict with theta_ema; the working model is scored too (result.json extra_models)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from clbench.buffer import make_buffer
from clbench.hparams import HP, uniform
from clbench.strategy import Strategy, frozen_copy


class EMAReplay(Strategy):
    """Experience replay with an EMA copy of the weights for prediction."""

    description = "experience replay; predicts with an exponential moving average of the weights"
    paper = "(example plugin from clbench docs/plugins.md)"
    hparams = {
        "buffer_size": HP(200, "samples kept in memory", low=0),
        "decay": HP(0.99, "EMA decay per step", low=0.0, high=1.0, search=uniform(0.9, 0.999)),
    }
    checkpoint_attrs = ("buffer", "ema")        # everything that changes during training: resume is exact

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.buffer = make_buffer("reservoir", self.hp.buffer_size, self.device, self.generator)
        self.ema = frozen_copy(self.model)

    def loss(self, batch):
        x, y, t = batch.x, batch.y, batch.t
        if len(self.buffer) > 0:                        # 1. replay a memory batch of the same size
            mem = self.buffer.sample(len(y))
            x, y, t = torch.cat([x, mem["x"]]), torch.cat([y, mem["y"]]), torch.cat([t, mem["t"]])
        return F.cross_entropy(self.forward(x, t), y)   # 2. one cross-entropy over both

    @torch.no_grad()
    def after_step(self, batch):
        for pe, p in zip(self.ema.parameters(), self.model.parameters()):   # 3. EMA of the weights
            pe.mul_(self.hp.decay).add_(p, alpha=1 - self.hp.decay)
        self.buffer.add(batch)                          # 4. reservoir insertion
        self.log("ema_distance", sum((pe - p).pow(2).sum() for pe, p in
                                     zip(self.ema.parameters(), self.model.parameters())))

    def eval_model(self):
        return self.ema

    def extra_models(self):
        return {"working": self.model}
