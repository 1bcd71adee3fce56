"""CLS-ER: Complementary Learning System based Experience Replay.

Arani, Sarfraz, Zonooz (ICLR 2022), "Learning Fast, Learning Slow: A General Continual Learning Method
based on Complementary Learning System", arXiv:2201.12604; follows the authors' code
(NeurAI-Lab/CLS-ER, models/clser.py):

    working model theta (SGD), plastic EMA theta_P and stable EMA theta_S (copies of theta at init)
    each step, current batch (x_b, y_b), buffer batch (x_m, y_m):
        z_S = f(x_m; theta_S), z_P = f(x_m; theta_P)
        per sample, target = z_S if softmax(z_S)[y] > softmax(z_P)[y] else z_P
        L = lambda * MSE(f(x_m; theta), target) + CE(f([x_b; x_m]; theta), [y_b; y_m])
        SGD step on theta; reservoir-add (x_b, y_b); global_step += 1
        with probability r_P: theta_P <- a theta_P + (1 - a) theta,  a = min(1 - 1/(global_step + 1), alpha_P)
        with probability r_S: theta_S <- a theta_S + (1 - a) theta,  a = min(1 - 1/(global_step + 1), alpha_S)
    inference with the stable model (the paper); the code logs all three models.

As in the code the EMA covers parameters only; BatchNorm statistics of the EMA models come from their
own train-mode forward passes on buffer samples. The update gates draw from the strategy's seeded
generator. `eval_model` picks the evaluated model; the other two are evaluated too after every
experience (declared by `extra_models`), and their accuracy matrices go to result.json's `extra_models`.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from clbench.buffer import make_buffer
from clbench.hparams import HP, loguniform, uniform
from clbench.strategy import Strategy
from clbench.stream import Batch

MODELS = ("stable", "plastic", "working")


class CLSER(Strategy):
    """CLS-ER: reservoir replay + consistency to the better of a plastic and a stable EMA model."""

    description = "CLS-ER: working model + plastic/stable EMA models with stochastic updates; consistency on replay"
    paper = ("Arani, Sarfraz, Zonooz 2022, Learning Fast, Learning Slow: A General Continual Learning Method "
             "based on Complementary Learning System, ICLR, arXiv:2201.12604")
    code = "NeurAI-Lab/CLS-ER models/clser.py"
    hparams = {
        "buffer_size": HP(200, "reservoir capacity", low=0),
        "mem_batch_size": HP(None, "buffer samples per step (null: train.batch_size)", type=int, low=1),
        "reg_weight": HP(0.1, "lambda, weight of the consistency loss", low=0, search=loguniform(0.01, 1.0)),
        "stable_update_freq": HP(0.7, "r_S, probability of a stable-model EMA update per step", low=0, high=1,
                                 search=uniform(0.05, 1.0)),
        "stable_alpha": HP(0.999, "alpha_S, EMA decay of the stable model", low=0, high=1),
        "plastic_update_freq": HP(0.9, "r_P, probability of a plastic-model EMA update per step", low=0, high=1,
                                  search=uniform(0.05, 1.0)),
        "plastic_alpha": HP(0.999, "alpha_P, EMA decay of the plastic model", low=0, high=1),
        "eval_model": HP("stable", "the model evaluated as the method's answer (the others are scored too)",
                         choices=MODELS),
    }
    checkpoint_attrs = ("buffer", "plastic", "stable", "ema_updates")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.buffer = make_buffer("reservoir", self.hp.buffer_size, self.device, self.generator)
        self.mem_batch = int(self.hp.mem_batch_size or self.train_cfg["batch_size"])
        self.plastic = copy.deepcopy(self.model)
        self.stable = copy.deepcopy(self.model)
        for m in (self.plastic, self.stable):
            m.requires_grad_(False)
        self.ema_updates = {"plastic": 0, "stable": 0}

    # ----- training -------------------------------------------------------------------------------
    def loss(self, batch: Batch) -> torch.Tensor:
        x, y, t = batch.x, batch.y, batch.t
        loss = 0.0
        if len(self.buffer) > 0:
            mem = self.buffer.sample(self.mem_batch)
            xm, ym, tm = mem["x"], mem["y"], mem["t"]
            # 1. consistency target: the EMA model with the higher probability on the true label
            with torch.no_grad():
                self.stable.train(), self.plastic.train()
                z_s, z_p = self._forward(self.stable, xm, tm), self._forward(self.plastic, xm, tm)
                p_s = F.softmax(z_s, 1).gather(1, ym[:, None])
                p_p = F.softmax(z_p, 1).gather(1, ym[:, None])
                target = torch.where(p_s > p_p, z_s, z_p)
            # 2. lambda * MSE of the working model's logits on the buffer samples
            loss = float(self.hp.reg_weight) * F.mse_loss(self.forward(xm, tm), target)
            x, y, t = torch.cat([x, xm]), torch.cat([y, ym]), torch.cat([t, tm])
        # 3. cross-entropy on the current batch concatenated with the buffer batch
        return loss + F.cross_entropy(self.forward(x, t), y)

    def _forward(self, model, x, t):
        return self.task_head(model(x), t)

    def after_step(self, batch: Batch) -> None:
        self.buffer.add(batch)
        # 4. stochastic EMA updates (plastic first, as in the code), gates drawn from the seeded generator
        for name, model in (("plastic", self.plastic), ("stable", self.stable)):
            if float(torch.rand(1, generator=self.generator)) < float(self.hp[f"{name}_update_freq"]):
                self._ema(model, float(self.hp[f"{name}_alpha"]))
                self.ema_updates[name] += 1

    @torch.no_grad()
    def _ema(self, ema_model: torch.nn.Module, alpha: float) -> None:
        a = min(1.0 - 1.0 / (self.global_step + 1), alpha)     # warm-up: early EMA tracks theta closely
        for pe, p in zip(ema_model.parameters(), self.model.parameters()):
            pe.mul_(a).add_(p.detach(), alpha=1.0 - a)

    # ----- evaluation -----------------------------------------------------------------------------
    def models(self) -> dict[str, torch.nn.Module]:
        return {"stable": self.stable, "plastic": self.plastic, "working": self.model}

    def eval_model(self) -> torch.nn.Module:
        return self.models()[self.hp.eval_model]

    def extra_models(self) -> dict[str, torch.nn.Module]:
        """The two models not evaluated as the answer: the evaluator scores them too (result.json extra_models)."""
        return {name: m for name, m in self.models().items() if name != self.hp.eval_model}

    def extra_state(self) -> dict:
        return {"buffer": self.buffer.state(), "eval_model": self.hp.eval_model,
                "global_step": self.global_step, "ema_updates": dict(self.ema_updates)}
