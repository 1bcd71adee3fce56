"""Continual-learning metrics as pure functions of the accuracy matrix.

Notation (0-based). `R[i][j]` is the accuracy (a fraction in [0, 1]) on evaluation task j after training
experience i; `b[j]` is the accuracy on task j before any training; `L[j]` is the row at which task j
counts as "just learned" (L[j] = j for ordinary streams, where experience j introduces task j; for
power-law rehearsal streams it is the experience that introduced task j, see docs/metrics.md).
`f` is the final row. "Earlier tasks" are those with L[j] < f.

Unscored entries. Under the evaluation schedule `eval.schedule=seen_next` (clbench/evaluator.py) row i scores
only the tasks learned by then and the next one (L[j] <= i + 1); the initial row and the final row are whole.
The entries it leaves out are None (JSON null; NaN once in an array). No metric here reads one, except as part
of a maximum over earlier rows (`forgetting`, `forgetting_max_incl_last`), which is then taken over the scored
rows; an unscored entry anywhere else is refused (`scored_entry`).

Every function returns a float, or None when undefined (e.g. BWT with a single task). Direction:
(+) higher is better, (-) lower is better. The conventions differ across the literature; each name here
says which one it follows (docs/metrics.md has the full table and sources).
"""
from __future__ import annotations

import warnings
from typing import Callable, Optional, Sequence

import numpy as np


def _prep(R, learned_at=None):
    R = np.asarray(R, dtype=np.float64)    # None (an unscored entry) becomes NaN
    if R.ndim != 2 or R.shape[0] == 0 or R.shape[1] == 0:
        raise ValueError(f"accuracy matrix must be a non-empty 2-D array, got shape {R.shape}")
    L = np.arange(R.shape[1]) if learned_at is None else np.asarray(learned_at, dtype=int)
    if L.shape != (R.shape[1],) or (L < 0).any() or (L >= R.shape[0]).any():
        raise ValueError(f"learned_at must give a row in 0..{R.shape[0] - 1} for each of the {R.shape[1]} tasks")
    for i, j in zip(*np.nonzero(np.isnan(R))):
        if scored_entry(int(i), int(j), L, R.shape[0]):
            raise ValueError(f"accuracy matrix entry R[{i}][{j}] is missing, but every schedule scores it (the "
                             f"tasks learned by row {i}, the next one, and the whole final row)")
    return R, L, R.shape[0] - 1


def scored_entry(i: int, j: int, learned_at, n_rows: int) -> bool:
    """Whether row i scores task j under every evaluation schedule: the tasks learned by then and the next one
    (L[j] <= i + 1), and every task in the final row. Row -1 (before training) is always whole."""
    return i < 0 or i == n_rows - 1 or int(learned_at[j]) <= i + 1


def _mean(values) -> Optional[float]:
    values = list(values)
    return float(np.mean(values)) if values else None


def acc(R, learned_at=None) -> float:
    """(+) Final average accuracy (GEM's ACC): mean_j R[f][j] over all evaluation tasks."""
    R, _, f = _prep(R, learned_at)
    return float(R[f].mean())


def learning_accuracy(R, learned_at=None) -> float:
    """(+) Learning accuracy (plasticity): mean_j R[L[j]][j], accuracy on each task just after learning it."""
    R, L, _ = _prep(R, learned_at)
    return float(np.mean([R[L[j], j] for j in range(R.shape[1])]))


def bwt(R, learned_at=None) -> Optional[float]:
    """(+) Backward transfer, GEM paper (T-1 denominator): mean over earlier tasks of R[f][j] - R[L[j]][j].

    Negative means forgetting. (GEM's released code divides by T instead; that is (T-1)/T times this.)
    """
    R, L, f = _prep(R, learned_at)
    return _mean(R[f, j] - R[L[j], j] for j in range(R.shape[1]) if L[j] < f)


