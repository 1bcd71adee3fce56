"""NAPA-VQ: Neighborhood-Aware Prototype Augmentation with Vector Quantization (non-exemplar class-IL).

Malepathirana, Senanayake, Halgamuge (ICCV 2023), "NAPA-VQ: Neighborhood Aware Prototype Augmentation with
Vector Quantization for Continual Learning", arXiv:2308.09297; follows the authors' code (TamashaM/NAPA-VQ,
NAPAVQ.py and losses/na_loss.py; built on PASS).

    every image x of class c is expanded to its 4 rotations, labelled 4c + r (PASS's label augmentation)
    one coding vector CV_l per label l, in the feature space of h = model.features; a graph over the CVs
    for each minibatch, f = h(rotations of x), labels l:
        L_dce = CE(-||f - CV_k|| / T over the CVs of the seen labels, l)
        L_NA(f, l): neural-gas graph update (per sample: edges from its nearest CV to its k nearest CVs set to 1,
                    the nearest CV's other edges decay by eps per visit, edges < eps^10 pruned, symmetrised),
                    then mean_i ReLU(||f_i - CV_{l_i}||^2 - sum_j w_ij ||f_i - CV_j||^2) over the graph
                    neighbours j of CV_{l_i}, w_i = softmax(-0.001 ||f_i - CV_j||^2) (detached)
        task 0:  L = L_dce + L_NA(f)
        task t>0: NA-PA: for B old classes c ~ U(old): a graph neighbour n of CV_{4c},
                        a = g p_{4c} + (1 - g) p_n,  g ~ U(0.5, 1)     (p: stored prototypes)
                  L = L_dce + L_NA(f) + L_NA(a) + w_pa CE(-||a - CV|| / T, 4c) + w_kd ||f - f_old||_2
                  the CVs of old labels get no gradient
    prototypes p_l = mean feature of label l: for a new task's labels, with the model before the task (so old
    classes can have new neighbours), then again with the trained model; never updated later
    prediction: nearest unrotated CV (4c) to the L2-normalised feature, both normalised

Optimisers as in the code: the model's optimiser (train.*) at lr x later_lr_factor after task 0, re-created
each task; the CVs by SGD at cv_lr (x later_lr_factor after task 0). Deviations: no StepLR schedules (short
runs); the harness model replaces ResNet-18; every task has the same size (the paper: a large base task);
prototypes from all samples (the code drops incomplete batches).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clbench.errors import bad_value
from clbench.hparams import HP, loguniform, randint
from clbench.strategy import Strategy, make_optimizer
from clbench.stream import Batch, Experience
from clbench.strategies.parts import embed, eval_mode
from clbench.strategies.representation import check_feature_model

ROT = 4


def rotations(x: Tensor, y: Tensor, n_rot: int) -> tuple[Tensor, Tensor]:
    """Each image and its rotations by 90, 180, 270 degrees; labels n_rot * y + r (sample-major order)."""
    if n_rot == 1:
        return x, y
    xs = torch.stack([torch.rot90(x, k, (-2, -1)) for k in range(n_rot)], 1).flatten(0, 1)
    ys = torch.stack([y * n_rot + k for k in range(n_rot)], 1).flatten()
    return xs, ys


class NeuralGasVQ(nn.Module):
    """The coding vectors (one per label) and the neighbourhood graph between them (losses/na_loss.py)."""

    def __init__(self, n_labels: int, dim: int, generator: torch.Generator, k: int = 15, eps: float = 0.9):
        super().__init__()
        self.cvs = nn.Parameter(torch.randn(n_labels, dim, generator=generator))
        self.register_buffer("edges", torch.eye(n_labels))
        self.k, self.eps, self.e_min = k, eps, eps ** 10

    def distances(self, f: Tensor, active: Tensor) -> Tensor:
        return torch.cdist(f, self.cvs[active])

    def forward(self, f: Tensor, labels: Tensor, active: Tensor) -> Tensor:
        """L_NA over the active labels; updates the graph (sub-block of the active labels) as a side effect."""
        dist = self.distances(f, active)                                   # B x A
        A = len(active)
        y = torch.searchsorted(active, labels)                             # label -> position among the active
        knn = dist.argsort(1)[:, :min(self.k, A)]
        nearest = knn[:, 0]
        with torch.no_grad():
            E = self.edges[active][:, active]
            visits = torch.bincount(nearest, minlength=A).float()
            knn_hits = torch.zeros(A, A, device=f.device)
            knn_hits.index_put_((nearest.repeat_interleave(knn.shape[1]), knn.flatten()),
                                torch.ones(knn.numel(), device=f.device), accumulate=True)
            decay = torch.relu(visits[:, None] - knn_hits)                 # visits that did not refresh the edge
            E = torch.maximum(E, (knn_hits > 0).float()) * self.eps ** decay
            E = E * (E >= self.e_min)
            neighbours = (E > 0) & ~torch.eye(A, dtype=torch.bool, device=f.device)
            self.edges[active[:, None], active[None, :]] = (E + E.T) / 2
        d2 = dist ** 2
        d_pos = d2.gather(1, y[:, None]).squeeze(1)
        d_neg = d2 * neighbours[y]
        w = torch.exp(-0.001 * d_neg) * (d_neg > 0)
        w = torch.nan_to_num(w / w.sum(1, keepdim=True)).detach()
        return torch.relu(d_pos - (w * d_neg).sum(1)).sum() / len(f)


class NAPAVQ(Strategy):
    """NAPA-VQ: distance-based classifier on neural-gas coding vectors + neighbourhood-aware prototype replay."""

    description = "NAPA-VQ: neural-gas coding vectors, neighbourhood-aware prototype augmentation; no exemplars"
    paper = ("Malepathirana, Senanayake, Halgamuge 2023, NAPA-VQ: Neighborhood Aware Prototype Augmentation with "
             "Vector Quantization for Continual Learning, ICCV, arXiv:2308.09297")
    code = "TamashaM/NAPA-VQ NAPAVQ.py, losses/na_loss.py"
    hparams = {
        "temperature": HP(0.1, "T of the distance-based cross-entropy", gt=0),
        "k": HP(15, "nearest coding vectors connected per sample in the graph update", low=1,
                search=randint(1, 15)),
        "edge_decay": HP(0.9, "eps: edge decay per visit (edges below eps^10 are pruned)", gt=0, high=1),
        "protoaug_weight": HP(10.0, "weight of the prototype-augmentation loss", low=0,
                              search=loguniform(0.1, 100)),
        "kd_weight": HP(10.0, "weight of ||f - f_old||_2 (feature distillation)", low=0,
                        search=loguniform(0.1, 100)),
        "cv_lr": HP(5.0, "SGD learning rate of the coding vectors on the first task", gt=0,
                    search=loguniform(0.05, 10)),
        "later_lr_factor": HP(0.1, "learning rates after the first task, relative to the first", gt=0),
        "rotations": HP(4, "self-supervised rotation labels per image (1: off)", choices=(1, 4)),
        "protoaug": HP("neighbours", "prototype augmentation: neighbours (NA-PA), gaussian (PASS-style "
                                     "p + N(0, r^2)), none", choices=("neighbours", "gaussian", "none")),
    }
    settings = ("class-il",)
    keeps_previous_model = True          # the feature-distillation teacher
    checkpoint_attrs = ("vq", "cv_optimizer", "prototypes", "has_prototype", "old_classes", "radius")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        dim = check_feature_model(self.model, "napavq")
        if int(self.hp.rotations) > 1 and (len(self.info.input_shape) != 3 or
                                           self.info.input_shape[1] != self.info.input_shape[2]):
            raise bad_value("strategy.rotations", f"rotation labels need square images, the stream "
                            f"has inputs of shape {tuple(self.info.input_shape)} (set strategy.rotations=1)")
        n_labels = self.info.n_classes * int(self.hp.rotations)
        self.vq = NeuralGasVQ(n_labels, dim, self.generator, int(self.hp.k), float(self.hp.edge_decay)).to(self.device)
        self.cv_optimizer = torch.optim.SGD(self.vq.parameters(), lr=float(self.hp.cv_lr))
        self.prototypes = torch.zeros(n_labels, dim, device=self.device)
        self.has_prototype = torch.zeros(n_labels, dtype=torch.bool, device=self.device)
        self.old_classes: list[int] = []
        self.radius = 0.0                # PASS-style Gaussian augmentation only (mean feature variance)

    @property
    def rot(self) -> int:
        return int(self.hp.rotations)

    def _labels(self, classes) -> Tensor:
        return torch.tensor(sorted(c * self.rot + r for c in classes for r in range(self.rot)), device=self.device)

    # ----- per task: optimisers, prototypes of the new classes with the model before the task ------------
    def before_experience(self, exp: Experience) -> None:
        factor = 1.0 if not self.old_classes else float(self.hp.later_lr_factor)
        self.optimizer = make_optimizer(self.model.parameters(), {**self.train_cfg,
                                                                  "lr": float(self.train_cfg["lr"]) * factor})
        self.cv_optimizer = torch.optim.SGD(self.vq.parameters(), lr=float(self.hp.cv_lr) * factor)
        if self.old_classes:
            self._save_prototypes(exp)

    def _save_prototypes(self, exp: Experience) -> None:
        """p_l = mean feature of label l over the experience's data (eval mode), for its labels."""
        sums = torch.zeros_like(self.prototypes)
        counts = torch.zeros(len(self.prototypes), device=self.device)
        sq = 0.0
        with eval_mode(self.model), torch.no_grad():
            for b in exp.train.batches(256, shuffle=False):
                x, y = rotations(b.x, b.y, self.rot)
                f = embed(self.model, x)
                sums.index_add_(0, y, f)
                counts.index_add_(0, y, torch.ones(len(y), device=self.device))
                sq += float((f ** 2).sum())
        seen = counts > 0
        self.prototypes[seen] = sums[seen] / counts[seen, None]
        self.has_prototype |= seen
        self.radius = float((sq / counts.sum() - (self.prototypes[seen] ** 2).sum(1).mean()).clamp(min=0)
                            / self.prototypes.shape[1]) if seen.any() else self.radius

    # ----- the loss of one minibatch ---------------------------------------------------------------------
    def _logits(self, f: Tensor, active: Tensor) -> Tensor:
        return -self.vq.distances(f, active) / float(self.hp.temperature)

    def loss(self, batch: Batch) -> Tensor:
        self.cv_optimizer.zero_grad(set_to_none=True)
        x, labels = rotations(batch.x, batch.y, self.rot)
        active = self._labels(self.seen_classes)
        f = embed(self.model, x)
        loss = F.cross_entropy(self._logits(f, active), torch.searchsorted(active, labels))
        loss = loss + self.vq(f, labels, active)
        if self.previous_model is None or not self.old_classes:
            return loss
        with torch.no_grad():
            f_old = embed(self.previous_model, x)
        loss = loss + float(self.hp.kd_weight) * torch.dist(f, f_old, 2)
        if self.hp.protoaug != "none":
            aug, aug_labels = self._augmented_prototypes(len(batch.y), active)
            loss = loss + self.vq(aug, aug_labels, active)
            loss = loss + float(self.hp.protoaug_weight) * F.cross_entropy(
                self._logits(aug, active), torch.searchsorted(active, aug_labels))
        return loss

    def _augmented_prototypes(self, n: int, active: Tensor) -> tuple[Tensor, Tensor]:
        """NA-PA: mix an old class's prototype with the prototype of one of its graph neighbours."""
        g = self.generator
        old = torch.tensor(self.old_classes, device=self.device)
        c = old[torch.randint(len(old), (n,), generator=g).to(self.device)] * self.rot     # unrotated labels
        p = self.prototypes[c]
        if self.hp.protoaug == "gaussian":
            return p + torch.randn(p.shape, generator=g).to(self.device) * self.radius ** 0.5, c
        rows = self.vq.edges[c] * self.has_prototype[None, :]                             # neighbours with a prototype
        idx = torch.arange(n, device=self.device)
        rows[idx, c] = torch.where(rows.sum(1) > 0, rows[idx, c], torch.ones(n, device=self.device))
        picked = torch.multinomial((rows > 0).float().cpu(), 1, generator=g).squeeze(1).to(self.device)
        gamma = (torch.rand(n, generator=g) * 0.5 + 0.5).to(self.device)[:, None]
        return gamma * p + (1 - gamma) * self.prototypes[picked], c

    def after_backward(self, batch: Batch) -> None:
        # the coding vectors of old labels stay where they are
        if self.old_classes and self.vq.cvs.grad is not None:
            self.vq.cvs.grad[self._labels(self.old_classes)] = 0

    def after_step(self, batch: Batch) -> None:
        self.cv_optimizer.step()

    def after_experience(self, exp: Experience) -> None:
        self._save_prototypes(exp)                       # with the trained model
        self.old_classes = list(self.seen_classes)

    # ----- prediction: nearest unrotated coding vector, features and CVs L2-normalised -------------------
    def predict(self, x: Tensor, task_id: Optional[int] = None) -> Tensor:
        return self.predict_with(self.model, x, task_id)

    def predict_with(self, model: nn.Module, x: Tensor, task_id: Optional[int] = None) -> Tensor:
        classes = torch.arange(self.info.n_classes, device=x.device)
        cvs = F.normalize(self.vq.cvs[classes * self.rot], dim=1)
        logits = -torch.cdist(F.normalize(embed(model, x), dim=1), cvs)
        if self.seen_classes:
            logits = self.mask_unseen(logits, -1e4)
        return logits

    def extra_state(self) -> dict:
        active = self._labels(self.seen_classes) if self.seen_classes else None
        n_edges = int(((self.vq.edges[active][:, active] > 0).sum() - len(active)) / 2) if active is not None else 0
        return {"coding_vectors": int(len(active)) if active is not None else 0, "graph_edges": n_edges}
