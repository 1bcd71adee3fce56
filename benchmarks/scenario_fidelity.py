"""Scenario fidelity (issue 19): i-Blurry and its anytime metric against the official code, and power-law
rehearsal by time since last performed. Prints and saves (results/scenario_fidelity.{json,md}):

1. blurry-mnist split counts per experience against the official rule (naver-ai/i-Blurry `collections/`:
   M of each blurry class pooled, the pool cut into T equal parts, one per experience, home included),
   for the v2 stream (blur_mode pooled) and the v1 stream (blur_mode moved).
2. anytime evaluation of one naive run per stream: evaluation spacing in stream samples, the exposed-class
   sets (from the stream vs. v1's whole class groups), and A_AUC under three rules on the same predictions:
   v1 (class groups of started experiences, mean over tasks), groups pooled over samples, and the official
   (exposed classes, pooled over samples).
3. power-law rehearsal: the exponent re-fitted (maximum likelihood) from the realised draws of the v2
   reading (lag last_performed), with a calibration table by lag, and the v1 reading for contrast.

    python benchmarks/scenario_fidelity.py                         # full MNIST, stream/training seeds 0 1 2
    python benchmarks/scenario_fidelity.py --seeds 0 --train-per-class 600
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from clbench.config import compose
from clbench.engine import build_stream, run
from clbench.loggers import Logger
from clbench.scenarios.power_law import fit_exponent, last_performed_schedule, phase_schedule, replay_draws

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from speed import default_root  # noqa: E402  ($CLBENCH_DATA, else <repo>/../shared/datasets, else ./data)


# ----- 1. the split ----------------------------------------------------------------------------------------

def split_check(root: str, seed: int, mode: str) -> dict:
    cfg = compose(["benchmark=blurry-mnist", f"data.root={root}", f"stream_seed={seed}", f"seed={seed}",
                   f"scenario.blur_mode={mode}", "device=cpu"])
    stream = build_stream(cfg, torch.device("cpu"))
    m, T = cfg["scenario"]["blur"], len(stream.experiences)
    y = stream.dataset.y_train.cpu()
    n = torch.bincount(y, minlength=10)
    C = torch.stack([torch.bincount(e.train.y[e.train.indices].cpu(), minlength=10) for e in stream.experiences])
    disjoint = set(stream.describe()["disjoint_classes"])
    pooled = {c: round(m * int(n[c])) for c in range(10) if c not in disjoint}
    pool = sum(pooled.values())
    rows = []
    for e, task in enumerate(stream.eval_tasks):
        b = [c for c in task.classes if c not in disjoint][0]
        d = [c for c in task.classes if c in disjoint][0]
        stays = int(n[b]) - pooled[b]
        received = int(C[e, b]) - stays + sum(int(C[e, c]) for c in pooled if c != b)
        rows.append({"experience": e, "disjoint": d, "blurry": b, "n_blurry": int(n[b]),
                     "home_count": int(C[e, b]), "official_home_expected": stays + pooled[b] / T,
                     "left_home": int(n[b]) - int(C[e, b]), "official_left_expected": pooled[b] * (T - 1) / T,
                     "disjoint_complete": bool(C[e, d] == n[d] and C[:, d].sum() == n[d]),
                     "received": received, "official_received": pool / T, "size": int(C[e].sum())})
    return {"seed": seed, "mode": mode, "pool": pool, "T": T, "rows": rows, "counts": C.tolist()}


# ----- 2. anytime evaluation ------------------------------------------------------------------------------

class Capture(Logger):
    """Keeps every anytime point's evaluation row (the same predictions for every rule)."""

    def __init__(self):
        self.points = []

    def log_anytime(self, run, point: dict) -> None:
        self.points.append({k: point[k] for k in ("samples", "step", "experience")} | {"row": point["row"]})


