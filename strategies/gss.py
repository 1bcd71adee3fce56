"""GSS-greedy: Gradient-based Sample Selection, greedy variant.

Aljundi, Lin, Goujaud, Bengio (2019), "Gradient based sample selection for online continual learning",
NeurIPS 2019, arXiv:1903.08671. Selection follows the authors' greedy algorithm (rahafaljundi/
Gradient-based-Sample-Selection model/GSS_Greedy.py); the update and the scoring batch follow Mammoth
`models/gss.py` and `utils/gss_buffer.py` (aimagelab/mammoth), whose MNIST numbers this reproduces.

    for each incoming minibatch B = (x, y):
        one SGD step on CE over  B  U  a uniform buffer sample of `mem_batch_size`
        G   = single-sample gradients of `score_batch_size` random buffer samples       (network in eval mode)
        c_B = max_j cos(grad CE(B), G_j) + 1                                              (batch score, in [0, 2])
        for each sample i of B:
            buffer not full:  store i with score c_B
            full and c_B < 1 (the batch gradient points away from every stored one):
                c_i = max_j cos(grad CE(x_i, y_i), G_j) + 1
                draw a stored sample k with probability proportional to its score s_k
                replace k by i (score c_i) with probability s_k / (s_k + c_i)
            otherwise: drop i

So a sample enters a full memory only if it disagrees with the stored gradients, and it evicts preferably the
stored samples whose own gradients were most similar to the memory's (high s_k): the memory drifts towards the
least redundant gradients.

Deviations: from the authors, the update (one step on the concatenated batch, Mammoth's `batch_num=1`) rather than
`n_iter` alternating stream and replay steps, single-sample memory gradients (Mammoth) rather than gradients of
random memory batches, and eviction drawn in proportion to the raw stored scores (Mammoth) rather than to min-max
normalised ones; from Mammoth, the replay sample is uniform without replacement (Mammoth's "fathom" sweep
over a fresh permutation gives the same distribution at batch_num=1). The cosines come from the Gram matrix of the
per-sample gradients (`gradient_gram`: exact, computed from layer activations and output gradients for MLPs, so no
per-sample gradient is ever formed; other networks use torch.func per-sample gradients). In task-IL the scoring
gradients are those of the masked loss that is trained.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clbench.buffer import Storage
from clbench.hparams import HP
from clbench.strategies.parts import eval_mode, joined_with_memory, per_sample_grads
from clbench.strategy import Strategy
from clbench.stream import Batch


def gradient_gram(model: nn.Module, x: Tensor, y: Tensor, head=None, t: Optional[Tensor] = None) -> Tensor:
    """K[i, j] = <grad CE(x_i, y_i), grad CE(x_j, y_j)> over the trainable parameters, the cross-entropy taken on
    `head(model(x), t)` when a head is given (task-IL masking, as in training).

    When every trainable parameter sits in an nn.Linear layer (the MLPs), a sample's gradient for a layer is
    delta_i a_i^T (and delta_i for the bias), so K = sum over layers of (delta delta^T) * (a a^T + 1): one forward
    and one backward pass, no per-sample gradient formed. Other networks: torch.func per-sample gradients G, K = G G^T.
    """
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    in_linears = sum(p.numel() for m in linears for p in m.parameters() if p.requires_grad)
    if in_linears != sum(p.numel() for p in model.parameters() if p.requires_grad) or not all(
            m.weight.requires_grad for m in linears):
        g = per_sample_grads(model, x, y, head, t)
        return g @ g.T
    acts: dict = {}
    outs: dict = {}

    def keep(m, inputs, output):
        acts[m], outs[m] = inputs[0], output

    hooks = [m.register_forward_hook(keep) for m in linears]
    try:
        with torch.enable_grad():
            out = model(x)
            # a sum, not a mean: each sample's output gradient (delta) is then its own gradient
            loss = F.cross_entropy(out if head is None else head(out, t), y, reduction="sum")
            deltas = torch.autograd.grad(loss, [outs[m] for m in linears])
    finally:
        for h in hooks:
            h.remove()
    if any(acts[m].dim() != 2 for m in linears):            # a layer applied per position: not this formula
        g = per_sample_grads(model, x, y, head, t)
        return g @ g.T
    gram = torch.zeros(len(y), len(y), dtype=deltas[0].dtype, device=deltas[0].device)
    for m, d in zip(linears, deltas):
        a = acts[m].detach()
        gram += (d @ d.T) * (a @ a.T + (1.0 if m.bias is not None and m.bias.requires_grad else 0.0))
    return gram


class GSSBuffer(Storage):
    """Fixed-capacity memory with a score per slot (GSS's s_k); insertion decisions are the strategy's."""

    policy = "gss_greedy"

    def put(self, fields: dict[str, Tensor], pos: Tensor, slot: Tensor, score: float) -> None:
        """Write samples `pos` of `fields` into slots `slot`, all with score `score`."""
        self._write({**fields, "score": torch.full((len(fields["y"]),), float(score))}, pos, slot)
        self.size = max(self.size, int(slot.max()) + 1)


class GSS(Strategy):
    """GSS-greedy: a memory kept gradient-diverse by score-based greedy replacement."""

    description = "GSS-greedy: memory of samples whose gradients are least similar to the stored ones"
    paper = "Aljundi et al. 2019, Gradient based sample selection for online continual learning, NeurIPS, arXiv:1903.08671"
    code = "rahafaljundi/Gradient-based-Sample-Selection model/GSS_Greedy.py; aimagelab/mammoth models/gss.py"
    hparams = {
        "buffer_size": HP(200, "samples kept in memory", low=1),
        "mem_batch_size": HP(None, "memory samples replayed per step (null: same as train.batch_size)", type=int,
                             low=1),
        "score_batch_size": HP(10, "stored samples whose gradients score a candidate (Mammoth gss_minibatch_size)",
                               low=1),
    }
    checkpoint_attrs = ("buffer", "n_inserted", "n_offered")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.buffer = GSSBuffer(self.hp.buffer_size, self.device, self.generator)
        self.mem_batch = int(self.hp.mem_batch_size or self.train_cfg["batch_size"])
        self.n_inserted = self.n_offered = 0

    def loss_batch(self, batch: Batch) -> Batch:
        # 1. one step (cross-entropy, the default loss) on the incoming batch concatenated with a uniform memory sample
        return joined_with_memory(batch, self.buffer, self.mem_batch)

    @torch.no_grad()
    def after_step(self, batch: Batch) -> None:
        # 2. greedy selection of the incoming samples (network in eval mode, as the authors and Mammoth)
        with eval_mode(self.model):
            self.select(batch)

    def similarity(self, batch: Batch) -> tuple[float, Tensor]:
        """(c_B, c): c_B = max_j cos(grad CE(B), G_j) + 1 and c_i = max_j cos(grad CE(x_i, y_i), G_j) + 1, with G_j
        the single-sample gradients of `score_batch_size` random stored samples."""
        if self.buffer.seen == 0:
            return 0.1, torch.full((len(batch.y),), 0.1)   # Mammoth's score for the very first batch
        mem = self.buffer.sample(int(self.hp.score_batch_size))
        n = len(batch.y)
        head = self.mask_logits if self.task_aware else None    # the gradients of the loss that is trained
        k = gradient_gram(self.model, torch.cat([batch.x, mem["x"]]), torch.cat([batch.y, mem["y"]]), head,
                          torch.cat([batch.t, mem["t"]])).double()
        norm = k.diagonal().clamp_min(0).sqrt()
        cross = k[:n, n:]                                   # <g_i, G_j>
        # the batch gradient is the mean of its samples' gradients: <g_B, G_j> = mean_i <g_i, G_j>
        batch_cos = cross.mean(0) / (k[:n, :n].mean().clamp_min(0).sqrt() * norm[n:]).clamp_min(1e-12)
        single_cos = cross / (norm[:n].view(-1, 1) * norm[n:].view(1, -1)).clamp_min(1e-12)
        return float(batch_cos.max()) + 1, (single_cos.max(1).values + 1).cpu()

    def select(self, batch: Batch) -> None:
        buf, n = self.buffer, len(batch.y)
        fields = {"x": batch.x, "y": batch.y, "t": batch.t}
        batch_c, single = self.similarity(batch)
        fit = max(0, min(n, buf.capacity - buf.seen))     # not full: store with the batch score
        if fit:
            buf.put(fields, torch.arange(fit), torch.arange(buf.seen, buf.seen + fit), batch_c)
            buf.seen += fit
            self.n_inserted += fit
        self.n_offered += n
        for i in range(fit, n):
            if batch_c < 1:                               # full: compete only if the batch disagrees with memory
                s = buf.data["score"][:buf.size].double().cpu()
                s = s if float(s.sum()) > 0 else torch.ones_like(s)
                k = int(torch.multinomial(s / s.sum(), 1, generator=self.generator))
                c_i = float(single[i])
                r = float(torch.rand(1, generator=self.generator, dtype=torch.float64))
                if r < float(s[k]) / (float(s[k]) + c_i):          # replace with probability s_k / (s_k + c_i)
                    buf.put(fields, torch.tensor([i]), torch.tensor([k]), c_i)
                    self.n_inserted += 1
            buf.seen += 1

    def extra_state(self) -> dict:
        return {"buffer": self.buffer.state(), "offered": self.n_offered, "inserted": self.n_inserted}
