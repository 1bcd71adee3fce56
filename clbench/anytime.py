"""Anytime evaluation: the common evaluation, run during training as well as between experiences.

As in the official i-Blurry code (Koh et al. 2022, `naver-ai/i-Blurry`: `main.py` evaluates every
`eval_period` = 100 stream samples; `methods/er_baseline.py` `online_evaluate` keeps the test samples whose
class is in `exposed_classes`, the classes met in the stream so far, and `evaluation` pools correct
predictions over them), by default (`eval.anytime_accuracy=exposed`):

- **spacing in stream samples** (`eval.every_samples=N`): a point is taken after the training step that
  makes the number of stream samples consumed so far (replay samples not counted) reach a multiple of N;
  each point records that number (`samples`). `eval.every_steps=N` spaces points in training steps instead.
- **exposed from the stream itself**: a class counts as exposed from the first stream sample of it that
  training has consumed, whatever experience brings it (blurry samples included). Where one class
  belongs to several evaluation tasks (domain-IL: every permuted task holds every class) the unit is the
  evaluation task instead of the class: a task is exposed from its first stream sample.
- **sample-pooled**: accuracy at a point = correct predictions / test samples, over the test samples of
  the exposed units.

The position of a sample in the stream is known exactly where the scenario fixes the arrival order
(`split.arrival_order`, online streams); in a shuffled experience every unit present in it counts as
exposed from its first step. `eval.anytime_accuracy=seen_tasks` is clbench's earlier rule: the mean over
evaluation tasks, each weighing equally, of the tasks whose introducing experience has started.

Evaluation touches no random state and leaves BatchNorm statistics alone (eval mode), so it does not
change training.
"""
from __future__ import annotations

import time
from typing import Optional

import torch

from clbench import metrics as M
from clbench.errors import bad_value
from clbench.evaluator import EvalRow, Evaluator
from clbench.strategy import Strategy
from clbench.stream import Stream

def check_config(cfg: dict) -> tuple[int, int, str]:
    """(every_samples, every_steps, accuracy rule) from the config's eval section (types are checked by the
    declarations in clbench.config); ConfigError when both spacings are set."""
    ev = cfg["eval"]
    samples, steps = int(ev.get("every_samples") or 0), int(ev.get("every_steps") or 0)
    if samples and steps:
        raise bad_value("eval.every_steps", f"anytime points are spaced either in stream samples "
                                            f"(eval.every_samples={samples}) or in training steps, not both; set one "
                                            f"of them to 0")
    return samples, steps, ev.get("anytime_accuracy") or "exposed"


def exposure_units(stream: Stream, tasks: list) -> tuple[str, dict, dict]:
    """How exposure is counted on this stream: ("class", test samples per class, first exposure of each
    class) or ("task", test samples per evaluation task, first exposure of each task). A first exposure is
    (experience index, position of the first sample of that unit within the experience's arrival order)."""
    owners: dict[int, int] = {}
    for t in tasks:
        for c in t.classes:
            owners[c] = owners.get(c, 0) + 1
    kind = "class" if all(k == 1 for k in owners.values()) else "task"
    n_test: dict[int, int] = {}
    for t in tasks:
        if kind == "class":
            y = t.test.y[t.test.indices].cpu()
            for c, k in zip(*torch.unique(y, return_counts=True)):
                n_test[int(c)] = n_test.get(int(c), 0) + int(k)
        else:
            n_test[t.task_id] = len(t.test)
    first: dict[int, tuple[int, int]] = {}
    for e in stream.experiences:
        split = e.train
        if getattr(split, "arrival_order", False):       # the order in which training consumes the samples
            labels = (split.y[split.indices] if kind == "class" else split.t).cpu()
            units, pos = _first_positions(labels)
        else:
            units = split.classes() if kind == "class" else sorted(split.task_counts())
            pos = [0] * len(units)
        for u, p in zip(units, pos):
            first.setdefault(int(u), (e.index, int(p)))
    return kind, n_test, first


def _first_positions(labels: torch.Tensor) -> tuple[list[int], list[int]]:
    """The distinct labels of a sequence and the position of the first occurrence of each."""
    units, inverse = torch.unique(labels, return_inverse=True)
    pos = torch.full((len(units),), len(labels), dtype=torch.long)
    pos.scatter_reduce_(0, inverse, torch.arange(len(labels)), reduce="amin")
    return units.tolist(), pos.tolist()


