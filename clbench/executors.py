"""Executors: where the runs of a sweep execute.

    executor=local     (default) a process pool of `workers` processes; serial in this process when 1
    executor=ray       Ray core tasks: attaches to RAY_ADDRESS (or ray.address) when set, else starts a
                       local Ray instance; per-run requests ray.num_cpus / ray.num_gpus
    executor=submitit  SLURM job arrays through submitit's AutoExecutor; without SLURM it falls back
                       to the local executor

Every executor runs the same function, `execute_task`, which calls `clbench.engine.run` and turns any
exception into a failed Outcome (so one bad run never stops the others). `run(tasks)` yields Outcomes
as runs finish, in completion order. Ray and submitit are optional extras, imported only when chosen.

Threads: the torch thread count is part of each run's config (`threads`, default 1) and the engine sets
it, so a run computes the same numbers in a pool worker, a Ray task, a SLURM job or a plain `clbench
run`. The executors only size their resource requests from it (Ray num_cpus, SLURM cpus_per_task).

Crashes: pool workers die with the sweep (prctl PR_SET_PDEATHSIG on Linux, and a thread that watches the
parent pid elsewhere), so a killed sweep leaves no orphan still training; a worker killed by a signal
(segfault, out-of-memory killer) fails only the run it was running, and the pool is rebuilt for the rest.
"""
from __future__ import annotations

import os
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any, Iterator, Optional

from clbench.config import ConfigError
from clbench.errors import RunInterrupted, bad_value, failure
from clbench.registry import did_you_mean

EXECUTORS = ("local", "ray", "submitit")
INSTALL_HINT = {
    "ray": 'executor=ray needs Ray: pip install -e ".[ray]"  (or pip install "ray[default]")',
    "submitit": 'executor=submitit needs submitit: pip install -e ".[slurm]"  (or pip install submitit)',
}


@dataclass
class Task:
    run_id: str
    cfg: dict            # the resolved run config (composed by the sweep)
    label: str = ""
    members: Optional[list["Task"]] = None   # perf: the seeds of a seed-parallel group (clbench/seed_parallel.py)


@dataclass
class Outcome:
    run_id: str
    status: str                      # "done", "failed", or "interrupted" (SIGTERM/SIGINT: checkpoint kept)
    seconds: float = 0.0
    error: Optional[str] = None      # one line: "ExceptionType: message"
    traceback: Optional[str] = None
    path: Optional[str] = None       # the published run folder (on the machine that ran it)
    result: Optional[dict] = None    # the result itself, from executors that may run elsewhere
    worker: Optional[str] = None     # host:pid and torch threads, for the manifest
    members: Optional[list["Outcome"]] = None   # perf: one per seed of a seed-parallel group
    signum: Optional[int] = None     # the signal that interrupted the run


def execute_task(task: Task, return_result: bool = False) -> Outcome:
    """Run one experiment; never raises for a failing run (the error comes back in the Outcome).
    The run's own config sets its thread count (`threads`)."""
    import socket
    worker = f"{socket.gethostname()}:{os.getpid()}"
    t0 = time.perf_counter()
    if task.members:     # perf: a seed-parallel group
        return _execute_group(task, worker, return_result)
    try:
        from clbench.engine import run  # imported once per worker; the first run's time includes it
        result, path = run(task.cfg, overwrite=True, console=False)
        if result["run_id"] != task.run_id:  # the sweep and the engine must agree, or resume breaks
            raise RuntimeError(f"run id mismatch: planned {task.run_id}, engine wrote {result['run_id']}")
        return Outcome(task.run_id, "done", time.perf_counter() - t0, path=str(path),
                       result=result if return_result else None,
                       worker=f"{worker} threads={result['env'].get('threads')}")
    except RunInterrupted as e:  # preempted: the run kept its checkpoint; the sweep stops instead of failing it
        return Outcome(task.run_id, "interrupted", time.perf_counter() - t0, error=str(e), worker=worker,
                       signum=e.signum)
    except Exception as e:
        return Outcome(task.run_id, "failed", time.perf_counter() - t0, worker=worker, **failure(e))


