"""Blurry class-incremental streams, optionally online (single pass, small arriving batches).

Blurry-M (Bang et al. 2021, Rainbow Memory) and i-Blurry-N-M (Koh et al. 2022, CLIB): each experience
has its own "major" classes (the class-incremental groups), but task boundaries are blurred. A fraction
`disjoint_ratio` (N) of each experience's classes is never blurred (i-Blurry's disjoint classes; 0 gives
Blurry-M); of every other (blurry) class a fraction `blur` (M) of its training samples is blurred:

- `blur_mode: pooled` (default; the official i-Blurry splits, `naver-ai/i-Blurry` `collections/`): the
  blurred samples of all blurry classes form one pool, shuffled and cut into T equal parts, one per
  experience, the home experience included. So a fraction M(T-1)/T of a blurry class leaves home on
  average, and every experience receives |pool|/T blurred samples. M = 1 is allowed: every sample of a
  blurry class is spread evenly over the stream (with N = 0, an i.i.d. stream).
- `blur_mode: moved` (clbench's v1 rule): exactly M of each blurry class leaves home, each moved sample
  going to one of the other experiences uniformly at random (M < 1).

Within an experience the samples arrive in a uniformly random order, as in the official split files (new
classes are not held back within a task). Evaluation: one task per class group, task id hidden (class-IL).

Online (`online: true`): every experience's samples arrive in one fixed order drawn from the stream
seed, and the strategy sees them once, in minibatches of train.batch_size (the arriving batch size): the
stream yields them in arrival order and the engine refuses train.epochs other than 1.
"""
from __future__ import annotations

from typing import Optional

import torch

from clbench.errors import bad_value
from clbench.scenarios.class_incremental import class_groups, split_by_classes
from clbench.scenarios.common import ArrivalOrderSplit, check_positive_int, check_stream, generator
from clbench.stream import Experience, Stream, TensorSplit


BLUR_MODES = ("pooled", "moved")


def blurry_assignment(y: torch.Tensor, groups: list[list[int]], blur: float, disjoint: set, g: torch.Generator,
                      mode: str = "pooled") -> tuple[list[torch.Tensor], list[int]]:
    """Training indices of every experience (the home samples of its classes that stay home, plus the
    blurred samples it receives; see the module docstring for the two modes), and how many blurred
    samples each experience receives."""
    n = len(groups)
    members: list[list[torch.Tensor]] = [[] for _ in range(n)]
    received = [0] * n
    pool = []
    for home, classes in enumerate(groups):
        for c in classes:
            idx = (y == c).nonzero().squeeze(1)
            idx = idx[torch.randperm(len(idx), generator=g)]
            k = 0 if (c in disjoint or n == 1) else int(round(blur * len(idx)))
            members[home].append(idx[k:])
            if mode == "pooled":
                pool.append(idx[:k])
            elif k:
                # each moved sample goes to one of the other experiences, uniformly
                dest = torch.randint(0, n - 1, (k,), generator=g)
                dest = dest + (dest >= home).long()
                for e in range(n):
                    members[e].append(idx[:k][dest == e])
                    received[e] += int((dest == e).sum())
    if mode == "pooled" and pool:
        pool = torch.cat(pool)
        pool = pool[torch.randperm(len(pool), generator=g)]
        for e, part in enumerate(torch.tensor_split(pool, n)):   # sizes differ by at most one
            members[e].append(part)
            received[e] = len(part)
    return [torch.cat(m) for m in members], received


class Blurry:
    """Class-incremental with blurry boundaries (Blurry-M / i-Blurry-N-M), optionally online."""

    setting = "class-il"

    def __init__(self, n_experiences: int = 5, class_order: Optional[list] = None, blur: float = 0.1,
                 disjoint_ratio: float = 0.0, online: bool = False, blur_mode: str = "pooled"):
        if blur_mode not in BLUR_MODES:
            raise bad_value("scenario.blur_mode", f"{blur_mode!r}; valid choices: "
                              f"{', '.join(BLUR_MODES)}")
        if isinstance(blur, bool) or not isinstance(blur, (int, float)) or not 0 <= blur <= 1:
            raise bad_value("scenario.blur", f"expected a fraction in [0, 1], got {blur!r}")
        if blur_mode == "moved" and blur == 1:
            raise bad_value("scenario.blur", "1 leaves nothing of a blurry class at home with "
                              "blur_mode=moved (use blur_mode=pooled, the official rule, for a uniform split)")
        if not isinstance(disjoint_ratio, (int, float)) or not 0 <= disjoint_ratio <= 1:
            raise bad_value("scenario.disjoint_ratio", f"expected a fraction in [0, 1], "
                              f"got {disjoint_ratio!r}")
        self.n_experiences = check_positive_int(n_experiences, "n_experiences")
        self.class_order = class_order
        self.blur, self.disjoint_ratio, self.online = float(blur), float(disjoint_ratio), bool(online)
        self.blur_mode = blur_mode

    def build(self, dataset, seed: int) -> Stream:
        order, groups = class_groups(dataset.n_classes, self.n_experiences, self.class_order, seed)
        # the first N% of each experience's classes (in class order) stay disjoint
        disjoint = {c for grp in groups for c in grp[:int(round(self.disjoint_ratio * len(grp)))]}
        y = dataset.y_train.cpu()
        g = generator(seed, "blurry")
        split_cls = ArrivalOrderSplit if self.online else TensorSplit
        members, received = blurry_assignment(y, groups, self.blur, disjoint, g, self.blur_mode)
        experiences, class_counts = [], []
        for i, idx in enumerate(members):
            idx = idx[torch.randperm(len(idx), generator=g)]      # the arrival order
            train = split_cls(dataset.x_train, dataset.y_train, idx.to(dataset.y_train.device), task=i)
            experiences.append(Experience(index=i, train=train, task_ids=[i], classes=train.classes(),
                                          task_visible_at_test=False))
            cls, cnt = torch.unique(y[idx], return_counts=True)
            class_counts.append({str(c): int(k) for c, k in zip(cls.tolist(), cnt.tolist())})
        _, eval_tasks = split_by_classes(dataset, groups, task_visible_at_test=False)
        description = {"stream_seed": int(seed), "class_order": order, "dataset": dataset.describe(),
                       "blur": self.blur, "blur_mode": self.blur_mode, "disjoint_ratio": self.disjoint_ratio,
                       "disjoint_classes": sorted(disjoint), "online": self.online, "class_counts": class_counts,
                       "blurred_received": received}     # blurred samples each experience receives
        if self.online:
            description["train_requirements"] = {"epochs": 1}  # single pass; checked by the engine
        return check_stream(Stream(name="blurry", experiences=experiences, eval_tasks=eval_tasks,
                                   n_classes=dataset.n_classes, input_shape=tuple(dataset.input_shape),
                                   setting=self.setting, description=description))
