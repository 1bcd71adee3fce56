"""Building blocks shared by several strategies (iCaRL, LUCIR, BiC, X-DER, ER-ACE/AML, GSS, MIR).

- `embed(model, x)`: the penultimate features a model's classifier reads (models expose `features`/`classifier`).
- `herding(features, m)`: iCaRL's exemplar selection (Rebuffi et al. 2017, Algorithm 4).
- `ExemplarMemory`: a class-balanced exemplar set, each sample stored with its rank inside its class, so that
  shrinking the memory keeps the first m of every class (iCaRL's ReduceExemplarSet).
- `CosineLinear` / `use_cosine_head`: a cosine-similarity classifier (LUCIR's, with a learnable scale; ER-ACE/AML's
  `distLinear`, with a fixed scale of 10).
- `supcon(...)`: the supervised contrastive loss (Khosla et al. 2020) as ER-AML and X-DER use it.
- `union(split, memory)`: a training split extended with stored samples.
- `per_sample_grads(model, x, y)`: one flattened gradient per sample (torch.func), for GSS.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clbench.buffer import Storage
from clbench.errors import ConfigError
from clbench.stream import Batch, Experience, TensorSplit


# ----- features ------------------------------------------------------------------------------------------
def check_backbone(model: nn.Module, method: str) -> None:
    """Methods that read penultimate features need `model.features` and `model.classifier` (every built-in
    model has them: features(normalize(x)) -> classifier)."""
    for name in ("normalize", "features", "classifier"):
        if not hasattr(model, name):
            raise ConfigError(f"strategy '{method}' needs a model with a '{name}' attribute (features -> classifier), "
                              f"as the built-in mlp, cnn and resnet18 have; {type(model).__name__} has none")


def embed(model: nn.Module, x: Tensor) -> Tensor:
    """Penultimate features: what `model.classifier` reads."""
    return model.features(model.normalize(x))


@contextmanager
def eval_mode(model: nn.Module):
    """Every module in eval mode inside the block (BatchNorm statistics untouched, no dropout); each module's own
    mode restored after it, however the block ends."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


@torch.no_grad()
def embed_all(model: nn.Module, x: Tensor, chunk: int = 2048) -> Tensor:
    """Features of many inputs in eval mode (BatchNorm statistics untouched), the model's mode restored."""
    with eval_mode(model):
        return torch.cat([embed(model, x[i:i + chunk]) for i in range(0, len(x), chunk)]) if len(x) else \
            torch.zeros(0, device=x.device)


# ----- episodic memories ----------------------------------------------------------------------------------
def random_subset(exp: Experience, k: int, generator: torch.Generator) -> Batch:
    """min(k, len) samples of the experience drawn without replacement (one randperm from `generator`)."""
    n = min(int(k), len(exp.train))
    return exp.train.get(torch.randperm(len(exp.train), generator=generator)[:n].to(exp.train.device))


# ----- quadratic regularisers (SI, MAS, RWalk) ------------------------------------------------------------
def quadratic_penalty(importance: dict[str, Tensor], params: dict[str, Tensor], anchor: dict[str, Tensor]) -> Tensor:
    """sum over k of importance_k * (theta_k - theta*_k)^2, summed in the order of `importance`."""
    zero = torch.zeros((), device=next(iter(params.values())).device)
    return sum(((w * (params[k] - anchor[k]) ** 2).sum() for k, w in importance.items()), zero)


# ----- herding (iCaRL) ----------------------------------------------------------------------------------
def herding(features: Tensor, m: int) -> Tensor:
    """Indices of m exemplars, in selection order (Rebuffi et al. 2017, Algorithm 4):

        mu = mean of the features
        for k = 1..m:  p_k = argmin_x || mu - (phi(x) + sum_{j<k} phi(p_j)) / k ||     (x not chosen yet)

    so the running mean of the first k exemplars is as close to the class mean as a greedy choice allows.
    """
    n = len(features)
    m = min(int(m), n)
    f = features.double()
    mu = f.mean(0)
    chosen = torch.empty(m, dtype=torch.long)
    taken = torch.zeros(n, dtype=torch.bool, device=f.device)
    running = torch.zeros_like(mu)
    for k in range(m):
        dist = ((running + f) / (k + 1) - mu).norm(dim=1)
        dist[taken] = math.inf
        i = int(dist.argmin())
        chosen[k], taken[i] = i, True
        running += f[i]
    return chosen


class ExemplarMemory(Storage):
    """Exemplars kept per class, each with its rank in its class (0 = chosen first).

    `add(fields, rank)` appends the exemplars of a class; `reduce(m)` keeps the first m of every class (the rest
    are dropped and the storage compacted), so the memory stays a prefix of each class's selection order.
    """

    policy = "exemplars"

    def add(self, fields: dict[str, Tensor], rank: Tensor) -> None:
        n = len(fields["y"])
        if self.size + n > self.capacity:
            raise ValueError(f"exemplar memory overflow: {self.size} + {n} > {self.capacity}")
        fields = {**fields, "rank": rank.to(fields["y"].device)}
        self._write(fields, torch.arange(n), torch.arange(self.size, self.size + n))
        self.size += n
        self.seen += n

    def reduce(self, m: int) -> None:
        if not self.size:
            return
        keep = torch.nonzero(self.data["rank"][:self.size] < m).squeeze(1)
        for name, v in self.data.items():
            v[:len(keep)] = v[keep].clone()
        self.size = len(keep)

    def classes(self) -> list[int]:
        return sorted(torch.unique(self.data["y"][:self.size]).tolist()) if self.size else []

    def of_class(self, c: int) -> dict[str, Tensor]:
        idx = torch.nonzero(self.data["y"][:self.size] == c).squeeze(1)
        return {name: v[idx] for name, v in self.data.items()}

    def per_class(self) -> dict[int, int]:
        if not self.size:
            return {}
        ids, n = torch.unique(self.data["y"][:self.size], return_counts=True)
        return {int(c): int(k) for c, k in zip(ids.tolist(), n.tolist())}

    def state(self) -> dict:
        return {**super().state(), "per_class": {str(c): n for c, n in self.per_class().items()}}



