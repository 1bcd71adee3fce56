"""End to end on the embedded digits benchmark: the CLI, result.json, config errors, failure safety,
plugin discovery, anytime evaluation and intransigence against a joint reference."""
import time
from importlib.metadata import entry_points

import numpy as np
import pytest

from clbench import cli
from clbench import metrics as M
from clbench.config import ConfigError
from clbench.engine import run
from clbench.registry import DATASETS, MODELS, SCENARIOS, STRATEGIES
from clbench.results import REQUIRED_KEYS, load_result
from clbench.strategy import Strategy

FAST = ["train.epochs=1", "progress=false", "wandb.mode=disabled", "device=cpu"]


def test_default_cli_run_writes_a_complete_result(tmp_path, capsys):
    t0, c0 = time.perf_counter(), time.process_time()
    assert cli.main(["run", f"out={tmp_path}", "progress=false"]) == 0     # the embedded default, W&B offline
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    out = capsys.readouterr().out.strip().splitlines()
    path = tmp_path / out[-1].split("/")[-1]
    assert out[-1] == str(path)                      # the last line is the run folder
    assert "W&B offline run" in out[-2]
    r = load_result(path)
    for key in (*REQUIRED_KEYS, "stream_seed", "task_masked_accuracy_matrix", "initial_task_masked_accuracy",
                "per_class_accuracy", "strategy_state", "memory", "wandb_dir"):
        assert key in r, key
    R = np.asarray(r["accuracy_matrix"])
    assert R.shape == (5, 5) and len(r["initial_accuracy"]) == 5
    assert ((R >= 0) & (R <= 1)).all()
    assert r["stream"]["learned_at"] == [0, 1, 2, 3, 4]
    assert len(r["per_class_accuracy"]) == 5 and set(r["per_class_accuracy"][-1]) == {str(c) for c in range(10)}
    # the stored metrics are exactly the pure functions of the stored matrix
    sizes = [t["n_test"] for t in r["stream"]["eval_tasks"]]
    expected = M.compute_all(r["accuracy_matrix"], r["initial_accuracy"], r["stream"]["learned_at"], task_sizes=sizes)
    for name, value in expected.items():
        assert r["metrics"][name] == pytest.approx(value), name
    assert r["metrics"]["acc_task_masked"] == pytest.approx(M.acc(r["task_masked_accuracy_matrix"]))
    assert r["metrics"]["acc"] > 0.5                  # replay on digits learns
    assert "anytime" not in r and "reference" not in r    # both off by default
    # budget: under 30 s. CPU time of this process (imports included) is what the harness costs; wall time
    # only gets a loose bound because test machines are often shared.
    assert cpu < 30 and elapsed < 120, f"default run took {elapsed:.1f}s wall, {cpu:.1f}s CPU"
    assert not list(tmp_path.glob(".*.partial"))


