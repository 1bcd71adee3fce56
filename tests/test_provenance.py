"""Provenance: every result.json records the code and data identity of its run, and the tools act on it.

The observed defect: after editing a plugin's helper module, re-running its sweep said "already
complete", `report` merged old and new runs into one group, and `submit` labelled the old runs with the
new code's source hash (which covered only the strategy's class hierarchy). Here a tiny plugin package
is written to tmp_path, its helper edited, and the sweep, report and submit are checked against it.
"""
import importlib
import io
import json
import subprocess
import sys
import uuid

import numpy as np
import pytest
import torch

import clbench
from clbench import provenance as P
from clbench.cli import main
from clbench.config import canonical_hash, compose
from clbench.engine import run
from clbench.errors import SubmissionError
from clbench.leaderboard import build_submission
from clbench.registry import STRATEGIES
from clbench.report import aggregate, load_results, render_table
from clbench.results import load_result
from clbench.sweep import SUPERSEDED, parse_sweep_args, run_sweep

torch.set_num_threads(1)
FAST = ["benchmark=split-digits", "train.epochs=1", "wandb.mode=disabled", "progress=false", "device=cpu"]


def test_every_result_records_code_and_data_identity(tmp_path):
    result, _ = run([*FAST, f"out={tmp_path}", "strategy=replay"], console=False)
    p = result["provenance"]
    assert p["clbench"]["version"] == clbench.__version__
    assert p["clbench"]["git_commit"] is None or len(p["clbench"]["git_commit"]) == 40
    assert p["clbench"]["git_dirty"] in (None, True, False)
    kinds = {(x["kind"], x["name"]): x for x in p["plugins"]}
    assert set(kinds) == {("strategy", "replay"), ("scenario", "class_incremental"), ("dataset", "digits"),
                          ("model", "mlp")}
    assert kinds[("strategy", "replay")]["distribution"] == "clbench"
    assert kinds[("strategy", "replay")]["object"] == "clbench.strategies.replay:Replay"
    # the strategy's module, the core module it imports (the buffer) and the engine's closure
    assert {"clbench.strategies.replay", "clbench.buffer", "clbench.strategy", "clbench.engine",
            "clbench.evaluator", "clbench.data.digits", "clbench.models",
            "clbench.scenarios.class_incremental"} <= set(p["modules"])
    assert all(len(h) == 64 for h in p["modules"].values())
    assert p["code_hash"] == canonical_hash(p["modules"])
    assert p["libraries"]["torch"] == torch.__version__
    d = p["data"]
    assert d["splits"]["train"]["n"] == 1437 and d["splits"]["test"]["n"] == 360
    assert d["splits"]["train"]["x"] == "uint8[1437, 1, 8, 8]" and d["n_classes"] == 10
    assert d["data_hash"] == canonical_hash({k: v for k, v in d.items() if k != "data_hash"})
    assert P.identity(result) == (p["code_hash"], d["data_hash"])


def test_code_identity_is_the_same_in_a_fresh_process():
    cfg = compose([*FAST, "strategy=derpp"])
    here = P.code_identity(cfg)["code_hash"]
    code = ("import json, sys; from clbench.config import compose; from clbench.provenance import code_identity; "
            f"print(code_identity(compose({[*FAST, 'strategy=derpp']!r}))['code_hash'])")
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert there.stdout.strip() == here


def test_callbacks_and_helper_modules_are_part_of_the_code():
    ident = P.code_identity(compose([*FAST, "strategy=derpp", "callbacks=[refresh]"]))
    named = [(x["kind"], x["name"], x["object"]) for x in ident["plugins"] if x["kind"] in ("strategy", "callback")]
    assert named == [("strategy", "derpp", "clbench.strategies.derpp:DERpp"),
                     ("callback", "refresh", "clbench.strategies.refresh:Refresh")]
    # derpp's own module, and der.py which it imports (not a class the config names)
    assert {"clbench.strategies.refresh", "clbench.strategies.derpp", "clbench.strategies.der",
            "clbench.buffer"} <= set(ident["modules"])
    plain = P.code_identity(compose([*FAST, "strategy=replay", "callbacks=[refresh]"]))
    assert plain["code_hash"] != ident["code_hash"] and "clbench.strategies.der" not in plain["modules"]


