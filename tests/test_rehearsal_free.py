"""Rehearsal-free regularisation (Smith et al.): the BCE targets of PredKD are the teacher's sigmoids on old
classes, L2 / EWC act on the feature extractor only, and the EWC importance is the code's summed squared
gradients of the task's own BCE."""
import pytest
import torch
import torch.nn.functional as F

from clbench.config import ConfigError, compose
from clbench.engine import prepare
from clbench.testing import check_strategy

torch.set_num_threads(1)
TINY = ["benchmark=split-digits", "dataset.train_per_class=20", "dataset.test_per_class=10", "device=cpu",
        "wandb.mode=disabled", "progress=false", "train.epochs=1", "strategy=rehearsal_free"]


def test_rehearsal_free_with_every_term_conforms():      # the default terms: tests/test_conformance.py
    check_strategy("rehearsal_free", extra=["strategy.terms=[pred_kd,feat_kd,l2,ewc]"])


def test_unknown_term_is_refused():
    with pytest.raises(ConfigError, match="strategy.terms.*pred_kd, feat_kd, l2, ewc"):
        prepare(compose([*TINY, "strategy.terms=[pred_kd,lwf]"]))


def trained(terms: str, n_exp: int = 1):
    r = prepare(compose([*TINY, f"strategy.terms={terms}"]))
    for e in r.stream.experiences[:n_exp]:
        r.strategy.train(e.sealed())
    r.strategy.begin_experience(r.stream.experiences[n_exp].sealed())
    return r.strategy, r.strategy.experience.train.get(torch.arange(8))


def test_pred_kd_targets_are_the_teachers_sigmoids_on_old_classes():
    s, b = trained("[pred_kd]")
    seen = torch.tensor(s.seen_classes)                       # 0, 1 (old) and 2, 3 (current)
    target = s.bce_targets(b, seen)
    with torch.no_grad():
        teacher = torch.sigmoid(s.previous_model(b.x))
    assert torch.allclose(target[:, :2], teacher[:, :2])
    assert torch.equal(target[:, 2:], (b.y[:, None] == seen[None, 2:]).float())
    s2, b2 = trained("[]")
    assert torch.equal(s2.bce_targets(b2, seen), (b2.y[:, None] == seen[None]).float())   # plain BCE


def test_l2_penalises_the_feature_extractor_only():
    s, b = trained("[l2]")
    s.hp["l2"] = 0.5
    base = float(s.loss(b).detach())
    with torch.no_grad():
        s.model.classifier.weight.add_(1.0)
        ce = float(F.binary_cross_entropy_with_logits(
            s.model(b.x)[:, s.seen_classes], (b.y[:, None] == torch.tensor(s.seen_classes)[None]).float()))
        assert float(s.loss(b).detach()) == pytest.approx(ce, rel=1e-6)   # the head moved: no penalty, only the BCE
        s.model.classifier.weight.sub_(1.0)
        s.model.features[1].weight.add_(0.01)
        n = s.model.features[1].weight.numel()
        ce = float(F.binary_cross_entropy_with_logits(
            s.model(b.x)[:, s.seen_classes], (b.y[:, None] == torch.tensor(s.seen_classes)[None]).float()))
        assert float(s.loss(b).detach()) == pytest.approx(ce + 0.5 * n * 0.01 ** 2, rel=1e-5)
    assert base > 0


def test_ewc_importance_is_summed_squared_gradients_of_the_tasks_bce():
    r = prepare(compose([*TINY, "strategy.terms=[ewc]", "train.batch_size=16"]))
    s, exp = r.strategy, r.stream.experiences[0].sealed()
    s.train(exp)
    expected = {n: torch.zeros_like(p) for n, p in s.model.features.named_parameters()}
    s.model.eval()
    n_b = exp.train.n_batches(16)
    for b in exp.train.batches(16, shuffle=False):
        s.model.zero_grad()
        F.binary_cross_entropy_with_logits(s.model(b.x)[:, [0, 1]],
                                           (b.y[:, None] == torch.tensor([0, 1])[None]).float()).backward()
        for n, p in s.model.features.named_parameters():
            expected[n] += p.grad ** 2 * len(b.y) / n_b
    for n in expected:
        assert torch.allclose(s.fisher[n], expected[n], rtol=1e-5, atol=1e-10), n
    assert all(torch.equal(s.anchor[n], p) for n, p in s.model.features.named_parameters())
