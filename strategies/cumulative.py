"""Cumulative training: at every experience, keep training the same model on the union of all the data
seen so far (every past sample is replayed; an unbounded-memory upper reference that, unlike `joint`,
learns incrementally and has a meaningful R row after every experience). As in Avalanche's
`Cumulative` strategy (avalanche/training/supervised/cumulative.py): the model is not re-initialised.
"""
from __future__ import annotations

import torch

from clbench.strategies.joint import union_split
from clbench.strategy import Strategy
from clbench.stream import Experience, TensorSplit


class Cumulative(Strategy):
    """Fine-tuning on the union of all experiences seen so far (no re-initialisation)."""

    description = "trains on the union of all experiences seen so far, continuing from the current model"
    hparams: dict = {}
    checkpoint_attrs = ("seen",)
    exemplar_attrs = ("seen",)       # the kept samples count as exemplars (memory accounting)
    seed_parallel = True    # seeds can train as one vectorised model (clbench/seed_parallel.py)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[dict] = []      # every experience's training data (x, y, t), kept by the strategy

    def before_experience(self, exp: Experience) -> None:
        # 1. keep this experience's data (the strategy's own copy)
        b = exp.train.get(torch.arange(len(exp.train), device=exp.train.device))
        self.seen.append({"x": b.x, "y": b.y, "t": b.t})

    def training_data(self, exp: Experience) -> TensorSplit:
        # 2. train on the union of everything seen so far, continuing from the current model
        return union_split(self.seen)

    def extra_state(self) -> dict:
        return {"stored_samples": sum(len(d["y"]) for d in self.seen)}
