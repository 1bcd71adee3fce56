"""Resume mid-run: a run stopped by SIGTERM (or killed) and re-run with the same command gives a result.json
identical (R, metrics, stream) to an uninterrupted run, for every built-in strategy."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from clbench.engine import RunInterrupted, run

FAST = ["benchmark=split-digits", "dataset.train_per_class=30", "train.epochs=2", "train.batch_size=10",
        "wandb.mode=disabled", "progress=false", "device=cpu"]
TASK_IL_ONLY = {"pnn", "packnet"}      # they choose their network by task id: split-digits as task-IL


def same_result(a: dict, b: dict) -> None:
    for key in ("accuracy_matrix", "initial_accuracy", "metrics", "stream", "task_masked_accuracy_matrix",
                "per_class_accuracy", "config_hash", "extra_models", "strategy_state"):
        assert a.get(key) == b.get(key), key


def test_sigterm_then_rerun_gives_the_uninterrupted_result(builtin_strategy, tmp_path, preempt):
    strategy = builtin_strategy
    args = [*FAST, f"strategy={strategy}", "callbacks=[preempt_test]"]
    if strategy in TASK_IL_ONLY:
        args.append("scenario.name=task_incremental")
    reference, _ = run([*args, f"out={tmp_path / 'ref'}"], console=False)
    out = tmp_path / "stopped"
    preempt.at_step = 17          # mid-experience: experience 1, step 5 (12 steps per experience)
    with pytest.raises(RunInterrupted) as stop:
        run([*args, f"out={out}"], console=False)
    assert stop.value.exit_code == 128 + signal.SIGTERM and "re-run the same command" in str(stop.value).lower()
    # nothing published: only the hidden working folder with its checkpoint
    assert not [p for p in out.iterdir() if not p.name.startswith(".")]
    assert len(list(out.glob(".*.partial/checkpoint.pt"))) == 1
    resumed, folder = run([*args, f"out={out}"], console=False)
    same_result(reference, resumed)
    assert resumed["timing"]["segments"] == 2 and folder.name == reference["run_id"]
    assert not list(out.glob(".*.partial"))


def test_resume_false_starts_over(tmp_path, preempt):
    args = [*FAST, "strategy=replay", "callbacks=[preempt_test]", f"out={tmp_path}"]
    preempt.at_step = 9
    with pytest.raises(RunInterrupted):
        run(args, console=False)
    result, _ = run([*args, "resume=false"], console=False)
    assert result["timing"]["segments"] == 1


def test_an_opaque_strategy_restarts_instead_of_resuming(tmp_path):
    """The Avalanche bridge cannot save Avalanche's plugin state: a stopped run starts over, with the same result."""
    args = [*FAST, "strategy=avalanche:Naive", "train.epochs=1", f"out={tmp_path}"]
    reference, _ = run([*args, f"out={tmp_path / 'ref'}"], console=False)
    (tmp_path / "b").mkdir()
    r = run([*args, f"out={tmp_path / 'b'}"], console=False)[0]
    assert r["accuracy_matrix"] == reference["accuracy_matrix"]


def _cli(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "clbench", "run", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, **kw)


def _wait_for_checkpoint(out, proc, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if list(out.glob(".*.partial/checkpoint.pt")):
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before its first checkpoint: {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_real_process_killed_or_preempted_resumes_exactly(sig, tmp_path):
    args = [*FAST, "strategy=derpp", "train.epochs=3", "checkpoint.every_steps=5"]
    reference, _ = run([*args, f"out={tmp_path / 'ref'}"], console=False)
    out = tmp_path / "killed"
    proc = _cli([*args, f"out={out}"])
    _wait_for_checkpoint(out, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    if sig == signal.SIGTERM:
        assert proc.returncode == 128 + signal.SIGTERM, err
        assert err.strip().splitlines()[-1].startswith("clbench: interrupted by SIGTERM"), err
    else:
        assert proc.returncode == -signal.SIGKILL
    again = _cli([*args, f"out={out}"])
    stdout, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    folder = stdout.strip().splitlines()[-1]
    resumed = json.loads((tmp_path / "killed" / os.path.basename(folder) / "result.json").read_text())
    same_result(reference, resumed)
    assert resumed["timing"]["segments"] == 2


def test_two_identical_runs_at_once_get_two_folders(tmp_path):
    """Run folders are claimed under an OS lock: the second identical `clbench run` takes `<run_id>_r2`."""
    args = [*FAST, "strategy=naive", f"out={tmp_path}"]
    procs = [_cli(args) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    folders = sorted(o[0].strip().splitlines()[-1] for o in outs)
    assert len(set(folders)) == 2 and folders[1] == folders[0] + "_r2"
    for f in folders:
        assert json.loads((tmp_path / os.path.basename(f) / "result.json").read_text())["accuracy_matrix"]
    assert not list(tmp_path.glob(".*.partial"))


def test_a_resumed_run_continues_the_same_wandb_run(tmp_path, preempt):
    """The W&B run of a preempted run is marked preempting, not finished, and the resumed run writes into the
    same W&B run id (offline: one more offline-run folder with the same id), so W&B shows one run."""
    args = [a for a in FAST if not a.startswith("wandb")] + ["wandb.mode=offline", "strategy=replay",
                                                              "callbacks=[preempt_test]", f"out={tmp_path}"]
    preempt.at_step = 17
    with pytest.raises(RunInterrupted):
        run(args, console=False)
    first = [p.name for p in tmp_path.glob(".*.partial/wandb/offline-run-*")]
    result, folder = run(args, console=False)
    runs = sorted(p.name for p in (folder / "wandb").glob("offline-run-*"))
    assert len(first) == 1 and len(runs) == 2
    run_id = lambda name: re.match(r"offline-run-\d{8}_\d{6}-([a-z0-9]+)", name).group(1)  # noqa: E731
    assert {run_id(name) for name in runs} == {run_id(first[0])}   # (a folder of the same second gets "-1" appended)


@pytest.mark.parametrize("options", [
    ["eval.schedule=seen_next", "eval.validation=0.25"],       # rows of R with unscored (null) entries
    ["train.amp=bf16"],
    ["train.compile=default"],                                 # dynamo with the eager backend (below)
])
def test_sigterm_then_rerun_with_the_speed_options(options, tmp_path, preempt, monkeypatch):
    """eval.schedule, train.amp and train.compile keep resume exact: the checkpoint holds the partial R with its
    null entries, and the compiled view of the model is rebuilt around the restored weights."""
    if "train.compile=default" in options:
        import torch
        import torch._dynamo
        real = torch.compile
        monkeypatch.setattr(torch, "compile", lambda model, mode=None: real(model, backend="eager"))
        torch._dynamo.reset()
    args = [*FAST, "strategy=replay", "callbacks=[preempt_test]", *options]
    reference, _ = run([*args, f"out={tmp_path / 'ref'}"], console=False)
    preempt.at_step = 17
    with pytest.raises(RunInterrupted):
        run([*args, f"out={tmp_path / 'stopped'}"], console=False)
    resumed, _ = run([*args, f"out={tmp_path / 'stopped'}"], console=False)
    same_result(reference, resumed)
    assert resumed["timing"]["segments"] == 2
    for key in ("validation_accuracy_matrix", "validation_metrics"):
        assert resumed.get(key) == reference.get(key), key
    if "eval.schedule=seen_next" in options:
        assert any(v is None for row in resumed["accuracy_matrix"] for v in row)
