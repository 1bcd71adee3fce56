"""Continual-learning metrics as pure functions of the accuracy matrix.

Notation (0-based). `R[i][j]` is the accuracy (a fraction in [0, 1]) on evaluation task j after training
experience i; `b[j]` is the accuracy on task j before any training; `L[j]` is the row at which task j
counts as "just learned" (L[j] = j for ordinary streams, where experience j introduces task j; for
power-law rehearsal streams it is the experience that introduced task j, see docs/metrics.md).
`f` is the final row. "Earlier tasks" are those with L[j] < f.

Every function returns a float, or None when undefined (e.g. BWT with a single task). Direction:
(+) higher is better, (-) lower is better. The conventions differ across the literature; each name here
says which one it follows (docs/metrics.md has the full table and sources).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np


def _prep(R, learned_at=None):
    R = np.asarray(R, dtype=np.float64)
    if R.ndim != 2 or R.shape[0] == 0 or R.shape[1] == 0:
        raise ValueError(f"accuracy matrix must be a non-empty 2-D array, got shape {R.shape}")
    L = np.arange(R.shape[1]) if learned_at is None else np.asarray(learned_at, dtype=int)
    if L.shape != (R.shape[1],) or (L < 0).any() or (L >= R.shape[0]).any():
        raise ValueError(f"learned_at must give a row in 0..{R.shape[0] - 1} for each of the {R.shape[1]} tasks")
    return R, L, R.shape[0] - 1


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
    earlier maximum."""
    R, L, f = _prep(R, learned_at)
    return _mean(R[:f, j].max() - R[f, j] for j in range(R.shape[1]) if L[j] < f)


def forgetting_first(R, learned_at=None) -> Optional[float]:
    """(-) Forgetting as Avalanche 0.6 defines StreamForgetting: mean over earlier tasks of
    R[L[j]][j] - R[f][j] (first value after training minus last). Equals -bwt."""
    R, L, f = _prep(R, learned_at)
    return _mean(R[L[j], j] - R[f, j] for j in range(R.shape[1]) if L[j] < f)


def forgetting_max_incl_last(R, learned_at=None) -> Optional[float]:
    """(-) Forgetting as Mammoth and AML compute it: max over all rows, the final one included, minus the
    final value; never negative."""
    R, L, f = _prep(R, learned_at)
    return _mean(R[:, j].max() - R[f, j] for j in range(R.shape[1]) if L[j] < f)


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


def avg_incremental_acc(R, learned_at=None) -> float:
    """(+) Average incremental accuracy (iCaRL, task-weighted): mean over rows i of the mean accuracy on
    the tasks learned so far, mean_{j: L[j] <= i} R[i][j]."""
    R, L, _ = _prep(R, learned_at)
    rows = [np.mean([R[i, j] for j in range(R.shape[1]) if L[j] <= i]) for i in range(R.shape[0])
            if (L <= i).any()]
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
    """(-) Intransigence (Chaudhry et al. 2018): mean_j a*[j] - R[L[j]][j], with a*[j] the accuracy on task j
    of a reference model trained jointly on tasks 0..j (from a joint-training run)."""
    R, L, _ = _prep(R, learned_at)
    a = np.asarray(reference, dtype=np.float64)
    if a.shape != (R.shape[1],):
        raise ValueError(f"reference accuracies must have {R.shape[1]} entries, got shape {a.shape}")
    return float(np.mean([a[j] - R[L[j], j] for j in range(R.shape[1])]))


# name -> (function of (R, initial, learned_at), direction). The order is the display order.
METRICS: dict[str, tuple[Callable, str]] = {
    "acc": (lambda R, b, L: acc(R, L), "+"),
    "bwt": (lambda R, b, L: bwt(R, L), "+"),
    "fwt": (lambda R, b, L: fwt(R, b, L), "+"),
    "forgetting": (lambda R, b, L: forgetting(R, L), "-"),
    "forgetting_first": (lambda R, b, L: forgetting_first(R, L), "-"),
    "forgetting_max_incl_last": (lambda R, b, L: forgetting_max_incl_last(R, L), "-"),
    "learning_accuracy": (lambda R, b, L: learning_accuracy(R, L), "+"),
    "acc_over_time": (lambda R, b, L: acc_over_time(R, L), "+"),
    "avg_incremental_acc": (lambda R, b, L: avg_incremental_acc(R, L), "+"),
    "bwt_all_pairs": (lambda R, b, L: bwt_all_pairs(R, L), "+"),
    "rem": (lambda R, b, L: rem(R, L), "+"),
    "bwt_plus": (lambda R, b, L: bwt_plus(R, L), "+"),
}


def compute_all(R, initial, learned_at=None, reference: Optional[Sequence[float]] = None) -> dict:
    """Every metric from R, the initial row and (optionally) a joint-training reference."""
    out = {name: fn(R, initial, learned_at) for name, (fn, _) in METRICS.items()}
    if reference is not None:
        out["intransigence"] = intransigence(R, reference, learned_at)
    return out


def direction(name: str) -> str:
    if name == "intransigence":
        return "-"
    return METRICS[name][1] if name in METRICS else "+"
