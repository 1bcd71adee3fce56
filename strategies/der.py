"""Dark Experience Replay (DER).

Buzzega, Boschini, Porrello, Abati, Calderara (2020), "Dark Experience for General Continual Learning:
a Strong, Simple Baseline", NeurIPS 2020, arXiv:2004.07211. Follows the authors' code (Mammoth
`models/der.py`): a reservoir buffer stores each sample together with the logits the network produced
for it *at insertion time* (the forward pass of the step that saw it); those stored logits never change.

    for each minibatch (x, y) of the stream:
        z = f(x)                                    # current logits
        L = CE(z, y)
        if buffer not empty:
            (x_m, z_m) ~ buffer                     # uniform sample of mem_batch_size
            L += alpha * MSE(f(x_m), z_m)           # match the logits recorded at insertion
        SGD step on L
        reservoir-insert (x, y, z.detach())         # z from before the step, as in Mammoth
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from clbench.buffer import make_buffer
from clbench.hparams import HP, loguniform
from clbench.strategy import Strategy
from clbench.stream import Batch


class DER(Strategy):
    """Dark Experience Replay: reservoir buffer of (x, logits at insertion), logit matching (MSE)."""

    description = "dark experience replay: replays the logits stored when each sample entered the buffer"
    paper = "Buzzega et al. 2020, Dark Experience for General Continual Learning, NeurIPS, arXiv:2004.07211"
    code = "aimagelab/mammoth models/der.py"
    hparams = {
        "buffer_size": HP(500, "samples kept in memory, over all tasks", low=0),
        "alpha": HP(0.3, "weight of the logit-matching term (Mammoth seq-cifar10, buffer 500)", low=0,
                    search=loguniform(0.01, 10)),
        "mem_batch_size": HP(None, "memory samples per step (null: same as train.batch_size)", type=int, low=1),
    }
    checkpoint_attrs = ("buffer",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.buffer = make_buffer("reservoir", self.hp.buffer_size, self.device, self.generator)
        self.mem_batch = int(self.hp.mem_batch_size or self.train_cfg["batch_size"])
        self._logits: Tensor | None = None

    def loss(self, batch: Batch) -> Tensor:
        # 1. cross-entropy on the stream batch (the task's head in task-IL); keep its unmasked logits for insertion
        z = self.model(batch.x)
        self._logits = z.detach()
        loss = F.cross_entropy(self.task_head(z, batch.t), batch.y)
        # 2. dark knowledge: match the logits recorded when the memory samples were inserted
        if len(self.buffer) > 0:
            mem = self.buffer.sample(self.mem_batch)
            loss = loss + float(self.hp.alpha) * F.mse_loss(self.model(mem["x"]), mem["logits"])
        return loss + self.extra_replay_loss()

    def extra_replay_loss(self) -> Tensor | float:
        """DER++ adds its label-replay term here."""
        return 0.0

    def after_step(self, batch: Batch) -> None:
        # 3. reservoir insertion with the logits of the step that saw the samples
        self.buffer.add(batch, logits=self._logits)

    def extra_state(self) -> dict:
        return {"buffer": self.buffer.state()}
