"""Configuration: Hydra-style `key=value` overrides on top of YAML defaults, resolved with OmegaConf, and every
value checked against its typed declaration (`clbench.hparams.HP`) before anything is built or written.

Resolution order (later wins):
  configs/defaults.yaml  ->  configs/benchmark/<benchmark>.yaml  ->  the strategy's (and callbacks') declared
  defaults  ->  presets for this benchmark (and buffer size), from the `clbench.presets` entry points (the
  built-ins' and any plugin's)  ->  CLI overrides.

Every key is declared somewhere: the core keys in `CORE` below, a strategy's or callback's in its `hparams`,
a model's in its `hparams` (or its constructor signature), a scenario's and a dataset loader's in their
signatures. An undeclared key is refused with a "did you mean"; a value of the wrong type or out of range is
refused with one line naming the key. The resolved config is plain data: it is hashed and stored in result.json,
and `config_source` (not hashed) records where its values came from (defaults, preset, overrides, tuning).
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from clbench.errors import ConfigError, UnknownNameError, bad_value
from clbench.hparams import HP, INT64_MAX, check_section, check_value, choice, defaults, did_you_mean, \
    loguniform, specs_from_signature
from clbench.registry import CALLBACKS, MODELS, PRESETS, SCENARIOS, STRATEGIES
from clbench.schedules import SCHEDULES, checked as checked_schedule

# Keys that do not change what is computed, left out of the config hash.
NON_SEMANTIC_KEYS = ("out", "device", "progress", "data", "wandb", "resume", "checkpoint", "config_source")
SEED_KEYS = ("seed", "stream_seed")
WANDB_MODES = ("offline", "disabled", "online")
SECTIONS = ("dataset", "scenario", "model", "train", "eval")     # what a benchmark YAML gives
REQUIRED_SECTIONS = ("dataset", "scenario", "model", "train")
PRESET_SECTIONS = ("strategy", "train", "model")                 # what a strategy's preset may set

# ----- the core keys, declared like a strategy's hyper-parameters ---------------------------------------
CORE: dict[str, dict[str, HP]] = {
    "": {
        "seed": HP(0, "training seed: initialisation, minibatch order, buffer sampling", low=0, high=INT64_MAX),
        "stream_seed": HP(None, "scenario seed: class order, permutations, splits (null: same as seed)",
                          type=int, low=0, high=INT64_MAX),
        "out": HP("runs", "results folder; each run writes <out>/<run_id>/result.json"),
        "device": HP("auto", "auto (cuda when available, else cpu), cpu, cuda, cuda:N"),
        "deterministic": HP(False, "torch.use_deterministic_algorithms + cuDNN flags (slower)"),
        "threads": HP(1, "torch CPU threads of the run: part of the protocol, results differ with the count "
                         "(docs/reproducibility.md)", low=1),
        "progress": HP(True, "progress bars on the console"),
        "resume": HP(True, "re-running the same command resumes an unfinished run; false starts it over"),
        "first_experiences": HP(None, "train and evaluate on the first k experiences only (the first-k tuning "
                                      "protocol of clbench tune); null: the whole stream", type=int, low=1),
    },
    "checkpoint": {
        "enabled": HP(True, "checkpoint the full run state after every experience (resume after a kill)"),
        "every_steps": HP(0, "also checkpoint every N training steps (0: only after each experience)", low=0),
    },
    "data": {
        "root": HP(None, "data root of torchvision datasets (default: $CLBENCH_DATA, else ./data)", type=str),
        "download": HP(False, "let torchvision download missing files"),
    },
    "train": {
        "epochs": HP(1, "passes over each experience's training data", low=1),
        "batch_size": HP(32, "stream samples per minibatch", low=1),
        "optimizer": HP("sgd", "optimizer, re-created at each experience unless reset_optimizer=false",
                        choices=("sgd", "adam", "adamw", "adadelta")),
        "lr": HP(0.01, "learning rate", gt=0, search=loguniform(1e-4, 1.0)),
        "momentum": HP(0.0, "SGD momentum", low=0, high=0.999),
        "weight_decay": HP(0.0, "L2 weight decay", low=0),
        "reset_optimizer": HP(True, "a fresh optimizer (and its state) at every experience"),
        "amp": HP("off", "mixed precision of the training loss: off, bf16 (CPU or GPU) or fp16 (GPU, with a gradient "
                         "scaler); evaluation stays in float32", choices=("off", "bf16", "fp16")),
        "compile": HP("off", "torch.compile the model's forward passes (training and evaluation of the trained "
                             "model) in this mode; the first steps pay the compilation",
                      choices=("off", "default", "reduce-overhead", "max-autotune")),
        # learning-rate schedule (clbench/schedules.py); only the keys of the chosen schedule stay in the config
        "schedule": HP("constant", "lr schedule within each experience: constant, step (x gamma at milestones), "
                                   "cosine (re-warmed per experience), infinite (Singh et al. 2025)",
                       choices=SCHEDULES),
        "milestones": HP([], "step: epochs of an experience after which the lr is multiplied by gamma",
                         type=list, items=int, low=1),
        "gamma": HP(0.1, "step: lr factor at each milestone", gt=0, high=1),
        "warmup": HP(0.05, "cosine, infinite: fraction of the experience's steps with a linear warm-up from 0 "
                           "(infinite: first experience only)", low=0, high=1),
        "cooldown": HP(0.5, "infinite: end of the cosine cooldown from lr to const_lr, as a fraction of the first "
                            "experience (includes the warm-up)", low=0, high=1),
        "anneal_at": HP(0.8, "infinite: fraction of every experience after which the lr anneals exponentially "
                             "from const_lr to min_lr", low=0, high=1),
        "const_lr": HP(0.75, "infinite: constant lr, as a fraction of the lr", gt=0, high=1),
        "min_lr": HP(0.05, "cosine, infinite: final lr, as a fraction of the lr", gt=0, high=1),
        "restart_before_anneal": HP(True, "infinite: the next experience starts from the weights before the "
                                          "annealing (as published), not from the annealed ones"),
    },
    "eval": {
        "batch_size": HP(1000, "evaluation minibatch size", low=1),
        "schedule": HP("full", "entries of R scored after each experience: full (every task every time) or "
                               "seen_next (the tasks learned so far and the next one, every task before training and "
                               "after the last experience: about half the evaluations on long streams; docs/speed.md "
                               "says which metric reads more)", choices=("full", "seen_next")),
        "every_samples": HP(0, "anytime evaluation every N stream samples (i-Blurry's EVAL_PERIOD; 0: off)", low=0),
        "every_steps": HP(0, "anytime evaluation every N training steps instead (0: off)", low=0),
        "anytime_accuracy": HP("exposed", "anytime accuracy: exposed (i-Blurry: pooled over the test samples of the "
                                          "classes exposed so far) or seen_tasks (mean over tasks introduced so far)",
                               choices=("exposed", "seen_tasks")),
        "reference": HP(None, "folder of a joint-training run of the same benchmark: adds intransigence", type=str),
        "validation": HP(0.0, "fraction of each class's training samples held out as a validation split "
                              "(stratified, seeded by the stream seed); 0: none", low=0.0, high=0.9),
        "test": HP(True, "evaluate on the test split; false (tuning) never loads or touches test data"),
    },
    "wandb": {
        "mode": HP("offline", "offline (files under the run folder), disabled, online", choices=WANDB_MODES),
        "project": HP("clbench", "W&B project"),
        "entity": HP(None, "W&B entity", type=str),
        "group": HP(None, "W&B group (default: <benchmark>/<strategy>/<hash without seeds>)", type=str),
        "job_type": HP("run", "W&B job type"),
        "name": HP(None, "W&B run name (default: the run id)", type=str),
        "tags": HP([], "W&B tags", type=list, items=str),
    },
}
DATASET_LIMITS = {
    "train_per_class": HP(None, "keep the first k training samples of every class (fast runs)", type=int, low=1),
    "test_per_class": HP(None, "keep the first k test samples of every class", type=int, low=1),
}


# ----- YAML: numbers as YAML 1.2 / Hydra read them ------------------------------------------------------
class _Loader(yaml.SafeLoader):
    """PyYAML reads YAML 1.1, where `1e-3` and `1.0e6` are strings; read them as numbers, as Hydra does."""


_FLOAT = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X)
_Loader.yaml_implicit_resolvers = {k: [r for r in v if r[0] != "tag:yaml.org,2002:float"]
                                   for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def load_yaml_text(text: str, where: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where} is not valid YAML{at}: {problem}") from None


def load_yaml_file(path: Path) -> Any:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from None
    return load_yaml_text(text, str(path))


# ----- files a user hands us (sweep files, search spaces): found by name or path, read with bounds ---------
USER_YAML_MAX_BYTES = 1_000_000     # such a file is a few lines; bound what we parse
USER_YAML_MAX_NODES = 100_000       # after YAML aliases are expanded
USER_YAML_MAX_DEPTH = 20


def named_yaml(name: str, folder: str, what: str) -> Path:
    """A shipped file by name (configs/<folder>/<name>.yaml) or the path of a .yaml file; one line naming the
    choices otherwise."""
    path = Path(name)
    if not (name.endswith((".yaml", ".yml")) and path.is_file()):
        path = configs_dir() / folder / f"{name}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in (configs_dir() / folder).glob("*.yaml"))
        raise UnknownNameError(f"unknown {what} '{name}'.{did_you_mean(name, names)} "
                               f"Valid choices: {', '.join(names) or '(none)'}; or give a path to a .yaml file.")
    return path


def load_user_yaml(path: Path, what: str, loader=None) -> Any:
    """The data of a `what` file (e.g. "sweep file"), read as YAML 1.2 numbers like overrides unless another
    `loader` is given; a YAML error, a binary or oversized file, or one that expands (aliases) into something
    huge is one ConfigError naming the file."""
    if path.stat().st_size > USER_YAML_MAX_BYTES:
        raise ConfigError(f"{what} {path} is too large ({path.stat().st_size} bytes; at most "
                          f"{USER_YAML_MAX_BYTES})")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=loader or _Loader) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {path} is not a UTF-8 text file ({e.reason})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{what} {path}: YAML error{where}: {problem}") from None
    nodes, stack = 0, [(data, 1)]
    while stack:  # an alias counts as often as it is used (a self-referencing one stops at the bound)
        obj, depth = stack.pop()
        nodes += 1
        if depth > USER_YAML_MAX_DEPTH or nodes > USER_YAML_MAX_NODES:
            raise ConfigError(f"{what} {path} is too deep or too large once its YAML aliases are expanded "
                              f"(at most {USER_YAML_MAX_DEPTH} levels and {USER_YAML_MAX_NODES} values)")
        if isinstance(obj, dict):
            stack.extend((c, depth + 1) for c in [*obj.keys(), *obj.values()])
        elif isinstance(obj, list):
            stack.extend((c, depth + 1) for c in obj)
    return data


def check_keys(data: Any, where: str, keys: Sequence[str], mappings: Sequence[str] = ()) -> dict:
    """A file's (or section's) mapping with only `keys`, of which `mappings` hold mappings; one line otherwise."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must hold a mapping (keys: {', '.join(keys)})")
    for k in data:
        if k not in keys:
            raise ConfigError(f"unknown key '{k}' in {where}.{did_you_mean(str(k), keys)} "
                              f"Valid keys: {', '.join(keys)}")
    for k in mappings:
        if not isinstance(data.get(k) or {}, dict):
            raise ConfigError(f"'{k}' in {where} must be a mapping of key: value")
    return data


