"""The strategy contract: train on one experience at a time, predict given inputs (and the task id only where
the scenario permits it).

A strategy declares its hyper-parameters and overrides a few small hooks named after what happens; the loop
lives here once:

    train_experience(exp):                       # a generator: the engine evaluates, logs, checkpoints between steps
        before_experience(exp)                   # strategy first, then each callback
        for each epoch, for each minibatch of training_data(exp):
            around_step(batch):                  # callbacks wrap the step (refresh: unlearn, then the step)
                loss(batch) -> backward -> after_backward(batch) -> optimizer step -> after_step(batch)
            yield                                # the engine's turn
        after_experience(exp)

What a strategy may see (a sealed stream): the current experience's training data (its own copy, with no
path to other data), its own memory, and the `StreamInfo` the scenario declares known up front. It never
receives the evaluator, evaluation data or future experiences; a strategy that wants extra models scored
(CLS-ER's plastic and working models) returns them from `extra_models()` and the evaluator scores them.

State for resuming: `state_dict()` covers the model, optimizer, generator, loop position and every attribute
named in `checkpoint_attrs` (tensors, modules, replay buffers, dicts and lists of them); override
`state_dict`/`load_state_dict` (calling super) only for state that is none of those.

The full guide, with a worked example: docs/plugins.md.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clbench import state as S
from clbench import schedules
from clbench.errors import PluginError, TrainingDiverged
from clbench.hparams import HP, Params, check_value, defaults
from clbench.stream import Batch, Experience, TensorSplit


@dataclass(frozen=True)
class StreamInfo:
    """What a strategy may know about the stream up front (no data, no future experiences).

    `task_classes` holds the classes of each task only where the scenario declares them known up front: in
    task-IL (multi-head: the head of every task is part of the protocol). Elsewhere it is empty, and a strategy
    learns the classes of a task when its experience arrives (`Strategy.task_classes`, `Strategy.seen_classes`).
    """
    name: str
    setting: str                      # class-il, task-il, domain-il
    n_classes: int                    # size of the output layer
    n_experiences: int
    input_shape: tuple
    task_classes: dict = field(default_factory=dict)


LOG_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.]{0,99}")   # the result schema's metric_name (schemas/defs.json)
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}   # train.amp


def make_optimizer(params, train_cfg: dict) -> torch.optim.Optimizer:
    name, lr = train_cfg.get("optimizer", "sgd"), float(train_cfg["lr"])
    wd = float(train_cfg.get("weight_decay", 0.0))
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=float(train_cfg.get("momentum", 0.0)), weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if name == "adadelta":                  # SHARP's optimiser (lr 1.0)
        return torch.optim.Adadelta(params, lr=lr, weight_decay=wd)
    raise PluginError(f"unknown optimizer {name!r}")


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of a model in eval mode with no gradients (a teacher, a previous model, an anchor)."""
    m = copy.deepcopy(model).eval()
    m.requires_grad_(False)
    return m


def _inputs_and_extras(kept):
    """Kept samples ({"x": ..., "y": ..., ...} or lists of them) split into inputs and per-sample extras."""
    if isinstance(kept, dict) and "x" in kept:
        return kept["x"], {k: v for k, v in kept.items() if k != "x"}
    if isinstance(kept, (list, tuple)):
        pairs = [_inputs_and_extras(v) for v in kept]
        return [a for a, _ in pairs], [b for _, b in pairs]
    return kept, None


