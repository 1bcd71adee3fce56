"""Faults and bad inputs (issue 13): each row of docs/faults.md that clbench handles, as a test.

Faults are provoked for real where that is possible: concurrent processes racing for a lock, SIGKILL and
SIGINT sent to a sweep, a plugin that segfaults its worker, a full filesystem, a diverging Avalanche run.
What the user must get: one line `clbench: error: ...` and exit status 2 for anything they can fix, nothing
half-written, and a sweep that records a failed run and goes on.
"""
from __future__ import annotations

import errno
import json
import multiprocessing as mp
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from clbench import cli
from clbench.cli import main

FAST = ["benchmark=split-digits", "train.epochs=1", "wandb.mode=disabled", "progress=false"]
LINUX = sys.platform.startswith("linux")


def one_error_line(capsys, rc: int, match: str = "", code: int = 2) -> str:
    """The CLI printed exactly one line, `clbench: error: ...`, no traceback, and exited with `code`."""
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == code, err
    assert len(lines) == 1 and lines[0].startswith("clbench: error: "), err
    assert re.search(match, lines[0]), lines[0]
    return lines[0]


def published(out: Path) -> list[Path]:
    """Run folders that hold a result (not the hidden working folders)."""
    return [p.parent for p in Path(out).glob("*/result.json")]


def leftovers(out: Path) -> list[Path]:
    """Temporary files of an atomic write that failed half-way."""
    return [p for p in Path(out).rglob("*.tmp")]


# --------------------------------------------------------------------------- one line for every user error

@pytest.fixture(scope="module")
def one_run(tmp_path_factory):
    """One finished run folder (for report inputs)."""
    out = tmp_path_factory.mktemp("one_run")
    assert main(["run", *FAST, f"out={out}"]) == 0
    (run_dir,) = published(out)
    return run_dir


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# name -> (function of (tmp_path, one_run) returning argv, regex the one error line must match)
BAD_INPUTS = {
    "run out= is a file": (
        lambda t, r: ["run", *FAST, f"out={_write(t / 'f', 'x')}"], r"'out'.*not a folder"),
    "run out= below a file": (
        lambda t, r: ["run", *FAST, f"out={_write(t / 'f', 'x')}/sub"], r"'out'.*not a folder"),
    "sweep out= is a file": (
        lambda t, r: ["sweep", *FAST, "seed=0,1", f"out={_write(t / 'f', 'x')}"], r"'out'.*not a folder"),
    "report --out is a file": (
        lambda t, r: ["report", str(r), "--out", str(_write(t / "f", "x")), "--no-figures"], r"not a folder"),
    "report --metrics typo": (
        lambda t, r: ["report", str(r), "--metrics", "acc,forgeting", "--no-figures"],
        r"unknown metric 'forgeting'.*[Dd]id you mean 'forgetting'"),
    "report of a missing folder": (lambda t, r: ["report", str(t / "nope")], r"no such run folder"),
    "threads=0": (lambda t, r: ["run", *FAST, "threads=0", f"out={t}"], r"bad value for 'threads'"),
    "threads=two": (lambda t, r: ["run", *FAST, "threads=two", f"out={t}"], r"bad value for 'threads'"),
    "sweep threads=0": (lambda t, r: ["sweep", *FAST, "threads=0", f"out={t}/s"], r"bad value for 'threads'"),
    "sweep file with a YAML error": (
        lambda t, r: ["sweep", f"sweep={_write(t / 'bad.yaml', 'grid: {seed: [0, 1' + chr(10))}", f"out={t}/s"],
        r"bad\.yaml.*YAML.*line"),
    "sweep file that is binary": (
        lambda t, r: ["sweep", f"sweep={_write(t / 'bin.yaml', chr(0) * 10)}", f"out={t}/s"], r"bin\.yaml"),
    "sweep file too large": (
        lambda t, r: ["sweep", f"sweep={_write(t / 'big.yaml', 'description: ' + 'x' * 2_000_000)}", f"out={t}/s"],
        r"big\.yaml.*too large"),
    "sweep file alias bomb": (
        lambda t, r: ["sweep", f"sweep={_write(t / 'bomb.yaml', BOMB)}", f"out={t}/s"], r"bomb\.yaml.*too (large|deep)"),
    "sweep name too long": (lambda t, r: ["sweep", *FAST, "name=" + "n" * 300, f"out={t}/s"], r"'name'"),
    "out= folder name over 255 bytes": (lambda t, r: ["run", *FAST, f"out={t}/{'o' * 300}"], r"'out'.*longer than 255"),
    "corrupt sweep.json in out": (
        lambda t, r: ["sweep", *FAST, f"out={_write(t / 's' / 'sweep.json', '{not json').parent}"],
        r"sweep\.json.*(cannot|not)"),
    "report --metrics unknown name": (lambda t, r: ["report", str(r), "--metrics", "accc"], r"(?i)did you mean 'acc'"),
}
# nine levels of ten aliases each: a billion list items once expanded (a few hundred bytes of YAML)
BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8)) + "overrides: {x: *i}\n"


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_2(name, tmp_path, one_run, capsys):
    make_argv, match = BAD_INPUTS[name]
    argv = make_argv(tmp_path, one_run)
    capsys.readouterr()
    one_error_line(capsys, main(argv), match)
    assert not leftovers(tmp_path)


