"""Figures drawn from result.json files (matplotlib, headless). Accuracies are shown in %.

Every function takes one result or a list of results of the same configuration (its seeds) and draws
the mean over seeds, with the spread (std) where there is more than one seed (clbench.metrics.mean_std).
Figures are returned open; `save` writes a PNG and closes it. Text taken from results goes through
clbench.escape.plot_text, so a name such as `$\\macro$` is drawn as written, never parsed as mathtext.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from clbench.escape import plot_text  # noqa: E402
from clbench.metrics import acc_seen, describe, direction, mean_std  # noqa: E402

COLORS = plt.get_cmap("tab10").colors


def _as_list(results) -> list[dict]:
    return [results] if isinstance(results, dict) else list(results)


def _title(results: list[dict], what: str, label: str | None = None) -> str:
    cfg = results[0].get("config", {})
    bench = cfg.get("benchmark", {}).get("name", "")
    name = label or cfg.get("strategy", {}).get("name", "")
    seeds = sorted({r.get("seed") for r in results})
    seed_txt = f"seed {seeds[0]}" if len(seeds) == 1 else f"mean over {len(results)} runs (seeds {', '.join(map(str, seeds))})"
    return f"{what}\n{plot_text(bench)} / {plot_text(name)} - {seed_txt}"


def _stack(results: list[dict], key: str) -> np.ndarray:
    """runs x rows x cols of one matrix key, in %."""
    return np.stack([np.asarray(r[key], dtype=float) for r in results]) * 100


def _task_labels(results: list[dict]) -> list[str]:
    """T<j>, with its classes when every run has the same ones (seeds may draw different class orders)."""
    per_run = [[t.get("classes") for t in r.get("stream", {}).get("eval_tasks", [])] for r in results]
    tasks = per_run[0] if all(p == per_run[0] for p in per_run) else []
    n = len(results[0]["initial_accuracy"])
    out = []
    for j in range(n):
        classes = tasks[j] if j < len(tasks) else None
        if classes and len(classes) <= 3:
            out.append(f"T{j}\n({','.join(map(str, classes))})")
        else:
            out.append(f"T{j}")
    return out


def _learned_at(result: dict) -> list[int]:
    return list(result.get("stream", {}).get("learned_at") or range(len(result["initial_accuracy"])))


def heatmap_figure(results, label: str | None = None):
    """The accuracy matrix as an annotated heatmap (initial row on top); the cells where each task was
    just learned are outlined. With several seeds: mean, and +-std under each value."""
    results = _as_list(results)
    R = _stack(results, "accuracy_matrix")
    b = _stack([{"m": [r["initial_accuracy"]]} for r in results], "m")
    stats = mean_std(list(np.concatenate([b, R], axis=1)))   # over runs of (1 + rows) x cols
    mean, std = stats["mean"], stats["std"]
    n_rows, n_cols = mean.shape
    fig, ax = plt.subplots(figsize=(1.6 + 0.85 * n_cols, 1.3 + 0.6 * n_rows), dpi=120)
    im = ax.imshow(mean, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for i in range(n_rows):
        for j in range(n_cols):
            if np.isnan(mean[i, j]):          # not scored (eval.schedule=seen_next): left blank
                continue
            txt = f"{mean[i, j]:.0f}" if std is None else f"{mean[i, j]:.0f}\n±{std[i, j]:.0f}"
            ax.text(j, i, txt, ha="center", va="center", fontsize=8 if std is None else 7,
                    color="white" if mean[i, j] < 60 else "black")
    for j, row in enumerate(_learned_at(results[0])):  # the "just learned" cell of each task
        ax.add_patch(plt.Rectangle((j - 0.5, row + 1 - 0.5), 1, 1, fill=False, edgecolor="red", lw=1.6))
    ax.axhline(0.5, color="white", lw=2)
    ax.set_xticks(range(n_cols), _task_labels(results), fontsize=8)
    kinds = [e.get("kind", "new") for e in results[0].get("stream", {}).get("experiences", [])]
    ylabels = ["init"] + [f"after exp {i}" + (" (reh.)" if i < len(kinds) and kinds[i] == "rehearsal" else "")
                          for i in range(n_rows - 1)]
    ax.set_yticks(range(n_rows), ylabels, fontsize=8)
    ax.set_xlabel("evaluation task" + (" (classes)" if "\n" in "".join(_task_labels(results)) else ""))
    ax.set_ylabel("after training on")
    ax.set_title(_title(results, "Accuracy matrix R (%), red: task just learned", label), fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="accuracy (%)")
    fig.tight_layout()
    return fig


def task_curves_figure(results, label: str | None = None):
    """Accuracy on each task (one line per task) after each training experience, from before training
    to the end; the star marks where the task was just learned. Shaded: +-std over seeds."""
    results = _as_list(results)
    R = _stack(results, "accuracy_matrix")
    b = _stack([{"m": [r["initial_accuracy"]]} for r in results], "m")
    stats = mean_std(list(np.concatenate([b, R], axis=1)))
    mean = stats["mean"]
    std = stats["std"] if stats["std"] is not None else np.zeros_like(mean)
    x = np.arange(mean.shape[0])
    learned = _learned_at(results[0])
    labels = [lab.replace("\n", " ") for lab in _task_labels(results)]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.0 + 0.7 * len(x)), 4.2), dpi=120)
    for j in range(mean.shape[1]):
        c = COLORS[j % len(COLORS)]
        ax.plot(x, mean[:, j], "-o", color=c, ms=3.5, lw=1.6, label=labels[j])
        if len(results) > 1:
            ax.fill_between(x, mean[:, j] - std[:, j], mean[:, j] + std[:, j], color=c, alpha=0.15, lw=0)
        ax.plot([learned[j] + 1], [mean[learned[j] + 1, j]], "*", color=c, ms=12, mec="black", mew=0.6)
    avg_seen = [_nan(acc_seen(mean[i], learned, i - 1)) for i in x]   # row 0 of `mean` is the initial row
    ax.plot(x, avg_seen, "--", color="black", lw=2, label="mean over tasks learned so far")
    kinds = [e.get("kind", "new") for e in results[0].get("stream", {}).get("experiences", [])]
    ax.set_xticks(x, ["init"] + [f"{i}" + ("\nreh." if i < len(kinds) and kinds[i] == "rehearsal" else "")
                                 for i in range(len(x) - 1)])
    ax.set_xlabel("after training experience")
    return _finish_accuracy_axes(fig, ax, _title(results, "Per-task accuracy across experiences (star: just learned)",
                                                 label))


def _finish_accuracy_axes(fig, ax, title: str):
    """Shared look of the accuracy-over-time charts: % axis, grid, title, legend outside on the right."""
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    return fig


def _nan(v):
    return np.nan if v is None else v


def anytime_figure(results, label: str | None = None):
    """Anytime evaluation: accuracy on what the stream has shown so far, every N stream samples (or
    training steps): the curve whose mean is anytime_acc_auc, with experience boundaries, plus each task's
    accuracy."""
    results = [r for r in _as_list(results) if r.get("anytime")]
    if not results:
        return None
    a0 = results[0]["anytime"]
    by_samples = bool(a0.get("every_samples"))          # x axis: stream samples, or training steps
    key, row_key = ("samples", "row_samples") if by_samples else ("step", "row_steps")
    steps = np.asarray(a0[key])
    curves = [r["anytime"] for r in results if r["anytime"][key] == a0[key]]
    seen = np.asarray([c["acc_seen"] for c in curves], dtype=float) * 100
    per_task = np.asarray([c["accuracy"] for c in curves], dtype=float).mean(0) * 100
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=120)
    for j in range(per_task.shape[1]):
        ax.plot(steps, per_task[:, j], lw=0.9, alpha=0.55, color=COLORS[j % len(COLORS)], label=f"T{j}")
    stats = mean_std(list(seen))
    m = stats["mean"] if stats["n"] else seen.mean(0)   # a curve with undefined points: plain mean, no band
    seen_label = "seen tasks" if a0.get("accuracy_rule", "seen_tasks") == "seen_tasks" else "exposed classes"
    ax.plot(steps, m, color="black", lw=2.2, label=f"{seen_label} (area {np.nanmean(m):.1f}%)")
    if stats["std"] is not None:
        s = stats["std"]
        ax.fill_between(steps, m - s, m + s, color="black", alpha=0.15, lw=0)
    for st in a0.get(row_key, [])[1:-1]:
        ax.axvline(st, color="grey", ls=":", lw=1)
    unit = "stream samples" if by_samples else "steps"
    every = a0["every_samples"] if by_samples else a0["every_steps"]
    ax.set_xlabel(f"{unit} (evaluated every {every}; dotted: experience ends)")
    return _finish_accuracy_axes(fig, ax, _title(results, "Anytime accuracy", label))


def comparison_figure(rows: Sequence[dict], metrics: Sequence[str], title: str = ""):
    """Small multiples, one panel per metric: a bar per configuration (mean over seeds) with std error
    bars and the value written on the bar. Rows are report.aggregate rows of one benchmark."""
    metrics = [m for m in metrics if any(m in r["metrics"] and r["metrics"][m]["mean"] is not None for r in rows)]
    n = len(metrics)
    ncols = min(n, 3)
    nrows = (n + ncols - 1) // ncols
    width = max(3.4, 0.55 * len(rows) + 1.4)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, 3.3 * nrows + 0.6), dpi=120, squeeze=False)
    labels = [plot_text(r["label"]) for r in rows]
    for k, name in enumerate(metrics):
        ax = axes[k // ncols][k % ncols]
        vals = [r["metrics"].get(name, {}) for r in rows]
        means = np.array([100 * v["mean"] if v.get("mean") is not None else np.nan for v in vals])
        stds = np.array([100 * v["std"] if v.get("std") is not None else 0.0 for v in vals])
        x = np.arange(len(rows))
        ax.bar(x, means, yerr=stds, capsize=4, color=[COLORS[i % len(COLORS)] for i in x], alpha=0.85,
               error_kw={"lw": 1.2})
        for i, (m, s) in enumerate(zip(means, stds)):
            if not np.isnan(m):
                ax.annotate(f"{m:.1f}", (i, m + (s if m >= 0 else -s)), textcoords="offset points",
                            xytext=(0, 3 if m >= 0 else -10), ha="center", fontsize=7)
        ax.axhline(0, color="black", lw=0.8)
        arrow = "higher is better" if direction(name) == "+" else "lower is better"
        ax.set_title(f"{name} (%) - {arrow}\n{describe(name)}", fontsize=8)
        ax.set_xticks(x, labels, rotation=30 if len(rows) > 3 else 0, ha="right" if len(rows) > 3 else "center",
                      fontsize=7)
        ax.grid(axis="y", alpha=0.3)
        lo, hi = np.nanmin(np.minimum(means - stds, 0)), np.nanmax(np.maximum(means + stds, 0))
        pad = 0.12 * max(hi - lo, 1.0)
        ax.set_ylim(lo - (pad if lo < 0 else 0), hi + pad)
    for k in range(n, nrows * ncols):
        axes[k // ncols][k % ncols].axis("off")
    ns = sorted({r["n"] for r in rows})
    fig.suptitle(f"{plot_text(title)} - mean ± std over seeds (n = {', '.join(map(str, ns))})", fontsize=10)
    fig.tight_layout()
    return fig


def accuracy_curves_figure(groups: Sequence[tuple[str, list[dict]]], title: str = ""):
    """Mean accuracy on the tasks learned so far after each experience, one line per configuration
    (mean +- std over seeds): how the strategies compare along the stream."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=120)
    for k, (label, results) in enumerate(groups):
        curves = []
        for r in results:
            R = np.asarray(r["accuracy_matrix"], dtype=float)
            L = _learned_at(r)
            curves.append([100 * _nan(acc_seen(R[i], L, i)) for i in range(R.shape[0])])
        if len({len(c) for c in curves}) != 1:
            continue
        stats = mean_std([np.asarray(cv) for cv in curves])
        m = stats["mean"] if stats["n"] else np.nanmean(curves, axis=0)
        x = np.arange(len(m))
        c = COLORS[k % len(COLORS)]
        ax.plot(x, m, "-o", color=c, ms=4, lw=1.8, label=f"{plot_text(label)} (n={len(results)})")
        if stats["std"] is not None:
            s = stats["std"]
            ax.fill_between(x, m - s, m + s, color=c, alpha=0.15, lw=0)
    ax.set_xlabel("after training experience")
    ax.set_ylabel("mean accuracy on tasks learned so far (%)")
    ax.set_ylim(-3, 103)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.set_title(f"{plot_text(title)} - accuracy along the stream (mean ± std over seeds)", fontsize=9)
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


