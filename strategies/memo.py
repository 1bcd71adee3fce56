"""MEMO: Memory-efficient Expandable MOdel.

Zhou, Wang, Ye, Zhan (ICLR 2023), "A Model or 603 Exemplars: Towards Memory-Efficient Class-Incremental
Learning", arXiv:2205.13218; follows the authors' code (wangkiw/ICLR23-MEMO, models/memo.py and
utils/inc_net.py AdaptiveNet).

The network is split into a generalized block phi_g (shallow layers, shared) and a specialized block phi_s
(the deep layers). Each task adds a new phi_s; the classifier reads the concatenation of all of them:

    task 0:   f(x) = W [phi_s^0(phi_g(x))];  L = CE(f(x), y) on the task's data
    task t>0: phi_s^t <- copy of phi_s^{t-1};  W grows by the new block's columns (old rows/columns copied)
              old phi_s frozen (eval mode); phi_g trained iff train_base (the README's B0 setting)
              aux head g_t: Linear(d, |new classes| + 1) on phi_s^t alone, every old class mapped to label 0
              for each minibatch of (current data  U  exemplars):
                  L = CE(f(x)[seen classes], y) + alpha_aux * CE(g_t(phi_s^t(phi_g(x))), y_aux)
              weight aligning: new classes' rows of W *= mean ||old rows|| / mean ||new rows||
    after each task: herding exemplars (iCaRL), buffer_size // seen classes per class (old classes truncated)

The memory MEMO keeps is what the paper counts: the exemplars (uint8 inputs) plus the model that grows by
one phi_s per task (`result.json` memory.model_bytes); `specialized_layers` sets how many of the model's
parametrised feature layers form phi_s (all of them: a new full backbone per task, the paper's DER-style
"model" arm without DER's pruning).

Deviations: the harness's model (e.g. MLP 100-100: phi_g = first hidden layer, phi_s = second) instead of
ResNet-32 (phi_s = stage 3); one optimiser and schedule for every task (the code: task 0 SGD lr 0.1 for 200
epochs, later tasks 170 epochs); the classifier has a row for every class of the stream from the start and
the rows of classes not seen yet are masked (the code grows the classifier); new columns and rows drawn
from the strategy's generator with nn.Linear's default range.
"""
from __future__ import annotations

import copy
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clbench.errors import ConfigError, bad_value
from clbench.hparams import HP, loguniform
from clbench.strategy import Strategy
from clbench.stream import Batch, Experience, TensorSplit
from clbench.strategies.joint import union_split
from clbench.strategies.parts import eval_mode


def _uniform_linear(d_in: int, d_out: int, generator: torch.Generator) -> nn.Linear:
    """nn.Linear with its default init range U(-1/sqrt(d_in), 1/sqrt(d_in)), drawn from `generator`."""
    layer = nn.Linear(d_in, d_out)
    bound = 1.0 / math.sqrt(d_in)
    with torch.no_grad():
        layer.weight.copy_(torch.rand(layer.weight.shape, generator=generator) * 2 * bound - bound)
        layer.bias.copy_(torch.rand(layer.bias.shape, generator=generator) * 2 * bound - bound)
    return layer


class MemoNet(nn.Module):
    """phi_g, a list of phi_s (one per task), a classifier over their concatenation, an auxiliary head."""

    def __init__(self, normalize: nn.Module, generalized: nn.Module, specialized: nn.Module, feat_dim: int,
                 n_classes: int, generator: torch.Generator):
        super().__init__()
        self.normalize = normalize
        self.generalized = generalized
        self.specialized = nn.ModuleList([specialized])
        self.feat_dim = feat_dim
        self.fc = _uniform_linear(feat_dim, n_classes, generator)
        self.aux_fc: Optional[nn.Linear] = None

    def blocks_output(self, x: Tensor) -> list[Tensor]:
        base = self.generalized(self.normalize(x))
        return [blk(base) for blk in self.specialized]

    def features(self, x: Tensor) -> Tensor:
        return torch.cat(self.blocks_output(x), 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))

    def expand(self, n_new_classes: int, generator: torch.Generator) -> None:
        """A new phi_s initialised from the last one; the classifier grows by its columns; a new aux head."""
        self.specialized.append(copy.deepcopy(self.specialized[-1]))
        old = self.fc
        fc = _uniform_linear(self.feat_dim * len(self.specialized), old.out_features, generator)
        with torch.no_grad():
            fc.weight[:, :old.in_features] = old.weight
            fc.bias.copy_(old.bias)
        self.fc = fc.to(old.weight.device)
        self.aux_fc = _uniform_linear(self.feat_dim, n_new_classes + 1, generator).to(old.weight.device)


