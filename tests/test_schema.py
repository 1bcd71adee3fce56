"""The one result schema (clbench.schema): the bounded JSON loader, result.json v2 (migration, damage
detection in every reader), the one metrics function and the one mean ± std helper, and the generated docs."""
import copy
import json
import math
from pathlib import Path

import pytest

from clbench import metrics as M
from clbench import schema as S
from clbench.cli import main
from clbench.config import compose
from clbench.engine import run
from clbench.errors import ResultFileError, SubmissionError
from clbench.leaderboard.submission import seed_metrics, seed_record
from clbench.report import load_results
from clbench.results import REQUIRED_KEYS, is_complete, load_result, write_json_atomic

REPO = Path(__file__).resolve().parents[1]
FAST = ["benchmark=split-digits", "train.epochs=1", "wandb.mode=disabled", "progress=false"]


# ----- the bounded loader ---------------------------------------------------------------------------------
@pytest.mark.parametrize("text, why", [
    ('{"seed": ' + "9" * 400 + "}", "an integer with 400 digits"),
    ('{"seed": ' + "9" * 5000 + "}", "an integer with 5000 digits"),      # Python's int() alone would raise
    ('{"seed": 9223372036854775808}', "does not fit in 64 bits"),
    ('{"acc": NaN}', "NaN is not a JSON number"),
    ('{"acc": -Infinity}', "-Infinity is not a JSON number"),
    ('{"acc": 1e999}', "out of range"),
    ('{"acc": 0.1, "acc": 0.9}', "appears twice"),
    ("[" * 100_000 + "]" * 100_000, "nested deeper than 32 levels"),    # RecursionError inside json
    ("[" * 40 + "]" * 40, "nested deeper than 32 levels"),              # parses, refused before any walk
    ('{"a": ', "not valid JSON"),
    ("", "not valid JSON"),
])
def test_loader_refuses_with_one_line(text, why):
    with pytest.raises(ResultFileError) as e:
        S.loads(text, "f.json")
    assert why in str(e.value) and str(e.value).startswith("f.json: ") and "\n" not in str(e.value)


def test_loader_accepts_ordinary_json_and_the_depth_limit_exactly():
    assert S.loads('{"a": [1, 2.5, -3, null, true, "x"]}') == {"a": [1, 2.5, -3, None, True, "x"]}
    assert S.loads("[" * 32 + "]" * 32) is not None
    assert S.loads(b'\xef\xbb\xbf{"a": 1}') == {"a": 1}                   # a UTF-8 byte-order mark is fine
    with pytest.raises(SubmissionError, match="not UTF-8"):
        S.loads(b'{"a": "\xff"}', "x", SubmissionError)


def test_size_is_checked_before_reading(tmp_path):
    big = tmp_path / "big.json"
    with open(big, "wb") as f:                     # 50 MB of valid JSON: refused by its size alone
        f.write(b'{"notes": "')
        f.seek(50 * 2**20)
        f.write(b'"}')
    with pytest.raises(SubmissionError, match="over the limit of 16777216 bytes"):
        S.read_json(big, S.MAX_SUBMISSION_BYTES, SubmissionError)
    with pytest.raises(ResultFileError, match="no such file"):
        S.read_json(tmp_path / "nope.json", 10)


# ----- result.json v2 ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("schema_runs")
    r, path = run(compose([*FAST, "strategy=replay", f"out={out}", "eval.every_steps=20"]), console=False)
    return {"r": json.loads((path / "result.json").read_text()), "path": path}


def test_engine_writes_a_valid_v2_result(result):
    r = result["r"]
    assert r["schema_version"] == 2 and S.result_problems(r) == []
    assert set(REQUIRED_KEYS) <= set(r) and "stream_seed" in REQUIRED_KEYS
    assert load_result(result["path"]) == r and is_complete(result["path"])


def _damaged(tmp_path, r, name="bad"):
    folder = tmp_path / name
    write_json_atomic(folder / "result.json", r)
    return folder


