"""Blurry class-incremental streams, optionally online (single pass, small arriving batches).

Blurry-M (Bang et al. 2021, Rainbow Memory) and i-Blurry-N-M (Koh et al. 2022, CLIB): each experience
has its own "major" classes (the class-incremental groups), but task boundaries are blurred: a fraction
`blur` (M) of every blurry class's training samples is moved to other experiences, spread uniformly over
them, so each experience also holds a few samples of other experiences' classes. A fraction
`disjoint_ratio` (N) of each experience's classes is never blurred (i-Blurry's disjoint classes;
0 gives Blurry-M). Evaluation: one task per class group, task id hidden (class-IL).

This keeps i-Blurry's class mixing but not its staggered arrival of new classes within a task.

Online (`online: true`): every experience's samples arrive in one fixed order drawn from the stream
seed, and the strategy sees them once, in minibatches of train.batch_size (the arriving batch size): the
stream yields them in arrival order and the engine refuses train.epochs other than 1.
"""
from __future__ import annotations

from typing import Optional

import torch

from clbench.config import ConfigError
from clbench.scenarios.class_incremental import class_groups, split_by_classes
from clbench.scenarios.common import ArrivalOrderSplit, check_positive_int, check_stream, generator
from clbench.stream import Experience, Stream, TensorSplit


def blurry_assignment(y: torch.Tensor, groups: list[list[int]], blur: float, disjoint: set, g: torch.Generator
                      ) -> list[torch.Tensor]:
    """Training indices of every experience: home samples of its classes, plus samples moved from the
    blurry classes of the others (a fraction `blur` of each blurry class, spread uniformly)."""
    n = len(groups)
    members: list[list[torch.Tensor]] = [[] for _ in range(n)]
    for home, classes in enumerate(groups):
        for c in classes:
            idx = (y == c).nonzero().squeeze(1)
            idx = idx[torch.randperm(len(idx), generator=g)]
            moved = 0 if (c in disjoint or n == 1) else int(round(blur * len(idx)))
            members[home].append(idx[moved:])
            if moved:
                # each moved sample goes to one of the other experiences, uniformly
                dest = torch.randint(0, n - 1, (moved,), generator=g)
                dest = dest + (dest >= home).long()
                for k in range(n):
                    members[k].append(idx[:moved][dest == k])
    return [torch.cat(m) for m in members]


class Blurry:
    """Class-incremental with blurry boundaries (Blurry-M / i-Blurry-N-M), optionally online."""

    setting = "class-il"

    def __init__(self, n_experiences: int = 5, class_order: Optional[list] = None, blur: float = 0.1,
                 disjoint_ratio: float = 0.0, online: bool = False):
        if not isinstance(blur, (int, float)) or not 0 <= blur < 1:
            raise ConfigError(f"bad value for 'scenario.blur': expected a fraction in [0, 1), got {blur!r}")
        if not isinstance(disjoint_ratio, (int, float)) or not 0 <= disjoint_ratio <= 1:
            raise ConfigError(f"bad value for 'scenario.disjoint_ratio': expected a fraction in [0, 1], "
                              f"got {disjoint_ratio!r}")
        self.n_experiences = check_positive_int(n_experiences, "n_experiences")
        self.class_order = class_order
        self.blur, self.disjoint_ratio, self.online = float(blur), float(disjoint_ratio), bool(online)

    def build(self, dataset, seed: int) -> Stream:
        order, groups = class_groups(dataset.n_classes, self.n_experiences, self.class_order, seed)
        # the first N% of each experience's classes (in class order) stay disjoint
        disjoint = {c for grp in groups for c in grp[:int(round(self.disjoint_ratio * len(grp)))]}
        y = dataset.y_train.cpu()
        g = generator(seed, "blurry")
        split_cls = ArrivalOrderSplit if self.online else TensorSplit
        experiences, class_counts = [], []
        for i, idx in enumerate(blurry_assignment(y, groups, self.blur, disjoint, g)):
            idx = idx[torch.randperm(len(idx), generator=g)]      # the arrival order
            train = split_cls(dataset.x_train, dataset.y_train, idx.to(dataset.y_train.device), task=i)
            experiences.append(Experience(index=i, train=train, task_ids=[i], classes=train.classes(),
                                          task_visible_at_test=False))
            cls, cnt = torch.unique(y[idx], return_counts=True)
            class_counts.append({str(c): int(k) for c, k in zip(cls.tolist(), cnt.tolist())})
        _, eval_tasks = split_by_classes(dataset, groups, task_visible_at_test=False)
        description = {"stream_seed": int(seed), "class_order": order, "dataset": dataset.describe(),
                       "blur": self.blur, "disjoint_ratio": self.disjoint_ratio, "disjoint_classes": sorted(disjoint),
                       "online": self.online, "class_counts": class_counts}
        if self.online:
            description["train_requirements"] = {"epochs": 1}  # single pass; checked by the engine
        return check_stream(Stream(name="blurry", experiences=experiences, eval_tasks=eval_tasks,
                                   n_classes=dataset.n_classes, input_shape=tuple(dataset.input_shape),
                                   setting=self.setting, description=description))
