"""Cumulative training: at every experience, keep training the same model on the union of all the data
seen so far (every past sample is replayed; an unbounded-memory upper reference that, unlike `joint`,
learns incrementally and has a meaningful R row after every experience). As in Avalanche's
`Cumulative` strategy (avalanche/training/supervised/cumulative.py): the model is not re-initialised.
"""
from __future__ import annotations

from clbench.strategies.joint import union_experience
from clbench.strategy import Strategy
from clbench.stream import Experience


class Cumulative(Strategy):
    """Fine-tuning on the union of all experiences seen so far (no re-initialisation)."""

    description = "trains on the union of all experiences seen so far, continuing from the current model"
    defaults: dict = {}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[Experience] = []

    def train(self, exp: Experience) -> None:
        self.seen.append(exp)
        super().train(union_experience(self.seen))

    def extra_state(self) -> dict:
        return {"stored_samples": sum(len(e.train) for e in self.seen)}
