"""Anytime evaluation: the common evaluation, run during training as well as between experiences."""
from __future__ import annotations

import time
from typing import Optional

import torch

from clbench import metrics as M
from clbench.evaluator import Evaluator
from clbench.strategy import Strategy


class AnytimeEvaluator:
    """Anytime evaluation (config `eval.every_steps`): the same evaluation, every N training steps.

    It gives the accuracy curve over training steps (its area is `anytime_acc_auc`, as i-Blurry's A_AUC)
    and, for each task, its learning curve within the experience that introduces it (accuracy versus
    steps, from the row before that experience to the row after it). Evaluation touches no random state
    and leaves BatchNorm statistics alone (eval mode), so it does not change training.
    """

    def __init__(self, evaluator: Evaluator, every_steps: int, learned_at: list[int]):
        self.evaluator, self.every, self.learned_at = evaluator, int(every_steps), list(learned_at)
        self.step = 0                  # global training step (minibatches so far)
        self.exp = -1                  # index of the experience being trained
        self.step_in_exp = 0
        self.points: list[dict] = []   # periodic evaluations
        self.boundaries: list[dict] = []  # the rows of R, with the step at which they were taken
        self.eval_s = 0.0

    def start_experience(self, exp_index: int) -> None:
        self.exp, self.step_in_exp = int(exp_index), 0

    def after_step(self, strategy: Strategy) -> Optional[dict]:
        """Count one training step; evaluate (and return the point) every N steps."""
        self.step += 1
        self.step_in_exp += 1
        if self.every <= 0 or self.step % self.every:
            return None
        t0 = time.perf_counter()
        row = self.evaluator.evaluate(strategy)
        if strategy.device.type == "cuda":
            torch.cuda.synchronize(strategy.device)
        self.eval_s += time.perf_counter() - t0
        point = {"step": self.step, "experience": self.exp, "step_in_experience": self.step_in_exp,
                 "accuracy": row.acc, "acc_seen": M.acc_seen(row.acc, self.learned_at, self.exp)}
        self.points.append(point)
        return point

    def add_row(self, row_index: int, acc: list[float]) -> None:
        """A row of R (row_index -1: before training), taken at the current step."""
        self.boundaries.append({"row": int(row_index), "step": self.step, "step_in_experience": self.step_in_exp,
                                "accuracy": list(acc)})

    def result(self) -> dict:
        """The `anytime` entry of result.json."""
        curves = {}
        by_row = {b["row"]: b for b in self.boundaries}
        for j, e in enumerate(self.learned_at):
            before, after = by_row.get(e - 1), by_row.get(e)
            xs, ys = ([0], [before["accuracy"][j]]) if before is not None else ([], [])
            for p in self.points:
                if p["experience"] == e:
                    xs.append(p["step_in_experience"]), ys.append(p["accuracy"][j])
            if after is not None and (not xs or after["step_in_experience"] != xs[-1]):
                xs.append(after["step_in_experience"]), ys.append(after["accuracy"][j])
            curves[str(j)] = {"experience": e, "step_in_experience": xs, "accuracy": ys}
        acc_seen = [p["acc_seen"] for p in self.points]
        return {
            "every_steps": self.every,
            "step": [p["step"] for p in self.points],
            "experience": [p["experience"] for p in self.points],
            "step_in_experience": [p["step_in_experience"] for p in self.points],
            "accuracy": [p["accuracy"] for p in self.points],   # point x evaluation task
            "acc_seen": acc_seen,                                # mean over tasks introduced so far
            "auc": M.anytime_auc(acc_seen),
            "row_steps": [b["step"] for b in self.boundaries],  # global step of each row of R (init first)
            "learning_curves": curves,                           # per task, within its own experience
            "eval_s": self.eval_s,
        }
