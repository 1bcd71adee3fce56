"""The Avalanche bridge: `strategy=avalanche:<Name>` trains an Avalanche strategy on a clbench stream and
clbench's evaluator scores it, producing the same result.json as a built-in strategy."""
from __future__ import annotations

import json

import pytest
import torch

from clbench.config import ConfigError, compose
from clbench.engine import run

torch.set_num_threads(1)
ARGS = ["train.epochs=1", "wandb.mode=disabled", "progress=false", "device=cpu"]


@pytest.mark.parametrize("name,extra", [("Naive", []), ("EWC", ["strategy.ewc_lambda=0.4"])])
def test_bridge_end_to_end_writes_a_complete_result(tmp_path, name, extra):
    result, folder = run([f"strategy=avalanche:{name}", *extra, *ARGS, f"out={tmp_path}"], console=False)
    saved = json.loads((folder / "result.json").read_text())
    for key in ("schema_version", "config", "config_hash", "stream", "accuracy_matrix", "initial_accuracy",
                "metrics", "strategy_state", "timing", "memory", "env"):
        assert key in saved, key
    R = saved["accuracy_matrix"]
    assert len(R) == 5 and all(len(row) == 5 for row in R)
    assert R[0][0] > 0.9                    # it really trained: the first task is learned
    assert saved["strategy_state"]["avalanche_strategy"] == name
    if name == "EWC":
        assert saved["config"]["strategy"]["ewc_lambda"] == 0.4
        assert saved["config"]["strategy"]["mode"] == "separate"


def test_constructor_arguments_become_config_keys():
    cfg = compose(["strategy=avalanche:Replay", "strategy.mem_size=321"])
    assert cfg["strategy"] == {"name": "avalanche:Replay", "mem_size": 321}
    cfg = compose(["strategy=avalanche:SI"])                 # alias, required arg filled by the bridge
    assert set(cfg["strategy"]) == {"name", "si_lambda", "eps"}
    with pytest.raises(ConfigError, match="ewc_lambda"):      # a typo lists the valid keys
        compose(["strategy=avalanche:EWC", "strategy.ewc_lamda=1"])


def test_unknown_and_unsupported_names_fail_clearly():
    with pytest.raises(ConfigError, match="Did you mean 'EWC'"):
        compose(["strategy=avalanche:EWCC"])
    with pytest.raises(ConfigError, match="use clbench's strategy=joint"):
        compose(["strategy=avalanche:JointTraining"])
    with pytest.raises(ConfigError, match="needs a name"):
        compose(["strategy=avalanche"])


def test_avalanche_is_imported_only_when_the_bridge_is_used():
    """No module of the core or the built-in plugins imports avalanche at import time (it patches torch):
    a static check of every module's top-level imports (a subprocess check costs ~40 s on a busy CPU)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    offenders = []
    for folder in ("clbench", "strategies", "scenarios"):
        for path in (root / folder).rglob("*.py"):
            for node in ast.parse(path.read_text()).body:   # top level only; function bodies are lazy
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                if any(n == "avalanche" or n.startswith("avalanche.") for n in names):
                    offenders.append(str(path.relative_to(root)))
    assert offenders == []
