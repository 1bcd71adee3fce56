"""Rebuild the shipped leaderboard entries from configurations tuned on validation.

For each (track, method) below: `clbench tune` with the track's declared tuning protocol (configs/benchmark/
<name>.yaml, `protocol.tuning`: the same validation split, metric and trial budget for every method of the track;
the test split is never evaluated while tuning), then the chosen configuration over seeds 0, 1, 2 on the test set,
a submission built from those runs (it records the tuning: `selection`), validated, saved to
leaderboard/submissions/, verified by re-running every seed (`--verify`, a record in
leaderboard/verifications/), and the board rendered. With `--defaults` the
default configuration is also run on the same seeds, for the default-vs-tuned table (benchmarks/results/
tuning_<track>.md); the board itself only shows the tuned entries.

Everything lands in runs/leaderboard/<track>/<method>/ (git-ignored) and is reused when complete, so re-running the
script resumes after an interruption and changes nothing once done. A track whose entries all succeed loses its
older submissions (configurations chosen before this protocol).

    python benchmarks/leaderboard_entries.py --tracks split-digits --defaults --verify
    python benchmarks/leaderboard_entries.py --tracks split-mnist,permuted-mnist --verify
    python benchmarks/leaderboard_entries.py --tracks permuted-mnist --methods naive --defaults

Stated deviations (shown on the board next to each entry): on permuted-mnist (10 tasks x 60000 images, batch 10)
the entries use train.epochs=1 instead of 5 to fit a shared 2-core CPU, in the tuning trials and the test runs
alike; GPM, HLOP and OWM run with model.bias=false (their projections need bias-free layers, as in their papers).
On a shared machine run it with OMP_NUM_THREADS=1: one local Ray instance with one CPU, one torch thread.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tuning  # noqa: E402  (benchmarks/tuning.py: tune_entry, default_runs, row, markdown)

from clbench.escape import slug  # noqa: E402  (run folder names)

REPO = Path(__file__).resolve().parents[1]
TRACKS = {
    "split-digits": {"methods": tuning.STRATEGIES, "extra": []},
    "split-mnist": {"methods": ["naive", "replay"], "extra": []},
    "permuted-mnist": {"methods": ["naive", "replay"], "extra": ["train.epochs=1"]},
}


def same_results(old: dict, new: dict) -> bool:
    """The same config, method source and seed results: keep the old file (and its verification records)."""
    return (old.get("config_hash") == new["config_hash"] and old.get("method", {}).get("name") == new["method"]["name"]
            and [r.get("result_digest") for r in old.get("runs", [])] == [r["result_digest"] for r in new["runs"]]
            and old.get("method", {}).get("source_hash") == new["method"]["source_hash"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tracks", default=",".join(TRACKS), help=f"comma-separated subset of: {', '.join(TRACKS)}")
    ap.add_argument("--methods", help="comma-separated subset of the methods")
    ap.add_argument("--defaults", action="store_true", help="also run the default configs (default-vs-tuned table)")
    ap.add_argument("--verify", action="store_true", help="re-run every seed of each new or unverified entry (writes a verification record)")
    ap.add_argument("--data-root", default=tuning.default_root())
    ap.add_argument("--runs", default=str(REPO / "runs" / "leaderboard"))
    ap.add_argument("--board", default=str(REPO / "leaderboard"))
    args = ap.parse_args(argv)

    import ray
    from clbench.errors import RunInterrupted
    from clbench.leaderboard import build_submission, save_submission, validate_submission
    from clbench.leaderboard.render import render
    from clbench.leaderboard.verify import load_records, verification_status, verify_submission

    subs_dir = Path(args.board) / "submissions"
    methods = set(args.methods.split(",")) if args.methods else None
    mnist = Path(args.data_root, "MNIST", "raw").is_dir()
    tuning.start_local_ray()
    failed: list[str] = []
    for bench in args.tracks.split(","):
        track = TRACKS[bench]
        if "mnist" in bench and not mnist:
            print(f"skip {bench}: no MNIST under {args.data_root}")
            continue
        written, rows, track_failed, summary = set(), [], [], []
        for strategy in track["methods"]:
            if methods and strategy not in methods:
                continue
            print(f"== {bench} / {strategy}", flush=True)
            t0 = time.time()
            out = Path(args.runs) / bench / slug(strategy)
            try:
                res, tuned = tuning.tune_entry(bench, strategy, track["extra"], out, [],
                                               args.data_root)
                if args.defaults:
                    default = tuning.default_runs(bench, strategy, track["extra"], out / "default", args.data_root)
                    rows.append(tuning.row(strategy, res, tuned, default))
                # this tune's test runs only (the folder may also hold runs of an older config or code)
                sub = build_submission([out / "test" / r.run_id for r in res.test.runs], name=strategy)
                issues = validate_submission(sub)
                if issues:
                    raise RuntimeError("built submission does not validate: " + "; ".join(map(str, issues)))
                path = subs_dir / f"{sub['id']}.json"
                if path.exists() and same_results(json.loads(path.read_text()), sub):
                    print(f"   unchanged: {path.name}")
                else:
                    path = save_submission(sub, subs_dir, overwrite=True)
                    print(f"   wrote {path.name}")
                for stale in subs_dir.glob(f"{bench}__*.json"):   # this method's older entry, superseded
                    if stale != path and json.loads(stale.read_text())["method"]["name"] == strategy:
                        stale.unlink()
                        (Path(args.board) / "heatmaps" / f"{stale.stem}.png").unlink(missing_ok=True)
                        print(f"   removed superseded {stale.name}")
                written.add(path.name)
                current = json.loads(path.read_text())
                records_dir = Path(args.board) / "verifications"
                verified = verification_status(current, load_records(records_dir)[0])["status"]
                if args.verify and verified != "verified":
                    rec = verify_submission(path, data_root_dir=args.data_root, record_dir=records_dir)
                    print(f"   verify every seed: {'ok' if rec['passed'] else 'FAILED'} "
                          f"({'; '.join(e['reason'] for e in rec['seeds'])}); record {rec['file']}")
                    verified = verification_status(current, load_records(records_dir)[0])["status"]
                acc = current["summary"]["acc"]
                summary.append({"benchmark": bench, "method": strategy, "overrides": track["extra"],
                                "best": res.record["best"], "val_acc": res.record["best_value"],
                                "acc_mean": acc["mean"], "acc_std": acc["std"], "n": acc["n"],
                                "verified": verified, "file": path.name,
                                "tune_wall_s": res.record["wall_s"],
                                "mean_seconds_per_seed": current["timing"]["mean_per_seed_s"]})
                print(f"   test ACC {100 * acc['mean']:.2f} ± {100 * acc['std']:.2f} % (n={acc['n']}) "
                      f"[{time.time() - t0:.0f}s]", flush=True)
            except RunInterrupted:   # Ctrl-C / SIGTERM: stop here (the same command resumes)
                raise
            except Exception as e:   # one broken method must not stop the others; reported at the end
                traceback.print_exc()
                track_failed.append(f"{bench}/{strategy}: {type(e).__name__}: {e}")
        if not methods and not track_failed:   # the whole track rebuilt: drop its older entries
            for stale in subs_dir.glob(f"{bench}__*.json"):
                if stale.name not in written:
                    stale.unlink()
                    (Path(args.board) / "heatmaps" / f"{stale.stem}.png").unlink(missing_ok=True)
                    print(f"removed superseded {stale.name}")
        results = REPO / "benchmarks" / "results"
        tag = bench if not methods else f"{bench}_{'_'.join(sorted(methods))}"
        (results / f"leaderboard_entries_{tag}.json").write_text(json.dumps(
            {"seeds": list(tuning.SEEDS), "entries": summary, "failed": track_failed}, indent=2) + "\n")
        if rows:
            tuning.write_table(tag, bench, track["extra"], rows, track_failed)
        failed += track_failed
    ray.shutdown()
    out = render(subs_dir, args.board)
    print(f"rendered {out['markdown']} and {out['html']} ({len(out['entries'])} entries)")
    for f in failed:
        print(f"FAILED {f}", file=sys.stderr)
    return 1 if failed or out["rejected"] else 0


if __name__ == "__main__":
    sys.exit(main())
