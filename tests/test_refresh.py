"""Refresh learning as a callback: config composition next to any strategy, the unlearn step, the unchanged
relearn step, the around-step order, and the per-example Fisher."""
import pytest
import torch
import torch.nn.functional as F

from clbench.config import ConfigError, compose
from clbench.engine import prepare, run

BASE = ["benchmark=split-digits", "wandb.mode=disabled", "device=cpu", "train.epochs=1"]


def refresh_of(r):
    (cb,) = r.strategy.callbacks
    return cb


def test_callback_hyper_parameters_are_declared_next_to_the_strategy_ones():
    cfg = compose(BASE + ["strategy=derpp", "strategy.alpha=0.1", "callbacks=[refresh]",
                          "callbacks.refresh.mode=paper"])
    assert cfg["strategy"]["alpha"] == 0.1 and cfg["callbacks"]["refresh"]["mode"] == "paper"
    with pytest.raises(ConfigError, match="callback 'refresh' declares no hyper-parameter 'beta_typo'"):
        compose(BASE + ["callbacks=[refresh]", "callbacks.refresh.beta_typo=1"])
    with pytest.raises(ConfigError, match="callbacks.refresh.mode"):
        compose(BASE + ["callbacks=[refresh]", "callbacks.refresh.mode=both"])
    with pytest.raises(ConfigError, match="is a callback, not a strategy"):
        compose(BASE + ["strategy=refresh"])


def _batch_loss(s, batch):
    with torch.no_grad():
        return float(F.cross_entropy(s.model(batch.x), batch.y))


@pytest.mark.parametrize("mode, extra", [("code", ["callbacks.refresh.delta=1e-2", "callbacks.refresh.noise=0"]),
                                         ("paper", ["callbacks.refresh.gamma=1e-2",
                                                    "callbacks.refresh.noise_scale=0"])])
def test_unlearn_step_increases_the_batch_loss(mode, extra):
    r = prepare(compose(BASE + ["callbacks=[refresh]", f"callbacks.refresh.mode={mode}", *extra]))
    s, exp = r.strategy, r.stream.experiences[0].sealed()
    batch = exp.train.get(torch.arange(32))
    before = _batch_loss(s, batch)
    refresh_of(r).unlearn(s, batch)
    assert _batch_loss(s, batch) > before + 1e-4


def test_relearn_is_the_strategy_step_unchanged():
    """With a zero unlearn step, replay + refresh is bit-identical to replay: same optimiser, same loss,
    same random streams (refresh draws its noise from its own generator)."""
    plain = prepare(compose(BASE + ["strategy=replay"]))
    wrapped = prepare(compose(BASE + ["strategy=replay", "callbacks=[refresh]", "callbacks.refresh.delta=0"]))
    assert type(wrapped.strategy.optimizer) is type(plain.strategy.optimizer)
    for exp_p, exp_w in list(zip(plain.stream, wrapped.stream))[:2]:
        plain.strategy.train(exp_p.sealed())
        wrapped.strategy.train(exp_w.sealed())
    for p, q in zip(plain.strategy.model.parameters(), wrapped.strategy.model.parameters()):
        assert torch.equal(p, q)
    assert refresh_of(wrapped).n_unlearn > 0
    assert torch.equal(plain.strategy.buffer.data["y"], wrapped.strategy.buffer.data["y"])


def test_unlearn_then_relearn_order():
    """Each training step first unlearns (around_step, before the step), then runs the strategy's own step."""
    r = prepare(compose(BASE + ["callbacks=[refresh]", "callbacks.refresh.delta=1e-2"]))
    s, cb = r.strategy, refresh_of(r)
    calls = []
    orig_unlearn, orig_step = cb.unlearn, s.train_step
    cb.unlearn = lambda strategy, batch: (calls.append("unlearn"), orig_unlearn(strategy, batch))[1]
    s.train_step = lambda batch: (calls.append("relearn"), orig_step(batch))[1]
    exp = r.stream.experiences[0].sealed()
    s.begin_experience(exp)
    s.step(exp.train.get(torch.arange(8)))
    assert calls == ["unlearn", "relearn"]


def test_fisher_matches_a_per_example_loop():
    r = prepare(compose(BASE + ["callbacks=[refresh]", "callbacks.refresh.fisher_samples=40"]))
    s, cb, exp = r.strategy, refresh_of(r), r.stream.experiences[0].sealed()
    cb.generator = torch.Generator().manual_seed(123)
    cb.update_fisher(s, exp, chunk=16)
    got = {k: v.clone() for k, v in cb.fisher.items()}
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


@pytest.mark.parametrize("strategy", ["derpp", "clser"])
def test_end_to_end_around_a_strategy(strategy, tmp_path):
    result, _ = run(BASE + [f"strategy={strategy}", "callbacks=[refresh]", f"out={tmp_path}", "progress=false"],
                    console=False)
    state = result["strategy_state"]["callback:Refresh"]
    assert state["unlearn_steps"] > 0
    assert result["config"]["callbacks"]["refresh"]["mode"] == "code"
    if strategy == "clser":     # the extra models are still scored
        assert len(result["extra_models"]["working"]["accuracy_matrix"]) == 5
        assert result["extra_models"]["working"]["acc"] > 0.3
    else:
        assert result["metrics"]["acc"] > 0.3
