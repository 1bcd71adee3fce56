"""Loggers: console progress and tables, and Weights & Biases. result.json is written by the engine;
loggers are sinks and a failing sink never loses the local result."""
from __future__ import annotations

import sys
import uuid
import warnings
from typing import Optional

from clbench.metrics import acc_seen, direction


class Logger:
    def start(self, run) -> None: ...
    def experience_start(self, run, exp, n_steps: int) -> None: ...
    def train_step(self, run, loss) -> None: ...
    def log_values(self, run, step: int, values: dict) -> None: ...  # what a strategy logged (self.log)
    def log_row(self, run, row_index: int, row) -> None: ...     # row_index -1: before training
    def log_anytime(self, run, point: dict) -> None: ...         # anytime evaluation on (eval.every_samples/steps)
    def finish(self, run, result: dict) -> None: ...
    def close(self, failed: bool = False, interrupted: bool = False) -> None: ...
    def state(self) -> dict:                                     # kept in checkpoints, for resuming
        return {}
    def restore(self, state: dict) -> None: ...


def fmt_pct(v) -> str:
    return "   -  " if v is None else f"{100 * v:6.2f}"


def format_matrix(R, initial, learned_at=None) -> str:
    n_tasks = len(initial)
    head = "            " + "".join(f"  T{j:<4d}" for j in range(n_tasks))
    lines = ["Accuracy matrix R (%): row = after training experience i, column = evaluation task j", head,
             "  init      " + "".join(f"{fmt_pct(v)} " for v in initial)]
    for i, row in enumerate(R):
        lines.append(f"  exp {i:<5d} " + "".join(f"{fmt_pct(v)} " for v in row))
    return "\n".join(lines)


def format_metrics(metrics: dict) -> str:
    lines = ["Metrics (% ; + higher is better, - lower is better; definitions in docs/metrics.md)"]
    for name, v in metrics.items():
        if isinstance(v, (int, float)) or v is None:
            lines.append(f"  {name:<26s} ({direction(name)}) {fmt_pct(v)}")
    return "\n".join(lines)


