"""Plugin registry: strategies, callbacks, scenarios, datasets, models and presets, discovered through entry points.

Built-ins are registered in pyproject.toml exactly like a third-party package registers its own
(`[project.entry-points."clbench.strategies"] mymethod = "mypkg.mymethod:MyMethod"`). Entry points are
loaded lazily, on first use of a name. Two distributions registering one name is an error that names both
(which one would win depends on install order, so neither does). `register()` adds an object in-process
(notebooks, tests); it wins over entry points on purpose.
"""
from __future__ import annotations

import sys
from importlib.metadata import entry_points
from typing import Any

from clbench.errors import PluginError, UnknownNameError
from clbench.hparams import did_you_mean

KINDS = ("strategies", "callbacks", "scenarios", "datasets", "models", "presets")
SINGULAR = {"strategies": "strategy", "callbacks": "callback", "scenarios": "scenario", "datasets": "dataset",
            "models": "model", "presets": "preset"}


def _dist_name(ep) -> str:
    dist = getattr(ep, "dist", None)
    return dist.metadata["Name"] if dist is not None else "?"


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self.group = f"clbench.{kind}"
        self._extra: dict[str, Any] = {}
        self._loaded: dict[str, Any] = {}
        self._scan = None

    def _entry_points(self) -> tuple[dict, dict]:
        """name -> entry point, and name -> [distributions] for names registered by more than one.

        Scanning the installed distributions takes ~15 ms, so the result is kept while sys.path is unchanged
        (installing a plugin into a running process means adding it to sys.path)."""
        key = tuple(sys.path)
        if self._scan is None or self._scan[0] != key:
            self._scan = (key, self._scan_entry_points())
        return self._scan[1]

    def _scan_entry_points(self) -> tuple[dict, dict]:
        found: dict[str, list] = {}
        for ep in entry_points(group=self.group):
            # the same distribution seen twice (two metadata copies on sys.path) is not a collision: first wins
            if not any(_dist_name(e) == _dist_name(ep) for e in found.get(ep.name, [])):
                found.setdefault(ep.name, []).append(ep)
        eps = {name: v[0] for name, v in found.items()}
        clashes = {name: v for name, v in found.items() if len(v) > 1}
        return eps, clashes

    def names(self) -> list[str]:
        eps, _ = self._entry_points()
        return sorted(set(eps) | set(self._extra))

    def collisions(self) -> dict[str, list[str]]:
        """Names registered by several distributions: name -> ["dist (module:attr)", ...]."""
        _, clashes = self._entry_points()
        return {name: [f"{_dist_name(e)} ({e.value})" for e in v] for name, v in clashes.items()
                if name not in self._extra}

    def register(self, name: str, obj: Any = None) -> Any:
        """Register `obj` under `name`; usable as a decorator: @STRATEGIES.register("mine")."""
        if obj is None:
            return lambda o: self.register(name, o)
        self._extra[name] = obj
        self._loaded.pop(name, None)
        return obj

    def unregister(self, name: str) -> None:
        self._extra.pop(name, None)
        self._loaded.pop(name, None)

    def distribution(self, name: str) -> str | None:
        """The distribution that registers `name` (None for in-process registrations)."""
        if name in self._extra:
            return None
        eps, _ = self._entry_points()
        return _dist_name(eps[name]) if name in eps else None
    def in_process(self, name: str) -> bool:
        """True when `name` comes from register() in this process (it then shadows any entry point)."""
        return name in self._extra

    def get(self, name: str) -> Any:
        if name in self._extra:
            return self._extra[name]
        eps, clashes = self._entry_points()      # every time: a plugin installed later can clash with a loaded one
        if name in clashes:
            who = " and ".join(f"'{_dist_name(e)}' ({e.value})" for e in clashes[name])
            raise PluginError(f"{SINGULAR[self.kind]} '{name}' is registered by two distributions: {who}; "
                              f"uninstall one, or rename the plugin's entry point")
        if name in self._loaded:
            return self._loaded[name]
        if name not in eps:
            valid = ", ".join(self.names()) or "(none installed)"
            raise UnknownNameError(f"unknown {SINGULAR[self.kind]} '{name}'.{did_you_mean(name, self.names())} "
                                   f"Valid choices: {valid}.")
        try:
            obj = eps[name].load()
        except Exception as e:  # a plugin that fails to import: name it and its distribution
            raise PluginError(f"{SINGULAR[self.kind]} '{name}' from '{_dist_name(eps[name])}' ({eps[name].value}) "
                              f"failed to load: {type(e).__name__}: {e}") from e
        self._loaded[name] = obj
        return obj

    def describe(self) -> dict[str, str]:
        """One line per registered name (the object's `description`, else its docstring's first line)."""
        out = {}
        for name in self.names():
            try:
                obj = self.get(name)
                doc = getattr(obj, "description", None) or (getattr(obj, "__doc__", None) or "").strip().splitlines()[0:1]
                out[name] = doc if isinstance(doc, str) else (doc[0] if doc else "")
            except Exception as e:  # a broken plugin must not hide the others
                out[name] = f"(failed to load: {e})"
        return out


STRATEGIES = Registry("strategies")
CALLBACKS = Registry("callbacks")
SCENARIOS = Registry("scenarios")
DATASETS = Registry("datasets")
MODELS = Registry("models")
PRESETS = Registry("presets")     # name -> "package:resource/path.yaml"

REGISTRIES: dict[str, Registry] = {
    "strategies": STRATEGIES, "callbacks": CALLBACKS, "scenarios": SCENARIOS, "datasets": DATASETS,
    "models": MODELS, "presets": PRESETS,
}
