"""ER-AML: experience replay with an asymmetric metric-learning loss on the incoming data.

Caccia, Aljundi, Asadi, Tuytelaars, Pineau, Belilovsky (2022), "New Insights on Reducing Abrupt Representation
Change in Online Continual Learning", ICLR 2022, arXiv:2104.05025. Follows the authors' code
(pclucas14/AML methods/er_aml.py `process_inc` and `sup_con_loss`, buffer.py `sample_pos_neg`). Mammoth has no
ER-AML.

    for each incoming minibatch (x, y):
        for each incoming sample i, draw from (buffer U minibatch):
            one positive  p_i: same label, not i itself
            one negative  n_i: a different label that is present in the minibatch ("same task", task-free)
        (samples lacking a positive or a negative are left out of this term)
        L_inc = SupCon(anchors = h(x_i), contrast = {h(p_i)} U {h(n_i)}, temperature T)    h: normalised features
        L_re  = CE(f(x_m), y_m) on a uniform buffer sample
        one SGD step on L_inc + L_re;  reservoir-insert (x, y)
    before the buffer holds anything: L_inc = CE(f(x), y)

The classifier is the authors' cosine classifier with scale 10 (`cosine_head`), trained by the replay term only
once the metric loss takes over. Everything but the incoming loss is ER-ACE (strategies/er_ace.py).

Deviations: SupCon's base temperature is the code's fixed 0.07, so the loss is scaled by T / 0.07 as there;
negatives are restricted to labels of the current minibatch (the code's task-free `same_task_neg`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from clbench.hparams import HP, loguniform
from clbench.strategies.er_ace import ERACE
from clbench.strategies.parts import check_backbone, embed, supcon
from clbench.stream import Batch

BASE_TEMPERATURE = 0.07      # sup_con_loss's default in the authors' code


def sample_pos_neg(pool_y: Tensor, y: Tensor, own: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """For each incoming label y_i: a random positive (same label, not position own_i) and a random negative
    (another label among those of the minibatch) from the pool. Returns (pos index, neg index, valid mask)."""
    same = pool_y.view(-1, 1) == y.view(1, -1)                           # pool x incoming
    itself = torch.arange(len(pool_y), device=y.device).view(-1, 1) == own.view(1, -1)
    in_batch = torch.isin(pool_y, torch.unique(y)).view(-1, 1)
    pos_ok, neg_ok = same & ~itself, ~same & in_batch
    valid = pos_ok.any(0) & neg_ok.any(0)
    pos_w, neg_w = pos_ok.T.float().cpu(), neg_ok.T.float().cpu()
    pos_w[~valid.cpu()] = 1.0                                             # placeholders, dropped by `valid`
    neg_w[~valid.cpu()] = 1.0
    pos = torch.multinomial(pos_w, 1, generator=generator).squeeze(1).to(y.device)
    neg = torch.multinomial(neg_w, 1, generator=generator).squeeze(1).to(y.device)
    return pos, neg, valid


class ERAML(ERACE):
    """ER-AML: incoming SupCon loss against buffer/batch positives and negatives, plus replay CE."""

    description = "ER-AML: incoming supervised-contrastive loss (positives/negatives from memory) plus replay CE"
    code = "pclucas14/AML methods/er_aml.py, buffer.py"
    hparams = {
        **ERACE.hparams,
        "temperature": HP(0.2, "SupCon temperature (the authors' README)", gt=0, search=loguniform(0.05, 1.0)),
    }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        check_backbone(self.model, "er_aml")

    def incoming_loss(self, batch: Batch) -> Tensor:
        self.seen_labels[batch.y] = True
        if len(self.buffer) == 0 or not self.active:
            return F.cross_entropy(self.logits(batch.x, batch.t), batch.y)     # regular training at the start
        # 1. pool = buffer U incoming minibatch; a positive and a negative for every incoming sample
        mem = self.buffer.contents()
        pool_x, pool_y = torch.cat([mem["x"], batch.x]), torch.cat([mem["y"], batch.y])
        own = torch.arange(len(mem["y"]), len(pool_y), device=batch.y.device)
        pos, neg, valid = sample_pos_neg(pool_y, batch.y, own, self.generator)
        if not bool(valid.any()):
            return self.logits(batch.x, batch.t).sum() * 0.0
        pos, neg = pos[valid], neg[valid]
        # 2. SupCon of the normalised incoming features against their positives and negatives
        anchors = F.normalize(embed(self.model, batch.x[valid]), dim=1)
        contrast = F.normalize(embed(self.model, torch.cat([pool_x[pos], pool_x[neg]])), dim=1)
        losses = supcon(anchors.repeat(2, 1), batch.y[valid].repeat(2), contrast,
                        torch.cat([pool_y[pos], pool_y[neg]]), float(self.hp.temperature), BASE_TEMPERATURE)
        return losses.mean()
