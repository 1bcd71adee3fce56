"""Variational continual learning of binary-weight networks (mean-field fields with a KL to the previous posterior).

Li, Huang et al. (2023), "Statistical mechanics of continual learning: variational principle and mean-field
potential", Phys. Rev. E 108, 014309, arXiv:2212.02846. Code: Chan-Li/VCL (`Continual learning in deep neural
networks/Bayesian-Permuated.py`; `Continual learning with binary perceptron/SecondTaskGD.py`).

Every binary weight w in {-1, +1} has a field theta with q(w) ~ exp(beta theta w): mean m = tanh(beta theta),
variance s = 1 - m^2. The network is trained in the fields, through the mean-field (central limit) pre-activation
of each layer (no biases; N_in = fan-in):

    z = (m . a) / sqrt(N_in) + sqrt((s . a^2) / N_in) * eps,   eps ~ N(0, 1)          (hidden: ReLU; output: softmax)
    for each minibatch:  g = d/dtheta [ sum_batch CE ]  (autograd through the pre-activation above)
                         g += gamma * beta^2 * s * (theta - theta*)        the gradient of KL(q_theta || q_theta*)
                         Adam step on theta
    theta* (anchor = the previous posterior):
        step  (deep-network code): the fields before the last step -- streaming Bayes at every minibatch
        task  (perceptron code):   the fields at the end of the previous experience (no KL during the first)
    beta: annealed over the run, beta_max * tanh(0.1 + 2 (global epoch + 1) / (experiences x epochs)) (code #L282),
          or constant
    predict: the same noisy mean-field pass (the code's `evaluate`), with noise from a fixed seed; the binary
             network sign(theta) is scored as the extra model `sign` (the deployable binary weights)

The perceptron teacher-student check of the paper (Fig. 2: a second task whose teacher agrees with the first on
a fraction (1 + r0)/2 of the weights) is `teacher_student()` below and tests/test_binary_vcl.py.

Deviations: autograd replaces the code's hand-derived gradients (the same function, checked in the test);
inputs are the benchmark's standardised pixels (the code feeds raw MNIST in [0, 1]); eps is drawn from the
strategy's seeded generator; test-time noise comes from a fixed seed so that evaluation is reproducible.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clbench.errors import ConfigError
from clbench.hparams import HP, loguniform
from clbench.strategy import Strategy, make_optimizer
from clbench.stream import Batch, Experience


def mean_field_layer(theta: Tensor, a: Tensor, beta: float, eps: Optional[Tensor]) -> Tensor:
    """Pre-activation of a binary layer with weights ~ q(w) ~ exp(beta theta w), by the central limit theorem."""
    m = torch.tanh(beta * theta)
    s = 1 - m * m
    n_in = theta.shape[1]
    mean = a @ m.t() / math.sqrt(n_in)
    if eps is None:
        return mean
    std = torch.sqrt((a * a) @ s.t() / n_in + 1e-30)
    return mean + std * eps


class SignNetwork(nn.Module):
    """The binary network w = sign(theta), scaled 1/sqrt(N_in) as in the mean-field pass (for evaluation)."""

    def __init__(self, strategy: "BinaryVCL"):
        super().__init__()
        self.strategy = [strategy]             # not a submodule: no state of its own

    def forward(self, x: Tensor) -> Tensor:
        s = self.strategy[0]
        a = s.model.features[0](s.model.normalize(x))        # flatten
        layers = s.layers()
        for i, lin in enumerate(layers):
            a = a @ torch.sign(lin.weight).t() / math.sqrt(lin.weight.shape[1])
            if i < len(layers) - 1:
                a = F.relu(a)
        return a


class BinaryVCL(Strategy):
    """Binary-weight variational CL: mean-field training of fields theta, KL to the previous posterior."""

    description = "binary-weight variational CL (Li & Huang 2023): mean-field fields, KL(q || previous q)"
    paper = ("Li, Huang et al. 2023, Statistical mechanics of continual learning: variational principle and "
             "mean-field potential, Phys. Rev. E 108, 014309, arXiv:2212.02846")
    code = "Chan-Li/VCL Continual learning in deep neural networks/Bayesian-Permuated.py"
    hparams = {
        "gamma": HP(1.0, "weight of the KL gradient (code: 1; perceptron also 0.1)", low=0,
                    search=loguniform(0.01, 10.0)),
        "anchor": HP("step", "theta* of the KL: step (previous step's fields, the deep-network code) or task "
                              "(fields at the end of the previous experience, the perceptron code)",
                     choices=("step", "task")),
        "beta": HP(10.0, "inverse temperature (the maximum when annealed; code: 10)", gt=0),
        "anneal_beta": HP(True, "beta = beta * tanh(0.1 + 2 (epoch + 1) / (experiences x epochs)) (code); "
                                "false: constant"),
        "adam_beta2": HP(0.99, "Adam's beta2 when train.optimizer=adam (code: 0.99)", gt=0, high=0.9999),
        "eval_seed": HP(0, "seed of the noise of the evaluation pass", low=0),
    }
    settings = ("class-il", "task-il", "domain-il")
    checkpoint_attrs = ("anchor", "beta_now")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        lins = [m for m in self.model.modules() if isinstance(m, nn.Linear)]
        if not lins or any(m.bias is not None for m in lins) or not hasattr(self.model, "features") or \
                any(not isinstance(m, (nn.Linear, nn.ReLU, nn.Flatten)) for m in self.model.features):
            raise ConfigError("strategy 'binary_vcl' needs a bias-free MLP (model.name=mlp model.bias=false): the "
                              "mean-field binary layers have no biases")
        # fields theta ~ N(0, 1) (code: np.random.normal(0, 1)); they are the model's linear weights
        with torch.no_grad():
            for m in lins:
                m.weight.copy_(torch.randn(m.weight.shape, generator=self.generator))
        self.optimizer = self.make_optimizer()
        self.anchor: Optional[list[Tensor]] = None
        self.beta_now = self.current_beta()                 # the beta of the last step (used to predict)
        self.sign_net = SignNetwork(self)

    def make_optimizer(self) -> torch.optim.Optimizer:
        opt = make_optimizer(self.model.parameters(), self.train_cfg)
        if isinstance(opt, torch.optim.Adam | torch.optim.AdamW):
            for g in opt.param_groups:
                g["betas"] = (g["betas"][0], float(self.hp.adam_beta2))
        return opt

    def layers(self) -> list[nn.Linear]:
        return [*[m for m in self.model.features if isinstance(m, nn.Linear)], self.model.classifier]

    def current_beta(self) -> float:
        if not self.hp.anneal_beta:
            return float(self.hp.beta)
        epochs = int(self.train_cfg["epochs"])
        e = self.loop["experience"] * epochs + self.loop["epoch"] if self.loop else 0
        return float(self.hp.beta) * math.tanh(0.1 + 2 * (e + 1) / (self.info.n_experiences * epochs))

    def mean_field(self, x: Tensor, beta: float, generator: Optional[torch.Generator]) -> Tensor:
        a = self.model.features[0](self.model.normalize(x))  # flatten
        layers = self.layers()
        for i, lin in enumerate(layers):
            eps = torch.randn(len(a), lin.weight.shape[0], generator=generator).to(a.device)
            a = mean_field_layer(lin.weight, a, beta, eps)
            if i < len(layers) - 1:
                a = F.relu(a)
        return a

    def loss(self, batch: Batch) -> Tensor:
        # 1. likelihood through the noisy mean-field pass, summed over the batch (the code's gradient is a sum)
        self.beta_now = self.current_beta()
        logits = self.mean_field(batch.x, self.beta_now, self.generator)
        if self.task_aware:
            logits = self.mask_logits(logits, batch.t)
        return F.cross_entropy(logits, batch.y, reduction="sum")

    def after_backward(self, batch: Batch) -> None:
        # 2. + gamma beta^2 s (theta - theta*): the gradient of KL(q_theta || q_theta*)
        params = [lin.weight for lin in self.layers()]
        if self.anchor is not None:
            beta = self.beta_now
            for p, star in zip(params, self.anchor):
                s = 1 - torch.tanh(beta * p.detach()) ** 2
                p.grad += float(self.hp.gamma) * beta ** 2 * s * (p.detach() - star)
        if self.hp.anchor == "step":                        # the next step's prior: the fields now
            self.anchor = [p.detach().clone() for p in params]

    def after_experience(self, exp: Experience) -> None:
        if self.hp.anchor == "task":                        # 3. the posterior of this task is the next prior
            self.anchor = [lin.weight.detach().clone() for lin in self.layers()]

    def predict(self, x: Tensor, task_id: Optional[int] = None) -> Tensor:
        # 4. the code's noisy mean-field evaluation, with reproducible noise
        g = torch.Generator().manual_seed(int(self.hp.eval_seed))
        logits = self.mean_field(x, self.beta_now, g)
        if task_id is None:
            return logits
        return self.mask_logits(logits, torch.full((len(x),), int(task_id), dtype=torch.long, device=x.device))

    def extra_models(self) -> dict[str, nn.Module]:
        return {"sign": self.sign_net}

    def extra_state(self) -> dict:
        fields = torch.cat([lin.weight.detach().reshape(-1) for lin in self.layers()])
        beta = self.beta_now
        return {"beta": beta, "mean_variance": float((1 - torch.tanh(beta * fields) ** 2).mean())}


# ----- the paper's teacher-student check on a binary perceptron (SecondTaskGD.py) ---------------------------
def perceptron_energy(h: Tensor, x: Tensor, y: Tensor, beta: float) -> Tensor:
    """sum over samples of -log H(-y m.x / sqrt(sum s)): the Gaussian-field likelihood of a binary perceptron."""
    m = torch.tanh(beta * h)
    s = (1 - m * m).sum()
    u = -y * (x @ m) / (s.sqrt() + 1e-10)
    return -torch.log(0.5 * torch.erfc(u / math.sqrt(2)) + 1e-15).sum()


def teacher_student(n: int, alpha1: float, alpha2: float, r0: float, gamma: float, steps1: int, steps2: int,
                    seed: int = 0) -> dict:
    """Learn teacher 1 (P1 = alpha1 n samples), then teacher 2 (agrees with teacher 1 on each weight with
    probability (1 + r0)/2) with the KL to the task-1 fields weighted by gamma. Full-batch Adam as the code
    (task 1: lr 1e-3, weight decay 1e-3, no KL; task 2: lr 5e-3, weight decay 1e-3). Returns the
    generalisation errors arccos(R)/pi of sign(h) w.r.t. both teachers."""
    g = torch.Generator().manual_seed(seed)
    pm1 = lambda *shape: torch.randint(0, 2, shape, generator=g).float() * 2 - 1   # noqa: E731
    t1 = pm1(n)
    t2 = t1 * torch.where(torch.rand(n, generator=g) < (1 + r0) / 2, 1.0, -1.0)
    x1, x2 = pm1(int(alpha1 * n), n), pm1(int(alpha2 * n), n)
    y1, y2 = torch.sign(x1 @ t1), torch.sign(x2 @ t2)
    y1[y1 == 0], y2[y2 == 0] = 1, 1
    h = torch.randn(n, generator=g).requires_grad_()

    def adam_phase(x, y, steps, lr, anchor):
        # the code's Adam: h -= lr (m_hat / (sqrt(s_hat) + 1e-20) + 1e-3 h), i.e. decoupled weight decay
        opt = torch.optim.AdamW([h], lr=lr, betas=(0.9, 0.999), eps=1e-20, weight_decay=1e-3)
        for _ in range(steps):
            opt.zero_grad()
            perceptron_energy(h, x, y, 1.0).backward()
            with torch.no_grad():
                if anchor is not None:          # KL gradient beta^2 s (h - h*), beta = 1
                    h.grad += gamma * (1 - torch.tanh(h) ** 2) * (h - anchor)
            opt.step()

    err = lambda t: math.acos(max(-1.0, min(1.0, float((torch.sign(h.detach()) * t).mean())))) / math.pi  # noqa: E731
    adam_phase(x1, y1, steps1, 1e-3, None)
    after_task1 = err(t1)
    adam_phase(x2, y2, steps2, 5e-3, h.detach().clone())
    return {"error_teacher1_after_task1": after_task1, "error_teacher1": err(t1), "error_teacher2": err(t2)}
