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

from clbench.hparams import HP
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

    hparams = {
        "width": HP(100, "units per hidden layer", low=1),
        "depth": HP(2, "hidden layers (0: a linear classifier)", low=0),
        "bias": HP(True, "linear layers with biases (OWM, GPM, HLOP need bias=false)"),
    }

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


class CNN(nn.Module):
    """Small CNN (Zenke, Poole & Ganguli 2017, SI, split CIFAR): 2 x (conv-conv-pool), fc 512, classifier.

    Each block has two 3x3 convs of `channels[i]` filters, max-pooling and dropout; then a `hidden`-unit
    ReLU layer and a linear classifier. Convolutions are padded, so any input of at least 4x4 (MNIST 28x28,
    CIFAR 32x32) works."""

    hparams = {
        "channels": HP([32, 64], "filters of the convolutions of each block", type=list, items=int, low=1),
        "hidden": HP(512, "units of the fully-connected layer", low=1),
        "dropout": HP(0.0, "dropout probability", low=0, high=0.99),
        "bias": HP(True, "layers with biases"),
    }

    def __init__(self, input_shape, n_classes: int, normalize: nn.Module, channels=(32, 64), hidden: int = 512,
                 dropout: float = 0.0, bias: bool = True):
        super().__init__()
        self.normalize = normalize
        c_in, h, w = input_shape
        blocks: list[nn.Module] = []
        for c in channels:
            blocks += [nn.Conv2d(c_in, c, 3, padding=1, bias=bias), nn.ReLU(),
                       nn.Conv2d(c, c, 3, padding=1, bias=bias), nn.ReLU(),
                       nn.MaxPool2d(2), nn.Dropout(dropout / 2)]
            c_in, h, w = c, h // 2, w // 2
        self.features = nn.Sequential(*blocks, nn.Flatten(), nn.Linear(c_in * h * w, hidden, bias=bias), nn.ReLU(),
                                      nn.Dropout(dropout))
        self.classifier = nn.Linear(hidden, n_classes, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(self.normalize(x)))


class BasicBlock(nn.Module):
    """ResNet basic block (He et al. 2016): two 3x3 convs with batch norm, identity or 1x1 shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int, track_running_stats: bool):
        super().__init__()
        bn = lambda c: nn.BatchNorm2d(c, track_running_stats=track_running_stats)  # noqa: E731
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = bn(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = bn(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), bn(c_out))

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ReducedResNet18(nn.Module):
    """Reduced ResNet-18 (GEM, Lopez-Paz & Ranzato 2017; ER, A-GEM, GPM): ResNet-18 with nf=20 filters.

    The ResNet-18 layout [2, 2, 2, 2] with `nf` = 20 base filters (instead of 64), a 3x3 stride-1 stem
    without max-pooling, global average pooling and one linear classifier over all classes. `nf=64` gives
    the full-width ResNet-18 of mammoth (same code path). `track_running_stats=False` reproduces GPM's
    batch-statistics BN; `first_stride=2` is the stem GPM uses on 84x84 miniImageNet."""

    hparams = {
        "nf": HP(20, "base number of filters (64: full-width ResNet-18)", low=1),
        "track_running_stats": HP(True, "BatchNorm running statistics (false: batch statistics, as GPM)"),
        "first_stride": HP(1, "stride of the stem convolution", low=1),
    }

    def __init__(self, input_shape, n_classes: int, normalize: nn.Module, nf: int = 20,
                 track_running_stats: bool = True, first_stride: int = 1):
        super().__init__()
        self.normalize = normalize
        stem = [nn.Conv2d(input_shape[0], nf, 3, stride=first_stride, padding=1, bias=False),
                nn.BatchNorm2d(nf, track_running_stats=track_running_stats), nn.ReLU()]
        blocks, c_in = [], nf
        for i, stride in enumerate((1, 2, 2, 2)):
            c_out = nf * 2 ** i
            blocks += [BasicBlock(c_in, c_out, stride, track_running_stats),
                       BasicBlock(c_out, c_out, 1, track_running_stats)]
            c_in = c_out
        self.features = nn.Sequential(*stem, *blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(c_in, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(self.normalize(x)))


# Options every model has, applied here rather than by each model class.
COMMON = {
    "standardize": HP(True, "standardise inputs with the training set's per-channel mean/std (false: only scale "
                            "to [0, 1], as Mammoth's ToTensor-only MNIST protocol)"),
    "init": HP("default", "weight initialisation: default (PyTorch's) or xavier (Xavier-uniform weights, zero "
                          "biases, as Mammoth's MNISTMLP)", choices=("default", "xavier")),
}


def build_model(cfg: dict, dataset) -> nn.Module:
    options = {k: v for k, v in cfg["model"].items() if k != "name" and k not in COMMON}
    common = {k: cfg["model"].get(k, spec.default) for k, spec in COMMON.items()}
    cls = MODELS.get(cfg["model"]["name"])
    channels = len(dataset.mean)
    normalize = (Normalize(dataset.scale, dataset.mean, dataset.std) if common["standardize"] else
                 Normalize(dataset.scale, (0.0,) * channels, (1.0,) * channels))
    try:
        model = cls(input_shape=tuple(dataset.input_shape), n_classes=dataset.n_classes, normalize=normalize,
                    **options)
    except TypeError as e:  # an unknown model option
        from clbench.errors import ConfigError
        raise ConfigError(f"bad 'model' options for '{cfg['model']['name']}': {e}") from None
    if common["init"] == "xavier":
        xavier_(model)
    return model


def xavier_(model: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every linear and conv layer (Mammoth's MNISTMLP init)."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
