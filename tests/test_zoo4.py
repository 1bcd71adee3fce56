"""Strategy zoo IV (iCaRL, LwF-MC, ER-ACE, ER-AML, X-DER, LUCIR, BiC, MIR, GSS): each method's defining
property checked directly, exact resume once the memories are full, and a short end-to-end run per strategy on
split-digits (the conformance kit and the SIGTERM resume test cover them in tests/test_conformance.py and
tests/test_resume.py)."""
from __future__ import annotations

import copy
import io
import json

import pytest
import torch
import torch.nn.functional as F

from clbench.config import compose
from clbench.engine import prepare, run
from clbench.strategies.parts import ExemplarMemory, embed, herding, supcon
from clbench.stream import Batch

torch.set_num_threads(1)

ZOO4 = ["icarl", "lwf_mc", "er_ace", "er_aml", "xder", "lucir", "bic", "mir", "gss"]


def make(strategy: str, *extra: str):
    """A prepared run (stream + strategy) on split-digits, experiences sealed as the engine hands them over."""
    r = prepare(compose([f"strategy={strategy}", "train.epochs=1", "wandb.mode=disabled", "device=cpu", *extra]))
    return r.strategy, [e.sealed() for e in r.stream]


def flat(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def whole(exp) -> Batch:
    return exp.train.get(torch.arange(len(exp.train)))


# ----- herding and the exemplar memory (iCaRL, LUCIR, BiC) ---------------------------------------------------
def test_herding_picks_the_running_mean_closest_to_the_class_mean_in_order():
    f = torch.tensor([[0.0], [10.0], [4.0], [6.0], [5.0]])       # mean 5
    # 1st: 5 (index 4); 2nd: 4 or 6 give running mean 4.5/5.5, the first wins (index 2); 3rd: 6 -> mean exactly 5
    assert herding(f, 3).tolist() == [4, 2, 3]
    g = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))
    order = herding(g, 15)
    assert len(set(order.tolist())) == 15                         # no sample chosen twice
    mu = g.mean(0)
    for k in range(15):                                           # each choice is the greedy best at its step
        prefix = g[order[:k]].sum(0)
        rest = [j for j in range(40) if j not in order[:k].tolist()]
        dists = torch.stack([((prefix + g[j]) / (k + 1) - mu).norm() for j in rest])
        assert float(((prefix + g[order[k]]) / (k + 1) - mu).norm()) == pytest.approx(float(dists.min()), abs=1e-9)


def test_exemplar_memory_reduce_keeps_the_first_m_of_every_class():
    mem = ExemplarMemory(10, torch.device("cpu"), torch.Generator())
    for c in (0, 1):
        x = torch.arange(5, dtype=torch.uint8).view(5, 1) + 10 * c
        mem.add({"x": x, "y": torch.full((5,), c), "t": torch.zeros(5, dtype=torch.long)}, rank=torch.arange(5))
    mem.reduce(2)
    assert mem.per_class() == {0: 2, 1: 2}
    assert mem.of_class(1)["x"].view(-1).tolist() == [10, 11]     # the first two in selection order
    with pytest.raises(ValueError):
        mem.add({"x": torch.zeros(7, 1, dtype=torch.uint8), "y": torch.zeros(7, dtype=torch.long),
                 "t": torch.zeros(7, dtype=torch.long)}, rank=torch.arange(7))


# ----- iCaRL / LwF-MC ------------------------------------------------------------------------------------------
def test_icarl_builds_herding_exemplars_and_classifies_by_the_nearest_exemplar_mean():
    s, exps = make("icarl", "strategy.buffer_size=20")
    s.train(exps[0])
    assert s.memory.per_class() == {0: 10, 1: 10}                 # m = K // #seen classes
    data = whole(exps[0])
    x0 = data.x[data.y == 0]
    expected = x0[herding(F.normalize(embed(s.model, x0).detach(), dim=1), 10)]
    assert torch.equal(s.memory.of_class(0)["x"], expected)
    s.train(exps[1])
    assert s.memory.per_class() == {c: 5 for c in range(4)}       # old classes reduced to their first 5
    assert torch.equal(s.memory.of_class(0)["x"], expected[:5])
    # NMC: the prediction is the class whose (normalised) exemplar mean is nearest
    s.model.eval()
    x = whole(exps[1]).x[:50]
    with torch.no_grad():
        means = torch.stack([F.normalize(F.normalize(embed(s.model, s.memory.of_class(c)["x"]), dim=1).mean(0), dim=0)
                             for c in range(4)])
        phi = F.normalize(embed(s.model, x), dim=1)
        nearest = torch.cdist(phi, means).argmin(1)
        assert torch.equal(s.predict(x).argmax(1), nearest)
        assert (s.predict(x)[:, 4:] == torch.finfo(torch.float32).min).all()   # classes without exemplars