class Callback:
    """Behaviour that composes around any strategy (refresh learning, logging, rehearsal schedules).

    Declares `hparams` like a strategy; its hooks receive the strategy first. `around_step(strategy, batch,
    step)` must call `step(batch)` exactly once and return its loss. State: `checkpoint_attrs` as a strategy.
    """

    description = "callback"
    hparams: dict[str, HP] = {}
    checkpoint_attrs: tuple[str, ...] = ()

    def __init__(self, params: Optional[dict] = None, seed: int = 0):
        self.hp = Params({**defaults(self.hparams), **(params or {})})

    def setup(self, strategy: "Strategy") -> None:
        """Called once the strategy is built (allocate state that depends on the model here)."""

    def before_experience(self, strategy: "Strategy", exp: Experience) -> None: ...
    def after_backward(self, strategy: "Strategy", batch: Batch) -> None: ...
    def after_step(self, strategy: "Strategy", batch: Batch) -> None: ...
    def after_experience(self, strategy: "Strategy", exp: Experience) -> None: ...

    def around_step(self, strategy: "Strategy", batch: Batch, step) -> Tensor:
        return step(batch)

    def extra_state(self) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {name: S.pack(getattr(self, name)) for name in self.checkpoint_attrs}

    def load_state_dict(self, state: dict, template: Optional[nn.Module] = None) -> None:
        for name in self.checkpoint_attrs:
            if name in state:
                setattr(self, name, S.unpack(state[name], getattr(self, name, None), template))


