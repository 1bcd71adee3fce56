"""How a submission's configuration was chosen, from its runs' `config_source`: tuned on validation by
`clbench tune` (with the tuning record: protocol, metric, space, budget, trials, seed, best validation value),
a shipped preset, the declared defaults, or hyper-parameters set by hand. The board shows it per entry and can
filter to the entries tuned on validation.

A submission is untrusted: `check` validates the record (shape, bounded size, and that a tuned record's chosen
values are the config's values); nothing here is executed, and every output escapes it.
"""
from __future__ import annotations

import json
from typing import Optional

from clbench import metrics as M
from clbench.config import chosen_by, hand_set, lookup
from clbench.errors import ConfigError

KINDS = ("tuned", "preset", "default", "hand-set")
MAX_BYTES = 64_000          # a tuning record is a few kB; anything far larger is not one
PROTOCOLS = ("full", "first-k")


def record(source: Optional[dict]) -> dict:
    """The selection record of one run (its config_source)."""
    source = source or {}
    kind = source.get("chosen_by") or chosen_by(source)
    out: dict = {"kind": kind}
    if kind == "tuned":
        out["tuning"] = source["tuning"]
    elif kind == "preset":
        out["presets"] = [p.get("preset") for p in source.get("presets") or []]
    elif kind == "hand-set":
        out["overrides"] = hand_set(source.get("overrides"))
    return out


def from_runs(runs: list[dict]) -> dict:
    """The one selection record shared by the runs (seeds) of a submission."""
    recs = [record(r.get("config_source")) for r in runs]
    if any(json.dumps(x, sort_keys=True) != json.dumps(recs[0], sort_keys=True) for x in recs[1:]):
        kinds = sorted({x["kind"] for x in recs})
        raise ConfigError(f"the runs' configurations were chosen differently ({', '.join(kinds)}, or different "
                          f"tuning records); submit runs of one choice (e.g. the seeds of one `clbench tune`)")
    return recs[0]


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check(sub: dict) -> list[str]:
    """Problems with a submission's `selection` (absent: nothing recorded, which is allowed and shown as such)."""
    sel = sub.get("selection")
    if sel is None:
        return []
    if not isinstance(sel, dict) or sel.get("kind") not in KINDS:
        return [f"'selection' must be an object whose kind is one of {', '.join(KINDS)}"]
    if len(json.dumps(sel)) > MAX_BYTES:
        return [f"'selection' is larger than {MAX_BYTES} bytes"]
    if sel["kind"] != "tuned":
        return []
    t = sel.get("tuning")
    if not isinstance(t, dict):
        return ["'selection.tuning' must be the tuning record of a tuned configuration"]
    issues = []
    if t.get("tool") != "clbench tune":
        issues.append("'selection.tuning.tool' must be 'clbench tune'")
    if t.get("split") != "validation" or t.get("test_evaluated") is not False:
        issues.append("a tuning record must say split 'validation' and test_evaluated false")
    if t.get("protocol") not in PROTOCOLS:
        issues.append(f"'selection.tuning.protocol' must be one of {', '.join(PROTOCOLS)}")
    if t.get("metric") not in M.METRICS:
        issues.append("'selection.tuning.metric' is not a clbench metric")
    budget, trials = t.get("budget"), t.get("trials")
    if not (_int(budget) and _int(trials) and 1 <= trials <= budget):
        issues.append("'selection.tuning' must give budget and trials as integers with 1 <= trials <= budget")
    best = t.get("best")
    if not isinstance(best, dict) or not best:
        issues.append("'selection.tuning.best' must map each tuned key to its chosen value")
    else:
        for key, value in best.items():
            if lookup(sub.get("config") or {}, str(key)) != value:
                issues.append(f"the tuning record chose {key}={value!r} but the submitted config has "
                              f"{lookup(sub.get('config') or {}, str(key))!r}")
    return issues


def is_tuned(sel: Optional[dict]) -> bool:
    """Chosen on a validation split by clbench tune (the board's "tuned on validation" filter)."""
    return bool(sel) and sel.get("kind") == "tuned" and isinstance(sel.get("tuning"), dict)


def describe(sel: Optional[dict]) -> str:
    """One line for the board (plain text: the caller escapes it)."""
    if not sel:
        return "not recorded"
    kind = sel.get("kind")
    if kind == "tuned":
        t = sel["tuning"]
        proto = t.get("protocol") if t.get("protocol") != "first-k" else f"first {t.get('first_k')} exp."
        value = t.get("best_value")
        return (f"tuned on validation: {proto}, {t.get('metric')} "
                f"{'' if not isinstance(value, (int, float)) else f'{100 * value:.1f} '}"
                f"({t.get('trials')}/{t.get('budget')} trials, seed {t.get('seed')})")
    if kind == "preset":
        return "preset " + ", ".join(str(p) for p in sel.get("presets") or [])
    if kind == "hand-set":
        return "hand-set: " + " ".join(str(o) for o in sel.get("overrides") or [])
    return "declared defaults"
