"""The common evaluator: one row of the accuracy matrix per call, every strategy measured the same way.

Evaluation is batched under torch.inference_mode on the test tensors in place. The task id is passed
to the strategy only when the scenario makes it visible at test time (task-IL); in class- and
domain-IL the strategy never sees it. From the same logits the evaluator also records the task-IL
accuracy (logits masked to the task's classes) and per-class accuracy.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from clbench import metrics as M
from clbench.errors import ConfigError, bad_value
from clbench.strategy import Strategy
from clbench.stream import Stream


@dataclass
class EvalRow:
    acc: list[float]                   # one accuracy per evaluation task (the row of R)
    acc_task_masked: list[float]       # same, with logits masked to each task's classes (task-IL accuracy)
    per_class: dict[int, float] = field(default_factory=dict)
    n: list[int] = field(default_factory=list)   # test samples per evaluation task


class Evaluator:
    """Scores a strategy on one split of the stream's evaluation tasks: "test", or "val" (carved from training
    data by `eval.validation`). The strategy never receives the evaluator or its data: it is handed test inputs
    one minibatch at a time through `predict`, and the labels stay here."""

    def __init__(self, stream: Stream, batch_size: int = 1000, split: str = "test"):
        self.tasks = stream.eval_tasks if split == "test" else stream.val_tasks
        if not self.tasks:
            raise ConfigError(f"the stream has no {split} tasks to evaluate")
        self.split = split
        self.setting = stream.setting
        self.n_classes = stream.n_classes
        self.batch_size = int(batch_size)
        n_tasks = max(t.task_id for t in self.tasks) + 1
        self.masks = torch.zeros(n_tasks, stream.n_classes, dtype=torch.bool)
        for t in self.tasks:
            self.masks[t.task_id, t.classes] = True

    @torch.inference_mode()
    def evaluate(self, strategy: Strategy, model: Optional[torch.nn.Module] = None) -> EvalRow:
        """One row of R: accuracy on every task, with the strategy's own prediction rule, or with `model`
        (one of the strategy's `extra_models()`) through `strategy.predict_with`."""
        nets = [strategy.model, model if model is not None else strategy.eval_model()]
        modes = [(m, m.training) for n in nets for m in n.modules()]   # restored exactly (frozen BN stays frozen)
        for n in nets:
            n.eval()
        try:
            accs, masked_accs, sizes = [], [], []
            correct_c = torch.zeros(self.n_classes)
            total_c = torch.zeros(self.n_classes)
            for task in self.tasks:
                visible = task.task_id if self.setting == "task-il" else None
                mask = self.masks[task.task_id].to(strategy.device)
                n = correct = correct_masked = 0
                for batch in task.test.batches(self.batch_size, shuffle=False):
                    logits = (strategy.predict(batch.x, task_id=visible) if model is None
                              else strategy.predict_with(model, batch.x, task_id=visible))
                    pred = logits.argmax(1)
                    hit = pred == batch.y
                    pred_masked = logits.masked_fill(~mask, float("-inf")).argmax(1)
                    correct += int(hit.sum())
                    correct_masked += int((pred_masked == batch.y).sum())
                    n += len(batch.y)
                    y = batch.y.cpu()
                    total_c += torch.bincount(y, minlength=self.n_classes).float()
                    correct_c += torch.bincount(y[hit.cpu()], minlength=self.n_classes).float()
                accs.append(correct / max(n, 1))
                sizes.append(n)
                masked_accs.append(correct_masked / max(n, 1))
            per_class = {c: float(correct_c[c] / total_c[c]) for c in range(self.n_classes) if total_c[c] > 0}
            return EvalRow(acc=accs, acc_task_masked=masked_accs, per_class=per_class, n=sizes)
        finally:
            for m, was_training in modes:
                m.training = was_training


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


def load_reference(path, stream: Stream, cfg: dict) -> dict:
    """A joint-training reference run for intransigence (config `eval.reference`): its a*[j] per task.

    The reference must be a finished run of the same benchmark whose evaluation tasks hold the same
    classes, typically a cumulative/joint strategy; see metrics.reference_accuracy for how a* is read.
    """
    from clbench.results import load_result
    p = Path(path)
    file = p / "result.json" if p.is_dir() else p
    if not file.is_file():
        raise bad_value("eval.reference", f"{str(path)!r} is not a run folder with a result.json "
                          f"(give the folder of a finished joint-training run, or its result.json)")
    try:
        ref = load_result(file)
        ref_R, ref_stream = ref["accuracy_matrix"], ref["stream"]
    except (OSError, ValueError, KeyError) as e:
        raise bad_value("eval.reference", f"cannot read {file} ({type(e).__name__}: {e})") from None
    bench = cfg["benchmark"]["name"]
    if ref.get("config", {}).get("benchmark", {}).get("name") != bench:
        raise bad_value("eval.reference", f"{file} is a run of benchmark "
                          f"'{ref.get('config', {}).get('benchmark', {}).get('name')}', not '{bench}'")
    ref_classes = [list(t["classes"]) for t in ref_stream.get("eval_tasks", [])]
    classes = [list(t.classes) for t in stream.eval_tasks]
    if ref_classes != classes:
        raise bad_value("eval.reference", f"the evaluation tasks of {file} hold classes "
                          f"{ref_classes}, this run's hold {classes} (use the same stream seed / class order)")
    strat = ref.get("config", {}).get("strategy", {})
    final_only = strat.get("name") == "joint" and not strat.get("every_experience", False)
    a_star, kind = M.reference_accuracy(ref_R, ref_stream.get("learned_at"), final_row_only=final_only)
    return {"path": str(file.resolve()), "run_id": ref.get("run_id"),
            "strategy": ref.get("config", {}).get("strategy", {}).get("name"), "kind": kind, "accuracy": a_star}