def parse_value(text: str) -> Any:
    """An override value as YAML (numbers incl. `1e-3`, booleans, null, [lists], {maps}); else the string."""
    if text == "":
        return ""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        return text


# ----- the shipped configs and the presets ----------------------------------------------------------------
def configs_dir() -> Path:
    """The shipped configs/ folder (installed as the package data `clbench.configs`)."""
    return Path(str(resources.files("clbench.configs")))


def benchmark_names() -> list[str]:
    return sorted(p.stem for p in (configs_dir() / "benchmark").glob("*.yaml"))


def benchmark_path(name: str) -> Path:
    if name.endswith((".yaml", ".yml")):
        if Path(name).is_file():
            return Path(name)
        raise bad_value("benchmark", f"no such file {name}")
    path = configs_dir() / "benchmark" / f"{name}.yaml"
    if not path.is_file():
        names = benchmark_names()
        raise UnknownNameError(f"unknown benchmark '{name}'.{did_you_mean(name, names)} "
                               f"Valid choices: {', '.join(names)}.")
    return path


def load_benchmark(name: str) -> dict:
    """A benchmark protocol by name, or a path to a YAML file of the same shape (checked: one line per problem)."""
    path = benchmark_path(name)
    data = load_yaml_file(path)
    if not isinstance(data, dict):
        raise ConfigError(f"benchmark file {path} must hold a mapping with the sections "
                          f"{', '.join(SECTIONS)} (got {type(data).__name__})")
    for section in REQUIRED_SECTIONS:
        if section not in data:
            raise ConfigError(f"benchmark file {path} has no '{section}' section (a benchmark gives "
                              f"{', '.join(SECTIONS)})")
    for section in SECTIONS:
        if section in data and not isinstance(data[section] or {}, dict):
            raise ConfigError(f"section '{section}' of benchmark file {path} must be a mapping")
        if section in ("dataset", "scenario", "model") and not isinstance((data.get(section) or {}).get("name"), str):
            raise ConfigError(f"section '{section}' of benchmark file {path} must give a 'name'")
    # expected_stream: the stream's shape, read by the leaderboard only (clbench/leaderboard/validate.py)
    unknown = [k for k in data if k not in (*SECTIONS, "name", "version", "description", "protocol", "expected_stream")]
    if unknown:
        raise ConfigError(f"unknown section '{unknown[0]}' in benchmark file {path}.{did_you_mean(unknown[0], SECTIONS)}")
    return data


