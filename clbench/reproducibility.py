"""What decides whether two runs of one config compute the same numbers, and the knob the config fixes.

Floating-point sums depend on the order of their terms, and the order depends on how the work is split:
the number of CPU threads (measured: full split-MNIST replay, 1 vs 2 threads, different R; see
docs/reproducibility.md), the BLAS library and the instruction set its kernels pick, the torch version,
the device, and on CUDA the choice of (non-)deterministic kernels. So:

- `threads` is a config key (configs/defaults.yaml: 1; part of the config hash, so 1 and 2 threads are
  different run ids). The engine applies it with `apply_threads` before building anything, in whatever
  process runs it (plain run, sweep worker, Ray task, SLURM job), so a sweep cell and a plain run agree.
- `arithmetic_env` is recorded in result.json under `env`, so a reader (report, `leaderboard verify`)
  can tell whether two results should agree bit for bit, and a re-run can set the same thread count.
"""
from __future__ import annotations

import platform
import re
from typing import Optional

from clbench.errors import bad_value


def check_threads(cfg: dict) -> Optional[int]:
    """The config's thread count; None when the key is absent or null (configs older than the key:
    the process's setting is kept and recorded)."""
    n = cfg.get("threads")
    if n is None:
        return None
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise bad_value("threads", f"expected an integer >= 1 (torch CPU threads of the run), got {n!r}")
    return n


def apply_threads(cfg: dict) -> None:
    """Set the run's CPU thread count: torch's intra-op pool (and its MKL/OpenMP) and any BLAS already
    loaded by numpy. Called by the engine before the stream and the model are built."""
    n = check_threads(cfg)
    if n is None:
        return
    import torch
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(limits=n, user_api="blas")   # numpy's OpenBLAS (torch links its own MKL)
    except ImportError:  # threadpoolctl comes with scikit-learn; without it numpy keeps its default
        pass


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _torch_blas() -> Optional[str]:
    import torch
    m = re.search(r"BLAS_INFO=(\w+)", torch.__config__.show())
    return m.group(1) if m else None


def _numpy_blas() -> Optional[str]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    libs = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    return "; ".join(f"{i.get('internal_api')} {i.get('version') or ''} {i.get('architecture') or ''} "
                     f"{i.get('num_threads')} threads".replace("  ", " ") for i in libs) or None


def arithmetic_env(device) -> dict:
    """Everything besides the config and the code that changes the arithmetic of a run (for result.json)."""
    import torch
    env = {
        "torch": torch.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "blas": _torch_blas(),
        "numpy_blas": _numpy_blas(),
        "cpu": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    if str(device).startswith("cuda") and torch.cuda.is_available():
        env.update({
            "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name(torch.device(device)),
            "cudnn": torch.backends.cudnn.version(),
            "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        })
    return env
