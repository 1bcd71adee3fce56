"""Metrics as pure functions of R: hand-computed matrices, edge cases, conventions that must differ."""
import numpy as np
import pytest

from clbench import metrics as M

# 4 tasks. Task 0 improves after it was learned, then drops (max-based != first-based forgetting);
# task 1 drops, then recovers above its earlier max at the end (Chaudhry negative, Mammoth 0);
# task 2 is plainly forgotten.
R = [[0.6, 0.0, 0.0, 0.0],
     [0.9, 0.7, 0.1, 0.0],
     [0.8, 0.4, 0.9, 0.2],
     [0.7, 0.8, 0.3, 0.9]]
B = [0.1, 0.2, 0.3, 0.05]


def test_hand_computed_recovery_case():
    # acc = mean of the last row
    assert M.acc(R) == pytest.approx((0.7 + 0.8 + 0.3 + 0.9) / 4)
    # learning accuracy = mean of the diagonal
    assert M.learning_accuracy(R) == pytest.approx((0.6 + 0.7 + 0.9 + 0.9) / 4)
    # BWT (GEM, T-1): ((0.7-0.6) + (0.8-0.7) + (0.3-0.9)) / 3
    assert M.bwt(R) == pytest.approx(-0.4 / 3)
    # Avalanche: first-after-training minus last = -BWT
    assert M.forgetting_first(R) == pytest.approx((-0.1 - 0.1 + 0.6) / 3)
    # Chaudhry: max over rows 0..f-1 minus last: (0.9-0.7) + (0.7-0.8) + (0.9-0.3)
    assert M.forgetting(R) == pytest.approx((0.2 - 0.1 + 0.6) / 3)
    # Mammoth/AML: max over all rows incl. the last: (0.9-0.7) + (0.8-0.8) + (0.9-0.3)
    assert M.forgetting_max_incl_last(R) == pytest.approx((0.2 + 0.0 + 0.6) / 3)
    # the three conventions really differ on this matrix
    assert len({round(M.forgetting(R), 9), round(M.forgetting_first(R), 9),
                round(M.forgetting_max_incl_last(R), 9)}) == 3
    # FWT (GEM): R[j-1][j] - b[j] for j = 1..3: (0.0-0.2) + (0.1-0.3) + (0.2-0.05)
    assert M.fwt(R, B) == pytest.approx(-0.25 / 3)
    # accuracy over time (Diaz-Rodriguez A): mean of the lower triangle incl. diagonal (10 entries)
    assert M.acc_over_time(R) == pytest.approx((0.6 + 1.6 + 2.1 + 2.7) / 10)
    # average incremental accuracy, equal task sizes: row means over seen tasks
    assert M.avg_incremental_acc(R) == pytest.approx((0.6 + 0.8 + 0.7 + 0.675) / 4)
    # sample-weighted (task 3 has twice the test samples): last row (0.7+0.8+0.3+2*0.9)/5
    assert M.avg_incremental_acc(R, task_sizes=[1, 1, 1, 2]) == pytest.approx((0.6 + 0.8 + 0.7 + 0.72) / 4)
    # all-pairs BWT: 0.3, 0.2, -0.3, 0.1, 0.1, -0.6 over 6 pairs
    assert M.bwt_all_pairs(R) == pytest.approx(-0.2 / 6)
    assert M.rem(R) == pytest.approx(1 - 0.2 / 6)
    assert M.bwt_plus(R) == 0.0
    # intransigence: mean a*[j] - R[j][j]
    assert M.intransigence(R, [0.95, 0.9, 0.95, 1.0]) == pytest.approx((0.35 + 0.2 + 0.05 + 0.1) / 4)


def test_positive_backward_transfer_gives_bwt_plus_and_full_rem():
    R2 = [[0.5, 0.0], [0.7, 0.9]]
    assert M.bwt(R2) == pytest.approx(0.2)
    assert M.bwt_plus(R2) == pytest.approx(0.2)
    assert M.rem(R2) == 1.0
    assert M.forgetting(R2) == pytest.approx(-0.2)           # Chaudhry can be negative
    assert M.forgetting_max_incl_last(R2) == 0.0             # Mammoth never is


def test_single_task_edge_case_undefined_metrics_are_none():
    out = M.compute_all([[0.8]], [0.1])
    assert out["acc"] == pytest.approx(0.8)
    assert out["learning_accuracy"] == pytest.approx(0.8)
    assert out["acc_over_time"] == pytest.approx(0.8)
    assert out["avg_incremental_acc"] == pytest.approx(0.8)
    for name in ("bwt", "fwt", "forgetting", "forgetting_first", "forgetting_max_incl_last", "bwt_all_pairs",
                 "rem", "bwt_plus"):
        assert out[name] is None, name


