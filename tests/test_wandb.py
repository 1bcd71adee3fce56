"""W&B logging users can trust: offline runs hold the summary, one W&B run per clbench run (never merged),
seeds share a group, failures only warn and keep the local result, `clbench sync` finds offline runs."""
import json
import warnings

import pytest

from clbench import cli
from clbench.config import group_hash
from clbench.engine import run
from clbench.results import REQUIRED_KEYS, load_result
from clbench.sync import find_offline_runs, iter_records, read_offline_run

FAST = ["train.epochs=1", "progress=false", "device=cpu"]


def _run(tmp_path, *extra):
    return run([f"out={tmp_path}", *FAST, *extra], console=False)


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory):
    """One offline W&B run shared by the tests below (each W&B run costs seconds)."""
    out = tmp_path_factory.mktemp("wandb_runs")
    result, path = _run(out, "wandb.mode=offline", "eval.every_steps=20", "seed=0")
    return out, result, path


def test_offline_run_holds_config_summary_table_and_heatmap(offline_run):
    _, result, path = offline_run
    assert result["wandb_dir"] and (path / result["wandb_dir"]).is_dir()
    [wdir] = find_offline_runs(path)
    info = read_offline_run(wdir)
    # one run, named and grouped for aggregation over seeds
    assert info["name"] == result["run_id"]
    assert info["group"] == f"split-digits/replay/{group_hash(result['config'])[:8]}"
    assert info["job_type"] == "run"
    assert {"split-digits", "replay", "class_incremental", "class-il"} <= set(info["tags"])
    assert info["config"]["config_hash"] == result["config_hash"]
    assert info["exit_code"] == 0
    # final metrics in the summary, equal to result.json's
    for name, value in result["metrics"].items():
        if value is None:
            continue
        assert info["summary"][f"final/{name}"] == pytest.approx(value), name
    assert info["summary"]["config_hash"] == result["config_hash"]
    # per-experience values: the last eval row; anytime curve logged too
    assert info["summary"]["experience"] == len(result["accuracy_matrix"])
    assert info["summary"]["eval/acc_task0"] == pytest.approx(result["accuracy_matrix"][-1][0])
    assert "anytime/acc_seen" in info["summary"]
    # R as a table (wide and long) and as a heatmap image
    assert info["summary"]["accuracy_matrix/_type"] == "table-file"
    assert info["summary"]["accuracy_matrix/nrows"] == len(result["accuracy_matrix"]) + 1
    assert info["summary"]["accuracy_matrix_long/_type"] == "table-file"
    assert info["summary"]["accuracy_matrix_heatmap/_type"] == "image-file"
    images = list(wdir.glob("files/media/images/accuracy_matrix_heatmap_*.png"))
    assert images and images[0].stat().st_size > 5000
    tables = list(wdir.glob("files/media/table/accuracy_matrix_*.table.json"))
    wide = [t for t in tables if "long" not in t.name]
    data = json.loads(wide[0].read_text())["data"]
    assert data[-1][1:] == pytest.approx(result["accuracy_matrix"][-1])
    # eval/* and anytime/* have their own step metrics (no monotonic-step collisions with train/*)
    from wandb.proto import wandb_internal_pb2 as pb
    steps = {}
    for raw in iter_records(next(wdir.glob("run-*.wandb"))):
        rec = pb.Record()
        rec.ParseFromString(raw)
        if rec.WhichOneof("record_type") == "metric" and rec.metric.glob_name:
            steps[rec.metric.glob_name] = rec.metric.step_metric
    assert steps == {"eval/*": "experience", "train/*": "train/step", "anytime/*": "anytime/step"}


def test_two_runs_in_one_process_stay_separate(offline_run, tmp_path):
    import wandb
    _, r0, p0 = offline_run                       # seed 0, already finished in this process
    r1, p1 = _run(tmp_path, "wandb.mode=offline", "eval.every_steps=20", "seed=1")
    assert wandb.run is None                     # both finished
    [w0], [w1] = find_offline_runs(p0), find_offline_runs(p1)
    i0, i1 = read_offline_run(w0), read_offline_run(w1)
    assert i0["id"] != i1["id"] and i0["name"] != i1["name"]
    assert i0["summary"]["final/acc"] == pytest.approx(r0["metrics"]["acc"])
    assert i1["summary"]["final/acc"] == pytest.approx(r1["metrics"]["acc"])
    assert r0["metrics"]["acc"] != r1["metrics"]["acc"]
    assert i0["group"] == i1["group"]            # seeds of one configuration aggregate in one group
    assert i0["exit_code"] == 0 and i1["exit_code"] == 0


def test_wandb_init_failure_warns_and_keeps_the_result(tmp_path, monkeypatch):
    import wandb

    def broken_init(*a, **k):
        raise RuntimeError("simulated W&B outage")
    monkeypatch.setattr(wandb, "init", broken_init)
    with pytest.warns(UserWarning, match="W&B init failed.*simulated W&B outage"):
        result, path = _run(tmp_path, "wandb.mode=offline")
    assert all(k in load_result(path) for k in REQUIRED_KEYS)
    assert result["wandb_dir"] is None


def test_wandb_failure_during_the_run_warns_finishes_and_keeps_the_result(tmp_path, monkeypatch):
    from wandb.sdk.wandb_run import Run
    calls = {"n": 0}
    original = Run.log

    def flaky_log(self, data, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise ConnectionError("simulated failure mid-run")
        return original(self, data, *a, **k)
    monkeypatch.setattr(Run, "log", flaky_log)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result, path = _run(tmp_path, "wandb.mode=offline")
    assert any("simulated failure mid-run" in str(w.message) for w in caught)
    assert load_result(path)["metrics"]["acc"] == result["metrics"]["acc"]
    [wdir] = find_offline_runs(path)
    assert read_offline_run(wdir)["exit_code"] == 1   # the W&B run was closed, marked failed


def test_sync_finds_runs_dry_run_and_fails_clearly_offline(offline_run, tmp_path, monkeypatch, capsys):
    out_dir, result, path = offline_run
    assert cli.main(["sync", str(out_dir), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "1 offline W&B run(s)" in out and str(path) in out
    assert "wandb sync" in out and f"name={result['run_id']}" in out and "final/acc=" in out
    # no server reachable (a closed local port stands in for "offline"): clear message, nothing lost
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    assert cli.main(["sync", str(out_dir)]) == 1
    err = capsys.readouterr().err
    assert "cannot reach the W&B server" in err and "offline" in err
    assert find_offline_runs(out_dir)                    # still there, unsynced
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["sync", str(empty)]) == 0
    assert "no offline W&B runs" in capsys.readouterr().out
