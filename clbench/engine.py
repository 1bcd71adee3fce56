"""The engine: build the stream, the model and the strategy from a resolved config, then

    R0 = evaluate()                       # the row before any training (for FWT)
    for exp in stream:
        for _ in strategy.train_experience(exp.sealed()):   # the strategy's loop, one step at a time
            log, anytime-evaluate, checkpoint every N steps, stop cleanly on SIGTERM/SIGINT
        R[i] = evaluate()                 # one row of the accuracy matrix (test, and validation if held out)
        checkpoint                        # the full state: re-running the same command resumes here
    metrics = f(R, R0); write result.json

Everything that can be wrong with the config fails in `prepare`, before any file is written. The strategy is
handed sealed experiences and nothing of the engine: it cannot reach the evaluator or evaluation data.
"""
from __future__ import annotations

import os
import random
import resource
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from clbench import metrics as M
from clbench import state as S
from clbench.config import compose, config_hash
from clbench.data import holdout_validation, load_dataset
from clbench.errors import ConfigError, PluginError, RunInterrupted, bad_value
from clbench.anytime import AnytimeEvaluator, check_config as anytime_config
from clbench.evaluator import EvalRow, Evaluator, load_reference
from clbench.hparams import specs_from_signature
from clbench.loggers import ConsoleLogger, Logger, WandbLogger, wandb_run_dir
from clbench.models import build_model
from clbench.provenance import collect as collect_provenance
from clbench.registry import CALLBACKS, SCENARIOS, STRATEGIES
from clbench.reproducibility import apply_threads
from clbench.results import SCHEMA_VERSION, RunDir, check_out_dir, environment, make_run_id, write_json_atomic
from clbench.strategy import Strategy, StreamInfo
from clbench.stream import Stream

CHECKPOINT_VERSION = 1


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise bad_value("device", f"{name!r} requested but CUDA is not available (use device=cpu)")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def build_stream(cfg: dict, device: torch.device) -> Stream:
    """The scenario's stream; with `eval.validation`, validation tasks built from held-out training samples by
    the same scenario (same seed, so the same experiences); with `eval.test=false`, no test data at all."""
    ev = cfg["eval"]
    dataset = loaded = load_dataset(cfg, device, test=ev["test"])
    if ev["validation"] > 0:
        dataset = holdout_validation(dataset, ev["validation"], int(cfg["stream_seed"]))
    sc = cfg["scenario"]
    cls = SCENARIOS.get(sc["name"])
    scenario = cls(**{k: v for k, v in sc.items() if k != "name" and k in specs_from_signature(cls.__init__)})
    seed = int(cfg["stream_seed"])
    stream = scenario.build(dataset, seed) if ev["test"] else None
    if ev["validation"] > 0:
        as_test = _with_test(dataset, dataset.x_val, dataset.y_val)
        vstream = scenario.build(as_test, seed)
        val_tasks = vstream.eval_tasks
        if stream is None:              # no test split: the validation build is the stream, without test tasks
            stream, vstream.eval_tasks = vstream, []
        elif [e["classes"] for e in stream.describe()["experiences"]] != \
                [e["classes"] for e in vstream.describe()["experiences"]]:
            raise PluginError(f"scenario '{sc['name']}' built different experiences for the same seed; its "
                              f"validation tasks cannot be aligned with its test tasks (is its build() seeded?)")
        stream.val_tasks = val_tasks
        stream.description["validation"] = {"fraction": ev["validation"], "seed": "stream_seed",
                                            "stratified_by": "class", "n_val": int(len(dataset.y_val))}
    stream.name = sc["name"]
    stream.dataset = dataset
    stream.loaded_dataset = loaded        # as loaded, before the validation split: what provenance fingerprints
    if cfg.get("first_experiences"):   # the first-k protocol (clbench tune): a prefix of the stream
        k = int(cfg["first_experiences"])
        if k > len(stream):
            raise bad_value("first_experiences", f"{k}, but scenario '{sc['name']}' has only {len(stream)} "
                                                   f"experiences")
        stream = stream.prefix(k)
    # A scenario may fix training keys that are part of its protocol (an online stream: one pass).
    for key, value in (stream.description.get("train_requirements") or {}).items():
        if cfg["train"].get(key) != value:
            raise bad_value(f"train.{key}", f"scenario '{sc['name']}' with these options requires "
                              f"train.{key}={value}, got {cfg['train'].get(key)!r}")
    return stream