def readonly_folder(tmp_path) -> Path:
    """A folder this process cannot write: chmod 555 as a normal user; as root (who ignores modes) /proc/sys."""
    if os.geteuid() != 0:
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o555)
        return d
    if LINUX and not os.access("/proc/sys", os.W_OK):
        return Path("/proc/sys")
    pytest.skip("no read-only folder available to this (root) process")


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_out_in_a_read_only_folder_fails_before_anything_runs(command, tmp_path, capsys, monkeypatch):
    ro = readonly_folder(tmp_path)
    built = []
    import clbench.engine
    monkeypatch.setattr(clbench.engine, "build_stream", lambda *a, **k: built.append(1))  # must not be reached
    extra = ["seed=0,1"] if command == "sweep" else []
    one_error_line(capsys, main([command, *FAST, *extra, f"out={ro}/runs"]), r"'out'.*not writable")
    assert not built


def test_debug_flag_and_env_show_the_traceback(tmp_path, capsys, monkeypatch):
    argv = ["run", *FAST, "threads=0", f"out={tmp_path}"]
    assert main(["--debug", *argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("clbench: error: bad value for 'threads'")
    monkeypatch.setenv("CLBENCH_DEBUG", "1")
    assert main(argv) == 2
    assert "Traceback" in capsys.readouterr().err


def test_internal_error_says_it_is_a_bug(monkeypatch, capsys):
    def broken(args):
        raise TypeError("unsupported operand")
    monkeypatch.setattr(cli, "cmd_list", broken)
    assert main(["list"]) == 1
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err
    assert "bug" in lines[0] and "TypeError: unsupported operand" in lines[0] and "--debug" in lines[0]


# --------------------------------------------------------------------------- run ids and folder names

def _benchmark_file(tmp_path, name: str) -> Path:
    from clbench.config import configs_dir
    text = (configs_dir() / "benchmark" / "split-digits.yaml").read_text()
    return _write(tmp_path / "bench.yaml", re.sub(r"(?m)^name: .*$", lambda m: f"name: {json.dumps(name)}", text))


@pytest.mark.parametrize("bench_name", ["b" * 300, "../../escape/attempt", "a/b\\c d:e"])
def test_run_ids_stay_one_short_file_name_inside_out(bench_name, tmp_path, capsys):
    bench = _benchmark_file(tmp_path, bench_name)
    out = tmp_path / "out"
    assert main(["run", *FAST, f"benchmark={bench}", f"out={out}"]) == 0
    (run_dir,) = published(out)
    assert run_dir.parent == out and len(run_dir.name) <= 200
    assert re.fullmatch(r"[A-Za-z0-9_.+-]+", run_dir.name) and not run_dir.name.startswith(".")


def test_long_run_ids_stay_distinct():
    from clbench.results import make_run_id
    a = make_run_id({"benchmark": {"name": "b" * 300}, "strategy": {"name": "x"}, "seed": 0}, "0" * 64)
    b = make_run_id({"benchmark": {"name": "b" * 299 + "c"}, "strategy": {"name": "x"}, "seed": 0}, "0" * 64)
    assert a != b and len(a) <= 200 and len(b) <= 200


# --------------------------------------------------------------------------- result files and umask

@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_files_follow_the_umask(umask, tmp_path):
    old = os.umask(umask)
    try:
        out = tmp_path / "s"
        assert main(["sweep", *FAST, "seed=0", f"out={out}"]) == 0
        assert main(["report", str(out), "--no-figures", "--out", str(tmp_path / "rep")]) == 0
    finally:
        os.umask(old)
    files = [*published(out)[0].glob("result.json"), out / "sweep.json", out / "summary.csv", out / "summary.md",
             tmp_path / "rep" / "report.csv", tmp_path / "rep" / "report.md"]
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask, f


# --------------------------------------------------------------------------- disk full

def _enospc_on(monkeypatch, name_pattern: str, times: int = 10**9):
    """Make fsync of files whose name matches fail with ENOSPC, `times` times: what a full disk does to a
    write (with delayed allocation the error often surfaces only at fsync or close)."""
    real = os.fsync
    count = {"n": 0}

    def failing(fd):
        name = Path(os.readlink(f"/proc/self/fd/{fd}")).name
        if re.search(name_pattern, name) and count["n"] < times:
            count["n"] += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)
    monkeypatch.setattr(os, "fsync", failing)
    return count


@pytest.mark.skipif(not LINUX, reason="reads /proc/self/fd")
def test_disk_full_while_writing_a_result(tmp_path, capsys, monkeypatch):
    _enospc_on(monkeypatch, r"^\.result\.json\.")
    out = tmp_path / "out"
    one_error_line(capsys, main(["run", *FAST, f"out={out}"]), r"cannot write .*result\.json: no space left on device")
    assert not published(out) and not leftovers(tmp_path)


@pytest.mark.skipif(not LINUX, reason="reads /proc/self/fd")
def test_disk_full_during_a_sweep_fails_that_run_and_goes_on(tmp_path, capsys, monkeypatch):
    _enospc_on(monkeypatch, r"^\.result\.json\.", times=1)   # the first run's result cannot be written
    out = tmp_path / "s"
    rc = main(["sweep", *FAST, "seed=0,1", f"out={out}"])
    assert rc == 1
    manifest = json.loads((out / "sweep.json").read_text())
    assert [r["status"] for r in manifest["runs"]] == ["failed", "done"]
    assert "no space left on device" in manifest["runs"][0]["error"].lower()
    assert len(published(out)) == 1 and not leftovers(tmp_path)
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.skipif(not LINUX, reason="reads /proc/self/fd")
def test_disk_full_on_the_manifest_stops_the_sweep_with_a_summary(tmp_path, capsys, monkeypatch):
    out = tmp_path / "s"
    import clbench.executors
    real_execute = clbench.executors.execute_task
    state = {}

    def execute(task, *a, **k):   # the manifest was written at the start; from the first run on, the disk is full
        if "count" not in state:
            state["count"] = _enospc_on(monkeypatch, r"^\.sweep\.json\.")
        return real_execute(task, *a, **k)
    monkeypatch.setattr(clbench.executors, "execute_task", execute)
    rc = main(["sweep", *FAST, "seed=0,1,2", f"out={out}"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert "no space left on device" in err.lower() and "re-run" in err
    assert 1 <= len(published(out)) <= 3 and not leftovers(tmp_path)
    json.loads((out / "sweep.json").read_text())   # the last good manifest is intact


@pytest.fixture
def tiny_fs(tmp_path):
    """A real 256 KiB tmpfs (needs mount rights: root in a container); filled to the last few KiB."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if not LINUX or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                                   capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        filler = mnt / "filler"
        with open(filler, "wb") as f:
            try:
                f.write(b"\0" * (256 * 1024 - 8 * 1024))
            except OSError:
                pass
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_real_full_filesystem(tiny_fs, capsys):
    out = tiny_fs / "runs"
    one_error_line(capsys, main(["run", *FAST, f"out={out}"]), r"(?i)no space left on device")
    assert not published(out) and not leftovers(tiny_fs)


def test_unwritable_wandb_folders_do_not_fail_the_run(tmp_path, monkeypatch, capsys):
    """W&B is a sink: when it cannot write its own folders the run still completes and says so."""
    blocker = _write(tmp_path / "not-a-folder", "x")
    for var in ("WANDB_DATA_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(blocker))
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="continuing without W&B"):
        rc = main(["run", "benchmark=split-digits", "train.epochs=1", "progress=false", "wandb.mode=offline",
                   f"out={out}"])
    assert rc == 0 and len(published(out)) == 1


# --------------------------------------------------------------------------- the sweep lock, for real

def _contend(folder: str, barrier, results) -> None:
    from clbench.errors import UserError
    from clbench.sweep import _sweep_lock
    real_read = Path.read_text

    def slow_read(self, *a, **k):   # a slow (network) filesystem: widens any check-then-write window
        text = real_read(self, *a, **k)
        time.sleep(0.05)
        return text
    Path.read_text = slow_read      # (this process only: it is forked for the test)
    barrier.wait()
    try:
        with _sweep_lock(Path(folder)):
            t0 = time.monotonic()
            time.sleep(0.15)
            results.put((os.getpid(), t0, time.monotonic()))
    except UserError:
        results.put((os.getpid(), None, None))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_stale_lock_is_taken_over_by_one_process_at_a_time(tmp_path):
    ctx = mp.get_context("fork")
    overlaps, holders = 0, 0
    for trial in range(5):
        folder = tmp_path / f"t{trial}"
        folder.mkdir()
        (folder / ".sweep.lock").write_text(f"{socket.gethostname()}:999999999")   # left by a killed sweep
        n = 6
        barrier, results = ctx.Barrier(n), ctx.Queue()
        procs = [ctx.Process(target=_contend, args=(str(folder), barrier, results)) for _ in range(n)]
        for p in procs:
            p.start()
        got = [results.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(10)
        held = sorted((a, b) for _, a, b in got if a is not None)
        holders += len(held)
        overlaps += sum(1 for (a0, a1), (b0, b1) in zip(held, held[1:]) if b0 < a1)
    assert holders >= 5          # someone always takes a stale lock over
    assert overlaps == 0         # and never two at once


# --------------------------------------------------------------------------- sweeps killed from outside

def _children(pid: int) -> list[int]:
    kids = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat_file.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _wait_for(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _start_sweep(out: Path, *extra: str, env=None, stderr=subprocess.DEVNULL) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "clbench", "sweep", "benchmark=split-digits", "train.epochs=400",
           "wandb.mode=disabled", f"out={out}", "workers=2", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, text=True)


def _kill_all(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.slow   # real processes: a sweep, its workers, their imports (~10-40 s)
@pytest.mark.skipif(not LINUX, reason="reads /proc")
def test_sigkill_of_the_sweep_kills_its_workers(tmp_path):
    out = tmp_path / "s"
    p = _start_sweep(out, "seed=0,1")
    workers: list[int] = []
    try:
        _wait_for(lambda: len(list(out.glob(".*.partial"))) == 2, 120, "both runs to start")
        workers = _children(p.pid)
        assert len(workers) >= 2
        os.kill(p.pid, signal.SIGKILL)
        p.wait(10)
        _wait_for(lambda: not any(_alive(w) for w in workers), 15, "the workers to die with their parent")
        time.sleep(0.5)
        assert not published(out)     # nobody finished (and published) a run after the sweep was killed
    finally:
        _kill_all([p.pid, *workers])


@pytest.mark.skipif(not LINUX, reason="reads /proc")
def test_parent_watchdog_fallback(tmp_path):
    """Where prctl is missing (macOS), a thread that watches the parent pid ends the worker."""
    child = ("import sys, time; from clbench.executors import die_with_parent; "
             "die_with_parent(int(sys.argv[1]), use_prctl=False, poll_s=0.2); time.sleep(60)")
    parent = ("import os, subprocess, sys, time; "
              f"c = subprocess.Popen([sys.executable, '-c', {child!r}, str(os.getpid())]); "
              "print(c.pid, flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    child_pid = int(p.stdout.readline())
    try:
        time.sleep(2.0)               # let the child import clbench and start watching
        assert _alive(child_pid)
        p.kill()
        p.wait()
        _wait_for(lambda: not _alive(child_pid), 10, "the orphan to notice its parent is gone")
    finally:
        _kill_all([p.pid, child_pid])


@pytest.mark.slow   # real processes: a sweep, its workers, their imports (~10-40 s)
@pytest.mark.skipif(not LINUX, reason="reads /proc")
def test_ctrl_c_during_a_sweep(tmp_path):
    out = tmp_path / "s"
    p = _start_sweep(out, "seed=0,1,2", stderr=subprocess.PIPE)
    workers: list[int] = []
    try:
        _wait_for(lambda: len(list(out.glob(".*.partial"))) == 2, 120, "two runs to start")
        workers = _children(p.pid)
        os.killpg(p.pid, signal.SIGINT)              # what Ctrl-C in a terminal does: the whole group
        _, err = p.communicate(timeout=60)
        assert p.returncode == 130, err
        assert "Traceback" not in err
        assert err.strip().splitlines()[-1].startswith("clbench: interrupted")
        manifest = json.loads((out / "sweep.json").read_text())
        assert all(r["status"] in ("pending", "interrupted") for r in manifest["runs"])
        assert not published(out)
        _wait_for(lambda: not any(_alive(w) for w in workers), 15, "the workers to exit")
    finally:
        _kill_all([p.pid, *workers])


SEGV_PLUGIN = '''
import os, signal
from clbench.strategies.naive import Naive


class Segv(Naive):
    """A plugin that crashes its process hard (as a broken C extension does)."""

    def __init__(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGSEGV)
'''


@pytest.mark.slow   # real processes: a sweep, its workers, their imports (~10-40 s)
def test_a_segfaulting_worker_fails_only_its_run(tmp_path):
    """A worker killed by a signal breaks the whole process pool; the other runs must still finish."""
    site = tmp_path / "site"
    _write(site / "segv_plugin.py", SEGV_PLUGIN)
    _write(site / "segv_plugin-0.1.dist-info" / "METADATA", "Metadata-Version: 2.1\nName: segv-plugin\nVersion: 0.1\n")
    _write(site / "segv_plugin-0.1.dist-info" / "entry_points.txt", "[clbench.strategies]\nsegv = segv_plugin:Segv\n")
    out = tmp_path / "s"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-m", "clbench", "sweep", *FAST, "strategy=naive,segv", "seed=0",
                        f"out={out}", "workers=2"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 1, r.stderr
    runs = json.loads((out / "sweep.json").read_text())["runs"]
    status = {tuple(x["overrides"][-2:]): x for x in runs}
    assert {k: v["status"] for k, v in status.items()} == {
        ("strategy=naive", "seed=0"): "done", ("strategy=segv", "seed=0"): "failed"}
    assert "SIGSEGV" in status[("strategy=segv", "seed=0")]["error"]
    assert len(published(out)) == 1


@pytest.mark.slow   # real processes: a sweep, its workers, their imports (~10-40 s)
@pytest.mark.skipif(not LINUX, reason="reads /proc")
def test_submitit_requeues_a_preempted_run(tmp_path):
    """SLURM signals a job (USR2) before its time runs out or it is preempted: the run is requeued as the
    same run and finishes, instead of failing with "timed-out and not checkpointable". Submitit's local
    runner implements the same signal-checkpoint-requeue cycle."""
    pytest.importorskip("submitit")
    import threading

    from clbench.executors import SubmititExecutor, Task
    from clbench.results import is_complete
    from clbench.sweep import parse_sweep_args, plan
    out = tmp_path / "s"
    (planned,) = plan(parse_sweep_args([*FAST, "train.epochs=40", "seed=0", f"out={out}"]))
    ex = SubmititExecutor({"cluster": "local", "timeout_min": 2}, out)
    outcomes = []
    th = threading.Thread(target=lambda: outcomes.extend(ex.run([Task(planned.run_id, planned.cfg)])))
    th.start()
    _wait_for(lambda: (out / f".{planned.run_id}.partial").exists(), 120, "the run to start")
    (task_pid,) = _children(int(ex.jobs[0].job_id))     # the local runner's job process runs the task
    os.kill(task_pid, signal.SIGUSR2)
    th.join(300)
    (o,) = outcomes
    assert o.status == "done", o.error
    assert is_complete(out / planned.run_id)
    log = "".join(p.read_text() for p in Path(ex.folder).rglob("*_log.out"))
    assert "Requeued job" in log and "timed-out" in log   # it went through checkpoint-and-requeue


# --------------------------------------------------------------------------- sweep out folders

def test_a_folder_holding_another_sweep_is_refused(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["sweep", *FAST, "seed=0", f"out={out}"]) == 0
    before = (out / "sweep.json").read_text()
    capsys.readouterr()
    line = one_error_line(capsys, main(["sweep", *FAST, "train.epochs=2", "seed=0", f"out={out}"]),
                          r"holds (a different|another) sweep")
    assert str(out) in line and "train.epochs" in line
    assert (out / "sweep.json").read_text() == before
    # the same sweep, widened along its axis (more seeds), is a resume, not another sweep
    assert main(["sweep", *FAST, "seed=0,1", f"out={out}"]) == 0
    manifest = json.loads((out / "sweep.json").read_text())
    assert [r["status"] for r in manifest["runs"]] == ["cached", "done"]


def test_readme_sweep_examples_use_distinct_folders():
    """The README and docs/sweeps.md examples: each distinct sweep gets its own out folder."""
    from clbench.sweep import parse_sweep_args
    repo = Path(__file__).resolve().parents[1]
    seen: dict[Path, tuple] = {}
    for doc in (repo / "README.md", repo / "docs" / "sweeps.md"):
        for line in doc.read_text().splitlines():
            m = re.match(r"^(?:[A-Z_]+=\S+ )*clbench sweep (.*?)(?:\s+#.*)?$", line.strip())
            if not m:
                continue
            args = [a for a in m.group(1).split() if "=" in a]
            spec = parse_sweep_args(args)
            identity = (spec.name, tuple(sorted((k, tuple(v)) for k, v in spec.params.items() if len(v) == 1)))
            assert seen.setdefault(spec.out, identity) == identity, f"{doc.name}: {line}"


# --------------------------------------------------------------------------- NaN inside the Avalanche bridge

def test_avalanche_nan_stops_the_run(tmp_path, capsys):
    pytest.importorskip("avalanche")
    out = tmp_path / "out"
    # split-digits' protocol (5 epochs): the loss turns NaN in a later experience (old code: acc 10 %, NaN weights)
    one_error_line(capsys, main(["run", "strategy=avalanche:MAS", "strategy.lambda_reg=1", "benchmark=split-digits",
                                 "wandb.mode=disabled", "progress=false", f"out={out}"]),
                   r"avalanche:MAS produced a non-finite training loss .* in experience \d")
    assert not published(out)
