"""Command-line interface: `clbench <command> [key=value ...]`.

Each command is a small function below, registered in COMMANDS; the heavy imports happen inside the
command, so `clbench --help` and `clbench list` stay fast.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback

from clbench.errors import RunInterrupted, UserError

# Errors the user can act on: one line, exit status 2. A disk that is full or read-only counts (OSError).
USAGE_ERRORS = (UserError, FileNotFoundError, OSError)


def cmd_run(args) -> int:
    from clbench.config import compose
    from clbench.tune import split_tuned
    overrides, tuning = split_tuned(args.overrides)     # tuned=best.yaml: a configuration chosen by clbench tune
    cfg = compose(overrides, tuning=tuning)
    if args.cfg:   # print the resolved config and exit (Hydra's --cfg job)
        import yaml
        print(yaml.safe_dump(cfg, sort_keys=False, width=110), end="")
        return 0
    from clbench.engine import run
    result, path = run(cfg)
    if result.get("wandb_dir"):
        mode = result["config"]["wandb"]["mode"]
        print(f"W&B {mode} run: {path / result['wandb_dir']}" +
              (" (upload later with `clbench sync`)" if mode == "offline" else ""))
    print(path)  # the last line is the run folder (scripts rely on it)
    return 0


def cmd_list(args) -> int:
    from clbench.config import benchmark_names, load_benchmark
    from clbench.registry import REGISTRIES
    print("Benchmarks (configs/benchmark/):")
    for name in benchmark_names():
        b = load_benchmark(name)
        print(f"  {name:<22s} v{b.get('version', 1)}  {b.get('description', '')}")
    for kind in ("scenarios", "strategies", "callbacks", "datasets", "models"):
        print(f"\n{kind.capitalize()}:")
        for name, desc in REGISTRIES[kind].describe().items():
            print(f"  {name:<22s} {desc}")
    return 0


def _add_run(sub):
    p = sub.add_parser("run", help="run one experiment: clbench run [key=value ...]",
                       description="Run one experiment. With no overrides: split-digits with replay. Every key is "
                                   "declared: `clbench show strategy NAME` lists a strategy's hyper-parameters and "
                                   "presets (also: show benchmark|scenario|model|dataset|callback NAME); add --cfg "
                                   "to print the resolved config without running.")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="e.g. benchmark=split-digits strategy=replay strategy.buffer_size=200 seed=1 out=runs; "
                        "tuned=PATH/best.yaml runs the configuration clbench tune chose (and records how)")
    p.add_argument("--cfg", action="store_true", help="print the resolved config (YAML) and exit")
    p.set_defaults(func=cmd_run)


def cmd_show(args) -> int:
    from clbench.show import show
    print(show(args.kind, args.name))
    return 0


def _add_show(sub):
    from clbench.show import KINDS
    p = sub.add_parser("show", help="what a strategy, callback, benchmark, scenario, model or dataset declares",
                       description="Show a plugin's declared hyper-parameters/options (type, default, range, search "
                                   "domain, help), presets, supported settings and paper, or a benchmark's protocol.")
    p.add_argument("kind", choices=KINDS)
    p.add_argument("name")
    p.set_defaults(func=cmd_show)


def _add_list(sub):
    p = sub.add_parser("list", help="list benchmarks, scenarios, strategies, datasets and models")
    p.set_defaults(func=cmd_list)


def cmd_sweep(args) -> int:
    from clbench.sweep import format_report, parse_sweep_args, run_sweep
    res = run_sweep(parse_sweep_args(args.overrides), argv=["sweep", *args.overrides])
    print(format_report(res))
    if res.stopped:  # the table and counts above say what is done; stderr says why it stopped
        print(f"clbench: error: sweep stopped early: {res.stopped}", file=sys.stderr)
    return 1 if res.failed or res.stopped else 0


def _add_sweep(sub):
    p = sub.add_parser("sweep", help="run the cartesian product of comma-separated overrides (resumable)",
                       description="Run many experiments: key=a,b,c values are swept (cartesian product); "
                                   "complete runs of the current code and data are skipped on a re-run. Sweep keys: "
                                   "executor=local|ray|submitit workers=N name=NAME sweep=FILE "
                                   "reuse=same|any seed_parallel=true|false ray.num_cpus=1 ray.num_gpus=0.25 "
                                   "submitit.*. See docs/sweeps.md.")
    p.add_argument("overrides", nargs="*", metavar="key=value[,value...]",
                   help="e.g. benchmark=split-digits strategy=naive,replay seed=0,1,2 out=sweeps/digits workers=2")
    p.set_defaults(func=cmd_sweep)


def cmd_tune(args) -> int:
    from clbench.tune import format_summary, parse_tune_args, tune
    res = tune(parse_tune_args(args.overrides))
    print(format_summary(res))
    return 1 if res.test is not None and res.test.failed else 0


def _add_tune(sub):
    p = sub.add_parser("tune", help="choose hyper-parameters on a validation split (Ray Tune + Optuna + ASHA), "
                                    "then run the chosen config over test seeds",
                       description="Search a strategy's declared hyper-parameter space on a validation split held "
                                   "out of the training data; the test split is never evaluated (eval.test=false in "
                                   "every trial). Tune keys: budget=N concurrency=N metric=NAME "
                                   "protocol=full|first-k first_k=K scheduler=asha|fifo grace=N reduction=X "
                                   "space=NAME|FILE seeds=0,1,2 out=DIR resume=true|false; run overrides as in "
                                   "`clbench run` (eval.validation=F sets the split, threads=N each trial's torch "
                                   "threads); domains as KEY=loguniform(a,b) uniform(a,b) randint(a,b) "
                                   "choice(a,b,...). Re-running the same command resumes. See docs/tuning.md.")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="e.g. benchmark=split-digits strategy=ewc budget=20 seeds=0,1,2 out=tunes/ewc")
    p.set_defaults(func=cmd_tune)


def cmd_leaderboard(args) -> int:
    from clbench.leaderboard.commands import run
    return run(args)


def _add_leaderboard(sub):
    from clbench.leaderboard.commands import add_parser
    add_parser(sub)
    sub.choices["leaderboard"].set_defaults(func=cmd_leaderboard)


def cmd_report(args) -> int:
    from clbench.report import report
    metrics = [m.strip() for m in args.metrics.split(",")] if args.metrics else None
    report(args.path, out_dir=args.out, figures=not args.no_figures, metrics=metrics, pool=args.pool,
           memory=args.memory_plot)
    return 0


def _add_report(sub):
    p = sub.add_parser("report", help="mean ± std over seeds of every metric, as a table and PNG figures",
                       description="Aggregate the runs under PATH (a run folder or a folder of runs, searched "
                                   "recursively) by benchmark / strategy / config hash without seeds / code and "
                                   "data identity; print the table and write report.csv, report.md and figures. "
                                   "See docs/metrics.md and docs/provenance.md.")
    p.add_argument("path", metavar="PATH", help="a run folder, or a folder holding run folders")
    p.add_argument("--out", default=None, help="where to write the report (default: PATH/report)")
    p.add_argument("--metrics", default=None, help="comma-separated metrics for the table and chart (default: main ones)")
    p.add_argument("--no-figures", action="store_true", help="tables only")
    p.add_argument("--pool", action="store_true",
                   help="pool runs of one configuration across code/data identities (warns for each mixed group)")
    p.add_argument("--memory-plot", action="store_true",
                   help="also compare at equal total memory: memory.md and accuracy against total memory "
                        "(memory_<benchmark>.png); see docs/memory.md")
    p.set_defaults(func=cmd_report)


def cmd_sync(args) -> int:
    from clbench.sync import SyncError, sync
    try:
        return sync(args.path, dry_run=args.dry_run, project=args.project, entity=args.entity,
                    include_synced=args.include_synced)
    except SyncError as e:
        print(f"clbench: error: {e}", file=sys.stderr)
        return 1


def _add_sync(sub):
    p = sub.add_parser("sync", help="upload the offline W&B runs kept in run folders (wraps `wandb sync`)",
                       description="Find offline W&B runs (<run folder>/wandb/offline-run-*) under PATH and upload "
                                   "them with `wandb sync`. Needs network access to the W&B server.")
    p.add_argument("path", metavar="PATH", nargs="?", default="runs", help="a run folder or folder of runs (default: runs)")
    p.add_argument("--dry-run", action="store_true", help="list the runs and print the command, upload nothing")
    p.add_argument("--project", default=None, help="upload into this W&B project")
    p.add_argument("--entity", default=None, help="upload into this W&B entity")
    p.add_argument("--include-synced", action="store_true", help="also re-upload runs already synced")
    p.set_defaults(func=cmd_sync)


# Each entry adds one sub-command to the parser, in the order `clbench --help` lists them.
COMMANDS = [_add_run, _add_show, _add_list, _add_sweep, _add_tune, _add_report, _add_sync, _add_leaderboard]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clbench", description="clbench: a continual-learning benchmark harness")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (also: CLBENCH_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in COMMANDS:
        add(sub)
    return parser


BUG_REPORT = ("this is a bug in clbench (or in a plugin it ran): please report it with the command, "
              "and the traceback that `clbench --debug ...` (or CLBENCH_DEBUG=1) prints")


def main(argv=None) -> int:
    """Run one command. Errors end in one line on stderr: `clbench: error: ...` and exit status 2 for
    anything the user can fix (UserError, a missing file, a disk that is full or read-only); an
    unexpected error says it is a bug, exit status 1. --debug or CLBENCH_DEBUG=1 adds the traceback."""
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("CLBENCH_DEBUG", "").strip().lower() not in ("", "0", "false", "no")
    try:
        return args.func(args)
    except RunInterrupted as e:      # SIGTERM/SIGINT: the checkpoint is saved, the same command resumes
        print(f"clbench: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("clbench: interrupted; nothing half-written was kept (re-run the same command to resume a sweep)",
              file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            traceback.print_exc()
        print(f"clbench: {_one_line(e)}", file=sys.stderr)
        return 2 if isinstance(e, USAGE_ERRORS) else 1


def _one_line(e: Exception) -> str:
    """The line printed for an error; a message listing several problems keeps them all, joined by "; "."""
    user = isinstance(e, USAGE_ERRORS)
    if isinstance(e, OSError) and not isinstance(e, UserError) and e.filename:
        text = f"{e.strerror or type(e).__name__}: {e.filename}"   # from the OS: say which file
    else:
        text = str(e) if user else f"internal error: {type(e).__name__}: {e}"
    text = "; ".join(" ".join(ln.split()) for ln in text.splitlines() if ln.strip()) or type(e).__name__
    return f"error: {text}" if user else f"{text} -- {BUG_REPORT}"


if __name__ == "__main__":
    sys.exit(main())