@pytest.mark.parametrize("edit, why", [
    (lambda r: r.update(accuracy_matrix=[[7.0]]), "accuracy_matrix[0][0]: 7.0 is greater than the maximum of 1"),
    (lambda r: r.update(config="oops"), "config: 'oops' is not of type 'object'"),
    (lambda r: r.update(metrics=[0.5]), "metrics: [0.5] is not of type 'object'"),
    (lambda r: r.update(stream=5), "stream: 5 is not of type 'object'"),
    (lambda r: r["timing"].pop("total_s"), "'total_s' is a required property"),
    (lambda r: r.update(seed=True), "seed: True is not of type 'integer'"),
    (lambda r: r.update(seed=1.0), "seed: 1.0 is not of type 'integer'"),
    (lambda r: r["accuracy_matrix"].pop(), "stream.n_experiences is 5 but accuracy_matrix is 4 x 5"),
    (lambda r: r["metrics"].update(acc=0.99), "metrics.acc is 0.99 but R gives"),
    (lambda r: r["config"]["train"].update(lr=0.5), "config_hash does not match the config"),
    (lambda r: r.update(schema_version=3), "schema_version 3 is newer than this clbench reads (2)"),
    (lambda r: r.update(extra_models={"stable": {"accuracy_matrix": [[0.5]]}}), "extra_models.stable.accuracy_matrix"),
])
def test_every_reader_refuses_a_damaged_result(result, tmp_path, capsys, edit, why):
    r = copy.deepcopy(result["r"])
    edit(r)
    folder = _damaged(tmp_path, r)
    with pytest.raises(ResultFileError) as e:
        load_result(folder)
    assert why in str(e.value) and str(folder / "result.json") in str(e.value)
    assert not is_complete(folder)                               # a sweep re-runs it
    assert "counts as not finished" in capsys.readouterr().err
    assert load_results(folder) == []                            # report skips it with one line
    assert why in capsys.readouterr().err


def test_report_skips_damaged_files_and_reports_the_rest(result, tmp_path, capsys):
    """issue 13: config as a string or metrics as a list crashed `report`; R = [[7.0]] counted as complete."""
    good = copy.deepcopy(result["r"])
    write_json_atomic(tmp_path / "good" / "result.json", good)
    for name, edit in (("cfg", lambda r: r.update(config="oops")), ("met", lambda r: r.update(metrics=[1])),
                       ("r7", lambda r: r.update(accuracy_matrix=[[7.0]]))):
        r = copy.deepcopy(good)
        edit(r)
        _damaged(tmp_path, r, name)
    assert main(["report", str(tmp_path), "--no-figures"]) == 0
    captured = capsys.readouterr()
    assert "1 run(s) in 1 configuration(s)" in captured.out
    assert captured.err.count("clbench report: skipping") == 3


def test_unknown_keys_are_kept_and_v1_files_are_migrated(result, tmp_path):
    r = copy.deepcopy(result["r"])
    r["a_future_key"] = {"x": 1}                                  # forward compatible
    r["provenance"] = {"clbench": "0.2", "git": {"commit": "abc", "dirty": False}}
    r["logs"] = {"loss": {"step": [1, 2], "value": [0.5, None]}}
    r["memory"]["bytes"] = 12345
    assert S.result_problems(r) == []
    v1 = copy.deepcopy(result["r"])
    v1["schema_version"] = 1
    del v1["stream_seed"]
    loaded = load_result(_damaged(tmp_path, v1, "v1"))
    assert loaded["schema_version"] == 2 and loaded["stream_seed"] == v1["config"]["stream_seed"]
    r["logs"]["loss"]["value"][0] = "high"                         # a known key keeps its type
    assert any("logs.loss.value[0]" in p for p in S.result_problems(r))


