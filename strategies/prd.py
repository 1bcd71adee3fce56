"""PRD: Prototype-Sample Relation Distillation (no replay).

Asadi, Davari, Mudur, Aljundi, Belilovsky (ICML 2023), "Prototype-Sample Relation Distillation: Towards
Replay-Free Continual Learning", arXiv:2303.14771; follows the authors' pre-release code
(naderAsadi/Probing-Continual-Learning, methods/repe.py).

    encoder h = model.features (the classifier is unused); projection g: h -> R^proj_dim (SupCon only);
    a prototype p_c per class, in the space of h (rows of a bias-free linear layer per task)
    for each minibatch (x, y) of the current task only (no buffer):
        x1, x2 = two augmentations of x;  h = h([x1; x2])
        L_sc    = SupCon(g(h), [y; y], T)
        L_proto = mean_i (1 - cos(h_i.detach(), p_{y_i}))           # only the current prototypes move
        L_PRD   = sum over old tasks j of  CE(softmax(S_old / T_d), softmax(S / T_d))
                  S[i, k] = h_i . p_k / ||p_k|| for the classes k of task j, with the current encoder and
                  prototypes; S_old with the frozen previous encoder and prototypes
                  relation_axis=samples (the paper): softmax over the samples of the batch, per prototype
                  relation_axis=prototypes (the code): softmax over the task's prototypes, per sample
        L = L_sc + lambda_p L_proto + lambda_d L_PRD         # L_PRD moves the encoder and the old prototypes
    at the end of a task: the encoder and the prototypes are frozen as the next teacher
    prediction: cosine between h(x) and the prototypes of the classes seen so far (task-IL: the task's)

Deviations: the harness model replaces ResNet-18; augmentations for digits/MNIST are a random shift (and
optional noise) instead of crop/flip/colour jitter; no extra warm-up epochs on the first task (the code: +120),
one lr schedule for all; the prototypes' lr is applied (`proto_lr`; the code's schedule overwrote it).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clbench.hparams import HP, loguniform
from clbench.strategy import Strategy, frozen_copy, make_optimizer
from clbench.stream import Batch, Experience
from clbench.strategies.parts import embed
from clbench.strategies.representation import check_feature_model, gaussian_noise, random_shift, supcon_loss


class PRDHeads(nn.Module):
    """The projection head (for SupCon) and one prototype per class of the stream, in the feature space."""

    def __init__(self, feat_dim: int, proj_dim: int, n_classes: int, generator: torch.Generator):
        super().__init__()
        self.projection = nn.Sequential(nn.Linear(feat_dim, feat_dim), nn.ReLU(), nn.Linear(feat_dim, proj_dim))
        bound = feat_dim ** -0.5           # nn.Linear's default range, from the strategy's generator
        self.prototypes = nn.Parameter(torch.rand(n_classes, feat_dim, generator=generator) * 2 * bound - bound)


def relation_scores(h: Tensor, prototypes: Tensor) -> Tensor:
    """S[i, k] = h_i . p_k / ||p_k||  (batch x prototypes)."""
    return h @ F.normalize(prototypes, dim=1).T


class PRD(Strategy):
    """PRD: SupCon representation + continually adapted prototypes + prototype-sample relation distillation."""

    description = "PRD: supervised contrastive features, class prototypes, relation distillation; no replay"
    paper = ("Asadi, Davari, Mudur, Aljundi, Belilovsky 2023, Prototype-Sample Relation Distillation: Towards "
             "Replay-Free Continual Learning, ICML, arXiv:2303.14771")
    code = "naderAsadi/Probing-Continual-Learning methods/repe.py (pre-release)"
    hparams = {
        "temperature": HP(0.1, "SupCon temperature T", gt=0, search=loguniform(0.05, 1.0)),
        "base_temperature": HP(0.07, "SupCon loss scale T / base_temperature (the code)", gt=0),
        "proto_weight": HP(2.0, "lambda_p, weight of the prototype loss", low=0, search=loguniform(0.1, 10)),
        "distill_weight": HP(4.0, "lambda_d, weight of the relation distillation", low=0,
                             search=loguniform(0.1, 20)),
        "distill_temperature": HP(1.0, "T_d of the relation softmax", gt=0),
        "relation_axis": HP("samples", "softmax over the batch per prototype (paper) or over prototypes per "
                                       "sample (pre-release code)", choices=("samples", "prototypes")),
        "proj_dim": HP(128, "output width of the projection head", low=1),
        "proto_lr": HP(None, "learning rate of the prototypes (null: train.lr); momentum and weight decay 0",
                       type=float, gt=0),
        "shift": HP(2, "augmentation: random translation of up to this many pixels", low=0),
        "noise": HP(0.0, "augmentation: Gaussian noise std, in units of the input range", low=0),
    }
    settings = ("class-il", "task-il")
    keeps_previous_model = True        # the teacher encoder
    checkpoint_attrs = ("heads", "old_prototypes", "old_task_classes")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        feat_dim = check_feature_model(self.model, "prd")
        self.heads = PRDHeads(feat_dim, int(self.hp.proj_dim), self.info.n_classes, self.generator).to(self.device)
        self.old_prototypes: Optional[Tensor] = None         # the teacher's prototypes
        self.old_task_classes: list[list[int]] = []          # classes of each finished task
        self.optimizer = self.make_optimizer()

    def make_optimizer(self) -> torch.optim.Optimizer:
        heads = getattr(self, "heads", None)
        if heads is None:                                    # called by the base class before __init__ ends
            return super().make_optimizer()
        proto = {"params": [heads.prototypes], "lr": float(self.hp.proto_lr or self.train_cfg["lr"]),
                 "weight_decay": 0.0}
        if self.train_cfg.get("optimizer", "sgd") == "sgd":
            proto["momentum"] = 0.0
        return make_optimizer([{"params": [*self.model.parameters(), *heads.projection.parameters()]}, proto],
                              self.train_cfg)

    def _views(self, x: Tensor) -> Tensor:
        scale = float(self.model.normalize.scale)
        views = [gaussian_noise(random_shift(x, int(self.hp.shift), self.generator), float(self.hp.noise), scale,
                                self.generator) for _ in range(2)]
        return torch.cat(views)

    def loss(self, batch: Batch) -> Tensor:
        # 1. two augmented views; features h and their projection
        x = self._views(batch.x)
        y = batch.y.repeat(2)
        h = embed(self.model, x)
        loss = supcon_loss(self.heads.projection(h), y, float(self.hp.temperature), float(self.hp.base_temperature))
        # 2. prototypes of the current task follow the (detached) features: 1 - cos(h, p_y)
        cos = F.cosine_similarity(h.detach(), self.heads.prototypes[y], dim=1)
        loss = loss + float(self.hp.proto_weight) * (1 - cos).mean()
        # 3. relation distillation towards the previous encoder and prototypes, one softmax per old task
        if self.previous_model is not None and self.old_task_classes:
            loss = loss + float(self.hp.distill_weight) * self.relation_distillation(x, h)
        return loss

    def relation_distillation(self, x: Tensor, h: Tensor) -> Tensor:
        with torch.no_grad():
            h_old = embed(self.previous_model, x)
        axis = 0 if self.hp.relation_axis == "samples" else 1
        T = float(self.hp.distill_temperature)
        total = h.new_zeros(())
        for classes in self.old_task_classes:
            s = relation_scores(h, self.heads.prototypes[classes])
            with torch.no_grad():
                s_old = relation_scores(h_old, self.old_prototypes[classes])
            q = F.softmax(s_old / T, dim=axis)
            total = total + (-(q * F.log_softmax(s / T, dim=axis)).sum(axis)).mean()
        return total

    def after_experience(self, exp: Experience) -> None:
        # 4. the teacher for the next tasks: the encoder (kept by the base class) and the prototypes
        self.old_task_classes.append(sorted(set(exp.classes)))
        self.old_prototypes = self.heads.prototypes.detach().clone()

    def predict(self, x: Tensor, task_id: Optional[int] = None) -> Tensor:
        return self.predict_with(self.model, x, task_id)

    def predict_with(self, model: nn.Module, x: Tensor, task_id: Optional[int] = None) -> Tensor:
        """Cosine between h(x) and the prototypes of the seen classes (the others masked)."""
        logits = F.normalize(embed(model, x), dim=1) @ F.normalize(self.heads.prototypes, dim=1).T
        if self.seen_classes:
            logits = self.mask_unseen(logits, -2.0)
        if task_id is not None:
            logits = self.mask_logits(logits, torch.full((len(x),), int(task_id), device=x.device))
        return logits
