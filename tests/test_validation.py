"""Validation streams: the split held out of the training data (eval.validation), test-free runs (eval.test=false),
the first-k prefix stream (first_experiences) and the record of how a config was chosen (config_source)."""
import torch

from clbench.config import compose
from clbench.data import TensorDataset
from clbench.engine import build_stream, run
from clbench.registry import DATASETS

FAST = ["benchmark=split-digits", "strategy=naive", "dataset.train_per_class=40", "train.epochs=1",
        "wandb.mode=disabled", "progress=false", "checkpoint.enabled=false"]


def load_ids(root=None, download=False) -> TensorDataset:
    """Every sample's input is its id: train ids 0..N-1, test ids 100000+ (so splits can be compared by id)."""
    g = torch.Generator().manual_seed(0)
    y_tr = torch.randint(0, 10, (500,), generator=g)
    y_te = torch.randint(0, 10, (100,), generator=g)
    x_tr = torch.arange(500, dtype=torch.float32)[:, None]
    x_te = 100000 + torch.arange(100, dtype=torch.float32)[:, None]
    return TensorDataset("ids", x_tr, y_tr, x_te, y_te, n_classes=10, input_shape=(1,), scale=1.0, mean=(0.0,),
                         std=(1.0,))


def _ids(cfg):
    stream = build_stream(cfg, torch.device("cpu"))
    train = [int(v) for e in stream for v in e.train.get(torch.arange(len(e.train))).x[:, 0]]
    val = [int(v) for t in stream.val_tasks for v in t.test.get(torch.arange(len(t.test))).x[:, 0]]
    test = [int(v) for t in stream.eval_tasks for v in t.test.get(torch.arange(len(t.test))).x[:, 0]]
    return stream, train, val, test


def test_validation_and_test_splits_are_disjoint_and_stable_under_the_stream_seed(tmp_path):
    DATASETS.register("ids_test", load_ids)
    try:
        base = ["benchmark=split-digits", "dataset.name=ids_test", "eval.validation=0.25", f"out={tmp_path}"]
        stream, train, val, test = _ids(compose([*base, "seed=0", "stream_seed=7"]))
        assert not set(train) & set(val) and not set(val) & set(test) and not set(train) & set(test)
        assert sorted(train + val) == list(range(500))          # the hold-out comes out of the training data
        y = load_ids().y_train
        for c in range(10):                                     # stratified: a quarter of each class
            n_c = int((y == c).sum())
            assert sum(int(y[i]) == c for i in val) == min(max(round(0.25 * n_c), 1), n_c - 1)
        assert [t.classes for t in stream.val_tasks] == [t.classes for t in stream.eval_tasks]   # same columns
        _, _, val_again, _ = _ids(compose([*base, "seed=3", "stream_seed=7"]))       # another training seed
        _, _, val_other, _ = _ids(compose([*base, "seed=0", "stream_seed=8"]))       # another stream seed
        assert sorted(val_again) == sorted(val) and sorted(val_other) != sorted(val)
    finally:
        DATASETS.unregister("ids_test")


def test_a_test_free_run_measures_the_validation_matrix(tmp_path):
    result, _ = run([*FAST, "eval.validation=0.2", "eval.test=false", f"out={tmp_path}"], console=False)
    assert result["accuracy_matrix"] is None and result["metrics"] == {}
    V = result["validation_accuracy_matrix"]
    assert len(V) == 5 and all(len(row) == 5 for row in V)
    assert result["validation_metrics"]["acc"] == sum(V[-1]) / 5
    assert [t["n_val"] for t in result["stream"]["val_tasks"]] == [16, 16, 16, 16, 16]   # 0.2 of 40 per class x 2
    assert result["stream"]["n_eval_tasks"] == 0


def test_first_experiences_cuts_the_stream_and_its_columns(tmp_path):
    full, _ = run([*FAST, "eval.validation=0.2", f"out={tmp_path}"], console=False)
    cut, _ = run([*FAST, "eval.validation=0.2", "first_experiences=2", f"out={tmp_path}"], console=False)
    assert len(cut["accuracy_matrix"]) == 2 and len(cut["accuracy_matrix"][0]) == 2
    assert cut["accuracy_matrix"] == [row[:2] for row in full["accuracy_matrix"][:2]]   # the same first two rows
    assert cut["validation_accuracy_matrix"] == [row[:2] for row in full["validation_accuracy_matrix"][:2]]
    assert cut["stream"]["first_experiences"] == {"k": 2, "of": 5}
    assert "first_experiences" not in full["config"]          # the whole stream keeps its config hash
    assert cut["config_hash"] != full["config_hash"]


def test_config_source_says_how_the_config_was_chosen():
    assert compose(["strategy=naive"])["config_source"]["chosen_by"] == "default"
    assert compose(["benchmark=split-mnist", "strategy=der"])["config_source"]["chosen_by"] == "preset"  # shipped
    assert compose(["strategy=naive", "train.lr=0.1"])["config_source"]["chosen_by"] == "hand-set"
    assert compose(["strategy=naive", "model.bias=false", "seed=3"])["config_source"]["chosen_by"] == "default"
    record = {"tool": "clbench tune", "protocol": "full"}
    assert compose(["strategy=naive", "train.lr=0.1"], tuning=record)["config_source"]["chosen_by"] == "tuned"