def test_git_state_is_null_without_git_or_outside_a_checkout(tmp_path, monkeypatch):
    P.git_state.cache_clear()   # cleared again at the end, so later runs see the real checkout
    try:
        monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))          # git missing: never fails the run
        assert P.git_state() == {"git_commit": None, "git_dirty": None}
        monkeypatch.undo()
        P.git_state.cache_clear()
        # a copy of clbench that sits untracked inside some other repository: not its checkout
        repo = tmp_path / "other"
        (repo / "clbench").mkdir(parents=True)
        subprocess.run(["git", "init", "-q", str(repo)], check=True)
        init = repo / "clbench" / "__init__.py"
        init.write_text("__version__ = '0'\n")
        monkeypatch.setattr(clbench, "__file__", str(init))
        assert P.git_state() == {"git_commit": None, "git_dirty": None}
        # tracked and committed: commit and a clean flag; an edit makes it dirty
        git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
        subprocess.run([*git, "add", "."], check=True)
        subprocess.run([*git, "commit", "-qm", "x"], check=True)
        head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        P.git_state.cache_clear()
        assert P.git_state() == {"git_commit": head, "git_dirty": False}
        init.write_text("__version__ = '1'\n")
        P.git_state.cache_clear()
        assert P.git_state() == {"git_commit": head, "git_dirty": True}
    finally:
        P.git_state.cache_clear()


def _tensor_file(path, shift=0):
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.integers(0, 256, (60, 8, 8), dtype=np.uint8) + shift, y_train=np.arange(60) % 10,
             x_test=rng.integers(0, 256, (20, 8, 8), dtype=np.uint8), y_test=np.arange(20) % 10)


def test_data_fingerprint_once_per_process_and_again_when_the_file_changes(tmp_path, monkeypatch):
    data = tmp_path / "mine.npz"
    _tensor_file(data)
    calls = []
    real = P._tensor_bytes
    monkeypatch.setattr(P, "_tensor_bytes", lambda t: calls.append(1) or real(t))
    cfg = [*FAST, f"out={tmp_path / 'runs'}", "strategy=naive", "dataset.name=tensors", f"+dataset.path={data}"]
    r1, _ = run([*cfg, "seed=0"], console=False)
    assert len(calls) == 4                         # x and y of train and test, hashed once
    r2, _ = run([*cfg, "seed=1"], console=False)
    assert len(calls) == 4                         # the second run in this process does not re-hash
    assert P.identity(r1)[1] == P.identity(r2)[1]
    _tensor_file(data, shift=1)                    # same shapes, other pixels
    r3, _ = run([*cfg, "seed=1"], console=False)
    assert len(calls) == 8 and P.identity(r3)[1] != P.identity(r2)[1]
    assert P.identity(r3)[0] == P.identity(r2)[0]  # same code


# ---------------------------------------------------------------------------------------------------
# A plugin package in tmp_path: edit its helper module, then sweep, report and submit again.
# ---------------------------------------------------------------------------------------------------
METHOD = '''
"""A tiny plugin strategy whose loss goes through a helper module of its own package."""
from clbench.buffer import ReservoirBuffer  # noqa: F401  (a clbench core module the plugin loads)
from clbench.strategy import Strategy

from {pkg}.helpers import scale


class Scaled(Strategy):
    description = "fine-tuning with a scaled loss"

    def loss(self, batch):
        return scale(super().loss(batch))
'''


class Plugin:
    """Writes, (re)imports and registers the package, as a fresh process would see it."""

    def __init__(self, root):
        self.pkg = f"clbplug_{uuid.uuid4().hex[:8]}"
        self.dir = root / self.pkg
        self.dir.mkdir()
        (self.dir / "__init__.py").write_text("")
        (self.dir / "method.py").write_text(METHOD.format(pkg=self.pkg))
        self.helper(1.0)
        sys.path.insert(0, str(root))

    def helper(self, factor):
        (self.dir / "helpers.py").write_text(f"def scale(loss):\n    return loss * {factor}\n")

    def load(self):
        for name in [m for m in sys.modules if m == self.pkg or m.startswith(self.pkg + ".")]:
            del sys.modules[name]
        importlib.invalidate_caches()
        STRATEGIES.register("clbplug", importlib.import_module(f"{self.pkg}.method").Scaled)

    def close(self, root):
        STRATEGIES._extra.pop("clbplug", None)
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m.startswith(self.pkg)]:
            del sys.modules[name]


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # an edit within the same second must not reuse a .pyc
    plug = Plugin(tmp_path)
    plug.load()
    yield plug
    plug.close(tmp_path)