def _execute_group(task: Task, worker: str, return_result: bool) -> Outcome:
    """perf: the seeds of a group as one model; one Outcome per seed in `members` (seconds: the group's, split)."""
    t0 = time.perf_counter()
    try:
        from clbench.seed_parallel import run_seeds
        outs = run_seeds([m.cfg for m in task.members])
    except RunInterrupted as e:      # SIGTERM/SIGINT: every seed kept its checkpoint; as for one run, not a failure
        seconds = time.perf_counter() - t0
        return Outcome(task.run_id, "interrupted", seconds, error=str(e), worker=worker, signum=e.signum,
                       members=[Outcome(m.run_id, "interrupted", seconds / len(task.members), error=str(e),
                                        worker=worker, signum=e.signum) for m in task.members])
    except Exception as e:
        outs = [failure(e) for _ in task.members]
    seconds = (time.perf_counter() - t0) / len(task.members)
    members = []
    for m, o in zip(task.members, outs):
        if "error" in o:
            members.append(Outcome(m.run_id, "failed", seconds, error=o["error"], traceback=o["traceback"],
                                   worker=worker))
        elif o["result"]["run_id"] != m.run_id:
            members.append(Outcome(m.run_id, "failed", seconds, worker=worker,
                                   error=f"run id mismatch: planned {m.run_id}, engine wrote {o['result']['run_id']}"))
        else:
            members.append(Outcome(m.run_id, "done", seconds, path=str(o["path"]), worker=worker,
                                   result=o["result"] if return_result else None))
    status = "done" if all(o.status == "done" for o in members) else "failed"
    return Outcome(task.run_id, status, time.perf_counter() - t0, worker=worker, members=members)


# ----- pool workers die with the sweep -------------------------------------------------------------------
PR_SET_PDEATHSIG = 1   # linux/prctl.h


def die_with_parent(parent_pid: int, use_prctl: bool = True, poll_s: float = 1.0, grace_s: float = 10.0) -> None:
    """End this process when `parent_pid` (the sweep) dies, even by SIGKILL, so no orphan keeps training
    (and publishing) runs that the resumed sweep runs again.

    Linux: the kernel sends SIGTERM at the parent's death (prctl PR_SET_PDEATHSIG). Everywhere: a daemon
    thread polls the parent pid; once it has changed it sends SIGTERM, and exits hard `grace_s` later
    if a handler kept the process alive (a SIGTERM handler may write a checkpoint first).
    """
    import signal
    import threading
    if use_prctl and sys.platform.startswith("linux"):
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watchdog below still covers it
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        os._exit(1)
    threading.Thread(target=watch, name="clbench-parent-watchdog", daemon=True).start()


_STARTED = None   # in a pool worker: a queue telling the sweep which run this process started


def _init_worker(parent_pid: int, started) -> None:
    import signal
    global _STARTED
    # Ctrl-C in a terminal reaches the whole process group; the sweep decides and ends its workers with
    # SIGTERM (one signal, one way to stop), so a worker never dies half-way through handling a second one.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent_pid)
    _STARTED = started
    import clbench.engine  # noqa: F401  (import once per worker, outside the runs' timings)


def _pool_task(task: Task) -> Outcome:
    _STARTED.put((os.getpid(), task.run_id))
    return execute_task(task)


def _drain(started, running: dict, timeout: float = 0.0) -> None:
    """Read the (pid, run id) messages of runs that started into `running` (the last run per pid)."""
    import queue
    while True:
        try:
            pid, run_id = started.get(timeout=timeout) if timeout else started.get_nowait()
        except (queue.Empty, OSError, EOFError, ValueError):
            return
        running[pid] = run_id


def _signal_name(exitcode: Optional[int]) -> str:
    import signal
    if exitcode is not None and exitcode < 0:
        try:
            return signal.Signals(-exitcode).name
        except ValueError:
            pass
    return f"exit code {exitcode}"


class Executor:
    name = "executor"

    def describe(self) -> str:
        return self.name

    def run(self, tasks: list[Task]) -> Iterator[Outcome]:
        raise NotImplementedError


