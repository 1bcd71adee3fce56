"""Power-law rehearsal by time since last performed (the abstract of Gandhi et al. 2024, arXiv:2401.10393):
the realised draws follow the power law (the exponent is re-fitted from the recorded schedule), at the
same budget as the controls, seeded by the stream seed; the v1 reading stays available by name."""
import hashlib

import numpy as np
import pytest
import torch

from clbench.config import compose
from clbench.data import TensorDataset
from clbench.data.digits import load_digits
from clbench.scenarios.power_law import PowerLaw, fit_exponent, replay_draws

torch.set_num_threads(1)
BASE = {"name": "permuted", "n_experiences": 6}


def small_dataset(n_per_class=6, n_classes=4):
    n = n_per_class * n_classes
    x = (torch.arange(n * 16).reshape(n, 1, 4, 4) % 251).to(torch.uint8)
    y = torch.arange(n) % n_classes
    return TensorDataset("small", x, y, x[: n // 2], y[: n // 2], n_classes=n_classes, input_shape=(1, 4, 4),
                         scale=255.0, mean=(0.5,), std=(0.25,))


def draws_of(stream):
    r = stream.describe()["rehearsal"]
    return replay_draws(r["task_samples"], r["budget"], r["phases"])


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_realised_draws_follow_the_power_law_in_time_since_last_performed(alpha):
    ds = small_dataset()
    draws = []
    for seed in range(40):
        stream = PowerLaw(base=BASE, alpha=alpha, budget=30).build(ds, seed)
        # the recorded schedule is what the stream holds
        reh = [e for e in stream.experiences if e.kind == "rehearsal"]
        phases = stream.describe()["rehearsal"]["phases"][1:]
        assert [e.train.task_counts() for e in reh] == [{i: k for i, k in enumerate(p["counts"]) if k} for p in phases]
        draws += draws_of(stream)
    fitted, se = fit_exponent(draws)
    assert abs(fitted - alpha) < max(4 * se, 0.02), (fitted, se)
    # binned check of the frequencies: draws of a task at lag l, against the fitted law's expectation
    lags = np.concatenate([lg for lg, _ in draws])
    probs = np.concatenate([lg ** -fitted / (lg ** -fitted).sum() for lg, _ in draws])
    chosen = np.concatenate([np.arange(len(lg)) == i for lg, i in draws])
    checked = 0
    for lo, hi in ((0, 0.2), (0.2, 1.0), (1.0, 2.0), (2.0, 10.0)):
        sel = (lags >= lo) & (lags < hi)
        expected, sd = probs[sel].sum(), np.sqrt((probs[sel] * (1 - probs[sel])).sum())
        if expected > 20:
            assert abs(chosen[sel].sum() - expected) < 4 * sd, (lo, hi, chosen[sel].sum(), expected)
            checked += 1
    assert checked >= 2


def test_lags_are_time_since_last_performed_hand_computed():
    # 4 tasks of 24 samples, R = 10: phase t has N_t = 34 samples (24 new first, then 10 draws), phase 0 has 24.
    stream = PowerLaw(base={"name": "permuted", "n_experiences": 4}, budget=10).build(small_dataset(), 3)
    phases = stream.describe()["rehearsal"]["phases"]
    assert phases[1]["counts"] == [10] and phases[1]["runs"] == [[0, 10]]    # one candidate: all 10 draws
    # phase 2, first draw at 2 + 25/34: task 0 was last drawn at the end of phase 1 (time 2), task 1 ended
    # its own training at 1 + 24/34. The rehearsed older task is the more recent one.
    lags = [25 / 34, 2 + 25 / 34 - (1 + 24 / 34)]
    assert phases[2]["lags"] == pytest.approx(lags, abs=1e-6)
    w = np.array(lags) ** -1.0
    assert phases[2]["weights"] == pytest.approx(list(w / w.sum()), abs=1e-6)


@pytest.mark.parametrize("schedule", ["power", "uniform", "exponential", "none"])
@pytest.mark.parametrize("lag", ["last_performed", "introduced"])
def test_same_rehearsal_budget_as_the_controls(schedule, lag):
    stream = PowerLaw(base=BASE, schedule=schedule, lag=lag, budget=30, lam=50.0).build(small_dataset(), 0)
    reh = [len(e.train) for e in stream.experiences if e.kind == "rehearsal"]
    assert reh == ([] if schedule == "none" else [30] * 5)
    assert stream.describe()["rehearsal"]["total_rehearsed"] == sum(reh)


def test_schedule_is_seeded_by_the_stream_seed():
    ds = small_dataset()
    a, b, c = (PowerLaw(base=BASE, budget=30).build(ds, s).describe()["rehearsal"]["phases"] for s in (4, 4, 5))
    assert a == b and a != c


def test_introduced_reading_is_the_v1_stream_bit_for_bit():
    ds = load_digits()
    stream = PowerLaw(base={"name": "permuted", "n_experiences": 4}, budget=50, lag="introduced").build(ds, 5)
    h = hashlib.sha256()
    for e in stream.experiences:
        b = e.train.get(torch.arange(len(e.train)))
        h.update(b.x.numpy().tobytes()), h.update(b.t.numpy().tobytes())
    assert h.hexdigest()[:10] == "4db2069930"                        # computed with clbench's v1 PowerLaw


def test_power_law_benchmark_is_version_2_by_time_since_last_performed():
    cfg = compose(["benchmark=power-law-pmnist"])
    assert cfg["benchmark"]["version"] == 2 and cfg["scenario"]["lag"] == "last_performed"
