"""Stream and experience types: the contract between scenarios, strategies and the evaluator.

Data stays as tensors (on the target device) in the dataset's native dtype; an experience holds an
index view into them, never a copy. Minibatches are index slices.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Sequence

import torch
from torch import Tensor

# A per-task transform applied to a raw batch (e.g. a pixel permutation). It maps raw inputs to raw
# inputs of the same dtype, so buffers can keep samples compact.
Transform = Callable[[Tensor], Tensor]


@dataclass
class Batch:
    x: Tensor          # inputs, native dtype (the model's first layer normalises)
    y: Tensor          # global class labels
    t: Tensor          # task label of every sample
    index: Tensor      # positions of these samples in their experience's split (for per-sample state)


class TensorSplit:
    """A view of (x, y) tensors restricted to `indices`, with an optional per-task transform.

    Several splits share the same base tensors; only the index vector is per split.
    """

    arrival_order = False   # True for an online split: training consumes it in order, never shuffled

    def __init__(self, x: Tensor, y: Tensor, indices: Optional[Tensor] = None, task: int | Tensor = 0,
                 transform: Optional[Transform] = None):
        if indices is None:
            indices = torch.arange(len(y), device=y.device)
        self.x, self.y = x, y
        self.indices = indices.to(y.device)
        if isinstance(task, Tensor):
            self.t = task.to(y.device)
        else:
            self.t = torch.full((len(self.indices),), int(task), dtype=torch.long, device=y.device)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def device(self) -> torch.device:
        return self.y.device

    def get(self, pos: Tensor) -> Batch:
        """Samples at positions `pos` (0..len-1) of this split."""
        idx = self.indices[pos]
        x = self.x[idx]
        if self.transform is not None:
            x = self.transform(x)
        return Batch(x=x, y=self.y[idx], t=self.t[pos], index=pos)

    def batches(self, batch_size: int, shuffle: bool = True,
                generator: Optional[torch.Generator] = None) -> Iterator[Batch]:
        n = len(self)
        if shuffle:
            order = torch.randperm(n, generator=generator).to(self.device)
        else:
            order = torch.arange(n, device=self.device)
        for start in range(0, n, batch_size):
            yield self.get(order[start:start + batch_size])

    def n_batches(self, batch_size: int) -> int:
        return (len(self) + batch_size - 1) // batch_size

    def classes(self) -> list[int]:
        return sorted(torch.unique(self.y[self.indices]).tolist())

    def task_counts(self) -> dict[int, int]:
        """Number of samples per task label (the composition of a mixed experience)."""
        ids, counts = torch.unique(self.t, return_counts=True)
        return {int(i): int(c) for i, c in zip(ids.tolist(), counts.tolist())}

    @staticmethod
    def concat(parts: Sequence["TensorSplit"]) -> "TensorSplit":
        """Concatenate splits over the same base tensors (and transform) into one view."""
        base = parts[0]
        for p in parts[1:]:
            if p.x is not base.x or p.transform is not base.transform:
                raise ValueError("TensorSplit.concat needs splits over the same tensors and transform; "
                                 "use MixedSplit for splits with different transforms")
        return TensorSplit(base.x, base.y, torch.cat([p.indices for p in parts]),
                           torch.cat([p.t for p in parts]), base.transform)


class MixedSplit(TensorSplit):
    """Several splits with possibly different transforms (e.g. permuted tasks), seen as one split."""

    def __init__(self, parts: Sequence[TensorSplit]):
        self.parts = list(parts)
        self.offsets = torch.tensor([0] + [len(p) for p in self.parts]).cumsum(0)
        self.t = torch.cat([p.t for p in self.parts])
        self.y = self.parts[0].y
        self.x = self.parts[0].x
        self.transform = None
        self.indices = torch.arange(int(self.offsets[-1]), device=self.parts[0].device)

    def get(self, pos: Tensor) -> Batch:
        which = torch.bucketize(pos.cpu(), self.offsets[1:], right=True)
        xs, ys, order = [], [], []
        for k in torch.unique(which).tolist():
            sel = (which == k).nonzero().squeeze(1)
            b = self.parts[k].get((pos.cpu()[sel] - self.offsets[k]).to(self.device))
            xs.append(b.x), ys.append(b.y), order.append(sel)
        order = torch.cat(order).to(self.device)
        inv = torch.empty_like(order)
        inv[order] = torch.arange(len(order), device=self.device)
        return Batch(x=torch.cat(xs)[inv], y=torch.cat(ys)[inv], t=self.t[pos], index=pos)

    def classes(self) -> list[int]:
        return sorted(set().union(*[p.classes() for p in self.parts]))


@dataclass
class Experience:
    """One step of the stream: what a strategy trains on, and what it is allowed to know."""
    index: int
    train: TensorSplit
    task_ids: list[int]            # task label(s) present in this experience
    classes: list[int]             # classes present in the training data
    task_visible_at_test: bool     # False in class-/domain-IL: predictions get no task id
    kind: str = "new"              # "new" task, or "rehearsal" phase of earlier tasks (power-law streams)

    @property
    def task_id(self) -> int:
        return self.task_ids[0]

    def sealed(self) -> "Experience":
        """The experience as a strategy receives it: its training data copied out of the dataset (transforms
        applied), so no attribute leads to other samples, future experiences or evaluation data."""
        n = len(self.train)
        b = self.train.get(torch.arange(n, device=self.train.device))
        data = TensorSplit(b.x.clone(), b.y.clone(), task=b.t.clone())
        data.arrival_order = self.train.arrival_order
        return Experience(index=self.index, train=data, task_ids=list(self.task_ids), classes=list(self.classes),
                          task_visible_at_test=self.task_visible_at_test, kind=self.kind)


@dataclass
class EvalTask:
    """Test data of one evaluation task (a column of the accuracy matrix)."""
    task_id: int
    test: TensorSplit
    classes: list[int]


@dataclass
class Stream:
    """Ordered experiences plus the evaluation tasks and a description for result.json."""
    name: str                                  # scenario name
    experiences: list[Experience]
    eval_tasks: list[EvalTask]
    n_classes: int
    input_shape: tuple[int, ...]
    setting: str                               # "class-il", "task-il" or "domain-il"
    description: dict = field(default_factory=dict)
    # Row of R at which each evaluation task counts as "just learned" (default: its own experience).
    learned_at: Optional[list[int]] = None
    # Validation tasks (eval.validation > 0): the same columns as eval_tasks, over held-out training samples.
    val_tasks: list[EvalTask] = field(default_factory=list)

    def __iter__(self) -> Iterator[Experience]:
        return iter(self.experiences)

    def __len__(self) -> int:
        return len(self.experiences)

    @property
    def columns(self) -> list[EvalTask]:
        """The evaluation tasks that define R's columns: the test tasks, or the validation tasks (the same
        columns) when the run never touches test data (eval.test=false)."""
        return self.eval_tasks or self.val_tasks

    @property
    def task_classes(self) -> dict[int, list[int]]:
        return {t.task_id: t.classes for t in self.columns}

    def learned_rows(self) -> list[int]:
        if self.learned_at is not None:
            return list(self.learned_at)
        return list(range(len(self.columns)))

    # ----- the first-k protocol (config `first_experiences`; clbench tune protocol=first-k) -----------------
    def prefix(self, k: int) -> "Stream":
        """The stream cut after its first k experiences: those experiences, and the evaluation (and validation)
        tasks learned within them (R's columns), so metrics are those of a k-experience stream."""
        if not 1 <= k <= len(self.experiences):
            raise ValueError(f"a prefix of {k} experiences of a {len(self.experiences)}-experience stream")
        L = self.learned_rows()
        keep = [j for j, row in enumerate(L) if row < k]
        pick = lambda tasks: [tasks[j] for j in keep] if tasks else []   # noqa: E731
        learned = [L[j] for j in keep]
        out = Stream(name=self.name, experiences=self.experiences[:k], eval_tasks=pick(self.eval_tasks),
                     n_classes=self.n_classes, input_shape=self.input_shape, setting=self.setting,
                     description={**self.description, "first_experiences": {"k": k, "of": len(self.experiences)}},
                     learned_at=None if learned == list(range(len(keep))) else learned,
                     val_tasks=pick(self.val_tasks))
        for attr in ("dataset", "loaded_dataset"):
            if hasattr(self, attr):
                setattr(out, attr, getattr(self, attr))
        return out

    def describe(self) -> dict:
        """The stream description stored in result.json."""
        d = {
            "scenario": self.name,
            "setting": self.setting,
            "n_experiences": len(self.experiences),
            "n_eval_tasks": len(self.columns),
            "n_classes": self.n_classes,
            "learned_at": self.learned_rows(),
            "experiences": [
                {
                    "index": e.index,
                    "kind": e.kind,
                    "task_ids": list(e.task_ids),
                    "classes": list(e.classes),
                    "n_train": len(e.train),
                    "samples_per_task": {str(k): v for k, v in e.train.task_counts().items()},
                }
                for e in self.experiences
            ],
            "eval_tasks": [
                {"task_id": t.task_id, "classes": list(t.classes), "n_test": len(t.test)}
                for t in self.eval_tasks
            ],
        }
        if self.val_tasks:
            d["val_tasks"] = [{"task_id": t.task_id, "classes": list(t.classes), "n_val": len(t.test)}
                              for t in self.val_tasks]
        d.update(self.description)
        return d
