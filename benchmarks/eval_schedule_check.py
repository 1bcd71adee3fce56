"""Would eval.schedule=seen_next have changed any stored metric? Every full accuracy matrix found under the given
paths (result.json files, leaderboard submissions, benchmark result files) is masked the way seen_next scores
it (row i: the tasks learned by then and the next one; whole initial and final rows), and every metric is
recomputed from the masked matrix and compared with the full one.

    python benchmarks/eval_schedule_check.py                       # benchmarks/results and leaderboard/submissions
    python benchmarks/eval_schedule_check.py runs/ sweeps/         # your own results

Only the two max-based forgettings can differ (their max over earlier rows loses the rows long before a task's
experience); the script counts the matrices where they do and lists them. Writes nothing.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from clbench import metrics as M

HERE = Path(__file__).resolve().parent


def matrices(obj, where: str):
    """(R, learned_at, where) for every accuracy matrix in a JSON document (result.json, submission, benchmark)."""
    if isinstance(obj, dict):
        R = obj.get("accuracy_matrix")
        if isinstance(R, list) and R and all(isinstance(r, list) and r for r in R):
            L = (obj.get("stream") or {}).get("learned_at") or obj.get("learned_at")
            yield R, L, where
        for k, v in obj.items():
            yield from matrices(v, f"{where}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from matrices(v, f"{where}[{i}]")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="*", default=[str(HERE / "results"), str(HERE.parent / "leaderboard" / "submissions")])
    args = ap.parse_args(argv)
    files = [f for p in map(Path, args.paths) for f in ([p] if p.is_file() else sorted(p.rglob("*.json")))]
    seen, checked, differ = set(), 0, []
    for f in files:
        try:
            doc = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        for R, L, where in matrices(doc, str(f)):
            T = len(R[0])
            L = list(L) if L and len(L) == T else list(range(T))
            key = json.dumps([R, L])
            if key in seen or len(R) < 2 or any(len(r) != T for r in R) or \
                    any(v is None for r in R for v in r) or max(L) >= len(R):
                continue
            seen.add(key)
            checked += 1
            masked = [[v if M.scored_entry(i, j, L, len(R)) else None for j, v in enumerate(row)]
                      for i, row in enumerate(R)]
            b = [0.0] * T
            full, cheap = M.compute_all(R, b, L), M.compute_all(masked, b, L)
            changed = {k: (full[k], cheap[k]) for k in full if full[k] != cheap[k]}
            if changed:
                differ.append((where, changed))
    print(f"{checked} distinct full accuracy matrices in {len(files)} files; a metric changes under seen_next in "
          f"{len(differ)}")
    for where, changed in differ:
        print(f"  {where}: " + ", ".join(f"{k} {a:.4f} -> {b:.4f}" for k, (a, b) in changed.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
