"""Verify a submission by re-running its seeds from the embedded config and comparing what they measure.

The verifier decides everything about the check; nothing in the submission file changes it:

* Seeds: every seed by default. `--seeds` lets the verifier re-run a subset (the record says which; the
  board then shows a partial verification, not a verified entry).
* Tolerance: EXACT_ATOL (1e-9) by default. clbench seeds initialisation with the training seed and draws
  minibatch order and buffer samples from a CPU generator, so a re-run with the same code, device class,
  torch version and thread count reproduces R bit for bit (the tests check max |dR| == 0). `--atol`
  loosens it, e.g. to compare a GPU submission on a CPU; the record states the tolerance and who chose it.
  The environment recorded in the file (device, torch version) is only compared with the verifier's to
  explain a failure, never used to loosen the check (a file claiming torch 2.0.0 gains nothing).
* Data: only the verifier's data root (`--data-root`, else $CLBENCH_DATA, else ./data) with downloads
  off; the submission's `data` section is dropped (it is not part of the config hash).
* Time: the seeds re-run in one child process (clbench.leaderboard.rerun) under a wall-clock limit
  (`--timeout`); it is killed at the limit and the seeds not finished by then fail.
* Threads: each seed re-runs with the torch CPU thread count its run recorded (`env.cpu_threads`, 1-256):
  CPU results depend on it (issue: one config, different R with 1 and 2 threads).
* CPU instruction set: CPU results also depend on the vector kernels torch, MKL and oneDNN pick (AVX2 or
  AVX-512): the same code and seed gave a different R on an AVX-512 host than on the AVX2 host that made
  the submission, and the same R once the kernels were pinned to AVX2. Each seed re-runs with the kernels
  its run recorded (`env.cpu_capability`), or those the verifier names with `--cpu-isa` (for runs that did
  not record it); pinning only selects code paths the verifier's CPU has, so a false claim cannot help.

Compared: R, the initial row, and every other measured matrix the seed record holds (task-masked R,
validation R, extra models, anytime curve): max absolute difference over all entries.

The outcome is a verification record, a file written by `--record` into leaderboard/verifications/
(schema clbench/schemas/verification.json): who, when, the verifier's environment, per seed max |dR|,
and the sha256 of the submission content it re-ran. The board shows "✓ verified" only from such
records, so editing a submission after its verification makes the mark disappear. How maintainers
produce them (a pull request's CI re-runs the submission): docs/leaderboard.md.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

from clbench.config import config_hash
from clbench.config import validate as validate_config
from clbench.errors import SubmissionError, bad_value
from clbench.escape import one_line, slug
from clbench.leaderboard.submission import MEASURED, run_config, submission_digest
from clbench.leaderboard.validate import check_file
from clbench.results import check_out_dir, environment, git_commit, write_json_atomic
from clbench.schema import MAX_RECORD_BYTES, VERIFICATION_VERSION, read_json, schema, schema_errors

EXACT_ATOL = 1e-9
DEFAULT_TIMEOUT_S = 3600.0
MAX_THREADS = 256
VERIFIER_PATTERN = re.compile(schema("verification")["properties"]["verifier"]["pattern"])


def tolerance(atol: Optional[float]) -> tuple[float, str]:
    """The verifier's tolerance on |dR| and the rule that gave it (only the verifier's own arguments count)."""
    if atol is None:
        return EXACT_ATOL, f"exact ({EXACT_ATOL:g}), the default"
    if not 0 <= atol <= 1:
        raise bad_value("--atol", f"expected a number in [0, 1], got {atol!r}")
    return float(atol), f"--atol {atol:g} chosen by the verifier"


def verifier_name(given: Optional[str]) -> str:
    """Who verifies: --verifier, else git's user.name, else $USER (refused unless it fits the record schema)."""
    name = given
    if name is None:
        try:
            out = subprocess.run(["git", "config", "user.name"], capture_output=True, text=True, timeout=5)
            name = out.stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            name = None
        name = name or os.environ.get("USER") or "unknown"
        name = re.sub(r"[^A-Za-z0-9 _.@+-]", "-", name).strip(" -")[:64] or "unknown"
    if not VERIFIER_PATTERN.fullmatch(name):
        raise bad_value("--verifier", f"{one_line(name, 80)!r}: use 1-64 characters from letters, digits, space "
                                      f"and _ . @ + -, starting with a letter or digit")
    return name


def data_root(given: Optional[str]) -> str:
    """The verifier's data root: --data-root, else $CLBENCH_DATA, else ./data (never the submission's)."""
    return given or os.environ.get("CLBENCH_DATA") or "data"