def anytime_check(root: str, seed: int, mode: str, spacing: list[str], train_per_class) -> dict:
    cap = Capture()
    over = ["benchmark=blurry-mnist", "strategy=naive", f"data.root={root}", f"seed={seed}", f"stream_seed={seed}",
            f"scenario.blur_mode={mode}", f"dataset.train_per_class={train_per_class}", "progress=false",
            "wandb.mode=disabled", "device=cpu", *spacing]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res, _ = run(over + [f"out={tmp}"], loggers=[cap])
        seconds = time.perf_counter() - t0
    a, stream = res["anytime"], res["stream"]
    groups = [t["classes"] for t in stream["eval_tasks"]]
    learned = stream["learned_at"]
    exposed_at = {int(c): s for c, s in a["exposed_at"].items()}
    y_test = build_stream(compose(over), torch.device("cpu")).dataset.y_test.cpu()
    n_test = {c: int((y_test == c).sum()) for g in groups for c in g}
    rules = {"v1_groups_task_mean": [], "groups_pooled": [], "official_exposed_pooled": []}
    differ, examples = 0, []
    for p in cap.points:
        row = p["row"]
        started = [j for j, L in enumerate(learned) if L <= p["experience"]]
        group_classes = sorted(c for j in started for c in groups[j])
        exposed = sorted(c for c, s in exposed_at.items() if s <= p["samples"])
        pooled = lambda cs: sum(row.per_class.get(c, 0.0) * n_test[c] for c in cs) / sum(n_test[c] for c in cs)
        rules["v1_groups_task_mean"].append(float(np.mean([row.acc[j] for j in started])))
        rules["groups_pooled"].append(pooled(group_classes))
        rules["official_exposed_pooled"].append(pooled(exposed))
        if exposed != group_classes:
            differ += 1
            if len(examples) < 4:
                examples.append({"samples": p["samples"], "exposed": exposed, "v1_groups": group_classes})
    recorded = "official_exposed_pooled" if a["accuracy_rule"] == "exposed" else "v1_groups_task_mean"
    assert np.allclose(rules[recorded], a["acc_seen"])              # the run's own curve is one of the three
    samples = np.array(a["samples"])
    return {"seed": seed, "mode": mode, "spacing": spacing, "points": len(samples), "seconds": round(seconds, 1),
            "points_on_multiples_of_100": int((samples % 100 == 0).sum()),
            "max_samples_past_multiple": int((samples % 100).max()), "first_samples": samples[:8].tolist(),
            "sets_differ": differ, "set_examples": examples,
            "a_auc": {k: float(np.mean(v)) for k, v in rules.items()},
            "max_point_gap_v1_vs_official": float(np.max(np.abs(np.subtract(rules["v1_groups_task_mean"],
                                                                             rules["official_exposed_pooled"])))),
            "metrics_anytime_acc_auc": res["metrics"]["anytime_acc_auc"], "acc": res["metrics"]["acc"]}


# ----- 3. power law --------------------------------------------------------------------------------------

BINS = [(0, 0.01), (0.01, 1.5), (1.5, 2.5), (2.5, 4.5), (4.5, 10.0)]   # in phases; < 0.01: a repeat


def power_law_check(seeds: int, root: str) -> dict:
    sizes, budget = [60000] * 10, 1000            # power-law-pmnist v2: 10 tasks of 60000, R = 1000
    out = {"task_samples": sizes, "budget": budget, "streams": seeds, "fits": []}
    for alpha in (0.5, 1.0, 2.0):
        draws, distinct, newest, t0 = [], [], [], time.perf_counter()
        for s in range(seeds):
            phases = last_performed_schedule(sizes, budget, "power", alpha, 1.0, s)
            draws += replay_draws(sizes, budget, phases)
            for p in phases[1:]:
                distinct.append(sum(1 for k in p["counts"] if k))
                newest.append(p["counts"][-1] / budget)
        fitted, se = fit_exponent(draws)
        lags = np.concatenate([lg for lg, _ in draws])
        probs = np.concatenate([lg ** -fitted / (lg ** -fitted).sum() for lg, _ in draws])
        chosen = np.concatenate([np.arange(len(lg)) == i for lg, i in draws])
        table = []
        for lo, hi in BINS:
            sel = (lags >= lo) & (lags < hi)
            table.append({"lag_phases": [lo, hi], "candidates": int(sel.sum()), "drawn": int(chosen[sel].sum()),
                          "expected_at_fit": float(probs[sel].sum())})
        out["fits"].append({"alpha": alpha, "fitted": fitted, "se": se, "draws": len(draws),
                            "mean_tasks_rehearsed_per_phase": float(np.mean(distinct)),
                            "share_to_newest_earlier_task": float(np.mean(newest)), "calibration": table,
                            "seconds": round(time.perf_counter() - t0, 1)})
    # v1 reading (lag introduced): counts fall as a power law of the time since introduction, but every earlier
    # task is rehearsed in every phase, so the time since last performed is always one phase
    last_phase, all_rehearsed = [], []
    for s in range(seeds):
        phases = phase_schedule(10, budget, "power", 1.0, 1.0, "introduced", "stochastic_rounding", s)
        all_rehearsed += [all(k > 0 for k in p["counts"]) for p in phases[1:]]
        last_phase.append(phases[-1]["counts"])          # phase 9: earlier tasks introduced 9 .. 1 phases ago
    lag = np.arange(9, 0, -1)
    slope = np.polyfit(np.log(lag), np.log(np.mean(last_phase, 0)), 1)[0]
    out["v1_introduced"] = {"slope_log_count_vs_log_time_since_introduced": float(slope),
                            "phases_with_every_earlier_task_rehearsed": float(np.mean(all_rehearsed))}
    # the benchmark's own stream records this schedule (seed 0)
    cfg = compose(["benchmark=power-law-pmnist", f"data.root={root}", "stream_seed=0", "device=cpu"])
    reh = build_stream(cfg, torch.device("cpu")).describe()["rehearsal"]
    out["benchmark_stream_matches"] = reh["phases"] == last_performed_schedule(sizes, budget, "power", 1.0, 1.0, 0)
    out["benchmark_stream_seed0_counts"] = [p["counts"] for p in reh["phases"]]
    return out


# ----- report ---------------------------------------------------------------------------------------------

