"""`clbench report PATH`: mean +- std over seeds of every metric, as a table and as figures.

PATH is a run folder or any folder holding run folders (searched recursively). Runs are grouped by
(benchmark, strategy, config hash without the seeds, code/data identity): the seeds of one
configuration run by the same code on the same data are repeats, so each group gives mean, std (sample
std, ddof=1; none for a single seed) and n = the number of distinct seeds. Several runs of one seed (the
same run repeated) count once: they are averaged first (equal when the run is bit-reproducible), and the
table says that repeats exist. Runs of the same configuration from different code or data
(clbench/provenance.py) form separate groups, told apart by the short `code/data` id in the table;
`pool=True` (`--pool`) merges them and warns about every group it mixes.

Stable API (the sweep command calls it):
    aggregate(results: list[dict], pool=False) -> list[dict]          one row per group
    render_table(rows, fmt="text"|"markdown"|"csv", metrics=None) -> str
A row is {"benchmark", "strategy", "label", "group_hash", "identity", "n" (distinct seeds), "runs" (run
files), "seeds", "run_ids", "config_diff", "metrics": {name: {"mean", "std", "n"}}}; metric values are
fractions (0.8 = 80 %); `identity` is "code8/data8" ("-" where a run records none; "mixed:N" in a pooled
group of N identities).
"""
from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import Iterable, Optional, Sequence

from clbench.config import NON_SEMANTIC_KEYS, SEED_KEYS, group_hash
from clbench.errors import ResultFileError, UnknownNameError
from clbench.escape import markdown_cell, slug
from clbench.metrics import direction, mean_std, pm, uninformative
from clbench.provenance import identity, short_id
from clbench.registry import did_you_mean
from clbench.results import check_out_dir, find_results, load_result, write_text_atomic

# Shown in the printed table when present (all metrics go to the CSV).
TABLE_METRICS = ("acc", "forgetting", "bwt", "fwt", "learning_accuracy", "forgetting_first", "acc_task_masked",
                 "intransigence", "anytime_acc_auc")
# Compared in the bar chart when several configurations share a benchmark.
CHART_METRICS = ("acc", "forgetting", "bwt", "learning_accuracy", "fwt", "acc_task_masked", "intransigence",
                 "anytime_acc_auc")


# ----- finding and loading runs ----------------------------------------------------------------------
def load_results(path) -> list[dict]:
    """The results under PATH, each checked against the result schema (clbench.schema); a damaged or
    foreign file is skipped with a one-line warning on stderr."""
    out = []
    for p in find_results(path):
        try:
            r = load_result(p)
        except ResultFileError as e:
            print(f"clbench report: skipping {e}", file=sys.stderr)
            continue
        r["_path"] = str(p.parent)
        out.append(r)
    return out


# ----- aggregation ------------------------------------------------------------------------------------
def _key(result: dict, pool: bool = False) -> tuple[str, str, str, str]:
    """(benchmark, strategy, seed-free config hash, code/data id; "" when pooled): one group per key."""
    cfg = result.get("config", {})
    gh = group_hash(cfg) if cfg else result.get("config_hash", "")
    ident = "" if pool else short_id(identity(result))
    return cfg.get("benchmark", {}).get("name", "?"), cfg.get("strategy", {}).get("name", "?"), gh, ident


def _group_identity(rs: list[dict], label: str) -> str:
    """The short code/data id of a group; a pooled group of several says so, and a warning names them."""
    ids = sorted({short_id(identity(r)) for r in rs})
    if len(ids) == 1:
        return ids[0]
    print(f"clbench report: warning: --pool merges runs of {len(ids)} code/data identities into '{label}' "
          f"({', '.join(ids)}); their mean and std mix different code or data", file=sys.stderr)
    return f"mixed:{len(ids)}"


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _semantic(cfg: dict) -> dict:
    return _flatten({k: v for k, v in cfg.items() if k not in NON_SEMANTIC_KEYS and k not in SEED_KEYS})


def _seed(result: dict) -> tuple:
    """What makes two runs of one configuration independent samples: the training and the stream seed."""
    cfg = result.get("config") or {}
    seed = result.get("seed", cfg.get("seed"))
    return seed, result.get("stream_seed", cfg.get("stream_seed", seed))


