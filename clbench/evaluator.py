"""The common evaluator: one row of the accuracy matrix per call, every strategy measured the same way.

Evaluation is batched under torch.inference_mode on the test tensors in place. The task id is passed
to the strategy only when the scenario makes it visible at test time (task-IL); in class- and
domain-IL the strategy never sees it. From the same logits the evaluator also records the task-IL
accuracy (logits masked to the task's classes) and per-class accuracy.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from clbench.strategy import Strategy
from clbench.stream import Stream


@dataclass
class EvalRow:
    acc: list[float]                   # one accuracy per evaluation task (the row of R)
    acc_task_masked: list[float]       # same, with logits masked to each task's classes (task-IL accuracy)
    per_class: dict[int, float] = field(default_factory=dict)


class Evaluator:
    def __init__(self, stream: Stream, batch_size: int = 1000):
        self.stream = stream
        self.batch_size = int(batch_size)
        n_tasks = max(t.task_id for t in stream.eval_tasks) + 1
        self.masks = torch.zeros(n_tasks, stream.n_classes, dtype=torch.bool)
        for t in stream.eval_tasks:
            self.masks[t.task_id, t.classes] = True

    @torch.inference_mode()
    def evaluate(self, strategy: Strategy) -> EvalRow:
        model, eval_model = strategy.model, strategy.eval_model()
        was_training = model.training
        model.eval(), eval_model.eval()
        try:
            accs, masked_accs = [], []
            correct_c = torch.zeros(self.stream.n_classes)
            total_c = torch.zeros(self.stream.n_classes)
            for task in self.stream.eval_tasks:
                visible = task.task_id if self.stream.setting == "task-il" else None
                mask = self.masks[task.task_id].to(strategy.device)
                n = correct = correct_masked = 0
                for batch in task.test.batches(self.batch_size, shuffle=False):
                    logits = strategy.predict(batch.x, task_id=visible)
                    pred = logits.argmax(1)
                    hit = pred == batch.y
                    pred_masked = logits.masked_fill(~mask, float("-inf")).argmax(1)
                    correct += int(hit.sum())
                    correct_masked += int((pred_masked == batch.y).sum())
                    n += len(batch.y)
                    y = batch.y.cpu()
                    total_c += torch.bincount(y, minlength=self.stream.n_classes).float()
                    correct_c += torch.bincount(y[hit.cpu()], minlength=self.stream.n_classes).float()
                accs.append(correct / max(n, 1))
                masked_accs.append(correct_masked / max(n, 1))
            per_class = {c: float(correct_c[c] / total_c[c]) for c in range(self.stream.n_classes) if total_c[c] > 0}
            return EvalRow(acc=accs, acc_task_masked=masked_accs, per_class=per_class)
        finally:
            if was_training:
                model.train()
