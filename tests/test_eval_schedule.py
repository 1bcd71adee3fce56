"""eval.schedule: `seen_next` scores only the tasks learned so far and the next one (whole rows before training
and at the end). Every metric but the two max-based forgettings reads nothing else, and is the value `full`
gives; those two take their max over the scored rows (A-GEM's and AML's readings also look at rows long before a
task's experience, which only `full` scores)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from clbench import metrics as M
from clbench.config import compose
from clbench.engine import execute, prepare
from clbench.errors import ConfigError
from clbench.evaluator import Evaluator
from clbench.loggers import format_matrix
from clbench.testing import tiny_overrides

POWER_LAW = ["scenario={name: power_law, base: {name: permuted, n_experiences: 3}, budget: 40}"]
RUNS = {
    "class-il replay, validation split, anytime points": tiny_overrides(
        "class-il", "replay", ["eval.validation=0.25", "eval.every_steps=3"]),
    "task-il naive": tiny_overrides("task-il", "naive"),
    "domain-il replay": tiny_overrides("domain-il", "replay"),
    "class-il clser (extra models scored)": tiny_overrides("class-il", "clser"),
    "power-law rehearsal stream (learned_at is not the diagonal)": tiny_overrides("class-il", "naive", POWER_LAW),
}


MAX_OVER_EARLIER_ROWS = ("forgetting", "forgetting_max_incl_last")


def _run(overrides, schedule):
    run = prepare(compose([*overrides, f"eval.schedule={schedule}"]))
    return execute(run, None), run


def _expected_pattern(learned_at, n_rows):
    return [[M.scored_entry(i, j, learned_at, n_rows) for j in range(len(learned_at))] for i in range(n_rows)]


@pytest.mark.parametrize("name", list(RUNS))
def test_every_metric_is_identical_under_both_schedules(name):
    full, _ = _run(RUNS[name], "full")
    cheap, run = _run(RUNS[name], "seen_next")
    L, n = full["stream"]["learned_at"], len(full["accuracy_matrix"])
    pattern = _expected_pattern(L, n)
    assert not all(all(row) for row in pattern), "the stream is too short to leave anything unscored"
    for key in ("accuracy_matrix", "task_masked_accuracy_matrix", "validation_accuracy_matrix"):
        if full.get(key) is None:
            continue
        for i, (a, b) in enumerate(zip(full[key], cheap[key])):
            for j, (x, y) in enumerate(zip(a, b)):
                # evaluation draws no random numbers, so training is the same and scored entries agree exactly
                assert (y == x) if pattern[i][j] else (y is None), (key, i, j, x, y)
    assert cheap["initial_accuracy"] == full["initial_accuracy"]
    for metric, value in full["metrics"].items():
        if metric not in MAX_OVER_EARLIER_ROWS:
            assert cheap["metrics"][metric] == value, metric       # exactly
    # the max-based forgettings: the full matrix's value with the max over the scored rows
    masked = [[x if pattern[i][j] else None for j, x in enumerate(row)] for i, row in enumerate(full["accuracy_matrix"])]
    sizes = [t["n_test"] for t in full["stream"]["eval_tasks"]]
    assert cheap["metrics"] == {**full["metrics"], **{k: v for k, v in M.compute_all(
        masked, full["initial_accuracy"], L, task_sizes=sizes).items() if k in MAX_OVER_EARLIER_ROWS}}
    for metric, value in (full.get("validation_metrics") or {}).items():
        if metric not in MAX_OVER_EARLIER_ROWS:
            assert cheap["validation_metrics"][metric] == value, metric
    for model, entry in (full.get("extra_models") or {}).items():
        assert cheap["extra_models"][model]["acc"] == entry["acc"]
        assert cheap["extra_models"][model]["bwt"] == entry["bwt"]
    if "anytime" in full:   # anytime points score every task under both schedules; learning curves agree
        for key in ("accuracy", "acc_seen", "auc", "learning_curves"):
            assert cheap["anytime"][key] == full["anytime"][key], key
    assert cheap["config"]["eval"]["schedule"] == "seen_next" and full["config"]["eval"]["schedule"] == "full"
    assert cheap["config_hash"] != full["config_hash"]       # a different R: a different configuration


def test_seen_next_evaluates_fewer_tasks_and_full_is_the_default():
    """The saving is real (the skipped tasks are never run through the model); full stays the default, since
    A-GEM's forgetting reads entries seen_next leaves out."""
    overrides = tiny_overrides("domain-il", "naive", ["scenario.n_experiences=6"])
    assert compose(overrides)["eval"]["schedule"] == "full"
    counts = {}
    for schedule in ("full", "seen_next"):
        run = prepare(compose([*overrides, f"eval.schedule={schedule}"]))
        calls = []
        predict = run.strategy.predict
        run.strategy.predict = lambda x, task_id=None: (calls.append(len(x)), predict(x, task_id))[1]
        execute(run, None)
        counts[schedule] = sum(calls)
    T, per_task = 6, counts["full"] // (7 * 6)
    assert counts["full"] == (T + 1) * T * per_task
    # before training T, after experience i < T-1 the i+1 learned tasks and the next, after the last T
    assert counts["seen_next"] == (T + sum(min(i + 2, T) for i in range(T - 1)) + T) * per_task


