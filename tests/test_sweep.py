"""Sweeps: expansion of overrides, local process-pool sweeps, resume, failures, the Ray executor."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from clbench.cli import main
from clbench.config import ConfigError, compose, config_hash, parse_value
from clbench.executors import make_executor
from clbench.results import is_complete, load_result, make_run_id
from clbench.sweep import (MANIFEST, _publish_here, _sweep_lock, format_value, parse_sweep_args, plan,
                           run_sweep, split_values)

FAST = ["benchmark=split-digits", "train.epochs=1", "wandb.mode=disabled"]


# ---------------------------------------------------------------- expansion (no runs)

@pytest.mark.parametrize("text, expected", [
    ("0,1,2", ["0", "1", "2"]),
    ("replay", ["replay"]),
    ("[1,2]", ["[1,2]"]),                                # a list is one value
    ("[1,2],[3,4]", ["[1,2]", "[3,4]"]),
    ("[[1,2],[3]],[4]", ["[[1,2],[3]]", "[4]"]),
    ("{a: 1, b: 2},{a: 3}", ["{a: 1, b: 2}", "{a: 3}"]),
    ("'a,b',c", ["'a,b'", "c"]),                         # quotes protect commas
    ('"x,y"', ['"x,y"']),
    ("a\\,b,c", ["a,b", "c"]),                           # escaped comma
    ("it's,x", ["it's", "x"]),                           # an apostrophe inside a word is no quote
    ("range(3)", ["0", "1", "2"]),
    ("range(1,7,2)", ["1", "3", "5"]),
    ("range(0,0.3,0.1)", ["0", "0.1", "0.2"]),
    ("range(2),9", ["0", "1", "9"]),
    ("", [""]),
])
def test_split_values(text, expected):
    assert split_values(text) == expected


@pytest.mark.parametrize("text, match", [
    ("[1,2", "unclosed"), ("1,2]", "unbalanced"), ("'a,b", "unclosed quote"), ("0,,1", "empty value"),
    ("0,1,", "empty value"), ("range(a)", "bad range"), ("range(3,0)", "empty range"),
])
def test_split_values_errors(text, match):
    with pytest.raises(ConfigError, match=match):
        split_values(text, "k")


def test_quoted_and_list_values_reach_the_config_intact():
    # The split keeps the text; the config parser then reads lists and quoted strings.
    a, b = split_values("[1,2],'3,4'")
    assert parse_value(a) == [1, 2] and parse_value(b) == "3,4"


@pytest.mark.parametrize("value", ["naive", "0", "a,b", "yes", 3, 0.1, True, None, [1, 2], {"a": [1, "x"]}, ""])
def test_format_value_round_trips(value):
    assert parse_value(format_value(value)) == value


def test_parse_separates_sweep_keys_and_expands_product(tmp_path):
    spec = parse_sweep_args([*FAST, "strategy=naive,replay", "seed=0,1,2", f"out={tmp_path}/s",
                             "executor=local", "workers=2", "threads=1", "ray.num_cpus=2"])
    assert spec.settings == {"executor": "local", "workers": 2, "ray": {"num_cpus": 2}}
    assert spec.axes == {"strategy": ["naive", "replay"], "seed": ["0", "1", "2"]}
    assert spec.params["threads"] == ["1"]     # a run key: part of every run's config (and hash)
    assert spec.name == "s" and spec.out == (tmp_path / "s").resolve()
    cells = spec.cells()
    assert len(cells) == 6 and cells[0][-3:] == ["strategy=naive", "seed=0", "threads=1"]
    assert cells[5][-3:] == ["strategy=replay", "seed=2", "threads=1"]
    assert all(not any(o.startswith(("executor", "workers", "ray.")) for o in c) for c in cells)


@pytest.mark.parametrize("args, match", [
    (["workers=1,2"], "cannot take several values"), (["out=a,b"], "cannot take several values"),
    (["seed"], "not of the form"), (["sweep=nope"], "unknown sweep"),
])
def test_parse_errors(args, match):
    with pytest.raises(Exception, match=match):
        parse_sweep_args(args)


def test_sweep_file_and_cli_override(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("name: mine\nworkers: 2\noverrides: {train.epochs: 1, model.width: 32}\n"
                 "grid: {strategy: [naive, replay], seed: [0, 1]}\n")
    spec = parse_sweep_args([f"sweep={f}", "seed=5,6,7", "workers=1", f"out={tmp_path}/o"])
    assert spec.name == "mine" and spec.settings["workers"] == 1            # CLI wins over the file
    assert spec.params["seed"] == ["5", "6", "7"] and spec.params["model.width"] == ["32"]
    assert len(spec.cells()) == 6
    # the shipped demo file parses
    demo = parse_sweep_args(["sweep=demo", f"out={tmp_path}/d"])
    assert demo.axes == {"strategy": ["naive", "replay"], "seed": ["0", "1", "2"]}


def test_plan_ids_wandb_grouping_and_fail_fast(tmp_path):
    spec = parse_sweep_args([*FAST, "strategy=naive,replay", "seed=0,1", f"out={tmp_path}/p"])
    runs = plan(spec)
    # the same run id a plain `clbench run` with these overrides gets (resume relies on it)
    cfg = compose(runs[3].overrides)
    assert runs[3].run_id == make_run_id(cfg, config_hash(cfg))
    assert len({r.run_id for r in runs}) == 4
    # W&B: one group per sweep, job_type per configuration (seeds share it), tags name the sweep
    w = [r.cfg["wandb"] for r in runs]
    assert {x["group"] for x in w} == {"p"}
    assert [x["job_type"] for x in w] == ["strategy=naive", "strategy=naive", "strategy=replay", "strategy=replay"]
    assert runs[0].config_key == runs[1].config_key != runs[2].config_key
    assert "sweep:p" in w[0]["tags"] and runs[0].cfg["progress"] is False
    with pytest.raises(ConfigError, match=r"train\.lrr.*in sweep cell"):
        plan(parse_sweep_args([*FAST, "train.lrr=0.1,0.2", f"out={tmp_path}/q"]))
    assert not (tmp_path / "q").exists()  # nothing written for a bad sweep


def test_executor_settings_errors():
    with pytest.raises(ConfigError, match="Did you mean 'ray'"):
        make_executor({"executor": "rey"})
    with pytest.raises(ConfigError, match="'workers'"):
        make_executor({"workers": 0})
    with pytest.raises(ConfigError, match="ray.num_gpus"):
        make_executor({"executor": "ray", "ray": {"num_gpu": 1}})


def test_publish_here(tmp_path):
    from clbench.engine import run
    result, _ = run(["train.epochs=1", "progress=false", "wandb.mode=disabled", f"out={tmp_path / 'runs'}"],
                    console=False)   # a real result: is_complete checks it against the result schema
    _publish_here(tmp_path, "r1", result)
    assert is_complete(tmp_path / "r1") and not (tmp_path / ".r1.partial").exists()


def test_one_sweep_per_folder(tmp_path):
    lock = tmp_path / ".sweep.lock"
    with _sweep_lock(tmp_path):
        assert lock.read_text().endswith(f":{os.getpid()}")
        with pytest.raises(ConfigError, match="in use by another clbench sweep"):
            with _sweep_lock(tmp_path):
                pass
    import socket
    lock.write_text(f"{socket.gethostname()}:999999999")   # left by a killed sweep: taken over
    with _sweep_lock(tmp_path):
        assert lock.read_text().endswith(f":{os.getpid()}")
    # (concurrent takeovers by real processes: tests/test_faults.py)


# ---------------------------------------------------------------- real sweeps on digits

GRID = ["strategy=naive,replay", "seed=0,1"]


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    """A 2 x 2 sweep on digits through a 2-process pool, run once for the tests below."""
    out = tmp_path_factory.mktemp("sweeps") / "grid"
    spec = parse_sweep_args([*FAST, *GRID, f"out={out}", "workers=2"])
    res = run_sweep(spec, argv=[])
    matrices = {rid: load_result(out / rid)["accuracy_matrix"] for rid in res.status}
    return spec, res, matrices


def test_local_pool_sweep(local_sweep):
    spec, res, matrices = local_sweep
    out = spec.out
    assert res.count("done") == 4 and not res.failed
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["counts"] == {"done": 4, "cached": 0, "failed": 0, "pending": 0}
    assert {tuple(r["overrides"][-2:]) for r in manifest["runs"]} == {
        ("strategy=naive", "seed=0"), ("strategy=naive", "seed=1"),
        ("strategy=replay", "seed=0"), ("strategy=replay", "seed=1")}
    # two worker processes, each running with the config's thread count (1), whatever the machine
    assert all(r["worker"].endswith(" threads=1") for r in manifest["runs"])
    assert len({r["worker"].split()[0] for r in manifest["runs"]}) == 2
    for r in manifest["runs"]:
        assert is_complete(out / r["run_id"])
        assert load_result(out / r["run_id"])["config"]["wandb"]["group"] == "grid"
    assert not list(out.glob(".*.partial"))
    # the aggregate table: one row per strategy, n = 2 seeds, saved next to the runs
    assert (out / "summary.csv").is_file() and (out / "summary.md").is_file()
    assert "naive" in res.table and "replay" in res.table
    csv_rows = (out / "summary.csv").read_text().splitlines()
    assert len(csv_rows) == 3 and all(",2,0 1," in row for row in csv_rows[1:])   # n = 2, seeds 0 1


def test_resume_reruns_only_the_missing_run(local_sweep):
    spec, res, matrices = local_sweep
    out = spec.out
    victim = res.runs[1].run_id
    others = [r.run_id for r in res.runs if r.run_id != victim]
    mtimes = {rid: os.stat(out / rid / "result.json").st_mtime_ns for rid in others}
    shutil.rmtree(out / victim)
    (out / f".{victim}.partial").mkdir()          # what a crashed run leaves behind
    (out / f".{victim}.partial" / "junk").write_text("x")
    res2 = run_sweep(parse_sweep_args([*FAST, *GRID, f"out={out}", "workers=1"]), argv=[])
    assert res2.count("cached") == 3 and res2.count("done") == 1 and res2.status[victim]["status"] == "done"
    assert {rid: os.stat(out / rid / "result.json").st_mtime_ns for rid in others} == mtimes
    assert not (out / f".{victim}.partial").exists()
    # re-run serially in this process, it gives exactly what it gave in a pool worker
    assert load_result(out / victim)["accuracy_matrix"] == matrices[victim]


def test_a_damaged_result_is_read_once_reported_once_and_rerun(local_sweep, capsys):
    """Earlier a sweep validated each result.json two to four times and printed a damaged file's warning twice."""
    spec, res, matrices = local_sweep
    out = spec.out
    victim = res.runs[2].run_id
    r = json.loads((out / victim / "result.json").read_text())
    r["metrics"]["acc"] = 0.99                                      # no longer what R gives
    (out / victim / "result.json").write_text(json.dumps(r))
    capsys.readouterr()
    res2 = run_sweep(parse_sweep_args([*FAST, *GRID, f"out={out}", "workers=1"]), argv=[])
    assert res2.status[victim]["status"] == "done" and res2.count("cached") == 3
    assert capsys.readouterr().err.count("counts as not finished") == 1
    assert load_result(out / victim)["accuracy_matrix"] == matrices[victim]


