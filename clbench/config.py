"""Configuration: Hydra-style `key=value` overrides on top of YAML defaults, resolved with OmegaConf.

Resolution order (later wins):
  configs/defaults.yaml  ->  configs/benchmark/<benchmark>.yaml  ->  the strategy's `defaults`
  ->  the tuned preset in configs/strategy/<strategy>.yaml for this benchmark (if any)  ->  CLI overrides.

Every key must already exist (a typo is an error that lists the valid keys); `+key=value` adds a key
on purpose. The resolved config is plain data: it is hashed and stored in result.json.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import yaml
from omegaconf import OmegaConf

from clbench.errors import ConfigError
from clbench.registry import STRATEGIES, UnknownNameError, did_you_mean

# Keys that do not change what is computed, left out of the config hash.
NON_SEMANTIC_KEYS = ("out", "device", "progress", "data", "wandb")
WANDB_MODES = ("offline", "disabled", "online")


def configs_dir() -> Path:
    """The shipped configs/ folder (installed as the package data `clbench.configs`)."""
    return Path(str(resources.files("clbench.configs")))


def _load_yaml(path: Path) -> dict:
    with open(path) as f:
        return yaml.safe_load(f) or {}


def benchmark_names() -> list[str]:
    return sorted(p.stem for p in (configs_dir() / "benchmark").glob("*.yaml"))


def load_benchmark(name: str) -> dict:
    """A benchmark protocol by name, or a path to a YAML file of the same shape."""
    if name.endswith((".yaml", ".yml")) and Path(name).is_file():
        return _load_yaml(Path(name))
    path = configs_dir() / "benchmark" / f"{name}.yaml"
    if not path.is_file():
        names = benchmark_names()
        raise UnknownNameError(f"unknown benchmark '{name}'.{did_you_mean(name, names)} "
                               f"Valid choices: {', '.join(names)}.")
    return _load_yaml(path)


def load_preset(strategy: str, benchmark: str) -> dict:
    """Tuned hyper-parameters for (strategy, benchmark) kept as data in configs/strategy/."""
    path = configs_dir() / "strategy" / f"{strategy.split(':')[0]}.yaml"
    if not path.is_file():
        return {}
    presets = _load_yaml(path).get("presets", {}) or {}
    return copy.deepcopy(presets.get(benchmark, {}) or {})


def parse_value(text: str) -> Any:
    """Parse an override value as YAML (numbers, booleans, null, [lists], {maps}); fall back to str."""
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def parse_overrides(args: Iterable[str]) -> list[tuple[str, Any, bool]]:
    """`a.b=1` -> ("a.b", 1, False); `+a.c=2` -> ("a.c", 2, True) (adds a new key)."""
    out = []
    for arg in args:
        if "=" not in arg:
            raise ConfigError(f"override '{arg}' is not of the form key=value "
                              f"(e.g. strategy=replay seed=1 train.lr=0.05)")
        key, value = arg.split("=", 1)
        add = key.startswith("+")
        key = key.lstrip("+").strip()
        if not key:
            raise ConfigError(f"override '{arg}' has an empty key")
        out.append((key, parse_value(value), add))
    return out


def _set(cfg: dict, dotted: str, value: Any, add: bool) -> None:
    node, parts = cfg, dotted.split(".")
    for i, part in enumerate(parts):
        path = ".".join(parts[: i + 1])
        last = i == len(parts) - 1
        if not isinstance(node, dict):
            raise ConfigError(f"'{'.'.join(parts[:i])}' is a value, not a section: cannot set '{dotted}'")
        if part not in node and not add:
            valid = sorted(node)
            raise ConfigError(f"unknown config key '{path}'.{did_you_mean(part, valid)} Valid keys "
                              f"{'at this level' if i else 'at the top level'}: {', '.join(valid)}. "
                              f"(Use +{dotted}=... to add a new key on purpose.)")
        if last:
            node[part] = value
        else:
            node = node.setdefault(part, {}) if add else node[part]


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def strategy_defaults(name: str, overrides: dict) -> dict:
    """The hyper-parameters a strategy declares, with their defaults.

    A strategy class declares `defaults` (a dict); one whose parameters depend on other choices
    (a wrapper around a base strategy, the Avalanche bridge) implements `resolve_defaults`.
    """
    prefix, _, arg = name.partition(":")
    cls = STRATEGIES.get(prefix)
    if hasattr(cls, "resolve_defaults"):
        return copy.deepcopy(cls.resolve_defaults(arg, overrides))
    if arg:
        raise ConfigError(f"strategy '{prefix}' takes no ':{arg}' argument")
    return copy.deepcopy(getattr(cls, "defaults", {}) or {})


def compose(overrides: Iterable[str] = ()) -> dict:
    """Resolve a full run config from CLI-style overrides. Raises ConfigError / UnknownNameError."""
    parsed = parse_overrides(overrides)
    defaults = _load_yaml(configs_dir() / "defaults.yaml")
    names = {"benchmark": defaults["benchmark"], "strategy": defaults["strategy"]}
    for key, value, _ in parsed:
        if key in names:
            if not isinstance(value, str) or not value:
                raise ConfigError(f"'{key}' must be a name, got {value!r}")
            names[key] = value

    bench = load_benchmark(names["benchmark"])
    cfg = {k: v for k, v in defaults.items() if k not in ("benchmark", "strategy")}
    cfg["benchmark"] = {"name": bench.get("name", names["benchmark"]), "version": bench.get("version", 1),
                        "description": bench.get("description", "")}
    for section in ("dataset", "scenario", "model", "train", "eval"):
        # defaults.yaml may give a section's defaults (e.g. eval.every_steps); the benchmark overrides them
        cfg[section] = _merge(defaults.get(section, {}) or {}, bench.get(section, {}) or {})

    strategy_over = {k[len("strategy."):]: v for k, v, _ in parsed if k.startswith("strategy.")}
    cfg["strategy"] = {"name": names["strategy"], **strategy_defaults(names["strategy"], strategy_over)}

    # A wrapper (strategy.base) gets its base's tuned preset first, then its own on top.
    base = cfg["strategy"].get("base")
    for name in ([base] if isinstance(base, str) else []) + [names["strategy"]]:
        preset = load_preset(name, cfg["benchmark"]["name"])
        if preset:
            cfg = _merge(cfg, preset)

    for key, value, add in parsed:
        if key in ("benchmark", "strategy"):
            continue
        if key in ("benchmark.name", "strategy.name"):
            raise ConfigError(f"set the {key.split('.')[0]} with '{key.split('.')[0]}=NAME', not '{key}=...'")
        _set(cfg, key, value, add)

    if cfg.get("data", {}).get("root") is None:
        cfg["data"]["root"] = os.environ.get("CLBENCH_DATA") or "data"
    if cfg.get("stream_seed") is None:
        cfg["stream_seed"] = cfg["seed"]
    # OmegaConf resolves ${...} interpolations (e.g. a scenario key that refers to a train key).
    cfg = OmegaConf.to_container(OmegaConf.create(cfg), resolve=True)
    validate(cfg)
    return cfg


def _check(cond: bool, key: str, why: str) -> None:
    if not cond:
        raise ConfigError(f"bad value for '{key}': {why}")


def validate(cfg: dict) -> None:
    """Value checks for the keys the core owns; strategies and scenarios check their own."""
    _check(isinstance(cfg["seed"], int) and cfg["seed"] >= 0, "seed", f"expected an integer >= 0, got {cfg['seed']!r}")
    _check(isinstance(cfg["stream_seed"], int) and cfg["stream_seed"] >= 0, "stream_seed",
           f"expected an integer >= 0, got {cfg['stream_seed']!r}")
    dev = str(cfg["device"])
    _check(dev in ("auto", "cpu", "cuda", "mps") or dev.startswith("cuda:"), "device",
           f"expected auto, cpu, cuda or cuda:N, got {dev!r}")
    _check(cfg["wandb"]["mode"] in WANDB_MODES, "wandb.mode",
           f"expected one of {', '.join(WANDB_MODES)}, got {cfg['wandb']['mode']!r}")
    _check(isinstance(cfg["out"], str) and cfg["out"] != "", "out", "expected a folder path")
    train = cfg["train"]
    for key in ("epochs", "batch_size"):
        v = train.get(key)
        _check(isinstance(v, int) and not isinstance(v, bool) and v >= 1, f"train.{key}",
               f"expected an integer >= 1, got {v!r}")
    lr = train.get("lr")
    _check(isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0, "train.lr",
           f"expected a number > 0, got {lr!r}")
    _check(train.get("optimizer") in ("sgd", "adam", "adamw"), "train.optimizer",
           f"expected sgd, adam or adamw, got {train.get('optimizer')!r}")


def canonical_hash(obj) -> str:
    """sha256 of the canonical JSON of `obj` (sorted keys, no spaces): equal data, equal hash."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def config_hash(cfg: dict) -> str:
    """sha256 of the canonical JSON of the config, without keys that do not change results."""
    return canonical_hash({k: v for k, v in cfg.items() if k not in NON_SEMANTIC_KEYS})


SEED_KEYS = ("seed", "stream_seed")


def group_hash(cfg: dict) -> str:
    """The config hash without the seeds: runs that differ only in seed share it (they are repeats of
    one configuration), so reports and W&B groups aggregate them as mean +- std."""
    return config_hash({k: v for k, v in cfg.items() if k not in SEED_KEYS})
