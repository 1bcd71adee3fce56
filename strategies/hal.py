"""Hindsight Anchor Learning (HAL).

Chaudhry, Gordo, Dokania, Torr, Lopez-Paz (2021), "Using Hindsight to Anchor Past Knowledge in Continual
Learning", AAAI 2021, arXiv:2002.08165. No code by the authors was found; this follows Mammoth
(aimagelab/mammoth models/hal.py at the commit of the DER paper's tables, 7ab9db9), the implementation
behind the published MNIST numbers:

    for each minibatch (x, y):
        (x_m, y_m) ~ memory;  B = (x, y) + (x_m, y_m)
        g = grad CE(f_theta(B))                                       (at the current theta)
        if anchors exist:
            theta~ = theta - lr * g                                    (a virtual step)
            L_anchor = lambda * mean_e ( f_theta~(e) - f_theta(e) )^2   (f_theta~(e) held constant)
            g += grad L_anchor
        SGD step from theta with g                                    (one real step)
        phi <- beta * phi + (1 - beta) * mean phi_theta(x)              (EMA of the stream's features)
        reservoir-add (x, y)
    after task t (one anchor e_c per class c of the task):
        theta_m = theta after finetune_steps SGD steps on memory batches (a spare copy)
        e_c ~ U[0, 1]^input;  anchor_steps SGD steps (lr = train.lr) on
            -CE(f_theta_m(e_c), c) + CE(f_theta(e_c), c) + gamma * || phi_theta(e_c) - phi ||^2
        phi <- 0 (the next task's EMA starts from zero)

Mammoth takes the virtual step with the optimizer, restores theta without zeroing the gradients, and steps
again; for plain SGD that is exactly the single step above. Here the virtual step is also taken with the
optimizer (and its state restored), so momentum or Adam see one step per minibatch.

Anchors live in the model's input space scaled to [0, 1] (Mammoth's ToTensor space) and are fed to the model
as raw values (e * scale of the model's input normalisation); like Mammoth they are not clipped to [0, 1].
phi(x) is the model's penultimate representation (`model.features`), so the model must expose `features`
and `classifier` (clbench's MLP, CNN and ResNet do).

Deviations from Mammoth: none in the update. Mammoth's HAL asks for a "ring" buffer, but its Buffer class
(utils/buffer.py, 7ab9db9) ignores the mode in add_data and always inserts by reservoir sampling, so the
published numbers come from a reservoir memory: this is what we use. The paper's memory is a per-task ring
buffer and its anchor objective uses a fine-tuned model on the memory; both as in Mammoth here.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor

from clbench.buffer import make_buffer
from clbench.hparams import HP, loguniform, uniform
from clbench.strategy import Strategy, make_optimizer
from clbench.strategies.parts import check_backbone, embed, joined_with_memory
from clbench.stream import Batch, Experience


class HAL(Strategy):
    """HAL: replay plus anchors (per-class inputs that would be forgotten most) whose outputs are kept."""

    description = "hindsight anchor learning: replay + per-class anchor inputs whose outputs are kept fixed"
    paper = ("Chaudhry et al. 2021, Using Hindsight to Anchor Past Knowledge in Continual Learning, AAAI, "
             "arXiv:2002.08165")
    code = "aimagelab/mammoth models/hal.py (7ab9db9)"
    hparams = {
        "buffer_size": HP(200, "reservoir memory over all tasks", low=0),
        "mem_batch_size": HP(None, "memory samples per step (null: train.batch_size)", type=int, low=1),
        "hal_lambda": HP(0.1, "lambda, weight of the anchor loss (Mammoth default)", low=0,
                         search=loguniform(0.01, 1.0)),
        "beta": HP(0.5, "EMA decay of the mean stream feature phi (Mammoth default)", low=0, high=1,
                   search=uniform(0.1, 0.9)),
        "gamma": HP(0.1, "weight of the feature-distance term in the anchor objective (Mammoth default)", low=0,
                    search=loguniform(0.01, 1.0)),
        "anchor_steps": HP(100, "SGD steps optimising each anchor (Mammoth)", low=0),
        "finetune_steps": HP(1, "SGD steps of the spare model on memory batches (Mammoth: 1)", low=0),
    }
    checkpoint_attrs = ("buffer", "anchors", "phi")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        check_backbone(self.model, "hal")
        self.buffer = make_buffer("reservoir", self.hp.buffer_size, self.device, self.generator)
        self.mem_batch = int(self.hp.mem_batch_size or self.train_cfg["batch_size"])
        self.anchors = torch.zeros((0, *self.info.input_shape), device=self.device)   # raw input units
        self.phi: Tensor | None = None     # EMA of the mean stream feature (None: zeros, as after a task)

    def loss_batch(self, batch: Batch) -> Batch:
        # 1. cross-entropy (the default loss) on the stream batch joined with a memory batch
        return joined_with_memory(batch, self.buffer, self.mem_batch)

    def after_backward(self, batch: Batch) -> None:
        # 2. anchors: the outputs after a virtual step are the targets; their loss's gradient joins g
        if len(self.anchors) == 0:
            return
        params = [p for p in self.model.parameters() if p.requires_grad]
        theta = [p.detach().clone() for p in params]
        opt_state = copy.deepcopy(self.optimizer.state_dict())
        self.optimizer.step()                                        # theta~ = theta - lr g
        with torch.no_grad():
            target = self.model(self.anchors)
            for p, v in zip(params, theta):                          # back to theta, gradients kept
                p.copy_(v)
        self.optimizer.load_state_dict(opt_state)
        anchor_loss = float(self.hp.hal_lambda) * ((target - self.model(self.anchors)) ** 2).mean()
        anchor_loss.backward()

    def after_step(self, batch: Batch) -> None:
        # 3. EMA of the stream's mean feature (after the step), and reservoir insertion
        with torch.no_grad():
            phi = embed(self.model, batch.x).mean(0)
            beta = float(self.hp.beta)
            self.phi = (1 - beta) * phi if self.phi is None else beta * self.phi + (1 - beta) * phi
        self.buffer.add(batch)

    def after_experience(self, exp: Experience) -> None:
        # 4. one anchor per class of the task, then the next task's feature EMA starts from zero
        phi = self.phi if self.phi is not None else torch.zeros(self.model.classifier.in_features, device=self.device)
        spare = self.finetuned_copy()
        self.anchors = torch.cat([self.anchors, self.anchors_for(sorted(set(exp.classes)), spare, phi)])
        self.phi = None

    def finetuned_copy(self):
        """theta_m: a copy of the model after `finetune_steps` SGD steps on memory batches."""
        spare = copy.deepcopy(self.model)
        opt = make_optimizer(spare.parameters(), {**self.train_cfg, "momentum": 0.0, "weight_decay": 0.0,
                                                  "optimizer": "sgd"})
        for _ in range(int(self.hp.finetune_steps) if len(self.buffer) else 0):
            mem = self.buffer.sample(int(self.train_cfg["batch_size"]))
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(self.forward_with(spare, mem["x"], mem["t"]), mem["y"]).backward()
            opt.step()
        spare.requires_grad_(False)
        return spare

    def forward_with(self, model, x: Tensor, t: Tensor) -> Tensor:
        return self.task_head(model(x), t)

    def anchors_for(self, classes: list[int], spare, phi: Tensor) -> Tensor:
        """Optimise one input e_c per class (in [0, 1] units) to be forgotten by theta_m, kept by theta, near phi.
        The anchors are optimised together: each one's loss involves only itself, so summing the losses gives
        every anchor the gradient it would get alone (Mammoth loops over the classes)."""
        scale = float(getattr(self.model.normalize, "scale", 1.0))
        e = torch.rand((len(classes), *self.info.input_shape), generator=self.generator).to(self.device)
        e.requires_grad_(True)
        opt = torch.optim.SGD([e], lr=float(self.train_cfg["lr"]))
        y = torch.tensor(classes, device=self.device)
        t = torch.full_like(y, self.current_task if self.current_task is not None else 0)
        frozen = [p.requires_grad for p in self.model.parameters()]
        self.model.requires_grad_(False)
        for _ in range(int(self.hp.anchor_steps)):
            opt.zero_grad(set_to_none=True)
            x = e * scale
            loss = (-F.cross_entropy(self.forward_with(spare, x, t), y, reduction="sum")
                    + F.cross_entropy(self.forward_with(self.model, x, t), y, reduction="sum")
                    + float(self.hp.gamma) * ((embed(self.model, x) - phi) ** 2).sum())
            loss.backward()
            opt.step()
        for p, rg in zip(self.model.parameters(), frozen):
            p.requires_grad_(rg)
        return e.detach() * scale

    def extra_state(self) -> dict:
        return {"buffer": self.buffer.state(), "anchors": len(self.anchors)}
