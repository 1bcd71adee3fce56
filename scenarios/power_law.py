"""Power-law rehearsal streams (Gandhi, Shah, Marupudi & Varma 2024, arXiv:2401.10393): after each new
task, earlier tasks come back, the more likely the more recently they were performed.

Any registered scenario is the base (permuted MNIST in the paper's v1); its experiences are the tasks.
After each new task t >= 1 comes R = `budget` samples of rehearsal of the earlier tasks i < t. The paper's
method section could not be checked; the abstract says "the probability of encountering a task decreases
as a power-law of the time since it was last performed". The readings, all at the same budget R:

lag="last_performed" (default): the abstract's process. Time runs in phases, fractional within a phase
    (the k-th sample of phase t, out of its N_t = |task t| + R samples, the new task's first, is at
    t + k/N_t). Each of the R rehearsal draws is one sample of one earlier task i, chosen with probability
    proportional to w(now - last_i), where last_i is when task i was last performed: trained as the new
    task or drawn for rehearsal (so a draw resets its task's lag). Draws come from the stream seed.
lag="introduced" (clbench v1 reconstruction): counts, not draws. Every earlier task gets
    n_i = R * w(t - i) / sum_j w(t - j) samples (t - i = phases since task i was introduced), made
    integers by `counts`.
lag="last_seen": as "introduced" with t - (last phase in which task i had samples); since every earlier
    task gets samples in every phase, all lags are 1 and this degenerates to uniform.

    w(lag) = lag ** -alpha            (schedule="power")
           = exp(-lambda * lag)       (schedule="exponential", the paper's v3 control)
           = 1                        (schedule="uniform", the non-power-law control)
    schedule="none": no rehearsal.
    mode="phase": the rehearsal is a separate experience (kind="rehearsal") right after task t;
    mode="mixed": it is mixed into task t's own experience (the clock is the same).

Integer counts (lag introduced/last_seen): "stochastic_rounding" (each n_i is the floor or ceiling of
its expectation, with probability given by the fraction, and the counts sum to exactly R: systematic
sampling), "sampled" (R draws of a task label with probabilities w_i / sum w: a multinomial), or
"largest_remainder" (deterministic rounding to a sum of R).

Each evaluation task counts as learned at the row of the experience that introduced it
(`Stream.learned_at`), and the description records the realised schedule of every phase (lags and
weights at its first draw, counts, and for draws the runs of consecutive draws of one task), so the
schedule can be checked in result.json and its power law re-fitted (`replay_draws`, `fit_exponent`).
The stream is plain experiences: any strategy runs on it unchanged.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from clbench.config import ConfigError
from clbench.errors import bad_value
from clbench.scenarios.common import check_positive_int, check_stream, generator, mix, take
from clbench.stream import Experience, Stream

SCHEDULES = ("power", "exponential", "uniform", "none")
LAGS = ("last_performed", "introduced", "last_seen")
MODES = ("phase", "mixed")
COUNTS = ("stochastic_rounding", "sampled", "largest_remainder")


def schedule_weights(lags: list[int], schedule: str, alpha: float, lam: float) -> torch.Tensor:
    """Unnormalised rehearsal weight of each earlier task from its lag (>= 1)."""
    lag = torch.as_tensor(lags, dtype=torch.float64)
    if schedule == "power":
        return lag.pow(-alpha)
    if schedule == "exponential":
        return torch.exp(-lam * lag)
    if schedule == "uniform":
        return torch.ones_like(lag)
    return torch.zeros_like(lag)


def integer_counts(weights: torch.Tensor, budget: int, method: str, g: torch.Generator) -> list[int]:
    """Split `budget` samples over tasks in proportion to `weights`."""
    if budget == 0 or float(weights.sum()) == 0.0:
        return [0] * len(weights)
    p = weights / weights.sum()
    if method == "sampled":
        draws = torch.multinomial(p, budget, replacement=True, generator=g)
        return torch.bincount(draws, minlength=len(p)).tolist()
    expect = p * budget
    base = expect.floor()
    frac = expect - base
    extra = int(round(float(frac.sum())))          # an integer up to float error
    if extra == 0:
        return base.long().tolist()
    if method == "largest_remainder":
        order = torch.argsort(frac, descending=True, stable=True)[:extra]
    else:  # systematic sampling: points u, u+1, ..., u+extra-1 over the cumulated fractions
        cum = frac.cumsum(0)
        cum = cum * (extra / cum[-1])
        points = torch.rand(1, generator=g, dtype=torch.float64) + torch.arange(extra, dtype=torch.float64)
        order = torch.bucketize(points, cum, right=True).clamp(max=len(p) - 1)
    bonus = torch.bincount(order, minlength=len(p))
    return (base.long() + bonus).tolist()


def phase_schedule(n_tasks: int, budget: int, schedule: str, alpha: float, lam: float, lag: str, counts: str,
                   seed: int) -> list[dict]:
    """lag introduced / last_seen: per phase t, the lag and weight of every earlier task and its count."""
    last_seen = list(range(n_tasks))              # phase in which each task was last seen
    phases = []
    for t in range(n_tasks):
        earlier = list(range(t))
        lags = [t - (i if lag == "introduced" else last_seen[i]) for i in earlier]
        w = schedule_weights(lags, schedule, alpha, lam)
        n = integer_counts(w, budget, counts, generator(seed, "power_law", "counts", t)) if t else []
        for i, k in zip(earlier, n):
            if k > 0:
                last_seen[i] = t
        phases.append({"phase": t, "lags": lags, "weights": [round(float(v), 6) for v in w], "counts": n})
    return phases


def draw_weights(lags: np.ndarray, schedule: str, alpha: float, lam: float) -> np.ndarray:
    """w(lag) of every candidate at one draw, up to a common factor (exponential shifted to stay finite)."""
    if schedule == "power":
        return lags ** -alpha
    if schedule == "exponential":
        return np.exp(-lam * (lags - lags.min()))
    return np.ones_like(lags)


def draw_times(task_samples: list[int], budget: int, t: int) -> tuple[float, np.ndarray]:
    """On the phase clock: when task t's own training ends, and the time of each of phase t's R draws."""
    n_t = task_samples[t] + budget
    return t + task_samples[t] / n_t, t + (task_samples[t] + np.arange(1, budget + 1)) / n_t


def last_performed_schedule(task_samples: list[int], budget: int, schedule: str, alpha: float, lam: float,
                            seed: int) -> list[dict]:
    """lag last_performed: R sequential draws per phase, each of one earlier task with probability
    proportional to w(time since it was last performed); see the module docstring for the clock."""
    if schedule == "none":
        budget = 0
    last = np.zeros(len(task_samples))           # when each task was last performed
    phases = []
    for t in range(len(task_samples)):
        r = budget if t else 0
        end_of_new, times = draw_times(task_samples, r, t)
        u = torch.rand(r, generator=generator(seed, "power_law", "draws", t), dtype=torch.float64).numpy()
        counts, runs, first = [0] * t, [], None
        for now, uj in zip(times, u):
            lags = now - last[:t]
            w = draw_weights(lags, schedule, alpha, lam)
            if first is None:
                first = (lags, w / w.sum())
            i = min(int(np.searchsorted(np.cumsum(w), uj * w.sum(), side="right")), t - 1)
            last[i] = now
            counts[i] += 1
            if runs and runs[-1][0] == i:
                runs[-1][1] += 1
            else:
                runs.append([i, 1])
        last[t] = end_of_new
        lags, p = first if first is not None else ([], [])
        phases.append({"phase": t, "lags": [round(float(v), 6) for v in lags],
                       "weights": [round(float(v), 6) for v in p], "counts": counts, "runs": runs})
    return phases


def replay_draws(task_samples: list[int], budget: int, phases: list[dict]) -> list[tuple[np.ndarray, int]]:
    """Every draw of a recorded last_performed schedule (result.json `stream.rehearsal`) as (lags of the
    candidate tasks at that draw, the task drawn), recomputed from the runs alone."""
    last = np.zeros(len(task_samples))
    out = []
    for t, ph in enumerate(phases):
        r = sum(n for _, n in ph.get("runs", [])) if t else 0
        end_of_new, times = draw_times(task_samples, r, t)
        chosen = [i for i, n in ph.get("runs", []) for _ in range(n)]
        for now, i in zip(times, chosen):
            out.append((now - last[:t], i))
            last[i] = now
        last[t] = end_of_new
    return out


def fit_exponent(draws: list[tuple[np.ndarray, int]], iterations: int = 50) -> tuple[float, float]:
    """Maximum-likelihood exponent alpha of P(task i drawn) = lag_i^-alpha / sum_j lag_j^-alpha over
    draws (a conditional logit in -log lag), with its standard error. Draws with one candidate carry no
    information and are skipped."""
    rows = [(np.log(lags), i) for lags, i in draws if len(lags) > 1]
    width = max(len(x) for x, _ in rows)
    x = np.full((len(rows), width), np.nan)
    for k, (lx, _) in enumerate(rows):
        x[k, :len(lx)] = lx
    mask = ~np.isnan(x)
    x = np.where(mask, x, 0.0)
    x_chosen = np.array([lx[i] for lx, i in rows])
    alpha = 1.0
    for _ in range(iterations):                 # Newton on the concave log-likelihood
        z = np.where(mask, -alpha * x, -np.inf)
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        mean = (p * x).sum(1)
        var = (p * x * x).sum(1) - mean ** 2
        grad, hess = float((mean - x_chosen).sum()), -float(var.sum())
        step = grad / hess
        alpha -= step
        if abs(step) < 1e-10:
            break
    return float(alpha), float(1 / math.sqrt(-hess))


class PowerLaw:
    """Power-law rehearsal of earlier tasks after each new task, on top of any base scenario."""

    def __init__(self, base: Optional[dict] = None, schedule: str = "power", alpha: float = 1.0, lam: float = 1.0,
                 budget: int = 1000, lag: str = "last_performed", mode: str = "phase",
                 counts: str = "stochastic_rounding"):
        for key, value, valid in (("schedule", schedule, SCHEDULES), ("lag", lag, LAGS), ("mode", mode, MODES),
                                  ("counts", counts, COUNTS)):
            if value not in valid:
                raise bad_value(f"scenario.{key}", f"{value!r}; valid choices: {', '.join(valid)}")
        self.base = dict(base or {"name": "permuted"})
        if "name" not in self.base:
            raise bad_value("scenario.base", "it needs a 'name' "
                              "(e.g. {name: permuted, n_experiences: 10})")
        if not isinstance(alpha, (int, float)) or alpha < 0:
            raise bad_value("scenario.alpha", f"expected a number >= 0, got {alpha!r}")
        if not isinstance(lam, (int, float)) or lam < 0:
            raise bad_value("scenario.lam", f"expected a number >= 0, got {lam!r}")
        self.schedule, self.alpha, self.lam = schedule, float(alpha), float(lam)
        self.budget = check_positive_int(budget, "budget", minimum=0)
        self.lag, self.mode, self.counts = lag, mode, counts

    def build_base(self, dataset, seed: int) -> Stream:
        from clbench.registry import SCENARIOS

        name = self.base["name"]
        options = {k: v for k, v in self.base.items() if k != "name"}
        try:
            scenario = SCENARIOS.get(name)(**options)
        except TypeError as e:
            raise ConfigError(f"bad 'scenario.base' options for '{name}': {e}") from None
        base = scenario.build(dataset, seed)
        if any(e.kind != "new" for e in base.experiences):
            raise ConfigError(f"scenario.base '{name}' already has rehearsal experiences; use a plain base")
        return base

    def build(self, dataset, seed: int) -> Stream:
        base = self.build_base(dataset, seed)
        tasks = base.experiences                      # task i = base experience i
        task_samples = [len(e.train) for e in tasks]
        if self.lag == "last_performed":
            schedule = last_performed_schedule(task_samples, self.budget, self.schedule, self.alpha, self.lam, seed)
        else:
            schedule = phase_schedule(len(tasks), self.budget, self.schedule, self.alpha, self.lam, self.lag,
                                      self.counts, seed)
        experiences, row_of_base = [], {}
        for t, exp in enumerate(tasks):
            # the samples of phase t's rehearsal: a random subset of each earlier task (repeated if k > its size)
            earlier = [(i, k) for i, k in enumerate(schedule[t]["counts"]) if k > 0]
            parts = [take(tasks[i].train, self.draw(len(tasks[i].train), k, generator(seed, "power_law", t, i)))
                     for i, k in earlier]
            rehearsed_ids = [tasks[i].task_id for i, _ in earlier]
            # the new task, then (phase mode) its rehearsal phase, or (mixed mode) both in one experience
            if self.mode == "mixed" and parts:
                exp = self.experience(len(experiences), [exp.train] + parts, exp.task_ids + rehearsed_ids, exp, "new")
            else:
                exp = Experience(index=len(experiences), train=exp.train, task_ids=list(exp.task_ids),
                                 classes=list(exp.classes), task_visible_at_test=exp.task_visible_at_test)
            row_of_base[t] = len(experiences)
            experiences.append(exp)
            if self.mode == "phase" and parts:
                experiences.append(self.experience(len(experiences), parts, rehearsed_ids, tasks[0], "rehearsal"))
        rehearsal = {"schedule": self.schedule, "alpha": self.alpha, "lambda": self.lam, "budget": self.budget,
                     "lag": self.lag, "mode": self.mode, "phases": schedule,
                     "total_rehearsed": sum(sum(p["counts"]) for p in schedule)}
        if self.lag == "last_performed":
            rehearsal["task_samples"] = task_samples      # the clock: replay_draws recomputes every draw's lags
        else:
            rehearsal["counts"] = self.counts
        return check_stream(Stream(
            name="power_law", experiences=experiences, eval_tasks=base.eval_tasks, n_classes=base.n_classes,
            input_shape=base.input_shape, setting=base.setting,
            learned_at=[row_of_base[r] for r in base.learned_rows()],
            description={**base.description, "stream_seed": int(seed), "base_scenario": self.base["name"],
                         "rehearsal": rehearsal}))

    @staticmethod
    def draw(n: int, k: int, g: torch.Generator) -> torch.Tensor:
        """k positions out of n: without replacement while k <= n, whole passes plus a remainder beyond."""
        reps = [torch.randperm(n, generator=g) for _ in range(math.ceil(k / n))]
        return torch.cat(reps)[:k]

    @staticmethod
    def experience(index: int, parts: list, task_ids: list[int], like: Experience, kind: str) -> Experience:
        train = mix(parts)
        return Experience(index=index, train=train, task_ids=list(dict.fromkeys(task_ids)), classes=train.classes(),
                          task_visible_at_test=like.task_visible_at_test, kind=kind)