def _with_test(dataset, x, y):
    from dataclasses import replace
    out = replace(dataset, x_test=x, y_test=y)
    if getattr(dataset, "subset", None):
        out.subset = dataset.subset
    return out


def stream_info(stream: Stream) -> StreamInfo:
    """What the strategy may know up front. Task-IL declares each task's classes known (its heads are part of
    the protocol); every other setting reveals a task's classes only when its experience arrives."""
    known = stream.task_classes if stream.setting == "task-il" else {}
    return StreamInfo(name=stream.name, setting=stream.setting, n_classes=stream.n_classes,
                      n_experiences=len(stream), input_shape=tuple(stream.input_shape), task_classes=dict(known))


def build_strategy(cfg: dict, stream: Stream, device: torch.device) -> Strategy:
    name = cfg["strategy"]["name"]
    cls = STRATEGIES.get(name.split(":")[0])
    if stream.setting not in getattr(cls, "settings", (stream.setting,)):
        raise ConfigError(f"strategy '{name}' does not support the {stream.setting} setting of benchmark "
                          f"'{cfg['benchmark']['name']}' (it supports: {', '.join(cls.settings)})")
    torch.manual_seed(int(cfg["seed"]))  # the same seed gives the same initial weights
    model = build_model(cfg, stream.dataset)
    strategy = cls(model, dict(cfg["strategy"]), cfg["train"], stream_info(stream), device, seed=int(cfg["seed"]))
    for cb_name, params in (cfg.get("callbacks") or {}).items():
        strategy.add_callback(CALLBACKS.get(cb_name)(params, seed=int(cfg["seed"])))   # each derives its own streams
    return strategy


@dataclass
class Run:
    cfg: dict
    cfg_hash: str
    run_id: str
    device: torch.device
    stream: Stream
    strategy: Strategy
    evaluator: Optional[Evaluator]                    # test split (None when eval.test=false)
    val_evaluator: Optional[Evaluator] = None         # validation split (eval.validation > 0)
    loggers: list[Logger] = field(default_factory=list)
    reference: Optional[dict] = None   # joint-training reference (eval.reference) for intransigence
    provenance: Optional[dict] = None  # code and data identity (clbench/provenance.py)
    seed_group: Optional[int] = None   # seeds trained with this one as one model (clbench/seed_parallel.py)


def prepare(cfg: dict) -> Run:
    """Build everything for a run; raises a UserError (ConfigError, DataError, ...) before anything is written."""
    apply_threads(cfg)  # [issue 13: the thread count is part of the protocol; set before anything is built]
    device = resolve_device(str(cfg["device"]))
    seed_everything(int(cfg["seed"]), bool(cfg.get("deterministic", False)))
    h = config_hash(cfg)
    stream = build_stream(cfg, device)
    strategy = build_strategy(cfg, stream, device)
    bs, schedule = int(cfg["eval"]["batch_size"]), cfg["eval"]["schedule"]
    evaluator = Evaluator(stream, batch_size=bs, schedule=schedule) if cfg["eval"]["test"] else None
    val_evaluator = Evaluator(stream, batch_size=bs, split="val", schedule=schedule) if stream.val_tasks else None
    anytime_config(cfg)  # eval.every_samples / every_steps / anytime_accuracy
    check_precision(cfg, device, strategy)
    if (cfg["eval"]["every_steps"] or cfg["eval"]["every_samples"]) and not strategy.step_events:
        raise bad_value("eval.every_steps", f"strategy '{cfg['strategy']['name']}' trains in an "
                          f"opaque loop with no per-step events; use eval.every_steps=0 and eval.every_samples=0")
    ref = cfg["eval"].get("reference")
    reference = load_reference(ref, stream, cfg) if ref else None
    return Run(cfg=cfg, cfg_hash=h, run_id=make_run_id(cfg, h), device=device, stream=stream, strategy=strategy,
               evaluator=evaluator, val_evaluator=val_evaluator, reference=reference)


