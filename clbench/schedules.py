"""Learning-rate schedules usable by every strategy: `train.schedule=constant|step|cosine|infinite`.

Each schedule is a small pure function of the position in the current experience: the factor that multiplies
every parameter group's base learning rate (train.lr, or a strategy's own per-group lr) at the 0-based step
`i` of an experience of `n` steps (`n = train.epochs x minibatches per epoch`). The base Strategy loop sets the
lr from it before every optimizer step; the position comes from the loop state that checkpoints already hold
(`loop["experience"]`, `loop["step"]`), so a resumed run follows the same curve.

    constant   1
    step       gamma ** (number of milestones <= the current epoch of the experience)  (MultiStepLR, per experience)
    cosine     repeated cosine, re-warmed at every experience: linear warm-up over the first `warmup` fraction,
               then half a cosine from 1 down to `min_lr`
    infinite   the "infinite" schedule of Singh, Janson et al., "Beyond Cosine Decay: On the effectiveness of
               Infinite Learning Rate Schedule for Continual Pre-training", CoLLAs 2025, arXiv:2503.02844, with its
               phases as in the authors' code (Pauljanson002/MAE-1 infinite_scheduler.py, `infinite_lr`,
               decay_style cosine_cooldown_infinite):
                 first experience:  warm-up  i <= N_w = int(warmup n):          i / N_w
                                    cooldown N_w < i <= N_c = int(cooldown n):  c + (1 - c)/2 (1 + cos(pi (i-N_w)/(N_c-N_w)))
                                    constant N_c < i <= N_d = int(anneal_at n): c
                                    anneal   i > N_d:                           c (m/c) ** ((i - N_d)/(n - N_d))
                 later experiences: constant up to N_d, then the same exponential annealing (no warm-up, no cooldown)
               with c = const_lr and m = min_lr (fractions of the base lr). N_c counts from the start of the
               experience, so it includes the warm-up. As in the authors' loop (mae_pretrain.py, trainer.py), the
               weights after the last constant-lr step (i = N_d) are kept, and the next experience starts from
               them rather than from the annealed weights (`restart_before_anneal`): annealing is a branch that is
               evaluated, not continued.

Deviation from the authors' loop: it sets the lr *after* each step (its first step runs at the optimizer's
initial lr, the second at f(0) = 0); here step i runs at f(i), as torch's LambdaLR does.
"""
from __future__ import annotations

import math
from typing import Optional

from clbench.errors import PluginError, bad_value

SCHEDULES = ("constant", "step", "cosine", "infinite")
# The train.* keys each schedule reads; the others are dropped from the resolved config, so a key that changes
# nothing never changes the config hash (configs without a schedule hash as they did before schedules existed).
KEYS = {
    "constant": (),
    "step": ("milestones", "gamma"),
    "cosine": ("warmup", "min_lr"),
    "infinite": ("warmup", "cooldown", "anneal_at", "const_lr", "min_lr", "restart_before_anneal"),
}
ALL_KEYS = ("schedule", *dict.fromkeys(k for keys in KEYS.values() for k in keys))


def step_factor(i: int, steps_per_epoch: int, milestones, gamma: float) -> float:
    epoch = i // max(int(steps_per_epoch), 1)
    return float(gamma) ** sum(1 for m in milestones if epoch >= int(m))


def cosine_factor(i: int, n: int, warmup: float, min_lr: float) -> float:
    n_w = int(n * warmup)
    if i < n_w:
        return i / n_w
    span = max(n - n_w, 1)
    return min_lr + (1.0 - min_lr) * 0.5 * (1.0 + math.cos(math.pi * (i - n_w) / span))


def infinite_factor(i: int, n: int, first: bool, warmup: float, cooldown: float, anneal_at: float,
                    const_lr: float, min_lr: float) -> float:
    n_d = int(n * anneal_at)
    if first:
        n_w, n_c = int(n * warmup), int(n * cooldown)
        if n_w > 0 and i <= n_w:
            return i / n_w
        if i <= n_c:
            return const_lr + (1.0 - const_lr) / 2.0 * (1.0 + math.cos(math.pi * (i - n_w) / (n_c - n_w)))
    if i <= n_d:
        return const_lr
    return const_lr * (min_lr / const_lr) ** ((i - n_d) / (n - n_d))