class ConsoleLogger(Logger):
    """A progress bar per experience (on stderr), then R and the metrics (on stdout)."""

    def __init__(self, progress: bool = True, stream=None):
        self.progress = progress
        self.out = stream or sys.stdout
        self.bar = None

    def start(self, run) -> None:
        cfg = run.cfg
        print(f"clbench run {run.run_id}: benchmark={cfg['benchmark']['name']} strategy={cfg['strategy']['name']} "
              f"seed={cfg['seed']} stream_seed={cfg['stream_seed']} device={run.device}", file=self.out, flush=True)

    def experience_start(self, run, exp, n_steps: int) -> None:
        if self.progress:
            from tqdm import tqdm
            self.bar = tqdm(total=n_steps, desc=f"exp {exp.index + 1}/{len(run.stream)} ({exp.kind})",
                            leave=True, file=sys.stderr, dynamic_ncols=True, mininterval=0.5)

    def train_step(self, run, loss) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def log_values(self, run, step: int, values: dict) -> None:
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in list(values.items())[:4]}, refresh=False)

    def log_row(self, run, row_index: int, row) -> None:
        if self.bar is not None:
            seen = acc_seen(row.acc, run.stream.learned_rows(), row_index)
            self.bar.set_postfix(acc_seen=f"{100 * (seen or 0.0):.1f}%")
            self.bar.close()
            self.bar = None

    def finish(self, run, result: dict) -> None:
        if result.get("accuracy_matrix") is not None:
            print(format_matrix(result["accuracy_matrix"], result["initial_accuracy"]), file=self.out)
            print(format_metrics(result["metrics"]), file=self.out)
        if result.get("reference"):
            ref = result["reference"]
            print(f"Intransigence reference ({ref['kind']}): {ref['strategy']} run {ref['run_id']}", file=self.out)
        if result.get("validation_accuracy_matrix"):
            print(format_matrix(result["validation_accuracy_matrix"], result["initial_validation_accuracy"])
                  .replace("Accuracy matrix R", "Validation accuracy matrix"), file=self.out)
            if result.get("accuracy_matrix") is None:
                print(format_metrics(result["validation_metrics"]).replace("Metrics", "Validation metrics"),
                      file=self.out)
        for name, m in (result.get("extra_models") or {}).items():
            print(f"Extra model '{name}': acc {fmt_pct(m['acc']).strip()}%", file=self.out)
        if result.get("anytime"):
            a = result["anytime"]
            every = (f"{a['every_samples']} stream samples" if a.get("every_samples")
                     else f"{a['every_steps']} steps")
            print(f"Anytime evaluation: {len(a['step'])} points every {every}, A_AUC {fmt_pct(a['auc']).strip()}% "
                  f"(result.json key 'anytime')", file=self.out)
        t = result["timing"]
        print(f"Time: total {t['total_s']:.1f}s (train {t['train_s']:.1f}s, eval {t['eval_s']:.1f}s)",
              file=self.out, flush=True)

    def close(self, failed: bool = False, interrupted: bool = False) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class WandbLogger(Logger):
    """One W&B run per clbench run (a sink: result.json stays the source of truth).

    - The mode (offline, online; `disabled` means no logger at all) comes from the config and is passed
      to the one `wandb.init` call; there is no fallback init in another mode (a failed online init
      followed by an offline one can hang, wandb#9865).
    - `reinit="create_new"` and `finish()` at the end: several clbench runs in one process (sweeps,
      notebooks) each get their own W&B run, never merged into one.
    - Names for aggregation in the UI: group = <benchmark>/<strategy>/<config hash without seeds>, so the
      seeds of one configuration form one group (mean +- spread); job_type from the config ("run"); name =
      the run id; tags = benchmark, strategy, scenario, setting.
    - History: `eval/*` per experience against their own step metric `experience` (0 = before training),
      `train/*` against `train/step`, `anytime/*` against `anytime/step`: no monotonic-step collisions.
    - Summary: every final metric as `final/<name>`, the config hash, timing; R as a wandb.Table (wide and
      long format) and as a heatmap image.
    - Any W&B failure becomes a warning; the run is finished if it can be, and the local result is kept.
    """

    def __init__(self, cfg: dict, run_dir, run_id: str, cfg_hash: str):
        from clbench.config import group_hash
        self.cfg, self.dir, self.run_id, self.cfg_hash = cfg, run_dir, run_id, cfg_hash
        self.group_hash = group_hash(cfg)
        self.run = None
        self.step = 0
        self.wandb_id: Optional[str] = None   # kept in checkpoints: a resumed run continues the same W&B run

    def _failed(self, what: str, e: Exception) -> None:
        warnings.warn(f"W&B {what} failed ({type(e).__name__}: {e}); continuing without W&B. "
                      f"Local results are unaffected.")
        run, self.run = self.run, None
        if run is not None:  # do not leave a half-open run behind in this process
            try:
                run.finish(exit_code=1)
            except Exception:
                pass

    def _safely(self, what: str, fn) -> None:
        if self.run is None:
            return
        try:
            fn()
        except Exception as e:  # W&B is a sink: warn, stop using it, keep the local result
            self._failed(what, e)

    def init_kwargs(self, run=None) -> dict:
        """The arguments of the one wandb.init call (also what tests and `clbench sync` rely on)."""
        w, cfg = self.cfg["wandb"], self.cfg
        bench, strat = cfg["benchmark"]["name"], cfg["strategy"]["name"]
        tags = [bench, strat, cfg.get("scenario", {}).get("name")]
        if run is not None:
            tags.append(run.stream.setting)
        tags += list(w.get("tags") or [])
        return dict(
            mode=w["mode"], project=w["project"], entity=w["entity"], dir=str(self.dir),
            group=w["group"] or f"{bench}/{strat}/{self.group_hash[:8]}",
            job_type=w["job_type"], name=w["name"] or self.run_id,
            tags=list(dict.fromkeys(str(t)[:64] for t in tags if t)),
            config={**cfg, "config_hash": self.cfg_hash, "group_hash": self.group_hash, "run_id": self.run_id},
            reinit="create_new", id=self.wandb_id, resume="allow")

    def start(self, run) -> None:
        try:
            import wandb
            if self.wandb_id is None:
                self.wandb_id = uuid.uuid4().hex[:8]
            self.run = wandb.init(**self.init_kwargs(run),
                                  settings=wandb.Settings(init_timeout=120, console="off", silent=True,
                                                          x_disable_stats=True))
            # Per-experience values have their own x-axis; training losses and anytime curves have theirs.
            self.run.define_metric("experience")
            self.run.define_metric("eval/*", step_metric="experience")
            self.run.define_metric("train/step")
            self.run.define_metric("train/*", step_metric="train/step")
            self.run.define_metric("anytime/step")
            self.run.define_metric("anytime/*", step_metric="anytime/step")
        except Exception as e:
            self._failed("init", e)

    def train_step(self, run, loss) -> None:
        self.step += 1
        if self.step % 50 == 0:
            self._safely("log", lambda: self.run.log({"train/loss": float(loss), "train/step": self.step}))

    def log_values(self, run, step: int, values: dict) -> None:
        data = {f"train/{k}": v for k, v in values.items()}
        data["train/step"] = step
        self._safely("log", lambda: self.run.log(data))

    def state(self) -> dict:
        return {"wandb_id": self.wandb_id, "step": self.step}

    def restore(self, state: dict) -> None:
        self.wandb_id = state.get("wandb_id") or self.wandb_id
        self.step = int(state.get("step", 0))

    def log_row(self, run, row_index: int, row) -> None:
        seen = acc_seen(row.acc, run.stream.learned_rows(), row_index)
        data = {"experience": row_index + 1}
        data.update({f"eval/acc_task{j}": a for j, a in enumerate(row.acc)})
        if seen is not None:
            data["eval/acc_seen"] = seen
        data["eval/acc_all"] = sum(row.acc) / len(row.acc)
        self._safely("log", lambda: self.run.log(data))

    def log_anytime(self, run, point: dict) -> None:
        data = {"anytime/step": point["step"], "anytime/samples": point.get("samples"),
                "anytime/experience": point["experience"]}
        data.update({f"anytime/acc_task{j}": a for j, a in enumerate(point["accuracy"])})
        if point.get("acc_seen") is not None:
            data["anytime/acc_seen"] = point["acc_seen"]
        self._safely("log", lambda: self.run.log(data))

    def finish(self, run, result: dict) -> None:
        def _finish():
            import wandb
            if result.get("accuracy_matrix") is None:   # a tuning run: validation only
                for k, v in (result.get("validation_metrics") or {}).items():
                    if isinstance(v, (int, float)) or v is None:
                        self.run.summary[f"final/val_{k}"] = v
                return
            for k, v in result["metrics"].items():
                if isinstance(v, (int, float)) or v is None:
                    self.run.summary[f"final/{k}"] = v
            self.run.summary["config_hash"] = self.cfg_hash
            self.run.summary["group_hash"] = self.group_hash
            self.run.summary["timing/total_s"] = result["timing"]["total_s"]
            n = len(result["initial_accuracy"])
            rows = [("init", result["initial_accuracy"])] + \
                   [(f"exp{i}", row) for i, row in enumerate(result["accuracy_matrix"])]
            wide = wandb.Table(columns=["after"] + [f"task{j}" for j in range(n)],
                               data=[[name, *row] for name, row in rows])
            long = wandb.Table(columns=["after_experience", "task", "accuracy"],
                               data=[[i - 1, j, a] for i, (_, row) in enumerate(rows) for j, a in enumerate(row)])
            self.run.log({"accuracy_matrix": wide, "accuracy_matrix_long": long})
            from clbench.plots import heatmap_figure
            fig = heatmap_figure(result)
            self.run.log({"accuracy_matrix_heatmap": wandb.Image(fig)})
            import matplotlib.pyplot as plt
            plt.close(fig)
        self._safely("summary", _finish)

    def close(self, failed: bool = False, interrupted: bool = False) -> None:
        if self.run is not None:
            run, self.run = self.run, None
            try:
                if interrupted:
                    run.mark_preempting()   # the resumed run continues this W&B run (same id)
                run.finish(exit_code=1 if failed else 0)
            except Exception as e:
                warnings.warn(f"W&B finish failed ({type(e).__name__}: {e}); local results are unaffected.")


def wandb_run_dir(run_dir) -> Optional[str]:
    """The offline W&B run folder inside a run folder, if any."""
    from pathlib import Path
    runs = sorted(Path(run_dir).glob("wandb/offline-run-*")) + sorted(Path(run_dir).glob("wandb/run-*"))
    return str(runs[-1].relative_to(run_dir)) if runs else None