def preset_files(strategy: str) -> list[tuple[str, Any]]:
    """The preset file registered for a strategy (or callback) name, as [(origin, path)] (empty: none).

    A plugin registers its presets like the built-ins do, in its pyproject.toml, naming the package that
    holds `<name>.yaml` (shipped as package data):
        [project.entry-points."clbench.presets"]
        mymethod = "mypkg.presets"
    """
    try:
        package = PRESETS.get(strategy)
    except UnknownNameError:
        return []
    path = resources.files(package).joinpath(f"{strategy}.yaml")
    if not path.is_file():
        raise ConfigError(f"the presets of '{strategy}' are registered in package {package.__name__}, which has no "
                          f"{strategy}.yaml (ship it as package data)")
    return [(f"{package.__name__}/{strategy}.yaml", path)]


def load_presets(strategy: str) -> tuple[dict, Optional[str]]:
    """{benchmark: preset} for a strategy, and the file it came from."""
    for origin, path in preset_files(strategy.split(":")[0]):
        data = load_yaml_text(path.read_text(), origin) or {}
        presets = data.get("presets", {}) if isinstance(data, dict) else None
        if not isinstance(presets, dict):
            raise ConfigError(f"preset file {origin} must hold 'presets: {{benchmark: {{strategy: ..., train: ...}}}}'")
        return presets, origin
    return {}, None