def _per_seed(rs: list[dict], name: str) -> list:
    """One value of metric `name` per distinct seed: repeats of a seed are averaged (not extra samples)."""
    by_seed: dict[tuple, list] = {}
    for r in rs:
        by_seed.setdefault(_seed(r), []).append(r["metrics"].get(name))
    return [mean_std(values)["mean"] for values in by_seed.values()]


def _short(key: str) -> str:
    return key.split(".", 1)[1] if key.startswith("strategy.") else key


def aggregate(results: list[dict], pool: bool = False) -> list[dict]:
    """One row per (benchmark, strategy, config-without-seeds, code/data identity), with mean/std/n of
    every metric; `pool=True` leaves the identity out of the key (and warns where that mixes runs).

    Rows are sorted by benchmark, then by mean final accuracy (best first). `label` names the strategy
    and, where one strategy appears with several configurations, the config keys that tell them apart.
    """
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault(_key(r, pool), []).append(r)
    # Keys whose values differ between groups of the same benchmark and strategy become the label.
    diffs: dict[tuple, dict] = {}
    by_bs: dict[tuple, list[tuple]] = {}
    for key in groups:
        by_bs.setdefault(key[:2], []).append(key)
    for bs, keys in by_bs.items():
        flats = {k: _semantic(groups[k][0].get("config", {})) for k in keys}  # same config, other code: no diff
        all_keys = sorted(set().union(*[set(f) for f in flats.values()]))
        varying = [c for c in all_keys if len({repr(f.get(c)) for f in flats.values()}) > 1] if len(keys) > 1 else []
        for k in keys:
            diffs[k] = {c: flats[k].get(c) for c in varying}
    rows = []
    for key, rs in groups.items():
        bench, strat, gh, _ = key
        names = []
        for r in rs:
            names += [n for n in r["metrics"] if n not in names]
        diff = diffs.get(key, {})
        label = strat + (" (" + ", ".join(f"{_short(k)}={v}" for k, v in diff.items()) + ")" if diff else "")
        seeds = {_seed(r) for r in rs}
        rows.append({
            "benchmark": bench,
            "strategy": strat,
            "setting": (rs[0].get("stream") or {}).get("setting"),
            "label": label,
            "group_hash": gh[:12],
            "identity": _group_identity(rs, label),
            "n": len(seeds),
            "runs": len(rs),
            "seeds": sorted({s for s, _ in seeds}, key=lambda s: (str(type(s)), s)),
            "run_ids": [r.get("run_id") for r in rs],
            "config_diff": diff,
            "metrics": {n: mean_std(_per_seed(rs, n)) for n in names},
        })
    rows.sort(key=lambda row: (row["benchmark"], -(row["metrics"].get("acc", {}).get("mean") or 0.0), row["label"]))
    return rows


def check_metric_names(names: Sequence[str], results: list[dict]) -> None:
    """Every asked-for metric must exist (a typo would otherwise print an empty column)."""
    from clbench.metrics import EXTRA_METRICS, METRICS
    known = list(dict.fromkeys([*METRICS, *EXTRA_METRICS, *(n for r in results for n in r["metrics"])]))
    for name in names:
        if name not in known:
            raise UnknownNameError(f"unknown metric '{name}' in --metrics.{did_you_mean(name, known)} "
                                   f"Valid metrics: {', '.join(known)}")


# ----- tables -------------------------------------------------------------------------------------------
def _metric_columns(rows: Sequence[dict], metrics: Optional[Iterable[str]]) -> list[str]:
    if metrics is not None:
        return list(metrics)
    present = [m for m in TABLE_METRICS if any(r["metrics"].get(m, {}).get("mean") is not None for r in rows)]
    return present


