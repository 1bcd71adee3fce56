"""Continual learning with hypernetworks (HNET).

von Oswald, Henning, Sacramento, Grewe (2020), "Continual learning with hypernetworks", ICLR 2020,
arXiv:1906.00695. Code: chrhenning/hypercl (`mnist/chunked_hyper_model.py`, `utils/hnet_regularizer.py`
calc_fix_target_reg, `utils/optim_step.py` calc_delta_theta, `mnist/train_splitMNIST.py` train_class_one_t).

The target network (the benchmark's model) has no weights of its own: a chunked hypernetwork generates them
from a learned task embedding e_t, one chunk at a time from learned chunk embeddings c_i:

    W(e_t) = concat_i  f_h([e_t, c_i]; theta)                     theta = MLP weights + chunk embeddings
    before task t:  W*_j = W(e_j) for every earlier task j  (targets, kept)
    for each minibatch of task t:
        L_task = CE(target(x; W(e_t)), y)   over task t's classes (its head)
        backward L_task;  delta = the step the optimizer would take on L_task alone (look-ahead)
        L_reg  = beta / (t) * sum_{j<t} || W(e_j; theta + delta) - W*_j ||^2     (old e_j fixed)
        backward L_reg; optimizer step on theta and e_t
    predict: the task's embedding when the task id is given (task-IL, the paper's CL1); otherwise the
    embedding whose prediction has the lowest entropy (HNET+ENT, the paper's CL2/CL3 task inference)

Deviations: the task embeddings share the optimizer of theta (as a second parameter group with `emb_lr`;
the code uses a second Adam with its own lr), and only the current one receives gradients (the others are
detached in the regulariser), which is what the code's separate optimizer achieves. All task embeddings are
allocated up front (the stream's number of experiences), as the code does with `num_tasks`. The class-IL
head is the current task's classes (logits of other classes masked in training), as CL3+ENT uses one head
per task. Not built: the replay-based task inference (HNET+TIR, HNET+R).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from clbench.errors import ConfigError
from clbench.hparams import HP, loguniform
from clbench.strategy import Strategy
from clbench.stream import Batch, Experience


class ChunkedHypernet(nn.Module):
    """f_h([e, c_i]; theta) -> chunk i of the target network's flat weight vector."""

    def __init__(self, n_outputs: int, n_tasks: int, chunk_size: int, layers: list[int], te_dim: int, ce_dim: int,
                 generator: torch.Generator):
        super().__init__()
        self.n_outputs = int(n_outputs)
        n_chunks = math.ceil(n_outputs / chunk_size)
        # embeddings ~ N(0, 1), as hypercl; each task's is its own parameter (only the current one is trained)
        self.task_embs = nn.ParameterList([nn.Parameter(torch.randn(te_dim, generator=generator))
                                           for _ in range(n_tasks)])
        self.chunk_embs = nn.Parameter(torch.randn(n_chunks, ce_dim, generator=generator))
        self.build_generator(te_dim + ce_dim, list(layers), chunk_size)

    def build_generator(self, d_in: int, layers: list[int], chunk_size: int) -> None:
        dims = [d_in, *layers]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.out = nn.Linear(dims[-1], chunk_size)

    def theta(self) -> dict[str, Tensor]:
        """The regularised weights: everything but the task embeddings."""
        return {n: p for n, p in self.named_parameters() if not n.startswith("task_embs")}

    def chunks(self, inputs: Tensor, p: dict[str, Tensor]) -> Tensor:
        """(n_chunks, te_dim + ce_dim) -> (n_chunks, chunk_size): the chunks are independent (an MLP)."""
        h = inputs
        for i in range(len(self.hidden)):
            h = F.relu(F.linear(h, p[f"hidden.{i}.weight"], p[f"hidden.{i}.bias"]))
        return F.linear(h, p["out.weight"], p["out.bias"])

    def forward(self, emb: Tensor, theta: Optional[dict[str, Tensor]] = None) -> Tensor:
        p = self.theta() if theta is None else theta
        c = p["chunk_embs"]
        inputs = torch.cat([emb.expand(len(c), -1), c], 1)
        return self.chunks(inputs, p).reshape(-1)[:self.n_outputs]


