"""The child process of `clbench leaderboard verify`: re-run seeds from their configs, one JSON line each.

    python -m clbench.leaderboard.rerun JOBS.json OUT.jsonl

JOBS.json is a list of {"seed", "cfg", "threads", "isa"} written by verify.py (the configs are already
rebuilt with the verifier's device, data root and a temporary output folder; the parent pins the CPU
instruction set through this process's environment). Each finished seed appends one line {"seed", "inputs",
"acc", "threads", "cpu_capability", "modules"
(the code that re-ran, as its provenance recorded it), "wall_s"} (or {"seed", "error"}) to OUT.jsonl, so a time limit that
kills this process keeps the seeds that finished. Running in a child lets the parent enforce the limit.
"""
from __future__ import annotations

import json
import os
import sys
import time


def _append(path: str, line: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")
        f.flush()
        os.fsync(f.fileno())


def main(argv=None) -> int:
    import torch

    from clbench.engine import run
    from clbench.errors import UserError
    from clbench.leaderboard.submission import seed_inputs

    jobs_file, out = argv if argv is not None else sys.argv[1:]
    with open(jobs_file) as f:
        jobs = json.load(f)
    for job in jobs:
        if job.get("threads"):
            torch.set_num_threads(int(job["threads"]))   # CPU results depend on the thread count
        t0 = time.perf_counter()
        try:
            result, _ = run(job["cfg"], loggers=[], overwrite=True)
        except UserError as e:
            _append(out, {"seed": job["seed"], "error": str(e)})
            continue
        except Exception as e:   # a crash of the re-run is a failed verification of this seed, with its reason
            _append(out, {"seed": job["seed"], "error": f"{type(e).__name__}: {e}"})
            continue
        _append(out, {"seed": job["seed"], "inputs": seed_inputs(result), "acc": result["metrics"].get("acc"),
                      "threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                      "modules": result["provenance"]["modules"], "wall_s": time.perf_counter() - t0})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
