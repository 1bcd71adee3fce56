"""The test kit for strategy plugins: tiny streams in every setting and a conformance check.

    from clbench.testing import check_strategy
    def test_my_strategy_conforms():
        check_strategy("mymethod")            # a registered name, or the class itself

`check_strategy` trains the strategy on a tiny digits stream (a few dozen samples, seconds on a CPU) in every
setting it declares and checks the contract every built-in passes:

    declarations  every hyper-parameter is declared with a help text, its default passes its own check, and its
                  search domain (if any) lies inside its range; `settings` names known settings
    loss          `loss(batch)` returns a scalar floating-point tensor (the run would stop otherwise)
    finite        no non-finite accuracy, weight or logged value
    determinism   two runs with one seed give the same accuracy matrix and the same final weights
    resume        state_dict() survives torch.save / torch.load(weights_only=True), and a strategy restored from
                  it (at an experience boundary and mid-experience) continues exactly as the original
    sealed        after training, nothing the strategy holds shares memory with evaluation data or with the
                  dataset beyond the experiences it was given
    seed_parallel (a strategy that declares `seed_parallel = True`) two seeds trained as one vectorised model
                  give each seed the accuracy matrix of its separate run (clbench/seed_parallel.py)
    settings      it runs in each setting it declares; the engine refuses the others with a clear error

A failure raises `clbench.errors.PluginError` naming the plugin, the check and the contract. The pytest fixtures
`tiny_stream_overrides` and `tiny_run` (in `clbench.pytest_plugin`, loaded automatically by pytest once clbench
is installed) give plugin tests the same tiny streams.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import torch
from torch import Tensor, nn

from clbench import state as S
from clbench.errors import ConfigError, PluginError
from clbench.hparams import HP, check_value

SETTINGS = ("class-il", "task-il", "domain-il")

# A tiny stream per setting: split-digits, 12 training and 6 test samples per class, one epoch of batches of 8.
TINY_BASE = ["benchmark=split-digits", "dataset.train_per_class=12", "dataset.test_per_class=6",
             "train.epochs=1", "train.batch_size=8", "wandb.mode=disabled", "progress=false", "device=cpu",
             "checkpoint.enabled=false"]
TINY_SCENARIO = {
    "class-il": [],
    "task-il": ["scenario.name=task_incremental", "scenario.n_experiences=5"],
    "domain-il": ["scenario.name=permuted", "scenario.n_experiences=3"],
}


def tiny_overrides(setting: str, strategy: str = "naive", extra: Sequence[str] = ()) -> list[str]:
    """Overrides of a tiny run of `strategy` in `setting` (class-il, task-il or domain-il)."""
    if setting not in TINY_SCENARIO:
        raise ValueError(f"setting must be one of {', '.join(SETTINGS)}, got {setting!r}")
    return [*TINY_BASE, *TINY_SCENARIO[setting], f"strategy={strategy}", *extra]


@dataclass
class Check:
    name: str
    setting: str
    ok: bool
    detail: str = ""


def check_strategy(strategy, settings: Optional[Iterable[str]] = None, extra: Sequence[str] = ()) -> list[Check]:
    """Run the conformance checks on a strategy (registered name or class); raise PluginError on any failure.

    `settings`: which of the declared settings to check (default: all it declares); `extra`: overrides added to
    every tiny run (e.g. ["model.bias=false"] for a method that needs bias-free layers).
    """
    from clbench.registry import STRATEGIES
    name, cls, temporary = _resolve(strategy)
    try:
        checks = [_declarations(cls)]
        declared = [s for s in getattr(cls, "settings", SETTINGS) if s in SETTINGS]
        wanted = [s for s in (settings or declared)]
        for setting in wanted:
            if setting not in declared:
                checks.append(_refused(name, setting, extra))
                continue
            checks += _check_setting(name, cls, setting, extra)
        for setting in SETTINGS:
            if settings is None and setting not in declared:
                checks.append(_refused(name, setting, extra))
    finally:
        if temporary:
            STRATEGIES.unregister(name)
    failed = [c for c in checks if not c.ok]
    if failed:
        lines = "; ".join(f"[{c.name}, {c.setting}] {c.detail}" for c in failed)
        raise PluginError(f"strategy '{name}' ({cls.__module__}.{cls.__qualname__}) fails the clbench contract: "
                          f"{lines}")
    return checks


def _resolve(strategy):
    from clbench.registry import STRATEGIES
    if isinstance(strategy, str):
        return strategy, STRATEGIES.get(strategy.split(":")[0]), False
    name = f"_check_{strategy.__name__.lower()}"
    STRATEGIES.register(name, strategy)
    return name, strategy, True


def _declarations(cls) -> Check:
    problems = []
    specs = getattr(cls, "hparams", None)
    if not isinstance(specs, dict):
        problems.append("`hparams` must be a dict of name -> clbench.hparams.HP")
        specs = {}
    for key, spec in specs.items():
        if not isinstance(spec, HP):
            problems.append(f"hparams['{key}'] is a {type(spec).__name__}, not an HP")
            continue
        if not spec.help or not spec.help.strip():
            problems.append(f"hparams['{key}'] has no help text")
        try:
            check_value(f"strategy.{key}", spec.default, spec)
        except ConfigError as e:
            problems.append(f"the default of '{key}' fails its own declaration ({e})")
        if spec.search is not None and spec.search.kind in ("loguniform", "uniform", "randint"):
            lo, hi = spec.search.values
            for v in (lo, hi):
                try:
                    check_value(f"strategy.{key}", v if float not in spec.types else float(v), spec)
                except ConfigError as e:
                    problems.append(f"the search domain of '{key}' leaves its range ({e})")
    unknown = [s for s in getattr(cls, "settings", ()) if s not in SETTINGS]
    if unknown:
        problems.append(f"`settings` names unknown settings {unknown} (valid: {', '.join(SETTINGS)})")
    return Check("declarations", "-", not problems, "; ".join(problems))


def _refused(name: str, setting: str, extra) -> Check:
    from clbench.config import compose
    from clbench.engine import prepare
    try:
        prepare(compose(tiny_overrides(setting, name, extra)))
    except ConfigError as e:
        return Check("settings", setting, "does not support" in str(e), str(e))
    return Check("settings", setting, False, "the engine accepted a setting the strategy does not declare")


def _train(run, exps) -> None:
    for exp in exps:
        for _ in run.strategy.train_experience(exp.sealed()):
            pass


def _fingerprint(strategy) -> list[Tensor]:
    return [p.detach().clone() for p in strategy.model.parameters()]


def _same(a: list[Tensor], b: list[Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def _check_setting(name: str, cls, setting: str, extra) -> list[Check]:
    from clbench.config import compose
    from clbench.engine import execute, prepare
    out = []
    # the run as the engine makes it (this also exercises the loss contract on every step)
    try:
        cfg = compose(tiny_overrides(setting, name, extra))
        r1 = prepare(cfg)
        res1 = execute(r1, None)
    except PluginError as e:
        return [Check("loss", setting, False, str(e))]
    except Exception as e:  # a plugin error of any kind: report it as the failing check
        return [Check("runs", setting, False, f"{type(e).__name__}: {e}")]
    out.append(Check("loss", setting, True))
    values = [v for row in res1["accuracy_matrix"] for v in row if v is not None]   # None: not scored
    weights = _fingerprint(r1.strategy)
    finite = all(math.isfinite(v) for v in values) and all(bool(torch.isfinite(w).all()) for w in weights)
    logs = [v for c in (res1.get("logs") or {}).values() for v in c["value"]]
    finite = finite and all(math.isfinite(v) for v in logs)
    out.append(Check("finite", setting, finite, "" if finite else "non-finite accuracy, weight or logged value"))
    r2 = prepare(cfg)
    res2 = execute(r2, None)
    same = res1["accuracy_matrix"] == res2["accuracy_matrix"] and _same(weights, _fingerprint(r2.strategy))
    out.append(Check("determinism", setting, same, "" if same else
                     "two runs with the same seed differ: draw every random number from self.generator "
                     "(or the seeded global RNGs), never from an unseeded source"))
    out.append(_resume(cfg, setting))
    out.append(_sealed(r1, setting))
    if cls.__dict__.get("seed_parallel", False):
        out.append(_seed_parallel(cfg, setting, res1["accuracy_matrix"]))
    return out


def _seed_parallel(cfg: dict, setting: str, reference: list) -> Check:
    """A strategy that declares seed_parallel gives each seed of a group its separate run's accuracy matrix."""
    import tempfile

    from clbench.engine import execute, prepare
    from clbench.registry import STRATEGIES
    from clbench.seed_parallel import run_seeds, strategy_why_not, why_not
    with tempfile.TemporaryDirectory() as tmp:
        cfgs = [{**cfg, "seed": int(cfg["seed"]) + k, "out": tmp} for k in (0, 1)]
        broken = strategy_why_not(STRATEGIES.get(cfg["strategy"]["name"].split(":")[0]))
        if broken:
            return Check("seed_parallel", setting, False, f"declares seed_parallel = True but: {broken}")
        reason = why_not(cfgs)
        if reason:   # this configuration (callbacks, amp, the model) runs its seeds separately: nothing to check
            return Check("seed_parallel", setting, True, f"not applicable here: {reason}")
        refs = [reference, execute(prepare(cfgs[1]), None)["accuracy_matrix"]]
        outs = run_seeds(cfgs, fallback=False)
    bad = [o.get("error") or "its accuracy matrix differs from the separate run's"
           for o, ref in zip(outs, refs) if "error" in o or o["result"]["accuracy_matrix"] != ref]
    return Check("seed_parallel", setting, not bad, "; ".join(bad) + (
        " (seed_parallel = True promises the default loss over loss_batch(), the base forward and step, and "
        "nothing per step that reads the model)" if bad else ""))


