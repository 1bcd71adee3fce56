"""train.schedule: the schedules as functions of the step, the lr the base loop really uses, the infinite
schedule's restart from the pre-annealing weights, the config keys, and resume (killed == uninterrupted)."""
import math

import pytest
import torch
import torch.nn.functional as F

from clbench import schedules
from clbench.config import ConfigError, compose, config_hash
from clbench.engine import prepare, run
from clbench.registry import STRATEGIES
from clbench.strategy import Strategy, make_optimizer
from clbench.testing import check_strategy

torch.set_num_threads(1)
FAST = ["benchmark=split-digits", "dataset.train_per_class=20", "dataset.test_per_class=10", "train.batch_size=10",
        "progress=false", "wandb.mode=disabled", "device=cpu"]
PAPER = dict(warmup=0.05, cooldown=0.5, anneal_at=0.8, const_lr=0.75, min_lr=0.05)  # bin/mila/infinite.sh


def test_infinite_schedule_phases_first_experience():
    f = lambda i: schedules.infinite_factor(i, 200, True, **PAPER)  # noqa: E731
    # warm-up: N_w = 10 steps from 0 to the peak
    assert f(0) == 0 and f(5) == pytest.approx(0.5) and f(10) == pytest.approx(1.0)
    # cosine cooldown from the peak to const_lr, ending at N_c = 100 (counted from step 0)
    assert f(55) == pytest.approx(0.75 + 0.25 / 2 * (1 + math.cos(math.pi * 0.5)))
    assert f(100) == pytest.approx(0.75)
    # constant up to N_d = 160, then exponential annealing that reaches min_lr at n
    assert f(101) == f(160) == 0.75
    assert f(180) == pytest.approx(0.75 * (0.05 / 0.75) ** 0.5)
    assert f(199) == pytest.approx(0.75 * (0.05 / 0.75) ** (39 / 40))
    assert all(f(i) >= f(i + 1) for i in range(10, 199))          # monotone after the warm-up


def test_infinite_schedule_later_experiences_have_no_warmup_or_cooldown():
    f = lambda i: schedules.infinite_factor(i, 200, False, **PAPER)  # noqa: E731
    assert [f(i) for i in (0, 10, 100, 160)] == [0.75] * 4
    assert f(180) == pytest.approx(0.75 * (0.05 / 0.75) ** 0.5)