def forgetting(R, learned_at=None) -> Optional[float]:
    """(-) Average forgetting, max-based (Chaudhry et al. 2018, RWalk; as in A-GEM's compute_fgt):
    mean over earlier tasks of max_{k<f} R[k][j] - R[f][j]. Can be negative if accuracy ends above its
    earlier maximum. The max is over the scored rows (under eval.schedule=seen_next: from row L[j]-1 on)."""
    R, L, f = _prep(R, learned_at)
    return _mean(np.nanmax(R[:f, j]) - R[f, j] for j in range(R.shape[1]) if L[j] < f)


def forgetting_first(R, learned_at=None) -> Optional[float]:
    """(-) Forgetting as Avalanche 0.6 defines StreamForgetting: mean over earlier tasks of
    R[L[j]][j] - R[f][j] (first value after training minus last). Equals -bwt."""
    R, L, f = _prep(R, learned_at)
    return _mean(R[L[j], j] - R[f, j] for j in range(R.shape[1]) if L[j] < f)


def forgetting_max_incl_last(R, learned_at=None) -> Optional[float]:
    """(-) Forgetting as Mammoth and AML compute it: max over all rows, the final one included, minus the
    final value; never negative. The max is over the scored rows (under eval.schedule=seen_next from row
    L[j]-1 on, exactly the entries Mammoth's own evaluation scores: seen tasks, plus the next one)."""
    R, L, f = _prep(R, learned_at)
    return _mean(np.nanmax(R[:, j]) - R[f, j] for j in range(R.shape[1]) if L[j] < f)


def fwt(R, initial, learned_at=None) -> Optional[float]:
    """(+) Forward transfer, GEM (T-1 denominator): mean over tasks learned after the first row of
    R[L[j]-1][j] - b[j], with b the accuracy before any training."""
    R, L, _ = _prep(R, learned_at)
    b = np.asarray(initial, dtype=np.float64)
    if b.shape != (R.shape[1],):
        raise ValueError(f"initial accuracy row must have {R.shape[1]} entries, got shape {b.shape}")
    return _mean(R[L[j] - 1, j] - b[j] for j in range(R.shape[1]) if L[j] >= 1)


def acc_over_time(R, learned_at=None) -> float:
    """(+) Accuracy over time, Diaz-Rodriguez et al. 2018 'A': mean of all entries R[i][j] with task j
    already learned at row i (the lower triangle, diagonal included)."""
    R, L, _ = _prep(R, learned_at)
    return float(np.mean([R[i, j] for i in range(R.shape[0]) for j in range(R.shape[1]) if L[j] <= i]))


def acc_seen(row: Sequence[float], learned_at: Sequence[int], row_index: int) -> Optional[float]:
    """(+) Mean accuracy of one row over the tasks learned by then (L[j] <= row_index), tasks weighing
    equally; None before any task is learned (row_index -1 is the row before training)."""
    seen = [a for a, l in zip(row, learned_at) if l <= row_index]
    return float(np.mean(seen)) if seen else None


def avg_incremental_acc(R, learned_at=None, task_sizes: Optional[Sequence[int]] = None) -> float:
    """(+) Average incremental accuracy (Rebuffi et al. 2017, iCaRL): mean over rows i of the accuracy on
    all test data of the tasks learned so far (L[j] <= i). With `task_sizes` (test samples per task) each
    row is the sample-weighted pooled accuracy, exactly iCaRL's / continuum's definition; without it the
    tasks weigh equally (identical when the tasks have equal test sets)."""
    R, L, _ = _prep(R, learned_at)
    w = np.ones(R.shape[1]) if task_sizes is None else np.asarray(task_sizes, dtype=np.float64)
    if w.shape != (R.shape[1],):
        raise ValueError(f"task_sizes must have {R.shape[1]} entries, got shape {w.shape}")
    rows = []
    for i in range(R.shape[0]):
        seen = L <= i
        if seen.any():
            rows.append(float((R[i, seen] * w[seen]).sum() / w[seen].sum()))
    return float(np.mean(rows))


