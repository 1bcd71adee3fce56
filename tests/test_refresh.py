"""Refresh learning: config composition with the base's hyper-parameters, the unlearn step, the unchanged
relearn step, and the per-example Fisher."""
import pytest
import torch
import torch.nn.functional as F

from clbench.config import ConfigError, compose
from clbench.engine import prepare, run

BASE = ["benchmark=split-digits", "wandb.mode=disabled", "device=cpu", "train.epochs=1"]


def test_base_hyper_parameters_appear_alongside_refresh_ones():
    cfg = compose(BASE + ["strategy=refresh", "strategy.base=derpp", "strategy.alpha=0.1", "strategy.mode=paper"])
    st = cfg["strategy"]
    assert st["base"] == "derpp" and st["mode"] == "paper" and st["alpha"] == 0.1 and "beta" in st
    with pytest.raises(ConfigError, match="strategy.beta_typo"):
        compose(BASE + ["strategy=refresh", "strategy.base=derpp", "strategy.beta_typo=1"])
    with pytest.raises(ConfigError, match="strategy.mode"):
        prepare(compose(BASE + ["strategy=refresh", "strategy.mode=both"]))


def _batch_loss(s, batch):
    with torch.no_grad():
        return float(F.cross_entropy(s.model(batch.x), batch.y))


@pytest.mark.parametrize("mode, extra", [("code", ["strategy.delta=1e-2", "strategy.noise=0"]),
                                         ("paper", ["strategy.gamma=1e-2", "strategy.noise_scale=0"])])
def test_unlearn_step_increases_the_batch_loss(mode, extra):
    r = prepare(compose(BASE + ["strategy=refresh", f"strategy.mode={mode}", *extra]))
    s, exp = r.strategy, r.stream.experiences[0]
    batch = exp.train.get(torch.arange(32))
    before = _batch_loss(s, batch)
    s.unlearn(batch)
    assert _batch_loss(s, batch) > before + 1e-4


def test_relearn_is_the_base_step_unchanged():
    """With a zero unlearn step, refresh(replay) is bit-identical to replay: same optimiser, same loss,
    same random streams (refresh draws its noise from its own generator)."""
    plain = prepare(compose(BASE + ["strategy=replay"]))
    wrapped = prepare(compose(BASE + ["strategy=refresh", "strategy.base=replay", "strategy.delta=0"]))
    assert type(wrapped.strategy.optimizer) is type(plain.strategy.optimizer)
    for exp_p, exp_w in list(zip(plain.stream, wrapped.stream))[:2]:
        plain.strategy.train(exp_p)
        wrapped.strategy.train(exp_w)
    for p, q in zip(plain.strategy.model.parameters(), wrapped.strategy.model.parameters()):
        assert torch.equal(p, q)
    assert wrapped.strategy.n_unlearn > 0
    assert torch.equal(plain.strategy.buffer.data["y"], wrapped.strategy.buffer.data["y"])


def test_unlearn_then_relearn_order():
    """Each training step first unlearns (model moved away), then runs the base step from there."""
    r = prepare(compose(BASE + ["strategy=refresh", "strategy.delta=1e-2"]))
    s, exp = r.strategy, r.stream.experiences[0]
    calls = []
    base_step = type(s.base).train_step
    orig_unlearn = s.unlearn

    def spy_unlearn(batch):
        calls.append("unlearn")
        orig_unlearn(batch)

    s.unlearn = spy_unlearn
    type(s.base).train_step = lambda self, b: (calls.append("relearn"), base_step(self, b))[1]
    try:
        s.base.train_step(exp.train.get(torch.arange(8)))
    finally:
        type(s.base).train_step = base_step
    assert calls == ["unlearn", "relearn"]


def test_fisher_matches_a_per_example_loop():
    r = prepare(compose(BASE + ["strategy=refresh", "strategy.fisher_samples=40"]))
    s, exp = r.strategy, r.stream.experiences[0]
    g = torch.Generator().manual_seed(123)
    s.generator = g
    s.update_fisher(exp, chunk=16)
    got = {k: v.clone() for k, v in s.fisher.items()}
    # the same 40 samples, one at a time, as the code's batch-size-1 loop
    pos = torch.randperm(len(exp.train), generator=torch.Generator().manual_seed(123))[:40]
    ref = {n: torch.zeros_like(p) for n, p in s.model.named_parameters()}
    for i in pos.tolist():
        b = exp.train.get(torch.tensor([i]))
        s.model.zero_grad()
        logp = F.log_softmax(s.model(b.x), 1)[0, b.y[0]]
        logp.backward()
        for n, p in s.model.named_parameters():
            ref[n] += torch.exp(logp.detach()) * p.grad ** 2
    for n in ref:
        assert torch.allclose(got[n], ref[n] / 40, rtol=1e-4, atol=1e-9), n


@pytest.mark.parametrize("base", ["derpp", "clser"])
def test_end_to_end_with_a_base(base, tmp_path):
    result, _ = run(BASE + ["strategy=refresh", f"strategy.base={base}", f"out={tmp_path}", "progress=false"],
                    console=False)
    state = result["strategy_state"]
    assert state["refresh"]["base"] == base and state["refresh"]["unlearn_steps"] > 0
    if base == "clser":     # the wrapper passes the three-model evaluation through
        assert len(state["models"]["stable"]["accuracy_matrix"]) == 5
        assert state["models"]["working"]["acc"] > 0.3
    else:
        assert result["metrics"]["acc"] > 0.3