class LocalExecutor(Executor):
    """A process pool on this machine; `workers=1` runs serially in this process (easy to debug).

    Pool workers are spawned (not forked: forking a process that already runs torch threads can
    deadlock) and reused across runs; each run seeds everything and builds its own objects.
    """

    name = "local"
    INTERRUPT_GRACE_S = 10.0

    def __init__(self, workers: int = 1, threads: int = 1):
        self.workers = int(workers)
        self.threads = int(threads or 1)

    def describe(self) -> str:
        if self.workers == 1:
            return f"local executor (serial, {self.threads} torch thread(s) per run)"
        return f"local executor ({self.workers} worker processes x {self.threads} torch thread(s) per run)"

    def run(self, tasks: list[Task]) -> Iterator[Outcome]:
        n = min(self.workers, len(tasks))
        if n <= 1:
            yield from self._serial(tasks)
            return
        todo = list(tasks)
        while todo:   # one pool, and a fresh one after a worker died (the others' runs go on there)
            todo = yield from self._pool(todo, min(n, len(todo)))

    def _pool(self, tasks: list[Task], n: int) -> Iterator[Outcome]:
        """Run `tasks` on a pool of n workers; returns the tasks to run again on a fresh pool."""
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from concurrent.futures.process import BrokenProcessPool
        ctx = mp.get_context("spawn")
        started = ctx.Queue()   # (worker pid, run id) as each run starts: who ran what, if a worker dies
        pool = ProcessPoolExecutor(max_workers=n, mp_context=ctx, initializer=_init_worker,
                                   initargs=(os.getpid(), started))
        running: dict[int, str] = {}   # worker pid -> the run it started last
        finished: set[str] = set()
        broken: list[Task] = []
        retry: list[Task] = []
        try:
            futures = {pool.submit(_pool_task, t): t for t in tasks}
            procs = list(getattr(pool, "_processes", {}).values())   # to read exit codes after a crash
            for fut in as_completed(futures):
                _drain(started, running)  # read as we go: a full pipe would block the workers' exit
                t = futures[fut]
                try:
                    outcome = fut.result()
                except BrokenProcessPool:  # a worker died (segfault, out-of-memory killer, kill -9)
                    broken.append(t)
                    continue
                except Exception as e:     # e.g. the outcome could not be sent back
                    outcome = Outcome(t.run_id, "failed", error=f"{type(e).__name__}: {e}",
                                      traceback=traceback.format_exc())
                finished.add(t.run_id)
                yield outcome
            if broken:
                _drain(started, running, timeout=0.5)
                yield from self._after_crash(broken, procs, running, finished, retry)
        except (KeyboardInterrupt, GeneratorExit):  # Ctrl-C, or the sweep stopped early (e.g. disk full)
            self._interrupt(pool)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            started.close()
        return retry

    def _after_crash(self, broken, procs, running, finished, retry) -> Iterator[Outcome]:
        """Fail the run(s) whose worker died by itself; the others (killed with the broken pool, or never
        started) go to a fresh pool. At least one run fails per broken pool, so this ends."""
        import signal
        for p in procs:
            p.join(timeout=5)
        in_flight = {pid: rid for pid, rid in running.items() if rid not in finished}
        died = {p.pid: p.exitcode for p in procs if p.exitcode not in (None, 0, -int(signal.SIGTERM))}
        culprits = {in_flight[pid]: code for pid, code in died.items() if pid in in_flight}
        if not culprits:   # cannot tell which: every run in flight is a suspect
            culprits = {rid: None for rid in in_flight.values()}
        if not culprits:   # no run had started: the workers themselves cannot start
            culprits = {t.run_id: next(iter(died.values()), None) for t in broken}
        for t in broken:
            if t.run_id not in culprits:
                retry.append(t)
                continue
            code = culprits[t.run_id]
            why = f"killed by {_signal_name(code)}" if code is not None else "a worker process died"
            yield Outcome(t.run_id, "failed", error=f"worker process died while running this run ({why}); "
                          f"the other runs continue on a fresh pool",
                          traceback=f"worker process died ({why}); no Python traceback (the process was "
                                    f"killed by the OS or crashed in native code)")

    def _interrupt(self, pool) -> None:
        """Ctrl-C (or the sweep stopping early): SIGTERM to every worker (they ignore SIGINT), a moment for
        their runs to stop cleanly, then SIGKILL for any still alive."""
        procs = list(getattr(pool, "_processes", {}).values())
        for p in procs:
            if p.is_alive():
                p.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + self.INTERRUPT_GRACE_S
        for p in procs:
            p.join(timeout=max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(timeout=5)

    def _serial(self, tasks: list[Task]) -> Iterator[Outcome]:
        import torch
        before = torch.get_num_threads()   # each run sets its own thread count; restored afterwards
        try:
            for t in tasks:
                yield execute_task(t)
        finally:
            torch.set_num_threads(before)


class RayExecutor(Executor):
    """Ray core tasks. `ray.init()` attaches to the cluster at RAY_ADDRESS (or `ray.address`) when set,
    otherwise starts a local instance for the sweep and shuts it down afterwards.

    The result comes back through the object store too, so a run on a node without a folder shared
    with this machine is still published here (its W&B files stay on that node).
    """

    name = "ray"
    OPTIONS = ("address", "num_cpus", "num_gpus", "dashboard")

    def __init__(self, address: Optional[str] = None, num_cpus: Optional[float] = None, num_gpus: float = 0,
                 dashboard: bool = False, threads: int = 1):
        self.ray = _import_extra("ray")
        self.address = address
        self.threads = int(threads or 1)   # the runs' own `threads`; by default each run asks as many CPUs
        num_cpus = self.threads if num_cpus is None else num_cpus
        self.num_cpus, self.num_gpus = float(num_cpus), float(num_gpus)
        if self.num_cpus <= 0 or self.num_gpus < 0:
            raise bad_value("ray", f"need num_cpus > 0 and num_gpus >= 0, got {num_cpus}, {num_gpus}")
        self.dashboard = bool(dashboard)

    def describe(self) -> str:
        where = self.address or os.environ.get("RAY_ADDRESS") or "a local instance"
        return (f"ray executor ({where}; per run {self.num_cpus:g} CPU, {self.num_gpus:g} GPU, "
                f"{self.threads} torch threads)")

    def _init(self) -> bool:
        """Connect or start; returns True when this call started Ray (so it shuts it down)."""
        ray = self.ray
        if ray.is_initialized():
            return False
        address = self.address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, log_to_driver=True)
        else:  # a fresh local instance (not a stale one from an earlier `ray start`)
            ray.init(address="local", include_dashboard=self.dashboard, log_to_driver=True)
        return True

    def run(self, tasks: list[Task]) -> Iterator[Outcome]:
        ray = self.ray
        started = self._init()
        try:
            fn = ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus)(execute_task)
            refs = {fn.remote(t, True): t for t in tasks}
            pending = list(refs)
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    t = refs[ref]
                    try:
                        yield ray.get(ref)
                    except Exception as e:  # the worker or node died; the task itself never raises
                        yield Outcome(t.run_id, "failed", error=f"{type(e).__name__}: {str(e).splitlines()[0]}",
                                      traceback=str(e))
        finally:
            if started:
                ray.shutdown()