def test_icarl_trains_on_exemplars_only_with_replay():
    sizes = {}
    for replay in (True, False):
        s, exps = make("icarl", "strategy.buffer_size=20", f"strategy.replay={str(replay).lower()}")
        s.train(exps[0])
        s.begin_experience(exps[1])
        sizes[replay] = len(s.training_data(exps[1]))
    assert sizes[True] == sizes[False] + 20


def test_lwf_mc_targets_are_old_network_sigmoids_for_old_classes_and_one_hot_for_new():
    s, exps = make("lwf_mc")
    s.train(exps[0])
    s.begin_experience(exps[1])
    b = exps[1].train.get(torch.arange(8))
    q = s.distillation_targets(b.x, b.y)
    with torch.no_grad():
        old = torch.sigmoid(s.previous_model(b.x))
    assert torch.allclose(q[:, :2], old[:, :2])                   # classes 0, 1: the old network's outputs
    assert torch.equal(q[:, 2:], F.one_hot(b.y, 10)[:, 2:4].float())
    expected = F.binary_cross_entropy_with_logits(s.model(b.x)[:, :4], q)
    assert float(s.loss(b)) == pytest.approx(float(expected), abs=1e-6)


# ----- ER-ACE / ER-AML -------------------------------------------------------------------------------------------
def test_er_ace_masks_logits_of_seen_classes_absent_from_the_batch():
    s, exps = make("er_ace")
    s.begin_experience(exps[1])
    s.seen_labels[:4] = True                                      # classes 0-3 seen so far
    b = whole(exps[1])
    b = Batch(x=b.x[b.y == 2][:6], y=b.y[b.y == 2][:6], t=b.t[:6], index=torch.arange(6))   # only class 2 present
    loss = s.incoming_loss(b)
    logits = s.model(b.x)
    allowed = torch.tensor([False, False, True, False] + [True] * 6)   # present (2) + never seen (4-9)
    assert float(loss) == pytest.approx(float(F.cross_entropy(logits[:, allowed], torch.zeros(6, dtype=torch.long))),
                                        abs=1e-5)
    s.model.zero_grad()
    loss.backward()
    w = s.model.classifier.weight.grad
    assert w[[0, 1, 3]].abs().sum() == 0 and w[2].abs().sum() > 0   # absent seen classes are not pushed down


def test_er_aml_positives_share_the_label_negatives_come_from_the_batch_classes():
    from clbench.strategies.er_aml import sample_pos_neg
    pool_y = torch.tensor([0, 0, 1, 3, 0, 1, 5])                  # buffer (4 samples) + incoming batch (3)
    y, own = pool_y[4:], torch.tensor([4, 5, 6])
    for seed in range(20):
        pos, neg, valid = sample_pos_neg(pool_y, y, own, torch.Generator().manual_seed(seed))
        assert valid.tolist() == [True, True, False]              # class 5 has no positive
        for i in range(2):
            assert pool_y[pos[i]] == y[i] and pos[i] != own[i]
            assert pool_y[neg[i]] != y[i] and int(pool_y[neg[i]]) in (0, 1, 5)   # labels of the minibatch


def test_supcon_matches_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    a, c = F.normalize(torch.randn(4, 3, generator=g), dim=1), F.normalize(torch.randn(5, 3, generator=g), dim=1)
    ya, yc = torch.tensor([0, 1, 0, 2]), torch.tensor([0, 0, 1, 1, 3])
    out = supcon(a, ya, c, yc, 0.5, 0.25)
    for i in range(4):
        logp = (a[i] @ c.T / 0.5).log_softmax(0)
        pos = yc == ya[i]
        want = -(0.5 / 0.25) * logp[pos].mean() if pos.any() else torch.tensor(0.0)
        assert float(out[i]) == pytest.approx(float(want), abs=1e-5)


