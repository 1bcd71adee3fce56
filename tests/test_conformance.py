"""Every built-in strategy passes the conformance kit that plugin authors use (clbench.testing.check_strategy),
and the kit catches what it promises to catch."""
import gc

import pytest
import torch
import torch.nn.functional as F

from clbench.errors import PluginError
from clbench.hparams import HP
from clbench.strategy import Strategy
from clbench.testing import check_strategy



def test_builtin_strategy_passes_the_kit(builtin_strategy):
    name = builtin_strategy
    checks = check_strategy(name)
    assert {c.name for c in checks} >= {"declarations", "loss", "finite", "determinism", "resume", "sealed"}


def test_a_callback_around_a_strategy_passes_the_kit():
    check_strategy("derpp", settings=["class-il"], extra=["callbacks=[refresh]"])


class Unseeded(Strategy):
    """trains on a random half of each batch drawn from an unseeded generator: two runs differ"""
    def loss(self, batch):
        g = torch.Generator()
        g.seed()                                   # from the OS: not reproducible
        keep = torch.randperm(len(batch.y), generator=g)[: max(1, len(batch.y) // 2)]
        return F.cross_entropy(self.forward(batch.x[keep], batch.t[keep]), batch.y[keep])


class Forgetful(Strategy):
    """keeps a running statistic that is not in checkpoint_attrs: a restored copy trains differently"""
    hparams = {"decay": HP(0.5, "decay of the running mean", low=0, high=1)}

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.running = torch.zeros(())

    def loss(self, batch):
        ce = F.cross_entropy(self.forward(batch.x, batch.t), batch.y)
        self.running = self.hp.decay * self.running + ce.detach()
        return ce * (1 + 0.1 * self.running)


class Peeker(Strategy):
    """finds the dataset in memory and keeps a reference to the test inputs"""
    def before_experience(self, exp):
        from clbench.data import TensorDataset
        self.stolen = [o.x_test for o in gc.get_objects() if isinstance(o, TensorDataset) and o.x_test is not None]


class Undeclared(Strategy):
    hparams = {"alpha": HP(2.0, "", low=0, high=1)}


@pytest.mark.parametrize("cls, check", [(Unseeded, "determinism"), (Forgetful, "resume"), (Peeker, "sealed"),
                                        (Undeclared, "declarations")])
def test_the_kit_names_the_broken_contract(cls, check):
    with pytest.raises(PluginError) as e:
        check_strategy(cls, settings=["class-il"])
    msg = str(e.value)
    assert f"[{check}" in msg and cls.__name__ in msg


def test_the_pytest_fixtures_give_tiny_runs(tiny_setting, tiny_run):
    result = tiny_run("replay", setting=tiny_setting)
    assert result["stream"]["setting"] == tiny_setting and len(result["accuracy_matrix"]) >= 3


def test_the_documented_example_plugin_passes_the_kit(monkeypatch):
    """docs/plugins.md's example package: its two strategies pass the kit (registered in-process here)."""
    from pathlib import Path
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "docs" / "examples" / "clbench-ema-demo"))
    from ema_demo.ema_replay import EMAReplay
    from ema_demo.l2_anchor import L2Anchor
    check_strategy(EMAReplay, settings=["class-il", "domain-il"])
    check_strategy(L2Anchor, settings=["class-il"])