class Schedule:
    """The schedule of a train config: `factor(i, n, steps_per_epoch, first)` and where to keep a snapshot."""

    def __init__(self, train_cfg: dict):
        self.name = str(train_cfg.get("schedule", "constant"))
        self.cfg = train_cfg

    def __bool__(self) -> bool:
        return self.name != "constant"

    def factor(self, i: int, n: int, steps_per_epoch: int, first: bool) -> float:
        c = self.cfg
        if self.name == "step":
            return step_factor(i, steps_per_epoch, c["milestones"], c["gamma"])
        if self.name == "cosine":
            return cosine_factor(i, n, c["warmup"], c["min_lr"])
        if self.name == "infinite":
            return infinite_factor(i, n, first, c["warmup"], c["cooldown"], c["anneal_at"], c["const_lr"], c["min_lr"])
        return 1.0

    def snapshot_step(self, n: int) -> Optional[int]:
        """The step after which the weights are kept for the next experience (None: the annealed ones go on)."""
        if self.name == "infinite" and self.cfg.get("restart_before_anneal", True):
            n_d = int(n * self.cfg["anneal_at"])
            return n_d if n_d < n - 1 else None       # no annealing step in this experience: nothing to branch
        return None


def trained_outside(model, optimizer) -> list:
    """The parameters the optimizer trains that are not the model's (HNET's hypernetwork and task embeddings)."""
    own = {id(p) for p in model.parameters()}
    return [p for group in optimizer.param_groups for p in group["params"] if id(p) not in own]


def snapshot(model, optimizer) -> dict:
    """The weights the next experience starts from: the model's state (parameters and buffers) and every other
    parameter the optimizer trains."""
    return {"model": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "trained": [p.detach().clone() for p in trained_outside(model, optimizer)]}


def restore(saved: dict, model, optimizer) -> None:
    """Load a snapshot back (the optimizer still trains the parameters it trained when the snapshot was taken)."""
    params = trained_outside(model, optimizer)
    if len(params) != len(saved["trained"]) or any(p.shape != v.shape for p, v in zip(params, saved["trained"])):
        raise PluginError(f"train.schedule=infinite: the optimizer's parameters changed between the snapshot before "
                          f"the annealing and the next experience ({len(saved['trained'])} tensors kept, "
                          f"{len(params)} trained now); set train.restart_before_anneal=false for this strategy")
    import torch  # here, not at the top: clbench.config imports this module and must not load torch
    model.load_state_dict(saved["model"])
    with torch.no_grad():
        for p, v in zip(params, saved["trained"]):
            p.copy_(v)


def set_lr(optimizer, factor: float) -> None:
    """lr of every parameter group = its base lr (remembered at the first call) x factor."""
    for group in optimizer.param_groups:
        group.setdefault("base_lr", group["lr"])
        group["lr"] = group["base_lr"] * factor


def checked(train: dict) -> dict:
    """The train section with the keys of its schedule only, their order checked (one line per problem)."""
    name = train.get("schedule", "constant")
    if name == "infinite" and not train["warmup"] <= train["cooldown"] <= train["anneal_at"]:
        raise bad_value("train.cooldown", f"the infinite schedule needs warmup <= cooldown <= anneal_at (fractions "
                                          f"of an experience), got {train['warmup']}, {train['cooldown']}, "
                                          f"{train['anneal_at']}")
    if name == "infinite" and train["min_lr"] > train["const_lr"]:
        raise bad_value("train.min_lr", f"the infinite schedule anneals from const_lr down to min_lr; got min_lr "
                                        f"{train['min_lr']} > const_lr {train['const_lr']}")
    if name == "step" and list(train["milestones"]) != sorted(train["milestones"]):
        raise bad_value("train.milestones", f"expected increasing epochs, got {train['milestones']}")
    drop = {k for k in ALL_KEYS if k not in KEYS.get(name, ())}
    if name != "constant":
        drop.discard("schedule")
    return {k: v for k, v in train.items() if k not in drop}
