"""pytest fixtures for plugin authors, loaded automatically once clbench is installed (entry point pytest11).

    def test_my_method_learns(tiny_run):
        result = tiny_run("mymethod", setting="class-il", extra=["strategy.alpha=0.5"])
        assert result["metrics"]["acc"] > 0.3

    def test_in_every_setting(tiny_setting, tiny_run):      # parametrised over class-il, task-il, domain-il
        tiny_run("mymethod", setting=tiny_setting)

The streams are clbench.testing's tiny digits streams (seconds on a CPU); W&B is off; results go to tmp_path.
"""
from __future__ import annotations

import pytest

from clbench.testing import SETTINGS, tiny_overrides


@pytest.fixture(params=SETTINGS)
def tiny_setting(request) -> str:
    """Each setting in turn: class-il, task-il, domain-il."""
    return request.param


@pytest.fixture
def tiny_stream_overrides(tmp_path):
    """overrides(setting, strategy="naive", extra=()) -> the `key=value` list of a tiny run into tmp_path."""
    def overrides(setting: str = "class-il", strategy: str = "naive", extra=()) -> list[str]:
        return [*tiny_overrides(setting, strategy, extra), f"out={tmp_path / 'runs'}"]
    return overrides


@pytest.fixture
def tiny_run(tiny_stream_overrides):
    """run(strategy, setting="class-il", extra=()) -> the result dict of a finished tiny run."""
    from clbench.engine import run

    def _run(strategy: str, setting: str = "class-il", extra=()) -> dict:
        result, _ = run(tiny_stream_overrides(setting, strategy, extra), console=False)
        return result
    return _run
