"""PRD: the relation-distillation softmax (paper: over samples; code: over prototypes), its fixed point at the
teacher, prototypes that follow detached features, distillation that preserves the old relations, no replay."""
import pytest
import torch
import torch.nn.functional as F

from clbench.config import compose
from clbench.engine import prepare
from clbench.strategies.parts import embed
from clbench.strategies.representation import supcon_loss

BASE = ["strategy=prd", "wandb.mode=disabled", "device=cpu", "train.epochs=1", "train.batch_size=64"]


def make(*extra):
    r = prepare(compose([*BASE, *extra]))
    return r.strategy, [e.sealed() for e in r.stream.experiences]


def test_supcon_matches_a_per_anchor_loop():
    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(6, 3, generator=g), torch.tensor([0, 1, 0, 1, 2, 0])
    zn = F.normalize(z, dim=1)
    losses = []
    for i in range(6):
        others = [a for a in range(6) if a != i]
        denom = torch.logsumexp(torch.stack([zn[i] @ zn[a] / 0.5 for a in others]), 0)
        pos = [p for p in others if y[p] == y[i]]
        if pos:
            losses.append(-torch.stack([zn[i] @ zn[p] / 0.5 - denom for p in pos]).mean())
    assert torch.allclose(supcon_loss(z, y, 0.5), torch.stack(losses).mean(), atol=1e-6)


@pytest.mark.parametrize("axis, dim", [("samples", 0), ("prototypes", 1)])
def test_relation_softmax_axis_and_fixed_point(axis, dim):
    s, exps = make(f"strategy.relation_axis={axis}")
    s.train(exps[0])
    s.begin_experience(exps[1])
    x = exps[1].train.get(torch.arange(16)).x.float()
    h = embed(s.model, x)
    # the teacher is a copy of the student at the task boundary: the distillation gradient vanishes
    grads = torch.autograd.grad(s.relation_distillation(x, h), h)[0]
    assert grads.abs().max() < 1e-6
    # hand computation on the old task's classes, softmax along the configured axis
    with torch.no_grad():
        s.heads.prototypes[0] += 0.3
    p = F.normalize(s.heads.prototypes[[0, 1]], dim=1)
    q = F.normalize(s.old_prototypes[[0, 1]], dim=1)
    S, S_old = h @ p.T, embed(s.previous_model, x) @ q.T
    expected = (-(F.softmax(S_old, dim) * F.log_softmax(S, dim)).sum(dim)).mean()
    assert torch.allclose(s.relation_distillation(x, h), expected, atol=1e-5)


def test_prototype_loss_moves_only_the_current_prototypes_not_the_encoder():
    s, exps = make("strategy.distill_weight=0")
    s.train(exps[0])
    s.begin_experience(exps[1])
    batch = exps[1].train.get(torch.arange(32))
    rng = s.generator.get_state()

    def grads(proto_weight):
        s.generator.set_state(rng)                  # the same augmented views each time
        s.hp["proto_weight"] = proto_weight
        s.optimizer.zero_grad()
        s.loss(batch).backward()
        enc = torch.cat([p.grad.flatten() for p in s.model.parameters() if p.grad is not None])
        return enc, s.heads.prototypes.grad.clone()

    enc0, proto0 = grads(0.0)
    enc1, proto1 = grads(1e3)
    assert torch.allclose(enc1, enc0)               # 1e3 x the prototype loss adds nothing to the encoder
    assert proto0.abs().sum() == 0
    assert proto1[[2, 3]].abs().sum() > 0 and proto1[[0, 1, 4, 5, 6, 7, 8, 9]].abs().sum() == 0


def relation_kl(s, teacher, old_protos, exp):
    b = exp.train.get(torch.arange(len(exp.train)))
    with torch.no_grad():
        S_old = embed(teacher, b.x) @ F.normalize(old_protos[:2], dim=1).T
        S = embed(s.model, b.x) @ F.normalize(s.heads.prototypes[:2], dim=1).T
        return float(F.kl_div(F.log_softmax(S, 0), F.softmax(S_old, 0), reduction="sum"))


def test_distillation_preserves_the_old_relations():
    kls = {}
    for w in (0.0, 4.0):
        s, exps = make(f"strategy.distill_weight={w}", "train.epochs=5")
        s.train(exps[0])
        teacher, protos = s.previous_model, s.old_prototypes.clone()
        s.train(exps[1])
        kls[w] = relation_kl(s, teacher, protos, exps[0])
    assert kls[4.0] < 0.6 * kls[0.0], kls


def test_no_replay_no_exemplars():
    s, exps = make()
    s.train(exps[0])
    s.train(exps[1])
    mem = s.memory_footprint()
    assert mem["exemplar_bytes"] == 0 and mem["extra_model_bytes"] > 0      # the teacher and the heads only
