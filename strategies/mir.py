"""MIR: Maximally Interfered Retrieval.

Aljundi, Caccia, Belilovsky, Caccia, Lin, Charlin, Tuytelaars (2019), "Online Continual Learning with Maximally
Interfered Retrieval", NeurIPS 2019, arXiv:1908.04742. Follows the authors' code
(optimass/Maximally_Interfered_Retrieval mir.py `retrieve_replay_update`, er_main.py); compared with Avalanche
`training/plugins/mir.py`. Mammoth has no MIR.

    for each incoming minibatch (x, y):
        g   = grad of CE(f_theta(x), y)
        theta' = theta - lr * g                                      # the virtual update (the real step's lr)
        C   = `subsample` random buffer samples, not of the current task
        s_c = CE(f_theta'(x_c), y_c) - CE(f_theta(x_c), y_c)         # interference: loss increase under theta'
        R   = the `mem_batch_size` candidates with the largest s_c
        one SGD step on  CE(f(x), y) + CE(f(R), y_R)                 # incoming and replay gradients summed
        reservoir-insert (x, y)

Deviations: the authors' MNIST runs use `--compare_to_old_logits` (score against the minimum of the current loss
and the loss stored at insertion); this follows the plain score of the paper's Eq. 1. Candidates exclude the
current task by task label (as the authors' code), which in domain-IL and class-IL streams is the experience.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from clbench.buffer import make_buffer
from clbench.hparams import HP, randint
from clbench.strategy import Strategy
from clbench.stream import Batch


class MIR(Strategy):
    """MIR: replay the buffer samples whose loss a virtual SGD step on the incoming batch increases most."""

    description = "MIR: replays the memory samples most interfered with by a virtual update on the incoming batch"
    paper = ("Aljundi et al. 2019, Online Continual Learning with Maximally Interfered Retrieval, NeurIPS, "
             "arXiv:1908.04742")
    code = "optimass/Maximally_Interfered_Retrieval mir.py"
    hparams = {
        "buffer_size": HP(500, "samples kept in memory (reservoir), over all tasks", low=0),
        "mem_batch_size": HP(10, "retrieved samples replayed per step (the authors' buffer_batch_size)", low=1),
        "subsample": HP(50, "random candidates scored per step (the authors' value)", low=1, search=randint(10, 200)),
        "exclude_current_task": HP(True, "draw candidates only from earlier tasks (the authors' code)"),
    }
    checkpoint_attrs = ("buffer",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.buffer = make_buffer("reservoir", self.hp.buffer_size, self.device, self.generator)

    def logits(self, x: Tensor, t: Tensor, params=None) -> Tensor:
        out = self.model(x) if params is None else functional_call(self.model, params, (x,))
        return self.task_head(out, t)

    def candidates(self) -> dict[str, Tensor] | None:
        mem = self.buffer.contents()
        if len(self.buffer) == 0:
            return None
        if self.hp.exclude_current_task and self.current_task is not None:
            keep = torch.nonzero(mem["t"] != self.current_task).squeeze(1)
            mem = {k: v[keep] for k, v in mem.items()}
        if len(mem["y"]) == 0:
            return None
        pick = torch.randperm(len(mem["y"]), generator=self.generator)[:int(self.hp.subsample)].to(mem["y"].device)
        return {k: v[pick] for k, v in mem.items()}

    def interference(self, loss: Tensor, cand: dict[str, Tensor]) -> Tensor:
        """s_c = loss of each candidate after the virtual step minus its loss now."""
        names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        params = [p for p in self.model.parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        lr = float(self.optimizer.param_groups[0]["lr"])
        virtual = {n: (p - lr * g if g is not None else p).detach() for n, p, g in zip(names, params, grads)}
        with torch.no_grad():
            before = F.cross_entropy(self.logits(cand["x"], cand["t"]), cand["y"], reduction="none")
            after = F.cross_entropy(self.logits(cand["x"], cand["t"], virtual), cand["y"], reduction="none")
        return after - before

    def loss(self, batch: Batch) -> Tensor:
        # 1. the incoming loss (its gradient defines the virtual update)
        loss = F.cross_entropy(self.logits(batch.x, batch.t), batch.y)
        cand = self.candidates()
        if cand is None:
            return loss
        # 2. score candidates by their loss increase under the virtual update; 3. replay the top ones
        scores = self.interference(loss, cand)
        top = scores.argsort(descending=True)[:int(self.hp.mem_batch_size)]
        return loss + F.cross_entropy(self.logits(cand["x"][top], cand["t"][top]), cand["y"][top])

    def after_step(self, batch: Batch) -> None:
        # 4. reservoir insertion of the incoming samples
        self.buffer.add(batch)

    def extra_state(self) -> dict:
        return {"buffer": self.buffer.state()}
