"""clbench tune: the search space and its checks, the per-experience reports, the test split never touched, a tiny
tune that beats a deliberately bad default, an interrupted tune that resumes, and the tuning record carried into
the runs of the chosen configuration."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from clbench.config import ConfigError, compose
from clbench.data.digits import load_digits
from clbench.engine import run
from clbench.hparams import Domain
from clbench.registry import DATASETS
from clbench.tune import (RayReporter, declared_space, load_tuned, parse_domain, parse_tune_args, prefix_metric,
                          split_tuned)

REPO = Path(__file__).resolve().parents[1]
QUIET = ["wandb.mode=disabled", "progress=false"]


# ----- the search space ----------------------------------------------------------------------------------
def test_domains_parse_and_bad_ones_name_the_key():
    assert parse_domain("train.lr", "loguniform(1e-4, 0.1)") == Domain("loguniform", (1e-4, 0.1))
    assert parse_domain("strategy.buffer_size", "randint(10,50)") == Domain("randint", (10, 50))
    assert parse_domain("strategy.mode", "choice(a, 'b,c')") == Domain("choice", ("a", "b,c"))
    assert parse_domain("train.lr", "0.1") is None                    # a plain value is a fixed override
    for text, why in [("loguniform(0, 1)", "0 < low"), ("uniform(2, 1)", "low < high"),
                      ("randint(1.5, 3)", "two integers"), ("choice()", "at least one")]:
        with pytest.raises(ConfigError, match=f"'train.lr'.*{why}"):
            parse_domain("train.lr", text)


def test_a_domain_outside_the_declaration_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.momentum=uniform\(0.0, 2.0\).*train\.momentum.*<= 0\.999"):
        parse_tune_args(["strategy=naive", "train.momentum=uniform(0,2)", f"out={tmp_path}"])
    with pytest.raises(ConfigError, match="strategy 'naive' declares no key 'alpha'"):
        parse_tune_args(["strategy=naive", "strategy.alpha=uniform(0,2)", f"out={tmp_path}"])
    with pytest.raises(ConfigError, match="never evaluates the test split"):
        parse_tune_args(["strategy=naive", "eval.test=true", f"out={tmp_path}"])
    with pytest.raises(ConfigError, match="protocol=first-k needs first_k=K"):
        parse_tune_args(["strategy=naive", "protocol=first-k", f"out={tmp_path}"])


def test_the_default_space_is_every_declared_domain_plus_lr_minus_fixed_keys(tmp_path):
    spec = parse_tune_args(["strategy=ewc", f"out={tmp_path}"])
    assert set(spec.space) == {"train.lr", "strategy.ewc_lambda"} and spec.space_source == "declared"
    spec = parse_tune_args(["strategy=ewc", "train.lr=0.02", f"out={tmp_path}"])
    assert set(spec.space) == {"strategy.ewc_lambda"} and "train.lr=0.02" in spec.overrides
    assert set(declared_space(compose(["strategy=derpp"]))) == {"train.lr", "strategy.alpha", "strategy.beta"}
    spec = parse_tune_args(["strategy=ewc", "train.lr=choice(0.01,0.1)", f"out={tmp_path}"])
    assert spec.space == {"train.lr": Domain("choice", (0.01, 0.1))} and spec.space_source == "overrides"


def test_every_trial_runs_on_validation_only(tmp_path):
    spec = parse_tune_args(["strategy=naive", "eval.validation=0.2", "protocol=first-k", "first_k=2",
                            f"out={tmp_path}"])
    cfg = compose([*spec.overrides, *spec.trial_overrides()])
    assert cfg["eval"]["test"] is False and cfg["eval"]["validation"] == 0.2 and cfg["first_experiences"] == 2
    assert cfg["out"] == str(tmp_path.resolve() / "trials")


def test_the_benchmark_declares_its_tuning_protocol(tmp_path):
    bench = (REPO / "configs" / "benchmark" / "split-digits.yaml").read_text()
    path = tmp_path / "bench.yaml"
    path.write_text(bench + "protocol:\n  tuning: {budget: 7, validation: 0.3, protocol: first-k, first_k: 2, "
                            "metric: acc_over_time}\n")
    spec = parse_tune_args([f"benchmark={path}", "strategy=naive", f"out={tmp_path}"])
    assert (spec.budget, spec.validation, spec.protocol, spec.first_k, spec.metric) == \
        (7, 0.3, "first-k", 2, "acc_over_time")
    spec = parse_tune_args([f"benchmark={path}", "strategy=naive", "budget=3", "eval.validation=0.1",
                            f"out={tmp_path}"])
    assert (spec.budget, spec.validation) == (3, 0.1)                 # the command line wins
    path.write_text(bench + "protocol:\n  tuning: {budgett: 7}\n")
    with pytest.raises(ConfigError, match=r"unknown key 'budgett' in 'protocol.tuning' of benchmark .*budget"):
        parse_tune_args([f"benchmark={path}", "strategy=naive", f"out={tmp_path}"])


def test_a_space_file_with_an_unknown_key_is_refused_naming_it(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("space: {train.lr: loguniform(0.001, 0.1)}\nbudjet: 3\n")
    with pytest.raises(ConfigError, match=r"unknown key 'budjet' in search-space file .*space.yaml. Did you mean"):
        parse_tune_args(["strategy=naive", f"space={space}", f"out={tmp_path}"])
    space.write_text("space: [train.lr]\n")
    with pytest.raises(ConfigError, match="'space' in search-space file .* must be a mapping"):
        parse_tune_args(["strategy=naive", f"space={space}", f"out={tmp_path}"])


def test_a_space_file_is_read_with_the_bounds_of_a_sweep_file(tmp_path):
    """A search-space file is untrusted input like a sweep file: earlier it was parsed without bounds, so a few
    lines of YAML aliases could expand to billions of values."""
    space = tmp_path / "bomb.yaml"
    space.write_text("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefg", "bcdefgh")))
    with pytest.raises(ConfigError, match="search-space file .*bomb.yaml is too deep or too large"):
        parse_tune_args(["strategy=naive", f"space={space}", f"out={tmp_path}"])
    space.write_text("space: {train.lr: [0.1, 0.2\n")
    with pytest.raises(ConfigError, match="search-space file .*bomb.yaml: YAML error at line 2"):
        parse_tune_args(["strategy=naive", f"space={space}", f"out={tmp_path}"])


# ----- what a trial reports ------------------------------------------------------------------------------
def test_prefix_metric_is_the_metric_of_the_stream_so_far():
    R = [[0.9, 0.0, 0.0], [0.5, 0.8, 0.0], [0.4, 0.6, 0.7]]
    b, L = [0.1, 0.1, 0.1], [0, 1, 2]
    assert prefix_metric("acc", R, b, L, None, 0) == pytest.approx(0.9)
    assert prefix_metric("acc", R, b, L, None, 1) == pytest.approx(0.65)         # acc_seen after 2 experiences
    assert prefix_metric("acc", R, b, L, None, 2) == pytest.approx((0.4 + 0.6 + 0.7) / 3)
    assert prefix_metric("bwt", R, b, L, None, 1) == pytest.approx(0.5 - 0.9)
    assert math.isnan(prefix_metric("bwt", R, b, L, None, 0))                     # undefined on one task
    assert prefix_metric("forgetting", R, b, L, None, 2) == pytest.approx(((0.9 - 0.4) + (0.8 - 0.6)) / 2)


class _Row:
    def __init__(self, acc):
        self.acc, self.n = acc, [10] * len(acc)


def test_the_reporter_holds_the_last_row_until_the_run_is_written_and_refuses_test_runs(tmp_path):
    sent = []
    rep = RayReporter("acc", report=sent.append, n_experiences=2)
    rep.learned = [0, 1]
    rep.log_row(None, -1, _Row([0.1, 0.1]))
    rep.log_row(None, 0, _Row([0.9, 0.0]))
    rep.log_row(None, 1, _Row([0.5, 0.8]))
    assert [s["experience"] for s in sent] == [1]          # Ray stops a trial at its last report
    rep.final(run_id="r")
    assert sent[-1]["experience"] == 2 and sent[-1]["objective"] == pytest.approx(0.65) and sent[-1]["run_id"] == "r"
    with pytest.raises(RuntimeError, match="must not evaluate the test split"):
        run(["strategy=naive", "dataset.train_per_class=5", f"out={tmp_path}", *QUIET],
            loggers=[RayReporter("acc", report=sent.append)])


def test_a_best_file_is_checked_before_use(tmp_path):
    bad = tmp_path / "best.yaml"
    bad.write_text("overrides: [strategy=naive]\n")
    with pytest.raises(ConfigError, match="not a best.yaml written by clbench tune"):
        load_tuned(bad)
    bad.write_text("overrides: [strategy=naive]\ntuning: {tool: something}\n")
    with pytest.raises(ConfigError, match="not a clbench tune record"):
        load_tuned(bad)
    good = tmp_path / "good.yaml"
    good.write_text("overrides: [strategy=naive, train.lr=0.2]\ntuning: {tool: clbench tune, metric: acc}\n")
    overrides, record = split_tuned([f"tuned={good}", "seed=3", "train.lr=0.3"])
    assert overrides == ["strategy=naive", "train.lr=0.2", "seed=3", "train.lr=0.3"] and record["metric"] == "acc"


# ----- Ray Tune: a spy dataset, a bad default, provenance, an interrupted tune ----------------------------------
class SpyTensor(torch.Tensor):
    """A test tensor that appends the name of every torch operation made on it to a log file."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        logs = {getattr(a, "_spy_log", None) for a in args if isinstance(a, SpyTensor)} - {None}
        for log in logs:
            with open(log, "a") as f:
                f.write(f"{getattr(func, '__name__', func)}\n")
        return super().__torch_function__(func, types, args, kwargs or {})


