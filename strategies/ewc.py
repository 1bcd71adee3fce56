"""Elastic Weight Consolidation (EWC) and online EWC.

Kirkpatrick et al. (2017), "Overcoming catastrophic forgetting in neural networks", PNAS 114(13),
arXiv:1612.00796; online EWC: Schwarz et al. (2018), "Progress & Compress", ICML 2018, arXiv:1805.06370.

    for each minibatch:  L = CE + lambda * sum_k  F_k (theta_k - theta*_k)^2     (summed over anchors)
    after experience e:  F_e = E_x[ p(y|x) * (d log p(y|x) / d theta)^2 ]   on e's training data
                         separate: keep (F_e, theta*_e) for every past experience (Kirkpatrick)
                         online:   F <- gamma * F + F_e, theta* <- theta  (one anchor; Schwarz)

The Fisher follows Mammoth's `models/ewc_on.py` (the code behind the published oEWC numbers): the
squared per-sample gradient of the log-likelihood of the true label, weighted by the sample's p(y|x),
averaged over the experience. Per-sample gradients come from torch.func (vmap over grad). The penalty has
no 1/2 factor, as in Mammoth's `models/ewc_on.py`, so Mammoth's lambdas carry over.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from clbench.hparams import HP, loguniform
from clbench.strategy import Strategy
from clbench.stream import Batch, Experience


def fisher_diagonal(strategy: Strategy, exp: Experience, max_samples, batch_size: int = 256) -> dict[str, Tensor]:
    """Diagonal Fisher on (a random subset of) the experience: mean over samples of p(y|x) * grad^2."""
    from torch.func import functional_call, grad, vmap

    model = strategy.model
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n: b.detach() for n, b in model.named_buffers()}

    def log_lik(p, x, y, t):
        logits = functional_call(model, (p, buffers), (x.unsqueeze(0),))
        if strategy.task_aware:
            logits = strategy.mask_logits(logits, t.unsqueeze(0))
        return F.log_softmax(logits, 1)[0].gather(0, y.unsqueeze(0)).squeeze(0)

    per_sample = vmap(grad(log_lik, has_aux=False), in_dims=(None, 0, 0, 0))
    n = len(exp.train) if max_samples is None else min(int(max_samples), len(exp.train))
    order = torch.randperm(len(exp.train), generator=strategy.generator)[:n].to(exp.train.device)
    fisher = {k: torch.zeros_like(v) for k, v in params.items()}
    was_training = model.training
    model.eval()  # no dropout noise in the importance estimate
    for start in range(0, n, batch_size):
        b = exp.train.get(order[start:start + batch_size])
        g = per_sample(params, b.x, b.y, b.t)
        with torch.no_grad():
            p_y = log_lik_batch(strategy, b).exp()            # p(y|x) of each sample
            for k in fisher:
                w = p_y.view(-1, *([1] * (g[k].dim() - 1)))
                fisher[k] += (w * g[k] ** 2).sum(0)
    model.train(was_training)
    return {k: v / max(n, 1) for k, v in fisher.items()}


def log_lik_batch(strategy: Strategy, b: Batch) -> Tensor:
    logits = strategy.forward(b.x, b.t)
    return F.log_softmax(logits, 1).gather(1, b.y[:, None]).squeeze(1)


class EWC(Strategy):
    """EWC (separate penalty per past experience) or online EWC (one decayed Fisher, one anchor)."""

    description = "elastic weight consolidation: Fisher-weighted quadratic penalty (mode: separate | online)"
    paper = ("Kirkpatrick et al. 2017, Overcoming catastrophic forgetting in neural networks, PNAS; "
             "Schwarz et al. 2018, Progress & Compress, ICML")
    code = "aimagelab/mammoth models/ewc_on.py"
    hparams = {
        "ewc_lambda": HP(10.0, "penalty weight (A-GEM repo, PMNIST); Mammoth oEWC uses 0.7 on P-MNIST", low=0,
                         search=loguniform(0.1, 1000)),
        "mode": HP("separate", "separate (Kirkpatrick 2017) or online (Schwarz 2018)", choices=("separate", "online")),
        "gamma": HP(1.0, "online mode: decay of the accumulated Fisher (Mammoth: 1.0)", low=0, high=1),
        "fisher_samples": HP(None, "samples of each experience used for the Fisher (null: all)", type=int, low=1),
    }
    checkpoint_attrs = ("anchors",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.anchors: list[tuple[dict[str, Tensor], dict[str, Tensor]]] = []  # (Fisher, theta*) pairs

    def penalty(self) -> Tensor:
        """sum over anchors of sum_k F_k (theta_k - theta*_k)^2; zero at every anchor."""
        total = torch.zeros((), device=self.device)
        named = dict(self.model.named_parameters())
        for fisher, star in self.anchors:
            for k, f in fisher.items():
                total = total + (f * (named[k] - star[k]) ** 2).sum()
        return total

    def loss(self, batch: Batch) -> Tensor:
        ce = F.cross_entropy(self.forward(batch.x, batch.t), batch.y)
        if not self.anchors:
            return ce
        return ce + float(self.hp.ewc_lambda) * self.penalty()

    def after_experience(self, exp: Experience) -> None:
        fisher = fisher_diagonal(self, exp, self.hp.fisher_samples)
        star = {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}
        if self.hp.mode == "online" and self.anchors:
            old, _ = self.anchors[0]
            fisher = {k: float(self.hp.gamma) * old[k] + fisher[k] for k in fisher}
            self.anchors = [(fisher, star)]
        elif self.hp.mode == "online":
            self.anchors = [(fisher, star)]
        else:
            self.anchors.append((fisher, star))

    def extra_state(self) -> dict:
        tensors = [v for pair in self.anchors for d in pair for v in d.values()]
        return {"mode": self.hp.mode, "anchors": len(self.anchors),
                "bytes": sum(v.numel() * v.element_size() for v in tensors)}
