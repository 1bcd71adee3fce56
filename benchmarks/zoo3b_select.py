"""The validation ACC of every run under a folder (runs with eval.validation > 0), one line per config; with
--overrides, the best weight of each rehearsal-free arm as `strategy.<weight>=<value>` overrides (what
benchmarks/zoo3b.sh passes to the rfree stage)."""
import json
import sys
from pathlib import Path

WEIGHTS = ("l2", "ewc", "feat_kd")
rows = []
for path in sorted(Path(sys.argv[1]).rglob("result.json")):
    r = json.loads(path.read_text())
    if "validation_metrics" not in r:
        continue
    s = r["config"]["strategy"]
    weights = {k: s[k] for k in WEIGHTS if k in s.get("terms", [])}
    rows.append((",".join(s.get("terms", [])), weights, r["validation_metrics"]["acc"], r["validation_metrics"]["bwt"]))
rows.sort(key=lambda t: (t[0], -t[2]))
if "--overrides" in sys.argv:
    best = {}
    for terms, weights, acc, _ in rows:            # rows are sorted best first within each arm
        for k, v in weights.items():
            best.setdefault(k, v)
    print(" ".join(f"strategy.{k}={v}" for k, v in best.items()))
else:
    for terms, weights, acc, bwt in rows:
        print(f"{terms:18s} {json.dumps(weights):22s} val ACC {100 * acc:6.2f}  val BWT {100 * bwt:7.2f}")