def bwt_all_pairs(R, learned_at=None) -> Optional[float]:
    """(+) Backward transfer over time, Diaz-Rodriguez et al. 2018: mean over all pairs (i, j) with
    L[j] < i of R[i][j] - R[L[j]][j]."""
    R, L, _ = _prep(R, learned_at)
    return _mean(R[i, j] - R[L[j], j] for i in range(R.shape[0]) for j in range(R.shape[1]) if L[j] < i)


def rem(R, learned_at=None) -> Optional[float]:
    """(+) Remembering, Diaz-Rodriguez et al. 2018: 1 - |min(bwt_all_pairs, 0)|."""
    v = bwt_all_pairs(R, learned_at)
    return None if v is None else 1.0 - abs(min(v, 0.0))


def bwt_plus(R, learned_at=None) -> Optional[float]:
    """(+) Positive backward transfer, Diaz-Rodriguez et al. 2018: max(bwt_all_pairs, 0)."""
    v = bwt_all_pairs(R, learned_at)
    return None if v is None else max(v, 0.0)


def intransigence(R, reference: Sequence[float], learned_at=None) -> float:
    """(-) Intransigence (Chaudhry et al. 2018, RWalk): mean_j a*[j] - R[L[j]][j], with a*[j] the accuracy
    on task j of a reference model trained jointly on the data of tasks 0..j (see `reference_accuracy`)."""
    R, L, _ = _prep(R, learned_at)
    a = np.asarray(reference, dtype=np.float64)
    if a.shape != (R.shape[1],):
        raise ValueError(f"reference accuracies must have {R.shape[1]} entries, got shape {a.shape}")
    return float(np.mean([a[j] - R[L[j], j] for j in range(R.shape[1])]))


def reference_accuracy(ref_R, ref_learned_at=None, final_row_only: bool = False) -> tuple[list[float], str]:
    """a*[j] for intransigence, from the accuracy matrix of a joint-training reference run.

    - "prefix-joint": a reference whose row k was trained on the data of tasks 0..k (`joint` with
      `strategy.every_experience=true`, re-initialised each time: Chaudhry's a* exactly; or `cumulative`,
      which continues from the previous model) gives a*[j] = its R[L[j]][j].
    - "final-joint": a reference trained once on all tasks (`joint`'s default trains at the last
      experience only; or a one-row matrix) gives the usual cheaper approximation a*[j] = its final
      accuracy on task j.
    """
    R = np.asarray(ref_R, dtype=np.float64)
    if R.ndim == 2 and R.shape[0] >= 1 and (R.shape[0] == 1 or final_row_only):
        return [float(v) for v in R[-1]], "final-joint"
    R, L, _ = _prep(R, ref_learned_at)
    return [float(R[L[j], j]) for j in range(R.shape[1])], "prefix-joint"


def anytime_accuracy(unit_acc: dict, unit_n: dict, exposed: Sequence) -> Optional[float]:
    """(+) Anytime accuracy as i-Blurry's code computes it (Koh et al. 2022, `online_evaluate`): correct
    predictions over test samples, pooled over the test samples of the units (classes) exposed in the stream
    so far. `unit_acc[u]` is the accuracy on unit u's `unit_n[u]` test samples; None when nothing is exposed."""
    n = sum(unit_n[u] for u in exposed)
    if not n:
        return None
    return float(sum(unit_acc[u] * unit_n[u] for u in exposed) / n)


def anytime_auc(acc_seen_curve: Sequence[float]) -> Optional[float]:
    """(+) Area under the anytime accuracy curve (Koh et al. 2022, i-Blurry A_AUC), normalised as their
    code does (`A_auc = np.mean(eval_results["test_acc"])`): the mean over equally spaced evaluation points
    (every `eval.every_samples` stream samples, as their `eval_period`) of the anytime accuracy, i.e. the
    area divided by its length. Points with nothing seen yet (None) are skipped."""
    values = [float(v) for v in acc_seen_curve if v is not None]
    return float(np.mean(values)) if values else None


