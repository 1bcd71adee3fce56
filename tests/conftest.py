"""Shared fixtures. Tests that need the real MNIST use `mnist_root` and skip cleanly when it is absent."""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
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


@pytest.fixture
def resumed_equals_uninterrupted(tmp_path):
    """check(overrides, at=(experience, steps)): train a prepared run start to end, and again with a checkpoint
    taken `steps` minibatches into `experience`, written to disk, loaded into a freshly built strategy (and the
    global RNG restored, as the engine does) and continued; asserts both end with identical weights and state."""
    import torch

    from clbench import state as S
    from clbench.config import compose
    from clbench.engine import prepare

    def check(overrides, at=(1, 3)):
        ref = prepare(compose(overrides))
        exps = [e.sealed() for e in ref.stream.experiences]
        for e in exps:
            ref.strategy.train(e)
        first = prepare(compose(overrides)).strategy
        for e in exps[:at[0]]:
            first.train(e)
        steps = first.train_experience(exps[at[0]])
        for _ in range(at[1]):
            next(steps)
        S.save(tmp_path / "ckpt.pt", {"strategy": first.state_dict(), "rng": S.rng_state()})
        second = prepare(compose(overrides)).strategy
        saved = S.load(tmp_path / "ckpt.pt")
        second.load_state_dict(saved["strategy"])
        S.set_rng_state(saved["rng"])
        for _ in second.train_experience(exps[at[0]]):
            pass
        for e in exps[at[0] + 1:]:
            second.train(e)
        a, b = ref.strategy.state_dict(), second.state_dict()
        for key in ("model", "attrs", "previous_model", "callbacks", "global_step"):
            assert _same(a[key], b[key]), key
        x = exps[0].train.x[:64]
        ref.strategy.model.eval(), second.model.eval()
        with torch.no_grad():
            assert torch.equal(ref.strategy.predict(x), second.predict(x))
        return ref.strategy, second

    return check


def _same(a, b) -> bool:
    import torch
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b
