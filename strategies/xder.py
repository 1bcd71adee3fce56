"""X-DER: eXtended Dark Experience Replay.

Boschini, Bonicelli, Buzzega, Porrello, Calderara (2022), "Class-Incremental Continual Learning into the
eXtended DER-verse", TPAMI 45(5), arXiv:2201.00766. The authors' code is Mammoth `models/xder.py`
(aimagelab/mammoth, commit 0d727a7), followed here term by term:

    heads: past (classes of earlier experiences), current (this experience's), future (classes not seen yet,
           in groups the size of the current head)
    for each minibatch (x, y):
        L = CE(f(x)[current head], y)                                              # stream, current head only
          + alpha * MSE(f(x1), z1)                  (x1, z1) ~ memory              # DER: all stored logits
          + beta  * CE(f(x2)[past heads], y2)       (x2, y2) ~ memory              # DER++: past heads only
          + lambda * SupCon on each future head's logits over `n_aug` augmentations of memory + stream samples
          + eta * mean[max past prob + m - max current prob]_+   (softmax over seen classes)   # past constraint
          + eta * mean[max future logit + m - max own-head logit]_+  (stream + memory)           # future constraint
        "future past" update: for a memory sample of a past class (with probability 1 / #times drawn), replace its
          stored logits of the current and future heads by the current ones, scaled by gamma * z_gt / max when
          their max exceeds its stored ground-truth logit z_gt
    at the end of each experience (class-balanced memory, not reservoir):
        keep buffer_size // #seen samples of each old class; fill the rest with random samples of the new
        classes, their logits' past heads damped the same way; update the current/future heads of every old sample

Deviations: Mammoth's strong augmentation (random crop + flip + colour jitter) has no MNIST version (X-DER cannot
start on Mammoth's seq-mnist); here the augmentation is a random translation of up to `shift` pixels. Heads are
sets of classes (any class order), future heads are the unseen classes in index order, grouped by the current
head's size. BatchNorm alignment (`align_bn`) is not needed for the MLP and not implemented.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from clbench.hparams import HP, loguniform, uniform
from clbench.strategies.parts import ExemplarMemory, supcon
from clbench.strategy import Strategy
from clbench.stream import Batch, Experience


def random_shift(x: Tensor, shift: int, generator: torch.Generator) -> Tensor:
    """Each image translated by a random (dy, dx) in [-shift, shift]^2, zero-padded (inputs (N, ..., H, W))."""
    if shift <= 0:
        return x
    n, h, w = len(x), x.shape[-2], x.shape[-1]
    padded = F.pad(x, (shift, shift, shift, shift))
    dy = torch.randint(0, 2 * shift + 1, (n,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * shift + 1, (n,), generator=generator).to(x.device)
    rows = (torch.arange(h, device=x.device).view(1, h) + dy.view(n, 1)).view(n, 1, h, 1)
    cols = (torch.arange(w, device=x.device).view(1, w) + dx.view(n, 1)).view(n, 1, 1, w)
    flat = padded.reshape(n, -1, padded.shape[-2], padded.shape[-1])
    out = flat.gather(2, rows.expand(n, flat.shape[1], h, padded.shape[-1]))
    out = out.gather(3, cols.expand(n, flat.shape[1], h, w))
    return out.reshape(x.shape)


def first_occurrences(idx: Tensor) -> Tensor:
    """Mask of the first occurrence of every value of idx (drops samples drawn by both replay terms)."""
    _, inverse = torch.unique(idx, return_inverse=True)
    pos = torch.arange(len(idx), device=idx.device)
    first = torch.full((int(inverse.max()) + 1,), len(idx), device=idx.device).scatter_reduce(0, inverse, pos, "amin")
    mask = torch.zeros(len(idx), dtype=torch.bool, device=idx.device)
    mask[first] = True
    return mask


def damp(stored: Tensor, new: Tensor, gt: Tensor, cols: Tensor, gamma: float) -> Tensor:
    """Stored logits with columns `cols` taken from `new`, rescaled by gamma * z_gt / max where their max exceeds the
    stored ground-truth logit z_gt (Mammoth xder.py `update_logits`)."""
    out = stored.clone()
    transplant = new[:, cols].clone()
    gt_values = stored[torch.arange(len(gt), device=gt.device), gt]
    max_values = transplant.max(1).values
    over = max_values > gt_values
    transplant[over] *= (gamma * gt_values[over] / max_values[over]).unsqueeze(1)
    out[:, cols] = transplant
    return out


class XDER(Strategy):
    """X-DER: DER++ with head-wise losses, future-past logit updates and future-head preparation."""

    description = "X-DER: DER++ with past-logit updates, future-head SupCon preparation and logit constraints"
    paper = ("Boschini et al. 2022, Class-Incremental Continual Learning into the eXtended DER-verse, TPAMI, "
             "arXiv:2201.00766")
    code = "aimagelab/mammoth models/xder.py"
    hparams = {
        "buffer_size": HP(500, "samples kept in memory, class-balanced", low=1),
        "mem_batch_size": HP(None, "memory samples per replay term (null: same as train.batch_size)", type=int, low=1),
        "alpha": HP(0.3, "weight of the logit replay (Mammoth seq-cifar100, buffer 500)", low=0,
                    search=loguniform(0.01, 10)),
        "beta": HP(0.8, "weight of the label replay (Mammoth seq-cifar100, buffer 500)", low=0,
                   search=loguniform(0.01, 10)),
        "gamma": HP(0.85, "damping of updated logits relative to the ground-truth logit", low=0, high=1),
        "lambd": HP(0.05, "weight of the future-head SupCon term", low=0, search=loguniform(1e-3, 1)),
        "eta": HP(0.001, "weight of the past/future logit constraints", low=0, search=loguniform(1e-4, 1)),
        "m": HP(0.7, "margin of the logit constraints", low=0, search=uniform(0.1, 1.0)),
        "simclr_temp": HP(5.0, "SupCon temperature (and base temperature)", gt=0),
        "simclr_batch_size": HP(64, "memory and stream samples each for the SupCon term", low=1),
        "simclr_num_aug": HP(2, "augmentations per sample in the SupCon term", low=2),
        "shift": HP(2, "augmentation: random translation of up to this many pixels", low=0),
    }
    settings = ("class-il", "task-il")
    checkpoint_attrs = ("buffer", "update_counter")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.buffer = ExemplarMemory(self.hp.buffer_size, self.device, self.generator)
        self.update_counter = torch.zeros(self.hp.buffer_size, device=self.device)
        self.mem_batch = int(self.hp.mem_batch_size or self.train_cfg["batch_size"])

    # ----- heads ---------------------------------------------------------------------------------------
    def heads(self) -> tuple[Tensor, Tensor, list[Tensor]]:
        """(past classes, current classes, future heads) as index tensors."""
        cur = sorted(self.experience.classes)
        past = [c for c in self.seen_classes if c not in cur]
        unseen = [c for c in range(self.info.n_classes) if c not in self.seen_classes]
        size = max(len(cur), 1)
        dev = self.device
        future = [torch.tensor(unseen[i:i + size], device=dev) for i in range(0, len(unseen), size)]
        return torch.tensor(past, dtype=torch.long, device=dev), torch.tensor(cur, device=dev), future

    def own_head(self, y: Tensor) -> Tensor:
        """Boolean (n, n_classes): the classes of the task each label was learned in."""
        task_of = torch.full((self.info.n_classes,), -1, dtype=torch.long, device=y.device)
        for t, classes in self.task_classes.items():
            task_of[torch.tensor(classes, device=y.device)] = int(t)
        return task_of[y].view(-1, 1) == task_of.view(1, -1)

    def draw(self) -> tuple[Tensor, dict[str, Tensor]]:
        idx = torch.randperm(len(self.buffer), generator=self.generator)[:self.mem_batch].to(self.device)
        return idx, {k: v[idx] for k, v in self.buffer.data.items()}

    # ----- training ----------------------------------------------------------------------------------------
    def loss(self, batch: Batch) -> Tensor:
        hp = self.hp
        past, cur, future = self.heads()
        out = self.model(batch.x)
        # 1. stream: current head only
        loss = F.cross_entropy(out[:, cur], torch.searchsorted(cur, batch.y))
        buf_out = buf_y = None
        if len(self.buffer) > 0:
            # 2. DER: all stored logits; 3. DER++: past heads only (an independent sample)
            idx1, m1 = self.draw()
            idx2, m2 = self.draw()
            out1, out2 = self.model(m1["x"]), self.model(m2["x"])
            loss = loss + float(hp.alpha) * F.mse_loss(out1, m1["logits"])
            if len(past):
                loss = loss + float(hp.beta) * F.cross_entropy(out2[:, past], torch.searchsorted(past, m2["y"]))
            # 4. future-past update of the stored logits (each sample once, with probability 1 / times drawn)
            idx, buf_out, buf_y = torch.cat([idx1, idx2]), torch.cat([out1, out2]), torch.cat([m1["y"], m2["y"]])
            first = first_occurrences(idx)
            self.update_past_logits(idx[first], buf_out[first].detach(), buf_y[first], past, stochastic=True)
        # 5. future preparation: SupCon on each future head
        if future:
            loss = loss + float(hp.lambd) * self.future_supcon(batch, future)
        # 6. constraints: the current head above the past heads (stream), above the future heads (stream + memory)
        seen = torch.tensor(self.seen_classes, device=self.device)
        if len(past):
            prob = F.softmax(out[:, seen], 1)
            is_cur = torch.isin(seen, cur)
            gap = prob[:, ~is_cur].max(1).values.detach() + float(hp.m) - prob[:, is_cur].max(1).values
            loss = loss + self.hinge(gap)
        if future:
            fut = torch.cat(future)
            bad, good = out[:, fut].max(1).values, out[:, cur].max(1).values
            if buf_out is not None:
                bad = torch.cat([bad, buf_out[:, fut].max(1).values])
                own = buf_out.masked_fill(~self.own_head(buf_y), torch.finfo(buf_out.dtype).min)
                good = torch.cat([good, own.max(1).values])
            loss = loss + self.hinge(bad + float(hp.m) - good)
        return loss

    def hinge(self, gap: Tensor) -> Tensor:
        pos = gap > 0
        return float(self.hp.eta) * gap[pos].mean() if bool(pos.any()) else gap.sum() * 0.0

    def future_supcon(self, batch: Batch, future: list[Tensor]) -> Tensor:
        n_aug, k = int(self.hp.simclr_num_aug), int(self.hp.simclr_batch_size)
        x, y = batch.x[:k], batch.y[:k]
        if len(self.buffer) > 0:
            pick = torch.randperm(len(self.buffer), generator=self.generator)[:k].to(self.device)
            x, y = torch.cat([self.buffer.data["x"][pick], x]), torch.cat([self.buffer.data["y"][pick], y])
        views = random_shift(x.repeat(n_aug, *[1] * (x.dim() - 1)), int(self.hp.shift), self.generator)
        out = self.model(views)                                   # view-major: rows v * n + i
        labels = y.repeat(n_aug)
        temp = float(self.hp.simclr_temp)
        per_head = [supcon(F.normalize(out[:, h], dim=1), labels, F.normalize(out[:, h], dim=1), labels, temp, temp,
                           exclude_self=True).mean() for h in future]
        return torch.stack(per_head).mean()

    @torch.no_grad()
    def update_past_logits(self, idx: Tensor, outputs: Tensor, y: Tensor, past: Tensor, stochastic: bool) -> None:
        """Replace the current/future-head logits of stored past-class samples by the network's (damped)."""
        chosen = torch.isin(y, past)
        if stochastic:
            self.update_counter[idx[chosen]] += 1
            draw = torch.rand(int(chosen.sum()), generator=self.generator).to(self.device)
            chosen[chosen.clone()] = draw * self.update_counter[idx[chosen]] < 1
        if not bool(chosen.any()):
            return
        cols = ~torch.isin(torch.arange(self.info.n_classes, device=self.device), past)
        logits = self.buffer.data["logits"]
        logits[idx[chosen]] = damp(logits[idx[chosen]], outputs[chosen], y[chosen], cols, float(self.hp.gamma))

    # ----- memory update at the end of an experience ----------------------------------------------------------
    @torch.no_grad()
    def after_experience(self, exp: Experience) -> None:
        past, cur, _ = self.heads()
        per_class = int(self.hp.buffer_size) // max(self.n_seen_classes, 1)
        self.buffer.reduce(per_class)                               # old classes: keep an equal share each
        free = int(self.hp.buffer_size) - len(self.buffer)
        quota = torch.full((len(cur),), free // max(len(cur), 1), dtype=torch.long)
        quota[torch.randperm(len(cur), generator=self.generator)[:free - int(quota.sum())]] += 1
        data = exp.train.get(torch.randperm(len(exp.train), generator=self.generator).to(exp.train.device))
        for c, q in zip(cur.tolist(), quota.tolist()):
            pick = torch.nonzero(data.y == c).squeeze(1)[:q]
            if not len(pick):
                continue
            x, y = data.x[pick], data.y[pick]
            z = self.model(x)
            if len(past):                                           # damp the past heads of the new samples
                z = damp(z, z, y, torch.isin(torch.arange(self.info.n_classes, device=self.device), past),
                         float(self.hp.gamma))
            self.buffer.add({"x": x, "y": y, "t": data.t[pick], "logits": z}, rank=torch.arange(len(y)))
        # every old sample: current and future heads from the network as it is now
        n = len(self.buffer)
        x, y = self.buffer.data["x"][:n], self.buffer.data["y"][:n]
        outputs = torch.cat([self.model(x[i:i + 1024]) for i in range(0, n, 1024)])
        self.update_past_logits(torch.arange(n, device=self.device), outputs, y, past, stochastic=False)
        self.update_counter.zero_()

    def extra_state(self) -> dict:
        return {"buffer": self.buffer.state()}
