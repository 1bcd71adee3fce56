"""Rehearsal-free regularisation: sigmoid-BCE classifier + prediction distillation, feature distillation,
L2 and EWC parameter regularisation, in any combination.

Smith, Tian, Halbe, Hsu, Kira (2023), "A Closer Look at Rehearsal-Free Continual Learning", CVPR Workshops,
arXiv:2203.17269. Code: shaunak27/data-free-continual-learning `learners/kd.py` (a co-author's codebase with
the paper's learners LWF_MC, LWF_MC_FEATKD, EWC_MC; not confirmed to be the paper's release).

    classifier:  BCE(sigmoid(f(x)[seen]), target) over the classes seen so far (not a softmax)
    pred_kd      (LwF.MC) the targets of old-class outputs are the previous model's sigmoid outputs on x
    feat_kd      + feat_kd * mean (h(x) - h_old(x))^2            h: penultimate features (model.features)
    l2           + l2  * sum (theta - theta*)^2                  theta: feature extractor only, not the head
    ewc          + ewc * sum F (theta - theta*)^2                F: summed over tasks ("online"), from squared
                                                                 gradients of the BCE on the task's own outputs
    after each experience: theta* <- theta; F += sum_batches g_b^2 * B / n_batches; the model becomes the teacher
    l2_from_start: theta* is the initial model during the first experience (the code's init_task_param_reg,
                   meant for a pre-trained start; from scratch it pulls task 1 towards the random init)

`terms` picks the paper's arms: [pred_kd] (PredKD = LwF.MC), [pred_kd, l2], [pred_kd, ewc], [pred_kd, feat_kd],
and the terms alone ([l2], [ewc], [feat_kd]; [] is plain BCE fine-tuning). As in the code, EWC and L2 share one
anchor theta*. Deviation: the code's EWC learner always adds PredKD (it inherits LwF's teacher); here that is
`terms: [pred_kd, ewc]` and `[ewc]` is EWC alone. Pre-trained-model rows of the paper (ImageNet ResNet, ViT)
are out of reach offline.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from clbench.errors import bad_value
from clbench.hparams import HP, loguniform
from clbench.strategy import Strategy
from clbench.stream import Batch, Experience

TERMS = ("pred_kd", "feat_kd", "l2", "ewc")


class RehearsalFree(Strategy):
    """Smith et al.'s rehearsal-free losses: BCE head, PredKD, FeatKD, L2 / EWC on the feature extractor."""

    description = "rehearsal-free CL (Smith et al. 2023): BCE + PredKD (LwF.MC), FeatKD, L2, EWC; terms selectable"
    paper = ("Smith, Tian, Halbe, Hsu, Kira 2023, A Closer Look at Rehearsal-Free Continual Learning, CVPR-W, "
             "arXiv:2203.17269")
    code = "shaunak27/data-free-continual-learning learners/kd.py (LWF_MC, LWF_MC_FEATKD, EWC_MC)"
    hparams = {
        "terms": HP(["pred_kd"], f"loss terms added to the BCE classifier, any of {', '.join(TERMS)}", type=list,
                    items=str),
        "feat_kd": HP(1.0, "weight of the feature distillation (code: mu)", low=0, search=loguniform(1e-2, 100)),
        "l2": HP(1e-3, "weight of the L2 penalty towards the previous parameters (code: eps)", low=0,
                 search=loguniform(1e-5, 1.0)),
        "ewc": HP(10.0, "weight of the EWC penalty (code: mu)", low=0, search=loguniform(1e-2, 1e4)),
        "l2_from_start": HP(True, "anchor the first experience to the initial weights (code: init_task_param_reg)"),
    }
    settings = ("class-il", "task-il")
    keeps_previous_model = True                   # the teacher of pred_kd / feat_kd
    checkpoint_attrs = ("old_classes", "anchor", "fisher")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        unknown = [t for t in self.hp.terms if t not in TERMS]
        if unknown or len(set(self.hp.terms)) != len(self.hp.terms):
            raise bad_value("strategy.terms", f"expected distinct terms among {', '.join(TERMS)}, "
                                              f"got {self.hp.terms}")
        if not hasattr(self.model, "features"):
            raise bad_value("model.name", "rehearsal_free needs a model with `features` (mlp, cnn, reduced_resnet18)")
        self.terms = set(self.hp.terms)
        self.old_classes: list[int] = []
        self.anchor: dict[str, Tensor] = {}       # theta* of the feature extractor
        self.fisher: dict[str, Tensor] = {}       # online EWC importance
        if self.terms & {"l2", "ewc"} and self.hp.l2_from_start:
            self.anchor = self.feature_params(clone=True)
            self.fisher = {n: torch.zeros_like(p) for n, p in self.anchor.items()}

    def feature_params(self, clone: bool = False) -> dict[str, Tensor]:
        return {n: (p.detach().clone() if clone else p) for n, p in self.model.features.named_parameters()}

    def bce_targets(self, batch: Batch, seen: Tensor) -> Tensor:
        """One-hot over the seen classes; with pred_kd the old classes' targets are the teacher's sigmoids."""
        target = (batch.y[:, None] == seen[None]).float()
        if "pred_kd" in self.terms and self.previous_model is not None and self.old_classes:
            old = torch.isin(seen, torch.tensor(self.old_classes, device=seen.device))
            with torch.no_grad():
                target[:, old] = torch.sigmoid(self.previous_model(batch.x)[:, seen[old]])
        return target

    def loss(self, batch: Batch) -> Tensor:
        seen = torch.tensor(self.seen_classes, device=batch.y.device)
        feats = self.model.features(self.model.normalize(batch.x))
        logits = self.model.classifier(feats)[:, seen]
        # 1. the sigmoid BCE classifier (PredKD: soft old-class targets from the teacher)
        loss = F.binary_cross_entropy_with_logits(logits, self.bce_targets(batch, seen))
        # 2. feature distillation on the penultimate layer
        if "feat_kd" in self.terms and self.previous_model is not None:
            with torch.no_grad():
                old = self.previous_model.features(self.previous_model.normalize(batch.x))
            loss = loss + float(self.hp.feat_kd) * (feats - old).pow(2).mean()
        # 3. L2 / EWC towards theta* on the feature extractor
        if self.anchor:
            params = self.feature_params()
            if "l2" in self.terms:
                loss = loss + float(self.hp.l2) * sum((params[n] - a).pow(2).sum() for n, a in self.anchor.items())
            if "ewc" in self.terms:
                loss = loss + float(self.hp.ewc) * sum((self.fisher[n] * (params[n] - a).pow(2)).sum()
                                                       for n, a in self.anchor.items())
        return loss

    def after_experience(self, exp: Experience) -> None:
        # 4. importance of this task (EWC), the new anchor, and the classes the teacher knows
        if "ewc" in self.terms:
            self.accumulate_fisher(exp)
        if self.terms & {"l2", "ewc"}:
            self.anchor = self.feature_params(clone=True)
            if not self.fisher:
                self.fisher = {n: torch.zeros_like(p) for n, p in self.anchor.items()}
        self.old_classes = list(self.seen_classes)

    def accumulate_fisher(self, exp: Experience) -> None:
        """F += sum over batches of g^2 * B / n_batches, g: gradient of the BCE over this task's classes."""
        if not self.fisher:
            self.fisher = {n: torch.zeros_like(p) for n, p in self.feature_params().items()}
        own = torch.tensor(sorted(exp.classes), device=exp.train.device)
        bs = int(self.train_cfg["batch_size"])
        n_batches = exp.train.n_batches(bs)
        was = self.model.training
        self.model.eval()
        for b in exp.train.batches(bs, shuffle=False):
            self.model.zero_grad(set_to_none=True)
            logits = self.model(b.x)[:, own]
            F.binary_cross_entropy_with_logits(logits, (b.y[:, None] == own[None]).float()).backward()
            for n, p in self.feature_params().items():
                if p.grad is not None:
                    self.fisher[n] += p.grad.detach() ** 2 * len(b.y) / n_batches
        self.model.zero_grad(set_to_none=True)
        self.model.train(was)

    def predict(self, x: Tensor, task_id=None) -> Tensor:
        # 5. the outputs of the classes seen so far (the code scores [:, :valid_out_dim]; unseen ones never trained)
        return self.mask_unseen(super().predict(x, task_id))

    def extra_state(self) -> dict:
        return {"terms": sorted(self.terms), "anchored": bool(self.anchor)}
