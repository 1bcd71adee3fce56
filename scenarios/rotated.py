"""Rotated MNIST-style domain-incremental stream: task t shows every image rotated by a fixed angle;
one shared label space, task id hidden at test.

As in GEM (Lopez-Paz & Ranzato 2017, data/mnist_rotations.py): the angle of task t is drawn uniformly in
the t-th of n equal slices of `angle_range` ([0, 180) degrees in GEM; `angle_draw=uniform`: every angle uniform over the whole range,
as Mammoth's rot-mnist), and images are rotated
counter-clockwise about their centre by PIL's `Image.rotate` (nearest neighbour, zero fill). Explicit
`angles` override the draw.

Per batch, not precomputed: nearest-neighbour rotation is a fixed map of pixel positions, so it is built
once per task by rotating an image of pixel indices with PIL (hence identical to PIL's result) and then
applied to each minibatch as an index gather (`PixelMap`), exactly as cheap as a permutation. Precomputing
would hold one rotated copy of the training set per task (20 x 47 MB of uint8 for MNIST in GEM's protocol)
for no speed gain.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from clbench.errors import ConfigError, bad_value
from clbench.hparams import HP
from clbench.scenarios.common import PixelMap, check_positive_int, generator, pixel_map_stream
from clbench.stream import Stream


def rotation_map(height: int, width: int, angle: float) -> torch.Tensor:
    """Source pixel of every output pixel under PIL's nearest-neighbour rotation (-1: outside the image)."""
    from PIL import Image

    ids = np.arange(1, height * width + 1, dtype=np.int32).reshape(height, width)
    rotated = np.asarray(Image.fromarray(ids).rotate(float(angle), resample=Image.NEAREST))
    return torch.from_numpy(rotated.astype(np.int64).reshape(-1) - 1)


def gem_angles(n: int, lo: float, hi: float, seed: int) -> list[float]:
    """Task t's angle uniform in [lo + t (hi-lo)/n, lo + (t+1) (hi-lo)/n), from the stream seed."""
    out = []
    for t in range(n):
        u = torch.rand(1, generator=generator(seed, "rotated", t), dtype=torch.float64).item()
        out.append(lo + (t + u) * (hi - lo) / n)
    return out


def uniform_angles(n: int, lo: float, hi: float, seed: int) -> list[float]:
    """Every task's angle uniform in [lo, hi), independently (Mammoth's rot-mnist), from the stream seed."""
    return [lo + (hi - lo) * torch.rand(1, generator=generator(seed, "rotated-uniform", t), dtype=torch.float64).item()
            for t in range(n)]


class Rotated:
    """Domain-incremental rotated inputs: one fixed rotation angle per task, one shared head."""

    setting = "domain-il"

    hparams = {
        "n_experiences": HP(None, "tasks (default 10; with explicit angles: their number)", type=int, low=1),
        "angles": HP(None, "explicit rotation angle (degrees) per task; null: drawn from the stream seed",
                     type=list, items=float),
        "angle_range": HP([0.0, 180.0], "[low, high) of the drawn angles (degrees)", type=list, items=float),
        "train_samples_per_task": HP(None, "a random subset of the training set per task (GEM: 1000); null: all",
                                     type=int, low=1),
        "angle_draw": HP("slices", "slices: task t's angle uniform in the t-th of n equal slices (GEM); uniform: "
                                   "every angle uniform over the whole range (Mammoth)", choices=("slices", "uniform")),
    }

    def __init__(self, n_experiences: Optional[int] = None, angles: Optional[list] = None,
                 angle_range: tuple = (0.0, 180.0), train_samples_per_task: Optional[int] = None,
                 angle_draw: str = "slices"):
        if angle_draw not in ("slices", "uniform"):
            raise bad_value("scenario.angle_draw", f"expected slices (GEM) or uniform (Mammoth), "
                              f"got {angle_draw!r}")
        self.angle_draw = angle_draw
        if angles is not None:
            if n_experiences is not None and int(n_experiences) != len(angles):
                raise bad_value("scenario.angles", f"{len(angles)} angles for "
                                  f"n_experiences={n_experiences} (set n_experiences=null or match them)")
            self.angles = [float(a) for a in angles]
            if not self.angles:
                raise bad_value("scenario.angles", "expected a non-empty list of degrees")
        else:
            if len(angle_range) != 2 or not angle_range[0] < angle_range[1]:
                raise bad_value("scenario.angle_range", f"expected [low, high] with low < high, "
                                  f"got {angle_range!r}")
            self.angles = None
        # without explicit angles: n_experiences angles drawn as in GEM (10 when not given)
        self.n_experiences = (len(self.angles) if self.angles is not None else
                              check_positive_int(10 if n_experiences is None else n_experiences, "n_experiences"))
        self.angle_range = tuple(float(a) for a in angle_range)
        self.train_samples_per_task = (None if train_samples_per_task is None else
                                       check_positive_int(train_samples_per_task, "train_samples_per_task"))

    def build(self, dataset, seed: int) -> Stream:
        shape = tuple(dataset.input_shape)
        if len(shape) != 3:
            raise ConfigError(f"scenario 'rotated' needs image inputs (C, H, W); dataset '{dataset.name}' has "
                              f"inputs of shape {shape}")
        angles = self.angles or (gem_angles(self.n_experiences, *self.angle_range, seed) if self.angle_draw == "slices"
                                 else uniform_angles(self.n_experiences, *self.angle_range, seed))
        maps = [PixelMap(rotation_map(shape[1], shape[2], angle)) for angle in angles]
        return pixel_map_stream("rotated", dataset, seed, maps, self.train_samples_per_task,
                                {"angles": [round(a, 4) for a in angles]})