def rerun_config(sub: dict, seed: int, device: str, out: str, root: str) -> dict:
    """One seed's run config rebuilt from the seed-free config, with the verifier's device, output folder
    and data root (downloads off); W&B and progress bars off. None of these keys enter the config hash."""
    run = next(r for r in sub["runs"] if r["seed"] == seed)
    cfg = run_config(sub["config"], seed, run["stream_seed"])
    cfg.update(out=out, device=device, progress=False, data={"root": str(root), "download": False})
    cfg["wandb"] = {**cfg.get("wandb", {}), "mode": "disabled"}
    if config_hash(cfg) != run["run_config_hash"]:
        raise SubmissionError(f"seed {seed}: the re-run config does not hash to the submitted run_config_hash")
    # checked and completed: a key the submitted config leaves out (one added to clbench later) is its default,
    # except `threads` (results depend on it): a run from before that key re-runs with the count it recorded
    if "threads" not in cfg and _threads(run) is not None:
        cfg["threads"] = _threads(run)
    return validate_config(cfg)


def _threads(run: dict) -> Optional[int]:
    n = run["env"].get("cpu_threads")
    return n if isinstance(n, int) and 1 <= n <= MAX_THREADS else None


# The environment that pins torch's (ATen), MKL's and oneDNN's CPU kernels to one instruction set; it must
# be set before torch is imported, hence one child process per instruction set.
ISA_ENV = {
    "AVX2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "DNNL_MAX_CPU_ISA": "AVX2"},
    "AVX512": {"ATEN_CPU_CAPABILITY": "avx512", "MKL_ENABLE_INSTRUCTIONS": "AVX512",
               "DNNL_MAX_CPU_ISA": "AVX512_CORE"},
}


def _isa(run: dict, chosen: Optional[str], host: str) -> Optional[str]:
    """The instruction set to pin for a seed: the verifier's --cpu-isa, else the one its run recorded when
    it differs from this host's default (a run made with the default kernels re-runs with them unpinned)."""
    isa = str(chosen or run["env"].get("cpu_capability")).upper()
    return isa if isa in ISA_ENV and (chosen or isa != str(host).upper()) else None


def _rerun(jobs: list[dict], timeout: float, workdir: Path) -> tuple[dict, Optional[str]]:
    """Run the jobs in child processes (one per instruction set) under one wall-clock limit for all:
    ({seed: line}, why it stopped early)."""
    deadline = time.monotonic() + timeout
    lines, stopped = {}, None
    for isa in dict.fromkeys(j["isa"] for j in jobs):
        group = [j for j in jobs if j["isa"] == isa]
        tag = (isa or "default").lower()
        jobs_file, out, log = (workdir / f"jobs-{tag}.json", workdir / f"results-{tag}.jsonl",
                               workdir / f"child-{tag}.log")
        jobs_file.write_text(json.dumps(group))
        with open(log, "w") as err:
            proc = subprocess.Popen([sys.executable, "-m", "clbench.leaderboard.rerun", str(jobs_file), str(out)],
                                    stdout=err, stderr=err, start_new_session=True,
                                    env={**os.environ, **ISA_ENV.get(isa, {})})
            try:
                code = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)   # the child and anything it started
                proc.wait()
                code, stopped = None, f"the time limit of {timeout:g}s was reached"
        if out.exists():
            for text in out.read_text().splitlines():
                try:
                    line = json.loads(text)
                except ValueError:
                    continue   # the last line of a killed child may be cut
                lines[line["seed"]] = line
        if stopped is None and code != 0:
            tail = [t for t in log.read_text(errors="replace").splitlines() if t.strip()][-1:] or ["no output"]
            stopped = f"the re-run process exited with status {code}: {one_line(tail[0], 200)}"
        if stopped:
            break
    return lines, stopped


def _leaves(key: str, value) -> dict[str, np.ndarray]:
    if key == "extra_models":
        return {f"extra_models.{n}": np.asarray(m["accuracy_matrix"], dtype=float) for n, m in value.items()}
    return {key: np.asarray([np.nan if v is None else v for v in value] if key == "anytime_acc_seen" else value,
                            dtype=float)}