def _roundtrip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, map_location="cpu", weights_only=True)


def _resume(cfg: dict, setting: str) -> Check:
    """A strategy restored from state_dict() continues exactly as the original, at a boundary and mid-experience."""
    from clbench.engine import prepare
    if not getattr(prepare(cfg).strategy, "resumable", True):
        return Check("resume", setting, True, "declares resumable=False: a killed run starts over")
    for where in ("boundary", "mid-experience"):
        a = prepare(cfg)
        exps = a.stream.experiences
        _train(a, exps[:1])
        steps, next_exp = None, 1
        if where == "mid-experience":
            steps = a.strategy.train_experience(exps[1].sealed())
            next(steps, None)
            if a.strategy.loop is None:       # the experience had no step to stop in (e.g. joint before the last)
                next_exp = 2
        try:
            saved = _roundtrip(a.strategy.state_dict())
        except Exception as e:
            return Check("resume", setting, False, f"state_dict() is not plain data that torch.load(weights_only=True) "
                                                    f"reads back: {type(e).__name__}: {e} (keep tensors, modules, "
                                                    f"buffers and plain values in checkpoint_attrs)")
        rng = S.rng_state()
        b = prepare(cfg)
        try:
            b.strategy.load_state_dict(saved)
        except Exception as e:
            return Check("resume", setting, False, f"load_state_dict() failed: {type(e).__name__}: {e}")
        S.set_rng_state(rng)
        if steps is not None:
            for _ in steps:
                pass
            next_exp = 2
        _train(a, exps[next_exp:])
        S.set_rng_state(rng)
        _train(b, exps[1 if b.strategy.loop is not None else next_exp:])   # a restored loop continues experience 1
        if not _same(_fingerprint(a.strategy), _fingerprint(b.strategy)):
            return Check("resume", setting, False, f"a strategy restored from state_dict() ({where}) trains differently "
                                                    f"from the original: list every attribute that changes during "
                                                    f"training in checkpoint_attrs (or extend state_dict)")
        x = a.stream.eval_tasks[0].test.get(torch.arange(len(a.stream.eval_tasks[0].test))).x
        with torch.inference_mode():
            pa, pb = a.strategy.predict(x), b.strategy.predict(x)
        if not torch.equal(pa, pb):
            return Check("resume", setting, False, f"predictions of the restored strategy ({where}) differ")
    return Check("resume", setting, True)


