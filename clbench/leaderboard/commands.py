"""`clbench leaderboard {submit,validate,verify,migrate,render}`: argument parsing and printing only."""
from __future__ import annotations

import sys
from pathlib import Path

from clbench.escape import one_line

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

    v = lsub.add_parser("validate", help="check submissions (schema, track protocol, seeds, hashes, metrics)")
    v.add_argument("files", nargs="*", help=f"submission files (default: {DEFAULT_DIR}/submissions/*.json)")

    r = lsub.add_parser("verify", help="re-run every seed of a submission and compare R; --record writes the record",
                        description="Re-run the seeds of a submission from its config and compare what they measure "
                                    "with the submitted R. The verifier chooses the seeds, the tolerance, the data "
                                    "root and the time limit; nothing in the file does (docs/leaderboard.md).")
    r.add_argument("file")
    r.add_argument("--seeds", help="comma-separated subset of the submission's seeds to re-run (default: all)")
    r.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    r.add_argument("--atol", type=float, help="loosen the tolerance on |dR| (default: exact, 1e-9)")
    r.add_argument("--data-root", help="the verifier's data root (default: $CLBENCH_DATA, else ./data); never "
                                       "the submission's, and nothing is downloaded")
    r.add_argument("--timeout", type=float, default=3600.0,
                   help="wall-clock limit in seconds for all re-runs together (default: 3600)")
    r.add_argument("--record", nargs="?", const=f"{DEFAULT_DIR}/verifications", metavar="DIR",
                   help=f"write the verification record into DIR (default DIR: {DEFAULT_DIR}/verifications)")
    r.add_argument("--verifier", help="who verifies, stored in the record (default: git user.name, else $USER)")
    r.add_argument("--cpu-isa", choices=["avx2", "avx512"],
                   help="pin torch/MKL/oneDNN CPU kernels to this instruction set (default: what each run recorded in "
                        "env.cpu_capability, else not pinned)")

    m = lsub.add_parser("migrate", help="convert older submission files to the current format, in place")
    m.add_argument("files", nargs="+")

    d = lsub.add_parser("render", help=f"write {DEFAULT_DIR}/LEADERBOARD.md, index.html and heatmaps")
    d.add_argument("--submissions", default=f"{DEFAULT_DIR}/submissions")
    d.add_argument("--verifications", help="verification records (default: <submissions>/../verifications)")
    d.add_argument("--out", default=DEFAULT_DIR)
    d.add_argument("--tuned-only", action="store_true",
                   help="only entries whose config was tuned on validation (clbench tune; docs/tuning.md)")


def run(args) -> int:
    return {"submit": _submit, "validate": _validate, "verify": _verify, "migrate": _migrate,
            "render": _render}[args.lb_command](args)


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
    path = save_submission(sub, args.out, overwrite=args.force)   # SubmissionError: one line, exit 2
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
            print(f"INVALID {one_line(f)}")   # a file name is free text too (no terminal escapes)
            for i in issues:
                print(f"  {i}")
        else:
            print(f"ok      {one_line(f)}")
    print(f"{len(files) - bad} valid, {bad} invalid")
    return 1 if bad else 0


def _verify(args) -> int:
    from clbench.errors import bad_value
    from clbench.leaderboard.verify import verify_submission
    seeds = None
    if args.seeds is not None:
        try:
            seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
        except ValueError:
            raise bad_value("--seeds", f"expected comma-separated integers, got {args.seeds!r}") from None
    rec = verify_submission(args.file, seeds=seeds, device=args.device, atol=args.atol, data_root_dir=args.data_root,
                            timeout=args.timeout, record_dir=args.record, verifier=args.verifier,
                            cpu_isa=args.cpu_isa)
    for e in rec["seeds"]:
        print(f"seed {e['seed']}: {'ok  ' if e['passed'] else 'FAIL'} {e['reason']}")
    done = [e["seed"] for e in rec["seeds"]]
    word = ("VERIFIED" if rec["all_seeds"] else "PARTLY VERIFIED") if rec["passed"] else "NOT VERIFIED"
    print(f"{word}: seeds {', '.join(map(str, done))} of {rec['submission_id']} re-run on "
          f"{rec['environment']['device']} by {rec['verifier']} in {rec['wall_s']:.1f}s "
          f"[tolerance: {rec['tolerance_rule']}]")
    if rec["source_mismatch"]:
        diff = rec["source_mismatch"]
        print(f"note: the code that re-ran differs from the submitted code in {len(diff)} module(s): "
              f"{', '.join(diff[:10])}{', ...' if len(diff) > 10 else ''}")
    if "file" in rec:
        print(f"record: {rec['file']}")
    return 0 if rec["passed"] else 1


def _migrate(args) -> int:
    from clbench.leaderboard.submission import migrate_file
    for f in args.files:
        print(migrate_file(f))
    return 0


def _render(args) -> int:
    from clbench.leaderboard.render import render
    out = render(args.submissions, args.out, args.verifications, tuned_only=args.tuned_only)
    print(f"{len(out['entries'])} entries -> {out['markdown']}, {out['html']}, {len(out['heatmaps'])} heatmaps")
    for path, issues in out["rejected"].items():
        print(f"not ranked {one_line(path)}:", file=sys.stderr)
        for i in issues:
            print(f"  {i}", file=sys.stderr)
    return 1 if out["rejected"] else 0
