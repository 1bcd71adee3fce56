"""The strategy contract: train on one experience at a time, predict given inputs (and the task id only
where the scenario permits it).

A strategy overrides a few small hooks named after what happens; the loop itself lives here once:

    train(exp):
        before_experience(exp)
        for each epoch, for each minibatch:
            loss(batch) -> backward -> after_backward(batch) -> optimizer step -> after_step(batch)
        after_experience(exp)

`predict(x, task_id)` returns logits; the evaluator calls it under inference mode and never passes a
task id in class- or domain-incremental settings.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clbench.stream import Batch, Experience


@dataclass
class StreamInfo:
    """What a strategy may know about the stream up front (no data, no future experiences)."""
    name: str
    setting: str                      # class-il, task-il, domain-il
    n_classes: int
    n_experiences: int
    task_classes: dict[int, list[int]]
    input_shape: tuple


class Params(dict):
    """Hyper-parameters with attribute access: self.hp.buffer_size."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"strategy has no hyper-parameter '{key}'") from None


def make_optimizer(params, train_cfg: dict) -> torch.optim.Optimizer:
    name, lr = train_cfg.get("optimizer", "sgd"), float(train_cfg["lr"])
    wd = float(train_cfg.get("weight_decay", 0.0))
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=float(train_cfg.get("momentum", 0.0)), weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    raise ValueError(f"unknown optimizer {name!r}")


class Strategy:
    """Base class: plain fine-tuning. Subclasses override hooks, not the loop."""

    description = "fine-tuning (base class)"
    defaults: dict = {}
    # Settings this strategy supports; the engine refuses other combinations with a clear message.
    settings: tuple[str, ...] = ("class-il", "task-il", "domain-il")

    def __init__(self, model: nn.Module, params: dict, train_cfg: dict, info: StreamInfo,
                 device: torch.device, seed: int = 0):
        self.model = model.to(device)
        self.hp = Params(params)
        self.train_cfg = train_cfg
        self.info = info
        self.device = device
        # CPU generator: minibatch order and buffer sampling are reproducible on any device.
        self.generator = torch.Generator().manual_seed(seed)
        self.optimizer = self.make_optimizer()
        self.experience: Optional[Experience] = None
        # Task-IL heads: row t masks the logits to task t's classes.
        self.class_mask = torch.zeros(max(info.task_classes, default=0) + 1, info.n_classes, dtype=torch.bool,
                                      device=device)
        for t, classes in info.task_classes.items():
            self.class_mask[t, classes] = True
        self.step_callback = None   # set by the engine (progress bar, anytime evaluation)
        self.experience_step = 0    # steps taken in the current experience (named if the loss turns non-finite)

    # ----- the loop -------------------------------------------------------------------------------
    def train(self, exp: Experience) -> None:
        self.experience = exp
        self.experience_step = 0
        if self.train_cfg.get("reset_optimizer", True) and exp.index > 0:
            self.optimizer = self.make_optimizer()
        self.model.train()
        self.before_experience(exp)
        for _ in range(int(self.train_cfg["epochs"])):
            for batch in exp.train.batches(int(self.train_cfg["batch_size"]), shuffle=True,
                                           generator=self.generator):
                loss = self.train_step(batch)
                if self.step_callback is not None:
                    self.step_callback(self, loss, len(batch.y))   # stream samples of this step
        self.after_experience(exp)

    def train_step(self, batch: Batch) -> Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(batch)
        self.experience_step += 1
        if not bool(torch.isfinite(loss.detach()).all()):
            # Fail the run: a NaN/inf loss poisons the weights and every result written after it.
            exp = self.experience.index if self.experience is not None else "?"
            raise RuntimeError(f"strategy {type(self).__name__} produced a non-finite training loss "
                               f"({float(loss.detach().sum())}) in experience {exp}, step {self.experience_step}; "
                               f"the run is stopped (lower train.lr or check the strategy's hyper-parameters)")
        loss.backward()
        self.after_backward(batch)
        self.optimizer.step()
        self.after_step(batch)
        return loss.detach()

    # ----- hooks (override these) -----------------------------------------------------------------
    def before_experience(self, exp: Experience) -> None:
        """Called before the first minibatch of an experience."""

    def loss(self, batch: Batch) -> Tensor:
        """The loss of one minibatch (cross-entropy by default)."""
        return F.cross_entropy(self.forward(batch.x, batch.t), batch.y)

    def after_backward(self, batch: Batch) -> None:
        """Gradients are in .grad; change them here (projection, clipping)."""

    def after_step(self, batch: Batch) -> None:
        """Parameters were updated (EMA models, buffer insertion)."""

    def after_experience(self, exp: Experience) -> None:
        """Called after the last minibatch of an experience (consolidation, buffer update)."""

    def after_evaluation(self, evaluator) -> None:
        """Called after each row of R is measured (e.g. to score extra models, as CLS-ER does)."""

    # ----- prediction ----------------------------------------------------------------------------
    @property
    def task_aware(self) -> bool:
        return self.info.setting == "task-il"

    def mask_logits(self, logits: Tensor, t: Tensor) -> Tensor:
        """Keep only the logits of each sample's task (multi-head task-IL)."""
        return logits.masked_fill(~self.class_mask[t], torch.finfo(logits.dtype).min)

    def forward(self, x: Tensor, t: Optional[Tensor] = None) -> Tensor:
        """Training forward pass: logits, masked to the task's head when the setting is task-IL."""
        logits = self.model(x)
        return self.mask_logits(logits, t) if (self.task_aware and t is not None) else logits

    def predict(self, x: Tensor, task_id: Optional[int] = None) -> Tensor:
        """Logits for evaluation. `task_id` is given only in task-IL."""
        logits = self.eval_model()(x)
        if task_id is not None:
            t = torch.full((len(x),), int(task_id), dtype=torch.long, device=x.device)
            logits = self.mask_logits(logits, t)
        return logits

    def eval_model(self) -> nn.Module:
        """The network used for evaluation (e.g. the stable EMA model in CLS-ER)."""
        return self.model

    def make_optimizer(self) -> torch.optim.Optimizer:
        return make_optimizer(self.model.parameters(), self.train_cfg)

    # ----- reporting ------------------------------------------------------------------------------
    def extra_state(self) -> dict:
        """Numbers for result.json (buffer size and bytes, basis sizes, ...)."""
        return {}