def check_precision(cfg: dict, device: torch.device, strategy: Strategy) -> None:
    """perf: train.amp / train.compile act in the base Strategy's step; refuse what they cannot do."""
    tr = cfg["train"]
    if tr.get("amp") == "fp16" and device.type != "cuda":
        raise bad_value("train.amp", f"fp16 needs a CUDA device (this run is on {device}); bf16 runs on CPU too")
    for key, off in (("amp", "off"), ("compile", "off")):
        if tr.get(key, off) != off and not strategy.step_events:
            raise bad_value(f"train.{key}", f"strategy '{cfg['strategy']['name']}' trains in its own loop, which "
                                            f"train.{key} does not reach; use train.{key}={off}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Signals:
    """SIGTERM/SIGINT set a flag that the loop checks between steps; a second SIGINT stops at once.

    Only the main thread receives signals: a run in another thread (a seed of a seed-parallel group) is listed
    in `in_threads` by thread id, and the code holding the main thread sets its flag (clbench/seed_parallel.py)."""
    in_threads: dict = {}

    def __init__(self):
        self.signum: Optional[int] = None
        self.previous: dict = {}

    def __enter__(self):
        if hasattr(signal, "SIGTERM") and _in_main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                self.previous[s] = signal.signal(s, self._handle)
        else:
            _Signals.in_threads[threading.get_ident()] = self
        return self

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self.previous.items():
            signal.signal(s, h)
        _Signals.in_threads.pop(threading.get_ident(), None)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@dataclass
class _Progress:
    """Everything measured so far: what a checkpoint keeps besides the strategy."""
    next_exp: int = 0
    initial: Optional[dict] = None
    initial_val: Optional[dict] = None
    rows: list = field(default_factory=list)            # EvalRow dicts, test
    val_rows: list = field(default_factory=list)        # EvalRow dicts, validation
    extra_rows: dict = field(default_factory=dict)      # model name -> [acc rows]
    logs: dict = field(default_factory=dict)            # name -> {"step": [...], "value": [...]}
    train_s: float = 0.0
    eval_s: float = 0.0
    wall_s: float = 0.0
    segments: int = 1                                   # 1 + number of resumptions


def _row(r: EvalRow) -> dict:
    return {"acc": r.acc, "acc_task_masked": r.acc_task_masked, "per_class": {str(k): v for k, v in r.per_class.items()},
            "n": r.n}


def execute(run: Run, run_dir: Path, checkpoint: Optional[Path] = None) -> dict:
    """Train on the stream and evaluate after every experience; returns the result dict.

    With `checkpoint` (a path), the full state is saved there after every experience (and every
    `checkpoint.every_steps` steps), and an existing checkpoint of the same run is resumed from.
    """
    cfg, stream, strategy = run.cfg, run.stream, run.strategy
    if run.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(run.device)
    # code and data identity, taken before training starts (clbench/provenance.py)
    run.provenance = collect_provenance(cfg, stream.loaded_dataset)
    t_start = time.perf_counter()
    P = _Progress()
    main_eval = run.evaluator or run.val_evaluator
    anytime = AnytimeEvaluator.from_config(main_eval, cfg)
    ck_every = int(cfg["checkpoint"]["every_steps"]) if checkpoint is not None else 0

    resumed = checkpoint is not None and checkpoint.is_file() and _load_checkpoint(run, checkpoint, P, anytime)
    if not resumed and checkpoint is not None:
        RunDir.clear(run_dir)     # leftovers of an earlier attempt (W&B files) do not mix into this run
    for lg in run.loggers:
        lg.start(run)

    def save(where: str) -> None:
        if checkpoint is not None:
            _save_checkpoint(run, checkpoint, P, anytime, wall_s=time.perf_counter() - t_start)

    def evaluate_all(row_index: int) -> EvalRow:   # the entries eval.schedule scores in this row
        row = run.evaluator.evaluate(strategy, row=row_index) if run.evaluator is not None else None
        vrow = run.val_evaluator.evaluate(strategy, row=row_index) if run.val_evaluator is not None else None
        if row_index >= 0:
            for name, model in strategy.extra_models().items():
                P.extra_rows.setdefault(name, []).append(main_eval.evaluate(strategy, model=model, row=row_index).acc)
        return row, vrow

    with _Signals() as sig:
        if not resumed:
            t0 = time.perf_counter()
            row, vrow = evaluate_all(-1)
            _sync(run.device)
            P.eval_s += time.perf_counter() - t0
            P.initial = _row(row) if row is not None else None
            P.initial_val = _row(vrow) if vrow is not None else None
            for lg in run.loggers:
                lg.log_row(run, -1, row or vrow)
            if anytime is not None:
                anytime.add_row(-1, (row or vrow).acc)

        batch_size = int(cfg["train"]["batch_size"])
        for exp in stream.experiences[P.next_exp:]:
            mid = strategy.loop is not None and strategy.loop.get("experience") == exp.index
            n_steps = exp.train.n_batches(batch_size) * int(cfg["train"]["epochs"])
            for lg in run.loggers:
                lg.experience_start(run, exp, n_steps)
            if anytime is not None and not mid:
                anytime.start_experience(exp.index)
            t0 = time.perf_counter()
            for n in strategy.train_experience(exp.sealed()):
                logs = strategy.pop_logs()
                for lg in run.loggers:
                    lg.train_step(run, strategy.last_loss)
                if logs:
                    _record_logs(P, strategy.global_step, logs)
                    for lg in run.loggers:
                        lg.log_values(run, strategy.global_step, dict(logs))
                if anytime is not None:
                    point = anytime.after_step(strategy, n)
                    if point is not None:
                        for lg in run.loggers:
                            lg.log_anytime(run, point)
                if sig.signum is not None or (ck_every and strategy.global_step % ck_every == 0):
                    P.train_s += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    save("step")
                    if sig.signum is not None:
                        _interrupted(run, sig, checkpoint, f"in experience {exp.index}, step "
                                                           f"{strategy.loop['step'] if strategy.loop else '?'}")
            _sync(run.device)
            P.train_s += time.perf_counter() - t0
            logs = strategy.pop_logs()
            if logs:
                _record_logs(P, strategy.global_step, logs)
            t0 = time.perf_counter()
            row, vrow = evaluate_all(exp.index)
            _sync(run.device)
            P.eval_s += time.perf_counter() - t0
            if row is not None:
                P.rows.append(_row(row))
            if vrow is not None:
                P.val_rows.append(_row(vrow))
            if anytime is not None:
                anytime.add_row(exp.index, (row or vrow).acc)
            for lg in run.loggers:
                lg.log_row(run, exp.index, row or vrow)
            P.next_exp = exp.index + 1
            if P.next_exp < len(stream):
                save("experience")
                if sig.signum is not None:
                    _interrupted(run, sig, checkpoint, f"after experience {exp.index}")
    return _result(run, P, anytime, t_start)


def _record_logs(P: _Progress, step: int, logs: list) -> None:
    for name, value in logs:
        curve = P.logs.setdefault(name, {"step": [], "value": []})
        curve["step"].append(step)
        curve["value"].append(value)


def _interrupted(run: Run, sig: _Signals, checkpoint: Optional[Path], where: str):
    folder = checkpoint.parent if checkpoint is not None else Path(run.cfg["out"])
    raise RunInterrupted(sig.signum, where, folder)


def _metrics(rows: list, initial: dict, stream: Stream, reference, anytime_acc_seen=None) -> dict:
    # the one metrics function `report` and the leaderboard's submit/validate use too
    return M.summarize([r["acc"] for r in rows], initial["acc"], stream.learned_rows(), setting=stream.setting,
                       task_sizes=initial["n"], task_masked=[r["acc_task_masked"] for r in rows],
                       reference=reference and reference["accuracy"], anytime_acc_seen=anytime_acc_seen)


def _result(run: Run, P: _Progress, anytime, t_start: float) -> dict:
    cfg, stream, strategy = run.cfg, run.stream, run.strategy
    reference = run.reference
    extra: dict = {}
    metrics: dict = {}
    curve = anytime.result() if anytime is not None else None
    seen = curve["acc_seen"] if curve is not None else None    # scored on test, or on validation in a tune
    if P.rows:
        metrics = _metrics(P.rows, P.initial, stream, reference, seen)
    if P.val_rows:
        extra["validation_accuracy_matrix"] = [r["acc"] for r in P.val_rows]
        extra["initial_validation_accuracy"] = P.initial_val["acc"]
        extra["validation_metrics"] = _metrics(P.val_rows, P.initial_val, stream, None, None if P.rows else seen)
    train_s, eval_s = P.train_s, P.eval_s
    if anytime is not None:  # anytime evaluation ran inside training: count it as evaluation time
        extra["anytime"] = curve
        train_s -= anytime.eval_s
        eval_s += anytime.eval_s
    if reference is not None:
        extra["reference"] = reference
    if P.extra_rows:
        extra["extra_models"] = {name: {"accuracy_matrix": rows, "acc": M.acc(rows, stream.learned_rows()),
                                        "bwt": M.bwt(rows, stream.learned_rows())}
                                 for name, rows in P.extra_rows.items()}
    if P.logs:
        extra["logs"] = P.logs
    total_s = P.wall_s + time.perf_counter() - t_start
    memory = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **strategy.memory_footprint()}
    if run.device.type == "cuda":
        memory["peak_cuda_mb"] = torch.cuda.max_memory_allocated(run.device) / 2**20
    cfg_out = {k: v for k, v in cfg.items() if k != "config_source"}
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": run.run_id,
        "config": cfg_out,
        "config_hash": run.cfg_hash,
        "config_source": cfg.get("config_source"),
        "seed": int(cfg["seed"]),
        "stream_seed": int(cfg["stream_seed"]),
        "stream": stream.describe(),
        "accuracy_matrix": [r["acc"] for r in P.rows] if P.rows else None,
        "initial_accuracy": P.initial["acc"] if P.initial else None,
        "metrics": metrics,
        "task_masked_accuracy_matrix": [r["acc_task_masked"] for r in P.rows] if P.rows else None,
        "initial_task_masked_accuracy": P.initial["acc_task_masked"] if P.initial else None,
        "per_class_accuracy": [r["per_class"] for r in P.rows] if P.rows else None,
        "strategy_state": {**strategy.extra_state(),
                           **{f"callback:{type(cb).__name__}": cb.extra_state() for cb in strategy.callbacks}},
        "timing": {"total_s": total_s, "train_s": train_s, "eval_s": eval_s, "segments": P.segments,
                   **({"seed_group": run.seed_group} if run.seed_group else {})},   # times of the whole group
        "memory": memory,
        "env": environment(run.device),
        "provenance": run.provenance,
        **extra,   # "anytime", "reference", "validation_*", "extra_models", "logs" when present
    }