def split_features(model: nn.Module, n_specialized: int) -> tuple[nn.Sequential, nn.Sequential]:
    """(phi_g, phi_s): the last `n_specialized` parametrised layers of `model.features` (with what follows
    them: activations, pooling) form phi_s; everything before is phi_g."""
    feats = getattr(model, "features", None)
    if not isinstance(feats, nn.Sequential) or not isinstance(getattr(model, "classifier", None), nn.Linear):
        raise ConfigError(f"strategy 'memo' needs a model with a `features` nn.Sequential and a linear `classifier` "
                          f"(mlp, cnn, reduced_resnet18); got {type(model).__name__}")
    layers = list(feats)
    with_params = [i for i, m in enumerate(layers) if any(True for _ in m.parameters())]
    if n_specialized > len(with_params):
        raise bad_value("strategy.specialized_layers", f"{n_specialized}; the model's features have "
                        f"only {len(with_params)} parametrised layers")
    cut = with_params[-n_specialized]
    return nn.Sequential(*layers[:cut]), nn.Sequential(*layers[cut:])


def herding(features: Tensor, m: int) -> list[int]:
    """iCaRL's herding: m positions whose running mean best tracks the class mean (L2-normalised features)."""
    f = F.normalize(features, dim=1)
    mu = f.mean(0)
    chosen: list[int] = []
    running = torch.zeros_like(mu)
    for k in range(1, min(m, len(f)) + 1):
        dist = ((mu - (running + f) / k) ** 2).sum(1)
        if chosen:
            dist[chosen] = float("inf")
        i = int(dist.argmin())
        chosen.append(i)
        running += f[i]
    return chosen


