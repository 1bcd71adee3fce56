"""Run any Avalanche training strategy on a clbench stream: `strategy=avalanche:<Name>`.

    clbench run strategy=avalanche:EWC strategy.ewc_lambda=0.4
    clbench run strategy=avalanche:Replay strategy.mem_size=500

The bridge is an ordinary clbench Strategy. For each clbench experience it builds an Avalanche
experience holding the same training samples (native dtype, the scenario's transform applied), calls
the Avalanche strategy's own `train()` on it, and lets clbench's common evaluator measure the same
torch model, so the result.json is the same as for a built-in strategy. Avalanche's own evaluation
and loggers are switched off.

Constructor arguments: every keyword argument of the Avalanche strategy whose default is plain data
(numbers, strings, booleans, None, lists) becomes a `strategy.<arg>` config key, overridable from the
CLI. Required arguments without an Avalanche default get the documented values in `REQUIRED_DEFAULTS`
(or must be given). The training protocol (optimizer, lr, batch size, epochs) comes from the
benchmark's `train` section, exactly as for built-in strategies.

Avalanche is imported only here, and only when the bridge is used: it patches torch on import.
"""
from __future__ import annotations

import inspect
import warnings
from typing import Any

import torch

from clbench.errors import ConfigError, TrainingDiverged
from clbench.hparams import HP, specs_from_signature
from clbench.registry import did_you_mean
from clbench.strategy import Strategy
from clbench.stream import Experience

# Arguments the bridge itself supplies; not config keys.
BRIDGE_ARGS = {"model", "optimizer", "criterion", "train_mb_size", "train_epochs", "eval_mb_size", "device",
               "plugins", "evaluator", "eval_every", "peval_mode"}

# Short names as people write them.
ALIASES = {"SI": "SynapticIntelligence", "PNN": "PNNStrategy", "GSS": "GSS_greedy", "CWR": "CWRStar",
           "ExpertGate": "ExpertGateStrategy", "SLDA": "StreamingLDA", "L2P": "LearningToPrompt"}

# Values for arguments Avalanche requires but gives no default (override any of them from the CLI).
REQUIRED_DEFAULTS: dict[str, dict[str, Any]] = {
    "EWC": {"ewc_lambda": 0.4},                        # Avalanche examples' EWC weight
    "LwF": {"alpha": 1.0, "temperature": 2.0},         # Li & Hoiem T = 2; Mammoth seq-mnist alpha = 1
    "SynapticIntelligence": {"si_lambda": 1.0},
    "AGEM": {"patterns_per_exp": 250},                 # A-GEM paper, PMNIST (25 per class)
    "GEM": {"patterns_per_exp": 256},
    "LFL": {"lambda_e": 1.0},
    "MIR": {"mem_size": 200, "subsample": 50},
    "CWRStar": {"cwr_layer_name": "classifier"},       # clbench's MLP names its last layer `classifier`
}

# Arguments filled from the stream when left at null.
FROM_STREAM = {"n_classes": lambda info: info.n_classes, "num_classes": lambda info: info.n_classes,
               "input_size": lambda info: list(info.input_shape)}

# Combinations that cannot work on a clbench stream, with what to do instead.
UNSUPPORTED = {
    "JointTraining": "it trains once on the whole stream; use clbench's strategy=joint",
    "PNNStrategy": "it needs Avalanche's PNN model, not a clbench model",
    "PackNet": "it needs a PackNetModel wrapper around the network",
    "ICaRL": "it needs separate feature-extractor and classifier modules and a buffer transform",
    "ER_AML": "it needs a separate feature-extractor module",
    "StreamingLDA": "it needs a pre-trained feature extractor (slda_model)",
    "LearningToPrompt": "it needs a pre-trained ViT (timm)",
    "ExpertGateStrategy": "it needs Avalanche's ExpertGateModel",
    "AR1": "it is tied to Avalanche's MobileNetV1 with batch renormalisation",
    "GenerativeReplay": "it trains a generator alongside the classifier (not a clbench model)",
    "AETraining": "it trains an autoencoder, not a classifier",
    "VAETraining": "it trains a VAE, not a classifier",
    "LaMAML": "it needs a meta-learning model with learnable learning rates",
    "MER": "it needs a meta-learning template",
}


def _plain(v: Any) -> bool:
    if isinstance(v, (list, tuple)):
        return all(_plain(x) for x in v)
    return v is None or isinstance(v, (bool, int, float, str))