def render_table(rows: Sequence[dict], fmt: str = "text", metrics: Optional[Iterable[str]] = None) -> str:
    """The aggregate rows as a table: `text` (aligned, for the console), `markdown`, or `csv`.

    text and markdown show mean ± std in % (+ higher / - lower is better in the header); csv has every
    metric (or the ones asked for) as fractions, in <name>_mean, <name>_std, <name>_n columns.
    """
    if fmt == "csv":
        names = list(metrics) if metrics is not None else []
        if metrics is None:
            for r in rows:
                names += [n for n in r["metrics"] if n not in names]
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["benchmark", "strategy", "label", "group_hash", "n", "seeds", "runs", "identity"] +
                   [f"{n}_{s}" for n in names for s in ("mean", "std", "n")])
        for r in rows:
            cells = [r["benchmark"], r["strategy"], r["label"], r["group_hash"], r["n"],
                     " ".join(map(str, r["seeds"])), r.get("runs", r["n"]), r.get("identity", "-")]
            for n in names:
                st = r["metrics"].get(n, {})
                cells += ["" if st.get(k) is None else st.get(k) for k in ("mean", "std", "n")]
            w.writerow(cells)
        return buf.getvalue()
    names = _metric_columns(rows, metrics)
    header = ["benchmark", "strategy", "n"] + [f"{n} ({direction(n)})" for n in names] + ["code/data"]
    body = [[r["benchmark"], r["label"], _n_cell(r)] + [pm(r["metrics"].get(n)) for n in names] +
            [r.get("identity", "-")] for r in rows]
    notes = [x for x in (_repeats_note(rows), _uninformative_note(rows, names)) if x]
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(markdown_cell(c, 1000) for c in row) + " |" for row in body]
        lines.append("")
        lines.append("Values in %, mean ± std over seeds (sample std; none for n = 1); n = distinct seeds. "
                     "(+) higher is better, (-) lower is better; definitions in docs/metrics.md. "
                     "code/data: short code and data identity of the group's runs (docs/provenance.md)." +
                     "".join(f" {x}" for x in notes))
        return "\n".join(lines) + "\n"
    if fmt != "text":
        raise ValueError(f"unknown table format {fmt!r} (choose text, markdown or csv)")
    widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h) for i, h in enumerate(header)]
    last = len(header) - 1
    fmt_row = lambda cells: "  ".join(c.ljust(w) if i < 2 or i == last else c.rjust(w)
                                      for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    lines = [fmt_row(header), fmt_row(["-" * w for w in widths])] + [fmt_row(row) for row in body]
    lines.append("values in %, mean ± std over seeds (n = distinct seeds); (+) higher is better, (-) lower is "
                 "better; code/data: short code and data identity")
    lines += notes
    return "\n".join(lines) + "\n"


def _n_cell(row: dict) -> str:
    runs = row.get("runs", row["n"])
    return str(row["n"]) if runs == row["n"] else f"{row['n']} ({runs} runs)"


def _uninformative_note(rows: Sequence[dict], names: Sequence[str]) -> str:
    """Why a shown metric carries no information for some rows' setting (metrics.UNINFORMATIVE): shown, not
    silently ranked as if it did."""
    notes = []
    for name in names:
        for setting in sorted({r.get("setting") for r in rows if r.get("setting")}):
            why = uninformative(name, setting)
            if why:
                notes.append(f"note: {name} on {setting} rows carries no information ({why}).")
    return " ".join(notes)


def _repeats_note(rows: Sequence[dict]) -> str:
    rep = [r for r in rows if r.get("runs", r["n"]) > r["n"]]
    if not rep:
        return ""
    return (f"note: {len(rep)} configuration(s) hold repeated runs of one seed ('n (k runs)'); repeats count "
            f"once, averaged, since they are not independent samples")


# ----- the report ---------------------------------------------------------------------------------------
def _note_split_groups(rows: Sequence[dict], stream) -> None:
    """Say when one configuration appears in several rows because its runs differ in code or data."""
    seen: dict[tuple, list[str]] = {}
    for r in rows:
        seen.setdefault((r["benchmark"], r["label"], r["group_hash"]), []).append(r["identity"])
    for (bench, label, _), ids in seen.items():
        if len(ids) > 1:
            print(f"note: {bench} / {label}: {len(ids)} groups of the same configuration from different code or "
                  f"data ({', '.join(ids)}); they are kept apart (--pool merges them)", file=stream)

def _groups(results: list[dict], pool: bool) -> dict[tuple, list[dict]]:
    """The runs behind each report row, keyed (benchmark, strategy, group hash, identity) as the rows are."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        bench, strat, gh, ident = _key(r, pool)
        groups.setdefault((bench, strat, gh[:12], ident), []).append(r)
    return groups


def _runs_of(groups: dict, row: dict, pool: bool) -> list[dict]:
    return groups[(row["benchmark"], row["strategy"], row["group_hash"], "" if pool else row["identity"])]


def write_report(results: list[dict], out_dir, figures: bool = True, metrics: Optional[Sequence[str]] = None,
                 pool: bool = False, memory: bool = False) -> dict:
    """Write report.csv, report.md and the PNG figures to `out_dir`; returns the rows and the paths.
    `memory`: also memory.md (configurations by total memory) and memory_<benchmark>.png (accuracy vs memory)."""
    from clbench import plots
    out = check_out_dir(out_dir, key="--out")
    rows = aggregate(results, pool=pool)
    written = []
    for name, fmt in (("report.csv", "csv"), ("report.md", "markdown")):
        written.append(write_text_atomic(out / name, render_table(rows, fmt=fmt,
                                                                  metrics=metrics if fmt != "csv" else None)))
    groups = _groups(results, pool) if memory or figures else {}
    if memory:   # (zoo3a, issue 16: the memory-aligned comparison, clbench/memory.py)
        written += _write_memory(groups, rows, out, figures, pool)
    if figures:
        by_bench: dict[str, list[tuple[dict, list[dict]]]] = {}
        for row in rows:
            rs = _runs_of(groups, row, pool)
            shape = {len(r["accuracy_matrix"]) for r in rs}
            if len(shape) > 1:  # not comparable cell by cell: draw the first shape only
                rs = [r for r in rs if len(r["accuracy_matrix"]) == len(rs[0]["accuracy_matrix"])]
            by_bench.setdefault(row["benchmark"], []).append((row, rs))
            ident = "" if pool else "_" + row["identity"].replace("/", "-")
            stem = slug(f"{row['benchmark']}_{row['label']}_{row['group_hash'][:8]}{ident}")
            written.append(plots.save(plots.heatmap_figure(rs, row["label"]), out / f"heatmap_{stem}.png"))
            written.append(plots.save(plots.task_curves_figure(rs, row["label"]), out / f"tasks_{stem}.png"))
            fig = plots.anytime_figure(rs, row["label"])
            if fig is not None:
                written.append(plots.save(fig, out / f"anytime_{stem}.png"))
        for bench, items in by_bench.items():
            if len(items) < 2:
                continue
            bench_rows = [row for row, _ in items]
            written.append(plots.save(plots.comparison_figure(bench_rows, metrics or CHART_METRICS, bench),
                                      out / f"compare_{slug(bench)}.png"))
            written.append(plots.save(plots.accuracy_curves_figure([(row["label"], rs) for row, rs in items], bench),
                                      out / f"curves_{slug(bench)}.png"))
    return {"rows": rows, "files": [str(p) for p in written]}


def report(path, out_dir=None, figures: bool = True, metrics: Optional[Sequence[str]] = None, stream=None,
           pool: bool = False, memory: bool = False) -> dict:
    """Everything `clbench report` does: load, print the table, write files (default: PATH/report)."""
    stream = stream or sys.stdout
    results = load_results(path)
    if not results:
        raise FileNotFoundError(f"no result.json found under {path} (give a run folder or a folder of runs)")
    if metrics is not None:
        check_metric_names(metrics, results)
    p = Path(path)
    out_dir = Path(out_dir) if out_dir else (p.parent if p.is_file() else p) / "report"
    info = write_report(results, out_dir, figures=figures, metrics=metrics, pool=pool, memory=memory)
    print(f"{len(results)} run(s) in {len(info['rows'])} configuration(s) under {path}", file=stream)
    _note_split_groups(info["rows"], stream)
    print(render_table(info["rows"], metrics=metrics), file=stream)
    if memory:
        from clbench.memory import equal_memory_table
        print(equal_memory_table(info["rows"]), file=stream)
    print(f"wrote {len(info['files'])} file(s) to {out_dir}:", file=stream)
    for f in info["files"]:
        print(f"  {f}", file=stream)
    return info


# ----- memory-aligned comparison (zoo3a, issue 16) ------------------------------------------------------------
def _write_memory(groups: dict, rows: list[dict], out: Path, figures: bool, pool: bool) -> list[Path]:
    """Attach each row's memory summary (clbench/memory.py); write memory.md and one accuracy-vs-memory figure
    per benchmark."""
    from clbench import plots
    from clbench.memory import equal_memory_table, summarize
    for row in rows:
        row["memory"] = summarize(_runs_of(groups, row, pool))
    written = [write_text_atomic(out / "memory.md", equal_memory_table(rows))]
    if figures:
        for bench in sorted({row["benchmark"] for row in rows}):
            bench_rows = [row for row in rows if row["benchmark"] == bench]
            written.append(plots.save(plots.memory_figure(bench_rows, title=bench), out / f"memory_{slug(bench)}.png"))
    return written