def select_preset(presets: dict, benchmark: str, buffer_size) -> tuple[dict, Optional[str]]:
    """The preset for a benchmark, with its `by_buffer_size` entry for this buffer size merged on top."""
    base = copy.deepcopy(presets.get(benchmark) or {})
    by_buffer = base.pop("by_buffer_size", None) or {}
    label = benchmark if base or by_buffer else None
    if buffer_size is not None and buffer_size in by_buffer:
        base = _merge(base, by_buffer[buffer_size] or {})
        label = f"{benchmark}@buffer_size={buffer_size}"
    for section in base:
        if section not in PRESET_SECTIONS:
            raise ConfigError(f"a preset may set keys of {', '.join(PRESET_SECTIONS)} only, not '{section}' "
                              f"(preset {label})")
    return base, label


# ----- overrides ------------------------------------------------------------------------------------------
def split_key_value(arg: str, example: str, what: str = "argument", form: str = "key=value") -> tuple[str, str]:
    """A command-line `key=value` as (key, value text), both as typed; one line naming the argument otherwise.
    Shared by run/sweep/tune arguments."""
    if "=" not in arg:
        raise ConfigError(f"{what} '{arg}' is not of the form {form} (e.g. {example})")
    key, text = arg.split("=", 1)
    return key, text


