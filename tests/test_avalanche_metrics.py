"""Cross-check against a peer: the same per-experience predictions go through Avalanche 0.6.0's own
metric classes (ExperienceForgetting/StreamForgetting, ExperienceBWT/StreamBWT,
ExperienceForwardTransfer/StreamForwardTransfer, AccuracyMatrixPluginMetric) and through clbench's
Avalanche-compatible metrics (forgetting_first, bwt, fwt, R); they must agree to 1e-6.

Avalanche is imported inside the test (it patches torch on import). Its plugin metrics are driven with
the callback order of Avalanche's own loop: an evaluation before any training (needed by forward
transfer), then train(exp_t) followed by an evaluation of the whole test stream, for every t.
"""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from clbench import metrics as M


def _predictions_for(R_rows, n=20):
    """Logits whose accuracy on task j at row i is exactly R_rows[i][j] (n samples per task; task j holds
    classes 2j and 2j+1; the first round(acc * n) samples are right, the others predict the next class)."""
    T = len(R_rows[0])
    n_classes = 2 * T
    labels = [torch.tensor([(2 * j + k % 2) for k in range(n)]) for j in range(T)]
    rows = []
    for accs in R_rows:
        row = []
        for j, a in enumerate(accs):
            n_ok = round(a * n)
            pred = labels[j].clone()
            pred[n_ok:] = (pred[n_ok:] + 1) % n_classes
            row.append(torch.nn.functional.one_hot(pred, n_classes).float() + 0.01 * torch.rand(n, n_classes))
        rows.append(row)
    return labels, rows


def _run_avalanche(labels, logits_rows, T):
    """Feed logits (row 0: before training; row t+1: after training experience t) to Avalanche metrics."""
    from avalanche.evaluation.metrics.acc_matrix import AccuracyMatrixPluginMetric
    from avalanche.evaluation.metrics.forgetting_bwt import (ExperienceBWT, ExperienceForgetting, StreamBWT,
                                                             StreamForgetting)
    from avalanche.evaluation.metrics.forward_transfer import ExperienceForwardTransfer, StreamForwardTransfer

    plugins = {"exp_forgetting": ExperienceForgetting(), "stream_forgetting": StreamForgetting(),
               "exp_bwt": ExperienceBWT(), "stream_bwt": StreamBWT(),
               "exp_fwt": ExperienceForwardTransfer(), "stream_fwt": StreamForwardTransfer()}
    acc_matrix = AccuracyMatrixPluginMetric()
    stream = SimpleNamespace(name="test")
    exps = [SimpleNamespace(current_experience=k, origin_stream=stream, task_labels=[0]) for k in range(T)]
    train_stream = SimpleNamespace(name="train")
    train_exps = [SimpleNamespace(current_experience=k, origin_stream=train_stream, task_labels=[0]) for k in range(T)]
    s = SimpleNamespace(experience=None, is_eval=False, eval_every=0, mb_y=None, mb_output=None,
                        clock=SimpleNamespace(train_iterations=0))

    def evaluate(row, metrics):
        s.is_eval = True
        for p in metrics:
            p.before_eval(s)
        for k in range(T):
            s.experience = exps[k]
            for p in metrics:
                p.before_eval_exp(s)
            for half in (slice(0, 10), slice(10, None)):      # two minibatches per experience
                s.mb_y, s.mb_output = labels[k][half], row[k][half]
                for p in metrics:
                    p.after_eval_iteration(s)
            for p in metrics:
                p.after_eval_exp(s)
        for p in metrics:
            p.after_eval(s)
        s.is_eval = False

    evaluate(logits_rows[0], list(plugins.values()))          # before training (forward transfer's b)
    # Avalanche's accuracy matrix cannot take that evaluation: its row index is None until training.
    with pytest.raises(TypeError):
        evaluate(logits_rows[0], [AccuracyMatrixPluginMetric()])
    everything = list(plugins.values()) + [acc_matrix]
    for t in range(T):
        s.experience = train_exps[t]
        for p in everything:
            p.before_training(s)
            p.before_training_exp(s)
        s.clock.train_iterations += 10
        for p in everything:
            p.after_training_exp(s)
            p.after_training(s)
        evaluate(logits_rows[t + 1], everything)
    return {name: p.result() for name, p in plugins.items()}, acc_matrix.result()


def _accuracy(logits, y):
    return float((logits.argmax(1) == y).float().mean())


def _check_agreement(labels, logits_rows):
    T = len(labels)
    R_all = [[_accuracy(row[j], labels[j]) for j in range(T)] for row in logits_rows]
    b, R = R_all[0], R_all[1:]
    av, av_matrix = _run_avalanche(labels, logits_rows, T)
    assert np.allclose(av_matrix.numpy(), np.asarray(R), atol=1e-6)
    assert av["stream_forgetting"] == pytest.approx(M.forgetting_first(R), abs=1e-6)
    assert av["stream_bwt"] == pytest.approx(M.bwt(R), abs=1e-6)
    assert av["stream_fwt"] == pytest.approx(M.fwt(R, b), abs=1e-6)
    # per experience: Avalanche's dicts against the same conventions, task by task
    for k in range(T - 1):
        assert av["exp_forgetting"][k] == pytest.approx(R[k][k] - R[-1][k], abs=1e-6)
        assert av["exp_bwt"][k] == pytest.approx(R[-1][k] - R[k][k], abs=1e-6)
    for k in range(1, T):
        assert av["exp_fwt"][k] == pytest.approx(R[k - 1][k] - b[k], abs=1e-6)
    assert set(av["exp_forgetting"]) == set(range(T - 1))
    return R, b


def test_avalanche_agrees_on_a_matrix_where_accuracy_recovers():
    R_rows = [[0.1, 0.2, 0.3, 0.05],       # before training
              [0.6, 0.0, 0.0, 0.0],
              [0.9, 0.7, 0.1, 0.0],
              [0.8, 0.4, 0.9, 0.2],
              [0.7, 0.8, 0.3, 0.9]]
    labels, rows = _predictions_for(R_rows)
    R, b = _check_agreement(labels, rows)
    assert np.allclose(R, R_rows[1:], atol=1e-9)
    # Avalanche's forgetting is the first-based one: here it differs from Chaudhry's max-based one
    assert abs(M.forgetting(R) - M.forgetting_first(R)) > 0.05


def test_avalanche_agrees_with_clbench_evaluator_on_a_real_digits_run():
    from clbench.config import compose
    from clbench.engine import prepare

    run = prepare(compose(["strategy=naive", "wandb.mode=disabled", "train.epochs=1", "device=cpu"]))
    strategy, stream = run.strategy, run.stream
    T = len(stream.eval_tasks)
    labels = [t.test.get(torch.arange(len(t.test))).y for t in stream.eval_tasks]

    def predictions():
        with torch.inference_mode():
            return [strategy.predict(t.test.get(torch.arange(len(t.test))).x) for t in stream.eval_tasks]

    rows, R_eval = [predictions()], [run.evaluator.evaluate(strategy).acc]
    for exp in stream:
        strategy.train(exp)
        rows.append(predictions())
        R_eval.append(run.evaluator.evaluate(strategy).acc)
    R, b = _check_agreement(labels, rows)
    # and clbench's evaluator measured exactly these accuracies
    assert np.allclose(R, R_eval[1:], atol=1e-9)
    assert np.allclose(b, R_eval[0], atol=1e-9)
    assert M.compute_all(R, b)["forgetting_first"] > 0.5      # naive forgets in class-IL
