"""The first-k prefix stream (first_experiences) and the record of how a config was chosen (config_source).
The validation split itself (disjoint, stratified, seeded; test-free runs) is tested in tests/test_plugin_kit.py."""
from clbench.config import compose
from clbench.engine import run

FAST = ["benchmark=split-digits", "strategy=naive", "dataset.train_per_class=40", "train.epochs=1",
        "wandb.mode=disabled", "progress=false", "checkpoint.enabled=false"]


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


def test_the_board_lists_the_same_hand_set_overrides_that_classify_a_run():
    """Earlier `+callbacks.<name>.<key>=v` made a run "hand-set" while the board's record of it listed no
    override: the two read override keys by different rules. Now one rule (config.hand_set) serves both."""
    from clbench.leaderboard.selection import record
    src = {"overrides": ["+callbacks.refresh.lr=0.1", "seed=1", "+train.lr=0.2", "benchmark=split-digits"]}
    assert record(src) == {"kind": "hand-set", "overrides": ["+callbacks.refresh.lr=0.1", "+train.lr=0.2"]}
    assert record({"overrides": ["seed=1", "model.bias=false"]})["kind"] == "default"