# ----- MIR -----------------------------------------------------------------------------------------------------------
def test_mir_replays_the_candidates_whose_loss_a_virtual_sgd_step_increases_most():
    s, exps = make("mir", "strategy.buffer_size=100", "strategy.mem_batch_size=3", "strategy.subsample=20")
    s.train(exps[0])
    s.begin_experience(exps[1])
    cand = s.candidates()
    assert len(cand["y"]) == 20 and bool((cand["t"] != s.current_task).all())   # earlier tasks only
    s.candidates = lambda: cand
    b = exps[1].train.get(torch.arange(10))
    # the virtual update, done by hand on a copy: one SGD step on the incoming loss
    virtual = copy.deepcopy(s.model)
    opt = torch.optim.SGD(virtual.parameters(), lr=float(s.optimizer.param_groups[0]["lr"]))
    F.cross_entropy(virtual(b.x), b.y).backward()
    opt.step()
    with torch.no_grad():
        rise = (F.cross_entropy(virtual(cand["x"]), cand["y"], reduction="none")
                - F.cross_entropy(s.model(cand["x"]), cand["y"], reduction="none"))
    top = rise.argsort(descending=True)[:3]
    expected = F.cross_entropy(s.model(b.x), b.y) + F.cross_entropy(s.model(cand["x"][top]), cand["y"][top])
    assert float(s.loss(b)) == pytest.approx(float(expected), abs=1e-5)
    assert torch.allclose(s.interference(F.cross_entropy(s.model(b.x), b.y), cand), rise, atol=1e-5)


# ----- GSS -----------------------------------------------------------------------------------------------------------
def test_gss_a_batch_agreeing_with_memory_never_enters_a_full_buffer():
    s, exps = make("gss", "strategy.buffer_size=8", "strategy.score_batch_size=8")
    b = exps[0].train.get(torch.arange(8))
    s.select(b)                                                   # fills the buffer (scores: 0.1 for the first batch)
    assert len(s.buffer) == 8 and s.buffer.seen == 8
    stored = s.buffer.data["x"].clone()
    one = exps[0].train.get(torch.tensor([3] * 4))                # a stored sample: its gradient is in memory, cos = 1
    for _ in range(5):
        s.select(one)
    assert torch.equal(s.buffer.data["x"], stored) and s.buffer.seen == 28


def test_gss_evicts_in_proportion_to_the_stored_scores_and_replaces_with_probability_s_over_s_plus_c():
    s, exps = make("gss", "strategy.buffer_size=8")
    s.select(exps[0].train.get(torch.arange(8)))
    s.buffer.data["score"][:] = 0.0
    s.buffer.data["score"][5] = 1.5                              # the only stored sample with a non-zero score
    # the batch points away from the memory (c_B < 1) and the candidate is orthogonal to it (c = 0)
    s.similarity = lambda batch: (0.0, torch.zeros(len(batch.y)))
    one = exps[1].train.get(torch.tensor([0]))
    s.select(one)                                                 # draws slot 5, replaces it with probability 1
    assert int(s.buffer.data["y"][5]) == int(one.y[0]) and float(s.buffer.data["score"][5]) == 0.0
    # equal stored scores s = 1 and candidate score c = 1: each offer enters with probability 1 / (1 + 1)
    s.similarity = lambda batch: (0.5, torch.ones(len(batch.y)))
    before = s.n_inserted
    for _ in range(400):
        s.buffer.data["score"][:] = 1.0
        s.select(one)
    assert 0.4 < (s.n_inserted - before) / 400 < 0.6


def test_gss_gradient_gram_is_the_inner_product_of_per_sample_gradients():
    from clbench.strategies.gss import gradient_gram
    from clbench.strategies.parts import per_sample_grads
    s, exps = make("gss")
    b = exps[0].train.get(torch.arange(12))
    g = per_sample_grads(s.model, b.x, b.y)
    assert torch.allclose(gradient_gram(s.model, b.x, b.y), g @ g.T, rtol=1e-4, atol=1e-6)


