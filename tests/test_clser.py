"""CLS-ER: the EMA update rule, the stable/plastic/working speeds, and the three evaluated models."""
import pytest
import torch

from clbench.config import ConfigError, compose
from clbench.engine import prepare, run

BASE = ["benchmark=split-digits", "strategy=clser", "wandb.mode=disabled", "device=cpu", "train.epochs=2",
        "strategy.buffer_size=100"]


def _flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_ema_update_matches_the_formula_with_warm_up():
    s = prepare(compose(BASE)).strategy
    with torch.no_grad():
        for p in s.model.parameters():
            p.fill_(1.0)
        for p in s.stable.parameters():
            p.fill_(0.0)
    s.global_step = 1           # warm-up: a = min(1 - 1/2, 0.999) = 0.5
    s._ema(s.stable, 0.999)
    assert torch.allclose(_flat(s.stable), torch.full_like(_flat(s.stable), 0.5))
    s.global_step = 10_000      # a = min(1 - 1/10001, 0.9) = 0.9
    s._ema(s.stable, 0.9)
    assert torch.allclose(_flat(s.stable), torch.full_like(_flat(s.stable), 0.9 * 0.5 + 0.1))


def test_stable_model_changes_more_slowly_than_plastic_and_working():
    r = prepare(compose(BASE))
    s, stream = r.strategy, r.stream
    s.train(stream.experiences[0])
    before = {k: _flat(m).clone() for k, m in s.models().items()}
    s.train(stream.experiences[1])
    moved = {k: float((_flat(m) - before[k]).norm()) for k, m in s.models().items()}
    assert moved["stable"] < moved["plastic"] < moved["working"], moved
    # gates: r_P = 0.9 > r_S = 0.7 -> the plastic model was updated more often
    assert s.ema_updates["plastic"] > s.ema_updates["stable"] > 0


def test_consistency_target_is_the_ema_model_more_confident_on_the_true_label():
    r = prepare(compose(BASE))
    s, exp = r.strategy, r.stream.experiences[0]
    s.train(exp)                      # a confident working model; the buffer holds task-0 samples
    s.hp["reg_weight"] = 1e6
    batch = exp.train.get(torch.arange(8))

    def set_emas(plastic_is_working: bool, stable_is_working: bool) -> float:
        with torch.no_grad():
            for ema, copy in ((s.plastic, plastic_is_working), (s.stable, stable_is_working)):
                for pe, p in zip(ema.parameters(), s.model.parameters()):
                    pe.copy_(p if copy else torch.zeros_like(p))
            return float(s.loss(batch))

    # one EMA equals the working model (p(true) ~ 1), the other outputs zeros (p(true) = 0.1): the
    # confident one is the target, so the 1e6-weighted MSE vanishes -- whichever of the two it is
    assert set_emas(True, False) < 10
    assert set_emas(False, True) < 10
    # neither is the working model: the target is the zero logits and the MSE term dominates
    assert set_emas(False, False) > 1e3


def test_bad_eval_model_is_refused():
    with pytest.raises(ConfigError, match="eval_model"):
        prepare(compose(BASE + ["strategy.eval_model=slow"]))


def test_all_three_models_are_evaluated_and_logged(tmp_path):
    """The evaluator scores the declared extra models (the strategy never sees the evaluator)."""
    result, _ = run(BASE + [f"out={tmp_path}", "progress=false"], console=False)
    extra = result["extra_models"]
    assert set(extra) == {"plastic", "working"}          # the stable model is the main R
    for m in extra.values():
        assert len(m["accuracy_matrix"]) == 5 and m["acc"] is not None
    result_w, _ = run(BASE + [f"out={tmp_path}", "progress=false", "strategy.eval_model=working"], console=False)
    assert set(result_w["extra_models"]) == {"stable", "plastic"}
    # the same training (same seed): the working model's R is the same whichever model is the answer
    assert result_w["accuracy_matrix"] == extra["working"]["accuracy_matrix"]
    assert result_w["extra_models"]["stable"]["accuracy_matrix"] == result["accuracy_matrix"]