def lookahead(optimizer: torch.optim.Optimizer, params: dict[str, Tensor]) -> dict[str, Tensor]:
    """The change the optimizer's next step would make to `params` from their current gradients, without
    touching its state (hypercl `optim_step.calc_delta_theta`, here with torch's current Adam/SGD formulas)."""
    which = {id(p): n for n, p in params.items()}
    out = {n: torch.zeros_like(p) for n, p in params.items()}
    for group in optimizer.param_groups:
        lr, wd = group["lr"], group.get("weight_decay", 0.0)
        for p in group["params"]:
            if id(p) not in which or p.grad is None:
                continue
            g, st = p.grad.detach(), optimizer.state.get(p, {})
            if isinstance(optimizer, torch.optim.AdamW):
                decay, g = -lr * wd * p.detach(), g
            else:
                decay, g = 0.0, (g + wd * p.detach() if wd else g)
            if isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):
                b1, b2 = group["betas"]
                step = float(st.get("step", 0)) + 1
                m = b1 * st["exp_avg"] + (1 - b1) * g if "exp_avg" in st else (1 - b1) * g
                v = b2 * st["exp_avg_sq"] + (1 - b2) * g * g if "exp_avg_sq" in st else (1 - b2) * g * g
                denom = v.sqrt() / math.sqrt(1 - b2 ** step) + group["eps"]
                out[which[id(p)]] = decay - lr / (1 - b1 ** step) * m / denom
            elif isinstance(optimizer, torch.optim.SGD):
                mom, buf = group["momentum"], st.get("momentum_buffer")
                if mom:
                    buf = g.clone() if buf is None else mom * buf + (1 - group["dampening"]) * g
                    g = g + mom * buf if group["nesterov"] else buf
                out[which[id(p)]] = -lr * g
            else:
                raise ConfigError(f"hnet's look-ahead supports sgd, adam and adamw, not {type(optimizer).__name__} "
                                  f"(set strategy.lookahead=false)")
    return out