def reachable_storages(obj, seen: set, found: dict, depth: int = 0) -> None:
    """Every tensor storage reachable from obj through attributes, containers and closures."""
    if id(obj) in seen or depth > 12:
        return
    seen.add(id(obj))
    if isinstance(obj, Tensor):
        found[obj.untyped_storage().data_ptr()] = obj
        return
    if isinstance(obj, (str, bytes, int, float, bool, type(None), torch.device, torch.dtype)):
        return
    if isinstance(obj, dict):
        for v in obj.values():
            reachable_storages(v, seen, found, depth + 1)
        return
    if isinstance(obj, (list, tuple, set, frozenset)):
        for v in obj:
            reachable_storages(v, seen, found, depth + 1)
        return
    if isinstance(obj, nn.Module):
        for t in [*obj.parameters(), *obj.buffers()]:
            reachable_storages(t, seen, found, depth + 1)
    closure = getattr(obj, "__closure__", None)
    if closure:
        for cell in closure:
            try:
                reachable_storages(cell.cell_contents, seen, found, depth + 1)
            except ValueError:
                pass
    for attr in ("__self__", "__func__"):
        if hasattr(obj, attr) and not isinstance(obj, type):
            reachable_storages(getattr(obj, attr), seen, found, depth + 1)
    d = getattr(obj, "__dict__", None)
    if isinstance(d, dict) and not isinstance(obj, type):
        for v in d.values():
            reachable_storages(v, seen, found, depth + 1)


def _sealed(run, setting: str) -> Check:
    """Nothing the strategy holds shares memory with test data or with the whole dataset."""
    ds = run.stream.dataset
    forbidden = {}
    for label, t in (("the test inputs", ds.x_test), ("the test labels", ds.y_test),
                     ("the dataset's training inputs", ds.x_train), ("the dataset's training labels", ds.y_train),
                     ("the validation inputs", ds.x_val), ("the validation labels", ds.y_val)):
        if t is not None and t.numel() > 0:
            forbidden[t.untyped_storage().data_ptr()] = label
    found: dict = {}
    reachable_storages(run.strategy, set(), found)
    leaks = sorted({forbidden[p] for p in found if p in forbidden})
    return Check("sealed", setting, not leaks, f"the strategy holds a reference to {', '.join(leaks)}" if leaks else "")
