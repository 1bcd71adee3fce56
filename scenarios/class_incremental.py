"""Class-incremental split: the classes are divided into disjoint groups, one experience per group.

The model has one head over all classes seen so far; at test time the task id is hidden (the evaluator
never passes it). Class order: an explicit list, or a permutation drawn from the stream seed.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from clbench.errors import bad_value
from clbench.hparams import HP
from clbench.scenarios.common import check_stream
from clbench.stream import EvalTask, Experience, Stream, TensorSplit


def class_groups(n_classes: int, n_experiences: int, class_order: Optional[Sequence[int]], seed: int,
                 first_increment: Optional[int] = None) -> tuple[list[int], list[list[int]]]:
    """The class order and its split into experiences (equal increments, or a larger first one)."""
    if class_order is None:
        g = torch.Generator().manual_seed(int(seed))
        order = torch.randperm(n_classes, generator=g).tolist()
    else:
        order = [int(c) for c in class_order]
        if sorted(order) != list(range(n_classes)):
            raise bad_value("scenario.class_order", f"expected a permutation of 0..{n_classes - 1}, "
                              f"got {order}")
    if first_increment:
        rest = n_classes - int(first_increment)
        if n_experiences < 2 or rest % (n_experiences - 1) != 0:
            raise bad_value("scenario.first_increment", f"{n_classes} classes minus a first "
                              f"experience of {first_increment} do not split evenly into {n_experiences - 1} "
                              f"experiences")
        step = rest // (n_experiences - 1)
        sizes = [int(first_increment)] + [step] * (n_experiences - 1)
    else:
        if not isinstance(n_experiences, int) or n_experiences < 1 or n_classes % n_experiences != 0:
            raise bad_value("scenario.n_experiences", f"{n_classes} classes do not split evenly "
                              f"into {n_experiences} experiences (choose a divisor of {n_classes}, or set "
                              f"scenario.first_increment)")
        sizes = [n_classes // n_experiences] * n_experiences
    groups, start = [], 0
    for s in sizes:
        groups.append(order[start:start + s])
        start += s
    return order, groups


def split_by_classes(dataset, groups: list[list[int]], task_visible_at_test: bool) -> tuple[list, list]:
    """Experiences and evaluation tasks holding exactly the samples of each class group."""
    experiences, eval_tasks = [], []
    for i, classes in enumerate(groups):
        cls = torch.tensor(classes, device=dataset.y_train.device)
        tr = torch.isin(dataset.y_train, cls).nonzero().squeeze(1)
        te = torch.isin(dataset.y_test, cls).nonzero().squeeze(1)
        experiences.append(Experience(index=i, train=TensorSplit(dataset.x_train, dataset.y_train, tr, task=i),
                                      task_ids=[i], classes=sorted(classes),
                                      task_visible_at_test=task_visible_at_test))
        eval_tasks.append(EvalTask(task_id=i, test=TensorSplit(dataset.x_test, dataset.y_test, te, task=i),
                                   classes=sorted(classes)))
    return experiences, eval_tasks


class ClassIncremental:
    """Class-incremental: disjoint class groups per experience, task id hidden at test time."""

    setting = "class-il"
    task_visible_at_test = False
    hparams = {
        "n_experiences": HP(5, "experiences (class groups); must divide the number of classes", low=1),
        "class_order": HP(None, "explicit class order (a permutation of 0..C-1); null: drawn from the stream seed",
                          type=list, items=int, low=0),
        "first_increment": HP(None, "classes in the first experience (the rest split evenly)", type=int, low=1),
    }

    def __init__(self, n_experiences: int = 5, class_order: Optional[list] = None,
                 first_increment: Optional[int] = None):
        self.n_experiences = n_experiences
        self.class_order = class_order
        self.first_increment = first_increment

    def build(self, dataset, seed: int) -> Stream:
        order, groups = class_groups(dataset.n_classes, self.n_experiences, self.class_order, seed,
                                     self.first_increment)
        experiences, eval_tasks = split_by_classes(dataset, groups, self.task_visible_at_test)
        stream = Stream(name=type(self).__name__, experiences=experiences, eval_tasks=eval_tasks,
                        n_classes=dataset.n_classes, input_shape=tuple(dataset.input_shape), setting=self.setting,
                        description={"stream_seed": int(seed), "class_order": order,
                                     "dataset": dataset.describe()})
        return check_stream(stream)  # task id visible at test exactly when the setting is task-IL