class SubmititRun:
    """What a SLURM job runs: one run, requeued as the same run when SLURM preempts it or its time runs
    out. SLURM signals the job (USR2) first; submitit then calls `checkpoint`, which here returns the same
    call to submit again (what `submitit.helpers.Checkpointable` does). The requeued job calls
    `clbench.engine.run` on the same config and folder, so it continues the unfinished run where the
    engine can resume one and otherwise starts it over; a finished run is never lost."""

    def __call__(self, task: Task) -> Outcome:
        return execute_task(task, return_result=True)

    def checkpoint(self, *args: Any, **kwargs: Any):
        import submitit
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


class SubmititExecutor(Executor):
    """SLURM through submitit: one job array (`map_array`) with one task per run.

    `submitit.*` keys go to `update_parameters` (e.g. submitit.slurm_partition=gpu
    submitit.gpus_per_node=1 submitit.timeout_min=120 submitit.slurm_array_parallelism=16).
    `submitit.folder` holds logs and pickles and must be on a filesystem the nodes share (default:
    <out>/.submitit). Without SLURM (no `srun`) it falls back to the local executor, unless
    `submitit.cluster=local` or `debug` asks for submitit's own local runner. A run preempted or out
    of time is requeued (submitit's checkpoint/requeue, up to `submitit.max_num_timeout` times).
    """

    name = "submitit"

    def __init__(self, options: dict, out, workers: int = 1, threads: int = 1):
        self.submitit = _import_extra("submitit")
        options = dict(options)
        self.folder = options.pop("folder", None) or os.path.join(str(out), ".submitit")
        self.cluster = options.pop("cluster", None)
        self.params = {"timeout_min": 60, "cpus_per_task": int(threads or 1), **options}
        self.executor = self.submitit.AutoExecutor(folder=self.folder, cluster=self.cluster)
        self.jobs: list = []
        self.fallback = None
        if self.cluster is None and self.executor.cluster != "slurm":
            print("clbench sweep: executor=submitit: no SLURM here (`srun` not found); running the sweep with "
                  "the local executor instead (submitit.cluster=local uses submitit's local runner)", file=sys.stderr)
            self.fallback = LocalExecutor(workers, threads)
            return
        try:
            self.executor.update_parameters(**self.params)
        except (NameError, TypeError, ValueError) as e:  # submitit names the valid parameters
            raise ConfigError(f"bad 'submitit.*' option: {e}") from None

    def describe(self) -> str:
        if self.fallback:
            return self.fallback.describe() + " (submitit fallback: no SLURM)"
        return f"submitit executor ({self.executor.cluster}; {self.params}; folder {self.folder})"

    def run(self, tasks: list[Task]) -> Iterator[Outcome]:
        if self.fallback:
            yield from self.fallback.run(tasks)
            return
        self.jobs = self.executor.map_array(SubmititRun(), tasks)
        pending = dict(zip(self.jobs, tasks))
        while pending:
            finished = [j for j in pending if j.done()]
            for job in finished:
                t = pending.pop(job)
                try:
                    yield job.result()
                except Exception as e:  # the job itself failed (timed out too often, node failure)
                    yield Outcome(t.run_id, "failed", error=f"{type(e).__name__}: {str(e).splitlines()[0][:500]} "
                                  f"(job {job.job_id}; logs in {self.folder})", traceback=str(e))
            if pending and not finished:
                time.sleep(2.0)