def joined_with_memory(batch: Batch, buffer: Storage, n: int) -> Batch:
    """ER's training batch: the stream batch followed by a uniform sample of n memory samples (the batch
    itself while the memory is empty)."""
    if len(buffer) == 0:
        return batch
    mem = buffer.sample(n)
    return Batch(x=torch.cat([batch.x, mem["x"]]), y=torch.cat([batch.y, mem["y"]]),
                 t=torch.cat([batch.t, mem["t"]]), index=batch.index)

def union(split: TensorSplit, stored: Optional[dict[str, Tensor]]) -> TensorSplit:
    """The training split followed by the stored samples (x, y, t), as one split."""
    if not stored or len(stored["y"]) == 0:
        return split
    cur = split.get(torch.arange(len(split), device=split.device))
    dev = split.device
    return TensorSplit(torch.cat([cur.x, stored["x"].to(dev, cur.x.dtype)]), torch.cat([cur.y, stored["y"].to(dev)]),
                       task=torch.cat([cur.t, stored["t"].to(dev)]))


# ----- cosine classifier (LUCIR; ER-ACE / ER-AML) -----------------------------------------------------------
class CosineLinear(nn.Module):
    """logits = scale * cos(x, w_c): both features and class weights L2-normalised (Hou et al. 2019, Eq. 4).

    `learn_scale=True`: the scale is a learned parameter sigma, initialised to `scale` (LUCIR); otherwise it is
    the constant `scale` (Caccia et al.'s distLinear uses 10)."""

    def __init__(self, in_features: int, out_features: int, scale: float = 1.0, learn_scale: bool = True,
                 generator: Optional[torch.Generator] = None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        bound = 1.0 / math.sqrt(in_features)
        w = torch.empty(out_features, in_features).uniform_(-bound, bound, generator=generator)
        self.weight = nn.Parameter(w)
        if learn_scale:
            self.sigma = nn.Parameter(torch.tensor([float(scale)]))
        else:
            self.register_buffer("sigma", torch.tensor([float(scale)]))

    def cosine(self, x: Tensor) -> Tensor:
        return F.linear(F.normalize(x, dim=1, eps=1e-5), F.normalize(self.weight, dim=1, eps=1e-5))

    def forward(self, x: Tensor) -> Tensor:
        return self.sigma * self.cosine(x)


def use_cosine_head(model: nn.Module, method: str, scale: float, learn_scale: bool,
                    generator: torch.Generator) -> CosineLinear:
    """Replace the model's linear classifier by a cosine classifier of the same shape (and return it)."""
    check_backbone(model, method)
    old = model.classifier
    if not isinstance(old, (nn.Linear, CosineLinear)):
        raise ConfigError(f"strategy '{method}' replaces the model's classifier by a cosine classifier; it needs an "
                          f"nn.Linear classifier, got {type(old).__name__}")
    head = CosineLinear(old.in_features, old.out_features, scale, learn_scale, generator)
    model.classifier = head.to(old.weight.device)
    return model.classifier


# ----- supervised contrastive loss (ER-AML, X-DER) ----------------------------------------------------------
def supcon(anchors: Tensor, anchor_labels: Tensor, contrast: Tensor, contrast_labels: Tensor,
           temperature: float, base_temperature: float, exclude_self: bool = False) -> Tensor:
    """Per-anchor supervised contrastive loss (Khosla et al. 2020, SupContrast/losses.py):

        l_i = -(T / T_base) * mean_{p: y_p = y_i} log( exp(a_i.c_p / T) / sum_k exp(a_i.c_k / T) )

    over L2-normalised features. `exclude_self`: anchors and contrast are the same set and sample i is neither
    its own positive nor in its own denominator. Anchors without a positive get 0 (and are not counted)."""
    logits = anchors @ contrast.T / temperature
    logits = logits - logits.max(1, keepdim=True).values.detach()
    positive = (anchor_labels.view(-1, 1) == contrast_labels.view(1, -1)).float()
    keep = torch.ones_like(logits)
    if exclude_self:
        keep.fill_diagonal_(0)
        positive = positive * keep
    log_prob = logits - torch.log((torch.exp(logits) * keep).sum(1, keepdim=True))
    n_pos = positive.sum(1)
    mean_log_prob_pos = (positive * log_prob).sum(1) / n_pos.clamp_min(1)
    return -(temperature / base_temperature) * mean_log_prob_pos * (n_pos > 0)


# ----- per-sample gradients (GSS) ------------------------------------------------------------------------------
def per_sample_grads(model: nn.Module, x: Tensor, y: Tensor, head=None, t: Optional[Tensor] = None) -> Tensor:
    """One flattened cross-entropy gradient per sample, shape (n, n_params), with torch.func (no parameter
    update, no .grad written). `head(logits, t)` maps the model's output to the trained logits (task-IL masking;
    it must be vmap-safe), with `t` the samples' task labels."""
    from torch.func import functional_call, grad, vmap
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    t = torch.zeros_like(y) if t is None else t

    def loss_one(p, xi, yi, ti):
        out = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        if head is not None:
            out = head(out, ti.unsqueeze(0))
        return F.cross_entropy(out, yi.unsqueeze(0))

    g = vmap(grad(loss_one), in_dims=(None, 0, 0, 0))(params, x, y, t)
    return torch.cat([g[k].reshape(len(x), -1) for k in params], 1)