def test_cosine_and_step_schedules():
    c = lambda i: schedules.cosine_factor(i, 100, 0.1, 0.0)  # noqa: E731
    assert c(0) == 0 and c(5) == pytest.approx(0.5) and c(10) == 1.0
    assert c(55) == pytest.approx(0.5) and c(99) < 0.001
    s = lambda i: schedules.step_factor(i, 10, [2, 4], 0.1)  # noqa: E731   10 steps per epoch
    assert [s(0), s(19), s(20), s(39), s(40), s(99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


class RecordLR(Strategy):
    """Fine-tuning that records the lr of every step and the weights after it."""
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.lrs, self.weights, self.starts, self.loss_lrs = [], [], [], []

    def loss(self, batch):
        self.loss_lrs.append(self.optimizer.param_groups[0]["lr"])    # what a look-ahead (HNET) reads
        return super().loss(batch)

    def before_experience(self, exp):
        self.starts.append(self.model.classifier.weight.detach().clone())

    def after_step(self, batch):
        self.lrs.append(self.optimizer.param_groups[0]["lr"])
        self.weights.append(self.model.classifier.weight.detach().clone())


def test_base_loop_follows_the_schedule_and_restarts_before_annealing():
    STRATEGIES.register("record_lr_test", RecordLR)
    try:
        r = prepare(compose([*FAST, "strategy=record_lr_test", "train.epochs=2", "train.lr=0.1",
                             "train.schedule=infinite"]))
        s, exps = r.strategy, r.stream.experiences
        n = 2 * 4                                    # 40 samples per experience, batches of 10, 2 epochs
        s.train(exps[0].sealed())
        expected = [0.1 * schedules.infinite_factor(i, n, True, **PAPER) for i in range(n)]
        assert s.lrs == pytest.approx(expected)
        assert s.loss_lrs == s.lrs                   # loss() already sees the lr its step will use
        n_d = int(0.8 * n)                           # the weights after step N_d are kept ...
        assert torch.equal(s.schedule_snapshot["model"]["classifier.weight"], s.weights[n_d])
        assert not torch.equal(s.weights[n_d], s.weights[-1])
        s.train(exps[1].sealed())
        # ... and the next experience starts from them, not from the annealed weights (those were evaluated)
        assert torch.equal(s.starts[1], s.weights[n_d])
        assert s.lrs[n:] == pytest.approx([0.1 * schedules.infinite_factor(i, n, False, **PAPER) for i in range(n)])
    finally:
        STRATEGIES.unregister("record_lr_test")


class OutsideWeight(RecordLR):
    """Logits scaled by a trained weight kept outside the model, as HNET keeps its hypernetwork."""
    checkpoint_attrs = ("scale",)

    def __init__(self, *a, **k):
        self.scale = torch.nn.Parameter(torch.ones(()))        # before the base constructor builds the optimizer
        super().__init__(*a, **k)
        self.scales, self.scale_starts = [], []

    def make_optimizer(self):
        return make_optimizer([*self.model.parameters(), self.scale], self.train_cfg)

    def loss(self, batch):
        return F.cross_entropy(self.forward(batch.x, batch.t) * self.scale, batch.y)

    def before_experience(self, exp):
        super().before_experience(exp)
        self.scale_starts.append(self.scale.detach().clone())

    def after_step(self, batch):
        super().after_step(batch)
        self.scales.append(self.scale.detach().clone())


def test_the_restart_covers_weights_trained_outside_the_model():
    STRATEGIES.register("outside_test", OutsideWeight)
    try:
        r = prepare(compose([*FAST, "strategy=outside_test", "train.epochs=2", "train.schedule=infinite"]))
        s, exps = r.strategy, r.stream.experiences
        s.train(exps[0].sealed())
        n_d = int(0.8 * 8)
        assert not torch.equal(s.scales[n_d], s.scales[-1])
        s.train(exps[1].sealed())
        assert torch.equal(s.scale_starts[1], s.scales[n_d]) and torch.equal(s.starts[1], s.weights[n_d])
    finally:
        STRATEGIES.unregister("outside_test")


def test_restart_can_be_turned_off():
    STRATEGIES.register("record_lr_test", RecordLR)
    try:
        r = prepare(compose([*FAST, "strategy=record_lr_test", "train.schedule=infinite",
                             "train.restart_before_anneal=false", "train.epochs=2"]))
        r.strategy.train(r.stream.experiences[0].sealed())
        assert r.strategy.schedule_snapshot is None
    finally:
        STRATEGIES.unregister("record_lr_test")


def test_schedule_keys_in_the_config():
    base = compose(FAST)
    # no schedule: none of its keys is in the resolved config, so config hashes are those of before schedules
    assert "schedule" not in base["train"] and "warmup" not in base["train"]
    assert config_hash(compose([*FAST, "train.schedule=constant", "train.warmup=0.3"])) == config_hash(base)
    cos = compose([*FAST, "train.schedule=cosine"])["train"]
    assert cos["schedule"] == "cosine" and set(schedules.KEYS["cosine"]) <= set(cos) and "cooldown" not in cos
    inf = compose([*FAST, "train.schedule=infinite"])["train"]
    assert {k: inf[k] for k in PAPER} == PAPER and inf["restart_before_anneal"] is True
    with pytest.raises(ConfigError, match="train.schedule.*expected one of constant, step, cosine, infinite"):
        compose([*FAST, "train.schedule=linear"])
    with pytest.raises(ConfigError, match="train.cooldown.*warmup <= cooldown <= anneal_at"):
        compose([*FAST, "train.schedule=infinite", "train.cooldown=0.9"])
    with pytest.raises(ConfigError, match="train.milestones.*increasing"):
        compose([*FAST, "train.schedule=step", "train.milestones=[3,1]"])


def test_every_strategy_can_use_a_schedule_and_resume_exactly():
    """The conformance kit's resume check (at a boundary and mid-experience) with the infinite schedule: the
    schedule's position and the pre-annealing weights survive state_dict()."""
    check_strategy("replay", settings=["class-il"], extra=["train.schedule=infinite", "train.epochs=2"])
    check_strategy("ewc", settings=["class-il"], extra=["train.schedule=cosine"])
    # the hypernetwork (outside the model) is what the restart restores; its look-ahead reads the scheduled lr
    check_strategy("hnet", settings=["task-il"], extra=["train.schedule=infinite", "train.epochs=2"])


class Crash(Strategy):
    at = None

    def loss(self, batch):
        if Crash.at is not None and self.global_step == Crash.at:
            raise RuntimeError("killed")
        return super().loss(batch)

    def after_experience(self, exp):      # a fingerprint of the weights, finer than the accuracies
        self.log("weight_sum", float(sum(p.detach().double().sum() for p in self.model.parameters())))


def test_a_killed_run_with_a_schedule_resumes_to_the_uninterrupted_result(tmp_path):
    STRATEGIES.register("crash_test", Crash)
    try:
        args = [*FAST, "strategy=crash_test", "train.schedule=infinite", "train.epochs=3", "checkpoint.every_steps=1"]
        Crash.at = None
        whole, _ = run([*args, f"out={tmp_path / 'a'}"], console=False)
        Crash.at = 23          # the last step of experience 1 (12 steps each), after its pre-annealing snapshot (step 9)
        with pytest.raises(RuntimeError, match="killed"):
            run([*args, f"out={tmp_path / 'b'}"], console=False)
        Crash.at = None
        resumed, _ = run([*args, f"out={tmp_path / 'b'}"], console=False)
        assert resumed["timing"]["segments"] == 2
        assert resumed["accuracy_matrix"] == whole["accuracy_matrix"]
        assert resumed["logs"]["weight_sum"] == whole["logs"]["weight_sum"]
    finally:
        STRATEGIES.unregister("crash_test")
