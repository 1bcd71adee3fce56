"""Default vs tuned, per strategy: `clbench tune` on a track's validation split, then the chosen config and the
default config over the same test seeds.

For each strategy: tune with the track's declared protocol (configs/benchmark/<name>.yaml, `protocol.tuning`:
validation fraction, protocol, metric, budget; the same for every strategy), run the chosen config on seeds 0, 1, 2
(`seeds=` of clbench tune: the full stream, all training data, the test split), and run the default config (what
`clbench run` gives without tuning) on the same seeds. Everything lands in --out (resumable: re-running skips
what is complete) and the table in benchmarks/results/tuning_<name>.{json,md}.

    python benchmarks/tuning.py --benchmark split-digits
    python benchmarks/tuning.py --benchmark permuted-mnist --name pmnist-reduced \\
        --extra dataset.train_per_class=100 dataset.test_per_class=100 --tune budget=12 protocol=full grace=5

One local Ray instance (1 CPU: one trial at a time, one torch thread) serves every tune of the invocation; run it
with OMP_NUM_THREADS=1 on a shared machine. Wall times are measured here, on this machine, with that instance.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from clbench.escape import slug
from clbench.metrics import mean_std, pm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from speed import default_root  # noqa: E402,F401  ($CLBENCH_DATA, else <repo>/../shared/datasets, else ./data)
SEEDS = (0, 1, 2)
STRATEGIES = ["naive", "replay", "joint", "cumulative", "agem", "der", "derpp", "ewc", "si", "lwf", "gdumb",
              "clser", "replay+refresh", "gpm", "hlop", "owm"]
# Gradient-projection methods need bias-free layers (their papers' networks have none).
BIAS_FREE = ("gpm", "hlop", "owm")


def entry_overrides(strategy: str) -> list[str]:
    """The run overrides of a board entry: `replay+refresh` is replay with the refresh callback."""
    if strategy == "replay+refresh":
        return ["strategy=replay", "callbacks=[refresh]"]
    return [f"strategy={strategy}", *(["model.bias=false"] if strategy in BIAS_FREE else [])]


def space_settings(strategy: str) -> list[str]:
    """A shipped search-space file for the strategy (configs/tune/<name>.yaml), if there is one."""
    name = strategy.split("+")[0]
    return [f"space={name}"] if (REPO / "configs" / "tune" / f"{name}.yaml").is_file() else []


def tune_entry(bench: str, strategy: str, extra: list[str], out: Path, settings: list[str], data_root: str):
    """Tune one strategy and run the chosen config on the test seeds; returns (TuneResult, test results)."""
    from clbench.results import load_result
    from clbench.tune import parse_tune_args, tune
    args = [f"benchmark={bench}", *entry_overrides(strategy), *extra, f"data.root={data_root}",
            f"seeds={','.join(map(str, SEEDS))}", "wandb.mode=disabled", f"out={out}", *space_settings(strategy),
            *settings]
    res = tune(parse_tune_args(args))
    return res, [load_result(out / "test" / r.run_id) for r in res.test.runs]


def default_runs(bench: str, strategy: str, extra: list[str], out: Path, data_root: str) -> list[dict]:
    """The default configuration (no tuning) on the same test seeds."""
    from clbench.results import load_result
    from clbench.sweep import parse_sweep_args, run_sweep
    args = [f"benchmark={bench}", *entry_overrides(strategy), *extra, f"data.root={data_root}",
            f"seed={','.join(map(str, SEEDS))}", "wandb.mode=disabled", f"out={out}"]
    res = run_sweep(parse_sweep_args(args), argv=args)
    if res.failed:
        raise RuntimeError(f"default runs failed: {res.failed[0]['error']}")
    return [load_result(out / r.run_id) for r in res.runs]


def row(strategy: str, res, tuned: list[dict], default: list[dict]) -> dict:
    rec = res.record
    return {
        "strategy": strategy, "space": rec["space"], "budget": rec["budget"], "trials": rec["trials"],
        "completed": rec["completed"], "stopped_early": rec["stopped_early"], "failed": rec["failed"],
        "protocol": rec["protocol"], "first_k": rec["first_k"], "validation": rec["validation"],
        "default": rec["default"], "best": rec["best"],
        "val_default": rec["default_value"], "val_tuned": rec["best_value"],
        "test_default": mean_std([r["metrics"]["acc"] for r in default]),
        "test_tuned": mean_std([r["metrics"]["acc"] for r in tuned]),
        "seeds": list(SEEDS), "tune_wall_s": rec["wall_s"],
        "test_seconds_per_seed": mean_std([r["timing"]["total_s"] for r in tuned])["mean"],
    }


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


def markdown(name: str, bench: str, extra: list[str], rows: list[dict], failed: list[str]) -> str:
    lines = [f"# Default vs tuned: {name}", "",
             f"Benchmark `{bench}`" + (f" with `{' '.join(extra)}`" if extra else "") + ". Tuned with `clbench tune` "
             "on a validation split held out of the training data (the test split is never evaluated while tuning); "
             "validation ACC of the default and of the chosen config are the tuning's own trials. Test ACC: mean ± "
             f"sample std over seeds {', '.join(map(str, SEEDS))} (full stream, all training data). Produced by "
             "`benchmarks/tuning.py`; wall times on this machine (2 shared cores, one torch thread, local Ray "
             "instance).", "",
             "| Strategy | Space | Trials (done/stopped/failed) | Val ACC default | Val ACC tuned | Test ACC default "
             "| Test ACC tuned | Chosen | Tune wall (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        chosen = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in (r["best"] or {}).items())
        lines.append(f"| {r['strategy']} | {', '.join(r['space'])} | {r['trials']} ({r['completed']}/"
                     f"{r['stopped_early']}/{r['failed']}) | {_pct(r['val_default'])} | {_pct(r['val_tuned'])} | "
                     f"{pm(r['test_default'], '–')} | {pm(r['test_tuned'], '–')} | {chosen} | {r['tune_wall_s']:.0f} |")
    if rows:
        r = rows[0]
        lines += ["", f"Protocol: {r['protocol']}" + (f" (first {r['first_k']} experiences)" if r["first_k"] else "")
                  + f", validation fraction {r['validation']}, budget {r['budget']} trials per strategy."]
    lines += [f"- FAILED {f}" for f in failed]
    return "\n".join(lines) + "\n"


def start_local_ray() -> None:
    """One torch thread and one local Ray instance with 1 CPU (one trial at a time) for every tune of the
    invocation."""
    import ray
    import torch
    torch.set_num_threads(1)
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level="WARNING")


def write_table(name: str, bench: str, extra: list[str], rows: list[dict], failed: list[str]) -> None:
    """The default-vs-tuned table: benchmarks/results/tuning_<name>.{json,md}."""
    results = REPO / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / f"tuning_{name}.json").write_text(json.dumps(
        {"benchmark": bench, "extra": extra, "seeds": list(SEEDS), "rows": rows, "failed": failed}, indent=2) + "\n")
    (results / f"tuning_{name}.md").write_text(markdown(name, bench, extra, rows, failed))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--benchmark", default="split-digits")
    ap.add_argument("--name", help="name of the results files (default: the benchmark)")
    ap.add_argument("--strategies", help="comma-separated subset (default: all)")
    ap.add_argument("--extra", nargs="*", default=[], help="run overrides of a stated reduced protocol")
    ap.add_argument("--tune", nargs="*", default=[], metavar="KEY=VALUE",
                    help="clbench tune settings for every strategy (default: the track's declared protocol), "
                         "e.g. budget=12 protocol=full grace=5")
    ap.add_argument("--data-root", default=default_root())
    ap.add_argument("--out", help="folder of the tunes and runs (default: runs/tuning/<name>)")
    args = ap.parse_args(argv)
    name = args.name or args.benchmark
    out = Path(args.out or REPO / "runs" / "tuning" / name)
    settings = list(args.tune)
    strategies = args.strategies.split(",") if args.strategies else STRATEGIES

    import ray

    from clbench.errors import RunInterrupted
    start_local_ray()
    rows, failed = [], []
    for strategy in strategies:
        print(f"== {args.benchmark} / {strategy}", flush=True)
        t0 = time.time()
        try:
            res, tuned = tune_entry(args.benchmark, strategy, args.extra, out / slug(strategy), settings,
                                    args.data_root)
            default = default_runs(args.benchmark, strategy, args.extra, out / slug(strategy) / "default",
                                   args.data_root)
            rows.append(row(strategy, res, tuned, default))
            r = rows[-1]
            print(f"   val {_pct(r['val_default'])} -> {_pct(r['val_tuned'])}; test {pm(r['test_default'], '–')} -> "
                  f"{pm(r['test_tuned'], '–')} [{time.time() - t0:.0f}s]", flush=True)
        except RunInterrupted:   # Ctrl-C / SIGTERM: stop here (the same command resumes)
            raise
        except Exception as e:   # one failing strategy must not stop the others; reported at the end
            import traceback
            traceback.print_exc()
            failed.append(f"{strategy}: {type(e).__name__}: {e}")
        write_table(name, args.benchmark, args.extra, rows, failed)
    ray.shutdown()
    for f in failed:
        print(f"FAILED {f}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
