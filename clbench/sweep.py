"""Sweeps: many independent runs, their result.json files the source of truth.

    clbench sweep benchmark=split-digits strategy=naive,replay seed=0,1,2 out=sweeps/digits workers=2

1. Parse: sweep-level keys (executor, workers, name, sweep, ray.*, submitit.*) are split from
   run overrides; a comma-separated value is an axis (Hydra-style; commas inside [..], {..}, (..) or
   quotes do not split, `\\,` is a literal comma, `range(a,b[,step])` expands); a sweep file from
   configs/sweep/ gives the same things as data.
2. Plan: the cartesian product of the axes; each cell is composed here, in the parent, so a typo fails
   before any run starts, and gets its deterministic run id (same config + seed -> same id).
3. Resume: a run whose `<out>/<run_id>/result.json` is complete and was made by the current code on
   the current data (its provenance code_hash and data_hash, clbench/provenance.py) is skipped; the
   others (never run, crashed, failed, or from other code or data) run again. A complete result from
   other code or data is moved to `<out>/superseded/` first, and the console says so; `reuse=any`
   keeps every complete result whatever made it. Runs publish atomically, so a complete result is
   never half-written.
4. Execute on an executor (clbench/executors.py); each finished run updates the manifest
   `<out>/sweep.json` (written atomically) and a progress bar; a failure is recorded with its
   traceback in `<out>/failed/<run_id>.txt` and does not stop the others.
5. Aggregate: the table `clbench report` prints (mean +- std, n), saved as summary.csv / summary.md.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shutil
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from clbench.config import (SEED_KEYS, ConfigError, check_keys, compose, config_hash, group_hash, load_user_yaml,
                            named_yaml, parse_value, split_key_value)
from clbench.errors import RunInterrupted, StorageError, bad_value
from clbench.registry import UnknownNameError
from clbench.reproducibility import check_threads
from clbench.results import (RunDir, check_out_dir, load_complete, make_run_id, storage_error, try_lock,
                             write_json_atomic, write_text_atomic)

MANIFEST = "sweep.json"
MANIFEST_VERSION = 1
# Keys that configure the sweep itself; everything else is a run override (`threads` too: it is part of
# every run's protocol, see clbench/reproducibility.py).
SWEEP_KEYS = ("executor", "workers", "name", "sweep", "reuse", "seed_parallel", "tuned")
NAME_MAX_CHARS = 100                 # the sweep name: a folder name and a W&B group
SWEEP_SECTIONS = ("ray", "submitit")
SWEEP_FILE_KEYS = ("name", "description", "out", "executor", "workers", "threads", "reuse", "seed_parallel", "ray",
                   "submitit", "overrides", "grid")
# reuse=same: a complete run counts only if made by the current code on the current data;
# reuse=any: every complete run counts (results from other code are kept, and reported apart).
REUSE = ("same", "any")
SUPERSEDED = "superseded"
# seed_parallel=true: the seeds of one configuration train as one vectorised model where they can
# (clbench/seed_parallel.py), each seed's result.json as its separate run's; false: every run separately.
SEED_PARALLEL_DEFAULT = False      # on this 2-core CPU not a clear win over separate processes (docs/speed.md)


# --------------------------------------------------------------------------------------------------
# 1. Parsing overrides into axes
# --------------------------------------------------------------------------------------------------

_OPEN, _CLOSE = "[{(", "]})"
_RANGE = re.compile(r"^\s*range\((.*)\)\s*$")


def split_values(text: str, key: str = "") -> list[str]:
    """Split an override value at top-level commas.

    `0,1,2` -> ['0', '1', '2'];  `[1,2],[3,4]` -> ['[1,2]', '[3,4]'];  `'a,b',c` -> ["'a,b'", 'c'];
    `a\\,b` -> ['a,b'];  `range(3)` -> ['0', '1', '2']. Quotes stay in the text: the run's config
    parser (YAML) turns `'a,b'` into the string a,b, and `'1'` into the string 1.
    """
    where = f"'{key}={text}'" if key else repr(text)
    parts: list[str] = []
    cur: list[str] = []
    stack: list[str] = []
    quote: Optional[str] = None
    i = 0
    while i < len(text):
        c = text[i]
        if quote:
            cur.append(c)
            if c == "\\" and i + 1 < len(text):
                cur.append(text[i + 1])
                i += 1
            elif c == quote:
                quote = None
        elif c == "\\" and i + 1 < len(text) and text[i + 1] == ",":
            cur.append(",")
            i += 1
        elif c in "'\"" and "".join(cur).strip()[-1:] in ("", "[", "{", "(", ",", ":"):
            quote = c  # a quote opens only where a value starts (so "it's" stays a plain word)
            cur.append(c)
        elif c in _OPEN:
            stack.append(_CLOSE[_OPEN.index(c)])
            cur.append(c)
        elif c in _CLOSE:
            if not stack or stack.pop() != c:
                raise ConfigError(f"unbalanced '{c}' in {where}")
            cur.append(c)
        elif c == "," and not stack:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    if quote:
        raise ConfigError(f"unclosed quote {quote} in {where}")
    if stack:
        raise ConfigError(f"unclosed '{_OPEN[_CLOSE.index(stack[-1])]}' in {where}")
    parts.append("".join(cur))
    if len(parts) > 1 and any(p.strip() == "" for p in parts):
        raise ConfigError(f"empty value in the sweep {where} (a stray comma?)")
    out: list[str] = []
    for p in parts:
        out.extend(_expand_range(p, where))
    return out


def _expand_range(part: str, where: str) -> list[str]:
    m = _RANGE.match(part)
    if not m:
        return [part]
    try:
        args = [parse_value(a.strip()) for a in m.group(1).split(",")]
        if not 1 <= len(args) <= 3 or not all(isinstance(a, (int, float)) and not isinstance(a, bool)
                                              for a in args):
            raise ValueError
    except ValueError:
        raise ConfigError(f"bad range in {where}: expected range(stop), range(start, stop) or "
                          f"range(start, stop, step) with numbers") from None
    start, stop, step = (0, args[0], 1) if len(args) == 1 else (args[0], args[1], args[2] if len(args) == 3 else 1)
    if step == 0:
        raise ConfigError(f"bad range in {where}: step must not be 0")
    vals = []
    v = start
    while (step > 0 and v < stop) or (step < 0 and v > stop):  # like Python's range: stop excluded
        vals.append(v)
        v = start + len(vals) * step  # no accumulated float error
    if not vals:
        raise ConfigError(f"empty range in {where}")
    return [str(round(v, 12) if isinstance(v, float) else v) for v in vals]


def format_value(value: Any, key: str = "") -> str:
    """The override text for a value from a sweep file, such that the config parser reads it back."""
    if isinstance(value, str) and parse_value(value) == value and "\n" not in value:
        return value
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9).strip()
    if text.endswith("\n..."):
        text = text[: -len("\n...")].strip()
    if parse_value(text) != value:
        raise ConfigError(f"value {value!r} of '{key}' in the sweep file cannot be written as an override")
    return text


def _is_sweep_key(key: str) -> bool:
    return key in SWEEP_KEYS or key.split(".", 1)[0] in SWEEP_SECTIONS


# --------------------------------------------------------------------------------------------------
# 2. The sweep specification (CLI + optional sweep file)
# --------------------------------------------------------------------------------------------------

@dataclass
class SweepSpec:
    name: str
    out: Path
    params: dict[str, list[str]]           # run-override key -> value texts (one value: fixed, more: an axis)
    settings: dict = field(default_factory=dict)   # executor, workers, threads, ray: {...}, submitit: {...}
    source: Optional[str] = None           # the sweep file, if any
    description: str = ""
    tuning: Optional[dict] = None          # `tuned=best.yaml`: the clbench tune record, kept in config_source

    @property
    def axes(self) -> dict[str, list[str]]:
        return {k: v for k, v in self.params.items() if len(v) > 1}

    def cells(self) -> list[list[str]]:
        """The cartesian product, first key outermost; each cell is a list of `key=value` overrides."""
        keys = list(self.params)
        return [[f"{k}={v}" for k, v in zip(keys, combo)]
                for combo in itertools.product(*(self.params[k] for k in keys))]


def load_sweep_file(name: str) -> tuple[dict, str]:
    """A sweep definition by name (configs/sweep/<name>.yaml) or path; returns (data, path)."""
    path = named_yaml(name, "sweep", "sweep")
    data = load_user_yaml(path, "sweep file", loader=yaml.SafeLoader)   # (sweep values keep YAML 1.1 text)
    return check_keys(data, f"sweep file {path}", SWEEP_FILE_KEYS, ("overrides", "grid")), str(path)


def _set_setting(settings: dict, key: str, value: Any) -> None:
    if "." in key:
        section, sub = key.split(".", 1)
        settings.setdefault(section, {})[sub] = value
    else:
        settings[key] = value


def parse_sweep_args(args: list[str]) -> SweepSpec:
    """Build the sweep from `key=value[,value...]` arguments (and the sweep file named by `sweep=`)."""
    cli: list[tuple[str, str]] = []
    for arg in args:
        key, text = split_key_value(arg, "strategy=naive,replay seed=0,1,2 workers=2", form="key=value or key=a,b,c")
        key = key.strip()
        if not key.lstrip("+"):
            raise ConfigError(f"argument '{arg}' has an empty key")
        cli.append((key, text))

    settings: dict = {}
    params: dict[str, list[str]] = {}
    source, description, name, out = None, "", None, None
    file_name = [t for k, t in cli if k == "sweep"]
    if file_name:
        data, source = load_sweep_file(file_name[-1])
        description = str(data.get("description", "") or "")
        name = data.get("name") or Path(source).stem
        out = data.get("out")
        for k in ("executor", "workers", "reuse", "seed_parallel"):
            if k in data:
                settings[k] = data[k]
        if "threads" in data:  # a run key (part of each run's config), kept at the top of sweep files
            params["threads"] = [format_value(data["threads"], "threads")]
        for section in SWEEP_SECTIONS:
            for k, v in (data.get(section) or {}).items():
                settings.setdefault(section, {})[k] = v
        for k, v in (data.get("overrides") or {}).items():
            params[str(k)] = [format_value(v, k)]
        for k, vs in (data.get("grid") or {}).items():
            vs = vs if isinstance(vs, list) else [vs]
            if not vs:
                raise ConfigError(f"grid key '{k}' in sweep file {source} has no values")
            params[str(k)] = [format_value(v, k) for v in vs]

    tuning = None
    for key, text in cli:      # tuned=best.yaml (clbench tune): its overrides, then the command line's
        if key == "tuned":
            from clbench.tune import load_tuned
            tuned_overrides, tuning = load_tuned(text)
            params.update({k: [v] for k, v in (o.split("=", 1) for o in tuned_overrides)})
    for key, text in cli:
        if key in ("sweep", "tuned"):
            continue
        values = split_values(text, key)
        if _is_sweep_key(key) or key == "out":
            if len(values) > 1:
                raise ConfigError(f"'{key}' configures the sweep and cannot take several values (got '{text}')")
            if key == "out":
                out = text
            elif key == "name":
                name = text
            else:
                _set_setting(settings, key, parse_value(text))
            continue
        params[key] = values  # a CLI key replaces the same key of the sweep file (axis or fixed)

    if "out" in params:
        raise ConfigError("'out' must be given once on the command line (or in the sweep file), not as run override")
    if name is None:
        name = Path(out).name if out else "sweep-" + hashlib.sha256(
            json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]
    if not re.fullmatch(r"[A-Za-z0-9_.+-]+", str(name)) or len(str(name)) > NAME_MAX_CHARS:
        raise bad_value("name", f"{str(name)[:40]!r}{'...' if len(str(name)) > 40 else ''} "
                                f"(use up to {NAME_MAX_CHARS} letters, digits, '_', '.', '+', '-')")
    if settings.get("reuse", "same") not in REUSE:
        raise bad_value("reuse", f"expected one of {', '.join(REUSE)}, got {settings['reuse']!r}")
    if not isinstance(settings.get("seed_parallel", SEED_PARALLEL_DEFAULT), bool):
        raise bad_value("seed_parallel", f"expected true or false (on/off), got {settings['seed_parallel']!r}")
    out_path = Path(out) if out else Path("sweeps") / str(name)
    return SweepSpec(name=str(name), out=out_path.expanduser().resolve(), params=params, settings=settings,
                     source=source, description=description, tuning=tuning)


# --------------------------------------------------------------------------------------------------
# 3. Planning: compose every cell, give it its run id
# --------------------------------------------------------------------------------------------------

@dataclass
class PlannedRun:
    run_id: str
    overrides: list[str]     # the run's own overrides: `clbench run <these>` reproduces it
    label: str               # the axis values of this cell, e.g. "strategy=replay seed=1"
    config_label: str        # the same without the seed keys: runs sharing it are repeats
    config_key: str          # config hash without the seeds (clbench.config.group_hash)
    cfg: dict


def _wandb_job_type(cfg: dict, config_label: str, key: str) -> str:
    label = config_label or cfg["strategy"]["name"]
    return label if len(label) <= 64 else f"{cfg['strategy']['name'][:50]}-{key[:8]}"  # W&B caps job_type at 64


def plan(spec: SweepSpec) -> list[PlannedRun]:
    """Compose every cell (fails fast on a bad key or value) and give each its deterministic run id."""
    axes = spec.axes
    runs: list[PlannedRun] = []
    seen: dict[str, PlannedRun] = {}
    explicit = {k.lstrip("+") for k in spec.params}
    for cell in spec.cells():
        overrides = [*cell, f"out={spec.out}"]
        try:
            cfg = compose(overrides, tuning=spec.tuning)   # (compose checks threads like every declared key)
        except (ConfigError, UnknownNameError) as e:
            raise type(e)(f"{e} (in sweep cell: {' '.join(cell)})") from None
        # Relative paths would resolve against each worker's folder (Ray workers run elsewhere).
        root = cfg.get("data", {}).get("root")
        if isinstance(root, str) and not os.path.isabs(root):
            cfg["data"]["root"] = str(Path(root).expanduser().resolve())
        run_id = make_run_id(cfg, config_hash(cfg))
        label = " ".join(o for o in cell if o.split("=", 1)[0].lstrip("+") in {k.lstrip("+") for k in axes})
        config_label = ",".join(o for o in cell if o.split("=", 1)[0].lstrip("+") in
                                {k.lstrip("+") for k in axes} - set(SEED_KEYS))
        key = group_hash(cfg)  # the seeds of one configuration share it (as in `clbench report`)
        # W&B: one group per sweep; within it, job_type separates the configurations, so grouping by
        # job type shows the mean and spread over seeds. Keys the user set explicitly are kept.
        w = cfg["wandb"]
        if "wandb.group" not in explicit:
            w["group"] = spec.name
        if "wandb.job_type" not in explicit:
            w["job_type"] = _wandb_job_type(cfg, config_label, key)
        w["tags"] = [*w.get("tags", []), f"sweep:{spec.name}", f"config:{key[:8]}"]
        cfg["progress"] = False  # workers stay quiet; the sweep draws one bar over runs
        run = PlannedRun(run_id=run_id, overrides=cell, label=label, config_label=config_label,
                         config_key=key, cfg=cfg)
        if run_id in seen:  # e.g. lr=0.1,0.10: the same config twice
            print(f"clbench sweep: note: '{' '.join(cell)}' gives the same run as "
                  f"'{' '.join(seen[run_id].overrides)}' ({run_id}); it runs once", file=sys.stderr)
            continue
        seen[run_id] = run
        runs.append(run)
    return runs


# --------------------------------------------------------------------------------------------------
# 4. Running, resuming, the manifest
# --------------------------------------------------------------------------------------------------

@dataclass
class SweepResult:
    spec: SweepSpec
    runs: list[PlannedRun]
    status: dict[str, dict]       # run_id -> manifest entry
    table: str = ""
    summary_files: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    stopped: Optional[str] = None  # why the sweep stopped before running everything (its files could not be written)

    def count(self, status: str) -> int:
        return sum(1 for s in self.status.values() if s["status"] == status)

    @property
    def failed(self) -> list[dict]:
        return [s for s in self.status.values() if s["status"] == "failed"]


def _manifest(spec: SweepSpec, runs: list[PlannedRun], status: dict, started: float, argv: list[str]) -> dict:
    counts = {k: 0 for k in ("done", "cached", "failed", "pending")}
    for s in status.values():
        counts[s["status"]] = counts.get(s["status"], 0) + 1
    return {
        "manifest_version": MANIFEST_VERSION,
        "sweep": spec.name,
        "description": spec.description,
        "source": spec.source,
        "out": str(spec.out),
        "argv": argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "settings": spec.settings,
        "params": spec.params,
        "axes": spec.axes,
        "counts": counts,
        "runs": [status[r.run_id] for r in runs],
    }


def _clean_stale(out: Path, run_id: str) -> None:
    """A `.partial` folder of a run that is not running is what a crash or a preemption left behind: one
    holding a checkpoint is kept (the run resumes from it, see RunDir), anything else is removed."""
    stale = out / f".{run_id}.partial"
    if stale.exists() and not (stale / RunDir.CHECKPOINT).is_file():
        shutil.rmtree(stale, ignore_errors=True)


def supersede_other_code(out: Path, complete: list[PlannedRun], log, results: dict[str, dict]) -> dict[str, dict]:
    """Move aside each complete run whose recorded code or data identity is not the current one (so
    it re-runs) into <out>/superseded/<run_id>.<code8>-<data8>/; returns {run_id: what moved and why}.
    Nothing is deleted: `clbench report <out>` still finds the old results and shows them as their own
    groups. Data that cannot be loaded here (e.g. it lives only on the workers) is not compared. `results`: the
    loaded result.json of each complete run."""
    from clbench.provenance import code_identity, current_identity, describe_change, identity
    moved: dict[str, dict] = {}
    data_now: dict[str, Optional[str]] = {}   # one load per dataset config, for this sweep
    unchecked = set()
    for r in complete:
        old = identity(results[r.run_id])
        dkey = json.dumps([r.cfg["dataset"], r.cfg["data"]], sort_keys=True, default=str)
        if dkey not in data_now:
            try:
                data_now[dkey] = current_identity(r.cfg)[1]
            except Exception as e:  # noqa: BLE001 - any failure to load means "cannot compare the data"
                data_now[dkey] = None
                unchecked.add(f"{r.cfg['dataset'].get('name')}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
        new = (code_identity(r.cfg)["code_hash"], data_now[dkey] or old[1])
        if old == new:
            continue
        base = f"{r.run_id}.{(old[0] or 'none')[:8]}-{(old[1] or 'none')[:8]}"
        dest, k = out / SUPERSEDED / base, 1
        while dest.exists():
            k += 1
            dest = out / SUPERSEDED / f"{base}_{k}"
        dest.parent.mkdir(exist_ok=True)
        os.replace(out / r.run_id, dest)
        moved[r.run_id] = {"to": str(dest.relative_to(out)), "because": describe_change(old, new)}
    for what in sorted(unchecked):
        print(f"clbench sweep: note: data identity not checked ({what}); complete runs are compared by code only",
              file=log, flush=True)
    if moved:
        print(f"clbench sweep: {len(moved)} complete run(s) came from other code or data: re-running them; the old "
              f"results were moved to {out / SUPERSEDED}/ (not deleted; reuse=any keeps them in place instead)",
              file=log, flush=True)
        for i, (rid, m) in enumerate(moved.items()):
            if i == 10:
                print(f"  ... and {len(moved) - 10} more (see 'superseded' in {out / MANIFEST})", file=log)
                break
            print(f"  {rid}: {m['because']} -> {m['to']}", file=log, flush=True)
    return moved


def _publish_here(out: Path, run_id: str, result: dict) -> None:
    """A run that finished on another machine without a shared folder: publish its result.json here."""
    rd = RunDir(str(out), run_id, overwrite=True)
    try:
        write_json_atomic(rd.work / "result.json", result)
        rd.commit()
    except BaseException:
        rd.discard()
        raise


@contextmanager
def _sweep_lock(out: Path):
    """One sweep process per folder: a second one would re-run (and clobber) the first one's pending runs.

    An OS lock on `<out>/.sweep.lock` (results.try_lock: free at once when its holder dies; taking over a stale
    lock file by check-then-write let two sweeps hold it). The file says who holds it, for the message.
    """
    lock = out / ".sweep.lock"
    try:
        fd, holder = try_lock(lock, f"{socket.gethostname()}:{os.getpid()}", 0o666)
    except OSError as e:
        raise storage_error(e, lock) from e
    if fd is None:
        raise ConfigError(f"sweep folder {out} is in use by another clbench sweep ({holder or 'another process'}); "
                          f"wait for it to finish (the lock is released when that process ends, however it ends)")
    try:
        yield
    finally:
        os.close(fd)  # releases the lock


def _check_same_sweep(spec: SweepSpec) -> None:
    """Refuse an out folder that holds another sweep: their manifests and summaries would overwrite each
    other and their runs mix. The same sweep widened along an axis (more seeds, another strategy) is a
    resume; a different name, another set of keys or another fixed value is another sweep."""
    path = spec.out / MANIFEST
    if not path.exists():
        return
    try:
        old = json.loads(path.read_text())
        old_name, old_params = old["sweep"], old["params"]
        if not (isinstance(old_params, dict) and all(isinstance(v, list) for v in old_params.values())):
            raise ValueError("'params' is not a mapping of lists")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path} cannot be read as a sweep manifest ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:100]}); choose another out=, or delete that file to "
                          f"reuse the folder's complete runs in this sweep") from None
    diffs = [] if old_name == spec.name else [f"name {old_name} vs {spec.name}"]
    for k in sorted(set(old_params) | set(spec.params)):
        a, b = old_params.get(k), spec.params.get(k)
        if a is None or b is None:
            diffs.append(f"{k} only in {'that' if b is None else 'this'} sweep")
        elif len(a) == 1 and len(b) == 1 and a != b:
            diffs.append(f"{k}={a[0]} there, {b[0]} here")
    if diffs:
        raise ConfigError(f"sweep folder {spec.out} holds another sweep '{old_name}' ({'; '.join(diffs[:4])}"
                          f"{'; ...' if len(diffs) > 4 else ''}); give this sweep its own out=, or re-run that "
                          f"sweep's command to resume or widen it (more values of an axis)")


def run_sweep(spec: SweepSpec, argv: Optional[list[str]] = None, log=None) -> SweepResult:
    """Plan, skip what is complete, run the rest, aggregate. Never raises for a failing run."""
    from clbench.executors import make_executor

    log = log or sys.stderr
    t_start = time.time()
    check_out_dir(spec.out)
    runs = plan(spec)
    threads = max([check_threads(r.cfg) or 1 for r in runs] or [1])
    executor = make_executor(spec.settings, spec.out, threads)  # bad settings fail before anything is written
    try:
        spec.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise storage_error(e, spec.out) from e
    with _sweep_lock(spec.out):
        _check_same_sweep(spec)
        return _run_planned(spec, runs, executor, argv, log, t_start)


def _record_failure(out: Path, entry: dict, o) -> str:
    """Mark the run failed and keep its traceback in <out>/failed/<run_id>.txt; returns the error line."""
    error = o.error or "the run reported success but left no complete result.json"
    entry["status"], entry["error"] = "failed", error
    tb_file = out / "failed" / f"{o.run_id}.txt"
    write_text_atomic(tb_file, f"run {o.run_id}\noverrides: {' '.join(entry['overrides'])}\n\n"
                               f"{o.traceback or error}\n")
    entry["traceback_file"] = str(tb_file.relative_to(out))
    return error


def _run_planned(spec: SweepSpec, runs: list[PlannedRun], executor, argv, log, t_start: float) -> SweepResult:
    from clbench.executors import Task
    out = spec.out
    failed_dir = out / "failed"
    status: dict[str, dict] = {}
    todo: list[PlannedRun] = []
    loaded = {r.run_id: load_complete(out / r.run_id) for r in runs}   # each result.json read and checked once
    complete = [r for r in runs if loaded[r.run_id] is not None]
    moved = {} if spec.settings.get("reuse", "same") == "any" else supersede_other_code(out, complete, log, loaded)
    for r in runs:
        entry = {"run_id": r.run_id, "overrides": r.overrides, "label": r.label, "status": "pending"}
        if r.run_id in moved:
            entry["superseded"] = moved[r.run_id]
            loaded[r.run_id] = None                     # moved aside: it runs again
        if loaded[r.run_id] is not None:
            entry["status"] = "cached"
            (failed_dir / f"{r.run_id}.txt").unlink(missing_ok=True)
        else:
            _clean_stale(out, r.run_id)
            todo.append(r)
        status[r.run_id] = entry
    argv = list(sys.argv[1:] if argv is None else argv)
    write_json_atomic(out / MANIFEST, _manifest(spec, runs, status, t_start, argv))

    n_cached = len(runs) - len(todo)
    print(f"clbench sweep '{spec.name}': {len(runs)} runs ({n_cached} already complete, {len(todo)} to run) "
          f"on {executor.describe()} -> {out}", file=log, flush=True)

    stopped: Optional[StorageError] = None   # the sweep's own files could not be written: it stops early
    if todo:
        from tqdm import tqdm
        tasks = [Task(run_id=r.run_id, cfg=r.cfg, label=r.label or r.run_id) for r in todo]
        if spec.settings.get("seed_parallel", SEED_PARALLEL_DEFAULT):
            tasks = seed_groups(tasks, todo, int(spec.settings.get("workers") or 1), log)
        bar = tqdm(total=len(todo), desc=f"sweep {spec.name}", unit="run", file=log, dynamic_ncols=True,
                   disable=None, mininterval=0.5)
        outcomes = executor.run(tasks)
        try:
            for o in (m for g in outcomes for m in member_outcomes(g, tasks)):
                entry = status[o.run_id]
                entry["seconds"] = round(o.seconds, 3)
                if o.worker:
                    entry["worker"] = o.worker
                if o.status == "interrupted":   # SIGTERM/SIGINT reached the run: stop the sweep; a re-run resumes
                    entry["status"] = "interrupted"
                    raise RunInterrupted(o.signum, f"during run {o.run_id} of sweep '{spec.name}'", out)
                try:
                    res = load_complete(out / o.run_id) if o.status == "done" else None
                    if o.status == "done" and o.result is not None and res is None:
                        _publish_here(out, o.run_id, o.result)
                        res = load_complete(out / o.run_id)
                    loaded[o.run_id] = res
                    if res is not None:
                        entry["status"] = "done"
                        entry.pop("error", None)
                        entry.pop("traceback_file", None)
                        (failed_dir / f"{o.run_id}.txt").unlink(missing_ok=True)
                    else:
                        bar.write(f"FAILED {o.run_id} [{entry['label']}]: {_record_failure(out, entry, o)}",
                                  file=log)
                    if bar.disable:  # no terminal: one line per run instead of a bar
                        done = sum(1 for s in status.values() if s["status"] != "pending") - n_cached
                        print(f"[{done}/{len(todo)}] {entry['status']:<6s} {o.run_id} ({o.seconds:.1f}s)",
                              file=log, flush=True)
                    bar.update(1)
                    write_json_atomic(out / MANIFEST, _manifest(spec, runs, status, t_start, argv))
                except OSError as e:  # StorageError too: stop, and report what is done
                    stopped = e if isinstance(e, StorageError) else storage_error(e, e.filename or out)
                    if entry["status"] == "pending":
                        entry.update(status="failed", error=str(stopped))
                    break
        except (KeyboardInterrupt, RunInterrupted):
            for entry in status.values():
                if entry["status"] == "pending":
                    entry["status"] = "interrupted"
            _try_write_manifest(spec, runs, status, t_start, argv)
            raise
        finally:
            outcomes.close()  # a sweep stopped early ends the runs still in flight
            bar.close()

    result = SweepResult(spec=spec, runs=runs, status=status, seconds=time.time() - t_start)
    complete = [loaded[r.run_id] for r in runs if status[r.run_id]["status"] in ("done", "cached")]
    try:
        if complete:
            result.table, result.summary_files = write_summary(out, complete, spec.name)
        write_json_atomic(out / MANIFEST, _manifest(spec, runs, status, t_start, argv))
    except StorageError as e:
        stopped = stopped or e
    result.stopped = str(stopped) if stopped else None
    return result


# ----- perf: seed-parallel groups (seed_parallel=on) ------------------------------------------------
def seed_groups(tasks: list, planned: list[PlannedRun], workers: int, log) -> list:
    """The seeds of each configuration that can train as one model, as group tasks (the rest unchanged).

    A configuration's seeds are split into as many groups as leave no worker idle (workers // configs)."""
    from clbench.executors import Task
    from clbench.seed_parallel import why_not
    by_config: dict[str, list[int]] = {}
    for i, r in enumerate(planned):
        by_config.setdefault(r.config_key, []).append(i)
    out, notes = [], set()
    chunks = max(1, workers // max(1, len(by_config)))
    for idx in by_config.values():
        reason = why_not([planned[i].cfg for i in idx])
        if reason:
            notes.add(reason)
            out += [tasks[i] for i in idx]
            continue
        k = min(chunks, len(idx) // 2) or 1          # at least two seeds per group
        for part in (idx[j::k] for j in range(k)):
            members = [tasks[i] for i in part]
            out.append(members[0] if len(members) == 1 else
                       Task(run_id="seeds:" + "+".join(m.run_id for m in members), cfg=members[0].cfg,
                            label=" ".join(m.label for m in members), members=members))
    for reason in sorted(notes):
        print(f"clbench sweep: seed_parallel: some runs train separately ({reason})", file=log, flush=True)
    return out


def member_outcomes(outcome, tasks: list) -> list:
    """The per-run outcomes of a task: a group's own, or (a group whose worker died) one failure per seed."""
    if outcome.members is not None:
        return outcome.members
    task = next((t for t in tasks if t.run_id == outcome.run_id), None)
    if task is not None and task.members:
        from clbench.executors import Outcome
        return [Outcome(m.run_id, outcome.status, outcome.seconds, error=outcome.error,
                        traceback=outcome.traceback, worker=outcome.worker) for m in task.members]
    return [outcome]


def _try_write_manifest(spec, runs, status, t_start, argv) -> None:
    try:
        write_json_atomic(spec.out / MANIFEST, _manifest(spec, runs, status, t_start, argv))
    except StorageError:
        pass   # the previous manifest stays, whole (atomic writes)


# --------------------------------------------------------------------------------------------------
# 5. The aggregate table (the one `clbench report` prints)
# --------------------------------------------------------------------------------------------------

def write_summary(out: Path, results: list[dict], name: str) -> tuple[str, list[Path]]:
    """Aggregate with clbench.report (the table `clbench report` prints) and save it next to the runs
    as summary.csv (every metric: mean, std, n as fractions) and summary.md (mean +- std in %)."""
    from clbench.report import aggregate, render_table
    rows = aggregate(results)
    md = (f"# Sweep {name}\n\n{len(results)} complete runs, grouped by benchmark, strategy and "
          f"configuration (seeds are repeats).\n\n{render_table(rows, fmt='markdown')}")
    files = [write_text_atomic(out / "summary.csv", render_table(rows, fmt="csv")),
             write_text_atomic(out / "summary.md", md)]
    return render_table(rows), files


def format_report(res: SweepResult) -> str:
    """What the CLI prints at the end: the table, counts, failures and where things are."""
    lines = []
    if res.table:
        lines += [res.table, ""]
    lines.append(f"sweep '{res.spec.name}': {len(res.runs)} runs: {res.count('done')} done, "
                 f"{res.count('cached')} already complete, {res.count('failed')} failed "
                 f"({res.seconds:.1f}s)")
    for s in res.failed:
        lines.append(f"  FAILED {s['run_id']} [{s['label']}]: {s['error']}  "
                     f"(traceback: {res.spec.out / s['traceback_file']})")
    if res.stopped:
        lines.append(f"  STOPPED early: {res.stopped}")
    if res.failed or res.stopped:
        lines.append("  re-run the same command to retry the failed runs (complete runs are skipped)")
    for f in res.summary_files:
        lines.append(f"summary: {f}")
    lines.append(f"manifest: {res.spec.out / MANIFEST}")
    return "\n".join(lines)

