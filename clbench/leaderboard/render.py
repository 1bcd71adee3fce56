"""Render the board: leaderboard/LEADERBOARD.md and a static, sortable leaderboard/index.html, one table
per track (benchmark at its shipped version), plus a heatmap PNG of each entry's mean accuracy matrix.

Only submissions that validate are shown; the others are reported. The board holds one entry per
configuration: when two files share a benchmark and config_hash, a verified one is shown and the others
are listed as duplicates; when none (or several) is verified, all of them are listed and none is ranked.
File names never decide. Every free-text value is escaped for its output (clbench.escape). The output
has no timestamps, so rendering the same submissions twice gives the same files (clean diffs in git).

The page sorts client-side (plain JS, no dependencies): click a column header; click again to reverse.
A URL hash `#sort=<table id>:<column key>[:asc|desc]` clicks the header on load (used by the headless
browser test and handy for sharing a sorted view).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from clbench import metrics as M
from clbench.config import benchmark_names, load_benchmark, section_specs
from clbench.escape import html_text, markdown_cell
from clbench.leaderboard import selection
from clbench.leaderboard.validate import ValidationIssue, check_file, leaderboard_track
from clbench.leaderboard.verify import load_records, verification_status
from clbench.results import check_out_dir, write_text_atomic

# Columns shown per track: (summary key, header). acc_task_masked only where a track has it.
METRIC_COLUMNS = [("acc", "ACC"), ("forgetting", "Forgetting"), ("bwt", "BWT"), ("fwt", "FWT"),
                  ("learning_accuracy", "LA"), ("acc_task_masked", "Task-IL ACC")]
STATUS_ORDER = {"verified": 3, "partial": 2.5, "unverified": 2, "stale": 1, "failed": 0}
STATUS_TEXT = {"verified": "✓ verified", "partial": "◐ some seeds", "unverified": "– not yet",
               "stale": "? changed since", "failed": "✗ failed"}


@dataclass
class Entry:
    sub: dict
    path: Path
    status: dict
    heatmap: Optional[Path] = None
    deviations: list = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.sub["id"]

    def metric(self, key: str) -> dict:
        return self.sub["summary"].get(key) or {"mean": None, "std": None, "n": 0}


def _pct(s: dict) -> str:
    if s.get("mean") is None:
        return "–"
    return f"{100 * s['mean']:.2f} ± {100 * (s.get('std') or 0.0):.2f}"


def _track_id(name: str, version) -> str:
    return f"{name}-v{version}"


def deviations(sub: dict, shipped: dict) -> list[str]:
    """Model and training settings that differ from the shipped benchmark (allowed, shown on the board). A key
    the benchmark YAML leaves out is compared with its declared default (train.amp=off, model.init=default are
    the benchmark's settings, not deviations)."""
    out = []
    for section in ("model", "train"):
        mine, theirs = sub["config"].get(section) or {}, shipped.get(section) or {}
        declared = section_specs(shipped, section) or {}
        for key in sorted(set(mine) | set(theirs)):
            base = theirs[key] if key in theirs else (declared[key].default if key in declared else None)
            if mine.get(key) != base:
                out.append(f"{section}.{key}={mine.get(key)}")
    return out


def _status_tip(e: Entry) -> str:
    rec = e.status["record"]
    if rec is None:
        return "no verification record for this submission in leaderboard/verifications/"
    seeds = "; ".join(f"seed {x['seed']}: {x['reason']}" for x in rec["seeds"])
    return (f"re-run by {rec['verifier']} on {rec['date']} ({rec['environment'].get('device')}, torch "
            f"{rec['environment'].get('torch')}), tolerance {rec['tolerance_rule']}: {seeds}")


def _code_tip(e: Entry) -> str:
    m = e.sub["method"]
    return (f"{m['package']} {m['package_version'] or ''} {m['entry_point']}; source hash "
            f"{m['source_hash'][:12]}")


def _hp_text(e: Entry) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(e.sub["method"].get("hyperparameters", {}).items()))


