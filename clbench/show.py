"""`clbench show KIND NAME`: what a plugin declares, without running anything.

strategy / callback: description, paper, code, supported settings, every hyper-parameter (type, default,
range, search domain, help), the presets shipped for it and where they come from; benchmark: its versioned
protocol as the config composes it; scenario / model / dataset: the options they declare.
"""
from __future__ import annotations

import yaml

from clbench.config import (benchmark_path, callback_specs, compose, dataset_specs, load_benchmark, load_presets,
                            model_specs, scenario_specs, strategy_specs)
from clbench.hparams import HP
from clbench.registry import CALLBACKS, REGISTRIES

KINDS = ("strategy", "callback", "benchmark", "scenario", "model", "dataset")
RESOLUTION = ("defaults.yaml -> the benchmark YAML -> the strategy's (and callbacks') declared defaults -> their "
              "presets for the benchmark (and buffer size) -> your overrides")


def spec_table(specs: dict[str, HP], prefix: str) -> list[str]:
    if not specs:
        return ["  (none)"]
    rows = [(f"{prefix}{k}", s.describe_type(), yaml.safe_dump(s.default, default_flow_style=True).strip()
             .removesuffix("\n...").removesuffix("..."), s.describe_range(), str(s.search or ""), s.help)
            for k, s in specs.items()]
    head = ("key", "type", "default", "range", "search", "help")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(5)]
    fmt = lambda r: "  " + "  ".join(str(c).ljust(w) for c, w in zip(r[:5], widths)) + "  " + r[5]  # noqa: E731
    return [fmt(head), *map(fmt, rows)]


def _header(kind: str, name: str, obj) -> list[str]:
    lines = [f"{kind} {name}: {getattr(obj, 'description', '') or (obj.__doc__ or '').strip().splitlines()[0]}"]
    for attr in ("paper", "code"):
        if getattr(obj, attr, ""):
            lines.append(f"  {attr}: {getattr(obj, attr)}")
    dist = REGISTRIES[f"{kind}s" if kind != "strategy" else "strategies"].distribution(name.split(":")[0])
    lines.append(f"  from: {dist or 'registered in this process'} ({obj.__module__}.{obj.__qualname__})")
    return lines


def _presets(name: str) -> list[str]:
    presets, origin = load_presets(name)
    if not presets:
        return ["presets: none"]
    text = yaml.safe_dump(presets, default_flow_style=None, sort_keys=False, width=110).rstrip()
    return [f"presets (from {origin}), applied for the benchmark named:", *("  " + ln for ln in text.splitlines())]


def show(kind: str, name: str) -> str:
    if kind == "strategy":
        obj = REGISTRIES["strategies"].get(name.split(":")[0])
        lines = _header(kind, name, obj)
        lines.append(f"  settings: {', '.join(getattr(obj, 'settings', ()))}")
        lines += ["hyper-parameters (strategy.<key>=value):", *spec_table(strategy_specs(name), "strategy.")]
        lines += _presets(name) + [f"resolution order: {RESOLUTION}",
                                   f"see the resolved config of a run: clbench run strategy={name} ... --cfg"]
    elif kind == "callback":
        obj = CALLBACKS.get(name)
        lines = _header(kind, name, obj)
        lines += [f"use: callbacks=[{name}] (around any strategy)",
                  f"hyper-parameters (callbacks.{name}.<key>=value):", *spec_table(callback_specs(name),
                                                                                   f"callbacks.{name}.")]
        lines += _presets(name)
    elif kind == "benchmark":
        b = load_benchmark(name)
        cfg = compose([f"benchmark={name}", "strategy=naive"])
        lines = [f"benchmark {name} v{b.get('version', 1)}: {b.get('description', '')}", f"  file: {benchmark_path(name)}",
                 "protocol, as a run composes it (declared defaults filled in):"]
        proto = {k: cfg[k] for k in ("dataset", "scenario", "model", "train", "eval")}
        lines += ["  " + ln for ln in yaml.safe_dump(proto, sort_keys=False, width=110).rstrip().splitlines()]
    else:
        specs = {"scenario": scenario_specs, "model": model_specs, "dataset": dataset_specs}[kind](name)
        obj = REGISTRIES[f"{kind}s"].get(name)
        lines = _header(kind, name, obj)
        lines += [f"options ({kind}.<key>=value):", *spec_table(specs, f"{kind}.")]
    return "\n".join(lines)