@pytest.mark.parametrize("args, message", [
    (["trian.lr=0.1"], "unknown config key 'trian'. Did you mean 'train'?"),
    (["strategy=replya"], "unknown strategy 'replya'. Did you mean 'replay'?"),
    (["benchmark=split-digit"], "Did you mean 'split-digits'?"),
    (["train.lr=-1"], "bad value for 'train.lr'"),
    (["eval.every_stepz=3"], "Did you mean 'every_steps'?"),
    (["eval.every_steps=-2"], "bad value for 'eval.every_steps'"),
    (["eval.reference=/no/such/run"], "bad value for 'eval.reference'"),
    (["wandb.mode=sometimes"], "bad value for 'wandb.mode'"),
])
def test_config_errors_are_actionable_and_write_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert cli.main(["run", f"out={out}", *FAST, *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


class Boom(Strategy):
    """fails in the middle of the second experience"""
    steps = 0

    def loss(self, batch):
        Boom.steps += 1
        if self.experience.index == 1 and Boom.steps > 3:
            raise RuntimeError("boom")
        return super().loss(batch)


def test_a_crashing_run_leaves_no_result_and_resumes_once_fixed(tmp_path):
    STRATEGIES.register("boom_test", Boom)
    Boom.steps = 0
    args = [f"out={tmp_path}", "strategy=boom_test", *FAST[:-2], "wandb.mode=offline", "device=cpu"]
    with pytest.raises(RuntimeError, match="boom"):
        run(args, console=False)
    # no run folder and no result anywhere: only the hidden working folder, holding the checkpoint of experience 0
    assert not [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    assert not list(tmp_path.rglob("result.json"))
    assert len(list(tmp_path.glob(".*.partial/checkpoint.pt"))) == 1
    # the bug fixed (the class no longer fails), the same command resumes after experience 0 and finishes
    Boom.steps = -10**9
    result, path = run(args, console=False)
    assert result["timing"]["segments"] == 2 and (path / "result.json").is_file()
    assert not list(tmp_path.glob(".*.partial"))
    STRATEGIES.unregister("boom_test")


def test_builtins_are_discovered_through_entry_points():
    groups = {"strategies": ("naive", "replay"), "scenarios": ("class_incremental",), "datasets": ("digits",),
              "models": ("mlp",)}
    registries = {"strategies": STRATEGIES, "scenarios": SCENARIOS, "datasets": DATASETS, "models": MODELS}
    for kind, names in groups.items():
        eps = {ep.name: ep for ep in entry_points(group=f"clbench.{kind}")}
        for name in names:
            assert name in eps, (kind, name)
            assert eps[name].value.startswith("clbench."), eps[name].value
            assert name in registries[kind].names()
            assert registries[kind].get(name) is eps[name].load()


def test_anytime_evaluation_records_curves_without_changing_training(tmp_path):
    plain, _ = run([f"out={tmp_path}", *FAST, "strategy=naive"], console=False)
    every = 10
    r, _ = run([f"out={tmp_path}", *FAST, "strategy=naive", f"eval.every_steps={every}",
                "eval.anytime_accuracy=seen_tasks"], console=False)   # the v1 rule, still nameable
    assert r["accuracy_matrix"] == plain["accuracy_matrix"]      # evaluation does not perturb training
    a = r["anytime"]
    total_steps = a["row_steps"][-1]
    assert a["step"] == list(range(every, total_steps + 1, every))
    assert len(a["accuracy"]) == len(a["step"]) and len(a["accuracy"][0]) == 5
    # acc_seen averages the tasks introduced up to the current experience
    k = 3
    seen = [acc for acc, L in zip(a["accuracy"][k], r["stream"]["learned_at"]) if L <= a["experience"][k]]
    assert a["acc_seen"][k] == pytest.approx(sum(seen) / len(seen))
    assert r["metrics"]["anytime_acc_auc"] == pytest.approx(np.mean(a["acc_seen"]))
    # learning curve of task 2: from the row before its experience to the row after it
    c = a["learning_curves"]["2"]
    assert c["experience"] == 2 and c["step_in_experience"][0] == 0
    assert c["accuracy"][0] == pytest.approx(r["accuracy_matrix"][1][2])
    assert c["accuracy"][-1] == pytest.approx(r["accuracy_matrix"][2][2])
    assert c["step_in_experience"] == sorted(c["step_in_experience"])


def test_intransigence_against_a_joint_reference_run(tmp_path):
    _, ref_path = run([f"out={tmp_path}", *FAST, "strategy=joint"], console=False)
    r, _ = run([f"out={tmp_path}", *FAST, "strategy=naive", f"eval.reference={ref_path}"], console=False)
    ref = load_result(ref_path)
    assert r["reference"]["kind"] == "final-joint"                 # joint trains once, at the end
    assert r["reference"]["accuracy"] == pytest.approx(ref["accuracy_matrix"][-1])
    diag = [r["accuracy_matrix"][j][j] for j in range(5)]
    assert r["metrics"]["intransigence"] == pytest.approx(np.mean(np.subtract(ref["accuracy_matrix"][-1], diag)))
    # a reference over different classes per task is refused before anything is written
    _, other = run([f"out={tmp_path / 'o'}", *FAST, "strategy=joint", "scenario.class_order=[9,8,7,6,5,4,3,2,1,0]"],
                   console=False)
    with pytest.raises(ConfigError, match="eval.reference.*classes"):
        run([f"out={tmp_path / 'x'}", *FAST, f"eval.reference={other}"], console=False)
    assert not (tmp_path / "x").exists()


def test_a_callback_keeps_the_strategy_preset():
    # derpp with the refresh callback on split-mnist uses derpp's tuned preset, as plain derpp does
    from clbench.config import compose
    plain = compose(["benchmark=split-mnist", "strategy=derpp"])["strategy"]
    wrapped = compose(["benchmark=split-mnist", "strategy=derpp", "callbacks=[refresh]"])
    assert wrapped["strategy"] == plain and plain["buffer_size"] == 500   # the preset's value, not the default
    assert set(wrapped["callbacks"]) == {"refresh"}


