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

The file format is the JSON Schema clbench/schemas/submission.json (clbench.schema); every file is read
with its size and depth limits. The board holds one entry per configuration: `save_submission` refuses a
config_hash that is already there.

Code identity comes from the runs, never from the code installed when `submit` runs: each seed record
keeps its run's own `provenance`, the method's `sources` / `source_hash` are the modules and code hash
those runs recorded, and runs of different code or data identity are never mixed in one submission.
"""
from __future__ import annotations

import copy
import datetime as _dt
import math
import re
from pathlib import Path
from typing import Iterable, Optional

from clbench import metrics as M
from clbench.config import (NON_SEMANTIC_KEYS, SEED_KEYS, ConfigError, canonical_hash, group_hash,
                            load_benchmark)
from clbench.errors import SubmissionError
from clbench.escape import slug
from clbench.leaderboard import selection
from clbench.provenance import identity, short_id
from clbench.results import check_out_dir, find_results, load_result, write_json_atomic
from clbench.schema import MAX_SUBMISSION_BYTES, SUBMISSION_VERSION, metric_inputs, read_json, schema

SUBMISSION_SCHEMA = SUBMISSION_VERSION
MIN_SEEDS = 3
# The display name of a method: what the schema allows (letters, digits, space and _ . : + ( ) -).
NAME_PATTERN = re.compile(schema("submission")["properties"]["method"]["properties"]["name"]["pattern"])


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


# What the metrics are computed from, and the other measured matrices a re-run must reproduce (optional
# ones only where the run has them). The digest binds them all to the run's config hash.
METRIC_INPUTS = ("accuracy_matrix", "initial_accuracy", "learned_at", "task_sizes", "task_masked_accuracy_matrix",
                 "reference_accuracy", "anytime_acc_seen", "validation_accuracy_matrix",
                 "initial_validation_accuracy", "extra_models")
# Measured (not derived from the config): compared entry by entry by `verify`.
MEASURED = ("accuracy_matrix", "initial_accuracy", "task_masked_accuracy_matrix", "anytime_acc_seen",
            "validation_accuracy_matrix", "initial_validation_accuracy", "extra_models")


def result_digest(run: dict) -> str:
    """Binds a seed's R (and the other metric inputs) to its run config hash: changing R breaks it."""
    return sha256({"run_config_hash": run["run_config_hash"],
                   **{k: run[k] for k in METRIC_INPUTS if run.get(k) is not None}})


def submission_digest(sub: dict) -> str:
    """sha256 of the canonical submission content: a verification record names the content it re-ran."""
    return sha256(sub)


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


def check_display_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise SubmissionError(f"bad method name {name!r}: use 1-64 characters from letters, digits, space and "
                              f"_ . : + ( ) -, starting with a letter or digit (docs/leaderboard.md)")
    return name


def method_record(cfg: dict, display_name: Optional[str], provenance: dict) -> dict:
    """The method as the runs recorded it: the strategy's plugin distribution and the modules their code
    loaded (`sources`, hashed into `source_hash`, which is the runs' provenance code_hash)."""
    strategy = cfg["strategy"]["name"]
    check_display_name(display_name or strategy)
    plugin = next((p for p in provenance.get("plugins", []) if p.get("kind") == "strategy"), {})
    sources = dict(provenance["modules"])
    return {"name": display_name or strategy, "strategy": strategy,
            "hyperparameters": {k: v for k, v in cfg["strategy"].items() if k != "name"},
            "package": plugin.get("distribution") or (plugin.get("object") or strategy).split(".")[0],
            "package_version": plugin.get("version"), "entry_point": plugin.get("object"),
            "sources": sources, "source_hash": sha256(sources),
            "data_hash": provenance["data"]["data_hash"]}


# ----- statistics -------------------------------------------------------------------------------------
def summarize(runs: list[dict]) -> dict:
    """The submission's `summary`: mean, std and n over the seeds of every claimed metric."""
    names = list(runs[0]["metrics"])
    return {k: M.mean_std([r["metrics"].get(k) for r in runs]) for k in names}


