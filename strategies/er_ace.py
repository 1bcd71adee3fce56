"""ER-ACE: experience replay with an asymmetric cross-entropy on the incoming data.

Caccia, Aljundi, Asadi, Tuytelaars, Pineau, Belilovsky (2022), "New Insights on Reducing Abrupt Representation
Change in Online Continual Learning", ICLR 2022, arXiv:2104.05025. Follows the authors' code
(pclucas14/AML methods/er.py, methods/er_ace.py, model.py `distLinear`); compared with Mammoth
`models/er_ace.py` (aimagelab/mammoth).

    for each incoming minibatch (x, y):
        seen  <- seen  U  classes of y
        L_inc = CE over the logits of (the classes present in this minibatch  U  the classes never seen yet):
                the logits of seen classes absent from the minibatch are masked to -inf, so the incoming data
                cannot push down old classes it does not contain
        L_re  = CE(f(x_m), y_m) on a uniform buffer sample (all logits)
        one SGD step on L_inc + L_re;  reservoir-insert (x, y)

The classifier is a cosine classifier with scale 10 (`cosine_head=true`, the authors' `distLinear`).

Deviations: "never seen" is a set of classes, not the authors' index range `[max seen label, n_classes)` (which
assumes the natural class order and also unmasks the largest seen label). `task_free=true` (the authors' code
forces it) masks and replays from the first minibatch; `task_free=false` is Mammoth's variant (from the second
experience on). Mammoth's 2022 version has a linear head (`cosine_head=false`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from clbench.buffer import make_buffer
from clbench.hparams import HP
from clbench.strategies.parts import use_cosine_head
from clbench.strategy import Strategy
from clbench.stream import Batch


class ERACE(Strategy):
    """ER-ACE: incoming CE restricted to the minibatch's classes and unseen classes, plus replay CE."""

    description = "ER-ACE: asymmetric CE (incoming logits masked to present + unseen classes) plus replay CE"
    paper = ("Caccia et al. 2022, New Insights on Reducing Abrupt Representation Change in Online Continual "
             "Learning, ICLR, arXiv:2104.05025")
    code = "pclucas14/AML methods/er_ace.py; aimagelab/mammoth models/er_ace.py"
    hparams = {
        "buffer_size": HP(200, "samples kept in memory (reservoir), over all classes", low=0),
        "mem_batch_size": HP(None, "memory samples per step (null: same as train.batch_size)", type=int, low=1),
        "task_free": HP(True, "mask and replay from the first minibatch (the authors); false: from the second "
                              "experience (Mammoth)"),
        "cosine_head": HP(True, "replace the linear classifier by a cosine classifier with scale 10 (the authors)"),
    }
    settings = ("class-il", "task-il")
    checkpoint_attrs = ("buffer", "seen_labels")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.hp.cosine_head:
            use_cosine_head(self.model, type(self).__name__.lower(), scale=10.0, learn_scale=False,
                            generator=self.generator)
            self.optimizer = self.make_optimizer()
        self.buffer = make_buffer("reservoir", self.hp.buffer_size, self.device, self.generator)
        self.mem_batch = int(self.hp.mem_batch_size or self.train_cfg["batch_size"])
        self.seen_labels = torch.zeros(self.info.n_classes, dtype=torch.bool, device=self.device)

    @property
    def active(self) -> bool:
        """Masking and replay are on (task-free: always; otherwise from the second experience)."""
        return bool(self.hp.task_free) or (self.experience is not None and self.experience.index > 0)

    def logits(self, x: Tensor, t: Tensor) -> Tensor:
        return self.task_head(self.model(x), t)

    def incoming_loss(self, batch: Batch) -> Tensor:
        """CE on the incoming batch, logits of seen-but-absent classes masked (asymmetric CE)."""
        present = torch.zeros_like(self.seen_labels)
        present[batch.y] = True
        self.seen_labels |= present
        logits = self.logits(batch.x, batch.t)
        if self.active:
            allowed = present | ~self.seen_labels
            logits = logits.masked_fill(~allowed, torch.finfo(logits.dtype).min)
        return F.cross_entropy(logits, batch.y)

    def loss(self, batch: Batch) -> Tensor:
        # 1. incoming data: the asymmetric loss
        loss = self.incoming_loss(batch)
        # 2. replay: plain CE on a uniform buffer sample
        if len(self.buffer) > 0 and self.active:
            mem = self.buffer.sample(self.mem_batch)
            loss = loss + F.cross_entropy(self.logits(mem["x"], mem["t"]), mem["y"])
        return loss

    def after_step(self, batch: Batch) -> None:
        # 3. reservoir insertion of the incoming samples
        self.buffer.add(batch)

    def extra_state(self) -> dict:
        return {"buffer": self.buffer.state()}
