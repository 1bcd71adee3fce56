"""Pieces shared by the strategies that learn a representation rather than a softmax head (PRD, SHARP,
NAPA-VQ): the feature-model check, the supervised contrastive loss, and the image augmentations they use (the
feature vector itself is `parts.embed`).

All draws come from the caller's generator, so a strategy stays reproducible and resumable.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clbench.errors import ConfigError


def check_feature_model(model: nn.Module, strategy: str) -> int:
    """The width of `model.features` (what the classifier reads); refuses models without that split."""
    if not isinstance(getattr(model, "features", None), nn.Module) or not isinstance(
            getattr(model, "classifier", None), nn.Linear):
        raise ConfigError(f"strategy '{strategy}' needs a model with `features` and a linear `classifier` "
                          f"(mlp, cnn, reduced_resnet18); got {type(model).__name__}")
    return model.classifier.in_features


def supcon_loss(z: Tensor, y: Tensor, temperature: float, base_temperature: Optional[float] = None) -> Tensor:
    """Supervised contrastive loss (Khosla et al. 2020) over the rows of z (all views stacked, labels y).

    For each anchor i: -mean over positives p != i of log softmax_{a != i}(z_i . z_a / T)[p], on L2-normalised
    rows; anchors without a positive are skipped. Scaled by T / base_temperature when base_temperature is
    given (the SupContrast code's convention, as PRD's code uses it).
    """
    z = F.normalize(z, dim=1)
    logits = z @ z.T / temperature
    logits = logits - logits.max(1, keepdim=True).values.detach()
    n = len(y)
    not_self = ~torch.eye(n, dtype=torch.bool, device=z.device)
    pos = (y[:, None] == y[None, :]) & not_self
    log_prob = logits - torch.log((torch.exp(logits) * not_self).sum(1, keepdim=True))
    has_pos = pos.any(1)
    mean_log_prob_pos = (log_prob * pos).sum(1)[has_pos] / pos.sum(1)[has_pos]
    scale = temperature / base_temperature if base_temperature else 1.0
    return -scale * mean_log_prob_pos.mean() if bool(has_pos.any()) else z.sum() * 0.0


def random_shift(x: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Translate each image by an integer offset in [-max_shift, max_shift]^2 (zero fill); float output on the
    input's raw scale. Flat inputs (no spatial dims) are returned as floats unchanged."""
    x = x.float()
    if max_shift <= 0 or x.dim() < 3:
        return x
    n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    dx = torch.randint(-max_shift, max_shift + 1, (n,), generator=generator)
    dy = torch.randint(-max_shift, max_shift + 1, (n,), generator=generator)
    img = x if x.dim() == 4 else x.unsqueeze(1)
    pad = F.pad(img, (max_shift, max_shift, max_shift, max_shift))
    rows = (torch.arange(h)[None, :] + max_shift - dy[:, None]).to(x.device)          # n x h
    cols = (torch.arange(w)[None, :] + max_shift - dx[:, None]).to(x.device)          # n x w
    idx = torch.arange(n, device=x.device)[:, None, None]
    out = pad.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    return out if x.dim() == 4 else out.squeeze(1)


def gaussian_noise(x: Tensor, std: float, scale: float, generator: torch.Generator) -> Tensor:
    """Additive noise with standard deviation `std` in [0, 1] units of the input range `scale`."""
    if std <= 0:
        return x
    return x + torch.randn(x.shape, generator=generator).to(x.device) * (std * scale)