def test_schedule_is_a_declared_key():
    with pytest.raises(ConfigError, match="eval.schedule"):
        compose(["eval.schedule=sometimes"])
    run = prepare(compose(tiny_overrides("class-il")))
    with pytest.raises(ConfigError, match="eval.schedule"):
        Evaluator(run.stream, schedule="sometimes")


# ----- the metrics on unscored entries -----------------------------------------------------------------
N = None


def test_metrics_read_no_unscored_entry_and_refuse_a_missing_one():
    # 4 tasks; rows 0 and 1 leave the tasks two or more ahead unscored (seen_next); the final row is whole
    R = [[0.9, 0.1, N, N],
         [0.7, 0.8, 0.2, N],
         [0.6, 0.7, 0.9, 0.1],
         [0.5, 0.6, 0.8, 0.9]]
    b = [0.1, 0.1, 0.1, 0.1]
    out = M.compute_all(R, b, task_sizes=[10, 10, 10, 10])
    assert out["acc"] == pytest.approx(0.7)
    assert out["fwt"] == pytest.approx(np.mean([0.1 - 0.1, 0.2 - 0.1, 0.1 - 0.1]))
    # max over the scored rows: task 2's max is 0.9 (row 2), not an unscored entry
    assert out["forgetting"] == pytest.approx(np.mean([0.9 - 0.5, 0.8 - 0.6, 0.9 - 0.8]))
    assert out["forgetting_max_incl_last"] == pytest.approx(out["forgetting"])
    assert all(v is None or np.isfinite(v) for v in out.values())
    for i, j in ((3, 2), (1, 2), (0, 0)):     # the final row, the "next" task, a learned task: always scored
        bad = [row[:] for row in R]
        bad[i][j] = None
        with pytest.raises(ValueError, match=rf"R\[{i}\]\[{j}\] is missing"):
            M.compute_all(bad, b)


