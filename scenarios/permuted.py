"""Permuted MNIST-style domain-incremental stream: every task applies its own fixed pixel permutation to
the same images; all tasks share one label space (a single 10-way head), and the task id is hidden at test.

Construction (GPM and HLOP, dataloader/pmnist.py): every task is permuted, task 1 included; OWM keeps
task 1 unpermuted (`keep_first_unpermuted=true`). Each permutation is drawn from the stream seed and the
task index, so it is fixed per task and the same for any number of tasks.

The permutation is a per-batch transform of the split (`TensorSplit.transform`): the stream holds one copy
of the images, not one per task, and a replay buffer stores the permuted uint8 samples it was shown.
"""
from __future__ import annotations

from typing import Optional

import torch

from clbench.hparams import HP
from clbench.scenarios.common import PixelMap, check_positive_int, generator, pixel_map_stream
from clbench.stream import Stream


def permutation(n_pixels: int, seed: int, task: int) -> torch.Tensor:
    """The pixel permutation of `task`, fixed by the stream seed."""
    return torch.randperm(n_pixels, generator=generator(seed, "permuted", task))


class Permuted:
    """Domain-incremental permuted inputs: one fixed pixel permutation per task, one shared head."""

    setting = "domain-il"

    hparams = {
        "n_experiences": HP(10, "tasks, each with its own fixed pixel permutation (seeded by the stream seed)", low=1),
        "keep_first_unpermuted": HP(False, "task 1 unpermuted (OWM's variant); false: every task permuted (GPM)"),
        "train_samples_per_task": HP(None, "a random subset of the training set per task (GEM: 1000); null: all",
                                     type=int, low=1),
    }

    def __init__(self, n_experiences: int = 10, keep_first_unpermuted: bool = False,
                 train_samples_per_task: Optional[int] = None):
        self.n_experiences = check_positive_int(n_experiences, "n_experiences")
        self.keep_first_unpermuted = bool(keep_first_unpermuted)
        self.train_samples_per_task = (None if train_samples_per_task is None else
                                       check_positive_int(train_samples_per_task, "train_samples_per_task"))

    def build(self, dataset, seed: int) -> Stream:
        shape = tuple(dataset.input_shape)
        n_pixels = shape[-1] * shape[-2] if len(shape) >= 2 else shape[0]
        maps, described = [], []
        for i in range(self.n_experiences):
            identity = i == 0 and self.keep_first_unpermuted
            maps.append(PixelMap(torch.arange(n_pixels) if identity else permutation(n_pixels, seed, i)))
            described.append({"task": i, "identity": identity, "sha1": maps[-1].digest()})
        return pixel_map_stream("permuted", dataset, seed, maps, self.train_samples_per_task,
                                {"permutations": described})
