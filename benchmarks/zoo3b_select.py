"""Print the validation ACC of every run under a folder (runs made with eval.test=false), one line per config:
the loss weights of the rehearsal-free arms are picked from this table (benchmarks/zoo3b.sh select)."""
import json
import sys
from pathlib import Path

rows = []
for path in sorted(Path(sys.argv[1]).rglob("result.json")):
    r = json.loads(path.read_text())
    s = r["config"]["strategy"]
    weights = {k: s[k] for k in ("l2", "ewc", "feat_kd") if k in s and k in "".join(s.get("terms", []))}
    rows.append((",".join(s.get("terms", [])), weights, r["validation_metrics"]["acc"], r["validation_metrics"]["bwt"]))
for terms, weights, acc, bwt in sorted(rows, key=lambda t: (t[0], -t[2])):
    print(f"{terms:18s} {json.dumps(weights):22s} val ACC {100 * acc:6.2f}  val BWT {100 * bwt:7.2f}")