class HNET(Strategy):
    """Task-conditioned chunked hypernetwork with an output regulariser on earlier task embeddings."""

    description = "hypernetwork CL: task embeddings -> target weights, output regulariser with look-ahead"
    paper = ("von Oswald, Henning, Sacramento, Grewe 2020, Continual learning with hypernetworks, ICLR, "
             "arXiv:1906.00695")
    code = "chrhenning/hypercl mnist/chunked_hyper_model.py, utils/hnet_regularizer.py, mnist/train_splitMNIST.py"
    hparams = {
        "beta": HP(0.01, "weight of the output regulariser (Split MNIST 0.01, Permuted MNIST 0.1)", low=0,
                   search=loguniform(1e-3, 1.0)),
        "hnet_layers": HP([10, 10], "hidden layers of the hypernetwork (Split MNIST: 10, 10)", type=list, items=int,
                          low=1),
        "chunk_size": HP(42000, "weights generated per chunk (Split MNIST: 42000)", low=1),
        "te_dim": HP(96, "task embedding size (Split MNIST: 96)", low=1),
        "ce_dim": HP(96, "chunk embedding size (Split MNIST: 96)", low=1),
        "lookahead": HP(True, "regularise at theta + delta (the optimizer's step on the task loss), as the code"),
        "emb_lr": HP(None, "lr of the current task embedding (null: train.lr)", type=float, gt=0),
    }
    settings = ("task-il", "class-il", "domain-il")
    checkpoint_attrs = ("hnet", "targets", "learned")
    hnet_class = ChunkedHypernet

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # 1. the target network's shapes; its own weights are never used nor trained
        self.shapes = {n: p.shape for n, p in self.model.named_parameters()}
        self.model.requires_grad_(False)
        n_out = sum(s.numel() for s in self.shapes.values())
        self.hnet = self.hnet_class(n_out, self.info.n_experiences, self.hp.chunk_size, self.hp.hnet_layers,
                                    self.hp.te_dim, self.hp.ce_dim, self.generator).to(self.device)
        self.optimizer = self.make_optimizer()
        self.targets: list[Tensor] = []          # W*_j of the earlier tasks, in the order of `learned`
        self.learned: list[int] = []             # task ids trained so far

    def make_optimizer(self) -> torch.optim.Optimizer:
        from clbench.strategy import make_optimizer
        if not hasattr(self, "hnet"):            # the base constructor: no hypernetwork yet
            return super().make_optimizer()
        emb_lr = float(self.hp.emb_lr or self.train_cfg["lr"])
        return make_optimizer([{"params": list(self.hnet.theta().values())},
                               {"params": list(self.hnet.task_embs), "lr": emb_lr}], self.train_cfg)

    def weights(self, task: int, theta: Optional[dict[str, Tensor]] = None, detach_emb: bool = False) -> dict:
        emb = self.hnet.task_embs[task]
        flat = self.hnet(emb.detach() if detach_emb else emb, theta)
        out, i = {}, 0
        for n, s in self.shapes.items():
            out[n] = flat[i:i + s.numel()].view(s)
            i += s.numel()
        return out

    def target_logits(self, x: Tensor, task: int) -> Tensor:
        return functional_call(self.model, self.weights(task), (x,))

    def before_experience(self, exp: Experience) -> None:
        if exp.task_id >= len(self.hnet.task_embs):
            raise ConfigError(f"hnet allocates {len(self.hnet.task_embs)} task embeddings (one per experience) "
                              f"but experience {exp.index} has task id {exp.task_id}")
        # 2. targets of the regulariser: the hypernetwork's outputs for the earlier tasks, before this one
        with torch.no_grad():
            self.targets = [self.hnet(self.hnet.task_embs[j]).detach().clone()
                            for j in self.learned if j != exp.task_id]

    def loss(self, batch: Batch) -> Tensor:
        # 3. the task loss through the generated weights, over the task's head
        t = int(batch.t[0])
        logits = self.mask_logits(self.target_logits(batch.x, t), batch.t)
        return F.cross_entropy(logits, batch.y)

    def after_backward(self, batch: Batch) -> None:
        # 4. output regulariser at theta + delta (delta: the optimizer's step on the task loss alone)
        if not self.targets or self.hp.beta == 0:
            return
        theta = self.hnet.theta()
        if self.hp.lookahead:
            delta = lookahead(self.optimizer, theta)
            theta = {n: p + delta[n] for n, p in theta.items()}
        old = [j for j in self.learned if j != int(batch.t[0])]
        reg = sum((self.hnet(self.hnet.task_embs[j].detach(), theta) - w).pow(2).sum()
                  for j, w in zip(old, self.targets))
        (float(self.hp.beta) * reg / len(old)).backward()

    def after_experience(self, exp: Experience) -> None:
        if exp.task_id not in self.learned:
            self.learned.append(exp.task_id)

    @torch.no_grad()
    def predict(self, x: Tensor, task_id: Optional[int] = None) -> Tensor:
        if task_id is not None:                    # CL1: the task's embedding and head
            t = torch.full((len(x),), int(task_id), dtype=torch.long, device=x.device)
            return self.mask_logits(self.target_logits(x, int(task_id)), t)
        tasks = self.learned or [0]
        # 5. task inference by entropy (HNET+ENT): the embedding whose head is most certain about x
        outs, ents = [], []
        for j in tasks:
            t = torch.full((len(x),), j, dtype=torch.long, device=x.device)
            logits = self.mask_logits(self.target_logits(x, j), t) if j in self.task_classes else \
                self.target_logits(x, j)
            p = F.softmax(logits, 1)
            outs.append(logits)
            ents.append(-(p * p.clamp_min(1e-12).log()).sum(1))
        best = torch.stack(ents).argmin(0)
        return torch.stack(outs)[best, torch.arange(len(x), device=x.device)]

    def extra_state(self) -> dict:
        n_hnet = sum(p.numel() for p in self.hnet.parameters())
        n_target = sum(s.numel() for s in self.shapes.values())
        return {"hnet_params": n_hnet, "target_params": n_target, "compression": n_hnet / n_target,
                "tasks_learned": list(self.learned)}
