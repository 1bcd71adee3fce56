"""NAPA-VQ: rotation labels, the neural-gas graph update and the neighbourhood loss on hand examples,
neighbourhood-aware prototype augmentation, frozen old coding vectors, prototypes before/after a task."""
import pytest
import torch

from clbench.config import compose
from clbench.engine import prepare
from clbench.strategies.napavq import NeuralGasVQ, rotations

BASE = ["strategy=napavq", "wandb.mode=disabled", "device=cpu", "train.epochs=1", "train.batch_size=32",
        "train.optimizer=adam", "train.lr=0.001", "strategy.cv_lr=0.5", "strategy.k=3"]


def make(*extra):
    r = prepare(compose([*BASE, *extra]))
    return r.strategy, [e.sealed() for e in r.stream.experiences]


def test_rotation_labels():
    x = torch.arange(4.0).reshape(1, 1, 2, 2)
    xs, ys = rotations(x, torch.tensor([3]), 4)
    assert ys.tolist() == [12, 13, 14, 15]
    assert torch.equal(xs[1], torch.rot90(x[0], 1, (-2, -1)))


def vq_with(cvs: torch.Tensor, k: int) -> NeuralGasVQ:
    vq = NeuralGasVQ(len(cvs), cvs.shape[1], torch.Generator(), k=k, eps=0.9)
    with torch.no_grad():
        vq.cvs.copy_(cvs)
    return vq


def test_graph_update_connects_the_nearest_cv_to_the_k_nearest_and_decays_the_rest():
    cvs = torch.tensor([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    vq = vq_with(cvs, k=2)
    with torch.no_grad():
        vq.edges[0, 3] = vq.edges[3, 0] = 1.0                   # an old edge of CV 0
    active = torch.arange(4)
    f = torch.tensor([[0.1, 0.0], [0.2, 0.0]])                    # both nearest to CV 0, then CV 1
    vq(f, torch.tensor([0, 0]), active)
    E = vq.edges
    # symmetrised by averaging with the reverse direction, as the code: 0->1 set to 1, 1->0 untouched (0)
    assert E[0, 1] == E[1, 0] == 0.5
    # CV 0 visited twice without refreshing 0->3: 0.9^2; 3->0 untouched (1)
    assert E[0, 3] == E[3, 0] == pytest.approx((0.9 ** 2 + 1.0) / 2)
    assert E[0, 2] == 0.0 and E[2, 3] == 0.0 and E[0, 0] == 1.0


def test_neighbourhood_loss_on_hand_examples():
    cvs = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 5.0]])
    vq = vq_with(cvs, k=2)
    active = torch.arange(3)
    with torch.no_grad():
        # a sample on its own CV: nothing to pay
        assert float(vq(torch.tensor([[0.0, 0.0]]), torch.tensor([0]), active)) == 0.0
        vq = vq_with(cvs, k=2)
        f, y = torch.tensor([[1.5, 0.0]]), torch.tensor([0])
        # CV 0 has no graph neighbour yet (the loss reads the graph before it is symmetrised): d(f, CV0)^2
        assert float(vq(f, y, active)) == pytest.approx(1.5 ** 2)
        # now CV 1 (nearest to f) is CV 0's neighbour: d(f, CV0)^2 - d(f, CV1)^2 (one neighbour, weight 1)
        assert float(vq(f, y, active)) == pytest.approx(1.5 ** 2 - 0.5 ** 2)


def test_augmented_prototypes_mix_an_old_class_with_a_graph_neighbour():
    s, exps = make()
    s.train(exps[0])
    s.begin_experience(exps[1])                    # new classes' prototypes from the model before the task
    assert s.has_prototype[8:16].all() and not s.has_prototype[16:].any()
    with torch.no_grad():                          # a graph where label 0's only neighbour is label 9
        s.vq.edges.zero_()
        s.vq.edges[0, 9] = 1.0
        s.vq.edges[4, 4] = 1.0
    aug, labels = s._augmented_prototypes(64, s._labels(s.seen_classes))
    assert set(labels.tolist()) <= {0, 4}          # unrotated labels of the old classes 0 and 1
    p0, p9, p4 = s.prototypes[0], s.prototypes[9], s.prototypes[4]
    for a, lab in zip(aug, labels):
        if lab == 4:                               # no neighbour with a prototype: itself
            assert torch.allclose(a, p4)
        else:                                      # on the segment from p0 towards p9, at least halfway to p0
            g = torch.dot(a - p9, p0 - p9) / torch.dot(p0 - p9, p0 - p9)
            assert 0.5 - 1e-5 <= float(g) <= 1 + 1e-5
            assert torch.allclose(a, g * p0 + (1 - g) * p9, atol=1e-5)


def test_old_coding_vectors_stay_fixed_and_no_exemplars_are_kept():
    s, exps = make()
    s.train(exps[0])
    old = s.vq.cvs[:8].detach().clone()
    protos = s.prototypes[:8].clone()
    s.train(exps[1])
    assert torch.equal(s.vq.cvs[:8], old)
    assert not torch.equal(s.vq.cvs[8:16], old)
    assert torch.equal(s.prototypes[:8], protos)   # old prototypes are never updated
    mem = s.memory_footprint()
    assert mem["exemplar_bytes"] == 0 and mem["extra_model_bytes"] > 0       # the teacher and the VQ
