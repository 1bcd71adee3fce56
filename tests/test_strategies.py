"""The strategy zoo: each mechanism checked directly, then a short end-to-end run per strategy on digits."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from clbench.buffer import ClassBalancedBuffer, ReservoirBuffer
from clbench.config import compose
from clbench.engine import prepare, run
from clbench.stream import Batch, Experience, TensorSplit

torch.set_num_threads(1)


def make(strategy: str, *extra: str):
    """A prepared run (stream + strategy) on split-digits."""
    return prepare(compose([f"strategy={strategy}", "train.epochs=1", "wandb.mode=disabled", "device=cpu",
                            *extra]))


def batch_of(values: torch.Tensor, labels: torch.Tensor) -> Batch:
    return Batch(x=values, y=labels, t=torch.zeros_like(labels), index=torch.arange(len(labels)))


def flat(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


# ----- buffers ------------------------------------------------------------------------------------
def test_reservoir_is_a_uniform_sample_of_the_stream():
    """Each of 1000 stream items ends up in a 100-slot reservoir with probability 0.1, wherever it came."""
    n, cap, trials = 1000, 100, 150
    hits = torch.zeros(n)
    g = torch.Generator().manual_seed(0)
    for _ in range(trials):
        buf = ReservoirBuffer(cap, torch.device("cpu"), g)
        for start in range(0, n, 25):
            ids = torch.arange(start, start + 25)
            buf.add(batch_of(ids, torch.zeros(25, dtype=torch.long)))
        assert len(buf) == cap and buf.seen == n
        stored = buf.data["x"][:len(buf)]
        assert len(torch.unique(stored)) == cap            # no duplicates
        hits[stored] += 1
    # inclusion frequency per tenth of the stream: 0.1 each (binomial sd ~ 0.0024 per block of 100 items)
    per_block = hits.view(10, 100).sum(1) / (100 * trials)
    assert torch.allclose(per_block, torch.full((10,), 0.1), atol=0.012), per_block
    # and an early item is no more likely than a late one overall
    assert abs(hits[:500].mean() - hits[500:].mean()) / trials < 0.01


def test_buffers_keep_native_dtype_and_report_footprint():
    buf = ReservoirBuffer(10, torch.device("cpu"), torch.Generator().manual_seed(0))
    x = torch.randint(0, 255, (4, 1, 8, 8), dtype=torch.uint8)
    buf.add(batch_of(x, torch.arange(4)), logits=torch.randn(4, 10))
    st = buf.state()
    assert buf.data["x"].dtype == torch.uint8 and st["dtype"] == "uint8"
    assert st["bytes"] == 10 * 64 + 10 * 8 + 10 * 8 + 10 * 10 * 4     # x uint8, y and t int64, logits fp32
    assert torch.equal(buf.data["x"][:4], x)


def test_class_balanced_buffer_is_balanced_and_uniform_within_classes():
    """Classes arrive one after another with 600 / 120 / 60 samples; a 60-slot memory ends 20 / 20 / 20,
    and the class kept longest holds a spread of its stream (reservoir within the class), not its first 20."""
    g = torch.Generator().manual_seed(1)
    buf = ClassBalancedBuffer(60, torch.device("cpu"), g)
    for c, n in ((0, 600), (1, 120), (2, 60)):
        ids = torch.arange(n) + 1000 * c
        for start in range(0, n, 10):
            sl = ids[start:start + 10]
            buf.add(batch_of(sl, torch.full((len(sl),), c)))
    assert buf.counts() == {0: 20, 1: 20, 2: 20}
    assert torch.equal(buf.labels, buf.data["y"])                     # bookkeeping matches the stored labels
    class0 = buf.data["x"][buf.data["y"] == 0].float()
    assert class0.mean() > 150                                        # the first 20 would average 9.5
    assert buf.state()["per_class"] == {"0": 20, "1": 20, "2": 20}


def test_greedy_class_balanced_buffer_drops_when_at_share():
    buf = ClassBalancedBuffer(4, torch.device("cpu"), torch.Generator().manual_seed(0), within_class="drop")
    buf.add(batch_of(torch.arange(6), torch.zeros(6, dtype=torch.long)))
    assert buf.data["x"].tolist() == [0, 1, 2, 3]                     # full: later class-0 samples dropped
    buf.add(batch_of(torch.tensor([10, 11, 12]), torch.ones(3, dtype=torch.long)))
    assert buf.counts() == {0: 2, 1: 2}                               # class 1 took half, then was dropped


# ----- A-GEM -----------------------------------------------------------------------------------------
def test_agem_projection_formula():
    from clbench.strategies.agem import project
    g, g_ref = torch.tensor([1.0, -2.0]), torch.tensor([0.0, 1.0])
    assert torch.allclose(project(g, g_ref), torch.tensor([1.0, 0.0]))   # hand-computed: g - (-2/1) g_ref
    agree = torch.tensor([1.0, 2.0])
    assert project(agree, g_ref) is agree


def test_agem_projected_gradient_agrees_with_reference_gradient():
    r = make("agem", "strategy.mem_per_experience=50", "strategy.ref_batch_size=64")
    s, exps = r.strategy, list(r.stream)
    s.train(exps[0])
    assert len(s.memory) == 50
    from clbench.strategies.agem import flat_grad
    refs = []
    orig = s.reference_gradient
    s.reference_gradient = lambda: refs.append(orig()) or refs[-1]
    s.experience = exps[1]
    dots_before, dots_after = [], []
    for k, batch in enumerate(exps[1].train.batches(16, generator=torch.Generator().manual_seed(0))):
        if k == 8:
            break
        s.optimizer.zero_grad()
        s.loss(batch).backward()
        g = flat_grad(s.params)
        s.after_backward(batch)
        g_new = flat_grad(s.params)
        dots_before.append(float(g @ refs[-1]))
        dots_after.append(float(g_new @ refs[-1]))
        s.optimizer.step()
    assert min(dots_before) < 0                     # the new task's gradient does conflict with the memory
    assert min(dots_after) >= -1e-5 * max(abs(d) for d in dots_before)


# ----- EWC ------------------------------------------------------------------------------------------
def test_ewc_penalty_zero_at_anchor_positive_away():
    r = make("ewc", "strategy.ewc_lambda=1.0")
    s, exps = r.strategy, list(r.stream)
    s.train(exps[0])
    assert len(s.anchors) == 1 and float(s.penalty().detach()) == 0.0
    fisher, _ = s.anchors[0]
    with torch.no_grad():
        for p in s.model.parameters():
            p.add_(0.01)
    expected = sum(float((f * 0.01 ** 2).sum()) for f in fisher.values())
    assert float(s.penalty().detach()) == pytest.approx(expected, rel=1e-4) and expected > 0


def test_ewc_fisher_matches_a_per_sample_loop():
    from clbench.strategies.ewc import fisher_diagonal
    r = make("ewc")
    s, exp = r.strategy, list(r.stream)[0]
    small = Experience(index=0, train=TensorSplit(exp.train.x, exp.train.y, exp.train.indices[:12], task=0),
                       task_ids=[0], classes=exp.classes, task_visible_at_test=False)
    fisher = fisher_diagonal(s, small, None)
    expected = {n: torch.zeros_like(p) for n, p in s.model.named_parameters()}
    for i in range(12):
        b = small.train.get(torch.tensor([i]))
        s.model.zero_grad()
        log_p = F.log_softmax(s.model(b.x), 1)[0, b.y[0]]
        log_p.backward()
        for n, p in s.model.named_parameters():
            expected[n] += log_p.detach().exp() * p.grad ** 2 / 12
    for n in expected:
        assert torch.allclose(fisher[n], expected[n], atol=1e-7, rtol=1e-4), n


def test_online_ewc_keeps_one_decayed_anchor():
    r = make("ewc", "strategy.mode=online", "strategy.gamma=0.5")
    s, exps = r.strategy, list(r.stream)
    s.train(exps[0])
    f0 = {k: v.clone() for k, v in s.anchors[0][0].items()}
    s.train(exps[1])
    assert len(s.anchors) == 1
    from clbench.strategies.ewc import fisher_diagonal
    f1 = fisher_diagonal(s, exps[1], None)   # same weights as at the end of exps[1]
    for k in f0:
        assert torch.allclose(s.anchors[0][0][k], 0.5 * f0[k] + f1[k], atol=1e-6)


# ----- SI -------------------------------------------------------------------------------------------
def test_si_omega_accumulation():
    r = make("si", "strategy.si_c=0.5", "strategy.xi=0.1", "strategy.clip_grad=null", "train.lr=0.05")
    s, exp = r.strategy, list(r.stream)[0]
    s.experience = exp
    batch = exp.train.get(torch.arange(16))
    theta0 = {n: p.detach().clone() for n, p in s.params.items()}
    s.train_step(batch)
    # plain SGD: -g * delta = -g * (-lr g) = lr g^2
    for n in s.params:
        g = s._grad[n]
        assert torch.allclose(s.omega[n], 0.05 * g ** 2, atol=1e-9)
    omega = {n: v.clone() for n, v in s.omega.items()}
    s.after_experience(exp)
    for n, p in s.params.items():
        delta = p.detach() - theta0[n]
        assert torch.allclose(s.big_omega[n], omega[n] / (delta ** 2 + 0.1), atol=1e-9)
        assert torch.equal(s.theta_prev[n], p.detach()) and float(s.omega[n].abs().sum()) == 0.0
    assert float(s.penalty().detach()) == 0.0            # at the new anchor


# ----- DER ------------------------------------------------------------------------------------------
def test_der_stores_logits_at_insertion_and_never_updates_them():
    r = make("der", "strategy.buffer_size=1000", "strategy.alpha=0.5")
    s, exp = r.strategy, list(r.stream)[0]
    s.experience = exp
    first = exp.train.get(torch.arange(16))
    with torch.no_grad():
        before = s.model(first.x).clone()                  # the logits of the step that sees `first`
    s.train_step(first)
    stored = s.buffer.data["logits"][:16].clone()
    assert torch.allclose(stored, before, atol=1e-6)
    for k in range(1, 6):                                   # more steps (capacity > samples: no eviction)
        s.train_step(exp.train.get(torch.arange(16 * k, 16 * k + 16)))
    with torch.no_grad():
        now = s.model(first.x)
    assert not torch.allclose(now, before, atol=1e-3)      # the model moved ...
    assert torch.equal(s.buffer.data["logits"][:16], stored)   # ... the stored targets did not


def test_derpp_uses_an_independent_second_sample():
    r = make("derpp", "strategy.buffer_size=200")
    s, exp = r.strategy, list(r.stream)[0]
    s.experience = exp
    calls = []
    orig = s.buffer.sample
    s.buffer.sample = lambda n, generator=None: calls.append(n) or orig(n, generator)
    s.train_step(exp.train.get(torch.arange(16)))          # empty buffer: no replay terms
    s.train_step(exp.train.get(torch.arange(16, 32)))
    assert len(calls) == 2                                  # DER's sample and DER++'s own sample


# ----- LwF ------------------------------------------------------------------------------------------
def test_lwf_distills_from_the_frozen_old_model():
    r = make("lwf", "strategy.alpha=1.0")
    s, exps = r.strategy, list(r.stream)
    s.train(exps[0])
    old = copy.deepcopy(s.model.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(s.previous_model.state_dict().values(), old.values()))
    assert all(not p.requires_grad for p in s.previous_model.parameters())
    s.begin_experience(exps[1])
    batch = exps[1].train.get(torch.arange(16))
    # model == teacher: the distillation term is zero, the loss is the cross-entropy over seen classes
    seen = torch.tensor(s.seen_classes)
    ce = F.cross_entropy(s.model(batch.x)[:, seen], torch.searchsorted(seen, batch.y))
    assert float(s.loss(batch).detach()) == pytest.approx(float(ce.detach()), abs=1e-6)
    for _ in range(3):
        s.train_step(batch)
    # training moved the student, not the teacher; the term is now positive
    assert all(torch.equal(a, b) for a, b in zip(s.previous_model.state_dict().values(), old.values()))
    ce = F.cross_entropy(s.model(batch.x)[:, seen], torch.searchsorted(seen, batch.y))
    assert float(s.loss(batch).detach()) > float(ce.detach()) + 1e-6


# ----- GDumb ----------------------------------------------------------------------------------------
def test_gdumb_balanced_memory_and_retrains_from_scratch():
    r = make("gdumb", "strategy.buffer_size=100")
    s, exps = r.strategy, list(r.stream)
    initial = flat(s.model)
    starts = []
    data = s.training_data
    s.training_data = lambda exp: (lambda d: (starts.append((flat(s.model), len(d))), d)[1])(data(exp))
    for e in exps[:3]:
        s.train(e)
    counts = s.buffer.counts()
    assert sum(counts.values()) == 100 and max(counts.values()) - min(counts.values()) <= 1
    assert set(counts) == set(range(6))
    for w, n in starts:                      # every retraining starts from the initial weights, on the memory
        assert torch.equal(w, initial)
    assert [n for _, n in starts][-1] == 100


# ----- joint / cumulative ---------------------------------------------------------------------------
def test_joint_trains_once_on_the_union_and_cumulative_on_the_prefix():
    seen = []
    r = make("joint")
    s = r.strategy
    for e in r.stream:
        s.train(e)
    assert s.trained_at == [len(r.stream) - 1]
    assert s.extra_state()["union_size"] == sum(len(e.train) for e in r.stream)
    c = make("cumulative").strategy
    data = c.training_data
    c.training_data = lambda exp: (lambda d: (seen.append(len(d)), d)[1])(data(exp))
    for e in make("cumulative").stream:
        c.train(e)
    sizes = [len(e.train) for e in r.stream]
    assert seen == [sum(sizes[:i + 1]) for i in range(len(sizes))]


# ----- end to end -----------------------------------------------------------------------------------
ALL = ["naive", "joint", "cumulative", "replay", "der", "derpp", "agem", "ewc", "si", "lwf", "gdumb"]


@pytest.mark.parametrize("strategy,extra", [(s, []) for s in ALL] + [
    ("replay", ["strategy.buffer=class_balanced"]), ("ewc", ["strategy.mode=online"]),
    ("joint", ["strategy.every_experience=true"])])
def test_end_to_end_on_digits(tmp_path, strategy, extra):
    result, folder = run([f"strategy={strategy}", *extra, "train.epochs=1", "wandb.mode=disabled",
                          f"out={tmp_path}", "progress=false", "device=cpu"], console=False)
    saved = json.loads((folder / "result.json").read_text())
    assert len(saved["accuracy_matrix"]) == 5 and all(len(row) == 5 for row in saved["accuracy_matrix"])
    assert 0.0 <= saved["metrics"]["acc"] <= 1.0
    assert saved["config"]["strategy"]["name"] == strategy
    if "buffer_size" in saved["config"]["strategy"]:
        assert saved["strategy_state"]["buffer"]["bytes"] > 0
        assert saved["strategy_state"]["buffer"]["dtype"] == "uint8"


def test_replay_beats_naive_on_digits(tmp_path):
    accs = {}
    for s in ("naive", "replay"):
        res, _ = run([f"strategy={s}", "wandb.mode=disabled", f"out={tmp_path}", "progress=false", "device=cpu"],
                     console=False)
        accs[s] = res["metrics"]["acc"]
    assert accs["replay"] > accs["naive"] + 0.15, accs


def test_bad_strategy_options_name_the_key():
    from clbench.config import ConfigError
    with pytest.raises(ConfigError, match="strategy.buffer"):
        make("replay", "strategy.buffer=fifo")
    with pytest.raises(ConfigError, match="strategy.mode"):
        make("ewc", "strategy.mode=sum")


def test_non_finite_loss_fails_the_run_naming_strategy_experience_and_step(tmp_path):
    """A NaN loss stops training with a clear error instead of writing NaN weights and results."""
    r = make("naive")
    s, exp = r.strategy, r.stream.experiences[0]
    w0 = flat(s.model).clone()
    base_loss, calls = s.loss, [0]

    def loss(batch):
        calls[0] += 1
        value = base_loss(batch)
        return value * float("nan") if calls[0] == 3 else value
    s.loss = loss
    with pytest.raises(RuntimeError, match=r"Naive.*non-finite.*experience 0, step 3"):
        s.train(exp)
    assert torch.isfinite(flat(s.model)).all()          # the NaN never reached the weights
    assert not torch.equal(flat(s.model), w0)           # the two finite steps did
