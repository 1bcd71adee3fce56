"""HLOP: Hebbian Learning based Orthogonal Projection (ANN port).

Xiao, Meng, Zhang, He, Lin (ICLR 2024), "Hebbian Learning based Orthogonal Projection for Continual
Learning of Spiking Neural Networks", arXiv:2402.11984; follows the authors' code (pkuxmq/HLOP-SNN,
modules/hlop_module.py, modules/proj_linear.py, spiking_train_pmnist.py) with the layer's input
activations in place of the spiking firing rates:

    every weight layer l has lateral "subspace" neurons H_l (k_l x d_l), orthogonally initialised
    task 1: train normally; on every batch, Hebbian update of H_l from the layer input x
    task t > 1: first add k_new neurons (a new block), initialised orthogonal to the old block (*); on every batch
        - the weight gradient is computed from the residual input x - H_old^T H_old x
          (equivalently grad <- grad - grad H_old^T H_old), old block only
        - Hebbian update of all neurons with the old block frozen: new neurons learn the residual
        - 1-D parameters (BatchNorm affine) frozen, BatchNorm in eval mode
    after each task: merge all neurons into the old block

    Hebbian update (5 iterations per batch): y = x H^T, x_hat = y H,
        dH = clamp(y^T (x - x_hat) / B, -10, 10)   (Oja's subspace rule: Hebbian y x^T, anti-Hebbian y y^T H)
        V <- 0.9 V + 0.1 dH (new rows);  H <- H + lr V,  lr = min(lr_l, 1 / mean_B |x|^2)
        (the cap is this port's addition: ANN activations are unbounded, and Oja's rule diverges beyond it)

The subspace is learned while the task trains (streaming PCA), not by a decomposition at task end.

(*) Port change. The official code initialises the new block orthogonal only within itself, so it overlaps the
old rows; the rule removes that overlap (x_hat uses all rows) but only at the rate lr * (variance of the
residual input), which is slow. PMNIST gives it ~4700 Hebbian iterations per task; split-digits ~450, so
the overlap survives the merge, H_old^T H_old gets eigenvalues above 1 (2.2 by task 4), ||H H^T - I|| grows
~1.5 per task, and grad (I - H_old^T H_old) points uphill there: the weights and then H diverge (NaN, task 5).
Starting the block in the orthogonal complement of the old rows, where the rule's fixed point lies and
where the rule then keeps it (up to the old block's own error), removes the transient without
changing the fixed point.
"""
from __future__ import annotations

import torch

from clbench.config import ConfigError
from clbench.projection import (InputRecorder, UpdateProjector, freeze_batchnorm_stats, input_dim,
                                one_dim_params, optimizer_has_state, per_layer, project_off,
                                require_bias_free, weight_layers)
from clbench.hparams import HP
from clbench.strategy import Strategy
from clbench.stream import Batch, Experience


class HebbianSubspace:
    """Lateral subspace neurons of one layer (HLOP module): rows of H, the first `n_old` frozen."""

    def __init__(self, dim: int, lr: float, momentum: float, device: torch.device):
        self.dim, self.lr, self.m = dim, lr, momentum
        self.H = torch.zeros(0, dim, device=device)
        self.V = torch.zeros(0, dim, device=device)
        self.n_old = 0

    def add(self, k: int, generator: torch.Generator) -> None:
        """Append k orthogonally initialised neurons (never more than d in total)."""
        k = min(int(k), self.dim - self.H.shape[0])
        if k <= 0:
            return
        new = torch.empty(k, self.dim)
        torch.nn.init.orthogonal_(new, generator=generator)
        if self.H.shape[0] > 0:
            # Start the new block in the orthogonal complement of the existing rows, where the subspace rule
            # drives it anyway (x_hat uses all rows). From a random start the overlap with the old block decays
            # only at the rate lr * (residual variance); with few steps it survives the merge, H_old^T H_old
            # gets eigenvalues near 2 and the projected gradient grad (I - H_old^T H_old) turns into ascent.
            old = torch.linalg.qr(self.H.T.double().cpu()).Q                    # (d, k_old) basis of span(H)
            new = new.double() - (new.double() @ old) @ old.T
            new = torch.linalg.qr(new.T).Q.T.float()                             # k orthonormal rows
        self.H = torch.cat([self.H, new.to(self.H.device)])
        self.V = torch.cat([self.V, torch.zeros_like(new, device=self.V.device)])

    def merge(self) -> None:
        self.n_old = self.H.shape[0]

    def state_dict(self) -> dict:
        return {"H": self.H.clone(), "V": self.V.clone(), "n_old": self.n_old}

    def load_state_dict(self, state: dict) -> None:
        self.H, self.V, self.n_old = state["H"].to(self.H.device), state["V"].to(self.V.device), int(state["n_old"])

    @property
    def old(self) -> torch.Tensor:
        return self.H[: self.n_old]

    @torch.no_grad()
    def hebbian_update(self, x: torch.Tensor, iterations: int) -> None:
        """Oja subspace rule on a batch of inputs x (B x d); old neurons stay fixed."""
        if self.H.shape[0] == self.n_old:
            return
        x = x.float()
        # ANN port: activations are unbounded (the SNN feeds firing rates in [0, 1]) and Oja's rule diverges
        # once lr * |x|^2 > 2; cap the step at lr * mean|x|^2 <= 1 (inactive when the official lr is stable).
        lr = min(self.lr, 1.0 / max(float((x ** 2).sum(1).mean()), 1e-12))
        for _ in range(iterations):
            y = x @ self.H.T
            x_hat = y @ self.H
            dH = torch.clamp(y.T @ (x - x_hat) / x.shape[0], -10, 10)
            new = slice(self.n_old, None)
            self.V[new] = self.m * self.V[new] + (1 - self.m) * dH[new]
            self.H[new] += lr * self.V[new]

    def orthonormality_error(self) -> float:
        """||H H^T - I||_F: the projection x - H^T H x is exact only when this is ~0."""
        k = self.H.shape[0]
        if k == 0:
            return 0.0
        return float(torch.linalg.matrix_norm(self.H @ self.H.T - torch.eye(k, device=self.H.device)))