def learned_at_from_experiences(experiences: Sequence[dict], n_tasks: int) -> list[int]:
    """The "just learned" row of each task from a stream description's experiences (result.json
    `stream.experiences`): the first experience of kind "new" whose primary task id (task_ids[0]) is j,
    else the first experience that contains task j at all. Power-law rehearsal phases (kind "rehearsal")
    never count as learning a task: task j is "just learned" right after the experience introducing it."""
    out = []
    for j in range(n_tasks):
        rows = [e["index"] for e in experiences if e.get("kind", "new") == "new" and e["task_ids"][0] == j]
        rows = rows or [e["index"] for e in experiences if j in e["task_ids"]]
        if not rows:
            raise ValueError(f"task {j} appears in no experience")
        out.append(int(rows[0]))
    return out


# name -> (function of (R, initial, learned_at, task_sizes), direction, one-line definition).
# The order is the display order; docs/metrics.md has the formulas and sources.
METRICS: dict[str, tuple[Callable, str, str]] = {
    "acc": (lambda R, b, L, n: acc(R, L), "+", "final average accuracy (GEM ACC)"),
    "bwt": (lambda R, b, L, n: bwt(R, L), "+", "backward transfer (GEM paper, T-1 denominator)"),
    "fwt": (lambda R, b, L, n: fwt(R, b, L), "+", "forward transfer (GEM, against the initial row)"),
    "forgetting": (lambda R, b, L, n: forgetting(R, L), "-", "average forgetting, max-based (Chaudhry RWalk)"),
    "forgetting_first": (lambda R, b, L, n: forgetting_first(R, L), "-",
                         "forgetting as Avalanche: first-after-training minus last"),
    "forgetting_max_incl_last": (lambda R, b, L, n: forgetting_max_incl_last(R, L), "-",
                                 "forgetting as Mammoth/AML: max incl. last row minus last"),
    "learning_accuracy": (lambda R, b, L, n: learning_accuracy(R, L), "+", "accuracy just after learning"),
    "acc_over_time": (lambda R, b, L, n: acc_over_time(R, L), "+",
                      "accuracy over time, lower triangle (Diaz-Rodriguez A)"),
    "avg_incremental_acc": (lambda R, b, L, n: avg_incremental_acc(R, L, n), "+",
                            "average incremental accuracy (iCaRL, sample-weighted)"),
    "bwt_all_pairs": (lambda R, b, L, n: bwt_all_pairs(R, L), "+", "BWT over all pairs (Diaz-Rodriguez)"),
    "rem": (lambda R, b, L, n: rem(R, L), "+", "remembering, 1 - |min(bwt_all_pairs, 0)|"),
    "bwt_plus": (lambda R, b, L, n: bwt_plus(R, L), "+", "positive backward transfer, max(bwt_all_pairs, 0)"),
}

# Metrics computed outside compute_all (need more than R): direction and definition.
EXTRA_METRICS: dict[str, tuple[str, str]] = {
    "acc_task_masked": ("+", "final average task-IL accuracy (logits masked to the task's classes)"),
    "intransigence": ("-", "intransigence against a joint-training reference (Chaudhry RWalk)"),
    "anytime_acc_auc": ("+", "area under the anytime accuracy curve (i-Blurry A_AUC, normalised as their code)"),
}


# Metrics that carry no information about the method in a setting: every method gets a value fixed by
# something else. Reports and the board show them with this reason (or leave them out), never ranked.
UNINFORMATIVE: dict[str, dict[str, str]] = {
    "class-il": {
        "fwt": "class-IL: before task j is trained its classes have never been trained, and a single head trained "
               "on other classes does not predict them, so R[j-1][j] = 0 and FWT is minus the initial row (the "
               "untrained network's chance accuracy) for every method",
    },
}


