"""Synaptic Intelligence (SI).

Zenke, Poole, Ganguli (2017), "Continual Learning Through Synaptic Intelligence", ICML 2017,
arXiv:1703.04987.

    during an experience, after every step:  omega_k += -g_k * delta_theta_k     (path integral of the loss)
    at the end of the experience:            Omega_k += omega_k / ((theta_k - theta_prev_k)^2 + xi)
                                             theta_prev <- theta; omega <- 0
    loss:                                    L = CE + c * sum_k Omega_k (theta_k - theta_prev_k)^2

g is the gradient actually used by the step (the total loss, after clipping), measured in after_backward;
delta_theta is the parameter change of that step, measured in after_step. With plain SGD this is
exactly Mammoth's `omega += lr * g^2` (`models/si.py`); unlike that shortcut it stays the path
integral under momentum or Adam. Gradients are clipped to +-1 as in Mammoth's `models/si.py`
(`clip_grad`, set null to disable). Zenke's own code uses the gradient of the unregularised loss;
we follow Mammoth, whose hyper-parameters (c, xi) we use.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from clbench.hparams import HP, loguniform
from clbench.strategy import Strategy
from clbench.stream import Batch, Experience
from clbench.strategies.parts import quadratic_penalty


class SI(Strategy):
    """Synaptic intelligence: per-parameter importance from the path integral of the loss."""

    description = "synaptic intelligence: quadratic penalty weighted by each parameter's path-integral importance"
    paper = "Zenke, Poole, Ganguli 2017, Continual Learning Through Synaptic Intelligence, ICML"
    code = "aimagelab/mammoth models/si.py"
    hparams = {
        "si_c": HP(0.5, "penalty strength c (Mammoth perm-mnist / seq-cifar10)", low=0, search=loguniform(0.01, 10)),
        "xi": HP(1.0, "damping of the importance denominator (Mammoth)", gt=0),
        "clip_grad": HP(1.0, "clip gradients to +-clip_grad (Mammoth); null disables", nullable=True, gt=0),
    }
    checkpoint_attrs = ("theta_prev", "omega", "big_omega")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        self.theta_prev = {n: p.detach().clone() for n, p in self.params.items()}   # anchor
        self.omega = {n: torch.zeros_like(p) for n, p in self.params.items()}        # running path integral
        self.big_omega = {n: torch.zeros_like(p) for n, p in self.params.items()}    # consolidated importance
        self._grad: dict[str, Tensor] = {}
        self._before: dict[str, Tensor] = {}

    def penalty(self) -> Tensor:
        return quadratic_penalty(self.big_omega, self.params, self.theta_prev)

    def loss(self, batch: Batch) -> Tensor:
        return F.cross_entropy(self.forward(batch.x, batch.t), batch.y) + float(self.hp.si_c) * self.penalty()

    def after_backward(self, batch: Batch) -> None:
        if self.hp.clip_grad is not None:
            torch.nn.utils.clip_grad_value_(self.params.values(), float(self.hp.clip_grad))
        # remember the gradient used by this step and the parameters before it
        self._grad = {n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
                      for n, p in self.params.items()}
        self._before = {n: p.detach().clone() for n, p in self.params.items()}

    def after_step(self, batch: Batch) -> None:
        # path integral: omega += -g * delta_theta
        with torch.no_grad():
            for n, p in self.params.items():
                self.omega[n] += -self._grad[n] * (p - self._before[n])

    def after_experience(self, exp: Experience) -> None:
        # consolidate: Omega += omega / (delta^2 + xi); new anchor; reset the running integral
        with torch.no_grad():
            for n, p in self.params.items():
                delta = p.detach() - self.theta_prev[n]
                self.big_omega[n] += self.omega[n] / (delta ** 2 + float(self.hp.xi))
                self.theta_prev[n] = p.detach().clone()
                self.omega[n].zero_()

    def extra_state(self) -> dict:
        tensors = [*self.theta_prev.values(), *self.omega.values(), *self.big_omega.values()]
        return {"bytes": sum(v.numel() * v.element_size() for v in tensors)}