def _config_text(e: Entry) -> str:
    return ", ".join([x for x in (", ".join(e.deviations), _hp_text(e)) if x]) or "defaults"


def _method_text(e: Entry) -> tuple[str, str]:
    """(display name, strategy in brackets when it differs from the name)."""
    m = e.sub["method"]
    return m["name"], ("" if m["name"] == m["strategy"] else m["strategy"])


def write_heatmap(sub: dict, path: Path) -> Path:
    """The accuracy matrix averaged over the seeds, drawn with clbench.plots.heatmap_figure."""
    import matplotlib.pyplot as plt

    from clbench.plots import heatmap_figure
    runs = sub["runs"]
    mean = {"accuracy_matrix": M.mean_std([r["accuracy_matrix"] for r in runs])["mean"].tolist(),
            "initial_accuracy": M.mean_std([r["initial_accuracy"] for r in runs])["mean"].tolist(),
            "config": {"benchmark": {"name": f"{sub['benchmark']['name']} v{sub['benchmark']['version']}"},
                       "strategy": {"name": sub["method"]["name"]}},
            "seed": f"mean of {len(runs)} ({', '.join(str(r['seed']) for r in runs)})"}
    fig = heatmap_figure(mean)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Software": None})  # no version stamp: identical input, identical file
    plt.close(fig)
    return path


def collect(submissions_dir, records_dir=None) -> tuple[list[Entry], dict[Path, list[ValidationIssue]]]:
    """The entries to rank and {path: issues} for every file not ranked (invalid, duplicate configuration,
    unreadable verification record). Records default to `<submissions_dir>/../verifications`."""
    submissions_dir = Path(submissions_dir)
    records, bad_records = load_records(records_dir or submissions_dir.parent / "verifications")
    valid, rejected = [], {}
    for path in sorted(submissions_dir.glob("*.json")):
        sub, issues = check_file(path)
        if issues:
            rejected[path] = issues
            continue
        shipped, _ = leaderboard_track(sub["benchmark"]["name"], sub["benchmark"]["version"])
        valid.append(Entry(sub=sub, path=path, status=verification_status(sub, records),
                           deviations=deviations(sub, shipped)))
    # one entry per configuration: a verified file wins over unverified ones, otherwise none is ranked
    groups: dict[tuple, list[Entry]] = {}
    for e in valid:
        key = (e.sub["benchmark"]["name"], e.sub["benchmark"]["version"], e.sub["config_hash"])
        groups.setdefault(key, []).append(e)
    entries = []
    for group in groups.values():
        if len(group) == 1:
            entries += group
            continue
        verified = [e for e in group if e.status["status"] == "verified"]
        if len(verified) == 1:
            entries.append(verified[0])
            for e in group:
                if e is not verified[0]:
                    rejected[e.path] = [ValidationIssue("duplicate", f"same benchmark and config_hash as "
                                                                     f"{verified[0].path.name}, which is verified")]
        else:
            names = ", ".join(e.path.name for e in group)
            for e in group:
                rejected[e.path] = [ValidationIssue("duplicate", f"{len(group)} files share this benchmark and "
                                                                 f"config_hash ({names}) and {len(verified) or 'none'} "
                                                                 f"of them verified: none is ranked until a "
                                                                 f"maintainer keeps one")]
    for path, why in bad_records.items():
        rejected[path] = [ValidationIssue("record", why)]
    return entries, rejected


