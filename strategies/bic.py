"""BiC: Bias Correction.

Wu, Chen, Wang, Ye, Liu, Guo, Fu (2019), "Large Scale Incremental Learning", CVPR 2019, arXiv:1905.13260.
Follows the authors' code (wuyuebupt/LargeScaleIncrementalLearning resnet.py, imagenet_main.py); compared with
Mammoth `models/bic.py` (aimagelab/mammoth) and Avalanche `training/plugins/bic.py`.

    memory: exemplars chosen by herding, an equal share of `buffer_size` per seen class
    at the start of an experience with old classes:
        hold out a validation set: `val_fraction` of every old class's exemplars and as many samples of every new
        class; train on the rest of the new data and of the exemplars
    stage 1, for each minibatch:
        L = (1 - lambda) * CE(f(x) over seen classes, y)
          + lambda * KD_T(f(x) over old classes, old network (with its own bias correction) over old classes)
        lambda = #old classes / #seen classes,  KD_T = -sum softmax(z_old / T) log softmax(z / T),  T = 2
    stage 2 (bias correction), at the end of the experience, network frozen:
        new-class logits o -> beta * o + gamma  (two scalars, beta = 1, gamma = 0 at the start), trained on the
        held-out set with CE over the seen classes + 0.1 * gamma^2 / 2
    predict: the network's logits with the correction applied to the last experience's classes
    update the exemplar memory (herding)

Deviations: the bias stage is `bias_epochs` full-batch SGD steps (momentum 0.9) on precomputed logits (the
authors train the two scalars with the main schedule compressed; the network is frozen, so only the number and
size of steps differ). From Mammoth: lambda is the authors' #old / #seen (Mammoth: 1 / #tasks), KD has no T^2
factor (as the authors), the exemplars are chosen by herding (Mammoth keeps the first samples of each task).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from clbench.hparams import HP, uniform
from clbench.strategies.icarl import build_exemplars
from clbench.strategies.parts import ExemplarMemory, check_backbone, eval_mode
from clbench.strategy import Strategy
from clbench.stream import Batch, Experience, TensorSplit


def corrected(logits: Tensor, classes: list[int], bias: Tensor) -> Tensor:
    """The bias layer: beta * o + gamma on the logits of `classes` only; every other logit unchanged."""
    if not classes:
        return logits
    idx = torch.tensor(classes, device=logits.device)
    out = logits.clone()
    out[:, idx] = bias[0] * logits[:, idx] + bias[1]
    return out


class BiC(Strategy):
    """BiC: distillation + exemplars, then a two-parameter bias correction of the new classes' logits."""

    description = "BiC: distillation with exemplars, then a linear bias correction of new-class logits on held-out data"
    paper = "Wu et al. 2019, Large Scale Incremental Learning, CVPR, arXiv:1905.13260"
    code = "wuyuebupt/LargeScaleIncrementalLearning; aimagelab/mammoth models/bic.py"
    hparams = {
        "buffer_size": HP(500, "exemplars kept over all classes (herding, equal share per class)", low=1),
        "val_fraction": HP(0.1, "fraction of each old class's exemplars held out for the bias stage", gt=0, high=0.9),
        "temperature": HP(2.0, "distillation temperature T", gt=0),
        "bias_epochs": HP(200, "full-batch steps of the bias-correction stage", low=0),
        "bias_lr": HP(0.1, "learning rate of the bias-correction stage (SGD, momentum 0.9)", gt=0,
                      search=uniform(0.001, 0.5)),
    }
    settings = ("class-il", "task-il")
    keeps_previous_model = True
    checkpoint_attrs = ("memory", "old_classes", "bias", "bias_classes", "teacher_bias", "teacher_bias_classes",
                        "val_pos", "val_mem")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        check_backbone(self.model, "bic")
        self.memory = ExemplarMemory(self.hp.buffer_size, self.device, self.generator)
        self.old_classes: list[int] = []
        self.bias = torch.tensor([1.0, 0.0], device=self.device)        # (beta, gamma) of the latest correction
        self.bias_classes: list[int] = []
        self.teacher_bias, self.teacher_bias_classes = self.bias.clone(), []
        self.val_pos = torch.zeros(0, dtype=torch.long)   # held-out positions in the experience's training data
        self.val_mem = torch.zeros(0, dtype=torch.long)   # held-out positions in the memory

    # ----- the split ------------------------------------------------------------------------------------------
    def before_experience(self, exp: Experience) -> None:
        # the previous model's correction goes with it (the teacher); predictions are uncorrected until stage 2
        self.teacher_bias, self.teacher_bias_classes = self.bias.clone(), list(self.bias_classes)
        self.bias, self.bias_classes = torch.tensor([1.0, 0.0], device=self.device), []
        self.val_pos, self.val_mem = torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
        if not len(self.memory):
            return
        # 1. hold out val_fraction of each old class's exemplars, and as many samples of each new class
        mem_y = self.memory.contents()["y"].cpu()
        per_class = max(1, int(self.hp.val_fraction * len(mem_y) / max(len(self.memory.classes()), 1)))
        val_mem, val_pos = [], []
        for c in self.memory.classes():
            idx = torch.nonzero(mem_y == c).squeeze(1)
            val_mem.append(idx[torch.randperm(len(idx), generator=self.generator)[:per_class]])
        y = exp.train.get(torch.arange(len(exp.train), device=exp.train.device)).y.cpu()
        for c in exp.classes:
            if c in self.memory.classes():
                continue
            idx = torch.nonzero(y == c).squeeze(1)
            val_pos.append(idx[torch.randperm(len(idx), generator=self.generator)[:per_class]])
        self.val_mem = torch.cat(val_mem) if val_mem else self.val_mem
        self.val_pos = torch.cat(val_pos) if val_pos else self.val_pos

    def split(self, exp: Experience) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """(training part, held-out part) of new data U exemplars, each as {x, y, t}."""
        data = exp.train.get(torch.arange(len(exp.train), device=exp.train.device))
        mem = self.memory.contents()
        new_out = torch.zeros(len(data.y), dtype=torch.bool)
        new_out[self.val_pos] = True
        mem_out = torch.zeros(len(self.memory), dtype=torch.bool)
        mem_out[self.val_mem] = True
        parts = []
        for held in (False, True):
            a, b = (new_out == held).to(data.y.device), (mem_out == held).to(self.device)
            parts.append({"x": torch.cat([data.x[a], mem["x"][b].to(data.x.device)]) if mem else data.x[a],
                          "y": torch.cat([data.y[a], mem["y"][b].to(data.y.device)]) if mem else data.y[a],
                          "t": torch.cat([data.t[a], mem["t"][b].to(data.t.device)]) if mem else data.t[a]})
        return parts[0], parts[1]

    def training_data(self, exp: Experience) -> TensorSplit:
        train, _ = self.split(exp)
        return TensorSplit(train["x"], train["y"], task=train["t"])

    # ----- stage 1 ---------------------------------------------------------------------------------------------
    def loss(self, batch: Batch) -> Tensor:
        seen = torch.tensor(self.seen_classes, device=self.device)
        out = self.model(batch.x)
        head = self.task_head(out, batch.t)     # task-IL: CE within the task's head
        ce = F.cross_entropy(head[:, seen], torch.searchsorted(seen, batch.y))
        if self.previous_model is None or not self.old_classes:
            return ce
        # distillation towards the previous network with its bias correction, over the old classes
        old = torch.tensor(self.old_classes, device=self.device)
        with torch.no_grad():
            teacher = corrected(self.previous_model(batch.x), self.teacher_bias_classes, self.teacher_bias)[:, old]
        temp = float(self.hp.temperature)
        kd = -(F.softmax(teacher / temp, 1) * F.log_softmax(out[:, old] / temp, 1)).sum(1).mean()
        lam = len(self.old_classes) / len(self.seen_classes)
        return (1 - lam) * ce + lam * kd

    # ----- stage 2 and memory ------------------------------------------------------------------------------------
    def after_experience(self, exp: Experience) -> None:
        new = [c for c in self.seen_classes if c not in self.old_classes]
        if self.old_classes and len(self.val_pos) + len(self.val_mem) > 0:
            _, held = self.split(exp)
            self.bias = self.fit_bias(held, new)
            self.bias_classes = new
        m = int(self.hp.buffer_size) // max(self.n_seen_classes, 1)
        self.memory.reduce(m)
        build_exemplars(self.memory, self.model, exp.train, exp.classes, m, normalize=True)
        self.old_classes = list(self.seen_classes)

    def fit_bias(self, held: dict[str, Tensor], new: list[int]) -> Tensor:
        """(beta, gamma) minimising CE of the corrected logits on the held-out set (network frozen)."""
        seen = torch.tensor(self.seen_classes, device=self.device)
        with eval_mode(self.model), torch.no_grad():
            z = self.model(held["x"].to(self.device))
        target = torch.searchsorted(seen, held["y"].to(self.device))
        params = torch.tensor([1.0, 0.0], device=self.device, requires_grad=True)
        opt = torch.optim.SGD([params], lr=float(self.hp.bias_lr), momentum=0.9)
        for _ in range(int(self.hp.bias_epochs)):
            opt.zero_grad()
            loss = F.cross_entropy(corrected(z, new, params)[:, seen], target) + 0.1 * params[1] ** 2 / 2
            loss.backward()
            opt.step()
        params = params.detach()
        self.log("bic.beta", float(params[0]))
        self.log("bic.gamma", float(params[1]))
        return params

    def predict(self, x: Tensor, task_id: Optional[int] = None) -> Tensor:
        logits = corrected(self.model(x), self.bias_classes, self.bias)
        if task_id is not None:
            logits = self.mask_logits(logits, torch.full((len(x),), int(task_id), dtype=torch.long, device=x.device))
        return logits

    def extra_state(self) -> dict:
        return {"buffer": self.memory.state(), "bias": [float(v) for v in self.bias],
                "bias_classes": list(self.bias_classes)}
