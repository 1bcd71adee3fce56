"""Progressive Neural Networks (PNN).

Rusu, Rabinowitz, Desjardins, Soyer, Kirkpatrick, Kavukcuoglu, Pascanu, Hadsell (2016), "Progressive Neural
Networks", arXiv:1606.04671. There is no code by the authors; Mammoth's port (aimagelab/mammoth models/pnn.py,
backbone/MNISTMLP_PNN.py) gives the published S-MNIST number.

    task 1: train column 1, an MLP with the configured model's layer sizes
    task k > 1: freeze columns 1..k-1; add column k, whose layer i >= 2 (and output) receives the previous
                columns' layer i-1 activations through an adapter
                    h_i^(k) = relu( W_i^(k) h_{i-1}^(k) + U_i^(k) relu( V_i^(k) [a_j^(k) h_{i-1}^(j)]_{j<k} ) )
                (a_j: one learned scalar per previous column, V: projection to one column's width, U: into layer i)
                train column k (its layers and adapters) only, with a fresh optimizer
    predict task k: column k's output, masked to task k's classes

The strategy builds this network itself from the configured model (`model.name=mlp`): column 1 is the
configured model's layers with their initial weights, later columns are drawn with `init` (Xavier, as
Mammoth's MNISTMLP, or PyTorch's default) from the run's seeded generator, and the input normalisation is
the configured model's. Old columns are frozen (no gradient, not in the optimizer), so an old task's output
never changes. Task-IL only: a column is chosen by the task id. A task id not seen yet (evaluated before its
experience) is answered by the newest column.

Deviations:
- Mammoth's adapter scales every unit (a per-unit alpha) where the paper has one scalar per column; we
  follow the paper. Mammoth's MNISTMLP_PNN also sets `self.old_cols = []` before testing it, so its forward
  pass never takes the lateral branch: the published 99.23 comes from independent columns. `lateral=false`
  reproduces that (columns without adapters); the default is the paper's network.
- Mammoth trains each column with the cross-entropy over all 10 outputs; here over the task's head, as
  every task-IL strategy in clbench (its evaluation masks the logits to the task's classes in both).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from clbench.errors import ConfigError, PluginError
from clbench.hparams import HP
from clbench.strategy import Strategy, make_optimizer
from clbench.stream import Experience


def init_linear(layer: nn.Linear, how: str, g: torch.Generator) -> None:
    """Xavier-uniform weights and zero bias, or PyTorch's default Linear initialisation, from generator g."""
    if how == "xavier":
        nn.init.xavier_uniform_(layer.weight, generator=g)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
    else:
        nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=g)
        if layer.bias is not None:
            bound = 1 / math.sqrt(layer.in_features)
            nn.init.uniform_(layer.bias, -bound, bound, generator=g)


class Adapter(nn.Module):
    """The paper's MLP adapter: U relu(V [a_j h_j]_j), one scalar a_j per previous column."""

    def __init__(self, n_prev: int, width_in: int, width_out: int, init: str, g: torch.Generator):
        super().__init__()
        self.alpha = nn.Parameter(torch.rand(n_prev, generator=g) * 0.1)    # small random scale (paper)
        self.V = nn.Linear(n_prev * width_in, width_in)
        self.U = nn.Linear(width_in, width_out, bias=False)
        init_linear(self.V, init, g)
        init_linear(self.U, init, g)

    def forward(self, prev: list[Tensor]) -> Tensor:
        scaled = torch.cat([a * h for a, h in zip(self.alpha, prev)], 1)
        return self.U(torch.relu(self.V(scaled)))


class Column(nn.Module):
    """One column: linear layers of the given sizes (ReLU between), with adapters from earlier columns."""

    def __init__(self, sizes: list[int], bias: bool, n_prev: int, lateral: bool, init: str, g: torch.Generator):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=bias) for a, b in zip(sizes[:-1], sizes[1:]))
        for layer in self.layers:
            init_linear(layer, init, g)
        n_adapters = len(self.layers) - 1 if (lateral and n_prev) else 0
        # adapter i feeds layer i+1 from the previous columns' output of layer i
        self.adapters = nn.ModuleList(Adapter(n_prev, sizes[i + 1], sizes[i + 2], init, g)
                                      for i in range(n_adapters))

    def forward(self, x: Tensor, prev: list[list[Tensor]]) -> tuple[list[Tensor], Tensor]:
        """x: flattened input; prev[j]: hidden activations of column j. Returns (own hidden activations, output)."""
        hidden, h = [], x
        for i, layer in enumerate(self.layers):
            z = layer(h)
            if i > 0 and self.adapters:
                z = z + self.adapters[i - 1]([p[i - 1] for p in prev])
            if i < len(self.layers) - 1:
                h = torch.relu(z)
                hidden.append(h)
            else:
                h = z
        return hidden, h


class ProgressiveNet(nn.Module):
    """The columns so far, sharing the configured model's input normalisation."""

    def __init__(self, normalize: nn.Module, first: Column):
        super().__init__()
        self.normalize = normalize
        self.columns = nn.ModuleList([first])

    def forward(self, x: Tensor, column: int) -> Tensor:
        x = torch.flatten(self.normalize(x), 1)
        if not self.columns[column].adapters:              # no laterals: the column alone
            return self.columns[column](x, [])[1]
        prev: list[list[Tensor]] = []
        for j in range(column + 1):
            if j < column:
                with torch.no_grad():                       # earlier columns only feed the laterals
                    prev.append(self.columns[j](x, prev)[0])
            else:
                return self.columns[j](x, prev)[1]
        raise IndexError(column)


