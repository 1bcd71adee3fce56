"""result.json: the single source of truth of a run, written atomically.

A run works in `<out>/.<run_id>.partial/` and is renamed to `<out>/<run_id>/` only once result.json
is complete, so a folder named after a run id always holds a whole result; a crashed run leaves no
half-written folder behind (sweeps use this to resume).
"""
from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

from clbench.errors import ResultFileError, bad_value
from clbench.schema import RESULT_VERSION as SCHEMA_VERSION  # noqa: F401  (the engine writes it)
from clbench.schema import load_result as _load_checked
from clbench.schema import schema as _schema

REQUIRED_KEYS = tuple(_schema("result")["required"])   # the schema (clbench/schemas/result.json) decides


def write_text_atomic(path, text: str) -> Path:
    """Write then rename: readers see the old file or the whole new one, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def ensure_writable_dir(path, key: str) -> Path:
    """Create the folder `path` if needed and check that a file can be written in it, so a command fails
    with one line naming the option `key` before doing any work (a read-only or misplaced output folder)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise bad_value(key, f"{path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise bad_value(key, f"cannot write into {path} ({e.strerror or e})") from None
    return path


def write_json_atomic(path, data: dict) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def load_result(path) -> dict:
    """A run's result.json (give the file or its run folder), read with size and depth limits, migrated to
    the current schema version and checked against the schema, its config hash and R (clbench.schema).
    Raises ResultFileError (one line naming the file and the problem) for anything else."""
    return _load_checked(path)


def find_results(path) -> list[Path]:
    """Every result.json under PATH (a run folder, a folder of runs, or a result.json), skipping
    unfinished `.<run>.partial` folders and W&B folders."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.exists():
        raise FileNotFoundError(f"no such run folder: {path}")
    found = []
    for p in sorted(path.rglob("result.json")):
        rel = p.relative_to(path).parts[:-1]
        if any(part.startswith(".") or part == "wandb" for part in rel):
            continue
        found.append(p)
    return found


def is_complete(run_dir) -> bool:
    """True when the folder holds a sound result.json (see load_result); a damaged one is not complete."""
    path = Path(run_dir) / "result.json"
    if not path.exists():
        return False
    try:
        load_result(path)
    except ResultFileError as e:
        print(f"clbench: warning: {e}; the run counts as not finished", file=sys.stderr)
        return False
    return True


def make_run_id(cfg: dict, cfg_hash: str) -> str:
    """Deterministic: the same config and seed give the same run id (sweeps resume on it)."""
    name = f"{cfg['benchmark']['name']}_{cfg['strategy']['name']}_s{cfg['seed']}_{cfg_hash[:8]}"
    return re.sub(r"[^A-Za-z0-9_.+-]", "-", name)


class RunDir:
    """The working folder of one run; `commit()` publishes it under its final name."""

    def __init__(self, out: str, run_id: str, overwrite: bool = False):
        self.out = Path(out)
        self.run_id = run_id
        self.final = self.out / run_id
        if self.final.exists() and not overwrite:
            raise FileExistsError(str(self.final))
        self.work = self.out / f".{run_id}.partial"
        if self.work.exists():
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True)

    def commit(self) -> Path:
        if self.final.exists():
            shutil.rmtree(self.final)
        os.replace(self.work, self.final)
        return self.final

    def discard(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


def git_commit() -> Optional[str]:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device) -> dict:
    import numpy
    import torch

    import clbench
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "clbench": clbench.__version__,
        "device": str(device),
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),   # SIMD kernels used: AVX2, AVX512, ...
        "git_commit": git_commit(),
        "argv": sys.argv[1:],
    }
    if torch.cuda.is_available() and str(device).startswith("cuda"):
        env["cuda"] = torch.version.cuda
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env