def markdown(res: dict) -> str:
    L = ["# Scenario fidelity: i-Blurry and its anytime metric, power-law rehearsal", "",
         __doc__.split("    python")[0].strip(), "", f"Command: `{res['command']}`", "", "## 1. blurry-mnist split", ""]
    for s in res["split"]:
        L += [f"Stream seed {s['seed']}, blur_mode `{s['mode']}` (pool {s['pool']} samples, T = {s['T']}):", "",
              "| exp | disjoint complete | blurry class | n | at home (official expects) | left home (official "
              "expects) | blurred received (official: pool/T) |", "|---|---|---|---|---|---|---|"]
        for r in s["rows"]:
            L.append(f"| {r['experience']} | {r['disjoint_complete']} | {r['blurry']} | {r['n_blurry']} | "
                     f"{r['home_count']} ({r['official_home_expected']:.1f}) | {r['left_home']} "
                     f"({r['official_left_expected']:.1f}) | {r['received']} ({r['official_received']:.1f}) |")
        L.append("")
    L += ["## 2. Anytime evaluation (naive, one pass; the same predictions under every rule)", "",
          "| stream | spacing | seed | points | on multiples of 100 | max samples past one | exposed set != v1 "
          "set | A_AUC v1 rule | groups pooled | official (exposed, pooled) | max gap at a point |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    for a in res["anytime"]:
        au = a["a_auc"]
        L.append(f"| {a['mode']} | {' '.join(a['spacing'])} | {a['seed']} | {a['points']} | "
                 f"{a['points_on_multiples_of_100']} | {a['max_samples_past_multiple']} | {a['sets_differ']} | "
                 f"{100 * au['v1_groups_task_mean']:.2f} | {100 * au['groups_pooled']:.2f} | "
                 f"{100 * au['official_exposed_pooled']:.2f} | {100 * a['max_point_gap_v1_vs_official']:.2f} |")
    ex = res["anytime"][0]["set_examples"]
    if ex:
        L += ["", "First points where the sets differ (first run): " +
              "; ".join(f"{e['samples']} samples: exposed {e['exposed']} vs v1 {e['v1_groups']}" for e in ex)]
    p = res["power_law"]
    L += ["", "## 3. Power-law rehearsal, lag last_performed (10 tasks of 60000 samples, R = 1000, "
          f"{p['streams']} stream seeds)", "",
          "| alpha | fitted alpha (MLE +- SE) | draws | tasks rehearsed per phase | share to the newest earlier "
          "task |", "|---|---|---|---|---|"]
    for f in p["fits"]:
        L.append(f"| {f['alpha']} | {f['fitted']:.3f} +- {f['se']:.3f} | {f['draws']} | "
                 f"{f['mean_tasks_rehearsed_per_phase']:.2f} | {f['share_to_newest_earlier_task']:.2f} |")
    L += ["", "Calibration (draws of a candidate task by its time since last performed, in phases; expected = sum "
          "of the fitted law's probabilities):", "", "| alpha | " + " | ".join(
              f"lag [{lo}, {hi})" for lo, hi in BINS) + " |", "|---|" + "---|" * len(BINS)]
    for f in p["fits"]:
        L.append(f"| {f['alpha']} | " + " | ".join(
            f"{c['drawn']} / {c['expected_at_fit']:.1f}" for c in f["calibration"]) + " |")
    v1 = p["v1_introduced"]
    L += ["", f"v1 reading (lag introduced, alpha 1): in phase 9, slope of log mean count against log time since introduction "
          f"{v1['slope_log_count_vs_log_time_since_introduced']:.4f}; phases in which every earlier task is "
          f"rehearsed {100 * v1['phases_with_every_earlier_task_rehearsed']:.0f}% (so the time since last "
          f"performed is always one phase).", "",
          f"power-law-pmnist v2, stream seed 0, records this schedule: {p['benchmark_stream_matches']}; "
          f"counts per phase {p['benchmark_stream_seed0_counts'][1:]}"]
    return "\n".join(L) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--train-per-class", default="null", help="dataset.train_per_class of the anytime runs")
    ap.add_argument("--power-law-streams", type=int, default=100)
    ap.add_argument("--root", default=default_root())
    ap.add_argument("--out", default=str(HERE / "results" / "scenario_fidelity"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    res = {"command": "python benchmarks/scenario_fidelity.py " + " ".join(
        [f"--seeds {' '.join(map(str, args.seeds))}", f"--train-per-class {args.train_per_class}",
         f"--power-law-streams {args.power_law_streams}"]),
        "split": [split_check(args.root, s, mode) for s in args.seeds[:1] for mode in ("pooled", "moved")],
        "anytime": [], "power_law": power_law_check(args.power_law_streams, args.root)}
    for seed in args.seeds:
        for mode, spacing in (("pooled", ["eval.every_samples=100"]),
                              ("moved", ["eval.every_samples=0", "eval.every_steps=10",
                                         "eval.anytime_accuracy=seen_tasks"])):
            res["anytime"].append(anytime_check(args.root, seed, mode, spacing, args.train_per_class))
            a = res["anytime"][-1]
            print(f"anytime {mode} seed {seed}: {a['points']} points, A_AUC {a['a_auc']} ({a['seconds']} s)",
                  flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    text = markdown(res)
    out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
