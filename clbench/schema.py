"""The typed schema of clbench's files, and the one safe way to read them.

Three JSON Schema documents ship as package data in `clbench/schemas/` (draft 2020-12, checked with the
`jsonschema` library), sharing the definitions of `defs.json`:

    result.json        a run's result (schema_version 2; version 1 files are migrated when read)
    submission.json    a leaderboard submission (submission_schema 2; strict: no unknown keys)
    verification.json  a verification record written by `clbench leaderboard verify --record`

Every file we did not write ourselves is untrusted. `read_json` bounds it before anything walks it: a
size limit checked before reading, integers limited to 64 bits and floats to finite values while parsing
(Python's json would otherwise build a 400-digit int, or fail on > 4300 digits), duplicate keys refused
(parsers disagree on which one wins), and nesting deeper than MAX_DEPTH refused (Python's decoder raises
RecursionError on very deep input; we turn that and everything else into one line).

docs/results.md and docs/leaderboard.md carry the field tables generated from these schemas
(`python -m clbench.schema result|submission`); a test keeps them in step.
"""
from __future__ import annotations

import functools
import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

from clbench.errors import ResultFileError

RESULT_VERSION = 2
SUBMISSION_VERSION = 2
VERIFICATION_VERSION = 1

MAX_RESULT_BYTES = 64 * 2**20        # logs and anytime curves of a long run stay far below this
MAX_SUBMISSION_BYTES = 16 * 2**20    # a submission is a few matrices per seed: ~50 kB in practice
MAX_RECORD_BYTES = 2**20
MAX_DEPTH = 32                       # result.json nests about 7 levels deep
MAX_NUMBER_CHARS = 40                # the longest int64 has 20 characters; repr(float) at most 24

KINDS = ("defs", "result", "submission", "verification")


# ----- reading JSON safely -----------------------------------------------------------------------------
class _Refused(ValueError):
    """Raised from inside the parser hooks; turned into the caller's error class with the file name."""


def _parse_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise _Refused(f"an integer with {len(text.lstrip('-'))} digits (integers must fit in 64 bits)")
    v = int(text)
    if not -2**63 <= v < 2**63:
        raise _Refused(f"the integer {text} does not fit in 64 bits")
    return v


def _parse_float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise _Refused(f"a number written with {len(text)} characters")
    v = float(text)
    if not math.isfinite(v):
        raise _Refused(f"the number {text} is out of range")
    return v


def _parse_constant(text: str):
    raise _Refused(f"{text} is not a JSON number (numbers must be finite)")


def _object(pairs: list) -> dict:
    out = {}
    for k, v in pairs:
        if k in out:
            raise _Refused(f"the key {k[:80]!r} appears twice in one object")
        out[k] = v
    return out