def tracks(entries: list[Entry]) -> list[tuple[dict, list[Entry]]]:
    """Every shipped benchmark as a track, entries ranked by mean ACC; tracks with entries first."""
    out = []
    for name in benchmark_names():
        b = load_benchmark(name)
        if not isinstance(b.get("expected_stream"), dict):   # not a leaderboard track
            continue
        key = (b.get("name", name), b.get("version", 1))
        rows = [e for e in entries if (e.sub["benchmark"]["name"], e.sub["benchmark"]["version"]) == key]
        rows.sort(key=lambda e: (-(e.metric("acc")["mean"] if e.metric("acc")["mean"] is not None else -1), e.id))
        out.append(({"name": key[0], "version": key[1], "description": b.get("description", ""),
                     "id": _track_id(*key)}, rows))
    return sorted(out, key=lambda t: not t[1])   # stable: alphabetical within each group


def _columns(rows: list[Entry]) -> list[tuple[str, str]]:
    return [(k, h) for k, h in METRIC_COLUMNS
            if (k != "acc_task_masked" or any(e.metric(k)["mean"] is not None for e in rows))
            and not M.uninformative(k, _setting(rows))]


# ----- how each entry's config was chosen, and metrics a track's setting makes uninformative (clbench tune) -----
def _setting(rows: list[Entry]):
    return ((rows[0].sub["runs"][0].get("stream") or {}).get("setting")) if rows else None


def _left_out(rows: list[Entry]) -> list[str]:
    """'FWT is not shown: <why>' for each metric the track's setting makes uninformative (metrics.UNINFORMATIVE)."""
    return [f"{h} is not shown: {M.uninformative(k, _setting(rows))}." for k, h in METRIC_COLUMNS
            if M.uninformative(k, _setting(rows))]


def _memory_mib(e: Entry):
    """Total memory the method keeps, mean over seeds, in MiB: model + exemplars + extra model copies + other
    state (result.json memory.total_bytes; docs/memory.md), so entries compare at equal total memory."""
    from clbench.memory import summarize
    return summarize(e.sub["runs"])["total_mib"]


def _mib_text(v) -> str:
    return "–" if v is None else f"{v:.2f}"


def _chosen(e: Entry) -> str:
    return selection.describe(e.sub.get("selection"))


def _rel(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path, start)).as_posix()


# ----- markdown ---------------------------------------------------------------------------------------
def render_markdown(track_rows, out_dir: Path, rejected) -> str:
    md = markdown_cell
    lines = ["# clbench leaderboard", "",
             "Generated by `clbench leaderboard render` from `leaderboard/submissions/` (do not edit by hand). "
             "Values are percentages, mean ± sample std over n seeds; (+) higher is better, (-) lower is better. "
             "Verified: a verification record in `leaderboard/verifications/` re-ran every seed from the "
             "submitted config and R agreed within the verifier's tolerance. "
             "Metric definitions: docs/metrics.md. How to submit and verify: docs/leaderboard.md. "
             "Interactive, sortable version: [index.html](index.html).", ""]
    for track, rows in track_rows:
        if not rows:
            continue
        lines += [f"## {md(track['name'])} v{track['version']}", "", md(track["description"], 1000), ""]
        cols = _columns(rows)
        head = ["#", "Method"] + [f"{h} ({M.direction(k)})" for k, h in cols] + \
               ["n", "Verified", "Config", "Chosen by", "Time/seed (s)", "Memory (MiB)", "Heatmap", "Submission"]
        lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        for rank, e in enumerate(rows, 1):
            name, strat = _method_text(e)
            cells = [str(rank), md(name) + (f" ({md(strat)})" if strat else "")]
            cells += [_pct(e.metric(k)) for k, _ in cols]
            cells += [str(len(e.sub["runs"])), STATUS_TEXT[e.status["status"]], md(_config_text(e), 2000),
                      md(_chosen(e), 500), f"{e.sub['timing']['mean_per_seed_s']:.1f}", _mib_text(_memory_mib(e)),
                      f"[png]({_rel(e.heatmap, out_dir)})" if e.heatmap else "–",
                      f"[json]({_rel(e.path, out_dir)})"]
            lines.append("| " + " | ".join(cells) + " |")
        lines += [""] + [f"*{note}*" for note in _left_out(rows)] + ([""] if _left_out(rows) else [])
    empty = [t for t, rows in track_rows if not rows]
    if empty:
        lines += ["## Tracks without entries yet", ""]
        lines += [f"- {md(t['name'])} v{t['version']}: {md(t['description'], 1000)}" for t in empty]
        lines.append("")
    if rejected:
        lines += ["## Not ranked: invalid submissions, duplicate configurations, unreadable records", ""]
        for path, issues in rejected.items():
            lines.append(f"- {md(path.name)}: " + md("; ".join(str(i) for i in issues[:3]), 1000))
        lines.append("")
    return "\n".join(lines)