def parse_overrides(args: Iterable[str]) -> list[tuple[str, Any]]:
    """`a.b=1` -> ("a.b", 1); `+a.b=1` is the same (every key is declared, `+` adds nothing)."""
    out = []
    for arg in args:
        key, value = split_key_value(arg, "strategy=replay seed=1 train.lr=0.05", what="override")
        key = key.lstrip("+").strip()
        if not key or not re.fullmatch(r"[A-Za-z0-9_.:\-]+", key) or ".." in key or key.endswith("."):
            raise ConfigError(f"override '{arg[:80]}' has an invalid key")
        out.append((key, parse_value(value)))
    return out


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


# ----- declarations of every section ----------------------------------------------------------------------
def strategy_specs(name: str, overrides: Optional[dict] = None) -> dict[str, HP]:
    """The hyper-parameters a strategy declares.

    A strategy class declares `hparams` (name -> HP); one whose parameters depend on an argument (the
    Avalanche bridge, `avalanche:EWC`) implements `resolve_hparams(arg, overrides)`. An older plugin that only
    has a `defaults` dict gets specs inferred from those defaults.
    """
    prefix, _, arg = name.partition(":")
    if prefix not in STRATEGIES.names() and prefix in CALLBACKS.names():
        raise ConfigError(f"'{prefix}' is a callback, not a strategy: add it around any strategy with "
                          f"callbacks=[{prefix}] (e.g. strategy=derpp callbacks=[{prefix}])")
    cls = STRATEGIES.get(prefix)
    if hasattr(cls, "resolve_hparams"):
        return dict(cls.resolve_hparams(arg, overrides or {}))
    if arg:
        raise ConfigError(f"strategy '{prefix}' takes no ':{arg}' argument")
    return plugin_specs(cls)


def plugin_specs(cls) -> dict[str, HP]:
    specs = getattr(cls, "hparams", None)
    if not specs and getattr(cls, "defaults", None):   # an older plugin: a plain `defaults` dict, types inferred
        specs = {k: HP(v, "(declared without a type)", type=object if v is None else None, nullable=v is None)
                 for k, v in (getattr(cls, "defaults", {}) or {}).items()}
    return dict(specs)


def callback_specs(name: str) -> dict[str, HP]:
    return plugin_specs(CALLBACKS.get(name))


def model_specs(name: str) -> dict[str, HP]:
    from clbench.models import COMMON
    cls = MODELS.get(name)
    specs = getattr(cls, "hparams", None)
    own = dict(specs) if specs is not None else specs_from_signature(
        cls, skip=("self", "input_shape", "n_classes", "normalize"))
    return {**own, **COMMON}


def scenario_specs(name: str) -> dict[str, HP]:
    cls = SCENARIOS.get(name)
    specs = getattr(cls, "hparams", None)
    return dict(specs) if specs is not None else specs_from_signature(cls.__init__)


def dataset_specs(name: str) -> dict[str, HP]:
    from clbench.registry import DATASETS
    return {**specs_from_signature(DATASETS.get(name), skip=("root", "download")), **DATASET_LIMITS}


def section_specs(cfg: dict, section: str) -> Optional[dict[str, HP]]:
    """The declarations of one section of a config being composed (None: not a section)."""
    if section in CORE and section:
        return CORE[section]
    if section == "strategy":
        return strategy_specs(cfg["strategy"]["name"], cfg["strategy"])
    if section == "model":
        return model_specs(cfg["model"]["name"])
    if section == "scenario":
        return scenario_specs(cfg["scenario"]["name"])
    if section == "dataset":
        return dataset_specs(cfg["dataset"]["name"])
    return None