def test_unscored_entries_change_no_metric_on_random_matrices():
    """Whatever the skipped entries hold, the metrics that do not take a max over earlier rows are unchanged;
    the two max-based forgettings are unchanged as long as no skipped entry exceeds the task's later maximum
    (the one case where they differ is the next test)."""
    rng = np.random.default_rng(0)
    for trial in range(50):
        T = int(rng.integers(2, 8))
        L = sorted(rng.integers(0, T, T)) if trial % 3 == 0 else list(range(T))
        L = [int(min(v, T - 1)) for v in L]
        R = rng.uniform(0.2, 1.0, (T, T))
        pattern = _expected_pattern(L, T)
        for i in range(T):
            for j in range(T):
                if not pattern[i][j]:
                    R[i, j] = rng.uniform(0.0, 0.2)      # below every scored entry
        cheap = [[R[i, j] if pattern[i][j] else None for j in range(T)] for i in range(T)]
        b, ref = rng.uniform(0, 1, T).tolist(), rng.uniform(0, 1, T).tolist()
        sizes = rng.integers(1, 50, T).tolist()
        out = M.compute_all(cheap, b, L, reference=ref, task_sizes=sizes)
        assert out == pytest.approx(M.compute_all(R.tolist(), b, L, reference=ref, task_sizes=sizes), abs=1e-15)
        assert "intransigence" in out


def test_the_one_difference_pre_learning_accuracy_above_every_later_one():
    """A-GEM's forgetting takes the max over every earlier row, including rows before the task's experience;
    seen_next does not score those (Mammoth does not either), so the two differ when a task scored higher
    long before it was learned than at any point from the row before its experience on (it happens on real runs:
    docs/speed.md, benchmarks/eval_schedule_check.py)."""
    R = [[0.9, 0.5, 0.6],     # task 2 at 0.6 before anything about it was learned ...
         [0.8, 0.9, 0.3],     # ... then 0.3 in the row before its experience
         [0.7, 0.8, 0.5]]
    cheap = [[0.9, 0.5, None], R[1], R[2]]
    assert M.forgetting(R) == pytest.approx(M.forgetting(cheap))        # task 2 is the last: not averaged
    R4 = [row + [v] for row, v in zip(R, (0.95, 0.1, 0.2))] + [[0.6, 0.7, 0.4, 0.9]]
    cheap4 = [[0.9, 0.5, None, None], [0.8, 0.9, 0.3, None], R4[2], R4[3]]
    assert M.forgetting(R4) != pytest.approx(M.forgetting(cheap4))      # task 3 scored 0.95 before its time