def avalanche_strategies() -> dict[str, type]:
    """Every supervised strategy class Avalanche exports, by class name."""
    import avalanche.training.supervised as S
    from avalanche.training.templates import SupervisedTemplate
    return {n: c for n, c in vars(S).items()
            if inspect.isclass(c) and issubclass(c, SupervisedTemplate) and not n.startswith("_")}


def lookup(arg: str) -> tuple[str, type]:
    """The Avalanche class for `avalanche:<arg>`; unknown or unsupported names fail with a clear message."""
    if not arg:
        raise ConfigError("strategy 'avalanche' needs a name: strategy=avalanche:<Name>, e.g. avalanche:EWC")
    name = ALIASES.get(arg, arg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        classes = avalanche_strategies()
    if name not in classes:
        valid = sorted(set(classes) - set(UNSUPPORTED)) + [a for a, n in ALIASES.items() if n not in UNSUPPORTED]
        raise ConfigError(f"unknown Avalanche strategy '{arg}'.{did_you_mean(arg, valid)} "
                          f"Valid choices: {', '.join(sorted(valid))}.")
    if name in UNSUPPORTED:
        raise ConfigError(f"strategy=avalanche:{arg} is not supported by the bridge: {UNSUPPORTED[name]}.")
    if name == "GEM":
        import qpsolvers
        if "quadprog" not in qpsolvers.available_solvers:
            raise ConfigError("strategy=avalanche:GEM needs the QP solver 'quadprog': "
                              "pip install 'clbench[gem]' (or pip install quadprog)")
    return name, classes[name]


def constructor_defaults(name: str, cls: type) -> tuple[dict, list[str]]:
    """Config keys for the strategy's own constructor arguments, and the required ones still missing."""
    out, missing = {}, []
    for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        if p.name in BRIDGE_ARGS or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        if p.name in REQUIRED_DEFAULTS.get(name, {}):
            out[p.name] = REQUIRED_DEFAULTS[name][p.name]
        elif p.default is p.empty:
            out[p.name] = None
            missing.append(p.name)
        elif p.name in FROM_STREAM and p.default is not None:
            out[p.name] = None  # filled from the stream
        elif _plain(p.default):
            out[p.name] = list(p.default) if isinstance(p.default, tuple) else p.default
    return out, missing


def _divergence_plugin(bridge: "AvalancheBridge"):
    from avalanche.core import SupervisedPlugin

    class StopOnDivergence(SupervisedPlugin):
        """Stops the run on a non-finite loss or weights, as the native training loop does."""

        def before_update(self, strategy, **kwargs):  # [issue 13: divergence stops the run, before the step]
            if not bool(torch.isfinite(strategy.loss.detach()).all()):
                raise _diverged(bridge, f"a non-finite training loss ({float(strategy.loss.detach().sum())})")

        def after_training_epoch(self, strategy, **kwargs):
            bad = [n for n, p in strategy.model.named_parameters() if not bool(torch.isfinite(p.detach()).all())]
            if bad:  # e.g. an update that overflowed while the loss was still finite
                raise _diverged(bridge, f"non-finite weights ({', '.join(bad[:3])})")

    return StopOnDivergence()


def _diverged(bridge: "AvalancheBridge", what: str) -> TrainingDiverged:
    exp = bridge.experience.index if bridge.experience is not None else "?"
    return TrainingDiverged(f"strategy avalanche:{bridge.av_name} produced {what} in experience {exp}; the run is "
                            f"stopped (lower train.lr or the strategy's regularisation weight)")


def _task_masked(model: torch.nn.Module, class_mask: torch.Tensor):
    """Task-IL: a multi-task module that masks the logits to each sample's task (one head per task)."""
    from avalanche.models import MultiTaskModule

    class TaskMasked(MultiTaskModule):
        def __init__(self):
            super().__init__()
            self.net = model
            self.register_buffer("class_mask", class_mask.clone())

        def forward(self, x, task_labels):
            logits = self.net(x)
            if not torch.is_tensor(task_labels):
                task_labels = torch.full((len(x),), int(task_labels), dtype=torch.long)
            mask = self.class_mask[task_labels.to(self.class_mask.device)]
            return logits.masked_fill(~mask, torch.finfo(logits.dtype).min)

    return TaskMasked()


class AvalancheBridge(Strategy):
    """Any avalanche.training strategy, trained on a clbench stream and scored by clbench's evaluator."""

    description = "bridge: strategy=avalanche:<Name> runs an Avalanche strategy (EWC, GEM, LwF, SI, ...)"
    settings = ("class-il", "task-il", "domain-il")
    step_events = False     # Avalanche runs its own loop: no per-step events (anytime evaluation, step checkpoints)
    resumable = False       # Avalanche strategies keep plugin state clbench cannot save: a killed run starts over

    @classmethod
    def resolve_hparams(cls, arg: str, overrides: dict) -> dict:
        """Called by clbench.config for `avalanche:<arg>`: the strategy's constructor arguments, typed from their
        annotations and defaults (`clbench show strategy avalanche:EWC` lists them)."""
        name, av_cls = lookup(arg)
        values, missing = constructor_defaults(name, av_cls)
        missing = [m for m in missing if overrides.get(m) is None]
        if missing:
            raise ConfigError(f"avalanche:{arg} needs {', '.join(missing)}: set "
                              + " ".join(f"strategy.{m}=..." for m in missing))
        signature = specs_from_signature(av_cls.__init__)
        specs = {}
        for key, default in values.items():
            spec = signature.get(key)
            help_text = f"argument '{key}' of avalanche.training.{name}"
            if spec is None or spec.type is object or default is None:
                specs[key] = HP(default, help_text, type=object, nullable=True)
            else:
                specs[key] = HP(default, help_text, type=spec.type, nullable=True)
        return specs

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.class_groups: list[list[int]] = []
        prefix, _, arg = str(self.hp.get("name", "avalanche:")).partition(":")
        self.av_name, av_cls = lookup(arg)
        options = {k: v for k, v in self.hp.items() if k != "name"}
        for k, v in options.items():
            if v is None and k in FROM_STREAM:
                options[k] = FROM_STREAM[k](self.info)
        from avalanche.training.plugins import EvaluationPlugin

        self.av_model = _task_masked(self.model, self.class_mask) if self.task_aware else self.model
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # "No loggers specified": clbench logs, not Avalanche
            try:
                self.av = av_cls(model=self.av_model, optimizer=self.optimizer,
                                 criterion=torch.nn.CrossEntropyLoss(),
                                 train_mb_size=int(self.train_cfg["batch_size"]),
                                 train_epochs=int(self.train_cfg["epochs"]),
                                 eval_mb_size=int(self.train_cfg["batch_size"]), device=self.device,
                                 plugins=[_divergence_plugin(self)], evaluator=EvaluationPlugin(loggers=[]),
                                 **options)
            except TypeError as e:
                raise ConfigError(f"bad options for avalanche:{arg}: {e}") from None

    def to_avalanche(self, exp: Experience):
        """The experience's training data as an Avalanche experience (same samples, same task labels)."""
        from avalanche.benchmarks.scenarios.dataset_scenario import DatasetExperience
        from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset

        b = exp.train.get(torch.arange(len(exp.train), device=exp.train.device))
        x, y, t = b.x.cpu(), b.y.cpu(), b.t.cpu()
        ds = _make_taskaware_tensor_classification_dataset(x, y, targets=y, task_labels=t.tolist())
        av_exp = DatasetExperience(dataset=ds, current_experience=exp.index)
        # what Avalanche's with_task_labels / with_classes_timeline would add (no future classes: hidden)
        seen_before = set().union(*[set(c) for c in self.class_groups]) if self.class_groups else set()
        av_exp.task_labels = sorted(set(t.tolist()))
        av_exp.task_label = av_exp.task_labels[0]
        av_exp.classes_in_this_experience = sorted(exp.classes)
        av_exp.previous_classes = sorted(seen_before)
        av_exp.classes_seen_so_far = sorted(seen_before | set(exp.classes))
        av_exp.future_classes = []
        return av_exp

    def train_experience(self, exp: Experience):
        """Avalanche's own loop over the whole experience (a generator with no per-step events)."""
        self.experience = exp
        av_exp = self.to_avalanche(exp)
        self.class_groups = [*self.class_groups, list(exp.classes)]
        self.seen_classes = sorted(set(self.seen_classes) | set(exp.classes))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                self.av.train(av_exp, eval_streams=[])
            except TrainingDiverged:
                raise
            except Exception as e:  # name the combination; keep Avalanche's traceback
                raise RuntimeError(f"avalanche:{self.av_name} failed on experience {exp.index} of a "
                                   f"{self.info.setting} stream: {type(e).__name__}: {e}") from e
        return
        yield   # a generator, like Strategy.train_experience

    def extra_state(self) -> dict:
        import avalanche
        state = {"avalanche_strategy": self.av_name, "avalanche_version": avalanche.__version__}
        for plugin in getattr(self.av, "plugins", []):
            policy = getattr(plugin, "storage_policy", None)
            if policy is not None and hasattr(policy, "buffer"):
                state["buffer"] = {"size": len(policy.buffer), "capacity": getattr(policy, "max_size", None)}
        return state
