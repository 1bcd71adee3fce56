"""MEMO: one specialized block per task on a shared generalized block, frozen old blocks, the auxiliary
'new classes + old' head, weight aligning, herding exemplars, and the memory it keeps."""
import torch

from clbench.config import compose
from clbench.engine import prepare
from clbench.state import nbytes
from clbench.strategies.memo import herding

BASE = ["strategy=memo", "wandb.mode=disabled", "device=cpu", "train.epochs=1", "strategy.buffer_size=100"]


def flat(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def test_each_task_adds_a_block_and_old_blocks_stay_frozen():
    r = prepare(compose(BASE))
    s, exps = r.strategy, [e.sealed() for e in r.stream.experiences]
    s.train(exps[0])
    block0, base0 = flat(s.model.specialized[0]).clone(), flat(s.model.generalized).clone()
    fc0 = s.model.fc.weight.detach().clone()
    s.train(exps[1])
    m = s.model
    assert len(m.specialized) == 2 and m.fc.in_features == 2 * m.feat_dim
    assert torch.equal(flat(m.specialized[0]), block0)                     # the old specialized block is frozen
    assert not torch.equal(flat(m.generalized), base0)                      # phi_g trains (train_base)
    assert not torch.equal(flat(m.specialized[1]), block0)                  # the new block started as a copy, then learnt
    # the old classes' rows over the old block's columns were copied at expansion, then trained further
    assert m.fc.weight.shape == (10, 2 * m.feat_dim) and fc0.shape == (10, m.feat_dim)
    s2 = prepare(compose(BASE + ["strategy.train_base=false"])).strategy
    s2.train(exps[0])
    base0 = flat(s2.model.generalized).clone()
    s2.train(exps[1])
    assert torch.equal(flat(s2.model.generalized), base0)


def test_expansion_copies_the_old_classifier_and_block():
    r = prepare(compose(BASE))
    s, exps = r.strategy, [e.sealed() for e in r.stream.experiences]
    s.train(exps[0])
    old_w = s.model.fc.weight.detach().clone()
    s.begin_experience(exps[1])                                             # grows the network
    m = s.model
    assert torch.equal(m.fc.weight[:, :m.feat_dim], old_w)
    assert torch.equal(flat(m.specialized[1]), flat(m.specialized[0]))
    assert m.aux_fc.out_features == 2 + 1                                   # two new classes + "old"
    assert not any(p.requires_grad for p in m.specialized[0].parameters())
    assert all(id(p) not in {id(q) for q in m.specialized[0].parameters()}
               for g in s.optimizer.param_groups for p in g["params"])


def test_auxiliary_labels_map_every_old_class_to_zero():
    r = prepare(compose(BASE + ["strategy.alpha_aux=1.0"]))
    s, exps = r.strategy, [e.sealed() for e in r.stream.experiences]
    s.train(exps[0])
    s.begin_experience(exps[1])
    batch = exps[1].train.get(torch.arange(4))
    batch.y[:] = torch.tensor([0, 1, 2, 3])
    seen = {}
    s.model.aux_fc.register_forward_hook(lambda mod, i, o: seen.update(out=o))
    loss_with = s.loss(batch)
    s.hp["alpha_aux"] = 0.0
    loss_without = s.loss(batch)
    expected = torch.nn.functional.cross_entropy(seen["out"], torch.tensor([0, 0, 1, 2]))
    assert torch.allclose(loss_with - loss_without, expected)


def test_weight_aligning_equalises_mean_row_norms():
    r = prepare(compose(BASE))
    s, exps = r.strategy, [e.sealed() for e in r.stream.experiences]
    s.train(exps[0])
    s.train(exps[1])
    w = s.model.fc.weight.detach()
    assert torch.allclose(w[[0, 1]].norm(dim=1).mean(), w[[2, 3]].norm(dim=1).mean())


def test_herding_follows_the_class_mean():
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7071, 0.7071], [1.0, 0.1]])
    chosen = herding(f, 2)
    assert chosen[0] == 2                           # closest to the mean direction
    assert len(set(herding(f, 4))) == 4             # never picks a sample twice


def test_exemplars_and_growing_model_are_the_memory_it_keeps():
    r = prepare(compose(BASE))
    s, exps = r.strategy, [e.sealed() for e in r.stream.experiences]
    s.train(exps[0])
    one = s.memory_footprint()
    s.train(exps[1])
    two = s.memory_footprint()
    per_class = {c: int((s.exemplars["y"] == c).sum()) for c in range(4)}
    assert per_class == {0: 25, 1: 25, 2: 25, 3: 25}                     # 100 // 4 per seen class
    assert two["exemplar_bytes"] == 100 * 64                              # uint8 8x8 digits
    block = nbytes(s.model.specialized[1])
    grown = two["model_bytes"] - one["model_bytes"]
    fc_growth = (s.model.fc.weight.numel() - 10 * s.model.feat_dim) * 4
    aux = nbytes(s.model.aux_fc)
    assert grown == block + fc_growth + aux