def load_spy_digits(root=None, download=False, spy_log: str = ""):
    """scikit-learn's digits whose test tensors log every access."""
    ds = load_digits()
    for name in ("x_test", "y_test"):
        t = getattr(ds, name).as_subclass(SpyTensor)
        t._spy_log = spy_log
        setattr(ds, name, t)
    return ds


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    pytest.importorskip("optuna")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def spy_tune(ray_local, tmp_path_factory):
    """One tiny tune: replay on a spy copy of split-digits whose benchmark sets a bad learning rate (1e-4)."""
    from clbench.tune import tune
    tmp = tmp_path_factory.mktemp("spy")
    log = tmp / "test_access.log"
    log.write_text("")
    bench = tmp / "spy-digits.yaml"
    bench.write_text((REPO / "configs" / "benchmark" / "split-digits.yaml").read_text()
                     .replace("name: digits", f"name: spy_digits\n  spy_log: {log}\n  train_per_class: 60")
                     .replace("lr: 0.05", "lr: 0.0001").replace("epochs: 5", "epochs: 2")
                     .replace("name: split-digits", "name: spy-digits"))
    DATASETS.register("spy_digits", load_spy_digits)
    try:
        spec = parse_tune_args([f"benchmark={bench}", "strategy=replay", "train.lr=loguniform(1e-4,0.5)", "budget=5",
                                "scheduler=fifo", "eval.validation=0.2", f"out={tmp / 'tune'}"])
        res = tune(spec)
        yield res, log, bench
    finally:
        DATASETS.unregister("spy_digits")


