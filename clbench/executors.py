"""Executors: where the runs of a sweep execute.

    executor=local     (default) a process pool of `workers` processes; serial in this process when 1
    executor=ray       Ray core tasks: attaches to RAY_ADDRESS (or ray.address) when set, else starts a
                       local Ray instance; per-run requests ray.num_cpus / ray.num_gpus
    executor=submitit  SLURM job arrays through submitit's AutoExecutor; without SLURM it falls back
                       to the local executor

Every executor runs the same function, `execute_task`, which calls `clbench.engine.run` and turns any
exception into a failed Outcome (so one bad run never stops the others). `run(tasks)` yields Outcomes
as runs finish, in completion order. Ray and submitit are optional extras, imported only when chosen.

Threads: N runs at once each using every core would oversubscribe the machine, so each run gets
`threads` torch threads (default: cores // workers for local, ray.num_cpus for Ray).
"""
from __future__ import annotations

import os
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any, Iterator, Optional

from clbench.config import ConfigError
from clbench.errors import bad_value
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


@dataclass
class Outcome:
    run_id: str
    status: str                      # "done" or "failed"
    seconds: float = 0.0
    error: Optional[str] = None      # one line: "ExceptionType: message"
    traceback: Optional[str] = None
    path: Optional[str] = None       # the published run folder (on the machine that ran it)
    result: Optional[dict] = None    # the result itself, from executors that may run elsewhere
    worker: Optional[str] = None     # host:pid and torch threads, for the manifest


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def set_threads(n: Optional[int]) -> None:
    """Limit this process's torch (and BLAS/OpenMP) threads; called before a run."""
    if not n:
        return
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)  # read by libraries loaded later in this process
    import torch
    torch.set_num_threads(int(n))


def execute_task(task: Task, threads: Optional[int] = None, return_result: bool = False) -> Outcome:
    """Run one experiment; never raises for a failing run (the error comes back in the Outcome)."""
    import socket
    set_threads(threads)
    import torch
    worker = f"{socket.gethostname()}:{os.getpid()} threads={torch.get_num_threads()}"
    t0 = time.perf_counter()
    try:
        from clbench.engine import run  # imported once per worker; the first run's time includes it
        result, path = run(task.cfg, overwrite=True, console=False)
        if result["run_id"] != task.run_id:  # the sweep and the engine must agree, or resume breaks
            raise RuntimeError(f"run id mismatch: planned {task.run_id}, engine wrote {result['run_id']}")
        return Outcome(task.run_id, "done", time.perf_counter() - t0, path=str(path),
                       result=result if return_result else None, worker=worker)
    except Exception as e:
        return Outcome(task.run_id, "failed", time.perf_counter() - t0,
                       error=f"{type(e).__name__}: {e}".splitlines()[0][:500],
                       traceback=traceback.format_exc(), worker=worker)


def _init_worker(threads: Optional[int]) -> None:
    set_threads(threads)
    import clbench.engine  # noqa: F401  (import once per worker, outside the runs' timings)


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

    def __init__(self, workers: int = 1, threads: Optional[int] = None):
        self.workers = int(workers)
        self.threads = threads

    def _threads(self, n_procs: int) -> int:
        return int(self.threads) if self.threads else max(1, available_cores() // n_procs)

    def describe(self) -> str:
        if self.workers == 1:
            return f"local executor (serial, {self._threads(1)} torch threads)"
        return f"local executor ({self.workers} worker processes x {self._threads(self.workers)} torch threads)"

    def run(self, tasks: list[Task]) -> Iterator[Outcome]:
        n = min(self.workers, len(tasks))
        threads = self._threads(max(n, 1))
        if n <= 1:
            yield from self._serial(tasks, threads)
            return
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from concurrent.futures.process import BrokenProcessPool
        pool = ProcessPoolExecutor(max_workers=n, mp_context=mp.get_context("spawn"),
                                   initializer=_init_worker, initargs=(threads,))
        try:
            futures = {pool.submit(execute_task, t, threads): t for t in tasks}
            for fut in as_completed(futures):
                t = futures[fut]
                try:
                    yield fut.result()
                except BrokenProcessPool as e:  # a worker died (killed, out of memory, segfault)
                    yield Outcome(t.run_id, "failed", error=f"worker process died: {e}",
                                  traceback=traceback.format_exc())
                except Exception as e:
                    yield Outcome(t.run_id, "failed", error=f"{type(e).__name__}: {e}",
                                  traceback=traceback.format_exc())
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _serial(self, tasks: list[Task], threads: int) -> Iterator[Outcome]:
        import torch
        before = torch.get_num_threads()
        torch.set_num_threads(threads)  # in this process: no environment changes, restored afterwards
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

    def __init__(self, address: Optional[str] = None, num_cpus: float = 1, num_gpus: float = 0,
                 dashboard: bool = False, threads: Optional[int] = None):
        self.ray = _import_extra("ray")
        self.address = address
        self.num_cpus, self.num_gpus = float(num_cpus), float(num_gpus)
        if self.num_cpus <= 0 or self.num_gpus < 0:
            raise bad_value("ray", f"need num_cpus > 0 and num_gpus >= 0, got {num_cpus}, {num_gpus}")
        self.dashboard = bool(dashboard)
        self.threads = int(threads) if threads else max(1, int(self.num_cpus))

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
            refs = {fn.remote(t, self.threads, True): t for t in tasks}
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


class SubmititExecutor(Executor):
    """SLURM through submitit: one job array (`map_array`) with one task per run.

    `submitit.*` keys go to `update_parameters` (e.g. submitit.slurm_partition=gpu
    submitit.gpus_per_node=1 submitit.timeout_min=120 submitit.slurm_array_parallelism=16).
    `submitit.folder` holds logs and pickles and must be on a filesystem the nodes share (default:
    <out>/.submitit). Without SLURM (no `srun`) it falls back to the local executor, unless
    `submitit.cluster=local` or `debug` asks for submitit's own local runner.
    """

    name = "submitit"

    def __init__(self, options: dict, out, workers: int = 1, threads: Optional[int] = None):
        self.submitit = _import_extra("submitit")
        options = dict(options)
        self.folder = options.pop("folder", None) or os.path.join(str(out), ".submitit")
        self.cluster = options.pop("cluster", None)
        self.params = {"timeout_min": 60, "cpus_per_task": int(threads or 1), **options}
        self.threads = int(threads or self.params["cpus_per_task"])
        self.executor = self.submitit.AutoExecutor(folder=self.folder, cluster=self.cluster)
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
        n = len(tasks)
        jobs = self.executor.map_array(execute_task, tasks, [self.threads] * n, [True] * n)
        pending = dict(zip(jobs, tasks))
        while pending:
            finished = [j for j in pending if j.done()]
            for job in finished:
                t = pending.pop(job)
                try:
                    yield job.result()
                except Exception as e:  # the job itself failed (timeout, preemption, node failure)
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


def make_executor(settings: dict, out=None) -> Executor:
    """The executor a sweep's settings ask for (executor, workers, threads, ray.*, submitit.*)."""
    name = settings.get("executor", "local")
    if name not in EXECUTORS:
        raise bad_value("executor", f"{name!r}.{did_you_mean(name, EXECUTORS)} "
                          f"Valid choices: {', '.join(EXECUTORS)}")
    workers = _int_setting(settings, "workers", 1)
    threads = _int_setting(settings, "threads", None)
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
