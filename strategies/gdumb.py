"""GDumb: greedy class-balanced sampler + a learner retrained from scratch on the memory only.

Prabhu, Torr, Dokania (2020), "GDumb: A Simple Approach that Questions Our Progress in Continual
Learning", ECCV 2020.

    for each sample (x, y) of the stream:                      # greedy sampler
        if memory not full: store it
        elif class y holds less than capacity / n_seen_classes: evict a random sample of the largest class, store it
        else: drop it
    whenever a prediction is needed (here: after every experience):
        re-initialise the network; train it on the memory alone for `train.epochs` epochs

The learner sees the stream only through the memory. The paper also uses SGDR, cutmix and many epochs on
CIFAR; here the schedule is the benchmark's `train` section (set `train.epochs` higher for GDumb; the
paper's MNIST runs train to convergence). Logits of classes not yet in memory are masked at prediction, as
in the paper's inference on the classes seen so far.
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import Tensor

from clbench.buffer import make_buffer
from clbench.hparams import HP
from clbench.strategy import Strategy
from clbench.stream import Experience, TensorSplit


class GDumb(Strategy):
    """GDumb: greedy class-balanced memory, model retrained from scratch on it after every experience."""

    description = "GDumb: greedy class-balanced memory; retrains from scratch on the memory only"
    paper = "Prabhu, Torr, Dokania 2020, GDumb: A Simple Approach that Questions Our Progress in CL, ECCV"
    code = "drimpossible/GDumb"
    hparams = {
        "buffer_size": HP(500, "memory size (GDumb reports MNIST with k = 300..4400)", low=1),
    }
    checkpoint_attrs = ("buffer", "retrained")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.buffer = make_buffer("class_balanced", self.hp.buffer_size, self.device, self.generator,
                                  minimum=1, within_class="drop")
        self.initial_state = copy.deepcopy(self.model.state_dict())
        self.retrained = 0

    def before_experience(self, exp: Experience) -> None:
        # 1. greedy class-balanced sampling of the experience, in stream order (shuffled minibatches)
        for batch in exp.train.batches(int(self.train_cfg["batch_size"]), shuffle=True, generator=self.generator):
            self.buffer.add(batch)
        # 2. from scratch: initial weights, fresh optimizer
        self.model.load_state_dict(self.initial_state)
        self.optimizer = self.make_optimizer()
        self.retrained += 1

    def training_data(self, exp: Experience) -> TensorSplit:
        # 3. train on the memory alone
        mem = self.buffer.contents()
        return TensorSplit(mem["x"], mem["y"], task=mem["t"])

    def predict(self, x: Tensor, task_id: Optional[int] = None) -> Tensor:
        logits = super().predict(x, task_id)
        in_memory = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
        in_memory[self.buffer.labels[self.buffer.labels >= 0].unique().to(logits.device)] = True
        return logits.masked_fill(~in_memory, torch.finfo(logits.dtype).min)

    def extra_state(self) -> dict:
        return {"buffer": self.buffer.state(), "retrained": self.retrained}
