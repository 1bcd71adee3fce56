"""GPM: Gradient Projection Memory.

Saha, Garg, Roy (ICLR 2021), "Gradient Projection Memory for Continual Learning", arXiv:2103.09762;
follows the authors' code (sahagobinda/GPM, main_pmnist.py / main_cifar100.py):

    for task t:
        train with SGD; every step, for every weight layer l:  grad_l <- grad_l - grad_l M_l M_l^T
        (t > 1: 1-D parameters such as BatchNorm affine stay frozen)
        at the end of the task: forward n random training samples, take each layer's input matrix R_l
        (im2col patches for convolutions) and add to M_l the left singular vectors of the part of R_l
        that M_l does not explain, until the energy threshold eps_l is reached (Eq. 5 / Eq. 8-9).

Layers must be bias-free (a bias gradient is not in the span of the inputs). With momentum, Adam or
weight decay the optimiser *update* is projected as well, or old-task interference leaks back in.
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
from clbench.strategies.parts import random_subset


def grow_basis(R: torch.Tensor, M: torch.Tensor | None, eps: float) -> torch.Tensor | None:
    """GPM's memory update for one layer. R: (d, n) representation, M: (d, k) orthonormal basis or None.

    As in the official code: on the first task k = #{i : cumsum(S^2)/sum(S^2) < eps} (no "+1");
    later, the energy already explained by M counts towards eps, relative to R's total energy.
    """
    R = R.double()
    total = float((R ** 2).sum())
    if total == 0.0:
        return M
    if M is None or M.shape[1] == 0:
        U, S, _ = torch.linalg.svd(R, full_matrices=False)
        ratio = S ** 2 / total
        k = int((torch.cumsum(ratio, 0) < eps).sum())
        return U[:, :k].float() if k > 0 else None
    Md = M.double()
    R_hat = R - Md @ (Md.T @ R)
    U, S, _ = torch.linalg.svd(R_hat, full_matrices=False)
    accumulated = (total - float((R_hat ** 2).sum())) / total
    ratio = (S ** 2 / total).tolist()
    k = 0
    while k < len(ratio) and accumulated < eps:
        accumulated += ratio[k]
        k += 1
    if k == 0:
        return M
    grown = torch.cat([Md, U[:, :k]], 1)
    return grown[:, :R.shape[0]].float()    # never more than d_l directions


class GPM(Strategy):
    """Gradient Projection Memory: gradients projected off SVD bases of old tasks' layer inputs."""

    description = "GPM: per-layer SVD bases of old inputs; gradients (and updates) projected off them"
    paper = "Saha, Garg, Roy 2021, Gradient Projection Memory for Continual Learning, ICLR"
    code = "sahagobinda/GPM"
    hparams = {
        "threshold": HP([0.95, 0.99, 0.99], "eps_l per weight layer (one number: all layers); PMNIST values",
                        type=(float, list), items=float, low=0, high=1),
        "threshold_increment": HP(0.0, "eps_l + increment*(t-1) for task t (CIFAR-100: 0.97 + 0.003 (t-1))", low=0),
        "n_samples": HP(300, "training samples of a task forwarded to build R_l (PMNIST 300)", low=1),
        "conv_samples": HP(None, "per-conv-layer cap on images whose patches enter R_l (CIFAR: [24,100,100,125,125])",
                           type=(int, list), items=int, low=1),
        "project_head": HP("auto", "project the classifier too; auto: yes unless task-IL (multi-head)",
                           choices=(True, False, "auto")),
    }
    checkpoint_attrs = ("bases", "n_tasks", "history")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        all_layers = weight_layers(self.model)
        if not all_layers:
            raise ConfigError("strategy 'gpm' found no nn.Linear/nn.Conv2d layer in the model")
        thresholds = per_layer(self.hp.threshold, all_layers, "strategy.threshold")
        head = self.hp.project_head
        if head is False or (head == "auto" and self.task_aware):
            # multi-head (task-IL): each task's head rows only get gradients from that task; GPM leaves heads free
            all_layers, thresholds = all_layers[:-1], thresholds[:-1]
        require_bias_free(all_layers, "gpm")
        self.layers, self.thresholds = all_layers, thresholds
        convs = [n for n, m in self.layers if isinstance(m, torch.nn.Conv2d)]
        caps = self.hp.conv_samples
        self.conv_cap = dict(zip(convs, per_layer(caps, [(n, None) for n in convs], "strategy.conv_samples", int))) \
            if caps is not None else {}
        self.bases: dict[str, torch.Tensor | None] = {name: None for name, _ in self.layers}
        self.recorder = InputRecorder(self.layers)
        self.updates = UpdateProjector() if optimizer_has_state(self.train_cfg) else None
        self.n_tasks = 0
        self.history: list[dict[str, int]] = []   # basis size per layer after each task

    # ----- training -------------------------------------------------------------------------------
    def before_experience(self, exp: Experience) -> None:
        if self.n_tasks > 0:
            freeze_batchnorm_stats(self.model)   # BN statistics and affine parameters stay as after task 1

    def after_backward(self, batch: Batch) -> None:
        if self.n_tasks == 0:
            return
        for name, layer in self.layers:
            layer.weight.grad = project_off(layer.weight.grad, self.bases[name])
        for p in one_dim_params(self.model):
            p.grad = None
        if self.updates is not None:
            self.updates.before_step([m.weight for _, m in self.layers])

    def after_step(self, batch: Batch) -> None:
        if self.updates is not None and self.n_tasks > 0:
            self.updates.after_step({m.weight: self.bases[n] for n, m in self.layers})

    # ----- memory update at the end of a task -----------------------------------------------------
    @torch.no_grad()
    def after_experience(self, exp: Experience) -> None:
        batch = random_subset(exp, int(self.hp.n_samples), self.generator)
        was_training = self.model.training
        self.model.eval()
        with self.recorder.recording() as inputs:
            self.model(batch.x)
        self.model.train(was_training)
        step = float(self.hp.threshold_increment) * self.n_tasks
        for (name, layer), eps in zip(self.layers, self.thresholds):
            rows = inputs[name]
            if name in self.conv_cap:   # rows are image-major: keep the patches of the first images
                rows = rows[: self.conv_cap[name] * (rows.shape[0] // n)]
            self.bases[name] = grow_basis(rows.T, self.bases[name], min(eps + step, 1.0))
        self.n_tasks += 1
        self.history.append(self.basis_sizes())

    def basis_sizes(self) -> dict[str, int]:
        return {n: (0 if b is None else int(b.shape[1])) for n, b in self.bases.items()}

    def extra_state(self) -> dict:
        return {"layers": {n: {"dim": input_dim(m), "threshold": eps} for (n, m), eps in zip(self.layers, self.thresholds)},
                "basis_size": self.history,
                "project_update": self.updates is not None}