def _sweep(out, *extra):
    log = io.StringIO()
    res = run_sweep(parse_sweep_args([*FAST, "strategy=clbplug", "seed=0,1,2", f"out={out}", *extra]), argv=[],
                    log=log)
    return res, log.getvalue()


def test_editing_a_plugin_helper_reruns_the_sweep_splits_the_report_and_submit_keeps_identities(
        plugin, tmp_path, capsys):
    out = tmp_path / "sweep"
    res1, _ = _sweep(out)
    assert res1.count("done") == 3
    old = [load_result(out / r.run_id) for r in res1.runs]
    mods = old[0]["provenance"]["modules"]
    assert {f"{plugin.pkg}.method", f"{plugin.pkg}.helpers", f"{plugin.pkg}", "clbench.buffer"} <= set(mods)
    strategy = next(x for x in old[0]["provenance"]["plugins"] if x["kind"] == "strategy")
    assert strategy["object"] == f"{plugin.pkg}.method:Scaled" and strategy["distribution"] is None
    old_code, data = P.identity(old[0])

    # Unchanged code: everything is complete.
    res, log = _sweep(out)
    assert res.count("cached") == 3 and res.count("done") == 0 and "other code" not in log

    # Edit the helper (not the strategy's class). This process still runs the module it imported, so
    # its identity is still the old one; a fresh import (a new process) sees the new code.
    plugin.helper(0.5)
    assert P.code_identity(old[0]["config"])["code_hash"] == old_code
    plugin.load()
    new_code = P.code_identity(old[0]["config"])["code_hash"]
    assert new_code != old_code

    res2, log = _sweep(out)
    assert res2.count("done") == 3 and res2.count("cached") == 0
    assert "3 complete run(s) came from other code or data: re-running them" in log
    assert f"code {old_code[:8]} -> {new_code[:8]}" in log and str(out / SUPERSEDED) in log
    new = [load_result(out / r.run_id) for r in res2.runs]
    assert {P.identity(r) for r in new} == {(new_code, data)}
    changed = {m for m in mods if new[0]["provenance"]["modules"].get(m) != mods[m]}
    assert changed == {f"{plugin.pkg}.helpers"}
    # nothing lost: the old results were moved, not deleted, and the manifest says where
    kept = sorted((out / SUPERSEDED).glob("*/result.json"))
    assert len(kept) == 3 and {P.identity(load_result(p)) for p in kept} == {(old_code, data)}
    manifest = json.loads((out / "sweep.json").read_text())
    assert all(r["superseded"]["to"].startswith(SUPERSEDED + "/") for r in manifest["runs"])
    # the sweep's own summary holds the current runs only
    assert "| 3 |" in (out / "summary.md").read_text()

    # report: two groups of n = 3 told apart by their code/data id; --pool merges them with a warning
    rows = [r for r in aggregate(load_results(out)) if r["strategy"] == "clbplug"]
    assert sorted((r["identity"], r["n"]) for r in rows) == sorted(
        [(P.short_id((old_code, data)), 3), (P.short_id((new_code, data)), 3)])
    assert main(["report", str(out), "--no-figures"]) == 0
    text = capsys.readouterr().out
    assert "2 configuration(s)" in text and "from different code or data" in text
    assert old_code[:8] in text and new_code[:8] in text
    assert main(["report", str(out), "--no-figures", "--pool"]) == 0
    cap = capsys.readouterr()
    assert "1 configuration(s)" in cap.out and "mixed:2" in cap.out
    assert "warning: --pool merges runs of 2 code/data identities" in cap.err

    # submit: refuses to mix; each identity is labelled with what its runs recorded, never the current code
    with pytest.raises(SubmissionError, match="different code or data"):
        build_submission([out])
    assert main(["leaderboard", "submit", str(out), "--out", str(tmp_path / "subs")]) == 2
    assert "different code or data" in capsys.readouterr().err
    sub_old = build_submission([out], ident=old_code[:8])
    assert sub_old["method"]["source_hash"] == old_code
    assert sub_old["method"]["sources"][f"{plugin.pkg}.helpers"] == mods[f"{plugin.pkg}.helpers"]
    assert sub_old["method"]["sources"][f"{plugin.pkg}.helpers"] != new[0]["provenance"]["modules"][f"{plugin.pkg}.helpers"]
    assert all(r["provenance"]["code_hash"] == old_code for r in sub_old["runs"])
    sub_new = build_submission([out / r.run_id for r in res2.runs])
    assert sub_new["method"]["source_hash"] == new_code

    # reuse=any keeps complete results whatever code made them
    plugin.helper(0.25)
    plugin.load()
    res3, log = _sweep(out, "reuse=any")
    assert res3.count("cached") == 3 and res3.count("done") == 0 and "other code" not in log
    assert len(list((out / SUPERSEDED).iterdir())) == 3


