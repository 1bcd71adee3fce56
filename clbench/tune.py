"""`clbench tune`: choose hyper-parameters on a validation split, never on the test set.

    clbench tune benchmark=split-digits strategy=ewc budget=20 seeds=0,1,2 out=tunes/ewc

1. The search space: every hyper-parameter the strategy (and its callbacks) declares with a `search` domain,
   plus `train.lr` (the default); or a space file (`space=NAME`, configs/tune/NAME.yaml or a path); or
   domains given as overrides (`strategy.alpha=loguniform(0.01,10)`, `uniform(a,b)`, `randint(a,b)`,
   `choice(a,b,c)`). Each domain is checked against the key's declaration before anything runs.
2. Every trial is a clbench run with `eval.validation` held out of the training data and `eval.test=false`
   (enforced: a trial's config cannot evaluate, or even keep, the test split; the reporting logger refuses a
   run that has a test evaluator). Protocols: `full` (the whole stream) and `first-k` (the first k
   experiences; `first_k=K`), as in Chaudhry et al. 2019 (A-GEM), who tune on the first tasks.
3. Ray Tune runs the trials (a local instance, or the cluster at RAY_ADDRESS): Optuna's TPE proposes the
   configurations (the default configuration is evaluated first), ASHA stops trials that fall behind after a
   number of experiences (`scheduler=asha`, on the validation metric of the stream so far), `budget=N` trials,
   `concurrency=N` at a time with `threads=N` torch threads each (the run key; Ray reserves as many CPUs).
   Re-running the same command resumes (Tuner.restore; a finished trial is never run again, an interrupted one
   continues from its checkpoint).
4. Outputs in `out`: best.yaml (the chosen overrides and the tuning record: `clbench run tuned=best.yaml`),
   trials.csv / trials.md (every trial), search.png (the metric per trial and the best so far), tuning.json.
5. `seeds=0,1,2`: then a `clbench sweep` of the chosen configuration over those seeds on the test set
   (the full stream, all training data), every run carrying the tuning record in its config_source.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from clbench import metrics as M
from clbench.config import (callback_specs, canonical_hash, check_keys, compose, configs_dir, load_benchmark,
                            load_user_yaml, load_yaml_file, lookup, named_yaml, parse_value, section_specs,
                            split_key_value)
from clbench.errors import ConfigError, UnknownNameError, bad_value
from clbench.escape import markdown_cell, plot_text
from clbench.hparams import Domain, did_you_mean
from clbench.loggers import Logger
from clbench.reproducibility import check_threads
from clbench.results import try_lock, write_json_atomic, write_text_atomic

INSTALL_HINT = 'clbench tune needs Ray Tune and Optuna: pip install -e ".[tune]"  (or pip install "ray[tune]" optuna)'
PROTOCOLS = ("full", "first-k")
SCHEDULERS = ("asha", "fifo")
# Keys of the tune itself; every other key=value is a run override (or a search domain).
TUNE_KEYS = ("budget", "concurrency", "metric", "protocol", "first_k", "scheduler", "grace", "reduction",
             "seeds", "space", "out", "resume")
SPACE_FILE_KEYS = ("description", "declared", "space", "overrides", "budget", "concurrency", "metric", "protocol",
                   "first_k", "scheduler", "grace", "reduction", "seeds")
DEFAULT_VALIDATION = 0.1
# What a benchmark's YAML may declare as its track's tuning protocol (`protocol: tuning: {...}`).
PROTOCOL_KEYS = ("validation", "budget", "metric", "protocol", "first_k", "scheduler", "grace", "reduction", "seeds")
_DOMAIN = re.compile(r"^\s*(choice|loguniform|uniform|randint)\s*\((.*)\)\s*$", re.S)
MAX_BEST_FILE = 1_000_000    # bytes: best.yaml is read back by `clbench run tuned=...`


# ----- the tune's specification ---------------------------------------------------------------------------
@dataclass
class TuneSpec:
    overrides: list[str]                 # the run overrides every trial shares (benchmark, strategy, fixed keys)
    space: dict[str, Domain]
    space_source: str                    # "declared", "overrides" or "file <path>"
    out: Path
    budget: int = 20
    concurrency: int = 1
    threads: int = 1                     # the trials' `threads` run key (set from the composed config): Ray CPUs each
    metric: str = "acc"
    protocol: str = "full"
    first_k: Optional[int] = None
    validation: float = DEFAULT_VALIDATION
    scheduler: str = "asha"
    grace: Optional[int] = None          # ASHA: experiences before a trial can be stopped (default: half)
    reduction: float = 2.0               # ASHA: keep the best 1/reduction at each rung
    seed: int = 0                        # the trials' training (and stream) seed; also Optuna's seed
    seeds: list[int] = field(default_factory=list)   # test seeds run with the chosen config afterwards
    resume: bool = True

    @property
    def mode(self) -> str:
        return "max" if M.direction(self.metric) == "+" else "min"

    def identity(self) -> dict:
        """What makes two tunes the same search (a re-run resumes only the same one)."""
        return {"overrides": self.overrides, "space": {k: str(d) for k, d in self.space.items()},
                "budget": self.budget, "metric": self.metric, "protocol": self.protocol, "first_k": self.first_k,
                "validation": self.validation, "scheduler": self.scheduler, "grace": self.grace,
                "reduction": self.reduction, "seed": self.seed}

    def trial_overrides(self) -> list[str]:
        """What every trial adds to the shared overrides: validation on, test off, quiet, its own folder."""
        enforced = [f"eval.validation={self.validation}", "eval.test=false", f"out={self.out / 'trials'}",
                    "wandb.mode=disabled", "progress=false", f"seed={self.seed}"]
        if self.protocol == "first-k":
            enforced.append(f"first_experiences={self.first_k}")
        return enforced


def parse_domain(key: str, text) -> Optional[Domain]:
    """`loguniform(1e-4, 0.1)` etc. as a Domain (None: not a domain); a YAML list is a choice."""
    if isinstance(text, list):
        values = tuple(text)
    else:
        m = _DOMAIN.match(str(text))
        if not m:
            return None
        from clbench.sweep import split_values
        kind, args = m.group(1), m.group(2)
        values = tuple(parse_value(a.strip()) for a in split_values(args, key)) if args.strip() else ()
        if kind != "choice":
            if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                raise bad_value(key, f"{kind}(low, high) takes two numbers, got {text!r}")
            low, high = values
            if kind == "randint" and not (float(low).is_integer() and float(high).is_integer()):
                raise bad_value(key, f"randint(low, high) takes two integers, got {text!r}")
            if not low < high if kind != "randint" else not low <= high:
                raise bad_value(key, f"{kind}(low, high) needs low < high, got {text!r}")
            if kind == "loguniform" and low <= 0:
                raise bad_value(key, f"loguniform(low, high) needs 0 < low, got {text!r}")
            return Domain(kind, (int(low), int(high)) if kind == "randint" else (float(low), float(high)))
        return _choice(key, values)
    return _choice(key, values)


def _not_a_domain(key: str, value, where: str):
    raise bad_value(key, f"{value!r} in the space of {where} is not a domain (loguniform(a,b), uniform(a,b), "
                         f"randint(a,b), choice(...) or a list); a fixed value belongs under 'overrides'")


def _choice(key: str, values: tuple) -> Domain:
    if not values:
        raise bad_value(key, "choice(...) needs at least one value")
    if len(set(map(repr, values))) != len(values):
        raise bad_value(key, f"choice(...) lists a value twice: {list(values)}")
    return Domain("choice", values)


def load_space_file(name: str) -> tuple[dict, str]:
    """A search-space file by name (configs/tune/NAME.yaml) or path."""
    path = named_yaml(name, "tune", "search space")
    data = load_user_yaml(path, "search-space file")
    return check_keys(data, f"search-space file {path}", SPACE_FILE_KEYS, ("space", "overrides")), str(path)


def _int(key: str, value, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise bad_value(key, f"expected an integer >= {low}, got {value!r}")
    return value


def _seeds(value) -> list[int]:
    from clbench.sweep import split_values
    items = value if isinstance(value, list) else [parse_value(v) for v in split_values(str(value), "seeds")]
    return [_int("seeds", s, low=0) for s in items]


def parse_tune_args(args: list[str]) -> TuneSpec:
    """The tune from `key=value` arguments (and the space file named by `space=`); checks everything a user can
    get wrong (keys, values, domains against the declarations) before anything runs."""
    from clbench.sweep import format_value
    settings: dict[str, Any] = {}
    domains: dict[str, Domain] = {}
    overrides: dict[str, str] = {}
    cli = []
    for arg in args:
        key, text = split_key_value(arg, "strategy=ewc budget=20 'strategy.ewc_lambda=loguniform(1,1000)'")
        cli.append((key.strip().lstrip("+"), text))
    space_source, with_declared = None, False
    for key, text in cli:
        if key == "space":
            data, space_source = load_space_file(text)
            with_declared = data.get("declared", False)
            if not isinstance(with_declared, bool):
                raise ConfigError(f"'declared' in search-space file {space_source} must be true or false")
            for k, v in data.items():
                if k == "space":
                    for sk, sv in (v or {}).items():
                        domains[str(sk)] = parse_domain(str(sk), sv) or _not_a_domain(str(sk), sv, space_source)
                elif k == "overrides":
                    overrides.update({str(ok): format_value(ov, ok) for ok, ov in (v or {}).items()})
                elif k not in ("description", "declared"):
                    settings[k] = v
            space_source = f"file {Path(space_source).name}"
    for key, text in cli:
        if key == "space":
            continue
        if key in TUNE_KEYS:
            settings[key] = parse_value(text) if key not in ("out", "seeds") else text
            continue
        if key == "eval.test":
            raise bad_value("eval.test", "clbench tune never evaluates the test split: every trial runs with "
                                         "eval.test=false (use seeds=0,1,2 for the test runs of the chosen config)")
        if key == "first_experiences":
            raise bad_value("first_experiences", "set the tuning protocol with protocol=first-k first_k=K")
        domain = parse_domain(key, text)
        if domain is not None:
            domains[key] = domain
            overrides.pop(key, None)
            space_source = space_source if space_source and space_source.startswith("file") else "overrides"
        else:
            overrides[key] = text
            domains.pop(key, None)

    seed = parse_value(overrides.pop("seed", "0"))
    validation = parse_value(overrides.pop("eval.validation", "null"))
    bench = load_benchmark(str(parse_value(overrides.get("benchmark") or _default_benchmark())))
    declared = tuning_protocol(bench)
    for k, v in declared.items():   # the benchmark's declared tuning protocol: defaults for this track
        if k == "validation":
            validation = v if validation is None else validation
        elif k not in settings:
            settings[k] = v
    spec = TuneSpec(overrides=[f"{k}={v}" for k, v in overrides.items()], space=domains,
                    space_source=space_source or "declared", out=Path("."), seed=_int("seed", seed, low=0),
                    validation=DEFAULT_VALIDATION if validation is None else validation)
    _apply_settings(spec, settings)
    if not isinstance(spec.validation, (int, float)) or isinstance(spec.validation, bool) or \
            not 0 < spec.validation <= 0.9:
        raise bad_value("eval.validation", f"tuning needs a validation split: a fraction in (0, 0.9], got "
                                           f"{spec.validation!r}")
    base = compose([*spec.overrides, *spec.trial_overrides()])      # every run key checked here, once
    if not spec.space or with_declared:   # the declared domains (a space file may add to them)
        spec.space = {**declared_space(base, fixed=set(overrides)), **spec.space}
    if not spec.space:
        raise ConfigError("nothing to tune: the strategy declares no search domains and train.lr is fixed; give "
                          "domains, e.g. 'train.lr=loguniform(1e-4,0.1)'")
    for key, domain in spec.space.items():
        check_domain(spec, key, domain)
    if "out" not in settings:
        name = f"{base['benchmark']['name']}_{base['strategy']['name']}_{canonical_hash(spec.identity())[:8]}"
        spec.out = Path("tunes") / re.sub(r"[^A-Za-z0-9_.+-]", "-", name)
    spec.out = spec.out.expanduser().resolve()
    return spec


def _default_benchmark() -> str:
    return load_yaml_file(configs_dir() / "defaults.yaml")["benchmark"]


def tuning_protocol(bench: dict) -> dict:
    """The tuning protocol a benchmark declares in its YAML (`protocol: {tuning: {...}}`): defaults of its track."""
    protocol = bench.get("protocol") if isinstance(bench.get("protocol"), dict) else {}
    return check_keys(protocol.get("tuning") or {}, f"'protocol.tuning' of benchmark '{bench.get('name')}'",
                      PROTOCOL_KEYS)


def _apply_settings(spec: TuneSpec, s: dict) -> None:
    if "out" in s:
        if not str(s["out"]).strip():
            raise bad_value("out", "expected a folder path")
        spec.out = Path(str(s["out"]))
    for k in ("budget", "concurrency"):
        if k in s:
            setattr(spec, k, _int(k, s[k]))
    if "metric" in s:
        if s["metric"] not in M.METRICS:
            raise UnknownNameError(f"unknown metric '{s['metric']}'.{did_you_mean(s['metric'], M.METRICS)} "
                                   f"Valid choices (computed on the validation matrix): {', '.join(M.METRICS)}.")
        spec.metric = s["metric"]
    if "protocol" in s:
        if s["protocol"] not in PROTOCOLS:
            raise bad_value("protocol", f"expected one of {', '.join(PROTOCOLS)}, got {s['protocol']!r}")
        spec.protocol = s["protocol"]
    if "first_k" in s and s["first_k"] is not None:
        spec.first_k = _int("first_k", s["first_k"])
    if spec.protocol == "first-k" and spec.first_k is None:
        raise bad_value("first_k", "protocol=first-k needs first_k=K (tune on the first K experiences)")
    if spec.protocol == "full":
        spec.first_k = None
    if "scheduler" in s:
        if s["scheduler"] not in SCHEDULERS:
            raise bad_value("scheduler", f"expected one of {', '.join(SCHEDULERS)}, got {s['scheduler']!r}")
        spec.scheduler = s["scheduler"]
    if s.get("grace") is not None:
        spec.grace = _int("grace", s["grace"])
    if "reduction" in s:
        r = s["reduction"]
        if isinstance(r, bool) or not isinstance(r, (int, float)) or r <= 1:
            raise bad_value("reduction", f"expected a number > 1, got {r!r}")
        spec.reduction = float(r)
    if s.get("seeds") not in (None, "", []):
        spec.seeds = _seeds(s["seeds"])
    if "resume" in s:
        if not isinstance(s["resume"], bool):
            raise bad_value("resume", f"expected true or false, got {s['resume']!r}")
        spec.resume = s["resume"]


def declared_space(cfg: dict, fixed: set = frozenset()) -> dict[str, Domain]:
    """Every hyper-parameter declared with a `search` domain (train, model, strategy, callbacks), except the
    keys the user fixed with an override."""
    sections = [(s, section_specs(cfg, s)) for s in ("train", "model", "strategy")]
    sections += [(f"callbacks.{n}", callback_specs(n)) for n in cfg.get("callbacks") or {}]
    return {f"{sec}.{k}": spec.search for sec, specs in sections for k, spec in specs.items()
            if spec.search is not None and f"{sec}.{k}" not in fixed}


def check_domain(spec: TuneSpec, key: str, domain: Domain) -> None:
    """Both ends of a range (every value of a choice) must be valid values of the key: composed and checked."""
    from clbench.sweep import format_value
    values = domain.values if domain.kind == "choice" else domain.values[:2]
    for v in values:
        try:
            compose([*spec.overrides, f"{key}={format_value(v, key)}", *spec.trial_overrides()])
        except (ConfigError, UnknownNameError) as e:
            raise ConfigError(f"search domain {key}={domain} is not valid: {e}") from None


def ray_space(space: dict[str, Domain]) -> dict:
    from ray import tune
    out = {}
    for key, d in space.items():
        if d.kind == "loguniform":
            out[key] = tune.loguniform(*d.values)
        elif d.kind == "uniform":
            out[key] = tune.uniform(*d.values)
        elif d.kind == "randint":
            out[key] = tune.randint(d.values[0], d.values[1] + 1)     # Ray's upper bound is exclusive
        else:
            out[key] = tune.choice(list(d.values))
    return out


def in_domain(d: Domain, v) -> bool:
    if d.kind == "choice":
        return any(v == c and type(v) is type(c) for c in d.values)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    return d.values[0] <= v <= d.values[1] and (d.kind != "randint" or float(v).is_integer())


# ----- inside a trial ----------------------------------------------------------------------------------------
def prefix_metric(name: str, rows: list, initial: list, learned: list, sizes: Optional[list], i: int) -> float:
    """The metric of the stream cut after experience i: R's first i+1 rows, on the tasks learned by then.
    After the last experience this is the metric of the whole (tuned) stream; NaN where undefined."""
    cols = [j for j, row in enumerate(learned) if row <= i]
    if not cols:
        return float("nan")
    R = [[r[j] for j in cols] for r in rows[:i + 1]]
    value = M.METRICS[name][0](R, [initial[j] for j in cols], [learned[j] for j in cols],
                               [sizes[j] for j in cols] if sizes else None)
    return float("nan") if value is None else float(value)


class RayReporter(Logger):
    """Reports each experience's validation row to Ray Tune: `objective` (the tuned metric on the stream so far),
    `val_acc_seen` and `experience` (ASHA's time axis). Refuses a run that would evaluate the test split.

    The last row is held back until the run has written its result (`final`): Ray stops a trial when it reports
    its last experience, and the run folder must be complete by then."""

    def __init__(self, metric: str, report=None, n_experiences: Optional[int] = None):
        self.metric = metric
        self.report = report
        self.n = n_experiences
        self.pending: Optional[dict] = None
        self.rows: list = []
        self.initial: Optional[list] = None
        self.sizes: Optional[list] = None
        self.learned: list = []

    def start(self, run) -> None:
        if run.evaluator is not None or run.stream.eval_tasks or run.cfg["eval"]["test"]:
            raise RuntimeError("a tuning trial must not evaluate the test split (eval.test=false is enforced)")
        self.learned = run.stream.learned_rows()

    def log_row(self, run, row_index: int, row) -> None:
        self.add_row(row_index, row.acc, row.n)

    def add_row(self, i: int, acc: list, sizes: Optional[list]) -> None:
        if i < 0:
            self.initial, self.sizes = list(acc), list(sizes) if sizes else None
            return
        self.rows.append(list(acc))
        values = {"objective": prefix_metric(self.metric, self.rows, self.initial, self.learned, self.sizes, i),
                  "val_acc_seen": M.acc_seen(acc, self.learned, i), "experience": i + 1, "diverged": 0}
        if i + 1 == self.n:
            self.pending = values
        else:
            self.report(values)

    def final(self, **extra) -> None:
        """Report the last experience (after the run is complete on disk)."""
        if self.pending is not None:
            self.report({**self.pending, **extra})
            self.pending = None

    def state(self) -> dict:          # kept in the run's checkpoints: a resumed trial knows its earlier rows
        return {"rows": self.rows, "initial": self.initial, "sizes": self.sizes}

    def restore(self, state: dict) -> None:
        self.rows = list(state.get("rows") or [])
        self.initial, self.sizes = state.get("initial"), state.get("sizes")


@dataclass
class TrialContext:
    overrides: list[str]               # shared run overrides + the enforced trial overrides
    metric: str
    n_experiences: int
    worst: float                       # reported for a diverged trial (the worst value the metric can take)
    plugins: dict = field(default_factory=dict)    # in-process registrations: {kind: {name: object}}


def run_trial(params: dict, ctx: TrialContext) -> None:
    """One trial (runs in a Ray worker): compose, run with validation only, report every experience."""
    from ray import tune

    from clbench.config import config_hash
    from clbench.engine import run
    from clbench.errors import TrainingDiverged
    from clbench.registry import REGISTRIES
    from clbench.results import load_complete, make_run_id
    from clbench.sweep import format_value
    for kind, objs in ctx.plugins.items():      # what the driver registered in-process (notebooks, tests)
        for name, obj in objs.items():
            REGISTRIES[kind].register(name, obj)
    cfg = compose([*ctx.overrides, *[f"{k}={format_value(v, k)}" for k, v in sorted(params.items())]])
    if cfg["eval"]["test"] or not cfg["eval"]["validation"]:   # the enforced overrides come last; never
        raise RuntimeError("a tuning trial must run with eval.test=false and a validation split")
    run_dir = Path(cfg["out"]) / make_run_id(cfg, config_hash(cfg))
    reporter = RayReporter(ctx.metric, report=tune.report, n_experiences=ctx.n_experiences)
    r = load_complete(run_dir)
    if r is not None:   # finished before an interruption: report its rows again, train nothing
        reporter.learned = r["stream"]["learned_at"]
        sizes = [t["n_val"] for t in r["stream"]["val_tasks"]]
        reporter.add_row(-1, r["initial_validation_accuracy"], sizes)
        for i, row in enumerate(r["validation_accuracy_matrix"]):
            reporter.add_row(i, row, sizes)
        reporter.final(run_id=r["run_id"], replayed=1)
        return
    try:
        result, _ = run(cfg, loggers=[reporter], overwrite=True, console=False)
        reporter.final(run_id=result["run_id"], replayed=0)
    except TrainingDiverged as e:   # a real outcome of a bad configuration: the worst value, not an error
        tune.report({"objective": ctx.worst, "val_acc_seen": float("nan"), "experience": ctx.n_experiences,
                     "diverged": 1, "error": str(e)[:300]})


def worst_value(metric: str) -> float:
    """Every metric is a difference or mean of accuracies: within [-1, 1]; accuracies within [0, 1]."""
    low = 0.0 if metric in ("acc", "learning_accuracy", "acc_over_time", "avg_incremental_acc", "rem") else -1.0
    return low if M.direction(metric) == "+" else 1.0


def _trial_name(trial) -> str:
    return f"trial_{trial.trial_id}"


def _in_process_plugins() -> dict:
    """Objects registered with `REGISTRY.register` in this process: shipped to the Ray workers, pickled by value
    where their module is not importable there (a test module, a notebook)."""
    from clbench.registry import REGISTRIES
    out = {}
    for kind, reg in REGISTRIES.items():
        objs = {n: reg.get(n) for n in reg.names() if reg.distribution(n) is None}
        if objs:
            out[kind] = objs
    try:
        from ray import cloudpickle
        for objs in out.values():
            for obj in objs.values():
                mod = sys.modules.get(getattr(obj, "__module__", "") or "")
                if mod is not None and not mod.__name__.startswith("clbench") and mod.__name__ != "__main__":
                    cloudpickle.register_pickle_by_value(mod)
    except (ImportError, ValueError):
        pass
    return out


# ----- running the search -----------------------------------------------------------------------------------
@dataclass
class TuneResult:
    spec: TuneSpec
    rows: list[dict]
    best: Optional[dict]
    record: dict
    files: dict[str, Path]
    seconds: float
    test: Any = None              # the seeds' SweepResult, when seeds were given


def _import_ray():
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")   # Ray's classic reporter: verbose=0 is silent
    try:
        import optuna
        import ray
        from ray import tune  # noqa: F401
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        return ray
    except ImportError:
        raise ConfigError(INSTALL_HINT + " (it is an optional extra)") from None


def _init_ray(ray, spec: TuneSpec) -> bool:
    """Attach to a running Ray (this process, or RAY_ADDRESS); else start a local instance sized for the tune.
    Returns True when this call started it (and so shuts it down)."""
    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False, logging_level="WARNING")
    else:
        ray.init(address="local", num_cpus=spec.concurrency * spec.threads, include_dashboard=False,
                 log_to_driver=False, logging_level="WARNING")
    return True


def _progress(budget: int, metric: str, mode: str, max_t: int):
    """A Ray Tune callback printing one line per finished trial (defined here: Ray is imported lazily)."""
    from ray.tune import Callback

    class Progress(Callback):
        def __init__(self):
            self.budget, self.metric, self.mode, self.max_t = budget, metric, mode, max_t
            self.done, self.best = 0, None

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._line(trial, None)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._line(trial, "error")

        def _line(self, trial, status):
            self.done += 1
            r = trial.last_result or {}
            v = r.get("objective")
            ok = status is None and not r.get("diverged") and r.get("experience") == self.max_t and v is not None \
                and not math.isnan(v)
            if ok and (self.best is None or (v > self.best if self.mode == "max" else v < self.best)):
                self.best = v
            params = " ".join(f"{k}={_fmt(p)}" for k, p in sorted(trial.config.items()))
            what = status or ("diverged" if r.get("diverged") else f"val {self.metric} {_fmt(v)} after "
                              f"{r.get('experience')} exp")
            print(f"[{self.done}/{self.budget}] {trial.trial_id} {params} -> {what} "
                  f"(best {_fmt(self.best)})", flush=True)

    return Progress()


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _check_resume(spec: TuneSpec) -> None:
    """A tune folder belongs to one search: a re-run resumes it; a different search refuses (or starts over)."""
    path = spec.out / "tune.json"
    ident = spec.identity()
    if path.is_file() and spec.resume:
        old = json.loads(path.read_text()).get("identity")
        if old != json.loads(json.dumps(ident)):
            diff = sorted(k for k in ident if json.dumps(ident[k]) != json.dumps((old or {}).get(k)))
            raise ConfigError(f"tune folder {spec.out} holds a different search (differs in: {', '.join(diff)}); "
                              f"use another out=, or resume=false to start this one over")
    if not spec.resume:
        for name in ("ray", "trials", "test", "tune.json", "tuning.json", "best.yaml", "trials.csv", "trials.md",
                     "search.png"):
            p = spec.out / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    spec.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"identity": ident, "argv": sys.argv[1:]})


def tune(spec: TuneSpec, log=None) -> TuneResult:
    """Run the search (resuming a previous one in the same folder), write the outputs, run the test seeds."""
    log = log or sys.stdout
    ray = _import_ray()
    t0 = time.time()
    spec.out.mkdir(parents=True, exist_ok=True)
    with _folder_lock(spec.out):
        return _tune_locked(spec, log, ray, t0)


@contextmanager
def _folder_lock(out: Path):
    """One clbench tune per folder (the OS drops the lock when the process dies)."""
    fd, _ = try_lock(out / ".tune.lock")
    if fd is None:
        raise ConfigError(f"tune folder {out} is in use by another clbench tune; wait for it to finish")
    try:
        yield
    finally:
        os.close(fd)


def _tune_locked(spec: TuneSpec, log, ray, t0: float) -> TuneResult:
    import torch
    from ray import tune as rt
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    from clbench.engine import build_stream
    _check_resume(spec)
    trial_overrides = [*spec.overrides, *spec.trial_overrides()]
    base = compose(trial_overrides)
    n_exp = len(build_stream(base, torch.device("cpu")))   # also fails fast on missing data, before Ray starts
    default = {k: lookup(base, k) for k in spec.space}
    default_ok = all(in_domain(spec.space[k], v) for k, v in default.items())
    grace = min(spec.grace or max(1, math.ceil(n_exp / 2)), n_exp)
    spec.threads = check_threads(base) or 1
    ctx = TrialContext(overrides=trial_overrides, metric=spec.metric, n_experiences=n_exp,
                       worst=worst_value(spec.metric), plugins=_in_process_plugins())
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "5")   # experiment state saved often: cheap, resumable
    print(f"clbench tune: {base['benchmark']['name']} / {base['strategy']['name']}: {spec.budget} trials "
          f"({spec.concurrency} at a time, {spec.threads} thread(s) each), validation {spec.metric} "
          f"({spec.mode}) on {spec.validation:g} of the training data, protocol {spec.protocol}"
          f"{f' (first {spec.first_k} experiences)' if spec.first_k else ''}; space: "
          + ", ".join(f"{k}={d}" for k, d in spec.space.items()) + f" -> {spec.out}", file=log, flush=True)
    started = _init_ray(ray, spec)
    try:
        trainable = rt.with_resources(rt.with_parameters(run_trial, ctx=ctx), {"cpu": spec.threads})
        path = spec.out / "ray"
        if spec.resume and rt.Tuner.can_restore(str(path)):
            print(f"clbench tune: resuming the search in {path}", file=log, flush=True)
            tuner = rt.Tuner.restore(str(path), trainable, resume_errored=True)
        else:
            scheduler = (ASHAScheduler(time_attr="experience", max_t=n_exp, grace_period=grace,
                                       reduction_factor=spec.reduction) if spec.scheduler == "asha"
                         else FIFOScheduler())
            search = OptunaSearch(points_to_evaluate=[default] if default_ok else None, seed=spec.seed)
            tuner = rt.Tuner(trainable, param_space=ray_space(spec.space),
                             tune_config=rt.TuneConfig(metric="objective", mode=spec.mode, num_samples=spec.budget,
                                                       max_concurrent_trials=spec.concurrency, search_alg=search,
                                                       scheduler=scheduler, reuse_actors=True,
                                                       trial_name_creator=_trial_name,
                                                       trial_dirname_creator=_trial_name),
                             run_config=rt.RunConfig(name="ray", storage_path=str(spec.out), verbose=0,
                                                     callbacks=[_progress(spec.budget, spec.metric, spec.mode, n_exp)]))
        grid = tuner.fit()
    finally:
        if started:
            ray.shutdown()
    for stale in (spec.out / "trials").glob(".*.partial"):   # trials stopped early: nothing will resume them
        shutil.rmtree(stale, ignore_errors=True)
    rows = trial_rows(grid, spec, n_exp)
    best = pick_best(rows, spec.mode)
    default_row = next((r for r in rows if r["params"] == default and r["status"] == "completed"), None)
    record = tuning_record(spec, rows, best, default if default_ok else None, default_row, n_exp, grace,
                           time.time() - t0)
    prev = _read_json(spec.out / "tuning.json")
    if prev.get("tune_id") == record["tune_id"] and \
            (prev.get("trials"), prev.get("best")) == (len(rows), record["best"]):
        # a re-run of a finished search only read it back: its wall time and versions are those of the search
        record["wall_s"], record["versions"] = prev["wall_s"], prev["versions"]
    files = write_outputs(spec, rows, best, record)
    result = TuneResult(spec=spec, rows=rows, best=best, record=record, files=files, seconds=time.time() - t0)
    if best is None:
        raise ConfigError(f"no trial of the tune in {spec.out} completed (see {files['table_md']}); nothing to "
                          f"choose")
    if spec.seeds:
        result.test = run_test_seeds(spec, best, record)
    return result


def trial_rows(grid, spec: TuneSpec, n_exp: int) -> list[dict]:
    """One row per trial: its parameters, status, the metric and the experiences it ran."""
    rows = []
    for r in grid:
        m = r.metrics or {}
        trial_id = m.get("trial_id") or Path(str(r.path)).name.replace("trial_", "")
        exp = m.get("experience")
        if r.error is not None:
            status = "error: " + str(r.error).strip().splitlines()[-1][:200]
        elif m.get("diverged"):
            status = "diverged"
        elif exp is None:
            status = "not run"
        elif exp < n_exp:
            status = f"stopped after {exp} experiences (ASHA)"
        else:
            status = "completed"
        v = m.get("objective")
        rows.append({"trial": trial_id, "params": dict(r.config or {}), "status": status, "experiences": exp,
                     "value": None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v),
                     "val_acc_seen": m.get("val_acc_seen"), "seconds": m.get("time_total_s"),
                     "run_id": m.get("run_id"),
                     "_start": (m.get("timestamp") or 0) - (m.get("time_total_s") or 0)})
    # The ResultGrid of a restored search is not in creation order: order by when each trial started.
    rows.sort(key=lambda row: row.pop("_start"))
    for n, row in enumerate(rows, 1):
        row["n"] = n
    return rows


def pick_best(rows: list[dict], mode: str) -> Optional[dict]:
    done = [r for r in rows if r["status"] == "completed" and r["value"] is not None]
    if not done:
        return None
    if mode == "max":
        return max(done, key=lambda r: (r["value"], -r["n"]))    # ties: the earlier trial
    return min(done, key=lambda r: (r["value"], r["n"]))


def tuning_record(spec: TuneSpec, rows: list[dict], best: Optional[dict], default: Optional[dict],
                  default_row: Optional[dict], n_exp: int, grace: int, seconds: float) -> dict:
    """How the configuration was chosen: stored in best.yaml, tuning.json and every test run's config_source."""
    import optuna
    import ray

    import clbench
    from clbench.results import git_commit
    return {
        "tool": "clbench tune",
        "protocol": spec.protocol,
        "first_k": spec.first_k,
        "experiences_tuned": n_exp,
        "split": "validation",
        "validation": spec.validation,
        "test_evaluated": False,
        "metric": spec.metric,
        "mode": spec.mode,
        "space": {k: str(d) for k, d in spec.space.items()},
        "space_source": spec.space_source,
        "search": {"algorithm": "optuna-tpe", "seed": spec.seed, "default_first": default is not None},
        "scheduler": ({"name": "asha", "time_attr": "experience", "grace": grace, "reduction": spec.reduction,
                       "max_t": n_exp} if spec.scheduler == "asha" else {"name": "fifo"}),
        "budget": spec.budget,
        "trials": len(rows),
        "completed": sum(r["status"] == "completed" for r in rows),
        "stopped_early": sum(r["status"].startswith("stopped") for r in rows),
        "failed": sum(r["status"] in ("diverged", "not run") or r["status"].startswith("error") for r in rows),
        "seed": spec.seed,
        "overrides": spec.overrides,
        "best": dict(best["params"]) if best else None,
        "best_value": best["value"] if best else None,
        "best_trial": best["trial"] if best else None,
        "default": default,
        "default_value": default_row["value"] if default_row else None,
        "wall_s": round(seconds, 1),
        "versions": {"clbench": clbench.__version__, "ray": ray.__version__, "optuna": optuna.__version__,
                     "git_commit": git_commit()},
        "tune_id": canonical_hash(spec.identity())[:12],
    }


# ----- outputs --------------------------------------------------------------------------------------------
def best_overrides(spec: TuneSpec, best: dict) -> list[str]:
    from clbench.sweep import format_value
    return [*spec.overrides, *[f"{k}={format_value(v, k)}" for k, v in sorted(best["params"].items())]]


def write_outputs(spec: TuneSpec, rows: list[dict], best: Optional[dict], record: dict) -> dict[str, Path]:
    out = spec.out
    keys = list(spec.space)
    head = ["trial", "status", "experiences", f"val_{spec.metric}", "val_acc_seen", *keys, "seconds"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*head, "run_id"])
    for r in rows:
        w.writerow([r["trial"], r["status"], r["experiences"], r["value"], r["val_acc_seen"],
                    *[r["params"].get(k) for k in keys], r["seconds"], r["run_id"]])
    files = {"table_csv": write_text_atomic(out / "trials.csv", buf.getvalue())}
    md = [f"# clbench tune: {spec.budget} trials, validation {spec.metric} ({spec.mode}), protocol {spec.protocol}"
          + (f" (first {spec.first_k} experiences)" if spec.first_k else ""), "",
          f"Shared overrides: `{' '.join(spec.overrides) or '(none)'}`. Test split never evaluated "
          f"(eval.test=false in every trial). Stopped trials show the metric on the experiences they ran.", "",
          "| " + " | ".join(["#", *head]) + " |", "|" + "---|" * (len(head) + 1)]
    for r in rows:
        cells = [str(r["n"]), r["trial"], r["status"], str(r["experiences"]), _fmt(r["value"]),
                 _fmt(r["val_acc_seen"]), *[_fmt(r["params"].get(k)) for k in keys], _fmt(r["seconds"])]
        md.append("| " + " | ".join(markdown_cell(c, 2000) for c in cells) + " |")
    if best:
        md += ["", f"Best: trial {best['trial']} ({_fmt(best['value'])}): `{' '.join(best_overrides(spec, best))}`"]
    files["table_md"] = write_text_atomic(out / "trials.md", "\n".join(md) + "\n")
    files["record"] = write_json_atomic(out / "tuning.json", record)
    if best:
        text = (f"# Chosen by clbench tune: trial {best['trial']} of {len(rows)}, validation {spec.metric} "
                f"{_fmt(best['value'])} (protocol {spec.protocol}; the test split was never evaluated).\n"
                f"# Run it on the test set:  clbench run tuned={out / 'best.yaml'} seed=0\n"
                + yaml.safe_dump({"overrides": best_overrides(spec, best), "tuning": record}, sort_keys=False))
        files["best"] = write_text_atomic(out / "best.yaml", text)
    files["plot"] = search_plot(rows, spec, out / "search.png")
    return files