# ----- HTML -------------------------------------------------------------------------------------------
CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
table.board { border-collapse: collapse; margin-bottom: 2rem; font-size: 0.92rem; }
th, td { border-bottom: 1px solid #ddd; padding: 0.35rem 0.6rem; text-align: right; white-space: nowrap; }
td.text, th.text { text-align: left; white-space: normal; }
th.sortable { cursor: pointer; user-select: none; background: #f4f4f4; }
th.sortable:hover { background: #e8e8e8; }
th[aria-sort="ascending"]::after { content: " ▲"; }
th[aria-sort="descending"]::after { content: " ▼"; }
.verified { color: #137333; } .failed { color: #b3261e; } .stale { color: #a05a00; }
.muted { color: #777; font-size: 0.85rem; }
td.config { max-width: 22rem; } .hp { color: #666; font-size: 0.8rem; } .dev { font-weight: 600; }
"""

JS = r"""
(function () {
  function key(td) {
    var v = td.getAttribute('data-sort');
    if (v === null || v === '') return null;
    var n = Number(v);
    return isNaN(n) ? v.toLowerCase() : n;
  }
  function sortBy(th, dir) {
    var table = th.closest('table'), body = table.tBodies[0], col = th.cellIndex;
    var rows = Array.prototype.slice.call(body.rows);
    rows.forEach(function (r, i) { r._i = i; });
    rows.sort(function (a, b) {
      var x = key(a.cells[col]), y = key(b.cells[col]);
      if (x === null && y === null) return a._i - b._i;
      if (x === null) return 1;             // missing values always last
      if (y === null) return -1;
      var c = x < y ? -1 : (x > y ? 1 : 0);
      return (dir === 'ascending' ? c : -c) || a._i - b._i;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    table.querySelectorAll('th').forEach(function (h) { h.removeAttribute('aria-sort'); });
    th.setAttribute('aria-sort', dir);
    table.setAttribute('data-sorted-by', th.getAttribute('data-key') + ':' + dir);
  }
  document.querySelectorAll('table.board th.sortable').forEach(function (th) {
    th.addEventListener('click', function () {
      var cur = th.getAttribute('aria-sort');
      var dir = cur === 'descending' ? 'ascending' : cur === 'ascending' ? 'descending'
              : th.getAttribute('data-first');
      sortBy(th, dir);
    });
  });
  // #sort=<table id>:<column key>[:asc|desc] clicks that header (once or twice) on load.
  function fromHash() {
    var m = /sort=([^:&]+):([^:&]+)(?::(asc|desc))?/.exec(decodeURIComponent(location.hash));
    if (!m) return;
    var table = document.getElementById(m[1]);
    var th = table && table.querySelector('th[data-key="' + m[2] + '"]');
    if (!th) return;
    th.click();
    var want = m[3] === 'asc' ? 'ascending' : m[3] === 'desc' ? 'descending' : null;
    if (want && th.getAttribute('aria-sort') !== want) th.click();
  }
  window.addEventListener('hashchange', fromHash);
  fromHash();
  // "only entries tuned on validation": hide the other rows (#tuned-only in the URL ticks it on load)
  var only = document.getElementById('tuned-only');
  function filter() {
    document.querySelectorAll('table.board tbody tr').forEach(function (r) {
      r.hidden = only.checked && r.getAttribute('data-selection') !== 'tuned';
    });
  }
  if (only) {
    only.addEventListener('change', filter);
    if (/tuned-only/.test(location.hash)) { only.checked = true; }
    filter();
  }
})();
"""


def _td(text, sort=None, cls: str = "", raw: bool = False, title: str = "") -> str:
    """A table cell; `text` is escaped unless `raw` (then it is markup built here from escaped parts)."""
    attrs = f' data-sort="{html_text(sort)}"' if sort is not None else ' data-sort=""'
    attrs += f' class="{cls}"' if cls else ""
    attrs += f' title="{html_text(title)}"' if title else ""
    return f"<td{attrs}>{text if raw else html_text(text)}</td>"


def render_html(track_rows, out_dir: Path, rejected) -> str:
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             "<title>clbench leaderboard</title>", f"<style>{CSS}</style></head><body>",
             "<h1>clbench leaderboard</h1>",
             '<p class="muted">One table per track (a shipped benchmark at a fixed version). Values in %, '
             "mean ± sample std over n seeds. Click a column header to sort; click again to reverse. "
             "✓ verified: a verification record in leaderboard/verifications/ (written by "
             "<code>clbench leaderboard verify --record</code> and committed by a maintainer) re-ran every seed "
             "from the submitted config and R agreed within the verifier's tolerance; hover for who, when and "
             "how close (docs/leaderboard.md).</p>",
             '<p><label><input type="checkbox" id="tuned-only"> only entries tuned on validation '
             "(clbench tune; docs/tuning.md)</label></p>"]
    for track, rows in track_rows:
        if not rows:
            continue
        tid = html_text(track["id"])
        parts.append(f'<section class="track"><h2>{html_text(track["name"])} v{track["version"]}</h2>'
                     f'<p class="muted">{html_text(track["description"])}</p>')
        cols = _columns(rows)
        heads = ['<th data-key="rank" class="sortable" data-first="ascending">#</th>',
                 '<th data-key="method" class="sortable text" data-first="ascending">Method</th>']
        for k, h in cols:
            first = "descending" if M.direction(k) == "+" else "ascending"
            heads.append(f'<th data-key="{k}" class="sortable" data-first="{first}" '
                         f'title="{k} ({M.direction(k)})">{h} ({M.direction(k)})</th>')
        heads += ['<th data-key="n" class="sortable" data-first="descending">n</th>',
                  '<th data-key="verified" class="sortable" data-first="descending">Verified</th>',
                  '<th data-key="config" class="text">Config</th>',
                  '<th data-key="chosen" class="sortable text" data-first="ascending">Chosen by</th>',
                  '<th data-key="time" class="sortable" data-first="ascending">Time/seed (s)</th>',
                  '<th data-key="memory" class="sortable" data-first="ascending" title="total memory the method '
                  'keeps: model, exemplars, extra model copies, other state (docs/memory.md)">Memory (MiB)</th>',
                  '<th data-key="links" class="text">Links</th>']
        parts.append(f'<table class="board" id="{tid}" data-sorted-by="acc:descending"><thead><tr>'
                     + "".join(heads) + "</tr></thead><tbody>")
        for rank, e in enumerate(rows, 1):
            st = e.status["status"]
            name, strat = _method_text(e)
            method = html_text(name) + (f" <code>{html_text(strat)}</code>" if strat else "")
            cells = [_td(str(rank), rank), _td(method, name, "text method", raw=True, title=_code_tip(e))]
            for k, _ in cols:
                s = e.metric(k)
                cells.append(_td(_pct(s), s["mean"]))
            links = []
            if e.heatmap:
                links.append(f'<a class="heatmap" href="{html_text(_rel(e.heatmap, out_dir))}">heatmap</a>')
            links.append(f'<a class="submission" href="{html_text(_rel(e.path, out_dir))}">json</a>')
            config = ((f'<span class="dev">{html_text(", ".join(e.deviations), 2000)}</span><br>' if e.deviations
                       else "") + f'<span class="hp">{html_text(_hp_text(e) or "defaults", 2000)}</span>')
            cells += [_td(str(len(e.sub["runs"])), len(e.sub["runs"])),
                      _td(STATUS_TEXT[st], STATUS_ORDER[st], st, title=_status_tip(e)),
                      _td(config, None, "text config", raw=True),
                      _td(_chosen(e), _chosen(e), "text chosen"),
                      _td(f"{e.sub['timing']['mean_per_seed_s']:.1f}", e.sub["timing"]["mean_per_seed_s"]),
                      _td(_mib_text(_memory_mib(e)), _memory_mib(e)),
                      _td(" · ".join(links), None, "text", raw=True)]
            tuned = "tuned" if selection.is_tuned(e.sub.get("selection")) else "other"
            parts.append(f'<tr data-id="{html_text(e.id)}" data-selection="{tuned}">' + "".join(cells) + "</tr>")
        parts.append("</tbody></table>" + "".join(f'<p class="muted note">{html_text(n)}</p>'
                                                  for n in _left_out(rows)) + "</section>")
    empty = [t for t, rows in track_rows if not rows]
    if empty:
        parts.append('<h2>Tracks without entries yet</h2><ul class="empty">')
        parts += [f"<li>{html_text(t['name'])} v{t['version']}: {html_text(t['description'])}</li>" for t in empty]
        parts.append("</ul>")
    if rejected:
        parts.append("<h2>Not ranked: invalid submissions, duplicate configurations, unreadable records</h2><ul>")
        for path, issues in rejected.items():
            parts.append(f"<li><code>{html_text(path.name)}</code>: "
                         f"{html_text('; '.join(str(i) for i in issues[:3]))}</li>")
        parts.append("</ul>")
    parts.append(f"<script>{JS}</script></body></html>")
    return "\n".join(parts) + "\n"


def build(submissions_dir="leaderboard/submissions", out_dir="leaderboard", records_dir=None,
          tuned_only: bool = False) -> dict:
    """The board's text (markdown and HTML, links relative to `out_dir`) without writing anything; `tuned_only`
    keeps the entries whose config was tuned on validation (clbench tune)."""
    out_dir = Path(out_dir)
    entries, rejected = collect(submissions_dir, records_dir)
    if tuned_only:
        entries = [e for e in entries if selection.is_tuned(e.sub.get("selection"))]
    for e in entries:
        e.heatmap = out_dir / "heatmaps" / f"{e.id}.png"
    track_rows = tracks(entries)
    return {"markdown": render_markdown(track_rows, out_dir, rejected),
            "html": render_html(track_rows, out_dir, rejected), "entries": entries, "rejected": rejected}


def render(submissions_dir="leaderboard/submissions", out_dir="leaderboard", records_dir=None,
           tuned_only: bool = False) -> dict:
    """Write LEADERBOARD.md, index.html and heatmaps/<id>.png; returns the paths and the files not ranked.
    A read-only or misplaced output folder fails with one line before any work."""
    out_dir = check_out_dir(out_dir, "--out")
    check_out_dir(out_dir / "heatmaps", "--out")
    (out_dir / "heatmaps").mkdir(parents=True, exist_ok=True)
    board = build(submissions_dir, out_dir, records_dir, tuned_only=tuned_only)
    for e in board["entries"]:
        write_heatmap(e.sub, e.heatmap)
    md, page = out_dir / "LEADERBOARD.md", out_dir / "index.html"
    write_text_atomic(md, board["markdown"])
    write_text_atomic(page, board["html"])
    return {"markdown": md, "html": page, "entries": [e.path for e in board["entries"]],
            "rejected": board["rejected"], "heatmaps": [e.heatmap for e in board["entries"]]}
