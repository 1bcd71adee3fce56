"""result.json: the single source of truth of a run, written atomically.

A run works in `<out>/.<run_id>.partial/` and is renamed to `<out>/<run_id>/` only once result.json
is complete, so a folder named after a run id always holds a whole result; a crashed run leaves no
half-written folder behind (sweeps use this to resume).
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import platform
import re
import secrets
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Optional

from clbench.errors import ResultFileError, StorageError
from clbench.schema import RESULT_VERSION as SCHEMA_VERSION  # noqa: F401  (the engine writes it)
from clbench.schema import load_result as _load_checked
from clbench.schema import schema as _schema

REQUIRED_KEYS = tuple(_schema("result")["required"])   # the schema (clbench/schemas/result.json) decides


def storage_error(e: OSError, path) -> StorageError:
    """A write that failed for a reason outside clbench (disk full, read-only, ...), as one line."""
    what = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
            errno.EROFS: "read-only file system", errno.EACCES: "permission denied", errno.EPERM: "not permitted",
            errno.ENAMETOOLONG: "file name too long", errno.ENOTDIR: "a path component is a file, not a folder",
            errno.EISDIR: "is a folder"}.get(e.errno, e.strerror or type(e).__name__)
    return StorageError(f"cannot write {path}: {what}; nothing was half-written (free space or choose another "
                        f"out=, then re-run the same command)")


def write_text_atomic(path, text, mode: Optional[int] = None) -> Path:
    """Write then rename: readers see the old file or the whole new one, never a partial one.

    `text` is a str or bytes. The file gets the usual mode (0666 less the umask), like any file the user writes,
    or `mode` when given (a public record); an OS failure (disk full, read-only folder) raises StorageError
    naming the file, and leaves no temporary file.
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_file(tmp, text, mode)
        os.replace(tmp, path)
    except OSError as e:
        _unlink_quietly(tmp)
        raise storage_error(e, path) from e
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return path


def _write_file(path: Path, text, mode: Optional[int] = None) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)   # the kernel applies the umask
    if mode is not None:
        os.fchmod(fd, mode)
    with os.fdopen(fd, "wb" if isinstance(text, (bytes, bytearray, memoryview)) else "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def check_out_dir(out, key: str = "out") -> Path:
    """Fail at once, before anything is built or written, when `out` cannot hold what a command writes (run
    folders, a board, verification records): a file in the way, a folder this process may not write, or a
    name longer than the file system allows. The option is named `key` in the one-line error."""
    path = Path(str(out)).expanduser()
    for part in path.parts:
        if len(part.encode()) > NAME_MAX:
            raise StorageError(f"cannot write into '{key}': the folder name '{part[:40]}...' is longer than "
                               f"{NAME_MAX} bytes")
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise StorageError(f"cannot write into '{key}': {path} is not a folder ({probe} is a file)")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise StorageError(f"cannot write into '{key}': {probe} is not writable (choose another {key}=)")
    try:   # and try it: root passes os.access where nothing can be written (/proc, a read-only mount)
        tempfile.TemporaryFile(dir=probe).close()
    except OSError as e:
        raise StorageError(f"cannot write into '{key}': {probe} is not writable ({e.strerror or e}; choose "
                           f"another {key}=)") from None
    return path


def write_json_atomic(path, data: dict, mode: Optional[int] = None) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, default=_json_default) + "\n", mode)


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


def find_results(paths) -> list[Path]:
    """Every result.json under PATHS (one path or a list: run folders, folders of runs, result.json files),
    sorted and each once, skipping unfinished `.<run>.partial` folders and W&B folders."""
    found = set()
    for path in map(Path, [paths] if isinstance(paths, (str, os.PathLike)) else paths):
        if path.is_file():
            found.add(path)
            continue
        if not path.exists():
            raise FileNotFoundError(f"no such run folder: {path}")
        for p in path.rglob("result.json"):
            rel = p.relative_to(path).parts[:-1]
            if not any(part.startswith(".") or part == "wandb" for part in rel):
                found.add(p)
    return sorted(found)


def load_complete(run_dir) -> Optional[dict]:
    """The folder's result.json when it is sound (see load_result), else None: absent, or damaged (one warning
    line; the run counts as not finished)."""
    path = Path(run_dir) / "result.json"
    if not path.exists():
        return None
    try:
        return load_result(path)
    except ResultFileError as e:
        print(f"clbench: warning: {e}; the run counts as not finished", file=sys.stderr)
        return None


def is_complete(run_dir) -> bool:
    """True when the folder holds a sound result.json (see load_result); a damaged one is not complete."""
    return load_complete(run_dir) is not None


