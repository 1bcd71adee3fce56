"""Command-line interface: `clbench <command> [key=value ...]`.

Each command is a small function below, registered in COMMANDS; the heavy imports happen inside the
command, so `clbench --help` and `clbench list` stay fast.
"""
from __future__ import annotations

import argparse
import sys

from clbench.config import ConfigError
from clbench.registry import UnknownNameError

USAGE_ERRORS = (ConfigError, UnknownNameError, FileNotFoundError)


def cmd_run(args) -> int:
    from clbench.engine import run
    result, path = run(args.overrides)
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
    for kind in ("scenarios", "strategies", "datasets", "models"):
        print(f"\n{kind.capitalize()}:")
        for name, desc in REGISTRIES[kind].describe().items():
            print(f"  {name:<22s} {desc}")
    return 0


def _add_run(sub):
    p = sub.add_parser("run", help="run one experiment: clbench run [key=value ...]",
                       description="Run one experiment. With no overrides: split-digits with replay.")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="e.g. benchmark=split-digits strategy=replay strategy.buffer_size=200 seed=1 out=runs")
    p.set_defaults(func=cmd_run)


def _add_list(sub):
    p = sub.add_parser("list", help="list benchmarks, scenarios, strategies, datasets and models")
    p.set_defaults(func=cmd_list)


# Each entry adds one sub-command to the parser.
COMMANDS = [_add_run, _add_list]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clbench", description="clbench: a continual-learning benchmark harness")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USAGE_ERRORS as e:
        print(f"clbench: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("clbench: interrupted; nothing half-written was kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
