"""FPF / k-FPF: only the chosen modules move; the wrapper leaves the strategy untouched otherwise; k-FPF
replays nothing between its k finetuning calls; the module-drift measure on a hand-computed change."""
import pytest
import torch
import torch.nn.functional as F

from clbench.config import ConfigError, compose
from clbench.engine import prepare
from clbench.strategies.fpf import drift, finetune, snapshot

BASE = ["wandb.mode=disabled", "device=cpu", "train.epochs=1"]


def make(*extra):
    r = prepare(compose([*BASE, *extra]))
    return r.strategy, [e.sealed() for e in r.stream.experiences]


def params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_finetune_moves_only_the_chosen_modules_and_lowers_the_buffer_loss():
    s, exps = make("strategy=replay", "strategy.buffer_size=100")
    s.train(exps[0])
    s.train(exps[1])
    before = params(s.model)
    mem = s.buffer.contents()
    with torch.no_grad():
        loss0 = float(F.cross_entropy(s.model(mem["x"]), mem["y"]))
    finetune(s, s.buffer, ["classifier"], iters=50, lr=0.1, batch_size=32, kd=0.0,
             generator=torch.Generator().manual_seed(0))
    after = params(s.model)
    for name in before:
        moved = not torch.equal(before[name], after[name])
        assert moved == name.startswith("classifier."), name
    with torch.no_grad():
        assert float(F.cross_entropy(s.model(mem["x"]), mem["y"])) < loss0
    assert all(p.requires_grad for p in s.model.parameters())          # flags restored


def test_finetuned_batchnorm_follows_the_buffer_and_others_keep_their_statistics():
    s, exps = make("strategy=replay", "model.name=reduced_resnet18", "model.nf=4", "strategy.buffer_size=50")
    s.train(exps[0])
    bns = {n: m for n, m in s.model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    first, last = list(bns)[0], list(bns)[-1]
    stats = {n: m.running_mean.clone() for n, m in bns.items()}
    finetune(s, s.buffer, [last], iters=5, lr=0.01, batch_size=16, kd=0.0, generator=torch.Generator())
    assert not torch.equal(bns[last].running_mean, stats[last])
    assert torch.equal(bns[first].running_mean, stats[first])


def test_fpf_with_zero_iterations_leaves_the_strategy_bit_identical():
    plain, exps = make("strategy=replay")
    wrapped, _ = make("strategy=replay", "callbacks=[fpf]", "callbacks.fpf.iters=0")
    for e in exps[:2]:
        plain.train(e)
        wrapped.train(e)
    for p, q in zip(plain.model.parameters(), wrapped.model.parameters()):
        assert torch.equal(p, q)
    (cb,) = wrapped.callbacks
    assert cb.own_buffer is None                  # FPF uses the strategy's buffer: nothing stored twice
    assert wrapped.memory_footprint() == plain.memory_footprint()


def test_fpf_around_a_strategy_without_buffer_keeps_its_own_reservoir():
    s, exps = make("strategy=naive", "callbacks=[fpf]", "callbacks.fpf.buffer_size=30", "callbacks.fpf.iters=5")
    s.train(exps[0])
    (cb,) = s.callbacks
    assert len(cb.own_buffer) == 30 and cb.n_fpf == 1
    assert s.memory_footprint()["exemplar_bytes"] == 30 * 64


def test_module_drift_is_the_size_normalised_l1_change():
    s, exps = make("strategy=naive", "callbacks=[module_drift]")
    before = snapshot(s.model)
    with torch.no_grad():
        s.model.classifier.weight[0, :4] += torch.tensor([1.0, -2.0, 0.5, 0.5])
    d = drift(before, snapshot(s.model))
    n = s.model.classifier.weight.numel() + s.model.classifier.bias.numel()
    assert d["classifier"] == pytest.approx(4.0 / n)
    assert d["features.1"] == 0.0
    s.train(exps[0])
    (cb,) = s.callbacks
    assert set(cb.drifts[0]) == {"features.1", "features.3", "classifier"}


def test_kfpf_replays_nothing_and_finetunes_k_times():
    s, exps = make("strategy=kfpf", "strategy.k=4", "strategy.iters=3")
    batch = exps[0].train.get(torch.arange(16))
    assert torch.allclose(s.loss(batch), F.cross_entropy(s.model(batch.x), batch.y))   # CE on the stream only
    calls = []
    s._fpf = lambda strategy, buffer, key: (calls.append(s.global_step), setattr(s, "n_fpf", s.n_fpf + 1))
    for e in exps:
        s.train(e)
    period = -(-5 * -(-len(exps[0].train) // 16) // 4)          # ceil(5 x steps of the first experience / k)
    assert s.period == period
    assert calls == [period, 2 * period, 3 * period, s.global_step]   # k - 1 periodic calls, the k-th at the end


def test_unknown_module_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match="strategy.modules.*no module 'head'"):
        make("strategy=kfpf", "strategy.modules=[head]")


def test_a_callback_preset_sets_the_callback_keys_only():
    """configs/strategy/fpf.yaml (seq-mnist) reaches callbacks.fpf and leaves the strategy's keys alone."""
    cfg = compose(["benchmark=seq-mnist", "strategy=replay", "callbacks=[fpf]"])
    assert cfg["callbacks"]["fpf"]["modules"] == ["classifier"] and cfg["callbacks"]["fpf"]["iters"] == 300
    assert set(cfg["strategy"]) == {"name", "buffer_size", "buffer", "mem_batch_size"}