class MEMO(Strategy):
    """MEMO: shared shallow block, one specialized deep block per task, herding exemplars."""

    description = "MEMO: expandable model (a new specialized block per task) + herding exemplars"
    paper = ("Zhou, Wang, Ye, Zhan 2023, A Model or 603 Exemplars: Towards Memory-Efficient Class-Incremental "
             "Learning, ICLR, arXiv:2205.13218")
    code = "wangkiw/ICLR23-MEMO models/memo.py, utils/inc_net.py (AdaptiveNet)"
    hparams = {
        "buffer_size": HP(200, "exemplars kept over all classes (herding, equal share per seen class)", low=0),
        "specialized_layers": HP(1, "parametrised feature layers in each specialized block phi_s (counted from "
                                    "the top; all of them: a new backbone per task)", low=1),
        "alpha_aux": HP(1.0, "weight of the auxiliary (new classes + 'old') loss", low=0,
                        search=loguniform(0.1, 10)),
        "train_base": HP(True, "train the generalized block phi_g after task 0 (README, B0 protocol)"),
        "weight_align": HP(True, "rescale the new classes' classifier rows after each task (weight aligning)"),
    }
    settings = ("class-il",)
    checkpoint_attrs = ("exemplars", "task_sizes", "old_classes")
    exemplar_attrs = ("exemplars",)

    def __init__(self, model, *args, **kwargs):
        super().__init__(model, *args, **kwargs)
        generalized, specialized = split_features(self.model, int(self.hp.specialized_layers))
        self.model = MemoNet(self.model.normalize, generalized, specialized, self.model.classifier.in_features,
                             self.info.n_classes, self.generator).to(self.device)
        self.optimizer = self.make_optimizer()
        self.exemplars: dict[str, Tensor] = {}   # x, y, t of the kept samples, each class in herding order
        self.task_sizes: list[int] = []          # classes introduced by each task (grows the network on resume)
        self.old_classes: list[int] = []         # classes of the tasks before the current one

    # ----- the network grows at each new task -------------------------------------------------------
    def before_experience(self, exp: Experience) -> None:
        self.task_sizes.append(len(set(exp.classes) - set(self.old_classes)))
        if len(self.task_sizes) > 1:
            self.model.expand(self.task_sizes[-1], self.generator)
        self._freeze_old_blocks()
        self.optimizer = self.make_optimizer()

    def _freeze_old_blocks(self) -> None:
        m = self.model
        for blk in m.specialized[:-1]:
            blk.requires_grad_(False)
            blk.eval()
        if len(m.specialized) > 1 and not self.hp.train_base:
            m.generalized.requires_grad_(False)
            m.generalized.eval()

    def make_optimizer(self):
        from clbench.strategy import make_optimizer
        return make_optimizer([p for p in self.model.parameters() if p.requires_grad], self.train_cfg)

    # ----- training ---------------------------------------------------------------------------------
    def training_data(self, exp: Experience) -> TensorSplit:
        data = exp.train.get(torch.arange(len(exp.train), device=exp.train.device))
        kept = [{"x": data.x, "y": data.y, "t": data.t}]
        if self.exemplars:
            kept.append({k: v.to(data.x.device) for k, v in self.exemplars.items()})
        return union_split(kept)

    def loss(self, batch: Batch) -> Tensor:
        blocks = self.model.blocks_output(batch.x)
        logits = self.model.fc(torch.cat(blocks, 1))
        seen = torch.tensor(self.seen_classes, device=logits.device)
        loss = F.cross_entropy(logits[:, seen], torch.searchsorted(seen, batch.y))
        if self.model.aux_fc is not None:
            # new classes -> 1..n_new (in the task's class order), every old class -> 0
            new = torch.tensor(sorted(set(self.seen_classes) - set(self.old_classes)), device=logits.device)
            is_new = torch.isin(batch.y, new)
            y_aux = torch.where(is_new, torch.searchsorted(new, batch.y) + 1, torch.zeros_like(batch.y))
            loss = loss + float(self.hp.alpha_aux) * F.cross_entropy(self.model.aux_fc(blocks[-1]), y_aux)
        return loss

    def after_experience(self, exp: Experience) -> None:
        new = sorted(set(self.seen_classes) - set(self.old_classes))
        if self.old_classes and new and self.hp.weight_align:
            w = self.model.fc.weight.data
            w[new] *= w[self.old_classes].norm(dim=1).mean() / w[new].norm(dim=1).mean()
        self.old_classes = list(self.seen_classes)
        self._build_exemplars(exp)

    def _build_exemplars(self, exp: Experience) -> None:
        """Truncate each old class to the new per-class share, then herd the new classes' exemplars."""
        m = int(self.hp.buffer_size) // max(len(self.seen_classes), 1)
        parts = []
        if self.exemplars:
            for c in sorted(set(self.exemplars["y"].tolist())):
                pos = (self.exemplars["y"] == c).nonzero().squeeze(1)[:m]
                parts.append({k: v[pos] for k, v in self.exemplars.items()})
        data = exp.train.get(torch.arange(len(exp.train), device=exp.train.device))
        with eval_mode(self.model), torch.no_grad():
            feats = torch.cat([self.model.features(data.x[i:i + 1000]) for i in range(0, len(data.y), 1000)])
        for c in exp.classes:
            pos = (data.y == c).nonzero().squeeze(1)
            chosen = pos[herding(feats[pos], m)] if m > 0 else pos[:0]
            parts.append({"x": data.x[chosen], "y": data.y[chosen], "t": data.t[chosen]})
        self.exemplars = {k: torch.cat([p[k] for p in parts]).to(self.device) for k in ("x", "y", "t")}

    # ----- prediction: classes not seen yet have no classifier row in the paper -----------------------
    def predict(self, x: Tensor, task_id: Optional[int] = None) -> Tensor:
        logits = self.model(x)
        if self.seen_classes:
            logits = self.mask_unseen(logits)
        return logits

    # ----- resume: grow to the saved number of blocks before loading -----------------------------------
    def load_state_dict(self, state: dict) -> None:
        sizes = list(state["attrs"]["task_sizes"])
        while len(self.model.specialized) < max(len(sizes), 1):
            self.model.expand(sizes[len(self.model.specialized)], self.generator)
        super().load_state_dict(state)

    def extra_state(self) -> dict:
        return {"specialized_blocks": len(self.model.specialized), "exemplars": int(len(self.exemplars.get("y", []))),
                "task_sizes": list(self.task_sizes)}
