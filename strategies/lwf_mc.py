"""LwF-MC: the multi-class Learning without Forgetting of the iCaRL paper.

Rebuffi, Kolesnikov, Sperl, Lampert (2017), "iCaRL: Incremental Classifier and Representation Learning",
CVPR 2017, arXiv:1611.07725, Sec. 4 ("LwF-MC"): iCaRL's representation-learning loss without exemplars,
classifying with the network's outputs. Follows Mammoth `models/lwf_mc.py` (aimagelab/mammoth), which is also
iCaRL's loss in `models/icarl.py`:

    at the end of each experience:  old = frozen copy of the network
    for each minibatch (x, y):
        q_c = sigmoid(old(x))_c        for the classes c seen before this experience    (distillation targets)
        q_c = [y == c]                 for the classes of this experience               (one-hot)
        L   = mean over the batch and the seen classes of BCE(sigmoid(f(x)_c), q_c)
    predict: argmax of f(x)

Deviations: none from Mammoth's loss (BCE averaged over batch x seen classes); Mammoth's optional loss-based L2
(`wd_reg`) is the optimiser's `train.weight_decay` here. Classes are handled as sets (any class order), not as
contiguous index ranges.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from clbench.strategy import Strategy
from clbench.stream import Batch, Experience


class LwFMC(Strategy):
    """LwF-MC: sigmoid BCE with the old network's outputs as targets for the old classes (no exemplars)."""

    description = "LwF-MC (iCaRL paper): BCE over seen classes, old-class targets from the previous network"
    paper = "Rebuffi et al. 2017, iCaRL: Incremental Classifier and Representation Learning, CVPR, arXiv:1611.07725"
    code = "aimagelab/mammoth models/lwf_mc.py"
    hparams: dict = {}
    settings = ("class-il", "task-il")
    keeps_previous_model = True      # self.previous_model: the network at the end of the last experience
    checkpoint_attrs = ("old_classes",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.old_classes: list[int] = []

    def distillation_targets(self, x: Tensor, y: Tensor) -> Tensor:
        """q over the seen classes: the old network's sigmoid outputs for old classes, one-hot for new ones."""
        seen = torch.tensor(self.seen_classes, device=y.device)
        q = (y.view(-1, 1) == seen.view(1, -1)).float()
        if self.previous_model is not None and self.old_classes:
            old = torch.isin(seen, torch.tensor(self.old_classes, device=y.device))
            with torch.no_grad():
                q[:, old] = torch.sigmoid(self.previous_model(x)[:, seen[old]])
        return q

    def loss(self, batch: Batch) -> Tensor:
        # 1. targets: old network for old classes, labels for new classes
        q = self.distillation_targets(batch.x, batch.y)
        # 2. binary cross-entropy of every seen class's sigmoid output against its target
        logits = self.model(batch.x)[:, self.seen_classes]
        return F.binary_cross_entropy_with_logits(logits, q)

    def after_experience(self, exp: Experience) -> None:
        # 3. the network becomes the next experience's teacher (the base class keeps the frozen copy)
        self.old_classes = list(self.seen_classes)
