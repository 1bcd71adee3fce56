"""The common evaluator: one row of the accuracy matrix per call, every strategy measured the same way.

Evaluation is batched under torch.inference_mode on the test tensors in place. The task id is passed
to the strategy only when the scenario makes it visible at test time (task-IL); in class- and
domain-IL the strategy never sees it. From the same logits the evaluator also records the task-IL
accuracy (logits masked to the task's classes) and per-class accuracy.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from clbench import metrics as M
from clbench.errors import ConfigError, PluginError, bad_value
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
        self.stream = stream
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
                    if not (isinstance(logits, torch.Tensor) and logits.shape == (len(batch.y), self.n_classes)):
                        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
                        raise PluginError(f"strategy '{type(strategy).__name__}' ({type(strategy).__module__}): hook "
                                          f"predict(x, task_id) must return logits of shape (batch, n_classes) = "
                                          f"({len(batch.y)}, {self.n_classes}), got {got}")
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