def test_gem_identity_acc_equals_la_plus_scaled_bwt():
    rng = np.random.default_rng(0)
    for T in (2, 3, 6):
        Rr = rng.random((T, T))
        assert M.acc(Rr) == pytest.approx(M.learning_accuracy(Rr) + (T - 1) / T * M.bwt(Rr))
        assert M.forgetting_first(Rr) == pytest.approx(-M.bwt(Rr))
        assert M.forgetting(Rr) <= M.forgetting_max_incl_last(Rr) + 1e-12


def test_power_law_learned_at_counts_the_introducing_experience():
    # experiences: new t0, new t1, rehearsal, new t2, rehearsal  ->  learned_at = [0, 1, 3]
    exps = [{"index": 0, "kind": "new", "task_ids": [0]},
            {"index": 1, "kind": "new", "task_ids": [1]},
            {"index": 2, "kind": "rehearsal", "task_ids": [0]},
            {"index": 3, "kind": "new", "task_ids": [2, 0, 1]},     # mixed mode: rehearsal inside
            {"index": 4, "kind": "rehearsal", "task_ids": [0, 1, 2]}]
    L = M.learned_at_from_experiences(exps, 3)
    assert L == [0, 1, 3]
    Rp = [[0.9, 0.0, 0.0],
          [0.5, 0.9, 0.0],
          [0.8, 0.85, 0.1],
          [0.6, 0.7, 0.95],
          [0.75, 0.8, 0.9]]
    b = [0.1, 0.1, 0.1]
    assert M.learning_accuracy(Rp, L) == pytest.approx((0.9 + 0.9 + 0.95) / 3)
    # the final row is a rehearsal phase: every task, the last one included, counts as earlier
    assert M.bwt(Rp, L) == pytest.approx((-0.15 - 0.1 - 0.05) / 3)
    assert M.forgetting(Rp, L) == pytest.approx((0.15 + 0.1 + 0.05) / 3)
    # FWT of task 2 reads the row before its introduction: the rehearsal row 2
    assert M.fwt(Rp, b, L) == pytest.approx(((0.0 - 0.1) + (0.1 - 0.1)) / 2)
    assert M.acc(Rp, L) == pytest.approx((0.75 + 0.8 + 0.9) / 3)
    with pytest.raises(ValueError, match="learned_at"):
        M.bwt(Rp, [0, 1, 5])


def test_power_law_scenario_sets_learned_at_by_the_same_convention():
    import torch

    from clbench.config import compose
    from clbench.engine import build_stream
    cfg = compose(["wandb.mode=disabled"])
    cfg["scenario"] = {"name": "power_law", "base": {"name": "class_incremental", "n_experiences": 5},
                       "budget": 50, "mode": "phase"}
    try:
        stream = build_stream(cfg, torch.device("cpu"))
    except Exception as e:  # the scenario belongs to another module; its options may differ
        pytest.skip(f"power_law scenario not buildable with these options: {e}")
    desc = stream.describe()
    assert desc["learned_at"] == M.learned_at_from_experiences(desc["experiences"], len(stream.eval_tasks))
    assert len(stream) > len(stream.eval_tasks)   # rehearsal phases are rows of R too


def test_reference_accuracy_modes():
    Rj = [[0.9, 0.0], [0.85, 0.95]]
    assert M.reference_accuracy(Rj) == ([0.9, 0.95], "prefix-joint")
    assert M.reference_accuracy(Rj, final_row_only=True) == ([0.85, 0.95], "final-joint")
    assert M.reference_accuracy([[0.8, 0.7]]) == ([0.8, 0.7], "final-joint")


def test_anytime_auc_is_mean_of_curve():
    assert M.anytime_auc([0.5, 1.0, None, 0.75]) == pytest.approx(0.75)
    assert M.anytime_auc([]) is None


def test_every_metric_has_a_direction_and_definition():
    names = list(M.METRICS) + list(M.EXTRA_METRICS)
    for name in names:
        assert M.direction(name) in "+-"
        assert M.describe(name)
    assert M.direction("forgetting") == "-" and M.direction("bwt") == "+" and M.direction("intransigence") == "-"
    with pytest.raises(ValueError, match="initial"):
        M.fwt(R, [0.1, 0.2])
