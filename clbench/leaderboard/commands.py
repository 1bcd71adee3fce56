"""`clbench leaderboard {submit,validate,verify,render}`: argument parsing and printing only."""
from __future__ import annotations

import sys
from pathlib import Path

DEFAULT_DIR = "leaderboard"


def add_parser(sub) -> None:
    p = sub.add_parser("leaderboard", help="build, validate, verify and render leaderboard submissions",
                       description="Leaderboard submissions (docs/leaderboard.md).")
    lsub = p.add_subparsers(dest="lb_command", metavar="ACTION")
    lsub.required = True

    s = lsub.add_parser("submit", help="build a submission from run or sweep folders (>= 3 seeds, one config)")
    s.add_argument("paths", nargs="+", metavar="RUN_OR_SWEEP_DIR")
    s.add_argument("--name", help="display name of the method (default: the strategy name)")
    s.add_argument("--select", metavar="HASH_PREFIX",
                   help="when the folders hold several configs, the seed-free config hash to submit")
    s.add_argument("--identity", metavar="ID",
                   help="when the runs come from several code/data identities, the one to submit (a prefix of "
                        "the code/data id `clbench report` shows, e.g. 1a2b3c4d)")
    s.add_argument("--all", action="store_true",
                   help="one submission per configuration found (e.g. every strategy of a sweep)")
    s.add_argument("--notes", default="", help="free text stored with the submission")
    s.add_argument("--out", default=f"{DEFAULT_DIR}/submissions", help="submissions folder")
    s.add_argument("--force", action="store_true", help="replace an existing submission with the same id")

    v = lsub.add_parser("validate", help="check submissions (schema, shapes, seeds, hashes, recomputed metrics)")
    v.add_argument("files", nargs="*", help=f"submission files (default: {DEFAULT_DIR}/submissions/*.json)")

    r = lsub.add_parser("verify", help="re-run one seed of a submission and compare R; records the result")
    r.add_argument("file")
    r.add_argument("--seed", type=int, help="which seed to re-run (default: the first)")
    r.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    r.add_argument("--atol", type=float, help="absolute tolerance on R (default: 1e-9 on the same device class "
                                              "and torch version, else 0.02)")
    r.add_argument("--data-root", help="data root for the re-run (default: $CLBENCH_DATA, else the submitted one)")
    r.add_argument("--no-write", action="store_true", help="do not append the record to the submission file")

    d = lsub.add_parser("render", help=f"write {DEFAULT_DIR}/LEADERBOARD.md, index.html and heatmaps")
    d.add_argument("--submissions", default=f"{DEFAULT_DIR}/submissions")
    d.add_argument("--out", default=DEFAULT_DIR)
    d.add_argument("--tuned-only", action="store_true",
                   help="only entries whose config was tuned on validation (clbench tune; docs/tuning.md)")


def run(args) -> int:
    return {"submit": _submit, "validate": _validate, "verify": _verify, "render": _render}[args.lb_command](args)


def _submit(args) -> int:
    from clbench.leaderboard.submission import config_groups
    if args.all:
        if args.name or args.select:
            print("clbench: error: --all submits every configuration under its strategy name; "
                  "it cannot be combined with --name or --select", file=sys.stderr)
            return 2
        return max(_submit_one(args, h) for h in config_groups(args.paths))
    return _submit_one(args, args.select)


def _submit_one(args, select) -> int:
    from clbench.leaderboard.submission import build_submission, save_submission
    from clbench.leaderboard.validate import validate_submission
    sub = build_submission(args.paths, name=args.name, select=select, notes=args.notes, ident=args.identity)
    issues = validate_submission(sub)
    if issues:  # a freshly built submission must validate; anything else is a bug worth seeing
        print("clbench: error: the built submission does not validate:\n" +
              "\n".join(f"  {i}" for i in issues), file=sys.stderr)
        return 1
    try:
        path = save_submission(sub, args.out, overwrite=args.force)
    except FileExistsError as e:
        print(f"clbench: error: {e}", file=sys.stderr)
        return 2
    acc = sub["summary"].get("acc", {})
    print(f"{sub['benchmark']['name']} v{sub['benchmark']['version']} / {sub['method']['name']}: "
          f"ACC {100 * acc['mean']:.2f} ± {100 * acc['std']:.2f} % over seeds {sub['seeds']} "
          f"(config {sub['config_hash'][:12]})")
    print(path)
    return 0


def _validate(args) -> int:
    from clbench.leaderboard.validate import validate_file
    files = args.files or sorted(str(p) for p in Path(DEFAULT_DIR, "submissions").glob("*.json"))
    if not files:
        print(f"clbench: error: no submissions given and none in {DEFAULT_DIR}/submissions/", file=sys.stderr)
        return 2
    bad = 0
    for f in files:
        issues = validate_file(f)
        if issues:
            bad += 1
            print(f"INVALID {f}")
            for i in issues:
                print(f"  {i}")
        else:
            print(f"ok      {f}")
    print(f"{len(files) - bad} valid, {bad} invalid")
    return 1 if bad else 0


def _verify(args) -> int:
    from clbench.leaderboard.verify import verify_submission
    rec = verify_submission(args.file, seed=args.seed, device=args.device, atol=args.atol,
                            data_root=args.data_root, write=not args.no_write)
    word = "VERIFIED" if rec["verified"] else "NOT VERIFIED"
    print(f"{word}: seed {rec['seed']} re-run on {rec['device']} in {rec['wall_s']:.1f}s; {rec['reason']} "
          f"[{rec['tolerance_rule']}]")
    if not rec["source_match"]:
        print(f"note: the installed source differs from the submitted one in: {', '.join(rec['source_mismatch'])}")
    if not args.no_write:
        print(f"record appended to {args.file}")
    return 0 if rec["verified"] else 1


def _render(args) -> int:
    from clbench.leaderboard.render import render
    out = render(args.submissions, args.out, tuned_only=args.tuned_only)
    print(f"{len(out['entries'])} entries -> {out['markdown']}, {out['html']}, {len(out['heatmaps'])} heatmaps")
    for path, issues in out["rejected"].items():
        print(f"rejected {path}:", file=sys.stderr)
        for i in issues:
            print(f"  {i}", file=sys.stderr)
    return 1 if out["rejected"] else 0