def compare(claimed: dict, rerun: dict) -> tuple[Optional[float], str]:
    """Max |difference| over every measured matrix the seed record holds and its re-run, and where it is
    when that is not R itself; (None, why) when the re-run lacks one of them or a shape differs. A matrix
    only the re-run measured (e.g. an extra model a later clbench scores) is claimed by nobody, shown
    nowhere, and not compared."""
    a, b = {}, {}
    for key in MEASURED:
        if key in claimed:
            a.update(_leaves(key, claimed[key]))
        if key in rerun:
            b.update(_leaves(key, rerun[key]))
    missing = sorted(set(a) - set(b))
    if missing:
        return None, f"the re-run did not measure {missing}, which the submission holds"
    per_key = {}
    for key in a:
        if a[key].shape != b[key].shape:
            return None, f"the re-run's {key} has shape {b[key].shape}, the submission's {a[key].shape}"
        both_nan = np.isnan(a[key]) & np.isnan(b[key])
        d = np.where(both_nan, 0.0, np.abs(a[key] - b[key]))
        per_key[key] = float(np.nan_to_num(d, nan=np.inf).max()) if d.size else 0.0
    worst = max(per_key, key=per_key.get)
    where = "" if worst == "accuracy_matrix" or per_key[worst] == 0 else \
        f" in {worst} (accuracy_matrix: {per_key['accuracy_matrix']:.6g})"
    return per_key[worst], where


def _env_note(recorded: dict, mine: dict) -> str:
    keys = ("device", "torch", "cpu_threads", "cpu_capability", "platform")
    differ = [f"{k} {recorded.get(k)} -> {mine.get(k)}" for k in keys
              if str(recorded.get(k, "")).split(":")[0] != str(mine.get(k, "")).split(":")[0]]
    return f" (recorded vs this re-run: {', '.join(differ)})" if differ else ""


def verify_submission(path, seeds: Optional[list[int]] = None, device: str = "cpu", atol: Optional[float] = None,
                      data_root_dir: Optional[str] = None, timeout: float = DEFAULT_TIMEOUT_S,
                      record_dir=None, verifier: Optional[str] = None, cpu_isa: Optional[str] = None) -> dict:
    """Re-run the seeds of the submission at `path` (all, or the verifier's `seeds`) and return the
    verification record; with `record_dir`, also write it there (checked writable before any re-run).
    Raises SubmissionError / ConfigError (one line) when the submission or an argument is not usable."""
    import torch

    from clbench.engine import resolve_device

    path = Path(path)
    if record_dir is not None:
        check_out_dir(record_dir, "--record")
    if not timeout > 0:
        raise bad_value("--timeout", f"expected a number of seconds > 0, got {timeout!r}")
    if cpu_isa is not None and cpu_isa.upper() not in ISA_ENV:
        raise bad_value("--cpu-isa", f"expected one of {', '.join(k.lower() for k in ISA_ENV)}, got {cpu_isa!r}")
    atol, rule = tolerance(atol)
    who = verifier_name(verifier)
    sub, issues = check_file(path)
    if issues:
        raise SubmissionError(f"{path} does not validate ({len(issues)} problem(s), first: {issues[0]}); "
                              f"run `clbench leaderboard validate {path}`")
    chosen = list(sub["seeds"]) if seeds is None else [int(s) for s in seeds]
    unknown = [s for s in chosen if s not in sub["seeds"]]
    if unknown or not chosen or len(set(chosen)) != len(chosen):
        raise bad_value("--seeds", f"{chosen} must be distinct seeds of the submission {sub['seeds']}")
    dev = str(resolve_device(device))
    root = data_root(data_root_dir)
    runs = {r["seed"]: r for r in sub["runs"]}
    mine = environment(dev)

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="clbench-verify-") as tmp:
        host = torch.backends.cpu.get_cpu_capability()
        jobs = [{"seed": s, "threads": _threads(runs[s]), "isa": _isa(runs[s], cpu_isa, host),
                 "cfg": rerun_config(sub, s, dev, str(Path(tmp) / f"seed{s}"), root)} for s in chosen]
        lines, stopped = _rerun(jobs, timeout, Path(tmp))
    wall = time.perf_counter() - t0

    per_seed = []
    for s in chosen:
        run, line = runs[s], lines.get(s)
        entry = {"seed": s, "passed": False, "max_abs_diff": None,
                 "recorded_env": {k: run["env"][k] for k in ("device", "torch", "cpu_threads", "cpu_capability",
                                                             "platform", "python") if k in run["env"]},
                 "threads": _threads(run), "cpu_isa": None, "claimed_acc": run["metrics"].get("acc"),
                 "rerun_acc": None}
        if line is None:
            entry["reason"] = f"not re-run: {stopped or 'no result'}"
        elif "error" in line:
            entry["reason"] = f"the re-run failed: {one_line(line['error'], 300)}"
        else:
            diff, why = compare(run, line["inputs"])
            entry.update(max_abs_diff=diff, rerun_acc=line.get("acc"), threads=line.get("threads"),
                         cpu_isa=line.get("cpu_capability"))
            entry["passed"] = diff is not None and diff <= atol
            entry["reason"] = (why if diff is None else
                               f"max |dR| = {diff:.6g} {'<=' if entry['passed'] else '>'} atol {atol:g}{why}")
            if not entry["passed"]:
                entry["reason"] += _env_note(run["env"], {**mine, "cpu_threads": line.get("threads"),
                                                          "cpu_capability": line.get("cpu_capability")})
        per_seed.append(entry)

    # code identity: the modules the re-run recorded itself (clbench.provenance), against the submitted ones
    sources_now = next((lines[s]["modules"] for s in chosen if "modules" in (lines.get(s) or {})), None)
    mismatch = [] if sources_now is None else sorted(
        k for k in set(sources_now) | set(sub["method"]["sources"]) if sources_now.get(k) != sub["method"]["sources"].get(k))
    record = {
        "record_schema": VERIFICATION_VERSION,
        "submission_id": sub["id"],
        "submission_digest": submission_digest(sub),
        "verifier": who,
        "date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "passed": all(e["passed"] for e in per_seed),
        "all_seeds": set(chosen) == set(sub["seeds"]),
        "atol": atol,
        "tolerance_rule": rule,
        "environment": {**mine, "torch": torch.__version__},
        "clbench_commit": git_commit(),
        "source_match": sources_now is not None and not mismatch,
        "source_mismatch": mismatch,
        "wall_s": round(wall, 3),
        "seeds": per_seed,
    }
    problems = schema_errors(record, "verification")
    if problems:   # our own record: anything here is a bug, never write it
        raise RuntimeError(f"internal error: the verification record does not fit its schema: {problems[0]}")
    if record_dir is not None:
        record["file"] = str(write_record(record, record_dir))
    return record