def _set(cfg: dict, key: str, value: Any) -> None:
    """Set one override; the key must be declared (core, the strategy's, a callback's, a section's)."""
    parts = key.split(".")
    if len(parts) == 1 and (key in SECTIONS or (key in CORE and key)):
        if not isinstance(value, dict) or (key in ("dataset", "scenario", "model") and "name" not in value):
            raise bad_value(key, f"a whole section is replaced by a mapping{' with a name' if key in SECTIONS[:3] else ''}, "
                                 f"e.g. {key}={{name: ..., option: value}}; or set one key: {key}.<key>=value")
        cfg[key] = value          # the whole section (e.g. model={name: cnn}); its declarations check it below
        return
    if len(parts) == 1:
        if key not in CORE[""] and key not in ("benchmark", "strategy", "callbacks"):
            valid = sorted([*CORE[""], "benchmark", "strategy", "callbacks", *SECTIONS, "wandb", "data",
                            "checkpoint"])
            raise ConfigError(f"unknown config key '{key}'.{did_you_mean(key, valid)} Valid top-level keys: "
                              f"{', '.join(valid)}.")
        if isinstance(cfg.get(key), dict):
            raise ConfigError(f"'{key}' is a section: set its keys, e.g. '{key}.<key>=...'")
        cfg[key] = value
        return
    section, rest = parts[0], parts[1:]
    if section == "callbacks":
        if len(rest) != 2 or rest[0] not in cfg["callbacks"]:
            active = ", ".join(cfg["callbacks"]) or "none"
            raise ConfigError(f"unknown config key '{key}': callback keys are callbacks.<name>.<key> for an active "
                              f"callback (active: {active}; add one with callbacks=[name])")
        specs = callback_specs(rest[0])
        if rest[1] not in specs:
            raise ConfigError(f"callback '{rest[0]}' declares no hyper-parameter '{rest[1]}'."
                              f"{did_you_mean(rest[1], specs)} Declared: {', '.join(specs) or '(none)'}.")
        cfg["callbacks"][rest[0]][rest[1]] = value
        return
    if section == "benchmark":
        raise ConfigError(f"'{key}' is fixed by the benchmark's protocol; choose another benchmark with "
                          f"'benchmark=NAME' (or give a path to your own benchmark YAML)")
    if section in ("strategy", "model", "scenario", "dataset") and rest == ["name"]:
        if section == "strategy":
            raise ConfigError("set the strategy with 'strategy=NAME', not 'strategy.name=...'")
        cfg[section] = {"name": value}     # another model/scenario/dataset: its declared defaults apply
        return
    specs = section_specs(cfg, section) if section in cfg or section in CORE else None
    if specs is None:
        valid = sorted(k for k in cfg if isinstance(cfg[k], dict))
        raise ConfigError(f"unknown config key '{section}'.{did_you_mean(section, valid)} "
                          f"Sections: {', '.join(valid)}.")
    if len(rest) > 1 and rest[0] in specs and dict in specs[rest[0]].types:   # a key inside a mapping option
        node = cfg.setdefault(section, {}).setdefault(rest[0], None)
        if not isinstance(node, dict):
            node = cfg[section][rest[0]] = dict(specs[rest[0]].default or {})
        for part in rest[1:-1]:
            node = node.setdefault(part, {})
        node[rest[-1]] = value
        return
    if len(rest) != 1 or rest[0] not in specs:
        what = f"strategy '{cfg['strategy']['name']}' declares" if section == "strategy" else f"'{section}' has"
        sub = rest[0]
        raise ConfigError(f"unknown config key '{key}': {what} no key '{sub}'.{did_you_mean(sub, specs)} "
                          f"Valid: {', '.join(specs) or '(none)'}." +
                          (" (`clbench show strategy NAME` lists them.)" if section == "strategy" else ""))
    cfg.setdefault(section, {})[rest[0]] = value


def _callback_names(value) -> list[str]:
    if value is None or value == "" or value == []:
        return []
    names = value if isinstance(value, list) else [value]
    if not all(isinstance(n, str) and n for n in names):
        raise bad_value("callbacks", f"expected a list of callback names, got {value!r}")
    for n in names:
        CALLBACKS.get(n)   # unknown names list the valid ones
    if len(set(names)) != len(names):
        raise bad_value("callbacks", f"a callback is listed twice: {names}")
    return list(names)