def test_gss_scores_task_il_samples_by_the_gradient_of_their_masked_loss():
    from clbench.strategies.gss import gradient_gram
    from clbench.strategies.parts import per_sample_grads
    s, exps = make("gss", "scenario.name=task_incremental")
    s.train(exps[0])
    b1, b0 = exps[1].train.get(torch.arange(6)), exps[0].train.get(torch.arange(6))
    x, y, t = torch.cat([b0.x, b1.x]), torch.cat([b0.y, b1.y]), torch.cat([b0.t, b1.t])
    g = per_sample_grads(s.model, x, y, s.mask_logits, t)
    assert torch.allclose(gradient_gram(s.model, x, y, s.mask_logits, t), g @ g.T, rtol=1e-4, atol=1e-6)
    # a sample's masked loss has no gradient on the classifier rows of the other tasks' classes
    head = s.model.classifier
    rows = g[:, -head.weight.numel() - head.bias.numel():-head.bias.numel()].reshape(12, 10, -1).abs().amax(2)
    own = s.class_mask[t]
    assert float(rows[~own].max()) == 0.0 and bool((rows[own] > 0).all())
    unmasked = per_sample_grads(s.model, x, y)
    assert not torch.allclose(g, unmasked)
    # and GSS scores a candidate by those masked gradients: c_i = max_j cos(g_i, G_j) + 1
    state = s.generator.get_state()
    mem = s.buffer.sample(int(s.hp.score_batch_size))
    s.generator.set_state(state)
    s.model.eval()
    _, c = s.similarity(b1)
    gb = per_sample_grads(s.model, b1.x, b1.y, s.mask_logits, b1.t)
    gm = per_sample_grads(s.model, mem["x"], mem["y"], s.mask_logits, mem["t"])
    want = F.cosine_similarity(gb.unsqueeze(1), gm.unsqueeze(0), dim=2).max(1).values + 1
    assert torch.allclose(c.float(), want, atol=1e-4)


# ----- X-DER ---------------------------------------------------------------------------------------------------------
def test_xder_future_past_update_damps_transplanted_logits_below_the_ground_truth():
    from clbench.strategies.xder import damp, first_occurrences
    stored = torch.tensor([[5.0, 1.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0]])
    new = torch.tensor([[9.0, 9.0, 10.0, 4.0], [9.0, 9.0, 1.0, 0.5]])
    cols = torch.tensor([False, False, True, True])               # current + future heads
    out = damp(stored, new, torch.tensor([0, 0]), cols, gamma=0.85)
    assert torch.equal(out[:, :2], stored[:, :2])                 # past heads untouched
    assert torch.allclose(out[0, 2:], torch.tensor([10.0, 4.0]) * 0.85 * 5 / 10)   # max 10 > 5: scaled to 0.85*5
    assert torch.equal(out[1, 2:], torch.tensor([1.0, 0.5]))      # max 1 < 2: copied unscaled
    assert first_occurrences(torch.tensor([3, 1, 3, 2, 1])).tolist() == [True, True, False, True, False]


def test_xder_memory_is_class_balanced_and_stores_damped_logits():
    s, exps = make("xder", "strategy.buffer_size=24")
    s.train(exps[0])
    assert s.buffer.per_class() == {0: 12, 1: 12}
    s.train(exps[1])
    assert s.buffer.per_class() == {c: 6 for c in range(4)}
    z, y = s.buffer.data["logits"][:24], s.buffer.data["y"][:24]
    new = y >= 2
    gt = z[new].gather(1, y[new].view(-1, 1)).squeeze(1)
    assert bool((z[new][:, :2].max(1).values <= torch.maximum(gt, 0.85 * gt) + 1e-5).all())   # past heads damped


# ----- LUCIR ---------------------------------------------------------------------------------------------------------
def test_lucir_cosine_classifier_imprinting_and_frozen_old_weights():
    s, exps = make("lucir", "strategy.buffer_size=20")
    head = s.model.classifier
    f = torch.randn(3, head.in_features)
    assert torch.allclose(head(f), head(5 * f), atol=1e-5)       # the logits depend only on the feature direction
    assert torch.allclose(head(f), head.sigma * F.normalize(f, dim=1) @ F.normalize(head.weight, dim=1).T, atol=1e-6)
    s.train(exps[0])
    s.begin_experience(exps[1])
    with torch.no_grad():
        w = head.weight
        data = whole(exps[1])
        feats = F.normalize(embed(s.model, data.x[data.y == 2]), dim=1)
        want = F.normalize(feats.mean(0), dim=0) * w[:2].norm(dim=1).mean()
    assert torch.allclose(w[2], want, atol=1e-5)                  # imprinted
    old_rows = w[:2].clone()
    for pos in torch.arange(40).split(10):
        s.step(s.training_data(exps[1]).get(pos))
    assert torch.equal(w[:2], old_rows) and not torch.equal(w[2:4], want.expand(2, -1))


