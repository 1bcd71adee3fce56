"""Zoo III (issue 16, first half): every strategy and callback passes the conformance kit (clbench.testing)."""
import pytest

from clbench.testing import check_strategy

CASES = [
    ("memo", []),
    ("kfpf", ["strategy.kd=0.5", "strategy.k=3", "strategy.iters=5"]),
    ("prd", []),
    ("napavq", []),
    ("sharp", ["strategy.phase_epochs=1", "train.optimizer=adadelta", "train.lr=1.0"]),
    ("replay", ["callbacks=[fpf]", "callbacks.fpf.iters=5"]),
    ("naive", ["callbacks=[fpf]", "callbacks.fpf.iters=5", "callbacks.fpf.modules=[auto]"]),
    ("naive", ["callbacks=[module_drift]"]),
]


@pytest.mark.parametrize("name, extra", CASES, ids=[f"{n}{'+' + e[0] if e else ''}" for n, e in CASES])
def test_zoo3_passes_the_kit(name, extra):
    checks = check_strategy(name, extra=extra)
    assert {c.name for c in checks} >= {"declarations", "loss", "finite", "determinism", "resume", "sealed"}
