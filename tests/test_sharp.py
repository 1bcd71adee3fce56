"""SHARP: replay of recent classes only, as 8-bit hidden activations; fixed density under rewiring; frozen
units keep their weights; no free-to-consolidated connections; k-NN votes over masked long-term memory."""
import torch

from clbench.config import compose
from clbench.engine import prepare
from clbench.strategies.sharp import dequantize, quantize, top_units

BASE = ["strategy=sharp", "wandb.mode=disabled", "device=cpu", "train.optimizer=adadelta", "train.lr=1.0",
        "train.batch_size=64", "train.epochs=4", "strategy.phase_epochs=2"]


def make(*extra):
    r = prepare(compose([*BASE, *extra]))
    return r.strategy, [e.sealed() for e in r.stream.experiences]


def test_top_units_cover_the_requested_share_of_activation():
    act = torch.tensor([1.0, 5.0, 0.0, 4.0])
    assert top_units(act, 50).tolist() == [1]            # 5 of 10
    assert top_units(act, 90).tolist() == [1, 3]         # 9 of 10
    assert top_units(act, 95).tolist() == [1, 3, 0]      # the next unit by activation is needed


def test_quantisation_is_8_bit_min_max():
    a = torch.linspace(-1.0, 3.0, 100).reshape(10, 10)
    q = quantize(a)
    assert q["x"].dtype == torch.uint8 and q["x"].min() == 0 and q["x"].max() == 255
    assert (dequantize(q) - a).abs().max() <= 4.0 / 510 + 1e-6


def test_only_the_last_episodes_classes_are_replayed_as_stored_activations():
    s, exps = make()
    for e in exps[:3]:
        s.train(e)
    assert sorted(s.stm) == ["4", "5"]                                   # only the last episode (stm_num_tasks 1)
    assert all(v["x"].dtype == torch.uint8 and v["x"].shape == (25, 100) for v in s.stm.values())
    seen = []
    orig = s._sample_stm
    s._sample_stm = lambda classes, n: (seen.append(list(classes)), orig(classes, n))[1]
    s.begin_experience(exps[3])
    s.loss(exps[3].train.get(torch.arange(64)))
    assert seen == [[4, 5]]
    assert s.memory_footprint()["exemplar_bytes"] == 2 * (25 * 100 + 8)   # uint8 activations + min/max
    s2, exps = make("strategy.stm_num_tasks=2")
    for e in exps[:3]:
        s2.train(e)
    assert sorted(s2.stm) == ["2", "3", "4", "5"]


def test_rewiring_keeps_density_and_cuts_free_to_consolidated_connections():
    s, exps = make()
    n0 = [int(m.sum()) for m in s.masks]
    s.train(exps[0])
    s.begin_experience(exps[1])
    s._start_phase(exps[1])
    assert [int(m.sum()) for m in s.masks] == n0                         # as many grown as dropped (room enough)
    free = s.states[0] == 0
    consolidated = s.states[1] >= 2
    assert s.masks[1][consolidated][:, free].sum() == 0
    for layer, mask in zip(s.net.linears, s.masks):
        assert torch.all(layer.weight[mask == 0] == 0)


def test_frozen_units_keep_their_weights_and_free_outputs_are_zero():
    s, exps = make()
    s.train(exps[0])
    s.train(exps[1])
    frozen = [s._frozen(i).clone() for i in range(2)]
    assert frozen[0].any() and frozen[1].any()                           # early: state > 1; last: state > 2
    rows = [l.weight[f].clone() for l, f in zip(s.net.linears, frozen)]
    s.train(exps[2])
    for l, f, r in zip(s.net.linears, frozen, rows):
        assert torch.equal(l.weight[f], r)
    z = s.represent(exps[2].train.get(torch.arange(32)).x)
    assert torch.all(z[:, s.states[-1] == 0] == 0)


def test_knn_votes_use_each_class_mask():
    s, exps = make()
    s.train(exps[0])
    with torch.no_grad():
        s.has_ltm[:] = False
        s.has_ltm[[0, 1]] = True
        s.ltm_mask[[0, 1]] = True
        s.ltm[0] = torch.zeros_like(s.ltm[0])
        s.ltm[0][:, 0] = 1.0                                             # class 0: unit 0
        s.ltm[1] = torch.zeros_like(s.ltm[1])
        s.ltm[1][:, 1] = 1.0                                             # class 1: unit 1
        s.represent = lambda x: torch.eye(100)[[0, 1, 1]]
        logits = s.predict(torch.zeros(3, 1, 8, 8))
    assert logits.argmax(1).tolist() == [0, 1, 1]
    assert logits[0, 0] == 5.0 - 0.0 and logits[1, 1] == 5.0 - 1e-3


def test_a_new_phase_starts_every_phase_epochs_epochs_the_last_one_shorter():
    s, exps = make("train.epochs=5", "dataset.train_per_class=20")
    starts = []
    orig = s._start_phase
    s._start_phase = lambda exp: (starts.append(s.loop["epoch"]), orig(exp))[1]
    s.train(exps[0])
    assert starts == [0, 2, 4]                    # phases of 2, 2 and 1 epochs