# ----- checkpoints ---------------------------------------------------------------------------------------
def _save_checkpoint(run: Run, path: Path, P: _Progress, anytime, wall_s: float) -> None:
    state = {
        "version": CHECKPOINT_VERSION,
        "run_id": run.run_id,
        "config_hash": run.cfg_hash,
        "identity": _identity(run),
        "progress": S.pack({**P.__dict__, "wall_s": P.wall_s + wall_s}),
        "strategy": run.strategy.state_dict(),
        "rng": S.rng_state(),
        "anytime": S.pack(anytime.state_dict()) if anytime else None,
        "loggers": {type(lg).__name__: lg.state() for lg in run.loggers},
    }
    S.save(path, state)


def _identity(run: Run) -> list:
    p = run.provenance or {}
    return [p.get("code_hash"), (p.get("data") or {}).get("data_hash")]


def _load_checkpoint(run: Run, path: Path, P: _Progress, anytime) -> bool:
    """Restore a checkpoint of this run; False (and a warning) when it belongs to another configuration."""
    try:
        state = S.load(path)
    except Exception as e:  # a torn or foreign file: start over rather than crash
        warnings.warn(f"cannot read checkpoint {path} ({type(e).__name__}: {e}); starting the run over")
        return False
    if state.get("version") != CHECKPOINT_VERSION or state.get("config_hash") != run.cfg_hash:
        warnings.warn(f"checkpoint {path} is from another configuration or clbench version; starting the run over")
        return False
    if state.get("identity") != _identity(run):
        warnings.warn(f"checkpoint {path} was written by other code or data (code/data identity changed since); "
                      f"starting the run over rather than mixing the two")
        return False
    if not run.strategy.resumable:
        warnings.warn(f"strategy '{run.cfg['strategy']['name']}' cannot resume mid-run; starting it over")
        return False
    run.strategy.load_state_dict(state["strategy"])
    for k, v in S.unpack(state["progress"]).items():
        setattr(P, k, v)
    P.segments += 1
    if anytime is not None and state.get("anytime") is not None:
        anytime.load_state_dict(S.unpack(state["anytime"]))
    for lg in run.loggers:
        lg.restore(state.get("loggers", {}).get(type(lg).__name__) or {})
    S.set_rng_state(state["rng"])
    return True


