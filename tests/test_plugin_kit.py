"""The plugin kit: typed hyper-parameters, one error phrasing, presets and names from other distributions,
the loss contract, strategy logging, callbacks, and what a strategy may see (a sealed stream)."""
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from clbench import cli
from clbench.config import compose
from clbench.engine import prepare, run
from clbench.errors import ConfigError, PluginError
from clbench.hparams import HP
from clbench.registry import CALLBACKS, PRESETS, STRATEGIES
from clbench.strategy import Callback, Strategy
from clbench.testing import reachable_storages

FAST = ["benchmark=split-digits", "dataset.train_per_class=20", "train.epochs=1", "wandb.mode=disabled",
        "progress=false", "device=cpu"]


# ----- typed hyper-parameters: the observed defects -----------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["strategy.per_sample=maybe"], "strategy 'replay' declares no key 'per_sample'"),
    (["strategy=der", "strategy.alpha=0.3x"], "bad value for 'strategy.alpha': expected a number, got '0.3x'"),
    (["+strategy.lamda_reg=3"], "declares no key 'lamda_reg'"),
    (["strategy=ewc", "strategy.mode=onlin"], "Did you mean 'online'?"),
    (["strategy=si", "strategy.clip_grad=true"], "bad value for 'strategy.clip_grad'"),
    (["seed=true"], "bad value for 'seed': expected an integer, got True"),
    (["model.width=0"], "bad value for 'model.width'"),
    (["model.depth=-1"], "bad value for 'model.depth'"),
    (["train.lr=.inf"], "bad value for 'train.lr': expected a finite number"),
    (["train.momentum=-1"], "bad value for 'train.momentum'"),
    (["eval.batch_size=0"], "bad value for 'eval.batch_size'"),
    (["seed=123456789012345678901234567890"], "bad value for 'seed': expected an integer within 64 bits"),
    (["wandb.name=${foo}"], "bad value for 'wandb.name'"),
    (["benchmark.version=9"], "fixed by the benchmark's protocol"),
])
def test_bad_values_fail_at_compose_with_one_line(args, message, tmp_path, capsys):
    with pytest.raises(ConfigError, match=None) as e:
        compose([*FAST, *args])
    assert message in str(e.value) and "\n" not in str(e.value)
    # the CLI: one line, exit 2, nothing written (no run folder, no W&B run)
    out = tmp_path / "out"
    assert cli.main(["run", *FAST, *args, f"out={out}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("clbench: error:") and not out.exists()


@pytest.mark.parametrize("text, key, value", [
    ("train.lr=1e-3", ("train", "lr"), 0.001), ("train.lr=1.0e6", ("train", "lr"), 1e6),
    ("strategy.ewc_lambda=1e3", ("strategy", "ewc_lambda"), 1000.0),
    ("strategy.fisher_samples=1e3", ("strategy", "fisher_samples"), 1000),   # an int written as 1e3
])
def test_numbers_parse_as_numbers(text, key, value):
    cfg = compose([*FAST, "strategy=ewc", text])
    got = cfg[key[0]][key[1]]
    assert got == value and type(got) is type(value)


def test_one_error_helper_not_hand_written_messages():
    """'bad value for' is written once, in clbench.errors.bad_value, not in every module."""
    import pathlib
    root = pathlib.Path(__file__).resolve().parents[1]
    hits = [p for d in ("clbench", "strategies", "scenarios") for p in (root / d).rglob("*.py")
            if "bad value for" in p.read_text()]
    assert [p.name for p in hits] == ["errors.py"], hits


# ----- presets and names from other distributions --------------------------------------------------------
def fake_distribution(root, name, entry_points: dict, files: dict = ()):
    dist = root / f"{name}-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    groups = "".join(f"[{g}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) for g, eps in entry_points.items())
    (dist / "entry_points.txt").write_text(groups)
    for path, text in dict(files).items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(textwrap.dedent(text))


@pytest.fixture
def on_path(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib
    importlib.invalidate_caches()
    yield tmp_path
    for k in [m for m in sys.modules if m.startswith(("mas_plugin", "rival"))]:
        del sys.modules[k]


def test_two_distributions_registering_one_name_is_an_error_naming_both(on_path):
    fake_distribution(on_path, "rival-plugin", {"clbench.strategies": {"replay": "rival:Replay"}},
                      {"rival/__init__.py": "from clbench.strategies.naive import Naive as Replay\n"})
    with pytest.raises(PluginError) as e:
        STRATEGIES.get("replay")
    assert "'clbench'" in str(e.value) and "'rival-plugin'" in str(e.value)
    assert STRATEGIES.collisions()["replay"]


def test_a_plugin_ships_presets_per_benchmark_and_buffer_size(on_path):
    fake_distribution(on_path, "mas-plugin", {
        "clbench.strategies": {"mas_test": "mas_plugin.method:MAS"},
        "clbench.presets": {"mas_test": "mas_plugin.presets"}}, {
        "mas_plugin/__init__.py": "",
        "mas_plugin/method.py": """
            from clbench.hparams import HP
            from clbench.strategies.naive import Naive
            class MAS(Naive):
                hparams = {"lamda": HP(1.0, "penalty weight", low=0), "buffer_size": HP(0, "unused", low=0)}
            """,
        "mas_plugin/presets/__init__.py": "",
        "mas_plugin/presets/mas_test.yaml": """
            presets:
              split-digits:
                strategy: {lamda: 0.01}
                train: {lr: 0.02}
                by_buffer_size:
                  200: {strategy: {lamda: 0.5}}
            """})
    cfg = compose([*FAST, "strategy=mas_test"])
    assert cfg["strategy"]["lamda"] == 0.01 and cfg["train"]["lr"] == 0.02
    assert cfg["config_source"]["presets"] == [{"name": "mas_test", "preset": "split-digits",
                                                "file": "mas_plugin.presets/mas_test.yaml"}]
    cfg = compose([*FAST, "strategy=mas_test", "strategy.buffer_size=200"])
    assert cfg["strategy"]["lamda"] == 0.5 and cfg["config_source"]["presets"][0]["preset"] == \
        "split-digits@buffer_size=200"
    assert compose([*FAST, "strategy=mas_test", "strategy.lamda=3"])["strategy"]["lamda"] == 3.0   # overrides win
    assert PRESETS.distribution("mas_test") == "mas-plugin"


# ----- the loss contract and logging ----------------------------------------------------------------------
class FloatLoss(Strategy):
    def loss(self, batch):
        return 0.5


class TupleLoss(Strategy):
    def loss(self, batch):
        return F.cross_entropy(self.model(batch.x), batch.y), {"ce": 1.0}


@pytest.mark.parametrize("cls, got", [(FloatLoss, "got a float"), (TupleLoss, "got a tuple")])
def test_a_broken_loss_names_the_plugin_the_hook_and_the_contract(cls, got, tmp_path):
    STRATEGIES.register("broken_test", cls)
    try:
        with pytest.raises(PluginError) as e:
            run([*FAST, "strategy=broken_test", f"out={tmp_path}"], console=False)
    finally:
        STRATEGIES.unregister("broken_test")
    msg = str(e.value)
    assert cls.__name__ in msg and "loss(batch)" in msg and "scalar floating-point torch.Tensor" in msg and got in msg


class Logging(Strategy):
    hparams = {"alpha": HP(0.5, "a weight", low=0)}

    def loss(self, batch):
        ce = F.cross_entropy(self.forward(batch.x, batch.t), batch.y)
        self.log("ce", ce)
        self.log("alpha_times_two", 2 * self.hp.alpha)
        return ce


def test_a_strategy_logs_its_own_values_into_result_json(tmp_path):
    STRATEGIES.register("logging_test", Logging)
    try:
        result, _ = run([*FAST, "strategy=logging_test", f"out={tmp_path}"], console=False)
    finally:
        STRATEGIES.unregister("logging_test")
    logs = result["logs"]
    steps = sum(e["n_train"] for e in result["stream"]["experiences"]) // 16 + 5   # ceil per experience
    assert len(logs["ce"]["value"]) == len(logs["ce"]["step"]) and 0 < len(logs["ce"]["step"]) <= steps
    assert logs["ce"]["step"] == sorted(logs["ce"]["step"]) and set(logs["alpha_times_two"]["value"]) == {1.0}


def test_a_log_name_the_result_schema_would_refuse_names_the_plugin(tmp_path):
    """A name result.json cannot hold ('bic/beta') fails at the log call, naming the strategy, not when a later
    reader skips the whole result as invalid."""
    from clbench.errors import PluginError

    class SlashLog(Logging):
        def loss(self, batch):
            self.log("group/value", 1.0)
            return super().loss(batch)

    STRATEGIES.register("slash_log_test", SlashLog)
    try:
        with pytest.raises(PluginError, match=r"SlashLog.*log\(name, value\).*'group/value'"):
            run([*FAST, "strategy=slash_log_test", f"out={tmp_path}"], console=False)
    finally:
        STRATEGIES.unregister("slash_log_test")
    assert not [p for p in tmp_path.iterdir() if not p.name.startswith(".")]


# ----- what a strategy may see -----------------------------------------------------------------------------
class Probe(Strategy):
    """Collects every tensor storage reachable from everything it is given, at every hook."""
    reached: dict = {}
    classes_at_start: dict = {}

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        Probe.classes_at_start = dict(self.info.task_classes)
        self.look(self.info)

    def look(self, *objs):
        for o in objs:
            reachable_storages(o, set(), Probe.reached)

    def before_experience(self, exp):
        self.look(self, exp)

    def loss(self, batch):
        self.look(batch)
        return super().loss(batch)

    def after_experience(self, exp):
        self.look(self, exp)

    def predict(self, x, task_id=None):
        self.look(self)
        return super().predict(x, task_id)


@pytest.mark.parametrize("scenario", [[], ["scenario.name=permuted", "scenario.n_experiences=3"]])
def test_a_probing_strategy_cannot_reach_test_data_or_future_experiences(scenario, tmp_path):
    STRATEGIES.register("probe_test", Probe)
    Probe.reached = {}
    try:
        r = prepare(compose([*FAST, *scenario, "strategy=probe_test", "eval.validation=0.2", f"out={tmp_path}"]))
        from clbench.engine import execute
        execute(r, None)
    finally:
        STRATEGIES.unregister("probe_test")
    ds = r.stream.dataset
    forbidden = {t.untyped_storage().data_ptr(): name for name, t in
                 (("test x", ds.x_test), ("test y", ds.y_test), ("validation x", ds.x_val), ("validation y", ds.y_val),
                  ("train x (all experiences)", ds.x_train), ("train y (all experiences)", ds.y_train))}
    assert not {forbidden[p] for p in Probe.reached if p in forbidden}
    assert Probe.classes_at_start == {}          # class-IL/domain-IL: the future class split is not revealed


def test_task_il_declares_the_heads_known_up_front():
    r = prepare(compose([*FAST, "scenario.name=task_incremental", "scenario.n_experiences=5"]))
    assert r.strategy.info.task_classes == {t.task_id: t.classes for t in r.stream.eval_tasks}
    assert len(r.strategy.info.task_classes) == 5


# ----- validation split ------------------------------------------------------------------------------------
def test_validation_split_is_disjoint_stratified_and_stable_under_the_stream_seed():
    a = prepare(compose([*FAST, "eval.validation=0.25", "seed=0"]))
    b = prepare(compose([*FAST, "eval.validation=0.25", "seed=7", "stream_seed=0"]))
    c = prepare(compose([*FAST, "eval.validation=0.25", "seed=0", "stream_seed=1"]))
    ds = a.stream.dataset
    # disjoint: no validation image is a training image (the carve removes them from the training tensors)
    train_rows = {tuple(r.tolist()) + (int(y),) for r, y in zip(ds.x_train.reshape(len(ds.x_train), -1), ds.y_train)}
    val_rows = [tuple(r.tolist()) + (int(y),) for r, y in zip(ds.x_val.reshape(len(ds.x_val), -1), ds.y_val)]
    assert not sum(v in train_rows for v in val_rows) > len(val_rows) * 0.02   # digits has a few duplicate images
    # stratified: 5 of each class's 20 samples
    assert torch.bincount(ds.y_val).tolist() == [5] * 10 and torch.bincount(ds.y_train).tolist() == [15] * 10
    # the same stream seed gives the same split whatever the training seed; another stream seed another one
    assert torch.equal(ds.y_val, b.stream.dataset.y_val) and torch.equal(ds.x_val, b.stream.dataset.x_val)
    assert not torch.equal(ds.x_val, c.stream.dataset.x_val)
    # the validation tasks are the test tasks' columns, over the held-out samples
    assert [t.classes for t in a.stream.val_tasks] == [t.classes for t in a.stream.eval_tasks]
    assert a.stream.describe()["validation"]["fraction"] == 0.25


def test_a_run_with_validation_records_both_matrices_and_test_free_runs_have_no_test(tmp_path):
    result, _ = run([*FAST, "eval.validation=0.2", f"out={tmp_path}"], console=False)
    assert len(result["validation_accuracy_matrix"]) == len(result["accuracy_matrix"]) == 5
    assert result["validation_metrics"]["acc"] == pytest.approx(sum(result["validation_accuracy_matrix"][-1]) / 5)
    tune, _ = run([*FAST, "eval.validation=0.2", "eval.test=false", f"out={tmp_path}"], console=False)
    assert tune["accuracy_matrix"] is None and tune["metrics"] == {}
    assert tune["validation_accuracy_matrix"] == result["validation_accuracy_matrix"]   # same training
    with pytest.raises(ConfigError, match="eval.test"):
        compose([*FAST, "eval.test=false"])


# ----- discoverability ------------------------------------------------------------------------------------
def test_show_and_cfg(capsys):
    assert cli.main(["show", "strategy", "derpp"]) == 0
    out = capsys.readouterr().out
    for text in ("alpha", "beta", "buffer_size", "weight of the logit-matching term", "seq-cifar10", "split-mnist",
                 "Buzzega", "class-il"):
        assert text in out, text
    assert cli.main(["run", "strategy=derpp", "benchmark=split-mnist", "--cfg"]) == 0
    import yaml
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["strategy"]["alpha"] == 1.0 and cfg["strategy"]["name"] == "derpp"     # the preset applied
    assert cli.main(["show", "callback", "refresh"]) == 0 and "mode" in capsys.readouterr().out
    assert cli.main(["show", "benchmark", "split-digits"]) == 0 and "class_incremental" in capsys.readouterr().out
    assert cli.main(["show", "scenario", "permuted"]) == 0 and "keep_first_unpermuted" in capsys.readouterr().out
    assert cli.main(["show", "strategy", "replya"]) == 2 and "Did you mean 'replay'" in capsys.readouterr().err


class WrongLogits(Strategy):
    def predict(self, x, task_id=None):
        return super().predict(x, task_id)[:, :3]


class TwiceCallback(Callback):
    description = "test helper: calls the step twice"

    def around_step(self, strategy, batch, step):
        step(batch)
        return step(batch)


def test_broken_predict_and_around_step_name_the_plugin_the_hook_and_the_contract(tmp_path):
    STRATEGIES.register("wrong_logits_test", WrongLogits)
    CALLBACKS.register("twice_test", TwiceCallback)
    try:
        with pytest.raises(PluginError, match=r"WrongLogits.*hook predict\(x, task_id\) must return logits of shape"):
            run([*FAST, "strategy=wrong_logits_test", f"out={tmp_path}"], console=False)
        with pytest.raises(PluginError, match=r"TwiceCallback.*around_step.*exactly once"):
            run([*FAST, "callbacks=[twice_test]", f"out={tmp_path}"], console=False)
    finally:
        STRATEGIES.unregister("wrong_logits_test")
        CALLBACKS.unregister("twice_test")
