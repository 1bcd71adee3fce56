"""SHARP: Sparsity and Hidden Activation RePlay.

Gurbuz, Moorman, Dovrolis (2023), "SHARP: Sparsity and Hidden Activation RePlay for Neuro-Inspired Continual
Learning", arXiv:2305.18563; follows the authors' code (BurakGurbuz97/SHARP-Continual-Learning, Source/
learner.py, architecture.py, rewire.py, memory.py, neocortex.py, train_and_eval.py; built on NISPA).

    a sparse network (random pruning at init, density 1 - prune, kept fixed); each unit has a state:
    0 free, 1 selected in this episode, >= 2 consolidated (its age); the output of the first `early_layers`
    layers is what is stored and replayed; the last feature layer's ReLU output is the representation.
    for each experience (episode), phases of phase_epochs epochs (the last one shorter when train.epochs is
    not a multiple of phase_epochs):
        1. select: on the first 1024 training samples, per layer, rank the units by summed activation and
           take the top ones covering p% of it, p = max(100 * (1 + cos(pi * phase / tau)) / 2, min_act);
           free/selected units among them become "selected", the others free
        2. rewire: drop every connection from a free unit into a non-free unit of the next layer; grow as
           many at random into free units (from any unit), new weights 0
        3. train (optimizer re-created): SupCon(T) over [stream batch ; replay batch]; the replay batch is
           drawn from the classes of the last stm_num_tasks episodes only, as their stored 8-bit early
           activations fed through the later layers; free units of the last layer output 0; frozen units
           get no gradient (early layers: state > 1; later layers: state > stm_num_tasks + 1)
    at the end of an episode: states of non-free units += 1; freeze; store stm_per_class samples per class
    as min-max-quantised uint8 early activations (STM); re-initialise free units (Kaiming, fan_out);
    long-term memory: ltm_per_class representations per class with the unit mask state >= 2, and the
    previous episodes' classes re-encoded from the STM with mask state >= 3 + age
    prediction: per class, L2-normalised masked representation vs its masked LTM vectors; majority vote
    of the k nearest (Euclidean); the logits are the votes (ties to the smaller class, as torch.mode)

Deviations: MLPs only (sparse Linear layers; the code's MNIST network has two sparse conv layers as the
early block, then 500-500); the STM keeps only the classes it will replay (the code keeps every class's
activations although it reads only the last episode's); samples for the STM and the LTM are drawn at
random (the code takes loader order); the harness classifier is unused (k-NN prediction).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clbench.errors import ConfigError, bad_value
from clbench.hparams import HP, loguniform, randint
from clbench.strategy import Strategy
from clbench.stream import Batch, Experience
from clbench.strategies.parts import eval_mode
from clbench.strategies.representation import supcon_loss

INPUT = 99                    # input units: never free


class SparseMLP:
    """A view of the harness MLP as SHARP's layers: masks, unit states, early/late forward passes."""

    def __init__(self, model: nn.Module, early_layers: int):
        feats = getattr(model, "features", None)
        layers = list(feats) if isinstance(feats, nn.Sequential) else []
        self.linears = [m for m in layers if isinstance(m, nn.Linear)]
        if not self.linears or any(isinstance(m, nn.Conv2d) for m in layers) or not all(
                isinstance(m, (nn.Linear, nn.ReLU, nn.Flatten)) for m in layers):
            raise ConfigError(f"strategy 'sharp' supports MLPs (model=mlp, depth >= 2); got {type(model).__name__}")
        if len(self.linears) < early_layers + 1:
            raise bad_value("strategy.early_layers", f"{early_layers}; the model has "
                            f"{len(self.linears)} hidden layers and needs at least one after the early block")
        self.model, self.layers = model, layers
        self.cut = layers.index(self.linears[early_layers - 1]) + 2          # after the early block's ReLU
        self.n_early = early_layers

    def early(self, x: Tensor) -> Tensor:
        h = self.model.normalize(x)
        for m in self.layers[:self.cut]:
            h = m(h)
        return h

    def late(self, a: Tensor, last_free: Tensor) -> Tensor:
        for m in self.layers[self.cut:]:
            a = m(a)
        return a * (~last_free).float()          # free units of the last layer output 0 (forward and backward)

    def activations(self, x: Tensor) -> list[Tensor]:
        """The ReLU output of every Linear layer (for unit selection)."""
        out, h = [], self.model.normalize(x)
        for m in self.layers:
            h = m(h)
            if isinstance(m, nn.ReLU):
                out.append(h)
        return out