def search_plot(rows: list[dict], spec: TuneSpec, path: Path) -> Path:
    """The metric of every trial in order (stopped trials at the value they reached), and the best so far."""
    from clbench.plots import plt, save
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    groups = {"completed": ("o", "C0", "completed"), "diverged": ("x", "C3", "diverged"),
              "stopped": ("v", "0.6", "stopped early (value on the experiences it ran)")}
    for status, (marker, color, label) in groups.items():
        pts = [(r["n"], 100 * r["value"]) for r in rows if r["status"].startswith(status) and r["value"] is not None]
        if pts:
            ax.scatter(*zip(*pts), marker=marker, color=color, label=label, zorder=3)
    best, xs, ys = None, [], []
    for r in rows:
        if r["status"] == "completed" and r["value"] is not None:
            if best is None or (r["value"] > best if spec.mode == "max" else r["value"] < best):
                best = r["value"]
        if best is not None:
            xs.append(r["n"])
            ys.append(100 * best)
    if xs:
        ax.step(xs, ys, where="post", color="C1", label="best so far")
    if rows and rows[0]["status"] == "completed" and rows[0]["value"] is not None:
        ax.annotate("default", (1, 100 * rows[0]["value"]), textcoords="offset points", xytext=(4, 6), fontsize=8)
    ax.set_xlabel("trial")
    ax.set_ylabel(f"validation {spec.metric} (%)")
    title = f"clbench tune: {' '.join(spec.overrides)[:80]}\nprotocol {spec.protocol}, {len(rows)} trials"
    ax.set_title(plot_text(title), fontsize=9)   # overrides are user text: no mathtext
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)