def test_the_spy_sees_test_access_in_an_ordinary_run(spy_tune, tmp_path):
    _, log, bench = spy_tune
    DATASETS.register("spy_digits", load_spy_digits)
    control = tmp_path / "control.log"
    control.write_text("")
    try:
        run([f"benchmark={bench}", "strategy=naive", f"dataset.spy_log={control}", f"out={tmp_path}", *QUIET],
            console=False)
    finally:
        DATASETS.unregister("spy_digits")
    assert control.read_text().strip()        # the spy works: evaluating on test touches the tensors


def test_a_tuning_run_never_touches_test_data(spy_tune):
    res, log, _ = spy_tune
    assert res.record["trials"] == 5 and res.record["test_evaluated"] is False
    assert log.read_text() == ""              # no trial (nor the driver) made a single operation on a test tensor
    trials = sorted((res.spec.out / "trials").glob("*/result.json"))
    assert len(trials) == 5
    for f in trials:
        r = json.loads(f.read_text())
        assert r["accuracy_matrix"] is None and r["config"]["eval"]["test"] is False
        assert r["validation_accuracy_matrix"]


def test_a_tiny_tune_beats_a_deliberately_bad_default(spy_tune):
    res, _, _ = spy_tune
    rec = res.record
    assert rec["default"] == {"train.lr": 0.0001} and res.rows[0]["params"] == {"train.lr": 0.0001}  # tried first
    assert rec["best_value"] >= rec["default_value"] + 0.2
    assert rec["best"]["train.lr"] > 1e-3
    for name in ("best", "table_csv", "table_md", "plot", "record"):
        assert res.files[name].is_file()
    assert load_tuned(res.files["best"])[0][-1] == f"train.lr={rec['best']['train.lr']!r}"


def test_the_tuning_record_reaches_result_json(spy_tune, tmp_path):
    res, _, _ = spy_tune
    DATASETS.register("spy_digits", load_spy_digits)
    try:
        overrides, record = split_tuned([f"tuned={res.files['best']}", f"out={tmp_path}", *QUIET])
        result, _ = run(compose(overrides, tuning=record), console=False)
    finally:
        DATASETS.unregister("spy_digits")
    src = result["config_source"]
    assert src["chosen_by"] == "tuned" and src["tuning"]["best"] == res.record["best"]
    assert src["tuning"]["metric"] == "acc" and src["tuning"]["budget"] == 5 and src["tuning"]["trials"] == 5
    assert result["config"]["train"]["lr"] == res.record["best"]["train.lr"]