def top_units(activation: Tensor, perc: float) -> Tensor:
    """Units, by decreasing summed activation, until they cover perc % of the layer's total (pick_top_neurons)."""
    order = torch.argsort(-activation, stable=True)
    covered = torch.cumsum(activation[order], 0) >= activation.sum() * perc / 100
    n = int(covered.nonzero()[0]) + 1 if bool(covered.any()) else len(order)
    return order[:n]


def quantize(a: Tensor) -> dict:
    lo, hi = a.min(), a.max()
    q = torch.round((a - lo) / (hi - lo).clamp(min=1e-12) * 255).to(torch.uint8)
    return {"x": q, "lo": lo.reshape(1), "hi": hi.reshape(1)}


def dequantize(stored: dict) -> Tensor:
    return stored["x"].float() / 255 * (stored["hi"] - stored["lo"]) + stored["lo"]


class SHARP(Strategy):
    """SHARP: sparse dynamic connectivity + SupCon + replay of recent classes' hidden activations, k-NN."""

    description = "SHARP: sparse rewired network, replays 8-bit hidden activations of the last episode's classes"
    paper = ("Gurbuz, Moorman, Dovrolis 2023, SHARP: Sparsity and Hidden Activation RePlay for Neuro-Inspired "
             "Continual Learning, arXiv:2305.18563")
    code = "BurakGurbuz97/SHARP-Continual-Learning Source/ (learner.py, architecture.py, rewire.py, memory.py)"
    hparams = {
        "prune": HP(0.6, "fraction of connections removed at initialisation (density stays 1 - prune)",
                    low=0, high=0.99),
        "early_layers": HP(1, "layers whose output is stored and replayed (the early block)", low=1),
        "phase_epochs": HP(3, "epochs per phase (a new phase starts every phase_epochs epochs)", low=1),
        "tau": HP(30.0, "cosine schedule of the selection percentage", gt=0),
        "min_activation_perc": HP(90.0, "lower bound of the selection percentage", low=0, high=100,
                                  search=loguniform(50, 99)),
        "select_samples": HP(1024, "training samples used to rank the units", low=1),
        "temperature": HP(0.1, "SupCon temperature", gt=0, search=loguniform(0.05, 0.5)),
        "stm_per_class": HP(25, "stored early activations per class (short-term memory)", low=1),
        "stm_num_tasks": HP(1, "episodes whose classes are replayed (also the freezing delay)", low=0),
        "mem_batch_size": HP(None, "replayed activations per step (null: train.batch_size)", type=int, low=1),
        "ltm_per_class": HP(25, "representations per class for the k-NN (long-term memory)", low=1),
        "k": HP(5, "nearest LTM vectors voting", low=1, search=randint(1, 25)),
        "reinit": HP(True, "re-initialise the free units at the end of each episode"),
    }
    settings = ("class-il", "task-il")
    checkpoint_attrs = ("masks", "states", "stm", "ltm", "ltm_mask", "has_ltm", "phase", "episodes")
    exemplar_attrs = ("stm",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.net = SparseMLP(self.model, int(self.hp.early_layers))
        # random pruning (every Linear layer; biases are not pruned) and all units free
        self.masks = [(torch.rand(l.weight.shape, generator=self.generator) >= float(self.hp.prune)).float()
                      .to(self.device) for l in self.net.linears]
        with torch.no_grad():
            for l, m in zip(self.net.linears, self.masks):
                l.weight.mul_(m)
        self.states = [torch.zeros(l.out_features, dtype=torch.long, device=self.device) for l in self.net.linears]
        d = self.net.linears[-1].out_features
        n = self.info.n_classes
        self.stm: dict = {}                                           # class -> quantised early activations
        self.ltm = torch.zeros(n, int(self.hp.ltm_per_class), d, device=self.device)
        self.ltm_mask = torch.zeros(n, d, dtype=torch.bool, device=self.device)
        self.has_ltm = torch.zeros(n, dtype=torch.bool, device=self.device)
        self.phase = 0                    # phases started in the current episode
        self.episodes: list[list[int]] = []
        self.mem_batch = int(self.hp.mem_batch_size or self.train_cfg["batch_size"])

    # ----- helpers ---------------------------------------------------------------------------------------
    def _frozen(self, i: int) -> Tensor:
        limit = 1 if i < self.net.n_early else int(self.hp.stm_num_tasks) + 1
        return self.states[i] > limit

    def represent(self, x: Tensor) -> Tensor:
        return self.net.late(self.net.early(x), self.states[-1] == 0)

    def _replayed_classes(self) -> list[int]:
        n = int(self.hp.stm_num_tasks)
        return [c for classes in (self.episodes[-n:] if n else []) for c in classes]

    # ----- a phase: select units, drop and grow connections, fresh optimiser ------------------------------
    def _start_phase(self, exp: Experience) -> None:
        self.phase += 1
        t = self.phase + 1 if self.phase == 1 else self.phase      # the code's schedule: tau(2), tau(2), tau(3)..
        perc = max(100 * 0.5 * (1 + math.cos(t * math.pi / float(self.hp.tau))), float(self.hp.min_activation_perc))
        x = exp.train.get(torch.arange(min(int(self.hp.select_samples), len(exp.train)),
                                       device=exp.train.device)).x
        with eval_mode(self.model), torch.no_grad():
            acts = self.net.activations(x)
        for state, act in zip(self.states, acts):
            candidates = state <= 1                                    # free or selected this episode
            picked = torch.zeros_like(candidates)
            picked[top_units(act.sum(0) / 1024.0, perc)] = True
            state[candidates & picked] = 1
            state[candidates & ~picked] = 0
        self._rewire()
        self.optimizer = self.make_optimizer()

    def _rewire(self) -> None:
        with torch.no_grad():
            for i, (layer, mask) in enumerate(zip(self.net.linears, self.masks)):
                src_free = (self.states[i - 1] == 0) if i > 0 else torch.zeros(layer.in_features, dtype=torch.bool,
                                                                                device=mask.device)
                tgt_free = self.states[i] == 0
                drop = (~tgt_free)[:, None] & src_free[None, :] & (mask > 0)
                quota = int(drop.sum())
                mask[drop] = 0
                if quota == 0:
                    continue
                possible = (tgt_free[:, None] & (mask == 0)).flatten().nonzero().squeeze(1)
                if len(possible) > quota:
                    possible = possible[torch.randperm(len(possible), generator=self.generator)[:quota].to(
                        possible.device)]
                mask.view(-1)[possible] = 1
                layer.weight.view(-1)[possible] = 0.0         # new connections start at 0
                layer.weight.mul_(mask)

    # ----- training ----------------------------------------------------------------------------------------
    def loss(self, batch: Batch) -> Tensor:
        loop = self.loop
        if loop is not None and loop["pos"] == 0 and self.phase <= loop["epoch"] // int(self.hp.phase_epochs):
            self._start_phase(self.experience)
        x, y = batch.x, batch.y
        counts = torch.bincount(y, minlength=self.info.n_classes)
        keep = counts[y] > 1                                          # SupCon needs a positive per class
        z = self.represent(x[keep])
        y = y[keep]
        replay = self._replayed_classes() if len(self.episodes) > 0 else []
        if replay and self.stm:
            a, ya = self._sample_stm(replay, self.mem_batch)
            z = torch.cat([z, self.net.late(a, self.states[-1] == 0)])
            y = torch.cat([y, ya])
        return supcon_loss(z, y, float(self.hp.temperature))

    def _sample_stm(self, classes: list[int], n: int) -> tuple[Tensor, Tensor]:
        """n stored activations, spread evenly over the classes (without replacement when enough)."""
        per = [n // len(classes) + (1 if i < n % len(classes) else 0) for i in range(len(classes))]
        xs, ys = [], []
        for c, k in zip(classes, per):
            a = dequantize(self.stm[str(c)])
            if k <= len(a):
                idx = torch.randperm(len(a), generator=self.generator)[:k]
            else:
                idx = torch.randint(len(a), (k,), generator=self.generator)
            xs.append(a[idx.to(a.device)])
            ys.append(torch.full((k,), c, dtype=torch.long, device=a.device))
        return torch.cat(xs), torch.cat(ys)

    def after_backward(self, batch: Batch) -> None:
        # pruned connections and frozen units receive no gradient
        for i, (layer, mask) in enumerate(zip(self.net.linears, self.masks)):
            frozen = self._frozen(i)
            if layer.weight.grad is not None:
                layer.weight.grad.mul_(mask)
                layer.weight.grad[frozen] = 0
            if layer.bias is not None and layer.bias.grad is not None:
                layer.bias.grad[frozen] = 0

    def after_step(self, batch: Batch) -> None:
        with torch.no_grad():
            for layer, mask in zip(self.net.linears, self.masks):
                layer.weight.mul_(mask)

    # ----- end of an episode: consolidate, short-term and long-term memories ------------------------------
    def after_experience(self, exp: Experience) -> None:
        for state in self.states:                                   # promote_units
            state[state != 0] += 1
        data = exp.train.get(torch.arange(len(exp.train), device=exp.train.device))
        replayed = self._replayed_classes()
        with eval_mode(self.model), torch.no_grad():
            stm = {c: c_ for c, c_ in self.stm.items() if int(c) in replayed}
            for c in exp.classes:
                stm[str(c)] = quantize(self.net.early(self._pick(data, c, int(self.hp.stm_per_class)).x))
            if self.hp.reinit:
                self._reinit_free_units()
            for c in exp.classes:                                  # LTM of this episode's classes
                self._store_ltm(c, self.represent(self._pick(data, c, int(self.hp.ltm_per_class)).x), 2)
            for age, classes in enumerate(reversed(self.episodes[-int(self.hp.stm_num_tasks):]
                                                   if int(self.hp.stm_num_tasks) else [])):
                for c in classes:                                  # the replayed classes, re-encoded from the STM
                    a, _ = self._sample_stm([c], int(self.hp.ltm_per_class))
                    self._store_ltm(c, self.net.late(a, self.states[-1] == 0), 3 + age)
        self.episodes.append(sorted(exp.classes))
        keep = {str(c) for c in self._replayed_classes()}
        self.stm = {c: v for c, v in stm.items() if c in keep}
        self.phase = 0

    def _pick(self, data: Batch, c: int, n: int) -> Batch:
        pos = (data.y == c).nonzero().squeeze(1)
        pos = pos[torch.randperm(len(pos), generator=self.generator)[:n].to(pos.device)]
        return Batch(x=data.x[pos], y=data.y[pos], t=data.t[pos], index=pos)

    def _store_ltm(self, c: int, reps: Tensor, min_state: int) -> None:
        k = len(reps)
        self.ltm[c, :k] = reps
        if k < self.ltm.shape[1]:                                   # fewer samples than slots: repeat
            self.ltm[c, k:] = reps[torch.arange(self.ltm.shape[1] - k) % k]
        mask = self.states[-1] >= min_state
        self.ltm_mask[c] = mask if bool(mask.any()) else torch.ones_like(mask)
        self.has_ltm[c] = True

    def _reinit_free_units(self) -> None:
        for layer, mask, state in zip(self.net.linears, self.masks, self.states):
            free = state == 0
            if not bool(free.any()):
                continue
            std = math.sqrt(2.0 / layer.out_features)                # kaiming_normal_, mode fan_out, relu
            w = torch.randn(int(free.sum()), layer.in_features, generator=self.generator).to(mask.device) * std
            layer.weight[free] = w * mask[free]
            if layer.bias is not None:
                layer.bias[free] = 0.0

    # ----- prediction: k nearest LTM vectors, per-class unit masks -----------------------------------------
    def predict(self, x: Tensor, task_id: Optional[int] = None) -> Tensor:
        return self.predict_with(self.model, x, task_id)

    def predict_with(self, model: nn.Module, x: Tensor, task_id: Optional[int] = None) -> Tensor:
        n_classes = self.info.n_classes
        classes = self.has_ltm.nonzero().squeeze(1).tolist()
        if task_id is not None and int(task_id) in self.task_classes:
            classes = [c for c in classes if c in self.task_classes[int(task_id)]]
        if not classes:
            return torch.zeros(len(x), n_classes, device=x.device)
        z = self.represent(x)
        dists, labels = [], []
        for c in classes:
            m = self.ltm_mask[c]
            d = torch.cdist(F.normalize(z[:, m], dim=1), F.normalize(self.ltm[c][:, m], dim=1))
            dists.append(d)
            labels += [c] * d.shape[1]
        dists = torch.cat(dists, 1)
        labels = torch.tensor(labels, device=x.device)
        nearest = dists.topk(min(int(self.hp.k), dists.shape[1]), largest=False).indices
        votes = torch.zeros(len(x), n_classes, device=x.device)
        votes.scatter_add_(1, labels[nearest], torch.ones_like(nearest, dtype=votes.dtype))
        tie_break = torch.arange(n_classes, device=x.device) * 1e-3      # torch.mode: the smaller class wins ties
        return votes - tie_break

    def extra_state(self) -> dict:
        density = sum(float(m.sum()) for m in self.masks) / sum(m.numel() for m in self.masks)
        return {"density": density, "units": [{str(s): int((st == s).sum()) for s in st.unique().tolist()}
                                               for st in self.states], "stm_classes": sorted(self.stm)}