def test_failing_run_is_reported_and_the_rest_finish(tmp_path, capsys):
    out = tmp_path / "fail"
    # Adam passes config composition but OWM rejects an optimizer with state when the run starts
    rc = main(["sweep", *FAST, "strategy=owm", "model.bias=false", "train.optimizer=adam,sgd", "seed=0", f"out={out}"])
    assert rc == 1
    manifest = json.loads((out / MANIFEST).read_text())
    bad, good = manifest["runs"]
    assert bad["status"] == "failed" and "train.optimizer" in bad["error"]
    assert good["status"] == "done" and is_complete(out / good["run_id"])
    tb = (out / bad["traceback_file"]).read_text()
    assert "Traceback" in tb and "train.optimizer=adam" in tb
    assert not (out / bad["run_id"]).exists() and not list(out.glob(".*.partial"))
    printed = capsys.readouterr().out
    assert "FAILED" in printed and "1 failed" in printed
    # a usage error is exit code 2, before anything runs
    assert main(["sweep", *FAST, "executor=rey", f"out={tmp_path}/x"]) == 2


def test_sigterm_stops_a_serial_sweep_and_the_rerun_resumes(tmp_path, capsys, preempt):
    """Preemption is not a run failure: the sweep stops at once (exit 128+15), keeps the run's checkpoint, runs
    nothing more, and the same command resumes that run and finishes the rest, as if never stopped."""
    import signal

    preempt.at_step = 5
    args = ["sweep", *FAST, "strategy=replay", "callbacks=[preempt_test]", "seed=0,1,2"]
    assert main([*args, f"out={tmp_path / 'stopped'}"]) == 128 + signal.SIGTERM
    assert "interrupted by SIGTERM" in capsys.readouterr().err
    manifest = json.loads((tmp_path / "stopped" / MANIFEST).read_text())
    assert [r["status"] for r in manifest["runs"]] == ["interrupted"] * 3
    assert not list((tmp_path / "stopped").glob("*/result.json"))
    assert len(list((tmp_path / "stopped").glob(".*.partial/checkpoint.pt"))) == 1
    assert main([*args, f"out={tmp_path / 'stopped'}"]) == 0
    assert main([*args, f"out={tmp_path / 'straight'}"]) == 0
    for run in json.loads((tmp_path / "straight" / MANIFEST).read_text())["runs"]:
        a = load_result(tmp_path / "stopped" / run["run_id"])
        b = load_result(tmp_path / "straight" / run["run_id"])
        assert a["accuracy_matrix"] == b["accuracy_matrix"]
    assert [load_result(tmp_path / "stopped" / r["run_id"])["timing"]["segments"]
            for r in manifest["runs"]] == [2, 1, 1]


# ---------------------------------------------------------------- Ray (a local instance)

@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_executor_matches_local(ray_local, local_sweep, tmp_path):
    _, local, matrices = local_sweep
    out = tmp_path / "ray"
    spec = parse_sweep_args([*FAST, "strategy=naive,replay", "seed=1", f"out={out}", "executor=ray",
                             "ray.num_cpus=1"])
    res = run_sweep(spec, argv=[])
    assert res.count("done") == 2 and not res.failed
    assert ray_local.is_initialized()  # the sweep attached to the running instance and left it running
    for r in res.runs:                 # same configs -> same run ids -> identical results
        assert r.run_id in matrices
        assert load_result(out / r.run_id)["accuracy_matrix"] == matrices[r.run_id]
        assert res.status[r.run_id]["worker"].endswith("threads=1")