def compose(overrides: Iterable[str] = (), tuning: Optional[dict] = None) -> dict:
    """Resolve a full run config from CLI-style overrides. Raises ConfigError / UnknownNameError.

    `tuning`: the record of how a tuned config was chosen (clbench tune), stored in config_source.
    """
    overrides = list(overrides)
    parsed = parse_overrides(overrides)
    defaults_file = configs_dir() / "defaults.yaml"
    base = load_yaml_file(defaults_file)
    names = {"benchmark": base["benchmark"], "strategy": base["strategy"]}
    callbacks: list[str] = []
    for key, value in parsed:
        if key in names:
            if not isinstance(value, str) or not value:
                raise bad_value(key, f"expected a name, got {value!r}")
            names[key] = value
        elif key == "callbacks":
            callbacks = _callback_names(value)

    bench = load_benchmark(names["benchmark"])
    cfg = {k: copy.deepcopy(v) for k, v in base.items() if k not in ("benchmark", "strategy")}
    cfg["benchmark"] = {"name": str(bench.get("name", names["benchmark"])), "version": bench.get("version", 1),
                        "description": str(bench.get("description", ""))}
    for section in SECTIONS:
        # defaults.yaml may give a section's defaults (e.g. eval.every_steps); the benchmark overrides them
        cfg[section] = _merge(base.get(section, {}) or {}, bench.get(section, {}) or {})

    strategy_over = {k[len("strategy."):]: v for k, v in parsed if k.startswith("strategy.")}
    specs = strategy_specs(names["strategy"], strategy_over)
    cfg["strategy"] = {"name": names["strategy"], **defaults(specs)}
    if callbacks:
        cfg["callbacks"] = {n: defaults(callback_specs(n)) for n in callbacks}
    else:
        cfg["callbacks"] = {}

    # Presets: each of the strategy's and the callbacks', for this benchmark (and buffer size).
    source: dict = {"defaults": "declared", "presets": [], "overrides": overrides, "tuning": tuning}
    buffer_size = strategy_over.get("buffer_size", cfg["strategy"].get("buffer_size"))
    for name in [names["strategy"], *callbacks]:
        presets, origin = load_presets(name)
        preset, label = select_preset(presets, cfg["benchmark"]["name"], buffer_size)
        if preset and buffer_size is None and "buffer_size" in (preset.get("strategy") or {}):
            # the preset fixes the buffer size: its by_buffer_size entry for that size applies too
            preset, label = select_preset(presets, cfg["benchmark"]["name"], preset["strategy"]["buffer_size"])
        if not preset:
            continue
        if name in callbacks:   # a callback's preset sets callbacks.<name> (popped before the rest is copied)
            own = preset.pop("strategy", {})
            preset = {**preset, "callbacks": {name: own}}
        cfg = _merge(cfg, preset)
        source["presets"].append({"name": name, "preset": label, "file": origin})

    for key, value in parsed:
        if key in ("benchmark", "strategy", "callbacks"):
            continue
        _set(cfg, key, value)

    if cfg.get("data", {}).get("root") is None:
        cfg["data"]["root"] = os.environ.get("CLBENCH_DATA") or "data"
    if cfg.get("stream_seed") is None:
        cfg["stream_seed"] = cfg["seed"]
    # OmegaConf resolves ${...} interpolations (e.g. a scenario key that refers to a train key).
    try:
        cfg = OmegaConf.to_container(OmegaConf.create(cfg), resolve=True)
    except OmegaConfBaseException as e:
        msg = str(e).splitlines()[0]
        key = getattr(e, "full_key", None)
        raise (bad_value(key, msg) if key else ConfigError(f"bad config: {msg}")) from None
    cfg = validate(cfg)
    if not cfg["callbacks"]:
        del cfg["callbacks"]     # keeps the hash of configs without callbacks unchanged
    if cfg["first_experiences"] is None:
        del cfg["first_experiences"]   # the same: configs on the whole stream keep their hash
    source["chosen_by"] = chosen_by(source)
    cfg["config_source"] = source
    return cfg