def _import_extra(name: str) -> Any:
    try:
        return __import__(name)
    except ImportError:
        raise ConfigError(f"{INSTALL_HINT[name]} (it is an optional extra)") from None


def _int_setting(settings: dict, key: str, default, minimum: int = 1):
    v = settings.get(key, default)
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
        raise bad_value(key, f"expected an integer >= {minimum}, got {v!r}")
    return v


def make_executor(settings: dict, out=None, threads: int = 1) -> Executor:
    """The executor a sweep's settings ask for (executor, workers, ray.*, submitit.*); `threads` is the
    largest thread count of the sweep's runs (their config key), which sizes the resources each asks."""
    name = settings.get("executor", "local")
    if name not in EXECUTORS:
        raise bad_value("executor", f"{name!r}.{did_you_mean(name, EXECUTORS)} "
                          f"Valid choices: {', '.join(EXECUTORS)}")
    workers = _int_setting(settings, "workers", 1)
    if name == "local":
        return LocalExecutor(workers, threads)
    if name == "ray":
        opts = dict(settings.get("ray") or {})
        for k in opts:
            if k not in RayExecutor.OPTIONS:
                valid = [f"ray.{o}" for o in RayExecutor.OPTIONS]
                raise ConfigError(f"unknown key 'ray.{k}'.{did_you_mean('ray.' + k, valid)} "
                                  f"Valid keys: {', '.join('ray.' + o for o in RayExecutor.OPTIONS)}")
        return RayExecutor(threads=threads, **opts)
    return SubmititExecutor(settings.get("submitit") or {}, out or ".", workers, threads)
