"""The torch thread count is part of a run's protocol: fixed by config, applied by the engine, recorded.

On full split-MNIST (replay, 1 epoch, seed 3) one and two threads give different accuracy matrices
(benchmarks/threads_repro.py measures it), so a sweep cell and a plain run of the same config must use
the same thread count whatever the process they run in defaulted to.
"""
from __future__ import annotations

import pytest
import torch

from clbench.cli import main
from clbench.config import compose, config_hash
from clbench.engine import run
from clbench.loggers import Logger
from clbench.results import load_result

FAST = ["benchmark=split-digits", "train.epochs=1", "wandb.mode=disabled", "progress=false"]


@pytest.fixture
def two_default_threads():
    """A process whose torch default is 2 threads (a 2-core machine without OMP_NUM_THREADS)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_plain_run_and_sweep_cell_agree(tmp_path, two_default_threads):
    assert main(["run", *FAST, "seed=1", f"out={tmp_path / 'plain'}"]) == 0
    (plain_dir,) = [p.parent for p in (tmp_path / "plain").glob("*/result.json")]
    assert main(["sweep", *FAST, "seed=0,1", f"out={tmp_path / 'sweep'}"]) == 0   # pool workers: test_sweep.py
    plain, cell = load_result(plain_dir), load_result(tmp_path / "sweep" / plain_dir.name)
    assert plain["run_id"] == cell["run_id"] and plain["config"]["threads"] == 1
    assert plain["env"]["threads"] == cell["env"]["threads"] == 1
    assert plain["accuracy_matrix"] == cell["accuracy_matrix"]


class ThreadProbe(Logger):
    def __init__(self):
        self.seen = set()

    def train_step(self, run, loss):
        self.seen.add(torch.get_num_threads())


@pytest.mark.parametrize("threads", [1, 2])
def test_engine_trains_with_the_configured_threads(threads, tmp_path, two_default_threads):
    cfg = compose([*FAST, f"threads={threads}", f"out={tmp_path}"])
    probe = ThreadProbe()
    result, _ = run(cfg, loggers=[probe])
    assert probe.seen == {threads} and result["env"]["threads"] == threads


def test_threads_is_part_of_the_config_hash():
    assert config_hash(compose([*FAST, "threads=1"])) != config_hash(compose([*FAST, "threads=2"]))
    assert compose(FAST)["threads"] == 1          # the shipped protocols fix one thread


def test_a_config_without_threads_keeps_the_process_setting(tmp_path, two_default_threads):
    """Old result files have no `threads` key: re-running their config leaves the thread count alone (and records
    it), so `leaderboard verify` can set the submitted count itself."""
    cfg = compose([*FAST, f"out={tmp_path}"])
    del cfg["threads"]
    result, _ = run(cfg, loggers=[])
    assert result["env"]["threads"] == 2 and "threads" not in result["config"]


def test_env_records_what_changes_the_arithmetic(tmp_path):
    result, _ = run(compose([*FAST, f"out={tmp_path}"]), loggers=[])
    env = result["env"]
    for key in ("torch", "device", "threads", "interop_threads", "deterministic", "blas", "cpu_capability",
                "float32_matmul_precision"):
        assert key in env, key
    assert env["torch"] == torch.__version__ and env["deterministic"] is False and env["device"] == "cpu"
