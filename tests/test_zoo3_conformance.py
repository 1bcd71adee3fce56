"""Zoo III (issue 16, first half): the cases the built-in lists of test_conformance.py and test_resume.py do not
cover pass the conformance kit (clbench.testing): k-FPF (its default 10 x 300 finetuning steps are too slow for the
kit; here fewer, with KD), SHARP with its preset optimiser (Adadelta), and the fpf and module_drift callbacks."""
import pytest

from clbench.testing import check_strategy

CASES = [
    ("kfpf", ["strategy.kd=0.5", "strategy.k=3", "strategy.iters=5"]),
    ("sharp", ["strategy.phase_epochs=1", "train.optimizer=adadelta", "train.lr=1.0"]),
    ("replay", ["callbacks=[fpf]", "callbacks.fpf.iters=5"]),
    ("naive", ["callbacks=[fpf]", "callbacks.fpf.iters=5", "callbacks.fpf.modules=[auto]"]),
    ("naive", ["callbacks=[module_drift]"]),
]


@pytest.mark.parametrize("name, extra", CASES, ids=[f"{n}{'+' + e[0] if e else ''}" for n, e in CASES])
def test_zoo3_passes_the_kit(name, extra):
    checks = check_strategy(name, extra=extra)
    assert {c.name for c in checks} >= {"declarations", "loss", "finite", "determinism", "resume", "sealed"}
