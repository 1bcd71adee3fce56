"""Build a leaderboard submission from run folders (result.json files).

A submission is one JSON file: the method (name, plugin package and version, and the code identity the
runs recorded: the hash of every module their code loaded, clbench/provenance.py), the benchmark and version, the resolved config *without its seeds* and that config's
hash, and one record per seed with the full accuracy matrix R, the initial row, `learned_at`, the
metrics, timing, memory and environment of that run.

Which fields must agree across seeds: every key of the resolved config except `seed` and `stream_seed`
(the "seed-free config"). Its hash, `config_hash` here, is `clbench.config.config_hash` of the config
with those two keys removed, so keys that do not change results (out, device, progress, data, wandb)
are ignored as in result.json. Each seed record keeps the run's own `run_config_hash` (the hash in its
result.json), which validation recomputes from the seed-free config plus that record's seeds.

Code identity comes from the runs, never from the code installed when `submit` runs: each seed record
keeps its run's own `provenance`, the method's `sources` / `source_hash` are the modules and code hash
those runs recorded, and runs of different code or data identity are never mixed in one submission.
"""
from __future__ import annotations

import copy
import datetime as _dt
import json
import math
import os
import re
from pathlib import Path
from typing import Iterable, Optional

from clbench.config import (NON_SEMANTIC_KEYS, SEED_KEYS, ConfigError, canonical_hash, config_hash, group_hash,
                            load_benchmark)
from clbench.errors import SubmissionError
from clbench.leaderboard import selection
from clbench.provenance import identity, short_id
from clbench.results import REQUIRED_KEYS, load_result, write_json_atomic
from clbench.results import find_results as find_run_results

SUBMISSION_SCHEMA = 1
MIN_SEEDS = 3


# ----- hashes ---------------------------------------------------------------------------------------
sha256 = canonical_hash   # submissions hash their parts exactly as configs are hashed


def seed_free_config(cfg: dict) -> dict:
    """The resolved config minus `seed` and `stream_seed`: what every seed of a submission shares."""
    return {k: copy.deepcopy(v) for k, v in cfg.items() if k not in SEED_KEYS}


def seed_free_hash(cfg: dict) -> str:
    """The same hash `clbench report` and the W&B group use for the seeds of one configuration."""
    return group_hash(cfg)


def run_config(config: dict, seed: int, stream_seed: int) -> dict:
    """The full config of one seed's run, rebuilt from the seed-free config."""
    return {**copy.deepcopy(config), "seed": int(seed), "stream_seed": int(stream_seed)}


# What the metrics are computed from (optional ones only where the run has them).
METRIC_INPUTS = ("accuracy_matrix", "initial_accuracy", "learned_at", "task_sizes", "task_masked_accuracy_matrix",
                 "reference_accuracy", "anytime_acc_seen")


def result_digest(run: dict) -> str:
    """Binds a seed's R (and the other metric inputs) to its run config hash: changing R breaks it."""
    return sha256({"run_config_hash": run["run_config_hash"],
                   **{k: run[k] for k in METRIC_INPUTS if run.get(k) is not None}})


def submission_digest(sub: dict) -> str:
    """sha256 of the submission without its verification records (a verification names the content it checked)."""
    return sha256({k: v for k, v in sub.items() if k != "verifications"})


# ----- the method: plugin package, version, source hashes (as the runs recorded them) ------------------
def run_identities(runs: list[dict]) -> dict[tuple, list[dict]]:
    """The runs by their recorded (code_hash, data_hash); a run without provenance is an error."""
    by_id: dict[tuple, list[dict]] = {}
    for r in runs:
        ident = identity(r)
        if None in ident:
            raise SubmissionError(f"{r['_path']} records no code/data provenance (written by an older clbench), "
                                  f"so the code that produced it is unknown; re-run it with this clbench")
        by_id.setdefault(ident, []).append(r)
    return by_id


def method_record(cfg: dict, display_name: Optional[str], provenance: dict) -> dict:
    """The method as the runs recorded it: the strategy's plugin distribution and the modules their code
    loaded (`sources`, hashed into `source_hash`, which is the runs' provenance code_hash)."""
    strategy = cfg["strategy"]["name"]
    plugin = next((p for p in provenance.get("plugins", []) if p.get("kind") == "strategy"), {})
    sources = dict(provenance["modules"])
    return {"name": display_name or strategy, "strategy": strategy,
            "hyperparameters": {k: v for k, v in cfg["strategy"].items() if k != "name"},
            "package": plugin.get("distribution") or (plugin.get("object") or strategy).split(".")[0],
            "package_version": plugin.get("version"), "entry_point": plugin.get("object"),
            "sources": sources, "source_hash": sha256(sources),
            "data_hash": provenance["data"]["data_hash"]}


