"""Joint training: the upper bound that sees every experience's data at once (i.i.d. over the union).

How it fits the experience-by-experience engine: the engine still hands over one experience at a time
and evaluates after each, so R keeps its T rows. Joint training keeps each experience's training data (the
strategy only ever receives the current experience, so it stores its own copy) and trains when the last
experience arrives, on the union of all of them, for
`train.epochs` epochs of shuffled minibatches. This is Mammoth's JOINT (the model is trained once, at
the last task). The rows of R before the last are therefore the untrained model: only the last row
(ACC) is the upper bound; BWT/forgetting of `joint` are not meaningful.

`strategy.every_experience=true` instead re-initialises the model and trains on the union of the
experiences seen so far after every experience, so each row i of R is the joint upper bound of the
prefix 0..i (quadratic cost in the number of experiences).
"""
from __future__ import annotations

import copy
from typing import Optional

import torch

from clbench.hparams import HP
from clbench.strategy import Strategy
from clbench.stream import Experience, TensorSplit


def union_split(kept: list[dict]) -> TensorSplit:
    """One training split over the samples a strategy kept ({"x", "y", "t"} per experience)."""
    return TensorSplit(torch.cat([d["x"] for d in kept]), torch.cat([d["y"] for d in kept]),
                       task=torch.cat([d["t"] for d in kept]))


class Joint(Strategy):
    """Joint training on the union of all experiences (upper bound)."""

    description = "upper bound: trains once on the union of all experiences (at the last experience)"
    hparams = {
        "every_experience": HP(False, "re-initialise and train on the union seen so far after every experience"),
    }
    checkpoint_attrs = ("seen", "trained_at")
    exemplar_attrs = ("seen",)       # the kept samples count as exemplars (memory accounting)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[dict] = []      # every experience's training data, kept by the strategy
        self.initial_state = copy.deepcopy(self.model.state_dict())
        self.trained_at: list[int] = []

    def before_experience(self, exp: Experience) -> None:
        # 1. keep the experience's data
        b = exp.train.get(torch.arange(len(exp.train), device=exp.train.device))
        self.seen.append({"x": b.x, "y": b.y, "t": b.t})
        # 2. at the last experience (or every one): back to the initial weights and a fresh optimizer
        if self.trains_now(exp):
            self.model.load_state_dict(self.initial_state)
            self.optimizer = self.make_optimizer()
            self.trained_at.append(exp.index)

    def trains_now(self, exp: Experience) -> bool:
        return exp.index == self.info.n_experiences - 1 or bool(self.hp.every_experience)

    def training_data(self, exp: Experience) -> Optional[TensorSplit]:
        # 3. i.i.d. training on the union of everything seen (nothing before the last experience)
        return union_split(self.seen) if self.trains_now(exp) else None

    def extra_state(self) -> dict:
        return {"trained_at_experiences": self.trained_at,
                "union_size": sum(len(d["y"]) for d in self.seen)}