def mlp_sizes(model: nn.Module) -> tuple[list[int], bool]:
    """Layer sizes [input, hidden..., outputs] and bias flag of an MLP (features: Flatten/Linear/ReLU)."""
    if not all(hasattr(model, a) for a in ("normalize", "features", "classifier")):
        raise ConfigError("strategy 'pnn' builds its columns from an MLP (model.name=mlp); this model has no "
                          "'normalize'/'features'/'classifier'")
    linears = []
    for m in model.features:
        if isinstance(m, nn.Linear):
            linears.append(m)
        elif not isinstance(m, (nn.Flatten, nn.ReLU)):
            raise ConfigError(f"strategy 'pnn' builds its columns from an MLP (model.name=mlp); the model has a "
                              f"{type(m).__name__} layer")
    linears.append(model.classifier)
    return [linears[0].in_features] + [m.out_features for m in linears], model.classifier.bias is not None


class PNN(Strategy):
    """Progressive neural networks: a new frozen-after-use column per task, with lateral adapters."""

    description = "progressive neural networks: one column per task, lateral adapters from frozen earlier columns"
    paper = "Rusu et al. 2016, Progressive Neural Networks, arXiv:1606.04671"
    code = "aimagelab/mammoth models/pnn.py, backbone/MNISTMLP_PNN.py"
    settings = ("task-il",)
    hparams = {
        "lateral": HP(True, "lateral adapters from earlier columns (false: independent columns, what Mammoth's "
                            "MLP PNN computes)"),
        "init": HP("xavier", "initialisation of new columns: xavier (Mammoth's MNISTMLP) or default (PyTorch)",
                   choices=("xavier", "default")),
    }
    checkpoint_attrs = ("task_order",)

    def __init__(self, model, *args, **kwargs):
        super().__init__(model, *args, **kwargs)
        self.sizes, self.bias = mlp_sizes(self.model)
        first = Column(self.sizes, self.bias, 0, bool(self.hp.lateral), self.hp.init, self.generator)
        with torch.no_grad():                              # column 1 = the configured model's initial weights
            layers = [m for m in self.model.features if isinstance(m, nn.Linear)] + [self.model.classifier]
            for mine, theirs in zip(first.layers, layers):
                mine.load_state_dict(theirs.state_dict())
        self.model = ProgressiveNet(self.model.normalize, first).to(self.device)
        self.task_order: list[int] = []                    # task ids in order of arrival: column j serves task_order[j]
        self.optimizer = self.make_optimizer()

    def add_column(self) -> None:
        n_prev = len(self.model.columns)
        col = Column(self.sizes, self.bias, n_prev, bool(self.hp.lateral), self.hp.init, self.generator)
        self.model.columns.append(col.to(self.device))

    def freeze_old_columns(self) -> None:
        for j, col in enumerate(self.model.columns):
            col.requires_grad_(j == len(self.model.columns) - 1)

    def make_optimizer(self) -> torch.optim.Optimizer:
        # only the newest column trains (the base class calls this once before the columns exist)
        params = self.model.columns[-1].parameters() if isinstance(self.model, ProgressiveNet) else \
            self.model.parameters()
        return make_optimizer(params, self.train_cfg)

    def before_experience(self, exp: Experience) -> None:
        # 1. a new task gets a new column (the first task uses column 1); earlier columns are frozen
        t = int(exp.task_id)
        if t in self.task_order:
            if t != self.task_order[-1]:
                raise PluginError(f"strategy 'pnn' cannot return to task {t} once later columns use it")
            return
        if self.task_order:
            self.add_column()
        self.task_order.append(t)
        self.freeze_old_columns()
        self.optimizer = self.make_optimizer()             # a fresh optimizer for the new column (Mammoth)

    def column_of(self, task: int) -> int:
        return self.task_order.index(task) if task in self.task_order else len(self.model.columns) - 1

    def outputs(self, x: Tensor, t: Tensor) -> Tensor:
        """Each sample through its task's column."""
        out = None
        for task in torch.unique(t).tolist():
            sel = t == task
            z = self.model(x[sel], self.column_of(int(task)))
            out = z.new_zeros(len(x), z.shape[1]) if out is None else out
            out[sel] = z
        return self.mask_logits(out, t)

    def forward(self, x: Tensor, t=None) -> Tensor:
        return self.outputs(x, t)

    def predict(self, x: Tensor, task_id=None) -> Tensor:
        """Task-IL: the task's column, masked to its head. Without a task id (never in task-IL evaluation): the
        newest column's unmasked output."""
        if task_id is None:
            return self.model(x, len(self.model.columns) - 1)
        return self.outputs(x, torch.full((len(x),), int(task_id), dtype=torch.long, device=x.device))

    def load_state_dict(self, state: dict) -> None:
        # the saved network may have more columns than this fresh one: grow it first
        for _ in range(len(state["attrs"]["task_order"]) - len(self.model.columns)):
            self.add_column()
        self.task_order = list(state["attrs"]["task_order"])
        self.freeze_old_columns()
        super().load_state_dict(state)

    def extra_state(self) -> dict:
        return {"columns": len(self.model.columns), "lateral": bool(self.hp.lateral),
                "parameters": sum(p.numel() for p in self.model.parameters())}