def test_a_test_free_tuning_trial_result_is_valid_and_cannot_claim_test_numbers(tmp_path):
    """A `clbench tune` trial runs with eval.test=false: its test keys are null, only the validation R exists.
    The v2 schema refused such a result (accuracy_matrix must be an array), so a resumed tune could not read
    its finished trials back."""
    _, path = run(compose([*FAST, "strategy=naive", "dataset.train_per_class=10", "eval.test=false",
                           "eval.validation=0.1", f"out={tmp_path}"]), console=False)
    r = load_result(path)
    assert r["accuracy_matrix"] is None and len(r["validation_accuracy_matrix"]) == 5 and is_complete(path)
    bad = copy.deepcopy(r)
    bad["metrics"]["acc"] = 0.99                                   # a test number without a test split
    assert "claimed by a run without a test split" in S.result_problems(bad)[0]
    bad = copy.deepcopy(r)
    del bad["validation_accuracy_matrix"]                          # then nothing was measured at all
    assert "'validation_accuracy_matrix' is a required property" in S.result_problems(bad)[0]
    bad = copy.deepcopy(r)
    bad["config"]["eval"]["test"] = True                           # a test run must carry its test R
    assert "accuracy_matrix: None is not of type 'array'" in S.result_problems(bad)


# ----- one metrics function, one mean ± std --------------------------------------------------------------
def test_engine_and_leaderboard_metrics_agree_in_every_setting(tmp_path):
    """They disagreed: the engine wrote acc_task_masked only in class-IL, validate recomputed it for every
    setting from the task-masked matrix. Now both call clbench.metrics.summarize."""
    for scenario in ("class_incremental", "task_incremental"):
        _, path = run(compose([*FAST, "strategy=naive", f"scenario.name={scenario}", f"out={tmp_path}"]),
                      console=False)
        r = load_result(path)
        rec = seed_record(r)
        assert seed_metrics(rec, r["stream"]["setting"]) == r["metrics"] == rec["metrics"]
        assert ("acc_task_masked" in r["metrics"]) == (scenario == "class_incremental")


def test_summarize_on_a_hand_computed_matrix():
    R = [[0.9, 0.1], [0.6, 0.8]]
    Rm = [[1.0, 0.5], [0.9, 1.0]]
    m = M.summarize(R, [0.5, 0.4], [0, 1], setting="class-il", task_masked=Rm, anytime_acc_seen=[0.9, None, 0.7])
    assert m["acc"] == pytest.approx(0.7) and m["bwt"] == pytest.approx(-0.3) and m["fwt"] == pytest.approx(-0.3)
    assert m["acc_task_masked"] == pytest.approx(0.95) and m["anytime_acc_auc"] == pytest.approx(0.8)
    assert "acc_task_masked" not in M.summarize(R, [0.5, 0.4], setting="domain-il", task_masked=Rm)


def test_mean_std_is_the_sample_std_and_skips_undefined_values():
    s = M.mean_std([0.2, 0.4, None, float("nan"), 0.9])
    assert s["n"] == 3 and s["mean"] == pytest.approx(0.5)
    assert s["std"] == pytest.approx(math.sqrt(((0.3 ** 2) + (0.1 ** 2) + (0.4 ** 2)) / 2))
    assert M.mean_std([0.3]) == {"mean": 0.3, "std": None, "n": 1}
    assert M.mean_std([None]) == {"mean": None, "std": None, "n": 0}
    arr = M.mean_std([[[0.0, 1.0]], [[1.0, 1.0]]])                # matrices: element-wise
    assert arr["mean"].tolist() == [[0.5, 1.0]] and arr["std"][0, 0] == pytest.approx(math.sqrt(0.5))


# ----- the docs are generated from the schema -----------------------------------------------------------------
@pytest.mark.parametrize("kind, doc", [("result", "docs/results.md"), ("submission", "docs/leaderboard.md"),
                                       ("verification", "docs/leaderboard.md")])
def test_docs_carry_the_generated_field_table(kind, doc):
    table = S.field_table(kind, S.DOC_NESTED[kind])
    assert table in (REPO / doc).read_text(), \
        f"{doc} is out of step with clbench/schemas/{kind}.json: paste `python -m clbench.schema {kind}`"


def test_the_schemas_are_valid_json_schema():
    from jsonschema import Draft202012Validator
    for kind in S.KINDS:
        Draft202012Validator.check_schema(S.schema(kind))
