"""PackNet: several tasks packed into one network by iterative pruning.

Mallya & Lazebnik (2018), "PackNet: Adding Multiple Tasks to a Single Network by Iterative Pruning",
CVPR 2018, arXiv:1711.05769. Follows the authors' code (arunmallya/packnet src/prune.py `SparsePruner`,
src/main.py):

    every weight of the shared layers has an owner: 0 (free) or the task that kept it
    for task k (k = 1, 2, ...):
        the free weights become task k's                                        (make_finetuning_mask)
        train for train.epochs; only task k's weights (and, for k = 1 only, biases) change
        prune: in each layer, of task k's weights the `prune` fraction with the smallest |w|
               is set to 0 and freed                                            (pruning_mask, by kthvalue)
        retrain task k's remaining weights for post_prune_epochs; freed weights stay 0
    predict task k: weights owned by tasks 1..k only (free ones and later tasks' set to 0)     (apply_mask)

Shared layers are every Linear/Conv2d weight except the classifier; the classifier's rows are the task
heads (task-IL: a task's logits are its classes' rows), so a row belongs to its class's task and is never
pruned, as the authors' separate per-task classifiers. Old tasks' weights never change: their gradients
are zeroed (authors) and, so that momentum, Adam or weight decay cannot move them either, they are written
back after every optimizer step.

`prune` is one fraction for every task, one per task, or null: an equal share of the capacity for each of
the T tasks (task k keeps 1/(T - k + 1) of the weights still free, i.e. prunes 1 - 1/(T - k + 1); the last
task prunes nothing). The authors prune a fixed fraction per added task (e.g. 0.75, then 0.5 ...).

Deviations: the pruning phase runs inside the experience: `train.epochs` of training, then
`post_prune_epochs` more after pruning (the authors run them as separate scripts with their own lr
schedule; here the optimizer and lr carry on). Batch-norm statistics are not frozen per task (the
authors' ImageNet networks keep BN frozen; clbench's MLPs have none).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from clbench.errors import ConfigError, PluginError, bad_value
from clbench.hparams import HP
from clbench.strategy import Strategy
from clbench.stream import Batch, Experience


class PackNet(Strategy):
    """PackNet: prune each task's weights by magnitude, retrain, freeze; one mask (owner id) per weight."""

    description = "PackNet: per-task magnitude pruning and retraining; disjoint weight masks, old weights frozen"
    paper = ("Mallya & Lazebnik 2018, PackNet: Adding Multiple Tasks to a Single Network by Iterative Pruning, "
             "CVPR, arXiv:1711.05769")
    code = "arunmallya/packnet src/prune.py"
    settings = ("task-il",)
    hparams = {
        "prune": HP(None, "fraction of a task's weights pruned after training: one number, one per task, or null "
                          "(an equal share of the capacity per task)", type=(float, list), items=float, low=0,
                    high=1),
        "post_prune_epochs": HP(1, "epochs retraining the kept weights after pruning", low=0),
    }
    checkpoint_attrs = ("owner", "task_order", "pruned")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        head = getattr(self.model, "classifier", None)
        if not isinstance(head, nn.Linear):
            raise ConfigError("strategy 'packnet' needs a model whose task heads are a Linear 'classifier'")
        self.head = {id(head.weight): "weight", **({id(head.bias): "bias"} if head.bias is not None else {})}
        self.shared = {n: p for n, p in self.model.named_parameters()
                       if p.dim() > 1 and id(p) not in self.head}
        if not self.shared:
            raise ConfigError("strategy 'packnet' found no shared Linear/Conv weights to prune")
        prune = self.hp.prune
        if isinstance(prune, list) and len(prune) != self.info.n_experiences:
            raise bad_value("strategy.prune", f"expected one fraction per task ({self.info.n_experiences}), "
                                              f"got {len(prune)}")
        # owner of every shared weight: 0 = free, j = the j-th task learned
        self.owner = {n: torch.zeros_like(p, dtype=torch.int16) for n, p in self.shared.items()}
        self.task_order: list[int] = []
        self.pruned = False                       # has the current task been pruned yet
        self.train_epochs = int(self.train_cfg["epochs"])
        # the loop runs train.epochs, then post_prune_epochs after pruning
        self.train_cfg = {**self.train_cfg, "epochs": self.train_epochs + int(self.hp.post_prune_epochs)}
        self._frozen: dict[str, Tensor] | None = None
        self._masks: dict[str, Tensor] | None = None     # trainable(), with _frozen: fixed until ownership changes

    # ----- ownership --------------------------------------------------------------------------------
    @property
    def level(self) -> int:
        """Owner id of the task being learned."""
        return len(self.task_order)

    def task_mask(self, j: int) -> dict[str, Tensor]:
        """The weights owned by the j-th task learned (1-based)."""
        return {n: o == j for n, o in self.owner.items()}

    def trainable(self) -> dict[str, Tensor]:
        """Per parameter, the entries the current task may change."""
        classes = torch.tensor(self.task_classes.get(self.current_task, []), dtype=torch.long, device=self.device)
        out = {}
        for n, p in self.model.named_parameters():
            if n in self.owner:
                out[n] = self.owner[n] == self.level
            elif id(p) in self.head:                       # the current task's rows of the classifier
                m = torch.zeros(p.shape[0], dtype=torch.bool, device=p.device)
                m[classes] = True
                out[n] = m.view(-1, *([1] * (p.dim() - 1))).expand_as(p)
            else:                                          # biases and other 1-D parameters: first task only
                out[n] = torch.full_like(p, self.level == 1, dtype=torch.bool)
        return out

    def prune_fraction(self) -> float:
        k, T = self.level, self.info.n_experiences
        if self.hp.prune is None:
            return 1.0 - 1.0 / max(T - k + 1, 1)
        return float(self.hp.prune[k - 1] if isinstance(self.hp.prune, list) else self.hp.prune)

    # ----- the algorithm ----------------------------------------------------------------------------
    def before_experience(self, exp: Experience) -> None:
        # 1. the free weights become this task's
        t = int(exp.task_id)
        if t in self.task_order:
            raise PluginError(f"strategy 'packnet' cannot return to task {t}: its weights are frozen")
        self.task_order.append(t)
        for o in self.owner.values():
            o[o == 0] = self.level
        self.pruned = False
        self._frozen = None

    def loss(self, batch: Batch) -> Tensor:
        # 3. after train.epochs: prune once, then the remaining epochs retrain the kept weights
        if self.loop is not None and self.loop["epoch"] >= self.train_epochs and not self.pruned:
            self.prune()
        return super().loss(batch)

    @torch.no_grad()
    def prune(self) -> None:
        """Free the smallest-magnitude fraction of the current task's weights in each layer, set them to 0."""
        q = self.prune_fraction()
        for n, p in self.shared.items():
            mine = self.owner[n] == self.level
            k = round(q * int(mine.sum()))
            if k == 0:
                continue
            cutoff = p[mine].abs().kthvalue(k).values
            drop = mine & (p.abs() <= cutoff)
            self.owner[n][drop] = 0
            p[drop] = 0.0
        self.pruned = True
        self._frozen = None

    def after_backward(self, batch: Batch) -> None:
        # 2. only the current task's weights learn (authors: make_grads_zero); remember the frozen values
        if self._frozen is None:   # again after each change of ownership (a new task, the pruning)
            self._frozen = {n: p.detach().clone() for n, p in self.model.named_parameters()}
            self._masks = self.trainable()
        for n, p in self.model.named_parameters():
            if p.grad is not None:
                p.grad.mul_(self._masks[n])

    @torch.no_grad()
    def after_step(self, batch: Batch) -> None:
        # everything else is written back, so no optimizer state or decay can move it
        for n, p in self.model.named_parameters():
            p.copy_(torch.where(self._masks[n], p, self._frozen[n]))

    def after_experience(self, exp: Experience) -> None:
        if not self.pruned:                                # post_prune_epochs = 0: prune without retraining
            self.prune()

    # ----- prediction -------------------------------------------------------------------------------
    def masked_weights(self, task_id: int) -> dict[str, Tensor]:
        """The network of a task: weights of the tasks learned up to it; free and later weights zeroed."""
        level = self.task_order.index(task_id) + 1 if task_id in self.task_order else self.level
        out = {}
        for n, p in self.model.named_parameters():
            out[n] = p * ((self.owner[n] > 0) & (self.owner[n] <= level)) if n in self.owner else p
        return out

    def predict(self, x: Tensor, task_id=None) -> Tensor:
        """Task-IL: the task's network (its and earlier tasks' weights), masked to its head. Without a task id
        (never in task-IL evaluation): the whole network, unmasked."""
        if task_id is None:
            return self.model(x)
        from torch.func import functional_call
        logits = functional_call(self.model, self.masked_weights(int(task_id)), (x,))
        return self.mask_logits(logits, torch.full((len(x),), int(task_id), dtype=torch.long, device=x.device))

    def extra_state(self) -> dict:
        total = sum(o.numel() for o in self.owner.values())
        per_task = {str(t): int(sum(int((o == j + 1).sum()) for o in self.owner.values()))
                    for j, t in enumerate(self.task_order)}
        return {"weights_per_task": per_task, "free": int(sum(int((o == 0).sum()) for o in self.owner.values())),
                "shared_weights": total}
