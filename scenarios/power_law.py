"""Power-law rehearsal streams (Gandhi, Shah, Marupudi & Varma 2024, arXiv:2401.10393): after each new
task t, earlier tasks come back with amounts that fall as a power law of their lag.

Any registered scenario is the base (permuted MNIST in the paper's v1); its experiences are the tasks.
For t = 2..T, with R = `budget` samples per phase and earlier tasks i < t:

    lag_i = t - i                         (lag="introduced": phases since task i was introduced)
          = t - (last phase with samples of task i)   (lag="last_seen": rehearsal counts as an encounter)
    w_i   = lag_i ** -alpha               (schedule="power")
          = exp(-lambda * lag_i)          (schedule="exponential", the paper's control)
          = 1                             (schedule="uniform", the non-power-law control at the same R)
    n_i   = R * w_i / sum_j w_j, made integers (counts=...)        (schedule="none": no rehearsal)
    rehearse n_i random training samples of each task i:
        mode="phase": as a separate experience (kind="rehearsal") right after task t
        mode="mixed": mixed into task t's own experience

Integer counts: "stochastic_rounding" (each n_i is the floor or ceiling of its expectation, with
probability given by the fraction, and the counts sum to exactly R: systematic sampling), "sampled"
(R draws of a task label with probabilities w_i / sum w: a multinomial), or "largest_remainder"
(deterministic rounding to a sum of R). Draws come from the stream seed.

The paper's exact constants (alpha, R, lag definition, phase vs. mixed) could not be checked (reference/
methods.md section 1); every reading is an option. Each evaluation task counts as learned at the row of
the experience that introduced it (`Stream.learned_at`), and the description records the counts of every
phase, so the schedule can be checked in result.json. The stream is plain experiences: any strategy runs
on it unchanged.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from clbench.config import ConfigError
from clbench.scenarios.common import check_positive_int, check_stream, generator, mix, take
from clbench.stream import Experience, Stream

SCHEDULES = ("power", "exponential", "uniform", "none")
LAGS = ("introduced", "last_seen")
MODES = ("phase", "mixed")
COUNTS = ("stochastic_rounding", "sampled", "largest_remainder")


def schedule_weights(lags: list[int], schedule: str, alpha: float, lam: float) -> torch.Tensor:
    """Unnormalised rehearsal weight of each earlier task from its lag (>= 1)."""
    lag = torch.tensor(lags, dtype=torch.float64)
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


class PowerLaw:
    """Power-law rehearsal of earlier tasks after each new task, on top of any base scenario."""

    def __init__(self, base: Optional[dict] = None, schedule: str = "power", alpha: float = 1.0, lam: float = 1.0,
                 budget: int = 1000, lag: str = "introduced", mode: str = "phase",
                 counts: str = "stochastic_rounding"):
        for key, value, valid in (("schedule", schedule, SCHEDULES), ("lag", lag, LAGS), ("mode", mode, MODES),
                                  ("counts", counts, COUNTS)):
            if value not in valid:
                raise ConfigError(f"bad value for 'scenario.{key}': {value!r}; valid choices: {', '.join(valid)}")
        self.base = dict(base or {"name": "permuted"})
        if "name" not in self.base:
            raise ConfigError("bad value for 'scenario.base': it needs a 'name' "
                              "(e.g. {name: permuted, n_experiences: 10})")
        if not isinstance(alpha, (int, float)) or alpha < 0:
            raise ConfigError(f"bad value for 'scenario.alpha': expected a number >= 0, got {alpha!r}")
        if not isinstance(lam, (int, float)) or lam < 0:
            raise ConfigError(f"bad value for 'scenario.lam': expected a number >= 0, got {lam!r}")
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
        last_seen = list(range(len(tasks)))           # phase in which each task was last seen
        experiences, row_of_base, schedule = [], {}, []
        for t, exp in enumerate(tasks):
            # 1. how much of each earlier task comes back at phase t
            earlier = list(range(t))
            lags = [t - (i if self.lag == "introduced" else last_seen[i]) for i in earlier]
            w = schedule_weights(lags, self.schedule, self.alpha, self.lam)
            n = integer_counts(w, self.budget, self.counts, generator(seed, "power_law", "counts", t)) if t else []
            for i, k in zip(earlier, n):
                if k > 0:
                    last_seen[i] = t
            # 2. draw the samples: a random subset of each task's training data (repeated if k > its size)
            parts = [take(tasks[i].train, self.draw(len(tasks[i].train), k, generator(seed, "power_law", t, i)))
                     for i, k in zip(earlier, n) if k > 0]
            rehearsed = [i for i, k in zip(earlier, n) if k > 0]
            schedule.append({"phase": t, "lags": lags, "weights": [round(float(v), 6) for v in w], "counts": n})
            # 3. the new task, then (phase mode) its rehearsal phase, or (mixed mode) both in one experience
            rehearsed_ids = [tasks[i].task_id for i in rehearsed]
            if self.mode == "mixed" and parts:
                exp = self.experience(len(experiences), [exp.train] + parts, exp.task_ids + rehearsed_ids, exp, "new")
            else:
                exp = Experience(index=len(experiences), train=exp.train, task_ids=list(exp.task_ids),
                                 classes=list(exp.classes), task_visible_at_test=exp.task_visible_at_test)
            row_of_base[t] = len(experiences)
            experiences.append(exp)
            if self.mode == "phase" and parts:
                experiences.append(self.experience(len(experiences), parts, rehearsed_ids, tasks[0], "rehearsal"))
        return check_stream(Stream(
            name="power_law", experiences=experiences, eval_tasks=base.eval_tasks, n_classes=base.n_classes,
            input_shape=base.input_shape, setting=base.setting,
            learned_at=[row_of_base[r] for r in base.learned_rows()],
            description={**base.description, "stream_seed": int(seed), "base_scenario": self.base["name"],
                         "rehearsal": {"schedule": self.schedule, "alpha": self.alpha, "lambda": self.lam,
                                       "budget": self.budget, "lag": self.lag, "mode": self.mode,
                                       "counts": self.counts, "phases": schedule,
                                       "total_rehearsed": sum(sum(p["counts"]) for p in schedule)}}))

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
