"""Datasets as tensors: every loader returns a `TensorDataset` with train/test tensors in their native dtype.

A loader is registered in the `clbench.datasets` entry-point group and called as
`loader(root=..., download=..., **options)`. Normalisation is part of the model (its first layer), so
raw tensors stay compact (uint8 images) everywhere, replay buffers included.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from clbench.registry import DATASETS


@dataclass
class TensorDataset:
    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    n_classes: int
    input_shape: tuple            # shape of one input, e.g. (1, 28, 28)
    scale: float                  # raw value that maps to 1.0 (255 for uint8 images)
    mean: tuple                   # per-channel mean and std of the scaled training inputs
    std: tuple

    def to(self, device) -> "TensorDataset":
        for name in ("x_train", "y_train", "x_test", "y_test"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def describe(self) -> dict:
        return {"name": self.name, "n_train": len(self.y_train), "n_test": len(self.y_test),
                "n_classes": self.n_classes, "input_shape": list(self.input_shape),
                "dtype": str(self.x_train.dtype).replace("torch.", "")}


def channel_stats(x: Tensor, scale: float) -> tuple[tuple, tuple]:
    """Per-channel mean/std of scaled inputs shaped (N, C, ...) or (N, D) (one channel)."""
    xf = x.float() / scale
    if xf.dim() <= 2:
        return (xf.mean().item(),), (xf.std().item(),)
    dims = [0] + list(range(2, xf.dim()))
    return tuple(xf.mean(dims).tolist()), tuple(xf.std(dims).tolist())


def load_dataset(cfg: dict, device: torch.device) -> TensorDataset:
    """Build the dataset named in cfg['dataset'] (other keys are the loader's options)."""
    options = {k: v for k, v in cfg["dataset"].items() if k != "name"}
    loader = DATASETS.get(cfg["dataset"]["name"])
    ds = loader(root=cfg["data"]["root"], download=bool(cfg["data"]["download"]), **options)
    return ds.to(device)
