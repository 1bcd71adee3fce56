"""The few-shot scenario: n_way distinct classes per session, k_shot fresh training images per class (the only
training data), n_query fresh test images per class, all drawn from the stream seed; task-IL."""
import pytest
import torch

from clbench.config import ConfigError, compose
from clbench.engine import prepare, run

torch.set_num_threads(1)
DIGITS = ["benchmark=split-digits", "scenario.name=few_shot", "scenario.n_experiences=6", "scenario.n_way=3",
          "scenario.k_shot=4", "scenario.n_query=5", "device=cpu", "wandb.mode=disabled", "progress=false"]


def stream(*extra):
    return prepare(compose([*DIGITS, "strategy=naive", *extra])).stream


def test_sessions_are_n_way_k_shot_with_fresh_images():
    s = stream()
    assert s.setting == "task-il" and len(s.experiences) == 6 and len(s.eval_tasks) == 6
    seen_train, seen_test = set(), set()
    for e, t in zip(s.experiences, s.eval_tasks):
        assert e.task_visible_at_test and len(e.classes) == 3 and e.classes == t.classes
        y = e.train.y[e.train.indices]
        assert sorted(torch.bincount(y, minlength=10)[e.classes].tolist()) == [4, 4, 4] and len(y) == 12
        yq = t.test.y[t.test.indices]
        assert torch.bincount(yq, minlength=10)[e.classes].tolist() == [5, 5, 5] and len(yq) == 15
        tr, te = set(e.train.indices.tolist()), set(t.test.indices.tolist())
        assert not tr & seen_train and not te & seen_test         # no image in two sessions
        seen_train |= tr
        seen_test |= te
    # classes are drawn with replacement across sessions (digits has 10)
    assert len({c for e in s.experiences for c in e.classes}) <= 10


def test_sessions_come_from_the_stream_seed():
    a, b, c = stream("seed=0"), stream("seed=0", "stream_seed=0", "seed=5"), stream("seed=1")
    key = lambda s: [(e.classes, e.train.indices.tolist()) for e in s.experiences]  # noqa: E731
    assert key(a) == key(b) and key(a) != key(c)
    assert a.describe()["session_classes"] == [e.classes for e in a.experiences]


def test_too_many_sessions_for_the_pool_is_refused():
    with pytest.raises(ConfigError, match="runs out of fresh images"):
        stream("scenario.n_experiences=200", "scenario.k_shot=10")


def test_a_run_with_a_validation_split_and_the_masked_heads(tmp_path):
    result, _ = run([*DIGITS, "strategy=replay", "train.epochs=3", "eval.validation=0.2", f"out={tmp_path}"],
                    console=False)
    R = result["accuracy_matrix"]
    assert len(R) == 6 and all(len(r) == 6 for r in R)
    assert result["metrics"]["learning_accuracy"] > 0.5           # 3-way tasks from 4 shots are learnable
    assert len(result["validation_accuracy_matrix"]) == 6


def test_options_are_declared_and_checked_at_compose():
    with pytest.raises(ConfigError, match="'scenario.n_way'"):
        compose([*DIGITS, "scenario.n_way=1"])
    with pytest.raises(ConfigError, match="'scenario.k_shot'"):
        compose([*DIGITS, "scenario.k_shot=two"])
    with pytest.raises(ConfigError, match="scenario.shots"):
        compose([*DIGITS, "scenario.shots=3"])
    with pytest.raises(ConfigError, match="'scenario.n_way': 12 classes per session but the dataset has 10"):
        stream("scenario.n_way=12")


def test_sessions_heads_are_declared_and_a_strategy_reaches_no_evaluation_data(tmp_path):
    from clbench.engine import execute
    from clbench.testing import reachable_storages
    r = prepare(compose([*DIGITS, "strategy=replay", "eval.validation=0.2", f"out={tmp_path}"]))
    assert r.strategy.info.task_classes == {e.index: e.classes for e in r.stream.experiences}
    execute(r, None)
    ds = r.stream.dataset
    forbidden = {t.untyped_storage().data_ptr(): name for name, t in
                 (("test x", ds.x_test), ("test y", ds.y_test), ("validation x", ds.x_val),
                  ("train x (all sessions)", ds.x_train))}
    found: dict = {}
    reachable_storages(r.strategy, set(), found)
    assert not {forbidden[p] for p in found if p in forbidden}