# Overrides that choose what to run and how, not a method's hyper-parameters (`chosen_by` ignores them);
# strategy.*, callbacks.<name>.* and train.* overrides are hyper-parameters set by hand.
PROTOCOL_OVERRIDES = ("benchmark", "strategy", "callbacks", "seed", "stream_seed", "out", "device", "progress",
                      "resume", "deterministic", "checkpoint", "data", "wandb", "eval", "first_experiences",
                      "dataset", "scenario", "model")


def hand_set(overrides) -> list[str]:
    """The overrides that set hyper-parameters by hand: any key outside PROTOCOL_OVERRIDES, and callback options."""
    keys = [(o, o.split("=", 1)[0].lstrip("+")) for o in overrides or []]
    return [o for o, k in keys if k.split(".")[0] not in PROTOCOL_OVERRIDES or k.startswith("callbacks.")]


def lookup(cfg: dict, key: str):
    """The value at a dotted key of a config (None when absent)."""
    node = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def chosen_by(source: dict) -> str:
    """How a config's hyper-parameters were chosen: "tuned" (a clbench tune record), "hand-set" (overrides of
    strategy/train/model/... keys), "preset" (a shipped preset for this benchmark) or "default" (declared)."""
    if source.get("tuning"):
        return "tuned"
    if hand_set(source.get("overrides", [])):
        return "hand-set"
    return "preset" if source.get("presets") else "default"


def validate(cfg: dict) -> dict:
    """Every section checked against its declarations; returns the config with coerced values."""
    out = dict(cfg)
    for k, spec in CORE[""].items():
        out[k] = check_value(k, cfg.get(k, spec.default), spec)
    dev = str(out["device"])
    if not (dev in ("auto", "cpu", "cuda", "mps") or re.fullmatch(r"cuda:\d+", dev)):
        raise bad_value("device", f"expected auto, cpu, cuda or cuda:N, got {dev!r}")
    if out["out"] == "":
        raise bad_value("out", "expected a folder path")
    for section in ("checkpoint", "data", "train", "eval", "wandb"):
        out[section] = check_section(section, cfg.get(section) or {}, CORE[section], skip=())
    out["train"] = checked_schedule(out["train"])      # only the chosen schedule's keys stay
    for section in ("dataset", "scenario", "model"):
        out[section] = check_section(section, cfg[section], section_specs(cfg, section))
    out["strategy"] = check_section("strategy", cfg["strategy"], strategy_specs(cfg["strategy"]["name"],
                                                                               cfg["strategy"]))
    out["callbacks"] = {n: check_section(f"callbacks.{n}", v or {}, callback_specs(n), skip=())
                        for n, v in (cfg.get("callbacks") or {}).items()}
    if out["eval"]["validation"] == 0 and not out["eval"]["test"]:
        raise bad_value("eval.test", "false needs a validation split to evaluate on (set eval.validation, e.g. 0.1)")
    return out


def canonical_hash(obj) -> str:
    """sha256 of the canonical JSON of `obj` (sorted keys, no spaces): equal data, equal hash."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def semantic(cfg: dict) -> dict:
    """The part of a config that changes what is computed."""
    return {k: v for k, v in cfg.items() if k not in NON_SEMANTIC_KEYS}


def config_hash(cfg: dict) -> str:
    """sha256 of the canonical JSON of the config, without keys that do not change results."""
    return canonical_hash(semantic(cfg))


def group_hash(cfg: dict) -> str:
    """The config hash without the seeds: runs that differ only in seed share it (they are repeats of
    one configuration), so reports and W&B groups aggregate them as mean +- std."""
    return config_hash({k: v for k, v in cfg.items() if k not in SEED_KEYS})


__all__ = ["ConfigError", "UnknownNameError", "compose", "validate", "config_hash", "group_hash", "canonical_hash",
           "parse_value", "parse_overrides", "load_benchmark", "benchmark_names", "strategy_specs", "choice"]
