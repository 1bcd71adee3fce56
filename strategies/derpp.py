"""DER++: Dark Experience Replay with an extra label-replay term.

Buzzega et al. (2020), "Dark Experience for General Continual Learning: a Strong, Simple Baseline",
NeurIPS 2020, arXiv:2004.07211. As in the authors' code (Mammoth `models/derpp.py`), the label term uses
a *second, independent* buffer sample:

    L = CE(f(x), y) + alpha * MSE(f(x_m), z_m) + beta * CE(f(x_m'), y_m')

with (x_m, z_m) and (x_m', y_m') two uniform samples of the reservoir, z_m the logits stored at
insertion. Everything else is DER (strategies/der.py).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from clbench.hparams import HP, loguniform
from clbench.strategies.der import DER


class DERpp(DER):
    """DER++: DER plus cross-entropy on an independent buffer sample."""

    description = "DER++: logit replay (MSE) plus label replay (CE) on a second, independent buffer sample"
    hparams = {
        **DER.hparams,
        "alpha": HP(0.2, "weight of the logit-matching term (Mammoth seq-cifar10, buffer 500)", low=0,
                    search=loguniform(0.01, 10)),
        "beta": HP(0.5, "weight of the label-replay term", low=0, search=loguniform(0.01, 10)),
    }

    def extra_replay_loss(self) -> Tensor | float:
        if len(self.buffer) == 0:
            return 0.0
        mem = self.buffer.sample(self.mem_batch)   # independent of DER's sample
        return float(self.hp.beta) * F.cross_entropy(self.task_head(self.model(mem["x"]), mem["t"]), mem["y"])