# ----- the chosen configuration on the test set ----------------------------------------------------------------
def run_test_seeds(spec: TuneSpec, best: dict, record: dict):
    """`clbench sweep` of the chosen configuration over the test seeds: the full stream, the benchmark's own
    training data (no validation hold-out), the test split; each run's config_source carries the record."""
    from clbench.sweep import SweepSpec, run_sweep
    params: dict[str, list[str]] = {}
    for o in best_overrides(spec, best):
        k, v = o.split("=", 1)
        params[k] = [v]
    params["seed"] = [str(s) for s in spec.seeds]
    sweep = SweepSpec(name=f"{spec.out.name}-test", out=spec.out / "test", params=params,
                      settings={"executor": "local", "workers": min(spec.concurrency, len(spec.seeds))}, tuning=record)
    return run_sweep(sweep, argv=["tune", *sys.argv[1:]])


def load_tuned(path) -> tuple[list[str], dict]:
    """The overrides and tuning record of a best.yaml written by clbench tune (`clbench run tuned=PATH`)."""
    p = Path(str(path))
    try:
        size = p.stat().st_size
    except OSError as e:
        raise bad_value("tuned", f"cannot read {p}: {e.strerror or e}") from None
    if size > MAX_BEST_FILE:
        raise bad_value("tuned", f"{p} is {size} bytes; a best.yaml written by clbench tune is far smaller")
    data = load_yaml_file(p)
    if not isinstance(data, dict) or set(data) != {"overrides", "tuning"}:
        raise bad_value("tuned", f"{p} is not a best.yaml written by clbench tune (expected the keys overrides "
                                 f"and tuning)")
    overrides, record = data["overrides"], data["tuning"]
    if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
        raise bad_value("tuned", f"'overrides' in {p} must be a list of key=value strings")
    if not isinstance(record, dict) or record.get("tool") != "clbench tune":
        raise bad_value("tuned", f"'tuning' in {p} is not a clbench tune record")
    return list(overrides), record


