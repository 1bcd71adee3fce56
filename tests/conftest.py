"""Shared fixtures. Tests that need the real MNIST use `mnist_root` and skip cleanly when it is absent."""
import os
import signal
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Every built-in strategy that the conformance kit and the kill-and-resume test run over (kfpf is checked with
# shorter finetuning in test_zoo3_conformance.py; the Avalanche bridge in test_avalanche_bridge.py).
BUILTINS = ["naive", "joint", "cumulative", "replay", "der", "derpp", "agem", "ewc", "si", "lwf", "gdumb", "gpm",
            "hlop", "owm", "clser",
            "icarl", "lwf_mc", "er_ace", "er_aml", "xder", "lucir", "bic", "mir", "gss",
            "gem", "mas", "rwalk", "pnn", "packnet", "fdr", "hal",
            "protocl", "hnet", "rnn_hnet", "rehearsal_free", "binary_vcl",
            "memo", "prd", "napavq", "sharp"]
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def find_mnist_root():
    """The data root holding MNIST/raw: $CLBENCH_DATA first, then <repo>/../shared/datasets; else None."""
    candidates = [os.environ.get("CLBENCH_DATA"), REPO.parent / "shared" / "datasets"]
    for root in candidates:
        raw = Path(root) / "MNIST" / "raw" if root else None
        if raw and all((raw / f).is_file() for f in MNIST_FILES):
            return str(Path(root).resolve())
    return None


@pytest.fixture(scope="session")
def mnist_root():
    root = find_mnist_root()
    if root is None:
        pytest.skip("real MNIST not found (set CLBENCH_DATA to a root holding MNIST/raw, "
                    "or place it at <repo>/../shared/datasets)")
    return root


@pytest.fixture(scope="session")
def naive_digits_runs(tmp_path_factory):
    """Genuine runs for the leaderboard tests: naive on split-digits (1 epoch), seeds 0, 1, 2, in one folder
    (`[0].parent`). Made once per session; tests only read them (they copy what they tamper with)."""
    from clbench.config import compose
    from clbench.engine import run
    out = tmp_path_factory.mktemp("naive_digits") / "runs"
    return [run(compose(["benchmark=split-digits", "train.epochs=1", "wandb.mode=disabled", "progress=false",
                         "strategy=naive", f"seed={s}", f"out={out}"]), console=False)[1] for s in (0, 1, 2)]


@pytest.fixture
def preempt():
    """`callbacks=[preempt_test]` sends SIGTERM to this process once, after global step `preempt.at_step` (what
    SLURM does before a preemption); registered for the test only."""
    from clbench.registry import CALLBACKS
    from clbench.strategy import Callback

    class Preempt(Callback):
        description = "test helper: SIGTERM at a chosen step, once"
        at_step = None

        def after_step(self, strategy, batch):
            if Preempt.at_step is not None and strategy.global_step == Preempt.at_step:
                Preempt.at_step = None
                os.kill(os.getpid(), signal.SIGTERM)

    CALLBACKS.register("preempt_test", Preempt)
    yield Preempt
    CALLBACKS.unregister("preempt_test")


def pytest_generate_tests(metafunc):
    """A test taking `builtin_strategy` runs once per built-in strategy (one list for every such test)."""
    if "builtin_strategy" in metafunc.fixturenames:
        metafunc.parametrize("builtin_strategy", BUILTINS)
