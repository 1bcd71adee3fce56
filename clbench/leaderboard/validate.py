"""Validate a submission without running anything: the published JSON Schema first (with the size and depth
limits of clbench.schema), then the track's own versioned protocol, seeds, config hashes, and every
claimed number recomputed from R.

What a submission is checked against comes from the shipped benchmark YAML at the submitted version
(`configs/benchmark/<name>.yaml`: its `dataset` and `scenario` sections and its `expected_stream`), never
from the submitter's own description of the stream. Each problem is a `ValidationIssue(code, message)`:

    file              the file cannot be read within the limits (size, depth, 64-bit integers, JSON)
    schema            the JSON Schema (clbench/schemas/submission.json) refuses it; the file name is not <id>.json
    benchmark         not a shipped leaderboard track, or not its shipped version
    protocol          dataset/scenario differ from the shipped benchmark; eval.reference names a local file
    method            the method record disagrees with the config (strategy, hyper-parameters, source hash)
    selection         the record of how the config was chosen is malformed, or a tuning record's chosen values
                      are not the config's
    id                the id is not <benchmark>__<method name slug>__<config_hash[:8]>
    config_hash       the seed-free config does not hash to the claimed config_hash
    run_config_hash   a seed's run config (config + its seeds) does not hash to its recorded hash
    too_few_seeds     fewer than 3 seed records
    duplicate_seeds   the same seed twice
    missing_seed      a declared seed has no record (or a record's seed was not declared)
    shape             R, its stream or learned_at differ from the track's expected stream
    range             a null (unscored) entry of R where the run's eval.schedule scores it (seen_next leaves
                      only entries no metric reads unscored; full scores all)
    result_digest     R / initial row / learned_at changed after the run (digest mismatch)
    metric            a claimed per-seed metric is missing or differs from the one recomputed from R (tol 1e-9)
    summary           a claimed mean/std/n differs from the one recomputed over the seeds
    check_failed      a check could not run on this input (reported, never a crash)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from clbench import metrics as M
from clbench.config import benchmark_names, compose, config_hash, load_benchmark, section_specs
from clbench.errors import SubmissionError
from clbench.escape import one_line
from clbench.hparams import check_section
from clbench.leaderboard import selection
from clbench.leaderboard.submission import (MIN_SEEDS, load_submission, method_slug, result_digest, run_config,
                                            seed_metrics, sha256)
from clbench.schema import SUBMISSION_VERSION, metrics_disagree, same_metric, schema_errors, unscored_problems

PROTOCOL_SECTIONS = ("dataset", "scenario")   # the stream; model/train differences are shown on the board
STREAM_KEYS = ("setting", "n_experiences", "n_eval_tasks", "learned_at")


@dataclass(frozen=True)
class ValidationIssue:
    code: str
    message: str

    def __str__(self) -> str:
        return f"[{self.code}] {one_line(self.message, 400)}"


def leaderboard_track(name: str, version) -> tuple[Optional[dict], Optional[str]]:
    """The shipped benchmark `name` if it is a leaderboard track at `version`: (benchmark, None), else
    (None, why). Only names shipped in configs/benchmark/ count (never a path a submission could name)."""
    if name not in benchmark_names():
        return None, f"'{name}' is not a shipped benchmark (choices: {', '.join(benchmark_names())})"
    b = load_benchmark(name)
    if b.get("version", 1) != version:
        return None, f"benchmark '{name}' version {version} is not the shipped version {b.get('version', 1)}"
    if not isinstance(b.get("expected_stream"), dict):
        return None, f"benchmark '{name}' declares no expected_stream, so it is not a leaderboard track"
    return b, None


def _run_shape(run: dict, expected: dict, label: str) -> list[ValidationIssue]:
    """R, the initial row, learned_at and the other matrices have the track's shape; the run's stream
    description agrees with the track's expected stream."""
    rows, T = expected["n_experiences"], expected["n_eval_tasks"]
    issues = []
    R = run["accuracy_matrix"]
    if len(R) != rows or any(len(row) != T for row in R):
        issues.append(f"accuracy_matrix is {len(R)} x {sorted({len(row) for row in R})}, the track's protocol "
                      f"gives {rows} x {T}")
    if run["learned_at"] != expected["learned_at"]:
        issues.append(f"learned_at {run['learned_at'][:20]} is not the track's {expected['learned_at']}")
    for key in ("initial_accuracy", "task_sizes", "reference_accuracy", "initial_validation_accuracy"):
        if key in run and len(run[key]) != T:
            issues.append(f"{key} has {len(run[key])} entries, the track has {T} evaluation tasks")
    matrices = [(k, run[k]) for k in ("task_masked_accuracy_matrix", "validation_accuracy_matrix") if k in run]
    matrices += [(f"extra_models.{n}", m["accuracy_matrix"]) for n, m in run.get("extra_models", {}).items()]
    for key, m in matrices:
        if len(m) != rows or any(len(row) != T for row in m):
            issues.append(f"{key} is not {rows} x {T}")
    for key in STREAM_KEYS:
        if run["stream"].get(key) != expected[key]:
            issues.append(f"stream.{key} is {one_line(run['stream'].get(key), 80)}, the track's protocol "
                          f"gives {expected[key]}")
    return [ValidationIssue("shape", f"{label}: {i}") for i in issues]