def _depth(obj) -> int:
    """Nesting depth of lists and objects, walked without recursion."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, (dict, list)):
            deepest = max(deepest, d)
            if d <= MAX_DEPTH:   # deeper than that is refused anyway: no need to walk it
                stack.extend((v, d + 1) for v in (o.values() if isinstance(o, dict) else o))
    return deepest


def loads(data, where: str = "input", error: type = ResultFileError) -> Any:
    """Parse JSON text or bytes with the limits above; any problem raises `error("<where>: <why>")`."""
    try:
        text = data.decode("utf-8-sig") if isinstance(data, (bytes, bytearray)) else str(data)
        obj = json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant,
                         object_pairs_hook=_object)
    except UnicodeDecodeError:
        raise error(f"{where}: not UTF-8 text") from None
    except RecursionError:
        raise error(f"{where}: nested deeper than {MAX_DEPTH} levels") from None
    except _Refused as e:
        raise error(f"{where}: {e}") from None
    except ValueError as e:   # json.JSONDecodeError
        raise error(f"{where}: not valid JSON ({e})") from None
    if _depth(obj) > MAX_DEPTH:
        raise error(f"{where}: nested deeper than {MAX_DEPTH} levels")
    return obj


def read_json(path, max_bytes: int, error: type = ResultFileError) -> Any:
    """A JSON file read with a size limit (checked before reading) and the limits of `loads`."""
    path = Path(path)
    try:
        if not path.is_file():
            raise error(f"{path}: no such file")
        size = path.stat().st_size
        if size > max_bytes:
            raise error(f"{path}: {size} bytes, over the limit of {max_bytes} bytes for this kind of file")
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)      # the file may have grown since stat
    except OSError as e:
        raise error(f"cannot read {path}: {e.strerror or e}") from None
    if len(data) > max_bytes:
        raise error(f"{path}: over the limit of {max_bytes} bytes for this kind of file")
    return loads(data, str(path), error)


# ----- the schemas -------------------------------------------------------------------------------------
@functools.cache
def schema(kind: str) -> dict:
    """The JSON Schema document of `kind` (one of KINDS), as shipped in clbench/schemas/."""
    if kind not in KINDS:
        raise ValueError(f"unknown schema {kind!r} (one of {', '.join(KINDS)})")
    return json.loads((resources.files("clbench") / "schemas" / f"{kind}.json").read_text())


@functools.cache
def _validator(kind: str):
    from jsonschema import Draft202012Validator
    from jsonschema.validators import extend
    from referencing import Registry, Resource

    # JSON Schema's "integer" accepts 1.0 and Python's bool is an int: both are refused here, and a
    # "number" must be finite (the parser already refuses NaN; this guards dicts built in Python).
    checker = Draft202012Validator.TYPE_CHECKER.redefine_many({
        "integer": lambda _, v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda _, v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
    })
    cls = extend(Draft202012Validator, type_checker=checker)
    registry = Registry().with_resources([(schema(k)["$id"], Resource.from_contents(schema(k))) for k in KINDS])
    return cls(schema(kind), registry=registry)


def _where(path) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def schema_errors(instance, kind: str, limit: int = 10) -> list[str]:
    """What is wrong with `instance` under the schema of `kind`, one short line each ([] = valid)."""
    from clbench.escape import one_line
    errors = sorted(_validator(kind).iter_errors(instance), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    out = []
    for e in errors:
        line = f"{_where(e.absolute_path)}: {one_line(e.message, 200)}"
        if line not in out:
            out.append(line)
    return out[:limit] + ([f"... and {len(out) - limit} more"] if len(out) > limit else [])


# ----- result.json ---------------------------------------------------------------------------------------
def migrate_result(r: dict) -> dict:
    """A result of an older schema version as the current one (a new dict), or `r` itself.
    Version 1 -> 2: version 2 only added optional keys; `stream_seed` was always written but is now required."""
    if r.get("schema_version") == 1:
        r = {**r, "schema_version": 2}
        if "stream_seed" not in r and isinstance(r.get("config"), dict):
            r["stream_seed"] = r["config"].get("stream_seed")
    return r


def metric_inputs(r: dict) -> dict:
    """The inputs of clbench.metrics.summarize held by a (valid) result.json, as its keyword arguments."""
    return {
        "R": r["accuracy_matrix"],
        "initial": r["initial_accuracy"],
        "learned_at": r["stream"]["learned_at"],
        "setting": r["stream"]["setting"],
        "task_sizes": [t["n_test"] for t in r["stream"]["eval_tasks"]] if all(
            t.get("n_test") for t in r["stream"]["eval_tasks"]) else None,
        "task_masked": r.get("task_masked_accuracy_matrix"),
        "reference": (r.get("reference") or {}).get("accuracy"),
        "anytime_acc_seen": (r.get("anytime") or {}).get("acc_seen"),
    }


METRIC_TOL = 1e-9


def same_metric(got, want) -> bool:
    """A claimed metric equals the recomputed one: both undefined, or within METRIC_TOL (NaN never matches)."""
    return (got is None and want is None) or (got is not None and want is not None and abs(got - want) <= METRIC_TOL)


def metrics_disagree(claimed: dict, recomputed: dict) -> list[str]:
    """Claimed metrics that differ from the recomputed ones (names only the recomputation knows are skipped)."""
    out = []
    for name, want in recomputed.items():
        if name not in claimed:
            continue
        got = claimed[name]
        if not same_metric(got, want):
            out.append(f"metrics.{name} is {got!r} but R gives {want!r}")
    return out


def _shape_problems(r: dict) -> list[str]:
    # a test-free run (eval.test=false; the schema checked that) is shaped by its validation matrix
    rkey = "accuracy_matrix" if r["accuracy_matrix"] is not None else "validation_accuracy_matrix"
    R, b, stream = r[rkey], r["initial_accuracy"], r["stream"]
    rows, T = len(R), len(R[0])
    out = []
    if any(len(row) != T for row in R):
        return [f"{rkey} rows have different lengths {[len(row) for row in R][:20]}"]
    if b is not None and len(b) != T:
        out.append(f"initial_accuracy has {len(b)} entries, accuracy_matrix has {T} columns")
    for key, want in (("n_experiences", rows), ("n_eval_tasks", T)):
        if stream[key] != want:
            out.append(f"stream.{key} is {stream[key]} but accuracy_matrix is {rows} x {T}")
    tasks = stream["eval_tasks"] if rkey == "accuracy_matrix" else stream.get("val_tasks") or []
    if len(stream["experiences"]) != rows or len(tasks) != T:
        out.append(f"stream lists {len(stream['experiences'])} experiences and {len(tasks)} "
                   f"evaluation tasks, {rkey} is {rows} x {T}")
    L = stream["learned_at"]
    if len(L) != T or any(x >= rows for x in L):
        out.append(f"stream.learned_at must give a row in 0..{rows - 1} for each of the {T} tasks")
    for key, init in (("task_masked_accuracy_matrix", "initial_task_masked_accuracy"),
                      ("validation_accuracy_matrix", "initial_validation_accuracy")):
        if r.get(key) is not None and (len(r[key]) != rows or any(len(row) != T for row in r[key])):
            out.append(f"{key} is not {rows} x {T} like accuracy_matrix")
        if r.get(init) is not None and len(r[init]) != T:
            out.append(f"{init} has {len(r[init])} entries, not {T}")
    for name, m in (r.get("extra_models") or {}).items():
        if len(m["accuracy_matrix"]) != rows or any(len(row) != T for row in m["accuracy_matrix"]):
            out.append(f"extra_models.{name}.accuracy_matrix is not {rows} x {T} like accuracy_matrix")
    if "reference" in r and len(r["reference"]["accuracy"]) != T:
        out.append(f"reference.accuracy has {len(r['reference']['accuracy'])} entries, not {T}")
    return out


def unscored_problems(r: dict, schedule) -> list[str]:
    """Null entries of R and its sibling matrices that are not allowed: any under eval.schedule=full, and
    under seen_next one in a row that every schedule scores (clbench.metrics.scored_entry)."""
    from clbench.metrics import scored_entry
    matrices = [(k, r[k]) for k in ("accuracy_matrix", "task_masked_accuracy_matrix", "validation_accuracy_matrix")
                if k in r]
    matrices += [(f"extra_models.{n}.accuracy_matrix", m["accuracy_matrix"])
                 for n, m in (r.get("extra_models") or {}).items()]
    L = r["stream"]["learned_at"] if "stream" in r else r["learned_at"]
    for key, m in matrices:
        for i, row in enumerate(m or []):   # a test-free run (eval.test=false) has no test matrices
            for j, v in enumerate(row):
                if v is None and (schedule != "seen_next" or scored_entry(i, j, L, len(m))):
                    why = ("eval.schedule=seen_next scores it (a task learned by the next experience, or the final "
                           "row)" if schedule == "seen_next" else f"eval.schedule={schedule} scores every entry")
                    return [f"{key}[{i}][{j}] is null (unscored) but {why}"]
    return []


def result_problems(r) -> list[str]:
    """Everything wrong with a result.json (already migrated): schema, then shapes, seeds, config hash and
    metrics recomputed from R. [] means it is sound."""
    from clbench.config import config_hash
    from clbench.metrics import summarize
    if not isinstance(r, dict):
        return ["not a JSON object"]
    v = r.get("schema_version")
    if isinstance(v, int) and not isinstance(v, bool) and v > RESULT_VERSION:
        return [f"schema_version {v} is newer than this clbench reads ({RESULT_VERSION}): upgrade clbench"]
    errors = schema_errors(r, "result")
    if errors:
        return errors
    out = _shape_problems(r)
    if r["seed"] != r["config"]["seed"] or r["stream_seed"] != r["config"]["stream_seed"]:
        out.append("seed / stream_seed disagree with the config's")
    if config_hash(r["config"]) != r["config_hash"]:
        out.append("config_hash does not match the config (the file was edited after the run)")
    out += unscored_problems(r, r["config"]["eval"].get("schedule", "full"))
    if out:
        return out
    if r["accuracy_matrix"] is None:   # no test split: no test metric can be claimed
        claimed = sorted(k for k, v in r["metrics"].items() if v is not None)
        return [f"metrics {claimed[:5]} claimed by a run without a test split (eval.test=false)"] if claimed else []
    return metrics_disagree(r["metrics"], summarize(**metric_inputs(r)))


def load_result(path) -> dict:
    """A result.json (give the file or its run folder), migrated to the current schema version and checked;
    raises ResultFileError with one line naming the file and its first problem."""
    path = Path(path)
    if path.is_dir():
        path = path / "result.json"
    r = read_json(path, MAX_RESULT_BYTES, ResultFileError)
    if isinstance(r, dict):
        r = migrate_result(r)
    problems = result_problems(r)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ResultFileError(f"{path}: not a valid clbench result: {problems[0]}{more}")
    return r


# ----- documentation generated from the schemas ---------------------------------------------------------------
def _resolve(node: dict, kind: str) -> tuple[dict, str]:
    """Follow $ref (or the $ref inside an allOf) to the definition; returns it and the schema it is in."""
    while True:
        ref = node.get("$ref") or next((n["$ref"] for n in node.get("allOf", []) if "$ref" in n), None)
        if not ref:
            return node, kind
        doc, _, pointer = ref.partition("#")
        kind = doc.rsplit(":", 1)[-1] if doc else kind
        node = schema(kind)
        for part in filter(None, pointer.split("/")):
            node = node[part]


def _type_text(node: dict, kind: str) -> str:
    if "const" in node:
        return json.dumps(node["const"])
    if node.get("if") == {"type": "null"} and "else" in node:   # null allowed, else the given type
        return _type_text(node["else"], kind) + " or null"
    node, kind = _resolve(node, kind)
    if "anyOf" in node:
        return " or ".join(_type_text(n, kind) for n in node["anyOf"])
    t = node.get("type", "any")
    if t == "array":
        return "array of " + (_type_text(node["items"], kind) if "items" in node else "any")
    if isinstance(t, list):
        return " or ".join(t)
    if node.get("minimum") == 0 and node.get("maximum") == 1:
        return "number in [0, 1]"
    return t


def field_table(kind: str, nested: tuple[str, ...] = ()) -> str:
    """A Markdown table of the fields of `kind`, and one level down for the fields named in `nested`."""
    from clbench.escape import one_line

    def cell(text) -> str:   # our own schema text: only what would break the table is escaped
        return one_line(text, 1000).replace("|", "\\|")
    lines = ["| field | type | required | description |", "|---|---|---|---|"]

    def rows(node: dict, where: str, prefix: str) -> None:
        node, where = _resolve(node, where)
        if node.get("type") == "array":
            node, where = _resolve(node["items"], where)
        for name, child in node.get("properties", {}).items():
            desc = child.get("description") or _resolve(child, where)[0].get("description", "")
            lines.append(f"| `{prefix}{name}` | {cell(_type_text(child, where))} | "
                         f"{'yes' if name in node.get('required', []) else 'no'} | {cell(desc)} |")
            if f"{prefix}{name}" in nested:
                is_list = _resolve(child, where)[0].get("type") == "array"
                rows(child, where, f"{prefix}{name}{'[]' if is_list else ''}.")

    rows(schema(kind), kind, "")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    import sys
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] not in ("result", "submission", "verification"):
        print("usage: python -m clbench.schema result|submission|verification  (prints the field table)",
              file=sys.stderr)
        return 2
    print(field_table(argv[0], DOC_NESTED[argv[0]]), end="")
    return 0


# The objects whose fields the generated tables list one level down.
DOC_NESTED = {"result": ("stream", "timing", "memory", "env"),
              "submission": ("method", "benchmark", "selection", "timing", "runs"),
              "verification": ("seeds",)}

if __name__ == "__main__":
    raise SystemExit(main())
