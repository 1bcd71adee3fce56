"""Provenance: what identifies the code and the data of a run; stored in result.json as "provenance".

    "provenance": {
      "schema": 1,
      "clbench":   {"version", "git_commit", "git_dirty"},  # the git checkout clbench is imported from
                                                            # (null when it is not one, or git is missing)
      "plugins":   [{"kind", "name", "object", "distribution", "version"}, ...],
                   # strategy (and every strategy its config names, e.g. a wrapped base), scenario,
                   # dataset loader, model: the object and the distribution that registers it
      "modules":   {module: sha256 of its source file},     # see "the code of a run" below
      "code_hash": sha256 of "modules",
      "libraries": {import name: version},                   # third-party packages those modules import
      "data":      {"splits": {"train": {"n", "x", "y", "sha256"}, "test": {...}}, "n_classes",
                    "data_hash"}                             # fingerprint of the tensors the run used
    }

The code of a run is the import closure, followed through the source (import statements, including
those inside functions), of clbench.engine and of each plugin's module, restricted to clbench and to
the plugins' own top-level packages. So a helper module a strategy imports counts, and so does
clbench.buffer; third-party libraries (torch, avalanche) count by version, not by source. Two runs are
"the same code" when their code_hash agrees and "the same data" when their data_hash agrees; the sweep,
`clbench report` and `clbench leaderboard submit` compare them (docs/provenance.md).

Cheap by construction: a module's hash is computed once per process for the module object that is
loaded (the code that actually runs, even if its file is edited later in the same process), files
not yet imported are hashed once per (path, size, mtime); a dataset is fingerprinted once per process
while the files it was read from are unchanged (`TensorDataset.source_key`).
"""
from __future__ import annotations

import ast
import copy
import functools
import hashlib
import importlib.util
import os
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distributions, version as dist_version
from pathlib import Path
from typing import Optional

import clbench
from clbench.config import canonical_hash
from clbench.registry import CALLBACKS, DATASETS, MODELS, SCENARIOS, STRATEGIES, Registry

SCHEMA = 1
CORE = "clbench.engine"   # where the closure of clbench's own modules starts


# ----- git --------------------------------------------------------------------------------------------
def _git(args: list, cwd: Path) -> Optional[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}  # not a caller's GIT_DIR
    try:
        out = subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, timeout=10, env=env)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@functools.lru_cache(maxsize=None)
def git_state() -> dict:
    """Commit and dirty flag of the git checkout clbench is imported from; nulls when clbench is not
    tracked by one (an installed copy inside some other repository does not count) or git is missing.
    Once per process, like the code it describes."""
    init = Path(clbench.__file__).resolve()
    top = _git(["rev-parse", "--show-toplevel"], init.parent)
    if not top or _git(["ls-files", "--error-unmatch", str(init)], Path(top)) is None:
        return {"git_commit": None, "git_dirty": None}
    commit = _git(["rev-parse", "HEAD"], Path(top))
    status = _git(["status", "--porcelain", "--untracked-files=no"], Path(top))
    return {"git_commit": commit or None, "git_dirty": None if status is None else bool(status)}


# ----- modules: hash and imports ------------------------------------------------------------------------
_FILES: dict = {}     # (name, path, size, mtime_ns) -> (sha256, imports)
_LOADED: dict = {}    # module name -> (module object, (sha256, imports)) for modules already imported
_SPECS: dict = {}     # module name -> its source path (or None: not a module with a file)


def _statements(body: list):
    """Every statement, nested ones included (imports are statements: no need to visit expressions)."""
    for node in body:
        yield node
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            child = getattr(node, field, None)
            if isinstance(child, list):
                yield from _statements(child)