# ----- statistics -------------------------------------------------------------------------------------
def mean_std(values: list) -> dict:
    """Mean and sample standard deviation (ddof=1) over seeds; None where a metric is undefined."""
    n = len(values)
    if n == 0 or any(v is None for v in values):
        return {"mean": None, "std": None, "n": n}
    m = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - m) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": m, "std": std, "n": n}


def summarize(runs: list[dict]) -> dict:
    names = [k for k, v in runs[0]["metrics"].items() if v is None or isinstance(v, (int, float))]
    return {k: mean_std([r["metrics"].get(k) for r in runs]) for k in names}


# ----- collecting runs --------------------------------------------------------------------------------
def find_results(paths: Iterable) -> list[Path]:
    """result.json files under the given run folders, sweep folders or files (unfinished runs skipped)."""
    found = [f for p in paths for f in find_run_results(p)]
    if not found:
        raise FileNotFoundError(f"no result.json under {', '.join(map(str, paths))}")
    return sorted(set(found))


def _load_runs(files: list[Path]) -> list[dict]:
    runs = []
    for f in files:
        r = load_result(f)
        missing = [k for k in REQUIRED_KEYS if k not in r]
        if missing:
            raise ConfigError(f"{f} is not a complete result.json (missing: {', '.join(missing)})")
        if config_hash(r["config"]) != r["config_hash"]:
            raise ConfigError(f"{f}: its config_hash does not match its config (the file was edited after the run)")
        r["_path"] = str(f)
        runs.append(r)
    return runs