def test_a_result_without_provenance_or_from_other_data_is_rerun(tmp_path):
    data = tmp_path / "mine.npz"
    _tensor_file(data)
    out = tmp_path / "sweep"
    args = [*FAST, "strategy=naive", "seed=0,1", "dataset.name=tensors", f"+dataset.path={data}", f"out={out}"]
    res = run_sweep(parse_sweep_args(args), argv=[], log=io.StringIO())
    assert res.count("done") == 2
    first = out / res.runs[0].run_id / "result.json"
    r = json.loads(first.read_text())
    del r["provenance"]                                 # what an older clbench wrote
    first.write_text(json.dumps(r))
    log = io.StringIO()
    res = run_sweep(parse_sweep_args(args), argv=[], log=log)
    assert res.count("done") == 1 and res.count("cached") == 1
    assert "no provenance recorded" in log.getvalue()
    _tensor_file(data, shift=1)                         # the data changed under the same config
    log = io.StringIO()
    res = run_sweep(parse_sweep_args(args), argv=[], log=log)
    assert res.count("done") == 2 and log.getvalue().count(": data ") == 2 and ": code " not in log.getvalue()
    assert len(list((out / SUPERSEDED).iterdir())) == 3


def _fake(seed, acc, code, data="d" * 64):
    cfg = {"benchmark": {"name": "b"}, "strategy": {"name": "s"}, "seed": seed, "stream_seed": seed}
    return {"config": cfg, "seed": seed, "run_id": f"s{seed}{code[:2]}", "accuracy_matrix": [[acc]],
            "metrics": {"acc": acc}, "provenance": {"code_hash": code, "data": {"data_hash": data}}}


def test_report_keeps_identities_apart_and_pool_warns(capsys):
    a, b = "a" * 64, "b" * 64
    results = [_fake(0, 0.5, a), _fake(1, 0.7, a), _fake(0, 0.9, b), _fake(1, 0.9, b, data="e" * 64)]
    rows = aggregate(results)
    assert sorted((r["identity"], r["n"]) for r in rows) == [("aaaaaaaa/dddddddd", 2), ("bbbbbbbb/dddddddd", 1),
                                                             ("bbbbbbbb/eeeeeeee", 1)]
    assert "code/data" in render_table(rows) and "aaaaaaaa/dddddddd" in render_table(rows, fmt="markdown")
    assert capsys.readouterr().err == ""
    pooled = aggregate(results, pool=True)
    assert len(pooled) == 1 and pooled[0]["identity"] == "mixed:3"
    assert (pooled[0]["n"], pooled[0]["runs"]) == (2, 4)   # n counts distinct seeds; a repeated seed is averaged
    assert "merges runs of 3 code/data identities" in capsys.readouterr().err
    older = {k: v for k, v in _fake(2, 0.1, a).items() if k != "provenance"}
    assert {r["identity"] for r in aggregate([older])} == {"-/-"}


def test_reuse_takes_same_or_any():
    from clbench.errors import ConfigError
    with pytest.raises(ConfigError, match="bad value for 'reuse': expected one of same, any, got 'maybe'"):
        parse_sweep_args([*FAST, "reuse=maybe"])
    assert parse_sweep_args([*FAST, "reuse=any"]).settings["reuse"] == "any"