# ----- readers ---------------------------------------------------------------------------------------------
def test_readers_handle_unscored_entries(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    from clbench.plots import heatmap_figure, task_curves_figure
    from clbench.report import aggregate
    result, _ = _run(tiny_overrides("class-il", "replay"), "seen_next")
    R = result["accuracy_matrix"]
    assert any(v is None for row in R for v in row)
    text = format_matrix(R, result["initial_accuracy"])
    assert text.count("   -  ") == sum(v is None for row in R for v in row)
    fig = heatmap_figure(result)
    labels = [t.get_text() for t in fig.axes[0].texts]
    assert "nan" not in labels and len(labels) == sum(v is not None for row in [result["initial_accuracy"], *R]
                                                      for v in row)
    task_curves_figure([result, result])
    json.loads(json.dumps(result))          # null in the JSON file
    rows = aggregate([result])
    assert rows[0]["metrics"]["acc"]["mean"] == result["metrics"]["acc"]


def test_result_schema_takes_seen_next_nulls_only_where_unscored():
    """A seen_next result.json is a valid result (sweeps and report read it through result_problems); a null the
    schedule scores (final row) or any null under full is refused with one line naming the entry."""
    from clbench.schema import result_problems
    result, _ = _run(tiny_overrides("class-il", "replay", ["eval.validation=0.25"]), "seen_next")
    result = json.loads(json.dumps(result))
    assert any(v is None for row in result["accuracy_matrix"] for v in row)
    assert result_problems(result) == []
    final = json.loads(json.dumps(result))
    final["accuracy_matrix"][-1][0] = None
    assert result_problems(final) == ["accuracy_matrix[%d][0] is null (unscored) but eval.schedule=seen_next "
                                      "scores it (a task learned by the next experience, or the final row)"
                                      % (len(result["accuracy_matrix"]) - 1)]
    as_full = json.loads(json.dumps(result))
    as_full["config"]["eval"]["schedule"] = "full"
    assert any("eval.schedule=full scores every entry" in p for p in result_problems(as_full))


def test_mean_over_seeds_leaves_unscored_entries_blank():
    """The seed mean of seen_next matrices (report, leaderboard heat map) keeps the scored entries and leaves
    the unscored ones NaN, rather than dropping every seed."""
    m = M.mean_std([[[0.5, None], [0.4, 0.6]], [[0.7, None], [0.6, 0.8]]])
    assert m["n"] == 2 and np.isnan(m["mean"][0][1]) and np.isnan(m["std"][0][1])
    assert m["mean"][0][0] == pytest.approx(0.6) and m["mean"][1].tolist() == pytest.approx([0.5, 0.7])


def test_wandb_log_row_skips_unscored_entries():
    from clbench.evaluator import EvalRow
    from clbench.loggers import WandbLogger

    class FakeRun:
        def __init__(self):
            self.logged = []

        def log(self, data):
            self.logged.append(data)

    class FakeStream:
        @staticmethod
        def learned_rows():
            return [0, 1, 2]

    lg = WandbLogger.__new__(WandbLogger)
    lg.run = FakeRun()
    run = type("Run", (), {"stream": FakeStream()})()
    lg.log_row(run, 0, EvalRow(acc=[0.9, 0.2, None], acc_task_masked=[0.9, 0.5, None]))
    data = lg.run.logged[-1]
    assert data["eval/acc_task0"] == 0.9 and "eval/acc_task2" not in data and "eval/acc_all" not in data
    assert lg.run is not None                 # no exception turned into a "W&B failed" warning
    lg.log_row(run, 2, EvalRow(acc=[0.5, 0.6, 0.7], acc_task_masked=[0.5, 0.6, 0.7]))
    assert lg.run.logged[-1]["eval/acc_all"] == pytest.approx(0.6)


def test_leaderboard_takes_seen_next_runs_and_refuses_nulls_a_metric_reads(tmp_path):
    """A submission of seen_next runs validates, verifies by re-running and renders; a null where every schedule
    scores (here the final row) is a range error; an old config without eval.schedule re-runs as full."""
    from clbench.engine import run as run_one
    from clbench.leaderboard import build_submission, save_submission, validate_submission
    from clbench.config import config_hash
    from clbench.leaderboard.render import write_heatmap
    from clbench.leaderboard.submission import run_config
    from clbench.leaderboard.verify import rerun_config, verify_submission
    base = ["benchmark=split-digits", "train.epochs=1", "wandb.mode=disabled", "progress=false",
            "strategy=naive", "eval.schedule=seen_next", f"out={tmp_path / 'runs'}"]
    for seed in (0, 1, 2):
        run_one(compose([*base, f"seed={seed}"]), console=False)
    sub = build_submission([tmp_path / "runs"])
    assert any(v is None for r in sub["runs"] for row in r["accuracy_matrix"] for v in row)
    assert validate_submission(sub) == []
    path = save_submission(sub, tmp_path / "subs")
    rec = verify_submission(path, seeds=[2])
    assert rec["passed"] and rec["seeds"][0]["max_abs_diff"] == 0.0, rec["seeds"][0]["reason"]
    assert write_heatmap(sub, tmp_path / "h.png").stat().st_size > 1000
    bad = json.loads(json.dumps(sub))
    bad["runs"][0]["accuracy_matrix"][-1][0] = None
    assert [i.code for i in validate_submission(bad)] == ["range"]
    old = json.loads(json.dumps(sub))
    del old["config"]["eval"]["schedule"]          # written before the key existed: it scored every entry
    for r in old["runs"]:
        r["run_config_hash"] = config_hash(run_config(old["config"], r["seed"], r["stream_seed"]))
    assert rerun_config(old, 0, "cpu", str(tmp_path / "o"), "data")["eval"]["schedule"] == "full"