def run(cfg_or_overrides=None, loggers: Optional[list[Logger]] = None, overwrite: bool = False,
        console: bool = True, prepared: Optional[Run] = None, on_ready=None) -> tuple[dict, Path]:
    """Run one experiment end to end. Returns (result, run folder).

    `cfg_or_overrides`: a resolved config dict, or a list of `key=value` overrides. Re-running the same
    command resumes an unfinished run (unless `resume=false`); a repeated finished run gets a fresh folder
    (`<run_id>_r2`), unless `overwrite` (sweeps decide themselves what is complete). `prepared`: the Run
    `prepare(cfg)` built already; `on_ready(run)` is called just before training (seed-parallel groups).
    """
    cfg = cfg_or_overrides if isinstance(cfg_or_overrides, dict) else compose(cfg_or_overrides or [])
    check_out_dir(cfg["out"])  # [issue 13: a bad out= fails before anything is built or written]
    r = prepared or prepare(cfg)
    rd = RunDir(cfg["out"], r.run_id, overwrite=overwrite, resume=bool(cfg["resume"]))
    r.run_id = rd.run_id
    r.loggers = list(loggers) if loggers is not None else []
    if loggers is None:
        if console:
            r.loggers.append(ConsoleLogger(progress=bool(cfg.get("progress", True))))
        if cfg["wandb"]["mode"] != "disabled":
            r.loggers.append(WandbLogger(cfg, rd.work, r.run_id, r.cfg_hash))
    checkpoint = rd.checkpoint if cfg["checkpoint"]["enabled"] else None
    failed, interrupted = True, False
    try:
        if on_ready is not None:
            on_ready(r)
        result = execute(r, rd.work, checkpoint)
        for lg in r.loggers:
            lg.finish(r, result)
        failed = False
    except (RunInterrupted, KeyboardInterrupt):
        interrupted = True
        raise
    finally:
        for lg in r.loggers:
            lg.close(failed=failed, interrupted=interrupted)
        if failed and (interrupted or (checkpoint is not None and checkpoint.is_file())):
            rd.release()    # keep the folder and its checkpoint: the same command resumes it
        elif failed:
            rd.discard()
    result["wandb_dir"] = wandb_run_dir(rd.work)
    write_json_atomic(rd.work / "result.json", result)
    return result, rd.commit()