class Strategy:
    """Base class: plain fine-tuning. Subclasses declare hyper-parameters and override hooks, not the loop."""

    description = "fine-tuning (base class)"
    paper = ""                        # citation of the method's paper
    code = ""                         # the reference implementation the strategy follows
    hparams: dict[str, HP] = {}
    # Settings this strategy supports; the engine refuses other combinations with a clear message.
    settings: tuple[str, ...] = ("class-il", "task-il", "domain-il")
    # Attributes saved by state_dict() beyond model, optimizer, generator and loop position.
    checkpoint_attrs: tuple[str, ...] = ()
    # Keep a frozen copy of the model as it was at the end of the previous experience (`self.previous_model`).
    keeps_previous_model: bool = False
    # Attributes (among checkpoint_attrs) that hold kept training samples outside a replay buffer (memory accounting).
    exemplar_attrs: tuple[str, ...] = ()
    # False when the training loop is opaque (the Avalanche bridge): no per-step events, resume per run only.
    step_events: bool = True
    resumable: bool = True
    # True (in the class's own body, not inherited): the default loss over loss_batch(), the base forward and
    # step, and nothing per step that reads the model -- several seeds can then train as one vectorised model
    # with each seed's result unchanged (clbench/seed_parallel.py checks the rest)
    seed_parallel: bool = False

    def __init__(self, model: nn.Module, params: dict, train_cfg: dict, info: StreamInfo,
                 device: torch.device, seed: int = 0):
        self.model = model.to(device)
        self.hp = Params(self._checked_params(params))
        self.train_cfg = train_cfg
        self.info = info
        self.device = device
        # CPU generator: minibatch order and buffer sampling are reproducible on any device.
        self.generator = torch.Generator().manual_seed(int(seed))
        self.optimizer = self.make_optimizer()
        self.callbacks: list[Callback] = []
        self.experience: Optional[Experience] = None
        self.task_classes: dict[int, list[int]] = {int(t): list(c) for t, c in info.task_classes.items()}
        self.seen_classes: list[int] = []
        self.previous_model: Optional[nn.Module] = None
        self.global_step = 0                 # training steps so far, over all experiences
        self.last_loss: Optional[Tensor] = None
        self.loop: Optional[dict] = None     # position inside the current experience (for resuming)
        self._logs: list[tuple[str, float]] = []
        self._class_mask: Optional[Tensor] = None
        # ----- perf: train.amp and train.compile (both off by default: nothing below changes a result then)
        amp = train_cfg.get("amp", "off")
        self._autocast = (None if amp == "off" else
                          functools.partial(torch.autocast, device.type, dtype=AMP_DTYPES[amp]))
        self.scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None   # fp16 needs loss scaling
        mode = train_cfg.get("compile", "off")
        # a compiled view of the model sharing its parameters: state_dict keys and copies stay plain modules
        self._compiled = None if mode == "off" else torch.compile(self.model, mode=mode)
        # train.schedule (clbench/schedules.py): the lr follows the position in the experience (self.loop);
        # the infinite schedule keeps the weights before annealing for the next experience
        self.schedule = schedules.Schedule(train_cfg)
        self.schedule_snapshot: Optional[dict] = None

    @classmethod
    def _checked_params(cls, params: dict) -> dict:
        """Declared defaults, then the given values, each checked (the engine passes values already checked)."""
        specs = getattr(cls, "hparams", {}) or {}
        out = {k: v for k, v in (params or {}).items() if k == "name" or k not in specs}
        for k, spec in specs.items():
            out[k] = check_value(f"strategy.{k}", (params or {}).get(k, spec.default), spec)
        return out

    def add_callback(self, cb: Callback) -> None:
        self.callbacks.append(cb)
        cb.setup(self)

    # ----- what the strategy knows about the stream so far ----------------------------------------
    @property
    def n_seen_classes(self) -> int:
        return len(self.seen_classes)

    @property
    def current_task(self) -> Optional[int]:
        return self.experience.task_id if self.experience is not None else None

    @property
    def class_mask(self) -> Tensor:
        """Row t masks the logits to task t's classes (task-IL heads), from the classes known so far."""
        if self._class_mask is None:
            n_tasks = max([*self.task_classes, 0]) + 1
            mask = torch.zeros(n_tasks, self.info.n_classes, dtype=torch.bool, device=self.device)
            for t, classes in self.task_classes.items():
                mask[t, classes] = True
            self._class_mask = mask
        return self._class_mask

    # ----- the loop ---------------------------------------------------------------------------------
    def train(self, exp: Experience) -> None:
        """Train on one experience start to end (what the engine does, without evaluation in between)."""
        for _ in self.train_experience(exp):
            pass

    def train_experience(self, exp: Experience) -> Iterator[int]:
        """Train on one experience, yielding the number of stream samples after each step.

        Resumable: when `self.loop` (restored from a checkpoint) is inside this experience, training continues
        from the saved position instead of starting over.
        """
        if self.loop is None or self.loop["experience"] != exp.index:
            self.begin_experience(exp)
        else:
            self.experience = exp
        data = self.training_data(exp)
        if data is not None and not isinstance(data, TensorSplit):
            raise PluginError(f"strategy '{type(self).__name__}' ({type(self).__module__}): hook training_data(exp) must "
                              f"return a clbench.stream.TensorSplit or None, got a {type(data).__name__}")
        if data is not None and len(data) > 0:
            yield from self.fit(data)
        self.end_experience(exp)

    def begin_experience(self, exp: Experience) -> None:
        self.experience = exp
        if exp.kind == "new" and len(exp.task_ids) == 1:
            t = int(exp.task_ids[0])
            self.task_classes[t] = sorted(set(self.task_classes.get(t, [])) | set(exp.classes))
            self._class_mask = None
        self.seen_classes = sorted(set(self.seen_classes) | set(exp.classes))
        if self.schedule_snapshot is not None:       # infinite schedule: continue from before the annealing
            schedules.restore(self.schedule_snapshot, self.model, self.optimizer)
            self.schedule_snapshot = None
        if self.train_cfg.get("reset_optimizer", True) and exp.index > 0:
            self.optimizer = self.make_optimizer()
        self.loop = {"experience": exp.index, "epoch": 0, "order": None, "pos": 0, "step": 0}
        self.model.train()
        self.before_experience(exp)
        for cb in self.callbacks:
            cb.before_experience(self, exp)

    def fit(self, data: TensorSplit) -> Iterator[int]:
        """`train.epochs` passes of shuffled minibatches over `data`, from the saved loop position; yields the
        number of stream samples of each step."""
        loop, bs = self.loop, int(self.train_cfg["batch_size"])
        loop["steps_per_epoch"] = (len(data) + bs - 1) // bs          # the lr schedule's position
        loop["n_steps"] = loop["steps_per_epoch"] * int(self.train_cfg["epochs"])
        while loop["epoch"] < int(self.train_cfg["epochs"]):
            if loop["order"] is None:     # an online split is consumed in its arrival order, never shuffled
                loop["order"] = (torch.arange(len(data), device=data.device) if data.arrival_order else
                                 torch.randperm(len(data), generator=self.generator).to(data.device))
            while loop["pos"] < len(data):
                pos = loop["order"][loop["pos"]:loop["pos"] + bs]
                batch = data.get(pos)
                self.step(batch)
                loop["pos"] += len(pos)
                yield len(pos)
            loop["epoch"], loop["order"], loop["pos"] = loop["epoch"] + 1, None, 0

    def end_experience(self, exp: Experience) -> None:
        self.after_experience(exp)
        for cb in self.callbacks:
            cb.after_experience(self, exp)
        if self.keeps_previous_model:
            self.previous_model = frozen_copy(self.model)
        self.loop = None

    def step(self, batch: Batch) -> Tensor:
        """One training step, wrapped by the callbacks' around_step (first callback outermost)."""
        if not self.callbacks:
            return self.train_step(batch)
        step = self.train_step
        for cb in reversed(self.callbacks):
            step = functools.partial(cb.around_step, self, step=step)
        before = self.global_step
        loss = step(batch)
        if self.global_step != before + 1:
            names = ", ".join(f"'{type(cb).__name__}' ({type(cb).__module__})" for cb in self.callbacks)
            raise PluginError(f"callback {names}: hook around_step(strategy, batch, step) must call step(batch) exactly "
                              f"once, but the strategy took {self.global_step - before} steps")
        return loss

    def train_step(self, batch: Batch) -> Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduled_lr()
        loss = self.loss_and_gradients(batch)
        if self.loop is not None:
            self.loop["step"] += 1
        self.global_step += 1
        if not bool(torch.isfinite(loss.detach())):
            # Fail the run: a NaN/inf loss poisons the weights and every result written after it.
            where = f"experience {self.loop['experience']}, step {self.loop['step']}" if self.loop else "a step"
            raise TrainingDiverged(
                f"strategy {type(self).__name__} produced a non-finite training loss ({float(loss.detach())}) in "
                f"{where}; the run is stopped (lower train.lr or check the strategy's hyper-parameters)")
        self.after_backward(batch)
        for cb in self.callbacks:
            cb.after_backward(self, batch)
        if self.scaler is None:
            self.optimizer.step()
        else:                        # skips the step when a gradient overflowed, and adapts the scale
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.keep_schedule_snapshot()
        self.after_step(batch)
        for cb in self.callbacks:
            cb.after_step(self, batch)
        self.last_loss = loss.detach()
        return self.last_loss

    def loss_and_gradients(self, batch: Batch) -> Tensor:
        """The loss of one minibatch, with its gradients in the parameters' .grad (a seed-parallel run,
        clbench/seed_parallel.py, computes this for all its seeds at once)."""
        with self._autocast() if self._autocast is not None else contextlib.nullcontext():   # train.amp
            loss = self._checked_loss(self.loss(batch))
        if self.scaler is None:
            loss.backward()
        else:                        # fp16: scaled backward, then true gradients for the hooks
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        return loss

    def scheduled_lr(self) -> None:
        """Set the lr of `train.schedule` for the coming step, before loss() (HNET's look-ahead reads it)."""
        loop = self.loop
        if self.schedule and loop is not None and "n_steps" in loop:
            first = loop["experience"] == 0
            schedules.set_lr(self.optimizer, self.schedule.factor(loop["step"], loop["n_steps"],
                                                                  loop["steps_per_epoch"], first))

    def keep_schedule_snapshot(self) -> None:
        """The infinite schedule: after its last constant-lr step, keep the weights the next experience starts from."""
        loop = self.loop
        if self.schedule and loop is not None and "n_steps" in loop and \
                loop["step"] - 1 == self.schedule.snapshot_step(loop["n_steps"]):
            self.schedule_snapshot = schedules.snapshot(self.model, self.optimizer)

    def _checked_loss(self, loss) -> Tensor:
        if isinstance(loss, Tensor) and loss.dim() == 0 and loss.is_floating_point():
            return loss
        got = (f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, Tensor)
               else f"a {type(loss).__name__}")
        raise PluginError(f"strategy '{type(self).__name__}' ({type(self).__module__}): hook loss(batch) must return "
                          f"a scalar floating-point torch.Tensor that requires grad, got {got}")

    # ----- hooks (override these) -----------------------------------------------------------------
    def before_experience(self, exp: Experience) -> None:
        """Called before the first minibatch of an experience."""

    def training_data(self, exp: Experience) -> Optional[TensorSplit]:
        """The data the loop trains on for this experience (its own training data by default; a strategy
        may return its memory, the union of what it kept, or None to skip training)."""
        return exp.train

    def loss(self, batch: Batch) -> Tensor:
        """The loss of one minibatch: cross-entropy over `loss_batch(batch)` by default."""
        b = self.loss_batch(batch)
        return F.cross_entropy(self.forward(b.x, b.t), b.y)

    def loss_batch(self, batch: Batch) -> Batch:
        """The samples the default loss is taken on: the minibatch itself (ER joins a memory sample to it)."""
        return batch

    def after_backward(self, batch: Batch) -> None:
        """Gradients are in .grad; change them here (projection, clipping)."""

    def after_step(self, batch: Batch) -> None:
        """Parameters were updated (EMA models, buffer insertion)."""

    def after_experience(self, exp: Experience) -> None:
        """Called after the last minibatch of an experience (consolidation, buffer update)."""

    # ----- prediction ----------------------------------------------------------------------------
    @property
    def task_aware(self) -> bool:
        return self.info.setting == "task-il"

    def mask_logits(self, logits: Tensor, t: Tensor) -> Tensor:
        """Keep only the logits of each sample's task (multi-head task-IL)."""
        # task-IL declares every task's classes up front, so the mask has a row for every task (no data-dependent
        # control flow here: this runs under torch.func.vmap for per-sample gradients)
        return logits.masked_fill(~self.class_mask[t], torch.finfo(logits.dtype).min)

    def task_head(self, logits: Tensor, t: Optional[Tensor]) -> Tensor:
        """The logits a training loss sees: masked to each sample's task head in task-IL, unchanged otherwise
        (for strategies that run another model or a functional call, next to `forward`)."""
        return self.mask_logits(logits, t) if (self.task_aware and t is not None) else logits

    def mask_unseen(self, logits: Tensor, fill: Optional[float] = None) -> Tensor:
        """Logits of the classes not seen yet set to `fill` (default: the dtype's lowest), never predicted."""
        unseen = torch.ones(logits.shape[1], dtype=torch.bool, device=logits.device)
        unseen[self.seen_classes] = False
        return logits.masked_fill(unseen, torch.finfo(logits.dtype).min if fill is None else fill)

    def forward(self, x: Tensor, t: Optional[Tensor] = None) -> Tensor:
        """Training forward pass: logits, masked to the task's head when the setting is task-IL."""
        return self.task_head((self._compiled if self._compiled is not None else self.model)(x), t)

    def predict(self, x: Tensor, task_id: Optional[int] = None) -> Tensor:
        """Logits for evaluation. `task_id` is given only in task-IL."""
        return self.predict_with(self.eval_model(), x, task_id)

    def predict_with(self, model: nn.Module, x: Tensor, task_id: Optional[int] = None) -> Tensor:
        logits = (self._compiled if model is self.model and self._compiled is not None else model)(x)
        if task_id is not None:
            t = torch.full((len(x),), int(task_id), dtype=torch.long, device=x.device)
            logits = self.mask_logits(logits, t)
        return logits

    def eval_model(self) -> nn.Module:
        """The network used for evaluation (e.g. the stable EMA model in CLS-ER)."""
        return self.model

    def extra_models(self) -> dict[str, nn.Module]:
        """Other models the evaluator should score after every experience (name -> module)."""
        return {}

    def make_optimizer(self) -> torch.optim.Optimizer:
        return make_optimizer(self.model.parameters(), self.train_cfg)

    # ----- logging and reporting ------------------------------------------------------------------
    def log(self, name: str, value) -> None:
        """Log a scalar at the current step: it reaches the console, W&B and result.json's `logs`.
        `name`: letters, digits, '_' and '.' (result.json's metric names, e.g. "bic.beta")."""
        if not isinstance(name, str) or not LOG_NAME.fullmatch(name):
            raise PluginError(f"strategy '{type(self).__name__}' ({type(self).__module__}): log(name, value) needs a "
                              f"name of letters, digits, '_' and '.' starting with a letter (result.json's metric "
                              f"names), got {name!r}")
        if isinstance(value, torch.Tensor):
            value = value.detach()
        self._logs.append((str(name), float(value)))

    def pop_logs(self) -> list[tuple[str, float]]:
        logs, self._logs = self._logs, []
        return logs

    def extra_state(self) -> dict:
        """Numbers for result.json (buffer size and bytes, basis sizes, ...)."""
        return {}

    def memory_footprint(self) -> dict:
        """Bytes this method keeps, in the unit of Zhou et al. 2023 ("A Model or 603 Exemplars", ICLR): kept inputs
        in their stored dtype (uint8 images), model parameters and buffers as stored (float32); docs/memory.md.

        exemplar_bytes: the inputs of the samples kept (filled buffer slots; `exemplar_attrs`); extra_model_bytes:
        modules kept beside the trained model (old models, EMA copies, teachers); other_state_bytes: every other
        kept tensor (labels and logits of kept samples, prototypes, bases, importance weights, anchors).
        """
        # (zoo3a, issue 16: filled slots only; inputs vs per-sample extras; exemplar_attrs)
        from clbench.buffer import Storage
        kept = {name: getattr(self, name, None) for name in self.checkpoint_attrs}
        if self.previous_model is not None:
            kept["previous_model"] = self.previous_model
        if self.schedule_snapshot is not None:
            kept["schedule_snapshot"] = self.schedule_snapshot
        for i, cb in enumerate(self.callbacks):
            kept.update({f"callback{i}.{n}": getattr(cb, n, None) for n in cb.checkpoint_attrs})
        seen: set = set()
        S.nbytes(self.model, seen)          # the trained model's own tensors are not "kept"
        exemplars = models = other = 0
        for name, v in kept.items():
            if isinstance(v, Storage) or name in self.exemplar_attrs:
                if isinstance(v, Storage):  # only the filled slots
                    v = {k: t[:v.size] for k, t in v.data.items()}
                inputs, extras = _inputs_and_extras(v)
                exemplars += S.nbytes(inputs, seen)
                other += S.nbytes(extras, seen)
            elif isinstance(v, nn.Module):
                models += S.nbytes(v, seen)
            else:
                other += S.nbytes(v, seen)
        model_bytes = S.nbytes(self.model)
        return {"model_bytes": model_bytes, "exemplar_bytes": exemplars, "extra_model_bytes": models,
                "other_state_bytes": other, "kept_bytes": exemplars + models + other,
                "total_bytes": model_bytes + exemplars + models + other}

    # ----- state (resume) -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "model": S.pack(self.model),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "loop": S.pack(self.loop),
            "global_step": self.global_step,
            "task_classes": {str(t): list(c) for t, c in self.task_classes.items()},
            "seen_classes": list(self.seen_classes),
            "previous_model": S.pack(self.previous_model),
            "attrs": {name: S.pack(getattr(self, name)) for name in self.checkpoint_attrs},
            "callbacks": [cb.state_dict() for cb in self.callbacks],
            "schedule_snapshot": S.pack(self.schedule_snapshot),
            **({"scaler": self.scaler.state_dict()} if self.scaler is not None else {}),
        }

    def load_state_dict(self, state: dict) -> None:
        S.unpack(state["model"], self.model)
        self.optimizer = self.make_optimizer()
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.loop = S.unpack(state["loop"], None, self.model)
        self.global_step = int(state["global_step"])
        self.task_classes = {int(t): list(c) for t, c in state["task_classes"].items()}
        self._class_mask = None
        self.seen_classes = list(state["seen_classes"])
        self.previous_model = S.unpack(state["previous_model"], self.previous_model, self.model)
        for name in self.checkpoint_attrs:
            setattr(self, name, S.unpack(state["attrs"][name], getattr(self, name, None), self.model))
        for cb, cb_state in zip(self.callbacks, state["callbacks"]):
            cb.load_state_dict(cb_state, self.model)
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.schedule_snapshot = S.unpack(state.get("schedule_snapshot"))
