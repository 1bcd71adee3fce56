"""OWM: Orthogonal Weights Modification.

Zeng, Chen, Cui, Yu (Nature Machine Intelligence 2019), "Continual learning of context-dependent
processing in neural networks", arXiv:1810.01256; follows the authors' code (beijixiong3510/OWM,
"Shuffled MNIST/OWMLayer.py" and run_shuffled_10_mnist_3Layers.py):

    every weight layer keeps a projector P_l (d_l x d_l), P_l = I / alpha at the start
    every batch of every task, for every layer (recursive least squares on the batch-mean input):
        r = mean_batch(x_l);  k = P_l r;  c = 1 / (1 + r^T k);  P_l <- P_l - c k k^T
        W_l <- W_l - lr * grad_l P_l
    loss = CE + norm_penalty * sum_l ||W_l||_F   (the official run: 1e-3)

P shrinks along every input direction seen so far, so later updates leave old responses (nearly) intact.
The official run trains with lr 2.0, batch 100 (the large lr goes with the 1/alpha scaling of P).
"""
from __future__ import annotations

import torch

from clbench.config import ConfigError
from clbench.projection import InputRecorder, input_dim, optimizer_has_state, require_bias_free, weight_layers
from clbench.hparams import HP
from clbench.strategy import Strategy
from clbench.stream import Batch


class OWM(Strategy):
    """Orthogonal Weights Modification: gradients multiplied by a per-layer RLS projector of all past inputs."""

    description = "OWM: per-layer recursive-least-squares projector of past inputs applied to every gradient"
    paper = "Zeng, Chen, Cui, Yu 2019, Continual learning of context-dependent processing in neural networks, NMI"
    code = "beijixiong3510/OWM"
    hparams = {
        "alpha": HP(1.0, "P = I/alpha at the start (official shuffled-MNIST run: 1.0)", gt=0),
        "norm_penalty": HP(1e-3, "weight on sum_l ||W_l||_F added to the loss (official: 1e-3)", low=0),
    }
    checkpoint_attrs = ("P",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.layers = weight_layers(self.model)
        if not self.layers:
            raise ConfigError("strategy 'owm' found no nn.Linear/nn.Conv2d layer in the model")
        require_bias_free(self.layers, "owm")
        if optimizer_has_state(self.train_cfg):
            raise ConfigError("strategy 'owm' multiplies each gradient by its projector and takes a plain step: "
                              "use train.optimizer=sgd with train.momentum=0 and train.weight_decay=0")
        alpha = float(self.hp.alpha)
        self.P = {n: torch.eye(input_dim(m), device=self.device) / alpha for n, m in self.layers}
        self.recorder = InputRecorder(self.layers)

    def loss(self, batch: Batch) -> torch.Tensor:
        with self.recorder.recording():
            loss = super().loss(batch)
        penalty = sum(torch.linalg.matrix_norm(m.weight.reshape(m.weight.shape[0], -1)) for _, m in self.layers)
        return loss + float(self.hp.norm_penalty) * penalty

    @torch.no_grad()
    def after_backward(self, batch: Batch) -> None:
        for name, layer in self.layers:
            r = self.recorder.inputs[name].float().mean(0, keepdim=True).T    # (d, 1) batch-mean input
            P = self.P[name]
            k = P @ r
            c = 1.0 / (1.0 + float(r.T @ k))
            P -= c * (k @ k.T)
            g = layer.weight.grad
            layer.weight.grad = (g.reshape(g.shape[0], -1) @ P).reshape(g.shape)

    def extra_state(self) -> dict:
        # trace(P)/d: 1/alpha at the start, falls as input directions are used up
        return {"layers": {n: {"dim": input_dim(m), "trace_fraction": float(torch.trace(self.P[n])) / input_dim(m)}
                           for n, m in self.layers}}
