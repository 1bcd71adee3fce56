"""Joint training: the upper bound that sees every experience's data at once (i.i.d. over the union).

How it fits the experience-by-experience engine: the engine still hands over one experience at a time
and evaluates after each, so R keeps its T rows. Joint training only stores each experience's split (a
view, no copy) and trains when the last experience arrives, on the union of all of them, for
`train.epochs` epochs of shuffled minibatches. This is Mammoth's JOINT (the model is trained once, at
the last task). The rows of R before the last are therefore the untrained model: only the last row
(ACC) is the upper bound; BWT/forgetting of `joint` are not meaningful.

`strategy.every_experience=true` instead re-initialises the model and trains on the union of the
experiences seen so far after every experience, so each row i of R is the joint upper bound of the
prefix 0..i (quadratic cost in the number of experiences).
"""
from __future__ import annotations

import copy

from clbench.strategy import Strategy
from clbench.stream import Experience, MixedSplit, TensorSplit


def union_split(parts: list[TensorSplit]) -> TensorSplit:
    """One view over several splits (index concatenation when they share tensors and transform)."""
    base = parts[0]
    if all(p.x is base.x and p.transform is base.transform and type(p) is TensorSplit for p in parts):
        return TensorSplit.concat(parts)
    return MixedSplit(parts)


def union_experience(exps: list[Experience]) -> Experience:
    """An experience holding the training data of all of `exps` (index of the last one)."""
    last = exps[-1]
    return Experience(index=last.index, train=union_split([e.train for e in exps]),
                      task_ids=sorted({t for e in exps for t in e.task_ids}),
                      classes=sorted({c for e in exps for c in e.classes}),
                      task_visible_at_test=last.task_visible_at_test, kind="joint")


class Joint(Strategy):
    """Joint training on the union of all experiences (upper bound)."""

    description = "upper bound: trains once on the union of all experiences (at the last experience)"
    defaults = {
        "every_experience": False,   # true: re-init and train on the union seen so far after every experience
    }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[Experience] = []
        self.initial_state = copy.deepcopy(self.model.state_dict())
        self.trained_at: list[int] = []

    def train(self, exp: Experience) -> None:
        # 1. keep the experience (a view of the data, not a copy)
        self.seen.append(exp)
        last = exp.index == self.info.n_experiences - 1
        if not (last or self.hp.every_experience):
            return
        # 2. from the initial weights, i.i.d. training on the union of everything seen
        self.model.load_state_dict(self.initial_state)
        self.optimizer = self.make_optimizer()
        super().train(union_experience(self.seen))
        self.trained_at.append(exp.index)

    def extra_state(self) -> dict:
        return {"trained_at_experiences": self.trained_at,
                "union_size": sum(len(e.train) for e in self.seen)}
