"""Small helpers shared by the built-in scenarios: seeds per purpose, subsets of splits, pixel maps,
and the checks every stream must pass."""
from __future__ import annotations

import hashlib
from typing import Optional

import torch
from torch import Tensor

from clbench.errors import bad_value
from clbench.stream import EvalTask, Experience, MixedSplit, Stream, TensorSplit

SETTINGS = ("class-il", "task-il", "domain-il")


def derive_seed(seed: int, *tags) -> int:
    """A seed for one purpose (e.g. the permutation of task 3) derived from the stream seed.

    Hashing (seed, tags) makes each draw independent of how many others are made: task 3's permutation
    is the same whether the stream has 5 or 20 tasks.
    """
    h = hashlib.sha256(repr((int(seed),) + tuple(tags)).encode()).digest()
    return int.from_bytes(h[:8], "little") & (2**63 - 1)


def generator(seed: int, *tags) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, *tags))


def take(split: TensorSplit, pos: Tensor) -> TensorSplit:
    """The samples of `split` at positions `pos`, as a view with the same tensors, task labels and transform."""
    pos = pos.to(split.device)
    if isinstance(split, MixedSplit):
        parts = []
        for k, part in enumerate(split.parts):
            lo, hi = int(split.offsets[k]), int(split.offsets[k + 1])
            local = pos[(pos >= lo) & (pos < hi)] - lo
            if len(local):
                parts.append(take(part, local))
        return mix(parts, like=split)
    return TensorSplit(split.x, split.y, split.indices[pos], split.t[pos], split.transform)


def mix(parts: list[TensorSplit], like: Optional[TensorSplit] = None) -> TensorSplit:
    """One split from several: a plain view when they share tensors and transform, else a MixedSplit."""
    parts = [p for p in parts if len(p) > 0]
    if not parts:
        return take(like, torch.zeros(0, dtype=torch.long)) if like is not None else None
    if all(p.x is parts[0].x and p.transform is parts[0].transform and not isinstance(p, MixedSplit)
           for p in parts):
        return TensorSplit.concat(parts) if len(parts) > 1 else parts[0]
    flat = []
    for p in parts:
        flat += p.parts if isinstance(p, MixedSplit) else [p]
    return MixedSplit(flat)


def random_subset(n: int, k: Optional[int], g: torch.Generator) -> Tensor:
    """k positions out of n drawn without replacement (all n, in order, when k is None or >= n)."""
    if k is None or k >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=g)[:k].sort().values


def check_positive_int(value, key: str, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise bad_value(f"scenario.{key}", f"expected an integer >= {minimum}, got {value!r}")
    return value


def check_stream(stream: Stream) -> Stream:
    """Invariants every scenario must satisfy; in particular the task id is visible at test time exactly
    when the setting is task-IL (the evaluator passes it only then)."""
    if stream.setting not in SETTINGS:
        raise ValueError(f"stream setting {stream.setting!r} is not one of {SETTINGS}")
    for e in stream.experiences:
        if e.task_visible_at_test != (stream.setting == "task-il"):
            raise ValueError(f"experience {e.index}: task_visible_at_test={e.task_visible_at_test} contradicts "
                             f"the {stream.setting} setting")
    ids = [t.task_id for t in stream.eval_tasks]
    if len(set(ids)) != len(ids):
        raise ValueError(f"evaluation task ids must be unique, got {ids}")
    return stream


class PixelMap:
    """A fixed map of pixel positions applied per batch: out[..., k] = x[..., src[k]], or 0 where src[k] < 0.

    Inputs (N, C, H, W) are mapped over H*W, the same for every channel; flat inputs (N, D) over D. The
    dtype is kept (uint8 stays uint8), so buffers stay compact and no transformed copy of the data exists.
    """

    def __init__(self, src: Tensor):
        self.src = src.long()
        self._index = self.src.clamp(min=0)
        # 0 where the pixel comes from outside the image (rotations), else 1; None when there is none
        self._keep = (self.src >= 0).to(torch.uint8) if bool((self.src < 0).any()) else None

    def __call__(self, x: Tensor) -> Tensor:
        flat = x.flatten(2) if x.dim() >= 3 else x.unsqueeze(1)
        if self._index.device != x.device:
            self._index = self._index.to(x.device)
            self._keep = None if self._keep is None else self._keep.to(x.device)
        # gather with an expanded index (and a multiply for blanks) is several times faster on CPU than
        # advanced indexing or masked_fill
        out = flat.gather(-1, self._index.expand(flat.shape))
        if self._keep is not None:
            out = out * self._keep.to(out.dtype)
        return out.reshape(x.shape)

    def digest(self) -> str:
        """A short fingerprint for the stream description (the map itself is re-derived from the seed)."""
        return hashlib.sha1(self.src.cpu().numpy().tobytes()).hexdigest()[:12]


class ArrivalOrderSplit(TensorSplit):
    """An online split: samples arrive in one fixed order (drawn from the stream seed when the stream is
    built), so `batches()` yields them in that order whatever `shuffle` says. With train.epochs=1 (which
    online streams require) every sample is seen exactly once, in small arriving batches."""

    arrival_order = True   # position p is the (p+1)-th sample training consumes (anytime exposure relies on it)

    def batches(self, batch_size: int, shuffle: bool = True, generator: Optional[torch.Generator] = None):
        return super().batches(batch_size, shuffle=False)


def pixel_map_stream(name: str, dataset, seed: int, maps: list["PixelMap"], train_samples_per_task: Optional[int],
                     description: dict) -> Stream:
    """A domain-incremental stream: task i is the whole dataset seen through pixel map i (a permutation,
    a rotation), one shared label space, the task id hidden at test time."""
    classes = sorted(torch.unique(dataset.y_train).tolist())
    experiences, eval_tasks = [], []
    for i, pm in enumerate(maps):
        # GEM/A-GEM use a random subset of the training set per task; None keeps all of it.
        idx = random_subset(len(dataset.y_train), train_samples_per_task, generator(seed, "subset", i))
        train = TensorSplit(dataset.x_train, dataset.y_train, idx.to(dataset.y_train.device), task=i, transform=pm)
        test = TensorSplit(dataset.x_test, dataset.y_test, task=i, transform=pm)
        experiences.append(Experience(index=i, train=train, task_ids=[i], classes=classes, task_visible_at_test=False))
        eval_tasks.append(EvalTask(task_id=i, test=test, classes=classes))
    return check_stream(Stream(
        name=name, experiences=experiences, eval_tasks=eval_tasks, n_classes=dataset.n_classes,
        input_shape=tuple(dataset.input_shape), setting="domain-il",
        description={"stream_seed": int(seed), "dataset": dataset.describe(), **description,
                     "train_samples_per_task": train_samples_per_task}))
