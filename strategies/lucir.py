"""LUCIR: Learning a Unified Classifier Incrementally via Rebalancing.

Hou, Pan, Loy, Wang, Lin (2019), "Learning a Unified Classifier Incrementally via Rebalancing", CVPR 2019.
Follows the authors' code (hshustc/CVPR19_Incremental_Learning, cifar100-class-incremental/
class_incremental_cosine_cifar100.py, utils_incremental/incremental_train_and_eval_MR_LF.py); compared with
Mammoth `models/lucir.py` (aimagelab/mammoth).

    classifier: cosine normalisation, logits = sigma * cos(f(x), w_c), sigma learned       (Eq. 4)
    at the start of each new experience:
        imprint each new class's weight: normalised mean of its normalised features x mean norm of the old weights
        old-class weights stay fixed from now on
    for each minibatch of new data U exemplars:
        L = CE(sigma * cos over the seen classes, y)
          + lambda * (1 - cos(f(x), f_old(x)))              less-forget constraint on the features  (Eq. 6)
                 lambda = lambda_base * sqrt(#old classes / #new classes)                           (Eq. 7)
          + lambda_mr * mean over old-class samples and the K hardest new classes k of
                 max(0, m - cos(f(x), w_y) + cos(f(x), w_k))                    margin ranking      (Eq. 8)
    after the experience: herding exemplars (m = K // #seen per class), as iCaRL;
        optional class-balanced fine-tuning of the classifier on the exemplars (`finetune_epochs`)

Deviations: the features are the MLP's last hidden layer after its ReLU (the authors remove the last ReLU of
their ResNet); the exemplar memory is a total budget split equally over the seen classes (iCaRL's rule) rather
than a fixed 20 per class. From Mammoth: lambda uses the authors' sqrt(#old / #new) (Mammoth's sqrt(task index)
is set one task late, 0 in the second task); the classifier spans only the seen classes (Mammoth's also includes
randomly initialised future heads in the softmax); class-balanced fine-tuning is off by default (the authors use it
only on ImageNet; Mammoth always runs 20 epochs of it).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from clbench.hparams import HP, loguniform, uniform
from clbench.strategies.icarl import build_exemplars
from clbench.strategies.parts import ExemplarMemory, embed, embed_all, union, use_cosine_head
from clbench.strategy import Strategy, make_optimizer
from clbench.stream import Batch, Experience, TensorSplit


class LUCIR(Strategy):
    """LUCIR: cosine classifier, feature distillation, margin ranking on old-class exemplars, imprinting."""

    description = "LUCIR: cosine-normalised classifier, less-forget feature constraint, inter-class margin ranking"
    paper = "Hou et al. 2019, Learning a Unified Classifier Incrementally via Rebalancing, CVPR"
    code = "hshustc/CVPR19_Incremental_Learning; aimagelab/mammoth models/lucir.py"
    hparams = {
        "buffer_size": HP(500, "exemplars kept over all classes (herding, equal share per class)", low=1),
        "lambda_base": HP(5.0, "base weight of the less-forget constraint (the authors' CIFAR value)", low=0,
                          search=loguniform(0.1, 50)),
        "lambda_mr": HP(1.0, "weight of the margin-ranking loss", low=0, search=loguniform(0.1, 10)),
        "k_mr": HP(2, "hardest new classes per old-class sample (K)", low=1),
        "margin": HP(0.5, "margin of the ranking loss (on unscaled cosines)", low=0, search=uniform(0.1, 1.0)),
        "imprint": HP(True, "initialise new-class weights by imprinting"),
        "finetune_epochs": HP(0, "class-balanced fine-tuning epochs of the classifier on the exemplars", low=0),
        "finetune_lr": HP(0.01, "learning rate of the class-balanced fine-tuning", gt=0),
    }
    settings = ("class-il", "task-il")
    keeps_previous_model = True
    checkpoint_attrs = ("memory", "old_classes")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.head = use_cosine_head(self.model, "lucir", scale=1.0, learn_scale=True, generator=self.generator)
        self.optimizer = self.make_optimizer()
        self.memory = ExemplarMemory(self.hp.buffer_size, self.device, self.generator)
        self.old_classes: list[int] = []

    @property
    def new_classes(self) -> list[int]:
        return [c for c in self.seen_classes if c not in self.old_classes]

    # ----- the experience -----------------------------------------------------------------------------------
    @torch.no_grad()
    def before_experience(self, exp: Experience) -> None:
        # 1. imprint the new classes' weights from their normalised mean features
        if not (self.hp.imprint and self.old_classes):
            return
        w = self.head.weight
        scale = w[self.old_classes].norm(dim=1).mean()
        data = exp.train.get(torch.arange(len(exp.train), device=exp.train.device))
        for c in self.new_classes:
            f = F.normalize(embed_all(self.model, data.x[data.y == c]), dim=1)
            if len(f):
                w[c] = F.normalize(f.mean(0), dim=0) * scale

    def training_data(self, exp: Experience) -> TensorSplit:
        return union(exp.train, self.memory.contents())

    def loss(self, batch: Batch) -> Tensor:
        seen = torch.tensor(self.seen_classes, device=self.device)
        f = embed(self.model, batch.x)
        cos = self.head.cosine(f)
        # 2. cross-entropy of the scaled cosines over the seen classes
        cos_seen = cos[:, seen] if not self.task_aware else self.mask_logits(cos, batch.t)[:, seen]
        loss = F.cross_entropy(self.head.sigma * cos_seen, torch.searchsorted(seen, batch.y))
        if self.previous_model is None or not self.old_classes:
            return loss
        # 3. less-forget constraint: keep the features' direction
        with torch.no_grad():
            f_old = embed(self.previous_model, batch.x)
        lam = float(self.hp.lambda_base) * math.sqrt(len(self.old_classes) / max(len(self.new_classes), 1))
        loss = loss + lam * (1 - F.cosine_similarity(f, f_old, dim=1)).mean()
        # 4. margin ranking: old-class samples' ground-truth cosine above their K hardest new-class cosines
        return loss + float(self.hp.lambda_mr) * self.margin_ranking(cos, batch.y)

    def margin_ranking(self, cos: Tensor, y: Tensor) -> Tensor:
        old = torch.isin(y, torch.tensor(self.old_classes, device=y.device))
        new = torch.tensor(self.new_classes, device=y.device)
        if not bool(old.any()) or not len(new):
            return cos.sum() * 0.0
        gt = cos[old, y[old]].unsqueeze(1)
        hardest = cos[old][:, new].topk(min(int(self.hp.k_mr), len(new)), dim=1).values
        return F.relu(float(self.hp.margin) - gt + hardest).mean()

    def after_step(self, batch: Batch) -> None:
        # old-class weights stay fixed (the authors train them at lr 0)
        if self.previous_model is not None and self.old_classes:
            with torch.no_grad():
                self.head.weight[self.old_classes] = self.previous_model.classifier.weight[self.old_classes]

    def after_experience(self, exp: Experience) -> None:
        # 5. exemplars by herding; 6. optional class-balanced fine-tuning of the classifier
        m = int(self.hp.buffer_size) // max(self.n_seen_classes, 1)
        self.memory.reduce(m)
        build_exemplars(self.memory, self.model, exp.train, exp.classes, m, normalize=True)
        if self.hp.finetune_epochs:
            self.balanced_finetuning()
        self.old_classes = list(self.seen_classes)

    def balanced_finetuning(self) -> None:
        mem = self.memory.contents()
        data = TensorSplit(mem["x"], mem["y"], task=mem["t"])
        opt = make_optimizer(self.head.parameters(), {**self.train_cfg, "lr": float(self.hp.finetune_lr)})
        seen = torch.tensor(self.seen_classes, device=self.device)
        for _ in range(int(self.hp.finetune_epochs)):
            for b in data.batches(int(self.train_cfg["batch_size"]), shuffle=True, generator=self.generator):
                opt.zero_grad(set_to_none=True)
                with torch.no_grad():
                    f = embed(self.model, b.x)
                F.cross_entropy(self.head(f)[:, seen], torch.searchsorted(seen, b.y)).backward()
                opt.step()

    def predict(self, x: Tensor, task_id: Optional[int] = None) -> Tensor:
        return self.mask_unseen(super().predict(x, task_id))

    def extra_state(self) -> dict:
        return {"buffer": self.memory.state(), "sigma": float(self.head.sigma.detach())}
