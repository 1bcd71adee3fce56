"""`clbench sync [PATH]`: upload the offline W&B runs kept inside run folders (wraps `wandb sync`).

Each clbench run with `wandb.mode=offline` keeps its W&B run in `<run folder>/wandb/offline-run-*/`.
This command finds them under PATH (recursively), skips the ones already synced (wandb leaves a
`run-<id>.wandb.synced` marker), and hands the rest to `wandb sync`. `--dry-run` prints what it would
upload (name, group and final accuracy read from the run's own `.wandb` record file) and the exact
command. Without a reachable W&B server it stops with a clear message instead of hanging in retries;
the offline runs stay where they are.
"""
from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Iterator, Optional
from urllib.parse import urlparse

DEFAULT_BASE_URL = "https://api.wandb.ai"
_BLOCK = 32768          # the .wandb file is a LevelDB-style log: 32 KiB blocks of framed records
_HEADER = 7             # file header ":W&B" + magic (2 bytes) + version (1 byte)


class SyncError(RuntimeError):
    """A sync that cannot happen (no runs, server unreachable); the message says what to do."""


def find_offline_runs(path, include_synced: bool = False) -> list[Path]:
    """The offline W&B run folders (`offline-run-*` with a `run-<id>.wandb` file) under PATH."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such folder: {path}")
    runs = []
    for d in sorted(path.rglob("offline-run-*")):
        if not d.is_dir():
            continue
        records = list(d.glob("run-*.wandb"))
        if not records:
            continue
        if not include_synced and all(Path(str(r) + ".synced").exists() for r in records):
            continue
        runs.append(d)
    return runs


def iter_records(wandb_file) -> Iterator[bytes]:
    """The raw protobuf records of a `.wandb` file (LevelDB log framing: crc32 4, length 2, type 1)."""
    data = Path(wandb_file).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{wandb_file} is not a W&B record file")
    pos, pending = _HEADER, b""
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:                       # block trailer: padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        if kind == 0 and length == 0:      # zero padding up to the block end
            pos += left - 7
            continue
        chunk = data[pos:pos + length]
        pos += length
        if kind == 1:                      # FULL
            yield chunk
        elif kind == 2:                    # FIRST
            pending = chunk
        elif kind == 3:                    # MIDDLE
            pending += chunk
        elif kind == 4:                    # LAST
            yield pending + chunk
            pending = b""


def read_offline_run(run_folder) -> dict:
    """What an offline run holds, read from its `.wandb` file: id, name, group, job type, tags,
    project, and the summary (the last value of every key). wandb-core does not write
    files/wandb-summary.json for offline runs, so this is where the summary lives until synced."""
    from wandb.proto import wandb_internal_pb2 as pb
    files = sorted(Path(run_folder).glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"no run-*.wandb file in {run_folder}")
    info: dict = {"folder": str(run_folder), "summary": {}, "config": {}, "exit_code": None}
    for raw in iter_records(files[0]):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            info.update(id=r.run_id, name=r.display_name, group=r.run_group, job_type=r.job_type,
                        tags=list(r.tags), project=r.project, entity=r.entity)
            for item in r.config.update:
                info["config"][item.key] = json.loads(item.value_json)
        elif kind == "summary":
            for item in rec.summary.update:
                key = item.key or "/".join(item.nested_key)
                try:
                    info["summary"][key] = json.loads(item.value_json)
                except ValueError:
                    info["summary"][key] = item.value_json
        elif kind == "exit":
            info["exit_code"] = rec.exit.exit_code
    return info


def base_url() -> str:
    return os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL


def server_reachable(url: Optional[str] = None, timeout: float = 5.0) -> tuple[bool, str]:
    """Can we open a TCP connection to the W&B server? (No credentials are read or sent.)"""
    u = urlparse(url or base_url())
    host, port = u.hostname, u.port or (443 if u.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True, f"{host}:{port}"
    except OSError as e:
        return False, f"{host}:{port} ({type(e).__name__}: {e})"


def sync_command(runs: list[Path], project: Optional[str] = None, entity: Optional[str] = None,
                 include_synced: bool = False) -> list[str]:
    """`wandb sync` (0.31 CLI: run folders as PATHS; it marks them synced itself)."""
    cmd = [sys.executable, "-m", "wandb", "sync"]
    if include_synced:
        cmd.append("--include-synced")
    if project:
        cmd += ["--project", project]
    if entity:
        cmd += ["--entity", entity]
    return cmd + [str(r) for r in runs]


def sync(path="runs", dry_run: bool = False, project: Optional[str] = None, entity: Optional[str] = None,
         include_synced: bool = False, stream=None) -> int:
    """Everything `clbench sync` does; returns the exit status."""
    stream = stream or sys.stdout
    runs = find_offline_runs(path, include_synced=include_synced)
    if not runs:
        print(f"no offline W&B runs to sync under {path}"
              + ("" if include_synced else " (already synced runs are skipped; --include-synced to redo)"),
              file=stream)
        return 0
    print(f"{len(runs)} offline W&B run(s) under {path}:", file=stream)
    for r in runs:
        try:
            info = read_offline_run(r)
            acc = info["summary"].get("final/acc")
            acc_txt = f"final/acc={100 * acc:.2f}%" if isinstance(acc, (int, float)) else "no final metrics (unfinished)"
            print(f"  {r}\n    name={info.get('name')} group={info.get('group')} project={info.get('project')} "
                  f"{acc_txt}", file=stream)
        except Exception as e:  # a damaged record file is still handed to wandb sync
            print(f"  {r}\n    (could not read its record file: {type(e).__name__}: {e})", file=stream)
    cmd = sync_command(runs, project, entity, include_synced)
    if dry_run:
        print("dry run; would execute:\n  " + " ".join(cmd), file=stream)
        return 0
    ok, where = server_reachable()
    if not ok:
        raise SyncError(f"cannot reach the W&B server at {where}: you appear to be offline. Nothing was "
                        f"uploaded; the {len(runs)} offline run(s) stay in place. Run `clbench sync {path}` again "
                        f"when online (set WANDB_BASE_URL for a self-hosted server, and `wandb login` once).")
    print("running: " + " ".join(cmd), file=stream, flush=True)
    return subprocess.call(cmd)