def seed_metrics(run: dict, setting: str) -> dict:
    """Every metric clbench derives from a seed record's stored inputs (clbench.metrics.summarize)."""
    return M.summarize(run["accuracy_matrix"], run["initial_accuracy"], run["learned_at"], setting=setting,
                       task_sizes=run.get("task_sizes"), task_masked=run.get("task_masked_accuracy_matrix"),
                       reference=run.get("reference_accuracy"), anytime_acc_seen=run.get("anytime_acc_seen"))


# ----- collecting runs --------------------------------------------------------------------------------
def _load_runs(paths: list) -> list[dict]:
    """The results under the given run folders, sweep folders or files (unfinished runs skipped)."""
    files = find_results(paths)
    if not files:
        raise FileNotFoundError(f"no result.json under {', '.join(map(str, paths))}")
    runs = []
    for f in files:
        r = load_result(f)   # schema, config hash and metrics checked; ResultFileError names the file
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


def method_slug(text: str) -> str:
    """The method part of a submission id (lower-case letters, digits and . + -)."""
    return slug(text, keep=".+-", lower=True, limit=None) or "method"


def seed_inputs(r: dict) -> dict:
    """What a seed record keeps of a (checked) result.json: the metric inputs (read from the result as
    clbench.schema.metric_inputs reads them) and the other measured matrices."""
    m = metric_inputs(r)
    rec = {
        "accuracy_matrix": m["R"],
        "initial_accuracy": m["initial"],
        "learned_at": m["learned_at"],
        "task_sizes": m["task_sizes"],            # test samples per task: sample-weighted metrics need them
        "task_masked_accuracy_matrix": m["task_masked"],
        "validation_accuracy_matrix": r.get("validation_accuracy_matrix"),
        "initial_validation_accuracy": r.get("initial_validation_accuracy"),
        "reference_accuracy": m["reference"],     # a* for intransigence
        "anytime_acc_seen": m["anytime_acc_seen"],  # curve for anytime_acc_auc
        "extra_models": {name: {"accuracy_matrix": x["accuracy_matrix"]}
                         for name, x in (r.get("extra_models") or {}).items()} or None,
    }
    return {k: v for k, v in rec.items() if v is not None}


def seed_record(r: dict) -> dict:
    rec = {"seed": int(r["seed"]), "stream_seed": int(r["stream_seed"]), "run_id": r["run_id"],
           "run_config_hash": r["config_hash"], **seed_inputs(r)}
    rec["result_digest"] = result_digest(rec)
    # Only metrics that validation can recompute from the stored inputs are claimed (load_result checked
    # that they agree with R); anything else a run reported is kept for information, outside the checks.
    known = seed_metrics(rec, r["stream"]["setting"])
    rec["metrics"] = {k: r["metrics"].get(k, v) for k, v in known.items()}   # (an older run may lack one)
    other = {k: v for k, v in r["metrics"].items() if k not in known}
    if other:
        rec["unchecked_metrics"] = other
    rec.update({"stream": r["stream"], "timing": r["timing"], "memory": r.get("memory", {}), "env": r["env"],
                "provenance": r["provenance"]})
    return rec


def config_groups(paths: Iterable) -> list[str]:
    """The seed-free config hashes of the runs under `paths` (one per configuration of a sweep)."""
    return list(group_runs(_load_runs(paths)))


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
    runs = _load_runs(paths)
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
    if len(notes) > 2000:
        raise SubmissionError(f"--notes has {len(notes)} characters; at most 2000")
    seed_runs = [seed_record(r) for r in group]
    first_env = seed_runs[0]["env"]
    return {
        "submission_schema": SUBMISSION_SCHEMA,
        "id": f"{bench}__{method_slug(method['name'])}__{cfg_hash[:8]}",
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
    }


def load_submission(path):
    """A submission file parsed with the size and depth limits (SubmissionError otherwise); not yet validated."""
    return read_json(path, MAX_SUBMISSION_BYTES, SubmissionError)