class HLOP(Strategy):
    """HLOP (ANN port): Hebbian-learned lateral subspaces; weight gradients from the residual input."""

    description = "HLOP: Oja/anti-Hebbian lateral subspace neurons per layer; gradients from the residual input"
    # Sizes scaled from the official PMNIST run (800-800 SNN: [80,200,100] then +[70,70,70], -20 every 3 tasks)
    # to an MLP with 100 hidden units.
    paper = "Xiao et al. 2024, Hebbian Learning based Orthogonal Projection for Continual Learning, ICLR"
    code = "pkuxmq/HLOP-SNN"
    hparams = {
        "n_initial": HP([60, 20, 20], "lateral neurons per weight layer for the first task (one number: all layers)",
                        type=(int, list), items=int, low=0),
        "n_added": HP([40, 10, 10], "neurons added per layer at each later task", type=(int, list), items=int, low=0),
        "reduce_every": HP(3, "every this many tasks, n_added shrinks by reduce_by (0: never)", low=0),
        "reduce_by": HP([10, 2, 2], "shrinkage of n_added (official: 20 every 3 tasks)", type=(int, list), items=int,
                        low=0),
        "hebb_lr": HP([0.001, 0.01, 0.01], "Hebbian learning rate per layer (official: 0.001 input, 0.01 hidden)",
                      type=(float, list), items=float, gt=0),
        "hebb_iterations": HP(5, "Hebbian iterations per batch", low=1),
        "hebb_momentum": HP(0.9, "momentum of the Hebbian updates", low=0, high=1),
        "project_head": HP("auto", "project the classifier too; auto: yes unless task-IL (multi-head)",
                           choices=(True, False, "auto")),
    }
    checkpoint_attrs = ("subspaces", "n_tasks", "added", "history")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        layers = weight_layers(self.model)
        if not layers:
            raise ConfigError("strategy 'hlop' found no nn.Linear/nn.Conv2d layer in the model")
        keys = ("n_initial", "n_added", "reduce_by", "hebb_lr")
        values = {k: per_layer(self.hp[k], layers, f"strategy.{k}", float if k == "hebb_lr" else int) for k in keys}
        head = self.hp.project_head
        if head is False or (head == "auto" and self.task_aware):
            layers, values = layers[:-1], {k: v[:-1] for k, v in values.items()}
        require_bias_free(layers, "hlop")
        self.layers, self.sizes = layers, values
        self.subspaces = {name: HebbianSubspace(input_dim(m), lr, float(self.hp.hebb_momentum), self.device)
                          for (name, m), lr in zip(layers, values["hebb_lr"])}
        self.recorder = InputRecorder(layers)
        self.updates = UpdateProjector() if optimizer_has_state(self.train_cfg) else None
        self.n_tasks = 0
        self.added = list(values["n_added"])
        self.history: list[dict] = []

    # ----- training -------------------------------------------------------------------------------
    def before_experience(self, exp: Experience) -> None:
        if self.n_tasks == 0:
            counts = self.sizes["n_initial"]
        else:
            freeze_batchnorm_stats(self.model)
            every = int(self.hp.reduce_every)
            if every > 0 and self.n_tasks % every == 0:
                self.added = [max(a - r, 0) for a, r in zip(self.added, self.sizes["reduce_by"])]
            counts = self.added
        for (name, _), k in zip(self.layers, counts):
            self.subspaces[name].add(k, self.generator)

    def loss(self, batch: Batch) -> torch.Tensor:
        with self.recorder.recording():          # keep each layer's input for the Hebbian update
            return super().loss(batch)

    def after_backward(self, batch: Batch) -> None:
        inputs = self.recorder.inputs
        if self.n_tasks > 0:
            # grad W = delta^T (x - H_old^T H_old x)  ==  grad - grad H_old^T H_old
            for name, layer in self.layers:
                layer.weight.grad = project_off(layer.weight.grad, self.subspaces[name].old.T)
            for p in one_dim_params(self.model):
                p.grad = None
            if self.updates is not None:
                self.updates.before_step([m.weight for _, m in self.layers])
        for name, _ in self.layers:
            self.subspaces[name].hebbian_update(inputs[name], int(self.hp.hebb_iterations))

    def after_step(self, batch: Batch) -> None:
        if self.updates is not None and self.n_tasks > 0:
            self.updates.after_step({m.weight: self.subspaces[n].old.T for n, m in self.layers})

    def after_experience(self, exp: Experience) -> None:
        for s in self.subspaces.values():
            s.merge()
        self.n_tasks += 1
        self.history.append({n: {"neurons": int(s.H.shape[0]), "orthonormality_error": s.orthonormality_error()}
                             for n, s in self.subspaces.items()})

    def extra_state(self) -> dict:
        return {"layers": {n: {"dim": input_dim(m)} for n, m in self.layers}, "subspace": self.history,
                "project_update": self.updates is not None}
