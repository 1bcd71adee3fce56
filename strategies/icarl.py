"""iCaRL: herding exemplars, nearest-mean-of-exemplars classifier, distillation (LwF-MC's loss) on the
new data plus the exemplars.

Rebuffi, Kolesnikov, Sperl, Lampert (2017), "iCaRL: Incremental Classifier and Representation Learning",
CVPR 2017, arXiv:1611.07725. Follows the paper's Algorithms 1-5 and the authors' code (srebuffi/iCaRL,
main_cifar_100_theano.py); compared with Mammoth `models/icarl.py` (aimagelab/mammoth).

    memory P = {P_y}: at most K exemplars, m = K // #seen classes per class
    for each experience with new classes:
        UpdateRepresentation:  train on  D = new data  U  P   with LwF-MC's loss (strategies/lwf_mc.py):
                               sigmoid BCE over the seen classes, targets = old network's outputs for old
                               classes, one-hot for new ones
        ReduceExemplarSet:     keep the first m exemplars of every old class
        ConstructExemplarSet:  for each new class, m exemplars chosen by herding on its features
                               (p_k = argmin || mu - (phi(x) + sum_{j<k} phi(p_j)) / k ||)
    classify x:  y* = argmin_y || phi(x) - mu_y ||,  mu_y = mean of the features of P_y   (nearest mean of exemplars)

Features phi are the penultimate layer (`model.features`), L2-normalised and the means renormalised, as in the
paper (`normalize=true`).

Reproducing Mammoth's published S-MNIST row (70.5 at every buffer size) needs `replay=false normalize=false`:
the code that produced it (Mammoth at its first commit) never called `begin_task`, so exemplars were never
merged into training and served only the classifier, and its herding and class means use unnormalised
features (the preset `seq-mnist` keeps the paper's algorithm; configs/sweep/mammoth-icarl.yaml runs both).

Deviations from the authors' code: herding is the paper's Algorithm 4 (argmin of the running-mean distance)
rather than the code's argmax-of-inner-product iteration with its 1000-step cap; no horizontal-flip averaging of
class means (a CIFAR habit; MNIST digits are not flip-invariant); weight decay is the optimiser's
`train.weight_decay` (Mammoth's `wd_reg` adds it to the loss). Class means are recomputed whenever the network or
the memory changed since they were last computed.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from clbench.hparams import HP
from clbench.strategies.lwf_mc import LwFMC
from clbench.strategies.parts import ExemplarMemory, check_backbone, embed, embed_all, herding, union
from clbench.stream import Experience, TensorSplit


def build_exemplars(memory: ExemplarMemory, model, data: TensorSplit, classes, m: int, normalize: bool) -> None:
    """ConstructExemplarSet for each class of `classes` not yet in memory: m herding-selected samples of `data`."""
    everything = data.get(torch.arange(len(data), device=data.device))
    for c in classes:
        if c in memory.classes():
            continue
        idx = torch.nonzero(everything.y == c).squeeze(1)
        f = embed_all(model, everything.x[idx])
        order = herding(F.normalize(f, dim=1) if normalize else f, m).to(idx.device)
        pick = idx[order]
        memory.add({"x": everything.x[pick], "y": everything.y[pick], "t": everything.t[pick]},
                   rank=torch.arange(len(pick)))


class ICaRL(LwFMC):
    """iCaRL: herding exemplar memory, nearest-mean-of-exemplars classifier, LwF-MC loss on data + exemplars."""

    description = "iCaRL: herding exemplars, nearest-mean-of-exemplars classifier, BCE distillation"
    paper = "Rebuffi et al. 2017, iCaRL: Incremental Classifier and Representation Learning, CVPR, arXiv:1611.07725"
    code = "srebuffi/iCaRL main_cifar_100_theano.py; aimagelab/mammoth models/icarl.py"
    hparams = {
        "buffer_size": HP(500, "K: exemplars kept over all classes (m = K // #seen classes each)", low=1),
        "replay": HP(True, "train on new data + exemplars (the paper); false: exemplars only feed the classifier "
                           "(the code behind Mammoth's published MNIST numbers)"),
        "normalize": HP(True, "L2-normalise features for herding and class means (the paper; Mammoth: false)"),
    }
    checkpoint_attrs = (*LwFMC.checkpoint_attrs, "memory")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        check_backbone(self.model, "icarl")
        self.memory = ExemplarMemory(self.hp.buffer_size, self.device, self.generator)
        self._means: Optional[tuple] = None        # (key, classes, means): derived state, never checkpointed

    def training_data(self, exp: Experience) -> TensorSplit:
        # UpdateRepresentation trains on the new data and every exemplar
        return union(exp.train, self.memory.contents()) if self.hp.replay else exp.train

    def after_experience(self, exp: Experience) -> None:
        super().after_experience(exp)                               # the teacher for the next experience
        m = int(self.hp.buffer_size) // max(self.n_seen_classes, 1)
        self.memory.reduce(m)                                       # ReduceExemplarSet
        build_exemplars(self.memory, self.model, exp.train, exp.classes, m, self.hp.normalize)   # Construct...

    # ----- nearest-mean-of-exemplars classifier -----------------------------------------------------------
    def phi(self, x: Tensor, model=None) -> Tensor:
        f = embed(model or self.model, x)
        return F.normalize(f, dim=1) if self.hp.normalize else f

    def class_means(self) -> tuple[Tensor, Tensor]:
        """(classes, means) of the exemplars under the current network, cached until it or the memory changes."""
        key = (self.global_step, self.memory.seen, self.memory.size)
        if self._means is None or self._means[0] != key:
            classes = self.memory.classes()
            means = []
            for c in classes:
                mu = embed_all(self.model, self.memory.of_class(c)["x"])
                mu = (F.normalize(mu, dim=1).mean(0) if self.hp.normalize else mu.mean(0))
                means.append(F.normalize(mu, dim=0) if self.hp.normalize else mu)
            self._means = (key, torch.tensor(classes, dtype=torch.long, device=self.device),
                           torch.stack(means) if means else torch.zeros(0))
        return self._means[1], self._means[2]

    def predict(self, x: Tensor, task_id: Optional[int] = None) -> Tensor:
        """Scores = minus the squared distance to each class's exemplar mean (classes with no exemplar: -inf)."""
        classes, means = self.class_means()
        f = self.phi(x)
        scores = torch.full((len(x), self.info.n_classes), torch.finfo(f.dtype).min, device=f.device)
        if len(classes):
            scores[:, classes] = -torch.cdist(f, means.to(f.device)).pow(2)
        if task_id is not None:
            scores = self.mask_logits(scores, torch.full((len(x),), int(task_id), dtype=torch.long, device=x.device))
        return scores

    def extra_state(self) -> dict:
        return {"buffer": self.memory.state()}