def write_record(record: dict, record_dir) -> Path:
    """`<record_dir>/<submission id>__<digest[:12]>__<UTC time>__<verifier>.json`, never replacing a file."""
    stamp = record["date"][:19].replace("-", "").replace(":", "")
    who = slug(record["verifier"], keep=".+-", limit=None) or "unknown"
    base = f"{record['submission_id']}__{record['submission_digest'][:12]}__{stamp}Z__{who}"
    path, k = Path(record_dir) / f"{base}.json", 1
    while path.exists():
        k += 1
        path = Path(record_dir) / f"{base}-{k}.json"
    write_json_atomic(path, {k: v for k, v in record.items() if k != "file"}, mode=0o644)   # a public record
    return path


# ----- reading records: what the board shows -------------------------------------------------------------
def load_records(record_dir) -> tuple[list[dict], dict[Path, str]]:
    """Every verification record in `record_dir` that fits its schema, and {path: why} for the others."""
    records, bad = [], {}
    for path in sorted(Path(record_dir).glob("*.json")) if Path(record_dir).is_dir() else []:
        try:
            rec = read_json(path, MAX_RECORD_BYTES, SubmissionError)
        except SubmissionError as e:
            bad[path] = str(e)
            continue
        errors = schema_errors(rec, "verification")
        if errors:
            bad[path] = f"{path}: {errors[0]}"
            continue
        records.append(rec)
    return records, bad


def verification_status(sub: dict, records: list[dict]) -> dict:
    """{"status", "record"} of a submission from the records: the latest record for this exact content
    decides. verified: it re-ran every seed and all agreed; partial: the seeds it re-ran agreed but not
    every seed was re-run; failed: a seed disagreed; stale: records exist only for other content of this
    id (edited since); unverified: no record."""
    mine = [r for r in records if r["submission_id"] == sub["id"]]
    if not mine:
        return {"status": "unverified", "record": None}
    digest = submission_digest(sub)
    current = sorted((r for r in mine if r["submission_digest"] == digest), key=lambda r: r["date"])
    if not current:
        return {"status": "stale", "record": max(mine, key=lambda r: r["date"])}
    last = current[-1]
    if not all(e["passed"] for e in last["seeds"]):
        return {"status": "failed", "record": last}
    covered = {e["seed"] for e in last["seeds"]} >= set(sub["seeds"])
    return {"status": "verified" if covered else "partial", "record": last}
