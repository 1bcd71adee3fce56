"""Learning without Forgetting (LwF).

Li & Hoiem (2017), "Learning without Forgetting", TPAMI 40(12), arXiv:1606.09282.

    at the start of experience e > 0:  old = frozen copy of the model after experience e-1
    for each minibatch x, y of experience e:
        L = CE(f(x)[seen classes], y)                                   # new task
          + alpha * T^2 * KL( softmax(old(x)[old classes] / T) || softmax(f(x)[old classes] / T) )

The distillation target is the old model's output on the *current* inputs, as in the paper (which
records the old network's responses on the new data before training; with no data augmentation,
evaluating the frozen copy on the fly gives the same targets). T = 2, as in the paper and Mammoth's
seq-mnist preset. Differences from Mammoth's `models/lwf.py`: no warm-up of the new head with frozen
features, and the distillation is the standard T^2-scaled KL (Hinton et al. 2015) rather than Mammoth's
smoothed-softmax variant. Old classes: the classes of past experiences (all classes in domain-IL).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from clbench.hparams import HP, loguniform
from clbench.strategy import Strategy
from clbench.stream import Batch, Experience


def distillation(new_logits: Tensor, old_logits: Tensor, temperature: float) -> Tensor:
    """T^2 * KL(softmax(old/T) || softmax(new/T)), averaged over the batch."""
    log_p_new = F.log_softmax(new_logits / temperature, 1)
    p_old = F.softmax(old_logits / temperature, 1)
    return F.kl_div(log_p_new, p_old, reduction="batchmean") * temperature ** 2


class LwF(Strategy):
    """Learning without forgetting: distil the previous model's outputs on the new data."""

    description = "learning without forgetting: knowledge distillation from the previous model on new data"
    paper = "Li & Hoiem 2017, Learning without Forgetting, TPAMI, arXiv:1606.09282"
    code = "aimagelab/mammoth models/lwf.py"
    hparams = {
        "alpha": HP(1.0, "weight of the distillation term (Mammoth seq-mnist)", low=0, search=loguniform(0.01, 100)),
        "temperature": HP(2.0, "softmax temperature T (paper, Mammoth)", gt=0),
    }
    keeps_previous_model = True     # self.previous_model: the teacher, frozen at the end of each experience
    checkpoint_attrs = ("old_classes",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.old_classes: list[int] = []

    def loss(self, batch: Batch) -> Tensor:
        raw = self.model(batch.x)
        logits = self.task_head(raw, batch.t)
        # 1. cross-entropy over the classes seen so far (unseen heads get no gradient)
        seen = torch.tensor(self.seen_classes, device=logits.device)
        ce = F.cross_entropy(logits[:, seen], torch.searchsorted(seen, batch.y))
        if self.previous_model is None or not self.old_classes:
            return ce
        # 2. distillation towards the old model on the same inputs, over the old classes
        old = torch.tensor(self.old_classes, device=logits.device)
        with torch.no_grad():
            target = self.previous_model(batch.x)[:, old]
        return ce + float(self.hp.alpha) * distillation(raw[:, old], target, float(self.hp.temperature))

    def after_experience(self, exp: Experience) -> None:
        # 3. the model as it is now becomes the next experience's teacher (kept by the base class)
        self.old_classes = list(self.seen_classes)

    def extra_state(self) -> dict:
        n = sum(p.numel() * p.element_size() for p in self.previous_model.parameters()) if self.previous_model else 0
        return {"teacher_bytes": n}
