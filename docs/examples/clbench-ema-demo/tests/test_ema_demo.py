"""The plugin's own tests: the clbench contract (clbench.testing) and each method's defining property."""
import torch

from clbench.testing import check_strategy


def test_both_strategies_pass_the_clbench_contract():
    check_strategy("ema_replay")
    check_strategy("l2_anchor")


def test_ema_is_the_average_of_the_working_weights(tiny_run):
    result = tiny_run("ema_replay", extra=["strategy.decay=0.0"])     # decay 0: the EMA is the working model
    assert result["accuracy_matrix"] == result["extra_models"]["working"]["accuracy_matrix"]
    assert "ema_distance" in result["logs"]


def test_a_preset_is_applied_and_recorded(tiny_stream_overrides):
    from clbench.config import compose
    cfg = compose(tiny_stream_overrides(strategy="ema_replay"))
    assert cfg["strategy"]["decay"] == 0.95 and cfg["config_source"]["presets"][0]["preset"] == "split-digits"
    cfg = compose(tiny_stream_overrides(strategy="ema_replay", extra=["strategy.buffer_size=500"]))
    assert cfg["strategy"]["decay"] == 0.98


def test_l2_anchor_pulls_towards_the_previous_weights(tiny_run):
    free = tiny_run("l2_anchor", extra=["strategy.lamda=0"])
    held = tiny_run("l2_anchor", extra=["strategy.lamda=10"])     # lr * lamda < 2: stable
    assert held["metrics"]["forgetting"] <= free["metrics"]["forgetting"]