def uninformative(name: str, setting: Optional[str]) -> Optional[str]:
    """Why metric `name` carries no information in `setting` (None: it does)."""
    return UNINFORMATIVE.get(setting or "", {}).get(name)


def compute_all(R, initial, learned_at=None, reference: Optional[Sequence[float]] = None,
                task_sizes: Optional[Sequence[int]] = None) -> dict:
    """Every metric from R, the initial row and (optionally) a joint-training reference a*."""
    out = {name: fn(R, initial, learned_at, task_sizes) for name, (fn, _, _) in METRICS.items()}
    if reference is not None:
        out["intransigence"] = intransigence(R, reference, learned_at)
    return out


def summarize(R, initial, learned_at=None, *, setting: Optional[str] = None,
              task_sizes: Optional[Sequence[int]] = None, task_masked=None,
              reference: Optional[Sequence[float]] = None,
              anytime_acc_seen: Optional[Sequence[Optional[float]]] = None) -> dict:
    """The metrics dict of one run: the one function the engine (result.json `metrics`), `clbench report`
    and the leaderboard's `submit` and `validate` share, so they cannot disagree.

    Every metric of `compute_all`; `intransigence` with a reference a*; `anytime_acc_auc` with the anytime
    curve; `acc_task_masked` (final accuracy of the task-masked R) in class-IL only: in task-IL the task id
    is already given at test time and in domain-IL every task holds every class, so there the mask changes
    nothing and the number would only repeat `acc`.
    """
    out = compute_all(R, initial, learned_at, reference=reference, task_sizes=task_sizes)
    if setting == "class-il" and task_masked is not None:
        out["acc_task_masked"] = acc(task_masked, learned_at)
    if anytime_acc_seen is not None:
        out["anytime_acc_auc"] = anytime_auc(anytime_acc_seen)
    return out


def mean_std(values) -> dict:
    """{"mean", "std", "n"} over seeds: the one place clbench aggregates repeats (report, sweep summaries,
    leaderboard summaries, figures).

    `values` are numbers, or equally shaped arrays (e.g. one accuracy matrix per seed; mean and std are
    then arrays). Undefined values (None, NaN) are left out and `n` counts the rest. `std` is the sample
    standard deviation (ddof = 1), None for a single value; `mean` is None when nothing is left. In an
    array, an entry that is None / NaN in every value (one eval.schedule=seen_next does not score) stays NaN.
    """
    kept = [v for v in values if v is not None and not np.isnan(np.asarray(v, dtype=np.float64)).all()]
    if not kept:
        return {"mean": None, "std": None, "n": 0}
    a = np.asarray(kept, dtype=np.float64)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)       # all-NaN entries: NaN, as documented
        mean, std = np.nanmean(a, 0), (np.nanstd(a, 0, ddof=1) if len(kept) > 1 else None)
    if a.ndim == 1:
        mean, std = float(mean), (None if std is None else float(std))
    return {"mean": mean, "std": std, "n": len(kept)}


def pm(stat: Optional[dict], missing: str = "-") -> str:
    """A mean_std summary as text in %: "81.15 ± 3.12" ("81.15" for one value, `missing` when there is none)."""
    if not stat or stat.get("mean") is None:
        return missing
    return f"{100 * stat['mean']:.2f}" + (f" ± {100 * stat['std']:.2f}" if stat.get("std") is not None else "")


def direction(name: str) -> str:
    """'+' (higher is better) or '-' (lower is better)."""
    if name in METRICS:
        return METRICS[name][1]
    if name in EXTRA_METRICS:
        return EXTRA_METRICS[name][0]
    return "+"


def describe(name: str) -> str:
    """The one-line definition of a metric (empty when unknown)."""
    if name in METRICS:
        return METRICS[name][2]
    return EXTRA_METRICS.get(name, ("", ""))[1]