def _differing_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(a) | set(b)):
        if not prefix and (k in SEED_KEYS or k in NON_SEMANTIC_KEYS):
            continue
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += _differing_keys(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(f"{prefix}{k}")
    return keys


def group_runs(runs: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for r in runs:
        groups.setdefault(seed_free_hash(r["config"]), []).append(r)
    return groups


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-").lower() or "method"


def seed_record(r: dict) -> dict:
    rec = {
        "seed": int(r["seed"]),
        "stream_seed": int(r.get("stream_seed", r["config"]["stream_seed"])),
        "run_id": r["run_id"],
        "run_config_hash": r["config_hash"],
        "accuracy_matrix": r["accuracy_matrix"],
        "initial_accuracy": r["initial_accuracy"],
        "learned_at": r["stream"].get("learned_at", list(range(len(r["initial_accuracy"])))),
        # test samples per evaluation task: sample-weighted metrics (avg_incremental_acc) need them
        "task_sizes": [int(t["n_test"]) for t in r["stream"].get("eval_tasks", [])] or None,
        "task_masked_accuracy_matrix": r.get("task_masked_accuracy_matrix"),
        "reference_accuracy": (r.get("reference") or {}).get("accuracy"),    # a* for intransigence
        "anytime_acc_seen": (r.get("anytime") or {}).get("acc_seen"),        # curve for anytime_acc_auc
    }
    rec = {k: v for k, v in rec.items() if v is not None}
    rec["result_digest"] = result_digest(rec)
    # Only metrics that validation can recompute from the stored inputs are claimed; others are kept
    # for information, outside the checked numbers.
    from clbench.leaderboard.validate import recompute_metrics
    known = recompute_metrics(rec)
    rec["metrics"] = {k: v for k, v in r["metrics"].items() if k in known}
    other = {k: v for k, v in r["metrics"].items() if k not in known}
    if other:
        rec["unchecked_metrics"] = other
    rec.update({"stream": r["stream"], "timing": r["timing"], "memory": r.get("memory", {}), "env": r["env"],
                "provenance": r["provenance"]})
    return rec


def config_groups(paths: Iterable) -> list[str]:
    """The seed-free config hashes of the runs under `paths` (one per configuration of a sweep)."""
    return list(group_runs(_load_runs(find_results(paths))))


def _one_identity(group: list[dict], ident: Optional[str]) -> list[dict]:
    """The runs of one code/data identity: `ident` (a prefix of 'code8/data8', as `clbench report` shows
    it) picks it; mixing identities is refused."""
    by_id = run_identities(group)
    if ident:
        by_id = {k: v for k, v in by_id.items() if short_id(k).startswith(ident) or k[0].startswith(ident)}
        if not by_id:
            raise SubmissionError(f"no runs of this configuration have the code/data identity '{ident}'")
    if len(by_id) > 1:
        lines = [f"  {short_id(k)}  {len(v)} run(s), seeds {sorted(int(r['seed']) for r in v)}: "
                 f"{', '.join(sorted(str(Path(r['_path']).parent) for r in v)[:3])}" for k, v in by_id.items()]
        raise SubmissionError("the runs come from different code or data (code/data identity differs), and one "
                              "submission holds runs of one identity only; pick one with --identity ID (or pass "
                              "only its run folders):\n" + "\n".join(lines))
    return next(iter(by_id.values()))


def build_submission(paths: Iterable, name: Optional[str] = None, select: Optional[str] = None,
                     notes: str = "", min_seeds: int = MIN_SEEDS, ident: Optional[str] = None) -> dict:
    """A submission from the runs under `paths`. All runs must share the seed-free config and the
    recorded code/data identity; when a sweep folder holds several configs, `select` (a prefix of a
    seed-free config hash) picks one, and `ident` (a prefix of 'code8/data8') picks one identity."""
    paths = list(paths)
    runs = _load_runs(find_results(paths))
    groups = group_runs(runs)
    if select:
        groups = {h: g for h, g in groups.items() if h.startswith(select)}
        if not groups:
            raise ConfigError(f"no runs with a seed-free config hash starting with '{select}'")
    if len(groups) > 1:
        ref = next(iter(groups.values()))[0]["config"]
        lines = [f"  {h[:12]}  {g[0]['config']['benchmark']['name']} / {g[0]['config']['strategy']['name']}  "
                 f"{len(g)} run(s)  differs in: {', '.join(_differing_keys(ref, g[0]['config'])[:6]) or '-'}"
                 for h, g in groups.items()]
        raise ConfigError("the runs do not share one config apart from seed/stream_seed; pick one with "
                          "--select HASH_PREFIX (or pass only its run folders):\n" + "\n".join(lines))
    cfg_hash, group = next(iter(groups.items()))
    group = _one_identity(group, ident)
    group.sort(key=lambda r: int(r["seed"]))
    seeds = [int(r["seed"]) for r in group]
    dupes = sorted({s for s in seeds if seeds.count(s) > 1})
    if dupes:
        clash = [r["_path"] for r in group if int(r["seed"]) in dupes]
        raise ConfigError(f"seed(s) {dupes} appear in more than one run: {', '.join(clash)}; keep one run per seed")
    if len(seeds) < min_seeds:
        raise ConfigError(f"a submission needs at least {min_seeds} seeds with the same config; found "
                          f"{len(seeds)} ({seeds}). Run more seeds, e.g. `clbench run ... seed=N`.")
    cfg = group[0]["config"]
    bench, version = cfg["benchmark"]["name"], cfg["benchmark"]["version"]
    shipped = load_benchmark(bench).get("version", 1)
    if shipped != version:
        raise ConfigError(f"the runs used benchmark '{bench}' version {version}, but the shipped benchmark is "
                          f"version {shipped}; leaderboard tracks are the shipped versions, re-run the seeds")
    method = method_record(cfg, name, group[0]["provenance"])
    seed_runs = [seed_record(r) for r in group]
    first_env = seed_runs[0]["env"]
    return {
        "submission_schema": SUBMISSION_SCHEMA,
        "id": f"{bench}__{_slug(method['name'])}__{cfg_hash[:8]}",
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "notes": notes,
        "method": method,
        "benchmark": {"name": bench, "version": version},
        "config": seed_free_config(cfg),
        "config_hash": cfg_hash,
        "selection": selection.from_runs(group),     # how the config was chosen (tuned, preset, default, hand-set)
        "seeds": seeds,
        "runs": seed_runs,
        "summary": summarize(seed_runs),
        "environment": {k: first_env.get(k) for k in ("clbench", "python", "torch", "numpy", "device", "gpu",
                                                      "cuda", "platform", "git_commit") if k in first_env},
        "timing": {"total_s": math.fsum(r["timing"]["total_s"] for r in seed_runs),
                   "mean_per_seed_s": math.fsum(r["timing"]["total_s"] for r in seed_runs) / len(seed_runs)},
        "verifications": [],
    }


def load_submission(path) -> dict:
    with open(path) as f:
        return json.load(f)


def save_submission(sub: dict, out_dir="leaderboard/submissions", overwrite: bool = False) -> Path:
    path = Path(out_dir) / f"{sub['id']}.json"
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists (same benchmark, method name and config); use --force to replace it")
    write_json_atomic(path, sub)
    os.chmod(path, 0o644)  # a public record (write_json_atomic's temp file starts as 0600)
    return path
