"""Model zoo. Every model maps raw inputs (native dtype) to logits over all classes of the stream.

A model constructor is registered in the `clbench.models` entry-point group and called as
`Model(input_shape=..., n_classes=..., normalize=Normalize(...), **options)`. Task-incremental
"multi-head" behaviour is logit masking per task (see Strategy.forward), which is exactly a separate
linear head per task over a shared trunk.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from clbench.registry import MODELS


class Normalize(nn.Module):
    """Raw inputs -> float, scaled to [0, 1] and standardised per channel. Has no parameters."""

    def __init__(self, scale: float, mean, std, n_channels: int = 1):
        super().__init__()
        shape = (1, -1, 1, 1) if len(mean) > 1 else (1,)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(shape))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(shape))
        self.scale = float(scale)

    def forward(self, x: Tensor) -> Tensor:
        return (x.float() / self.scale - self.mean) / self.std


class MLP(nn.Module):
    """Multi-layer perceptron: flatten, `depth` hidden layers of `width` ReLU units, linear classifier."""

    def __init__(self, input_shape, n_classes: int, normalize: nn.Module, width: int = 100, depth: int = 2,
                 bias: bool = True):
        super().__init__()
        self.normalize = normalize
        d_in = math.prod(input_shape)
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.Linear(d_in, width, bias=bias), nn.ReLU()]
            d_in = width
        self.features = nn.Sequential(nn.Flatten(), *layers)
        self.classifier = nn.Linear(d_in, n_classes, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(self.normalize(x)))


def build_model(cfg: dict, dataset) -> nn.Module:
    options = {k: v for k, v in cfg["model"].items() if k != "name"}
    cls = MODELS.get(cfg["model"]["name"])
    normalize = Normalize(dataset.scale, dataset.mean, dataset.std)
    try:
        return cls(input_shape=tuple(dataset.input_shape), n_classes=dataset.n_classes, normalize=normalize,
                   **options)
    except TypeError as e:  # an unknown model option
        from clbench.config import ConfigError
        raise ConfigError(f"bad 'model' options for '{cfg['model']['name']}': {e}") from None
