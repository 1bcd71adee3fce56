"""Layer-input machinery shared by the orthogonal-projection strategies (GPM, HLOP, OWM).

For a weight layer y = W x (nn.Linear, or nn.Conv2d where x is one unfolded C_in*k*k patch) the
gradient is dL/dW = sum_i delta_i x_i^T, so it lives in the span of the layer's inputs. If a weight
change dW satisfies dW M = 0 for a basis M of old-task inputs, then W x is unchanged for every x in
span(M): that is the whole mechanism of GPM (Saha et al. 2021). HLOP learns M with Hebbian lateral
neurons instead of an SVD, OWM keeps a soft projector P instead of a basis; all three need the same
pieces, which live here so each strategy file reads like its paper's algorithm box:

- `weight_layers` / `require_bias_free`: which layers are projected, and the bias-free requirement;
- `InputRecorder`: forward pre-hooks that keep each layer's latest input (as rows of patches);
- `representation`: a layer's input as an (n_rows, d) matrix (unfold for conv layers);
- `project_off` / `UpdateProjector`: remove the component of a gradient or of an optimiser update
  that lies in span(M).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clbench.errors import ConfigError, bad_value

PROJECTABLE = (nn.Linear, nn.Conv2d)


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The nn.Linear / nn.Conv2d layers of a model, in registration order (input side first)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, PROJECTABLE)]


def require_bias_free(layers: list[tuple[str, nn.Module]], strategy: str) -> None:
    """Projection cannot protect a bias (its gradient is not in the span of the inputs): refuse biases."""
    with_bias = [name for name, m in layers if m.bias is not None]
    if with_bias:
        raise ConfigError(f"strategy '{strategy}' needs bias-free layers, but {', '.join(with_bias)} "
                          f"{'has' if len(with_bias) == 1 else 'have'} a bias: set model.bias=false")
    for name, m in layers:
        if isinstance(m, nn.Conv2d) and (m.groups != 1 or m.padding_mode != "zeros"):
            raise ConfigError(f"strategy '{strategy}' supports Conv2d layers with groups=1 and zero padding; "
                              f"layer '{name}' has groups={m.groups}, padding_mode={m.padding_mode!r}")


def input_dim(layer: nn.Module) -> int:
    """d_l: in_features for a linear layer, C_in*kh*kw for a convolution."""
    if isinstance(layer, nn.Linear):
        return layer.in_features
    kh, kw = layer.kernel_size
    return layer.in_channels * kh * kw


def representation(layer: nn.Module, x: Tensor) -> Tensor:
    """The layer input as rows of length d_l: samples for linear layers, im2col patches for convs."""
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, layer.in_features)
    cols = F.unfold(x, layer.kernel_size, dilation=layer.dilation, padding=layer.padding, stride=layer.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])          # (B*L, C_in*kh*kw)


def weight_matrix(t: Tensor) -> Tensor:
    """A weight (or its gradient) as an (out, d_l) matrix (conv kernels flattened like unfold)."""
    return t.reshape(t.shape[0], -1)


def project_off(g: Tensor, basis: Optional[Tensor]) -> Tensor:
    """g - g M M^T on the (out, d_l) view of g: the part of g orthogonal to span(M)."""
    if basis is None or basis.shape[1] == 0:
        return g
    g2 = weight_matrix(g)
    return (g2 - (g2 @ basis) @ basis.T).reshape(g.shape)


class InputRecorder:
    """Forward pre-hooks that keep the latest input of each layer while recording is on.

    Inputs are kept detached (no graph), as (n_rows, d_l) matrices; nothing is stored when off.
    """

    def __init__(self, layers: list[tuple[str, nn.Module]]):
        self.layers = dict(layers)
        self.inputs: dict[str, Tensor] = {}
        self.on = False
        self._handles = [m.register_forward_pre_hook(self._hook(name)) for name, m in layers]

    def _hook(self, name: str) -> Callable:
        def hook(module, args):
            if self.on:
                self.inputs[name] = representation(module, args[0].detach())
        return hook

    @contextmanager
    def recording(self):
        self.on, self.inputs = True, {}
        try:
            yield self.inputs
        finally:
            self.on = False

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


class UpdateProjector:
    """Projects the optimiser's *update* off the bases, for optimisers with state (momentum, Adam, weight decay).

    Projecting only the gradient is not enough there: momentum from earlier steps, Adam's per-coordinate
    scaling or weight decay would move W inside span(M). `before_step` snapshots the weights;
    `after_step` replaces W by W0 + project_off(W - W0). Parameters in `frozen` are restored exactly.
    """

    def __init__(self):
        self._snapshot: dict[nn.Parameter, Tensor] = {}

    def before_step(self, params) -> None:
        self._snapshot = {p: p.detach().clone() for p in params}

    @torch.no_grad()
    def after_step(self, bases: dict[nn.Parameter, Tensor], frozen=()) -> None:
        for p, basis in bases.items():
            if p in self._snapshot:
                w0 = self._snapshot[p]
                p.copy_(w0 + project_off(p - w0, basis))
        for p in frozen:
            if p in self._snapshot:
                p.copy_(self._snapshot[p])
        self._snapshot = {}


def optimizer_has_state(train_cfg: dict) -> bool:
    """True when an SGD step is not simply -lr*grad (momentum, adaptive scaling, weight decay)."""
    return (train_cfg.get("optimizer", "sgd") != "sgd" or float(train_cfg.get("momentum", 0.0)) != 0.0
            or float(train_cfg.get("weight_decay", 0.0)) != 0.0)


def one_dim_params(model: nn.Module) -> list[nn.Parameter]:
    """1-D parameters (BatchNorm/LayerNorm affine, any remaining biases): frozen after the first task."""
    return [p for p in model.parameters() if p.dim() == 1]


def freeze_batchnorm_stats(model: nn.Module) -> None:
    """Put BatchNorm layers in eval mode so later tasks do not move their running statistics."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def per_layer(value, layers: list[tuple[str, nn.Module]], key: str, kind=float) -> list:
    """A per-layer hyper-parameter: one number for every layer, or a list with one entry per layer."""
    names = [n for n, _ in layers]
    if isinstance(value, (list, tuple)):
        if len(value) != len(layers):
            raise bad_value(f"{key}", f"expected one value per weight layer "
                              f"({len(layers)}: {', '.join(names)}), got {len(value)} values {list(value)}")
        return [kind(v) for v in value]
    try:
        return [kind(value)] * len(layers)
    except (TypeError, ValueError):
        raise bad_value(f"{key}", f"expected a number or a list of {len(layers)} numbers, "
                          f"got {value!r}") from None