def entry_with_config(board_dir, sub: dict) -> Optional[Path]:
    """The file on the board that already holds this benchmark and config_hash (another id), if any."""
    for path in sorted(Path(board_dir).glob("*.json")):
        if path.stem == sub["id"]:
            continue
        try:
            other = load_submission(path)
        except SubmissionError:
            continue
        if isinstance(other, dict) and other.get("config_hash") == sub["config_hash"] \
                and other.get("benchmark") == sub["benchmark"]:
            return path
    return None


def save_submission(sub: dict, out_dir="leaderboard/submissions", overwrite: bool = False) -> Path:
    """Write `<out_dir>/<id>.json`. One entry per configuration: a config already on the board under
    another id is refused (pointing at it); the same id is replaced only with `overwrite`."""
    out_dir = check_out_dir(out_dir, "--out")
    twin = entry_with_config(out_dir, sub)
    if twin is not None:
        raise SubmissionError(f"this configuration (config_hash {sub['config_hash'][:12]}) of "
                              f"{sub['benchmark']['name']} v{sub['benchmark']['version']} is already on the board "
                              f"as {twin}: the board holds one entry per configuration (docs/leaderboard.md)")
    path = out_dir / f"{sub['id']}.json"
    if path.exists() and not overwrite:
        raise SubmissionError(f"{path} exists (same benchmark, method name and config); use --force to replace it")
    write_json_atomic(path, sub, mode=0o644)  # a public record
    return path


# ----- older formats -----------------------------------------------------------------------------------
def migrate_submission(sub: dict) -> tuple[dict, list[str]]:
    """A submission_schema 1 file as version 2, and notes on what changed. Version 2 drops the in-file
    `verifications` list (anyone could write it; records now live in leaderboard/verifications/) and
    recomputes the derived numbers with the one metrics function: each seed claims exactly the metrics
    the track gives (acc_task_masked in class-IL only), and the summary uses clbench.metrics.mean_std."""
    from clbench.leaderboard.validate import leaderboard_track
    if sub.get("submission_schema") != 1:
        raise SubmissionError(f"only submission_schema 1 can be migrated (this one is "
                              f"{sub.get('submission_schema')!r})")
    sub = copy.deepcopy(sub)
    notes = []
    dropped = sub.pop("verifications", None) or []
    if dropped:
        notes.append(f"dropped {len(dropped)} in-file verification record(s): re-verify with "
                     f"`clbench leaderboard verify FILE --record`")
    shipped, why = leaderboard_track(sub["benchmark"]["name"], sub["benchmark"]["version"])
    if shipped is None:
        raise SubmissionError(why)
    for run in sub["runs"]:
        known = seed_metrics(run, shipped["expected_stream"]["setting"])
        extra = {k: v for k, v in run["metrics"].items() if k not in known}
        run["metrics"] = {k: run["metrics"].get(k, v) for k, v in known.items()}
        if extra:
            run["unchecked_metrics"] = {**run.get("unchecked_metrics", {}), **extra}
            notes.append(f"seed {run['seed']}: {sorted(extra)} moved to unchecked_metrics")
    sub["summary"] = summarize(sub["runs"])
    sub["submission_schema"] = SUBMISSION_VERSION
    return sub, notes


def migrate_file(path) -> str:
    """Rewrite the submission at `path` in the current format if it is older; returns what was done."""
    from clbench.leaderboard.validate import validate_submission
    sub = load_submission(path)
    if not isinstance(sub, dict) or sub.get("submission_schema") == SUBMISSION_VERSION:
        return f"{path}: already submission_schema {SUBMISSION_VERSION}, unchanged"
    new, notes = migrate_submission(sub)
    issues = validate_submission(new)
    if issues:
        raise SubmissionError(f"{path}: the migrated submission does not validate: {issues[0]}")
    write_json_atomic(path, new, mode=0o644)
    return f"{path}: migrated to submission_schema {SUBMISSION_VERSION}" + "".join(f"; {n}" for n in notes)