def try_lock(path: Path, holder: Optional[str] = None, mode: int = 0o644) -> tuple[Optional[int], str]:
    """Take an exclusive OS lock (flock) on the file `path` without waiting. The kernel drops it when the returned
    fd is closed or its process dies, however it dies, so a lock left by a killed process is free at once and
    two processes never hold it together. Returns (fd, "") and writes `holder` into the file (who holds it, for
    messages), or (None, what the file says) when another process holds it. The file is never deleted (a process
    that opened it just before would lock a file nobody sees)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, mode)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        current = os.pread(fd, 256, 0).decode(errors="replace").strip()
        os.close(fd)
        return None, current
    if holder is not None:
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode(), 0)
    return fd, ""


NAME_MAX = 255    # bytes in one file name on Linux and macOS file systems
RUN_ID_MAX = 200  # leaves room for '.<run id>.partial', '_r<k>' and 'failed/<run id>.txt'


def make_run_id(cfg: dict, cfg_hash: str) -> str:
    """Deterministic: the same config and seed give the same run id (sweeps resume on it).

    One plain file name inside `out`: characters other than letters, digits and `_.+-` become `-`, it never
    starts with '.' (hidden: the working folders of unfinished runs), and a long benchmark or strategy
    name is cut and made unique again with a hash of the whole name.
    """
    safe = lambda text: re.sub(r"[^A-Za-z0-9_.+-]", "-", text)
    head = safe(f"{cfg['benchmark']['name']}_{cfg['strategy']['name']}")
    tail = safe(f"_s{cfg['seed']}_{cfg_hash[:8]}")
    if len(head) + len(tail) > RUN_ID_MAX:
        digest = hashlib.sha256(head.encode()).hexdigest()[:8]
        head = f"{head[:max(1, RUN_ID_MAX - len(tail) - 9)]}-{digest}"
    return re.sub(r"^\.", "-", head + tail)


class RunDir:
    """The working folder of one run, claimed atomically; `commit()` publishes it under its final name.

    A run works in `<out>/.<run_id>.partial/` and holds an OS lock on `run.lock` inside it while it runs:
    - a partial folder that nobody holds is an unfinished run (killed, preempted): with `resume`, the run
      continues from its checkpoint; otherwise it starts over in it;
    - a partial folder held by a live process is a concurrent run of the same command: this run takes the next
      free name (`<run_id>_r2`, `_r3`, ...), as it does when a finished `<run_id>/` exists (unless `overwrite`,
      which sweeps use: they decide themselves what is complete).
    The lock is released by the OS when the process dies, so a crashed run never blocks a later one.
    """

    LOCK, CHECKPOINT = "run.lock", "checkpoint.pt"

    def __init__(self, out, run_id: str, overwrite: bool = False, resume: bool = True, _max_tries: int = 1000):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        base = run_id
        for k in range(1, _max_tries + 1):
            rid = base if k == 1 else f"{base}_r{k}"
            final, work = self.out / rid, self.out / f".{rid}.partial"
            if final.exists() and not overwrite:
                continue
            if self._claim(work, fresh=not resume):
                self.run_id, self.final, self.work = rid, final, work
                return
            if overwrite:
                raise FileExistsError(f"run {rid} is running in another process right now (its working folder "
                                      f"{work} is locked); wait for it or stop it")
        raise FileExistsError(f"no free run folder for {base} under {self.out}")

    def _claim(self, work: Path, fresh: bool) -> bool:
        """Create or take over `work` under an exclusive lock; False when a live process holds it."""
        try:
            work.mkdir()
        except FileExistsError:
            pass
        fd, _ = try_lock(work / self.LOCK, f"{os.getpid()}\n")
        if fd is None:
            return False
        self._lock_fd = fd
        if fresh:
            self.clear(work)
        return True

    @classmethod
    def clear(cls, work: Path) -> None:
        """Empty a working folder (starting over), keeping its lock file."""
        for p in work.iterdir():
            if p.name == cls.LOCK:
                continue
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()

    @property
    def checkpoint(self) -> Path:
        return self.work / self.CHECKPOINT

    def commit(self) -> Path:
        """Publish: drop the checkpoint and lock, rename the working folder to its final name."""
        for name in (self.CHECKPOINT,):
            (self.work / name).unlink(missing_ok=True)
        if self.final.exists():
            shutil.rmtree(self.final)
        (self.work / self.LOCK).unlink(missing_ok=True)
        os.replace(self.work, self.final)
        self.release()
        return self.final

    def discard(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)
        self.release()

    def release(self) -> None:
        fd = getattr(self, "_lock_fd", None)
        if fd is not None:
            self._lock_fd = None
            os.close(fd)


def git_commit() -> Optional[str]:
    """The commit of the git checkout clbench is imported from (None otherwise); see clbench.provenance."""
    from clbench.provenance import git_state
    return git_state()["git_commit"]


def environment(device) -> dict:
    """result.json's `env`: versions, provenance, and what changes the arithmetic (clbench.reproducibility)."""
    import numpy

    import clbench
    from clbench.reproducibility import arithmetic_env
    env = {
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "clbench": clbench.__version__,
        "platform": platform.platform(),
        **arithmetic_env(device),
        "git_commit": git_commit(),
        "argv": sys.argv[1:],
    }
    env["cpu_threads"] = env["threads"]   # the name used before `threads` was recorded with the rest
    return env
