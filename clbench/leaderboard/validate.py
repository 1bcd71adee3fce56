"""Validate a submission without running anything: schema, shapes and ranges, seeds, config hashes,
benchmark version and protocol, and every claimed number recomputed from R.

Each problem is a `ValidationIssue(code, message)`; the codes name the kind of problem so a tampered
file is rejected with its own reason:

    schema            a key is missing or has the wrong type
    benchmark         unknown benchmark, or a version other than the shipped one (tracks are fixed versions)
    protocol          dataset/scenario differ from the shipped benchmark (a different stream)
    method            the method record disagrees with the config (strategy name, hyper-parameters, source hash)
    selection         the record of how the config was chosen is malformed, or a tuning record's chosen values
                      are not the config's
    config_hash       the seed-free config does not hash to the claimed config_hash
    run_config_hash   a seed's run config (config + its seeds) does not hash to its recorded hash
    too_few_seeds     fewer than 3 seed records
    duplicate_seeds   the same seed twice
    missing_seed      a declared seed has no record (or a record's seed was not declared)
    shape             R is not rows x tasks consistent with initial_accuracy and learned_at
    range             an accuracy outside [0, 1] or not a finite number
    result_digest     R / initial row / learned_at changed after the run (digest mismatch)
    metric            a claimed per-seed metric differs from the one recomputed from R (tol 1e-9)
    summary           a claimed mean/std/n differs from the one recomputed over the seeds
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from clbench import metrics as M
from clbench.config import compose, config_hash, load_benchmark, section_specs
from clbench.hparams import check_section
from clbench.leaderboard import selection
from clbench.leaderboard.submission import (MIN_SEEDS, SUBMISSION_SCHEMA, mean_std, result_digest, run_config,
                                            sha256)
from clbench.registry import UnknownNameError

METRIC_TOL = 1e-9
PROTOCOL_SECTIONS = ("dataset", "scenario")   # the stream; model/train differences are shown on the board


@dataclass(frozen=True)
class ValidationIssue:
    code: str
    message: str

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _matrix(v) -> bool:
    return isinstance(v, list) and all(isinstance(row, list) for row in v)


def recompute_metrics(run: dict) -> dict:
    """Every metric clbench derives from a seed's stored inputs (R, initial row, learned_at, test sizes,
    and where present the task-masked R, the joint reference a* and the anytime curve)."""
    out = M.compute_all(run["accuracy_matrix"], run["initial_accuracy"], run["learned_at"],
                        reference=run.get("reference_accuracy"), task_sizes=run.get("task_sizes"))
    if run.get("task_masked_accuracy_matrix") is not None:
        out["acc_task_masked"] = M.acc(run["task_masked_accuracy_matrix"], run["learned_at"])
    if run.get("anytime_acc_seen") is not None:
        out["anytime_acc_auc"] = M.anytime_auc(run["anytime_acc_seen"])
    return out


def _close(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return _num(a) and _num(b) and math.isfinite(a) and abs(a - b) <= METRIC_TOL


TOP_KEYS = {"submission_schema": int, "id": str, "method": dict, "benchmark": dict, "config": dict,
            "config_hash": str, "seeds": list, "runs": list, "summary": dict, "environment": dict, "timing": dict}
RUN_KEYS = {"seed": int, "stream_seed": int, "run_config_hash": str, "accuracy_matrix": list,
            "initial_accuracy": list, "learned_at": list, "result_digest": str, "metrics": dict}


def _schema(sub: dict) -> list[ValidationIssue]:
    issues = []
    if not isinstance(sub, dict):
        return [ValidationIssue("schema", "a submission is a JSON object")]
    for key, typ in TOP_KEYS.items():
        if key not in sub:
            issues.append(ValidationIssue("schema", f"missing key '{key}'"))
        elif not isinstance(sub[key], typ) or isinstance(sub[key], bool):
            issues.append(ValidationIssue("schema", f"'{key}' must be a {typ.__name__}"))
    if issues:
        return issues
    if sub["submission_schema"] != SUBMISSION_SCHEMA:
        issues.append(ValidationIssue("schema", f"submission_schema {sub['submission_schema']} is not supported "
                                                f"(this clbench reads version {SUBMISSION_SCHEMA})"))
    for key in ("name", "strategy", "sources", "source_hash"):
        if key not in sub["method"]:
            issues.append(ValidationIssue("schema", f"missing key 'method.{key}'"))
    for key in ("name", "version"):
        if key not in sub["benchmark"]:
            issues.append(ValidationIssue("schema", f"missing key 'benchmark.{key}'"))
    for i, run in enumerate(sub["runs"]):
        if not isinstance(run, dict):
            issues.append(ValidationIssue("schema", f"runs[{i}] must be an object"))
            continue
        for key, typ in RUN_KEYS.items():
            if key not in run:
                issues.append(ValidationIssue("schema", f"runs[{i}]: missing key '{key}'"))
            elif not isinstance(run[key], typ) or isinstance(run[key], bool):
                issues.append(ValidationIssue("schema", f"runs[{i}].{key} must be a {typ.__name__}"))
    for key in ("benchmark", "strategy"):
        if not isinstance(sub["config"].get(key), dict):
            issues.append(ValidationIssue("schema", f"config.{key} must be a section"))
    return issues


def _shape(run: dict, label: str) -> list[ValidationIssue]:
    """R is rows x T, the initial row and learned_at have T entries, learned_at points at rows of R."""
    R, b, L = run["accuracy_matrix"], run["initial_accuracy"], run["learned_at"]
    if not _matrix(R) or not R or not R[0]:
        return [ValidationIssue("shape", f"{label}: accuracy_matrix must be a non-empty list of rows")]
    T = len(R[0])
    issues = []
    if any(len(row) != T for row in R):
        issues.append(ValidationIssue("shape", f"{label}: accuracy_matrix rows have different lengths "
                                               f"{[len(row) for row in R]}"))
    if len(b) != T:
        issues.append(ValidationIssue("shape", f"{label}: initial_accuracy has {len(b)} entries, R has {T} columns"))
    if len(L) != T or not all(isinstance(x, int) and 0 <= x < len(R) for x in L):
        issues.append(ValidationIssue("shape", f"{label}: learned_at must give a row in 0..{len(R) - 1} for each "
                                               f"of the {T} tasks, got {L}"))
    sizes = run.get("task_sizes")
    if sizes is not None and (len(sizes) != T or not all(isinstance(n, int) and n > 0 for n in sizes)):
        issues.append(ValidationIssue("shape", f"{label}: task_sizes must give a positive test-set size for each "
                                               f"of the {T} tasks, got {sizes}"))
    ref = run.get("reference_accuracy")
    if ref is not None and (len(ref) != T or not all(_num(v) and 0 <= v <= 1 for v in ref)):
        issues.append(ValidationIssue("shape", f"{label}: reference_accuracy must hold {T} accuracies in [0, 1]"))
    Rm = run.get("task_masked_accuracy_matrix")
    if Rm is not None and (not _matrix(Rm) or [len(r) for r in Rm] != [len(r) for r in R]):
        issues.append(ValidationIssue("shape", f"{label}: task_masked_accuracy_matrix is not shaped like R"))
    stream = run.get("stream") or {}
    if "n_experiences" in stream and stream["n_experiences"] != len(R):
        issues.append(ValidationIssue("shape", f"{label}: R has {len(R)} rows but the stream has "
                                               f"{stream['n_experiences']} experiences"))
    if "n_eval_tasks" in stream and stream["n_eval_tasks"] != T:
        issues.append(ValidationIssue("shape", f"{label}: R has {T} columns but the stream has "
                                               f"{stream['n_eval_tasks']} evaluation tasks"))
    return issues


def _range(run: dict, label: str) -> list[ValidationIssue]:
    cells = [("accuracy_matrix", i, j, v) for i, row in enumerate(run["accuracy_matrix"]) for j, v in enumerate(row)]
    cells += [("initial_accuracy", None, j, v) for j, v in enumerate(run["initial_accuracy"])]
    cells += [("task_masked_accuracy_matrix", i, j, v)
              for i, row in enumerate(run.get("task_masked_accuracy_matrix") or []) for j, v in enumerate(row)]
    for name, i, j, v in cells:
        if not _num(v) or not math.isfinite(v) or not 0.0 <= v <= 1.0:
            where = f"{name}[{i}][{j}]" if i is not None else f"{name}[{j}]"
            return [ValidationIssue("range", f"{label}: {where} = {v!r} is not an accuracy in [0, 1]")]
    return []


def _filled(cfg: dict, section: str):
    """A config section with its declared defaults filled in (unchanged when it cannot be checked)."""
    values = cfg.get(section) or {}
    try:
        return check_section(section, values, section_specs(cfg, section))
    except Exception:
        return values


def validate_submission(sub: dict) -> list[ValidationIssue]:
    """All problems found in a submission (an empty list means it is valid)."""
    issues = _schema(sub)
    if issues:
        return issues
    cfg, bench = sub["config"], sub["benchmark"]

    # the track: a shipped benchmark at its shipped version, run with its protocol
    try:
        shipped = load_benchmark(str(bench["name"]))
    except UnknownNameError as e:
        issues.append(ValidationIssue("benchmark", str(e)))
        shipped = None
    if shipped is not None:
        if bench["version"] != shipped.get("version", 1):
            issues.append(ValidationIssue("benchmark", f"benchmark '{bench['name']}' version {bench['version']} is "
                                                       f"not the shipped version {shipped.get('version', 1)}"))
        # the protocol as the config composes it, both sides with their declared defaults filled in (a key left
        # out means its default), never the raw YAML
        resolved = compose([f"benchmark={bench['name']}"])
        for section in PROTOCOL_SECTIONS:
            if _filled(resolved, section) != _filled(cfg, section):
                issues.append(ValidationIssue("protocol", f"config.{section} differs from the shipped benchmark "
                                                          f"'{bench['name']}': {cfg.get(section)} != {resolved.get(section)}"))
    if (cfg["benchmark"].get("name"), cfg["benchmark"].get("version")) != (bench["name"], bench["version"]):
        issues.append(ValidationIssue("benchmark", f"config.benchmark {cfg['benchmark'].get('name')} "
                                                   f"v{cfg['benchmark'].get('version')} disagrees with the "
                                                   f"submission's benchmark {bench['name']} v{bench['version']}"))

    # the method record agrees with the config it ran
    method = sub["method"]
    if cfg["strategy"].get("name") != method["strategy"]:
        issues.append(ValidationIssue("method", f"method.strategy '{method['strategy']}' but the config ran "
                                                f"'{cfg['strategy'].get('name')}'"))
    hp = {k: v for k, v in cfg["strategy"].items() if k != "name"}
    if "hyperparameters" in method and method["hyperparameters"] != hp:
        issues.append(ValidationIssue("method", "method.hyperparameters disagree with config.strategy"))
    if sha256(method["sources"]) != method["source_hash"]:
        issues.append(ValidationIssue("method", "method.source_hash is not the hash of method.sources"))
    # how the config was chosen: a well-formed record; a tuned one names the config's own values
    issues += [ValidationIssue("selection", m) for m in selection.check(sub)]

    # the config and its hash (seed-free), then each seed's run config hash
    if any(k in cfg for k in ("seed", "stream_seed")):
        issues.append(ValidationIssue("config_hash", "config must be seed-free (seeds live in each run record)"))
    recomputed = config_hash(cfg)
    if recomputed != sub["config_hash"]:
        issues.append(ValidationIssue("config_hash", f"config_hash {sub['config_hash'][:12]}... does not match the "
                                                     f"embedded config (recomputed {recomputed[:12]}...)"))

    # seeds: declared list vs records, count, distinct
    runs = sub["runs"]
    run_seeds = [r["seed"] for r in runs]
    declared = sub["seeds"]
    for s in declared:
        if s not in run_seeds:
            issues.append(ValidationIssue("missing_seed", f"seed {s} is declared in 'seeds' but has no run record"))
    for s in run_seeds:
        if s not in declared:
            issues.append(ValidationIssue("missing_seed", f"run record for seed {s} is not declared in 'seeds'"))
    if len(set(run_seeds)) != len(run_seeds) or len(set(declared)) != len(declared):
        dupes = sorted({s for s in run_seeds + declared if run_seeds.count(s) > 1 or declared.count(s) > 1})
        issues.append(ValidationIssue("duplicate_seeds", f"seed(s) {dupes} appear more than once; seeds must be "
                                                         f"distinct"))
    if len(set(run_seeds)) < MIN_SEEDS:
        issues.append(ValidationIssue("too_few_seeds", f"{len(set(run_seeds))} distinct seed record(s); a "
                                                       f"submission needs at least {MIN_SEEDS}"))

    per_seed_metrics, shapes = [], set()
    for run in runs:
        label = f"seed {run['seed']}"
        if config_hash(run_config(cfg, run["seed"], run["stream_seed"])) != run["run_config_hash"]:
            issues.append(ValidationIssue("run_config_hash", f"{label}: run_config_hash does not match the config "
                                                             f"with seed={run['seed']} stream_seed={run['stream_seed']}"))
        bad = _shape(run, label)
        if bad:
            issues += bad
            continue
        bad = _range(run, label)
        if bad:
            issues += bad
            continue
        shapes.add((len(run["accuracy_matrix"]), len(run["initial_accuracy"])))
        if result_digest(run) != run["result_digest"]:
            issues.append(ValidationIssue("result_digest", f"{label}: accuracy_matrix / initial_accuracy / learned_at "
                                                           f"do not match the result_digest recorded with the run "
                                                           f"(R was changed after the run)"))
        got = recompute_metrics(run)
        per_seed_metrics.append(got)
        for name, claimed in run["metrics"].items():
            if name not in got:
                issues.append(ValidationIssue("metric", f"{label}: metric '{name}' cannot be recomputed from R "
                                                        f"(known: {', '.join(got)})"))
            elif not _close(claimed, got[name]):
                issues.append(ValidationIssue("metric", f"{label}: metric '{name}' claims {claimed!r} but R gives "
                                                        f"{got[name]!r}"))
    if len(shapes) > 1:
        issues.append(ValidationIssue("shape", f"seeds have differently shaped matrices {sorted(shapes)}"))

    # the summary (mean, std, n over seeds) recomputed from the per-seed recomputed metrics
    if len(per_seed_metrics) == len(runs):
        for name, claimed in sub["summary"].items():
            if name not in per_seed_metrics[0]:
                issues.append(ValidationIssue("summary", f"summary metric '{name}' cannot be recomputed from R"))
                continue
            want = mean_std([m[name] for m in per_seed_metrics])
            if not isinstance(claimed, dict) or claimed.get("n") != want["n"] or \
                    not _close(claimed.get("mean"), want["mean"]) or not _close(claimed.get("std"), want["std"]):
                issues.append(ValidationIssue("summary", f"summary '{name}' claims {claimed} but the seeds give "
                                                         f"mean {want['mean']!r}, std {want['std']!r}, n {want['n']}"))
    return issues


def validate_file(path) -> list[ValidationIssue]:
    try:
        with open(path) as f:
            sub = json.load(f)
    except (OSError, ValueError) as e:
        return [ValidationIssue("schema", f"cannot read {path}: {e}")]
    issues = validate_submission(sub)
    if not issues and Path(path).stem != sub["id"]:
        issues.append(ValidationIssue("schema", f"file name '{Path(path).name}' should be '{sub['id']}.json'"))
    return issues