def split_tuned(args: list[str]) -> tuple[list[str], Optional[dict]]:
    """`tuned=PATH` among run overrides: the file's overrides first (the command line's win), and its record."""
    tuned = [a.split("=", 1)[1] for a in args if a.split("=", 1)[0].strip().lstrip("+") == "tuned"]
    if not tuned:
        return list(args), None
    if len(tuned) > 1:
        raise bad_value("tuned", "give one best.yaml")
    overrides, record = load_tuned(tuned[0])
    rest = [a for a in args if a.split("=", 1)[0].strip().lstrip("+") != "tuned"]
    return [*overrides, *rest], record


def format_summary(res: TuneResult) -> str:
    spec, best, rec = res.spec, res.best, res.record
    lines = [f"clbench tune: {rec['trials']} trials ({rec['completed']} completed, {rec['stopped_early']} stopped "
             f"early by ASHA, {rec['failed']} failed) in {res.seconds:.0f}s"]
    if rec["default_value"] is not None:
        lines.append(f"  default: validation {spec.metric} {_fmt(rec['default_value'])}  "
                     f"({', '.join(f'{k}={_fmt(v)}' for k, v in rec['default'].items())})")
    if best:
        lines.append(f"  best:    validation {spec.metric} {_fmt(best['value'])}  (trial {best['trial']}: "
                     f"{', '.join(f'{k}={_fmt(v)}' for k, v in sorted(best['params'].items()))})")
    for k, p in res.files.items():
        lines.append(f"{k}: {p}")
    if res.test is not None:
        from clbench.sweep import format_report
        lines += ["", "Test seeds of the chosen configuration:", format_report(res.test)]
    return "\n".join(lines)


__all__ = ["TuneSpec", "parse_tune_args", "tune", "load_tuned", "split_tuned", "declared_space", "prefix_metric",
           "RayReporter", "format_summary"]