def _filled(cfg: dict, section: str):
    """A config section with its declared defaults filled in (unchanged when it cannot be checked)."""
    values = cfg.get(section) or {}
    try:
        return check_section(section, values, section_specs(cfg, section))
    except Exception:   # an untrusted section that does not check: compared as written (and then differs)
        return values


def validate_submission(sub) -> list[ValidationIssue]:
    """All problems found in a parsed submission (an empty list means it is valid)."""
    if isinstance(sub, dict) and isinstance(sub.get("submission_schema"), int) \
            and sub["submission_schema"] < SUBMISSION_VERSION:
        return [ValidationIssue("schema", f"submission_schema {sub['submission_schema']} is an older format: "
                                          f"convert it with `clbench leaderboard migrate FILE`")]
    errors = schema_errors(sub, "submission")
    if errors:
        return [ValidationIssue("schema", e) for e in errors]
    issues: list[ValidationIssue] = []
    cfg, bench = sub["config"], sub["benchmark"]

    # the track: a shipped benchmark at its shipped version, run with its protocol
    shipped, why = leaderboard_track(bench["name"], bench["version"])
    if shipped is None:
        return [ValidationIssue("benchmark", why)]
    expected = shipped["expected_stream"]
    # the protocol as the config composes it, both sides with their declared defaults filled in (a key left
    # out means its default), never the raw YAML
    resolved = compose([f"benchmark={bench['name']}"])
    for section in PROTOCOL_SECTIONS:
        if _filled(resolved, section) != _filled(cfg, section):
            issues.append(ValidationIssue("protocol", f"config.{section} differs from the shipped benchmark "
                                                      f"'{bench['name']}': {one_line(cfg[section], 300)} != "
                                                      f"{resolved.get(section)}"))
    if cfg["eval"].get("reference") is not None:
        issues.append(ValidationIssue("protocol", "config.eval.reference names a file on the submitter's machine; a "
                                                  "leaderboard entry must re-run without it (set it to null)"))
    if (cfg["benchmark"]["name"], cfg["benchmark"]["version"]) != (bench["name"], bench["version"]):
        issues.append(ValidationIssue("benchmark", f"config.benchmark {cfg['benchmark']['name']} "
                                                   f"v{cfg['benchmark']['version']} disagrees with the "
                                                   f"submission's benchmark {bench['name']} v{bench['version']}"))

    # the method record agrees with the config it ran; the id follows from them
    method = sub["method"]
    if cfg["strategy"]["name"] != method["strategy"]:
        issues.append(ValidationIssue("method", f"method.strategy '{method['strategy']}' but the config ran "
                                                f"'{cfg['strategy']['name']}'"))
    if method["hyperparameters"] != {k: v for k, v in cfg["strategy"].items() if k != "name"}:
        issues.append(ValidationIssue("method", "method.hyperparameters disagree with config.strategy"))
    if sha256(method["sources"]) != method["source_hash"]:
        issues.append(ValidationIssue("method", "method.source_hash is not the hash of method.sources"))
    # code and data identity: what each seed's run recorded (clbench.provenance) is the method's; a file
    # from before provenance has none to compare
    for r in sub["runs"]:
        prov = r.get("provenance") or {}
        data = prov.get("data") if isinstance(prov.get("data"), dict) else {}
        if "code_hash" in prov and prov["code_hash"] != method["source_hash"]:
            issues.append(ValidationIssue("method", f"seed {r['seed']}: the code_hash its run recorded is not "
                                                    f"method.source_hash (runs of other code)"))
        if "data_hash" in data and "data_hash" in method and data["data_hash"] != method["data_hash"]:
            issues.append(ValidationIssue("method", f"seed {r['seed']}: the data_hash its run recorded is not "
                                                    f"method.data_hash (runs on other data)"))
    want_id = f"{bench['name']}__{method_slug(method['name'])}__{sub['config_hash'][:8]}"
    if sub["id"] != want_id:
        issues.append(ValidationIssue("id", f"id '{sub['id']}' should be '{want_id}' (benchmark, method name, "
                                            f"config hash)"))
    # how the config was chosen: a well-formed record; a tuned one names the config's own values
    issues += [ValidationIssue("selection", m) for m in selection.check(sub)]

    # the config and its hash (seed-free), then each seed's run config hash
    recomputed = config_hash(cfg)
    if recomputed != sub["config_hash"]:
        issues.append(ValidationIssue("config_hash", f"config_hash {sub['config_hash'][:12]}... does not match the "
                                                     f"embedded config (recomputed {recomputed[:12]}...)"))

    # seeds: declared list vs records, count, distinct
    runs = sub["runs"]
    run_seeds, declared = [r["seed"] for r in runs], sub["seeds"]
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

    # each seed: its hash, its shape against the track, its digest, its metrics recomputed under the
    # track's setting (never the one the file claims)
    per_seed = []
    for run in runs:
        label = f"seed {run['seed']}"
        if config_hash(run_config(cfg, run["seed"], run["stream_seed"])) != run["run_config_hash"]:
            issues.append(ValidationIssue("run_config_hash", f"{label}: run_config_hash does not match the config with "
                                                             f"seed={run['seed']}, stream_seed={run['stream_seed']}"))
        bad = _run_shape(run, expected, label)
        bad += [ValidationIssue("range", f"{label}: {p}")
                for p in unscored_problems(run, cfg["eval"].get("schedule", "full"))]
        if bad:
            issues += bad
            continue
        if result_digest(run) != run["result_digest"]:
            issues.append(ValidationIssue("result_digest", f"{label}: accuracy_matrix / initial_accuracy / learned_at "
                                                           f"do not match the result_digest recorded with the run "
                                                           f"(R was changed after the run)"))
        got = seed_metrics(run, expected["setting"])
        per_seed.append(got)
        for name in sorted(set(got) - set(run["metrics"])):
            issues.append(ValidationIssue("metric", f"{label}: metric '{name}' is missing (the track gives it)"))
        for name in sorted(set(run["metrics"]) - set(got)):
            issues.append(ValidationIssue("metric", f"{label}: metric '{name}' cannot be recomputed from R "
                                                    f"(known: {', '.join(got)})"))
        for problem in metrics_disagree(run["metrics"], got):
            issues.append(ValidationIssue("metric", f"{label}: {problem.replace('metrics.', 'metric ', 1)}"))

    # the summary (mean, std, n over seeds) recomputed from the per-seed recomputed metrics
    if len(per_seed) == len(runs):
        if set(sub["summary"]) != set(per_seed[0]):
            issues.append(ValidationIssue("summary", f"summary has metrics {sorted(sub['summary'])}, the seeds give "
                                                     f"{sorted(per_seed[0])}"))
        for name, claimed in sub["summary"].items():
            if name not in per_seed[0]:
                continue
            want = M.mean_std([m[name] for m in per_seed])
            if claimed["n"] != want["n"] or not same_metric(claimed["mean"], want["mean"]) \
                    or not same_metric(claimed["std"], want["std"]):
                issues.append(ValidationIssue("summary", f"summary '{name}' claims {claimed} but the seeds give "
                                                         f"mean {want['mean']!r}, std {want['std']!r}, n {want['n']}"))
    return issues


def check_file(path) -> tuple[Optional[dict], list[ValidationIssue]]:
    """The submission file at `path`, read once, and every problem it has (the submission is None when the file
    cannot be read); never raises for anything the file holds."""
    try:
        sub = load_submission(path)
    except SubmissionError as e:
        return None, [ValidationIssue("file", str(e))]
    try:
        issues = validate_submission(sub)
    except (ArithmeticError, LookupError, TypeError, ValueError, RecursionError) as e:  # a gap in the checks
        return sub, [ValidationIssue("check_failed", f"{type(e).__name__} while checking {path}: {e} "
                                                     f"(please report this input to clbench)")]
    if not issues and Path(path).name != f"{sub['id']}.json":
        issues.append(ValidationIssue("schema", f"file name '{Path(path).name}' should be '{sub['id']}.json'"))
    return sub, issues


def validate_file(path) -> list[ValidationIssue]:
    """Every problem of the submission file at `path`; never raises for anything the file holds."""
    return check_file(path)[1]