# ----- accuracy against memory (zoo3a, issue 16: the memory-aligned comparison of "A Model or 603 Exemplars") ----
def memory_figure(rows: Sequence[dict], metric: str = "acc", title: str = ""):
    """Accuracy (mean ± std over seeds) against total memory (MiB, log scale): one point per configuration
    (report rows carrying `memory`), the configurations of one strategy joined in order of memory."""
    fig, ax = plt.subplots(figsize=(7.5, 4.6), dpi=120)
    by_strategy: dict[str, list[dict]] = {}
    for r in rows:
        if r.get("memory") and r["memory"]["total_mib"] is not None and r["metrics"].get(metric, {}).get("mean") is not None:
            by_strategy.setdefault(r["strategy"], []).append(r)
    for k, (strategy, rs) in enumerate(sorted(by_strategy.items())):
        rs = sorted(rs, key=lambda r: r["memory"]["total_mib"])
        x = [r["memory"]["total_mib"] for r in rs]
        y = [100 * r["metrics"][metric]["mean"] for r in rs]
        err = [100 * (r["metrics"][metric]["std"] or 0.0) for r in rs]
        c = COLORS[k % len(COLORS)]
        ax.errorbar(x, y, yerr=err, fmt="-o", color=c, ms=5, lw=1.5, capsize=3, label=plot_text(strategy))
        for r, xi, yi in zip(rs, x, y):
            if r["label"] != strategy:
                text = r["label"][len(strategy):].strip(" ()")
                ax.annotate(plot_text(text if len(text) <= 32 else text[:30] + ".."), (xi, yi), textcoords="offset points",
                            xytext=(4, -10), fontsize=6, color=c)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.3g"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("total memory (MiB): model + exemplars + kept models + other kept state")
    ax.set_ylabel(f"{metric} (%)")
    ax.grid(alpha=0.3, which="both")
    ax.set_title(plot_text(f"{title} - {metric} against total memory (mean ± std over seeds)"), fontsize=9)
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig
