"""Plugin registry: strategies, scenarios, datasets and models, discovered through entry points.

Built-ins are registered in pyproject.toml exactly like a third-party package would register its own
(`[project.entry-points."clbench.strategies"] mymethod = "mypkg.mymethod:MyMethod"`). Entry points are
loaded lazily, on first use of a name. `register()` adds an object in-process (notebooks, tests).
"""
from __future__ import annotations

import difflib
from importlib.metadata import entry_points
from typing import Any, Callable

from clbench.errors import UnknownNameError

KINDS = ("strategies", "scenarios", "datasets", "models")


def did_you_mean(name: str, choices) -> str:
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self.group = f"clbench.{kind}"
        self._extra: dict[str, Any] = {}
        self._loaded: dict[str, Any] = {}

    def _entry_points(self) -> dict:
        return {ep.name: ep for ep in entry_points(group=self.group)}

    def names(self) -> list[str]:
        return sorted(set(self._entry_points()) | set(self._extra))

    def register(self, name: str, obj: Any = None) -> Any:
        """Register `obj` under `name`; usable as a decorator: @STRATEGIES.register("mine")."""
        if obj is None:
            return lambda o: self.register(name, o)
        self._extra[name] = obj
        self._loaded.pop(name, None)
        return obj

    def in_process(self, name: str) -> bool:
        """True when `name` comes from register() in this process (it then shadows any entry point)."""
        return name in self._extra

    def get(self, name: str) -> Any:
        if name in self._extra:
            return self._extra[name]
        if name in self._loaded:
            return self._loaded[name]
        eps = self._entry_points()
        if name not in eps:
            valid = ", ".join(self.names()) or "(none installed)"
            raise UnknownNameError(
                f"unknown {self.kind[:-1] if self.kind != 'strategies' else 'strategy'} '{name}'.{did_you_mean(name, self.names())} "
                f"Valid choices: {valid}.")
        obj = eps[name].load()
        self._loaded[name] = obj
        return obj

    def describe(self) -> dict[str, str]:
        """One line per registered name (first line of the object's docstring)."""
        out = {}
        for name in self.names():
            try:
                obj = self.get(name)
                doc = getattr(obj, "description", None) or (obj.__doc__ or "").strip().splitlines()[0:1]
                out[name] = doc if isinstance(doc, str) else (doc[0] if doc else "")
            except Exception as e:  # a broken plugin must not hide the others
                out[name] = f"(failed to load: {type(e).__name__}: {e})"
        return out


STRATEGIES = Registry("strategies")
SCENARIOS = Registry("scenarios")
DATASETS = Registry("datasets")
MODELS = Registry("models")

REGISTRIES: dict[str, Registry] = {
    "strategies": STRATEGIES, "scenarios": SCENARIOS, "datasets": DATASETS, "models": MODELS,
}


def register_strategy(name: str) -> Callable:
    return STRATEGIES.register(name)