def test_re_running_a_finished_tune_reads_it_back_and_keeps_its_record(spy_tune):
    from clbench.tune import tune
    res, _, bench = spy_tune
    before = {p.parent.name: p.stat().st_mtime_ns for p in (res.spec.out / "trials").glob("*/result.json")}
    DATASETS.register("spy_digits", load_spy_digits)
    try:
        again = tune(parse_tune_args([f"benchmark={bench}", "strategy=replay", "train.lr=loguniform(1e-4,0.5)",
                                      "budget=5", "scheduler=fifo", "eval.validation=0.2", f"out={res.spec.out}"]))
    finally:
        DATASETS.unregister("spy_digits")
    assert again.record["best"] == res.record["best"] and again.record["wall_s"] == res.record["wall_s"]
    assert {p.parent.name: p.stat().st_mtime_ns for p in (res.spec.out / "trials").glob("*/result.json")} == before


def test_an_interrupted_tune_resumes_without_redoing_finished_trials(ray_local, tmp_path):
    from clbench.tune import tune
    out = tmp_path / "tune"
    args = ["strategy=naive", "dataset.train_per_class=30", "train.epochs=1", "budget=4", "scheduler=fifo",
            "train.lr=loguniform(0.001,0.3)", f"out={out}"]
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "clbench", "tune", *args], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    finished: dict = {}
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            done = {p.parent.name: p.stat().st_mtime_ns for p in (out / "trials").glob("*/result.json")}
            if done and list((out / "ray").glob("experiment_state*.json")):
                finished = done
                break
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)     # the whole tune, mid-way (this test started that process group)
        proc.wait()
    assert finished, "the tune finished no trial before the deadline"
    assert not (out / "tuning.json").exists()   # it did not get to the end
    res = tune(parse_tune_args(args))
    assert [r["status"] for r in res.rows] == ["completed"] * 4
    runs = {p.parent.name: p.stat().st_mtime_ns for p in (out / "trials").glob("*/result.json")}
    assert len(runs) == 4 and not any("_r" in name[-4:] for name in runs)
    for name, mtime in finished.items():        # finished before the kill: never run again
        assert runs[name] == mtime


# ----- provenance on the board (no Ray: a tuning record attached by hand, as `clbench run tuned=` does) --------
def _entry(out, lr, tuning=None):
    from clbench.leaderboard import build_submission
    for s in (0, 1, 2):
        run(compose(["benchmark=split-digits", "strategy=naive", "train.epochs=1", f"train.lr={lr}", f"seed={s}",
                     f"out={out}", *QUIET], tuning=tuning), console=False)
    return build_submission([out])


def test_provenance_is_validated_and_shown_on_the_board(tmp_path):
    from clbench.leaderboard import save_submission, validate_submission
    from clbench.leaderboard.render import build
    record = {"tool": "clbench tune", "protocol": "full", "first_k": None, "split": "validation",
              "test_evaluated": False, "metric": "acc", "budget": 20, "trials": 20, "seed": 0,
              "best": {"train.lr": 0.02}, "best_value": 0.5, "space": {"train.lr": "loguniform(0.0001, 1.0)"}}
    tuned = _entry(tmp_path / "tuned", 0.02, tuning=record)
    hand = _entry(tmp_path / "hand", 0.03)
    assert tuned["selection"] == {"kind": "tuned", "tuning": record}
    assert hand["selection"]["kind"] == "hand-set" and "train.lr=0.03" in hand["selection"]["overrides"]
    assert validate_submission(tuned) == [] and validate_submission(hand) == []
    forged = json.loads(json.dumps(tuned))
    forged["selection"]["tuning"]["best"]["train.lr"] = 0.05              # a record that did not choose this config
    assert any(i.code == "selection" and "train.lr" in i.message for i in validate_submission(forged))
    forged["selection"]["tuning"].update(best={"train.lr": 0.02}, test_evaluated=True)
    assert any(i.code == "schema" and "selection.tuning.test_evaluated" in i.message   # the strict schema
               for i in validate_submission(forged))
    forged["selection"]["tuning"].update(test_evaluated=False, sneaked="x")       # no unknown keys either
    assert any(i.code == "schema" and "sneaked" in i.message for i in validate_submission(forged))

    subs = tmp_path / "subs"
    save_submission(tuned, subs)
    save_submission(hand, subs)
    board = build(subs, tmp_path / "board")
    assert not board["rejected"]
    assert "tuned on validation: full, acc 50.0 (20/20 trials, seed 0)" in board["markdown"]
    assert "hand-set: train.epochs=1 train.lr=0.03" in board["markdown"]
    assert 'data-selection="tuned"' in board["html"] and 'id="tuned-only"' in board["html"]
    only = build(subs, tmp_path / "board", tuned_only=True)
    assert len(only["entries"]) == 1 and only["entries"][0].sub["id"] == tuned["id"]
    # class-IL: FWT is minus the initial row for every method; the track leaves it out, with the reason
    assert "| FWT" not in board["markdown"] and "FWT is not shown: class-IL" in board["markdown"]
    assert "FWT is not shown" in board["html"]