def _imports(source: bytes, package: str) -> list[tuple[str, bool]]:
    """What an import statement anywhere in the source may load: (module, False) for `import X` and the
    X of `from X import a`; (X.a, True) for the a of `from X import a`, a module only if X is a package."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    names = []
    for node in _statements(tree.body):
        if isinstance(node, ast.Import):
            names += [(a.name, False) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            try:
                base = importlib.util.resolve_name("." * node.level + (node.module or ""), package) \
                    if node.level else node.module
            except (ImportError, ValueError):
                continue
            names += [(base, False)] + [(f"{base}.{a.name}", True) for a in node.names if a.name != "*"]
    return names


def _file_info(name: str, path: str, is_pkg: bool) -> tuple[str, list[tuple[str, bool]]]:
    st = os.stat(path)
    key = (name, path, st.st_size, st.st_mtime_ns)
    if key not in _FILES:
        data = Path(path).read_bytes()
        package = name if is_pkg else name.rpartition(".")[0]
        _FILES[key] = (hashlib.sha256(data).hexdigest(), _imports(data, package) if path.endswith(".py") else [])
    return _FILES[key]


def _source_path(name: str) -> tuple[Optional[str], bool]:
    """(source file, is a package) without importing the module itself (find_spec imports its parent)."""
    if name not in _SPECS:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError, AttributeError):  # `X.a` where a is a class, not a module
            spec = None
        origin = spec.origin if spec is not None else None
        _SPECS[name] = (origin if origin and os.path.isfile(origin) else None,
                        spec is not None and spec.submodule_search_locations is not None)
    return _SPECS[name]


def _is_package(name: str) -> bool:
    mod = sys.modules.get(name)
    return hasattr(mod, "__path__") if mod is not None else _source_path(name)[1]


def module_info(name: str) -> Optional[tuple[str, list[tuple[str, bool]]]]:
    """(sha256 of the module's source file, the modules it may import), or None if it has no file.

    For a module already imported, the hash is taken once for that module object: the code that runs."""
    mod = sys.modules.get(name)
    if mod is not None:
        cached = _LOADED.get(name)
        if cached is not None and cached[0] is mod:
            return cached[1]
        path = getattr(mod, "__file__", None)
        if not path or not os.path.isfile(path):
            return None
        info = _file_info(name, path, hasattr(mod, "__path__"))
        _LOADED[name] = (mod, info)
        return info
    path, is_pkg = _source_path(name)
    return _file_info(name, path, is_pkg) if path else None


def module_closure(starts: list[str], packages: set[str]) -> tuple[dict[str, str], set[str]]:
    """{module: sha256} for the start modules and every module of `packages` they import, transitively;
    plus the top-level names of the other (third-party) modules they import."""
    hashes: dict[str, str] = {}
    external: set[str] = set()
    todo = list(starts)
    while todo:
        name = todo.pop()
        if name in hashes:
            continue
        info = module_info(name)
        if info is None:
            continue
        hashes[name] = info[0]
        parents = [(name.rsplit(".", i)[0], False) for i in range(1, name.count(".") + 1)]  # imported first
        for imp, member in [*parents, *info[1]]:
            top = imp.split(".")[0]
            if top in packages:
                # `from X import a`: a is a module only when X is a package (never import X to find out)
                if not member or _is_package(imp.rpartition(".")[0]):
                    todo.append(imp)
            elif top and top != "__future__" and top not in sys.stdlib_module_names:
                external.add(top)
    return dict(sorted(hashes.items())), external


@functools.lru_cache(maxsize=None)
def _library_version(top: str) -> Optional[str]:
    mod = sys.modules.get(top)
    v = getattr(mod, "__version__", None) if mod is not None else None
    if isinstance(v, str):
        return v
    try:
        return dist_version(top)
    except (PackageNotFoundError, ValueError):
        return None


# ----- plugins: which objects make up a run -----------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _entry_points() -> dict[tuple[str, str], tuple[str, str]]:
    """{(group, name): (distribution, version)} of the clbench plugin groups, read once per process (one
    scan of the installed distributions; like the modules, what this process loaded is what it records)."""
    table: dict[tuple[str, str], tuple[str, str]] = {}
    for dist in distributions():
        eps = [ep for ep in dist.entry_points if ep.group.startswith("clbench.")]
        if eps:
            who = (dist.metadata["Name"], dist.version)  # parses METADATA: once per plugin distribution
            for ep in eps:
                table.setdefault((ep.group, ep.name), who)
    return table


def _distribution(registry: Registry, name: str) -> Optional[tuple[str, str]]:
    """Name and version of the distribution whose entry point registers `name` (None for register())."""
    return None if registry.in_process(name) else _entry_points().get((registry.group, name))


def plugins(cfg: dict) -> list[dict]:
    """The plugin objects a run with this config builds: its strategy, its callbacks, its scenario, dataset and
    model."""
    strategy = cfg["strategy"]
    named = str(strategy["name"]).split(":")     # `avalanche:EWC`: the bridge (EWC is not a plugin)
    wanted = [("strategy", STRATEGIES, n) for n in dict.fromkeys(named)
              if STRATEGIES.in_process(n) or _distribution(STRATEGIES, n)]
    wanted += [("callback", CALLBACKS, n) for n in (cfg.get("callbacks") or {})]
    wanted += [(kind, reg, cfg[kind]["name"]) for kind, reg in (("scenario", SCENARIOS), ("dataset", DATASETS),
                                                                ("model", MODELS))
               if isinstance(cfg.get(kind), dict) and cfg[kind].get("name")]
    out = []
    for kind, reg, name in wanted:
        obj = reg.get(name)
        dist, ver = _distribution(reg, name) or (None, None)
        out.append({"kind": kind, "name": name, "object": f"{obj.__module__}:{obj.__qualname__}",
                    "distribution": dist, "version": ver})
    return out


def code_identity(cfg: dict) -> dict:
    """The code part of the provenance of a run with this config (no data needed)."""
    plug = plugins(cfg)
    starts = [CORE] + [p["object"].split(":")[0] for p in plug]
    modules, external = module_closure(starts, {"clbench"} | {m.split(".")[0] for m in starts})
    return {"plugins": plug, "modules": modules, "code_hash": canonical_hash(modules),
            "libraries": {top: _library_version(top) for top in sorted(external)}}


# ----- data ---------------------------------------------------------------------------------------------
_DATA: dict = {}   # TensorDataset.source_key -> fingerprint


def _tensor_bytes(t):
    import torch
    t = t.detach().cpu().contiguous().reshape(-1)
    return t.view(torch.uint8).numpy() if t.numel() else b""


def _describe(t) -> str:
    return f"{str(t.dtype).replace('torch.', '')}{list(t.shape)}"


def data_fingerprint(ds) -> dict:
    """sha256 per split over the tensors as loaded (dtype, shape and bytes of inputs and labels), once
    per process for a dataset whose files are unchanged (`ds.source_key`)."""
    from clbench.data.checks import present_splits
    key = getattr(ds, "source_key", None)
    if key is not None and key in _DATA:
        return copy.deepcopy(_DATA[key])
    splits = {}
    for s in present_splits(ds):
        x, y = getattr(ds, f"x_{s}"), getattr(ds, f"y_{s}")
        h = hashlib.sha256()
        for t in (x, y):
            h.update(f"{_describe(t)};".encode())
            h.update(_tensor_bytes(t))
        splits[s] = {"n": len(y), "x": _describe(x), "y": _describe(y), "sha256": h.hexdigest()}
    fp = {"splits": splits, "n_classes": int(ds.n_classes)}
    fp["data_hash"] = canonical_hash(fp)
    if key is not None:
        _DATA[key] = copy.deepcopy(fp)
    return fp


# ----- the record and identities ------------------------------------------------------------------------
def collect(cfg: dict, dataset) -> dict:
    """The provenance record of a run (engine.execute stores it in result.json)."""
    return {"schema": SCHEMA, "clbench": {"version": clbench.__version__, **git_state()},
            **code_identity(cfg), "data": data_fingerprint(dataset)}


def identity(result: dict) -> tuple[Optional[str], Optional[str]]:
    """(code_hash, data_hash) recorded in a result; None for what it does not record (older results)."""
    p = result.get("provenance") if isinstance(result, dict) else None
    p = p if isinstance(p, dict) else {}
    data = p.get("data") if isinstance(p.get("data"), dict) else {}
    code, data = p.get("code_hash"), data.get("data_hash")
    return (code if isinstance(code, str) else None), (data if isinstance(data, str) else None)


def short_id(ident: tuple) -> str:
    """'1a2b3c4d/5e6f7a8b' (code/data), '-' for what is not recorded: how tables show an identity."""
    return "/".join((h[:8] if h else "-") for h in ident)


def current_identity(cfg: dict) -> tuple[str, str]:
    """(code_hash, data_hash) a run of this config would record now in this process (loads the dataset
    on the CPU once per process to fingerprint it)."""
    import torch

    from clbench.data import load_dataset
    code = code_identity(cfg)["code_hash"]
    test = bool(cfg.get("eval", {}).get("test", True))
    return code, data_fingerprint(load_dataset(cfg, torch.device("cpu"), test=test))["data_hash"]


def describe_change(old: tuple, new: tuple) -> str:
    """Which part of an identity differs, in words: 'code 1a2b3c4d -> 9f8e7d6c', 'no provenance', ..."""
    if old == (None, None):
        return "no provenance recorded (written by an older clbench)"
    parts = [f"{what} {(o or '-')[:8]} -> {(n or '-')[:8]}" for what, o, n in zip(("code", "data"), old, new) if o != n]
    return ", ".join(parts) or "same"