class AnytimeEvaluator:
    """Evaluation points during training (config `eval.every_samples` / `eval.every_steps`).

    It gives the accuracy curve over the stream (its mean is `anytime_acc_auc`, i-Blurry's A_AUC) and,
    for each task, its learning curve within the experience that introduces it (accuracy versus steps,
    from the row before that experience to the row after it).
    """

    def __init__(self, evaluator: Evaluator, every_samples: int = 0, every_steps: int = 0,
                 accuracy: str = "exposed"):
        self.evaluator, self.stream = evaluator, evaluator.stream
        self.every_samples, self.every_steps, self.rule = int(every_samples), int(every_steps), accuracy
        self.learned_at = self.stream.learned_rows()
        self.unit, self.n_test, self.first = exposure_units(self.stream, evaluator.tasks)
        # exposure within an experience depends on how many of its samples were consumed (online streams)
        self.needs_positions = any(getattr(e.train, "arrival_order", False) for e in self.stream.experiences)
        self.step = 0                  # global training step (minibatches so far)
        self.samples = 0               # stream samples consumed so far
        self.exp = -1                  # index of the experience being trained
        self.step_in_exp = 0
        self.samples_at_start = 0      # stream samples consumed before the current experience
        self.exposed_at: dict[int, int] = {}   # unit -> stream samples consumed when it was first exposed
        self.points: list[dict] = []   # periodic evaluations
        self.boundaries: list[dict] = []  # the rows of R, with the step at which they were taken
        self.eval_s = 0.0

    @classmethod
    def from_config(cls, evaluator: Evaluator, cfg: dict) -> Optional["AnytimeEvaluator"]:
        samples, steps, rule = check_config(cfg)
        return cls(evaluator, samples, steps, rule) if samples or steps else None

    # what a checkpoint keeps (the rest is rebuilt from the stream and the config)
    PROGRESS = ("step", "samples", "exp", "step_in_exp", "samples_at_start", "exposed_at", "points", "boundaries",
                "eval_s")

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.PROGRESS}

    def load_state_dict(self, state: dict) -> None:
        for k in self.PROGRESS:
            setattr(self, k, state[k])

    def start_experience(self, exp_index: int) -> None:
        self.exp, self.step_in_exp, self.samples_at_start = int(exp_index), 0, self.samples

    def after_step(self, strategy: Strategy, n_samples: Optional[int]) -> Optional[dict]:
        """Count one training step that consumed `n_samples` stream samples; evaluate (and return the point)
        when the spacing says so."""
        if n_samples is None:     # a training loop of its own that does not count stream samples
            if self.every_samples or (self.rule == "exposed" and self.needs_positions):
                raise RuntimeError(f"strategy {type(strategy).__name__} runs its own training loop and did not report "
                                   f"the stream samples of a step (step_callback(strategy, loss, n_samples)); anytime "
                                   f"evaluation by samples or on an online stream needs them (use eval.every_steps)")
            n_samples = 0
        before = self.samples
        self.step += 1
        self.step_in_exp += 1
        self.samples += int(n_samples)
        self._expose()
        if self.every_samples:
            due = self.samples // self.every_samples > before // self.every_samples
        else:
            due = self.step % self.every_steps == 0
        if not due:
            return None
        t0 = time.perf_counter()
        row = self.evaluator.evaluate(strategy)
        if strategy.device.type == "cuda":
            torch.cuda.synchronize(strategy.device)
        self.eval_s += time.perf_counter() - t0
        point = {"step": self.step, "samples": self.samples, "experience": self.exp,
                 "step_in_experience": self.step_in_exp, "accuracy": row.acc, "acc_seen": self.accuracy(row)}
        self.points.append(point)
        return point

    def _expose(self) -> None:
        if len(self.exposed_at) == len(self.first):
            return
        consumed = self.samples - self.samples_at_start
        for u, (e, pos) in self.first.items():
            if u not in self.exposed_at and (e < self.exp or (e == self.exp and pos < consumed)):
                # the global sample count at which unit u first arrived
                self.exposed_at[u] = self.samples_at_start + pos + 1 if e == self.exp else self.samples_at_start

    def exposed(self) -> list[int]:
        return sorted(self.exposed_at)

    def accuracy(self, row: EvalRow) -> Optional[float]:
        """The point's value under the configured rule."""
        if self.rule == "seen_tasks":
            return M.acc_seen(row.acc, self.learned_at, self.exp)
        if self.unit == "class":
            acc = {c: row.per_class.get(c, 0.0) for c in self.n_test}
        else:
            acc = {t.task_id: a for t, a in zip(self.evaluator.tasks, row.acc)}
        return M.anytime_accuracy(acc, self.n_test, [u for u in self.exposed() if u in self.n_test])

    def add_row(self, row_index: int, acc: list[float]) -> None:
        """A row of R (row_index -1: before training), taken at the current step."""
        self.boundaries.append({"row": int(row_index), "step": self.step, "samples": self.samples,
                                "step_in_experience": self.step_in_exp, "accuracy": list(acc)})

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
            "every_samples": self.every_samples or None,
            "every_steps": self.every_steps or None,
            "accuracy_rule": self.rule,                          # exposed | seen_tasks
            "unit": self.unit,                                   # what "exposed" counts: class | task
            "exposed_at": {str(u): s for u, s in sorted(self.exposed_at.items())},  # unit -> samples consumed
            "step": [p["step"] for p in self.points],
            "samples": [p["samples"] for p in self.points],      # stream samples consumed at each point
            "experience": [p["experience"] for p in self.points],
            "step_in_experience": [p["step_in_experience"] for p in self.points],
            "accuracy": [p["accuracy"] for p in self.points],   # point x evaluation task
            "acc_seen": acc_seen,                                # the curve under the rule
            "auc": M.anytime_auc(acc_seen),
            "row_steps": [b["step"] for b in self.boundaries],  # global step of each row of R (init first)
            "row_samples": [b["samples"] for b in self.boundaries],
            "learning_curves": curves,                           # per task, within its own experience
            "eval_s": self.eval_s,
        }