def test_lucir_margin_ranking_and_adaptive_lambda():
    s, exps = make("lucir")
    s.old_classes, s.seen_classes = [0, 1], [0, 1, 2, 3]
    cos = torch.tensor([[0.9, 0.1, 0.6, 0.7], [0.2, 0.1, 0.9, 0.0]])
    y = torch.tensor([0, 2])                                      # only the first is an old-class sample
    # hardest 2 new classes of sample 0: 0.7, 0.6 -> max(0, 0.5 - 0.9 + 0.7) = 0.3, max(0, 0.5 - 0.9 + 0.6) = 0.2
    assert float(s.margin_ranking(cos, y)) == pytest.approx(0.25)


# ----- BiC -----------------------------------------------------------------------------------------------------------
def test_bic_bias_layer_changes_only_the_new_class_logits_and_holds_out_validation_data():
    from clbench.strategies.bic import corrected
    z = torch.randn(5, 6)
    out = corrected(z, [4, 5], torch.tensor([0.5, -1.0]))
    assert torch.equal(out[:, :4], z[:, :4]) and torch.allclose(out[:, 4:], 0.5 * z[:, 4:] - 1.0)
    s, exps = make("bic", "strategy.buffer_size=40", "strategy.bias_epochs=50")
    s.train(exps[0])
    s.begin_experience(exps[1])
    train, held = s.split(exps[1])
    assert len(train["y"]) + len(held["y"]) == len(exps[1].train) + 40
    assert torch.isin(held["y"], torch.tensor([0, 1])).sum() == 4   # 10 % of the 40 exemplars
    assert sorted(held["y"].tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]   # as many of each new class
    for _ in s.train_experience(exps[1]):
        pass
    assert s.bias_classes == [2, 3] and not torch.equal(s.bias, torch.tensor([1.0, 0.0]))
    x = whole(exps[1]).x[:20]
    with torch.no_grad():
        raw, pred = s.model(x), s.predict(x)
    assert torch.equal(pred[:, [0, 1, 4, 5, 6, 7, 8, 9]], raw[:, [0, 1, 4, 5, 6, 7, 8, 9]])
    assert not torch.equal(pred[:, 2:4], raw[:, 2:4])


# ----- every strategy: exact resume and end to end ------------------------------------------------------------------
def _roundtrip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("strategy", ZOO4)
def test_resume_mid_experience_is_bit_identical(strategy):
    extra = ["strategy.buffer_size=60"] if strategy != "lwf_mc" else []
    s, exps = make(strategy, *extra)
    s.train(exps[0])
    it = s.train_experience(exps[1])
    for _ in range(7):
        next(it)
    saved = _roundtrip(s.state_dict())
    for _ in it:
        pass
    s.train(exps[2])
    fresh, _ = make(strategy, *extra)
    fresh.load_state_dict(saved)
    for _ in fresh.train_experience(exps[1]):
        pass
    fresh.train(exps[2])
    assert torch.equal(flat(s.model), flat(fresh.model))
    assert json.dumps(s.extra_state(), sort_keys=True) == json.dumps(fresh.extra_state(), sort_keys=True)
    x = whole(exps[2]).x[:64]
    s.model.eval(), fresh.model.eval()
    with torch.no_grad():
        assert torch.equal(s.predict(x), fresh.predict(x))


@pytest.mark.parametrize("strategy", ZOO4)
def test_end_to_end_on_digits(tmp_path, strategy):
    result, folder = run([f"strategy={strategy}", "train.epochs=1", "wandb.mode=disabled", f"out={tmp_path}",
                          "progress=false", "device=cpu"], console=False)
    saved = json.loads((folder / "result.json").read_text())
    assert len(saved["accuracy_matrix"]) == 5
    # well above chance (0.1); LwF-MC has no exemplars, so class-IL stays near fine-tuning (naive: about 0.17)
    assert saved["metrics"]["acc"] > (0.2 if strategy == "lwf_mc" else 0.3)
