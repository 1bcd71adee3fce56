"""Verify a submission by re-running one of its seeds from the embedded config and comparing R.

Tolerance (max absolute difference over every entry of R and the initial row, accuracies as fractions):
  * EXACT_ATOL = 1e-9 when the re-run uses the same device class (cpu / cuda / mps) and the same torch
    version as the submitted seed: the harness seeds everything and keeps minibatch order and buffer
    sampling on a CPU generator, so such a re-run reproduces R (checked in tests/test_leaderboard.py).
  * CROSS_ATOL = 0.02 otherwise (CPU vs GPU kernels, another torch release): floating-point
    differences flip a few predictions; 0.02 is about one or two test samples per task on split-digits
    (~72 per task) and a fraction of a percent on MNIST-sized tasks, while a different method or
    hyper-parameter moves R by far more. `--atol` overrides the rule; the record says which was used.

The verification record is appended to the submission's `verifications` list and the file is
rewritten atomically. The record carries the digest of the submission content it checked, so an entry
edited after verification no longer shows as verified (render checks the digest).
"""
from __future__ import annotations

import copy
import datetime as _dt
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

from clbench.config import ConfigError, config_hash
from clbench.errors import bad_value
from clbench.config import validate as validate_config
from clbench.leaderboard.submission import load_submission, run_config, submission_digest
from clbench.leaderboard.validate import validate_submission
from clbench.results import git_commit, write_json_atomic

EXACT_ATOL = 1e-9
CROSS_ATOL = 0.02


def _device_class(device: str) -> str:
    return str(device).split(":")[0]


def tolerance(claimed_env: dict, device: str, torch_version: str) -> tuple[float, str]:
    same = (_device_class(claimed_env.get("device", "")) == _device_class(device)
            and claimed_env.get("torch") == torch_version)
    if same:
        return EXACT_ATOL, f"exact ({EXACT_ATOL:g}): same device class and torch version as the submitted run"
    return CROSS_ATOL, (f"cross-environment ({CROSS_ATOL:g}): submitted on {claimed_env.get('device')} / torch "
                        f"{claimed_env.get('torch')}, re-run on {device} / torch {torch_version}")


def rerun_config(sub: dict, seed: int, device: str, out: str, data_root: Optional[str]) -> dict:
    run = next(r for r in sub["runs"] if r["seed"] == seed)
    cfg = run_config(sub["config"], seed, run["stream_seed"])
    cfg.update(out=out, device=device, progress=False)
    cfg["wandb"] = {**cfg.get("wandb", {}), "mode": "disabled"}
    root = data_root or os.environ.get("CLBENCH_DATA")
    if root:
        cfg["data"] = {**cfg.get("data", {}), "root": root}
    # out, device, progress, data and wandb are not part of the hash: the re-run config is the submitted one
    if config_hash(cfg) != run["run_config_hash"]:
        raise ConfigError(f"seed {seed}: the re-run config does not hash to the submitted run_config_hash")
    validate_config(cfg)
    return cfg


def verify_submission(path, seed: Optional[int] = None, device: str = "cpu", atol: Optional[float] = None,
                      data_root: Optional[str] = None, write: bool = True) -> dict:
    """Re-run one seed of the submission at `path`; returns the verification record (and appends it to the
    file when `write`). Raises ConfigError when the submission is not valid to begin with."""
    import torch

    from clbench.engine import resolve_device, run

    path = Path(path)
    sub = load_submission(path)
    issues = validate_submission(sub)
    if issues:
        raise ConfigError(f"{path} does not validate; fix it before verifying:\n" +
                          "\n".join(f"  {i}" for i in issues))
    seed = sub["seeds"][0] if seed is None else int(seed)
    if seed not in sub["seeds"]:
        raise bad_value("--seed", f"{seed} is not one of the submission's seeds {sub['seeds']}")
    claimed = next(r for r in sub["runs"] if r["seed"] == seed)
    dev = str(resolve_device(device))
    if atol is None:
        atol, rule = tolerance(claimed.get("env", {}), dev, torch.__version__)
    else:
        rule = f"given ({atol:g})"

    tmp = tempfile.mkdtemp(prefix="clbench-verify-")
    t0 = time.perf_counter()
    try:
        cfg = rerun_config(sub, seed, dev, tmp, data_root)
        result, _ = run(copy.deepcopy(cfg), loggers=[], overwrite=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    wall = time.perf_counter() - t0

    R_claim = np.asarray(claimed["accuracy_matrix"], dtype=float)
    R_new = np.asarray(result["accuracy_matrix"], dtype=float)
    b_claim = np.asarray(claimed["initial_accuracy"], dtype=float)
    b_new = np.asarray(result["initial_accuracy"], dtype=float)
    if R_claim.shape != R_new.shape or b_claim.shape != b_new.shape:
        diff, passed = None, False
        reason = f"the re-run produced R of shape {R_new.shape}, the submission claims {R_claim.shape}"
    else:
        diff = float(max(np.abs(R_claim - R_new).max(), np.abs(b_claim - b_new).max()))
        passed = diff <= atol
        reason = (f"max |dR| = {diff:.6g} {'<=' if passed else '>'} atol {atol:g}")
    sources_now = result["provenance"]["modules"]   # the code that just re-ran, as it recorded itself
    mismatch = sorted(k for k in set(sources_now) | set(sub["method"]["sources"])
                      if sources_now.get(k) != sub["method"]["sources"].get(k))
    record = {
        "verified": bool(passed),
        "reason": reason,
        "seed": seed,
        "max_abs_diff": diff,
        "atol": atol,
        "tolerance_rule": rule,
        "rerun_acc": result["metrics"]["acc"],
        "claimed_acc": claimed["metrics"].get("acc"),
        "source_match": not mismatch,
        "source_mismatch": mismatch,
        "device": dev,
        "torch": torch.__version__,
        "clbench": result["env"].get("clbench"),
        "git_commit": git_commit(),
        "wall_s": round(wall, 3),
        "date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "submission_digest": submission_digest(sub),
    }
    if write:
        sub.setdefault("verifications", []).append(record)
        write_json_atomic(path, sub)
        os.chmod(path, 0o644)
    return record


def verification_status(sub: dict) -> dict:
    """The latest verification record that still matches the submission's content, as
    {"status": "verified" | "failed" | "unverified" | "stale", "record": ...}."""
    records = sub.get("verifications") or []
    if not records:
        return {"status": "unverified", "record": None}
    digest = submission_digest(sub)
    current = [r for r in records if r.get("submission_digest") == digest]
    if not current:
        return {"status": "stale", "record": records[-1]}
    last = current[-1]
    return {"status": "verified" if last.get("verified") else "failed", "record": last}
