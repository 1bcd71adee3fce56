"""Seed-parallel runs: the seeds of one configuration trained as one vectorised model give each seed the
result.json its separate run gives (bit for bit on CPU); what cannot run this way says why and runs separately."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from clbench.config import compose
from clbench.engine import run
from clbench.executors import Task, execute_task
from clbench.seed_parallel import SeedGroupError, run_seeds, stack_models, strategy_why_not, why_not
from clbench.strategies.replay import Replay
from clbench.sweep import parse_sweep_args, run_sweep
from clbench.testing import tiny_overrides

# Differ between a group and separate runs by construction: wall-clock times, process memory, the folder.
RUN_LOCAL = ("timing", "memory", "wandb_dir")


def _cfgs(overrides, out, seeds=(0, 1, 2)):
    return [compose([*overrides, f"seed={s}", f"out={out}"]) for s in seeds]


def _same_as_separate(group_out, separate_results):
    for o, ref in zip(group_out, separate_results):
        assert "error" not in o and "fallback" not in o, o.get("error") or o.get("fallback")
        res = json.loads((o["path"] / "result.json").read_text())
        for key in ref:
            if key in RUN_LOCAL:
                continue
            if key in ("config", "config_source"):     # only `out` differs (another folder)
                strip = lambda c: json.loads(json.dumps(c).replace(str(o["path"].parent), "OUT"))  # noqa: E731
                ref_strip = json.loads(json.dumps(ref[key]).replace(ref["_out"], "OUT"))
                assert strip(res[key]) == ref_strip, key
                continue
            if key == "_out":
                continue
            assert res[key] == ref[key], key
        assert res["timing"]["seed_group"] == len(group_out)


def _separate(overrides, out, seeds=(0, 1, 2)):
    refs = []
    for cfg in _cfgs(overrides, out, seeds):
        result, path = run(cfg, console=False)
        result = json.loads((path / "result.json").read_text())
        result["_out"] = str(out)
        refs.append(result)
    return refs


@pytest.mark.parametrize("setting, strategy, extra", [
    ("class-il", "replay", ["strategy.buffer_size=20", "checkpoint.enabled=true"]),
    ("class-il", "replay", ["strategy.buffer=class_balanced", "strategy.buffer_size=20", "train.optimizer=adam"]),
    ("task-il", "naive", ["train.momentum=0.9", "model.bias=false"]),
    ("domain-il", "cumulative", ["eval.validation=0.25"]),
])
def test_each_seed_gets_the_result_of_its_separate_run(tmp_path, setting, strategy, extra):
    overrides = tiny_overrides(setting, strategy, extra)
    refs = _separate(overrides, tmp_path / "separate")
    out = run_seeds(_cfgs(overrides, tmp_path / "group"))
    _same_as_separate(out, refs)


def test_stacked_model_gives_each_seed_its_own_gradients_bit_for_bit():
    from clbench.models import MLP, Normalize
    models = []
    for s in range(4):
        torch.manual_seed(s)
        models.append(MLP((1, 8, 8), 10, Normalize(16.0, (0.3,), (0.2,)), width=32, depth=2))
    x, y = torch.randint(0, 17, (4, 24, 1, 8, 8), dtype=torch.uint8), torch.randint(0, 10, (4, 24))
    ref = []
    for s, m in enumerate(models):
        F.cross_entropy(m(x[s]), y[s]).backward()
        ref.append([p.grad.clone() for p in m.parameters()])
    stacked, leaves = stack_models(models)
    logits = stacked(x)
    torch.stack([F.cross_entropy(logits[s], y[s]) for s in range(4)]).sum().backward()
    for s in range(4):
        assert all(torch.equal(leaf.grad[s], g) for leaf, g in zip(leaves, ref[s]))
        # the seed's own parameters read (and are written through) the stacked tensors
        assert all(p.data_ptr() == leaf[s].data_ptr() for p, leaf in zip(models[s].parameters(), leaves))


def test_what_cannot_run_seed_parallel_says_why(tmp_path):
    base = tiny_overrides("class-il", "replay")
    assert why_not(_cfgs(base, tmp_path)) is None
    assert "does not declare seed_parallel" in why_not(_cfgs(tiny_overrides("class-il", "ewc"), tmp_path))
    assert "callbacks" in why_not(_cfgs([*base, "callbacks=[refresh]"], tmp_path))
    assert "train.amp" in why_not(_cfgs([*base, "train.amp=bf16"], tmp_path))
    assert "model 'cnn'" in why_not(_cfgs([*base, "model={name: cnn}"], tmp_path))
    mixed = _cfgs(base, tmp_path)[:1] + _cfgs([*base, "train.lr=0.2"], tmp_path, seeds=(1,))
    assert "differ in more than their seeds" in why_not(mixed)
    assert "fewer than two" in why_not(_cfgs(base, tmp_path, seeds=(0,)))

    class MyReplay(Replay):           # a subclass inherits nothing of the declaration
        pass
    assert "does not declare" in strategy_why_not(MyReplay)

    class Overriding(Replay):
        seed_parallel = True

        def after_backward(self, batch):
            pass
    assert "overrides after_backward" in strategy_why_not(Overriding)
    with pytest.raises(SeedGroupError, match="does not declare"):
        run_seeds(_cfgs(tiny_overrides("class-il", "ewc"), tmp_path))


def test_seeds_whose_steps_differ_in_shape_fall_back_to_separate_runs(tmp_path):
    """Class orders drawn per stream seed give experiences of different sizes: the group stops at the first
    step that differs, and each seed runs separately (resuming from what the group checkpointed)."""
    overrides = tiny_overrides("class-il", "naive", ["scenario.class_order=null", "dataset.train_per_class=null",
                                                     "checkpoint.enabled=true"])
    refs = _separate(overrides, tmp_path / "separate", seeds=(0, 1))
    out = run_seeds(_cfgs(overrides, tmp_path / "group", seeds=(0, 1)))
    assert all("fallback" in o and "SeedGroupError" in o["fallback"] for o in out)
    for o, ref in zip(out, refs):
        res = json.loads((o["path"] / "result.json").read_text())
        assert res["accuracy_matrix"] == ref["accuracy_matrix"] and res["metrics"] == ref["metrics"]


def test_sweep_groups_the_seeds_and_keeps_the_others_separate(tmp_path):
    grid = ["benchmark=split-digits", "dataset.train_per_class=12", "dataset.test_per_class=6", "train.epochs=1",
            "wandb.mode=disabled", "strategy=naive,ewc", "seed=0,1,2"]
    res = run_sweep(parse_sweep_args([*grid, f"out={tmp_path / 'sp'}", "seed_parallel=true"]), argv=[])
    ref = run_sweep(parse_sweep_args([*grid, f"out={tmp_path / 'sep'}"]), argv=[])
    assert res.count("done") == ref.count("done") == 6
    for r in ref.runs:
        a = json.loads((tmp_path / "sp" / r.run_id / "result.json").read_text())
        b = json.loads((tmp_path / "sep" / r.run_id / "result.json").read_text())
        assert a["accuracy_matrix"] == b["accuracy_matrix"] and a["metrics"] == b["metrics"]
        assert ("seed_group" in a["timing"]) == (r.cfg["strategy"]["name"] == "naive")
    with pytest.raises(Exception, match="seed_parallel"):
        parse_sweep_args([*grid, f"out={tmp_path / 'x'}", "seed_parallel=sometimes"])


def test_a_group_task_reports_one_outcome_per_seed(tmp_path):
    cfgs = _cfgs(tiny_overrides("class-il", "naive"), tmp_path)
    from clbench.config import config_hash
    from clbench.results import make_run_id
    members = [Task(run_id=make_run_id(c, config_hash(c)), cfg=c) for c in cfgs]
    o = execute_task(Task(run_id="seeds:x", cfg=cfgs[0], members=members), return_result=True)
    assert o.status == "done" and [m.run_id for m in o.members] == [m.run_id for m in members]
    assert all(m.result is not None and m.status == "done" for m in o.members)


def test_the_plugin_kit_checks_a_declared_seed_parallel_strategy():
    """check_strategy trains two seeds as one group for a strategy that declares seed_parallel; a declaration
    the strategy does not keep (here: its minibatch drawn from the global RNG, which the seeds of a group share)
    fails with its own reason, and the built-ins pass."""
    from clbench.errors import PluginError
    from clbench.strategy import Strategy
    from clbench.stream import Batch
    from clbench.testing import check_strategy

    class GlobalDraws(Strategy):
        seed_parallel = True

        def loss_batch(self, batch):
            keep = torch.randperm(len(batch.y))[: max(1, len(batch.y) - 2)]   # not self.generator
            return Batch(x=batch.x[keep], y=batch.y[keep], t=batch.t[keep], index=batch.index[keep])

    with pytest.raises(PluginError, match=r"\[seed_parallel, class-il\].*differs from the separate run"):
        check_strategy(GlobalDraws, settings=["class-il"])
    checks = check_strategy("replay", settings=["class-il"])
    assert [c.ok for c in checks if c.name == "seed_parallel"] == [True]


def test_sigterm_stops_every_seed_after_the_same_step_and_the_group_resumes(tmp_path, monkeypatch):
    """Only the main thread receives signals: the group passes SIGTERM on to every seed at a lock-step point, so
    each saves its checkpoint after the same step and the group raises RunInterrupted (a stop, not a failure);
    the same call resumes the group, and each seed's result is still its separate run's."""
    import os
    import signal

    from clbench import state as S
    from clbench.engine import RunInterrupted
    from clbench.seed_parallel import SeedGroup
    overrides = tiny_overrides("class-il", "replay", ["train.epochs=2", "strategy.buffer_size=20",
                                                      "checkpoint.enabled=true"])
    refs = _separate(overrides, tmp_path / "separate", seeds=(0, 1))
    step, calls = SeedGroup._step, {"n": 0}

    def step_then_sigterm(self):
        calls["n"] += 1
        if calls["n"] == 7:                     # experience 1 (6 steps per experience, 30 in all)
            os.kill(os.getpid(), signal.SIGTERM)
        step(self)
    monkeypatch.setattr(SeedGroup, "_step", step_then_sigterm)
    cfgs = _cfgs(overrides, tmp_path / "group", seeds=(0, 1))
    with pytest.raises(RunInterrupted):
        run_seeds(cfgs)
    checkpoints = sorted((tmp_path / "group").glob(".*.partial/checkpoint.pt"))
    assert len(checkpoints) == 2
    steps = {S.load(c)["strategy"]["global_step"] for c in checkpoints}
    assert len(steps) == 1 and 7 <= steps.pop() < 30       # the same step for both seeds, before the end
    assert signal.getsignal(signal.SIGTERM) is not None     # the handlers are given back
    monkeypatch.setattr(SeedGroup, "_step", step)
    out = run_seeds(cfgs)
    _same_as_separate(out, refs)
    assert all(o["result"]["timing"]["segments"] == 2 for o in out)


def test_an_interrupted_group_is_interrupted_for_every_seed_not_failed(tmp_path, monkeypatch):
    """As for a single run (clbench/executors.py): a group stopped by SIGTERM reports 'interrupted' (with the
    signal) for each seed, so the sweep stops and its re-run resumes them, instead of recording failures."""
    import signal

    import clbench.seed_parallel as sp
    from clbench.config import config_hash
    from clbench.engine import RunInterrupted
    from clbench.results import make_run_id

    def stopped(cfgs, **kwargs):
        raise RunInterrupted(signal.SIGTERM, "in experience 1, step 2", tmp_path)
    monkeypatch.setattr(sp, "run_seeds", stopped)
    cfgs = _cfgs(tiny_overrides("class-il", "naive"), tmp_path, seeds=(0, 1))
    members = [Task(run_id=make_run_id(c, config_hash(c)), cfg=c) for c in cfgs]
    o = execute_task(Task(run_id="seeds:x", cfg=cfgs[0], members=members))
    assert o.status == "interrupted" and o.signum == signal.SIGTERM
    assert [(m.run_id, m.status, m.signum) for m in o.members] == [(t.run_id, "interrupted", signal.SIGTERM)
                                                                  for t in members]
