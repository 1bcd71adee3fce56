"""The engine: build the stream, the model and the strategy from a resolved config, then

    R0 = evaluate()                       # the row before any training (for FWT)
    for exp in stream:
        strategy.train(exp)
        R[i] = evaluate()                 # one row of the accuracy matrix
    metrics = f(R, R0); write result.json

Everything that can be wrong with the config fails in `prepare`, before any file is written.
"""
from __future__ import annotations

import inspect
import os
import random
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from clbench import metrics as M
from clbench.config import ConfigError, compose, config_hash
from clbench.data import load_dataset
from clbench.evaluator import AnytimeEvaluator, Evaluator, load_reference
from clbench.loggers import ConsoleLogger, Logger, WandbLogger, wandb_run_dir
from clbench.models import build_model
from clbench.registry import SCENARIOS, STRATEGIES
from clbench.results import SCHEMA_VERSION, RunDir, environment, make_run_id, write_json_atomic
from clbench.strategy import Strategy, StreamInfo
from clbench.stream import Stream


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"bad value for 'device': {name!r} requested but CUDA is not available (use device=cpu)")
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


def _construct(kind: str, cls, options: dict):
    """Call a plugin constructor with config options; a wrong option names the key and the valid ones."""
    try:
        inspect.signature(cls).bind(**options)
    except TypeError as e:
        params = [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]
        raise ConfigError(f"bad '{kind}' options for '{getattr(cls, '__name__', cls)}': {e}. "
                          f"Valid options: {', '.join(params)}") from None
    return cls(**options)


def build_stream(cfg: dict, device: torch.device) -> Stream:
    dataset = load_dataset(cfg, device)
    sc = cfg["scenario"]
    scenario = _construct("scenario", SCENARIOS.get(sc["name"]), {k: v for k, v in sc.items() if k != "name"})
    stream = scenario.build(dataset, int(cfg["stream_seed"]))
    stream.name = sc["name"]
    stream.dataset = dataset
    # A scenario may fix training keys that are part of its protocol (an online stream: one pass).
    for key, value in (stream.description.get("train_requirements") or {}).items():
        if cfg["train"].get(key) != value:
            raise ConfigError(f"bad value for 'train.{key}': scenario '{sc['name']}' with these options requires "
                              f"train.{key}={value}, got {cfg['train'].get(key)!r}")
    return stream


def stream_info(stream: Stream) -> StreamInfo:
    return StreamInfo(name=stream.name, setting=stream.setting, n_classes=stream.n_classes,
                      n_experiences=len(stream), task_classes=stream.task_classes,
                      input_shape=stream.input_shape)


def build_strategy(cfg: dict, stream: Stream, device: torch.device) -> Strategy:
    name = cfg["strategy"]["name"]
    cls = STRATEGIES.get(name.split(":")[0])
    if stream.setting not in getattr(cls, "settings", (stream.setting,)):
        raise ConfigError(f"strategy '{name}' does not support the {stream.setting} setting of benchmark "
                          f"'{cfg['benchmark']['name']}' (it supports: {', '.join(cls.settings)})")
    torch.manual_seed(int(cfg["seed"]))  # the same seed gives the same initial weights
    model = build_model(cfg, stream.dataset)
    return cls(model, dict(cfg["strategy"]), cfg["train"], stream_info(stream), device, seed=int(cfg["seed"]))


@dataclass
class Run:
    cfg: dict
    cfg_hash: str
    run_id: str
    device: torch.device
    stream: Stream
    strategy: Strategy
    evaluator: Evaluator
    loggers: list[Logger] = field(default_factory=list)
    reference: Optional[dict] = None   # joint-training reference (eval.reference) for intransigence


def prepare(cfg: dict) -> Run:
    """Build everything for a run; raises ConfigError/UnknownNameError before anything is written."""
    device = resolve_device(str(cfg["device"]))
    seed_everything(int(cfg["seed"]), bool(cfg.get("deterministic", False)))
    h = config_hash(cfg)
    stream = build_stream(cfg, device)
    strategy = build_strategy(cfg, stream, device)
    evaluator = Evaluator(stream, batch_size=int(cfg["eval"].get("batch_size", 1000)))
    every = cfg["eval"].get("every_steps") or 0
    if not isinstance(every, int) or isinstance(every, bool) or every < 0:
        raise ConfigError(f"bad value for 'eval.every_steps': expected an integer >= 0 (0: off), got {every!r}")
    ref = cfg["eval"].get("reference")
    reference = load_reference(ref, stream, cfg) if ref else None
    return Run(cfg=cfg, cfg_hash=h, run_id=make_run_id(cfg, h), device=device, stream=stream,
               strategy=strategy, evaluator=evaluator, reference=reference)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def execute(run: Run, run_dir: Path) -> dict:
    """Train on the stream and evaluate after every experience; returns the result dict."""
    cfg, stream, strategy = run.cfg, run.stream, run.strategy
    if run.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(run.device)
    t_start = time.perf_counter()
    train_s = eval_s = 0.0
    for lg in run.loggers:
        lg.start(run)

    every = int(cfg["eval"].get("every_steps") or 0)
    anytime = AnytimeEvaluator(run.evaluator, every, stream.learned_rows()) if every > 0 else None

    def on_step(_strategy, loss):
        for lg in run.loggers:
            lg.train_step(run, loss)
        if anytime is not None:
            point = anytime.after_step(_strategy)
            if point is not None:
                for lg in run.loggers:
                    lg.log_anytime(run, point)
    strategy.step_callback = on_step

    t0 = time.perf_counter()
    initial = run.evaluator.evaluate(strategy)
    _sync(run.device)
    eval_s += time.perf_counter() - t0
    for lg in run.loggers:
        lg.log_row(run, -1, initial)
    if anytime is not None:
        anytime.add_row(-1, initial.acc)

    rows, rows_masked, per_class = [], [], []
    batch_size = int(cfg["train"]["batch_size"])
    for exp in stream:
        n_steps = exp.train.n_batches(batch_size) * int(cfg["train"]["epochs"])
        for lg in run.loggers:
            lg.experience_start(run, exp, n_steps)
        if anytime is not None:
            anytime.start_experience(exp.index)
        t0 = time.perf_counter()
        strategy.train(exp)
        _sync(run.device)
        train_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        row = run.evaluator.evaluate(strategy)
        strategy.after_evaluation(run.evaluator)
        _sync(run.device)
        eval_s += time.perf_counter() - t0
        rows.append(row.acc), rows_masked.append(row.acc_task_masked), per_class.append(row.per_class)
        if anytime is not None:
            anytime.add_row(exp.index, row.acc)
        for lg in run.loggers:
            lg.experience_end(run, exp)
            lg.log_row(run, exp.index, row)

    reference = run.reference
    extra = {}
    if anytime is not None:  # anytime evaluation ran inside training: count it as evaluation time
        extra["anytime"] = anytime.result()
        train_s -= anytime.eval_s
        eval_s += anytime.eval_s
    if reference is not None:
        extra["reference"] = reference
    # --- metrics: the one function report and the leaderboard use too (board branch) ---
    metrics = M.summarize(rows, initial.acc, stream.learned_rows(), setting=stream.setting, task_sizes=initial.n,
                          task_masked=rows_masked, reference=reference and reference["accuracy"],
                          anytime_acc_seen=extra["anytime"]["acc_seen"] if anytime is not None else None)
    # --- end of metrics ---
    total_s = time.perf_counter() - t_start
    memory = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if run.device.type == "cuda":
        memory["peak_cuda_mb"] = torch.cuda.max_memory_allocated(run.device) / 2**20
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": run.run_id,
        "config": cfg,
        "config_hash": run.cfg_hash,
        "seed": int(cfg["seed"]),
        "stream_seed": int(cfg["stream_seed"]),
        "stream": stream.describe(),
        "accuracy_matrix": rows,
        "initial_accuracy": initial.acc,
        "metrics": metrics,
        "task_masked_accuracy_matrix": rows_masked,
        "initial_task_masked_accuracy": initial.acc_task_masked,
        "per_class_accuracy": [{str(c): a for c, a in pc.items()} for pc in per_class],
        "strategy_state": strategy.extra_state(),
        "timing": {"total_s": total_s, "train_s": train_s, "eval_s": eval_s},
        "memory": memory,
        "env": environment(run.device),
        **extra,   # "anytime" (eval.every_steps > 0), "reference" (eval.reference given)
    }


def run(cfg_or_overrides=None, loggers: Optional[list[Logger]] = None, overwrite: bool = False,
        console: bool = True) -> tuple[dict, Path]:
    """Run one experiment end to end. Returns (result, run folder).

    `cfg_or_overrides`: a resolved config dict, or a list of `key=value` overrides.
    """
    cfg = cfg_or_overrides if isinstance(cfg_or_overrides, dict) else compose(cfg_or_overrides or [])
    r = prepare(cfg)
    run_id = r.run_id
    if not overwrite:  # a repeated `clbench run` gets a fresh folder; sweeps pass overwrite and skip instead
        k = 1
        while (Path(cfg["out"]) / run_id).exists():
            k += 1
            run_id = f"{r.run_id}_r{k}"
        r.run_id = run_id
    rd = RunDir(cfg["out"], r.run_id, overwrite=overwrite)
    r.loggers = list(loggers) if loggers is not None else []
    if loggers is None:
        if console:
            r.loggers.append(ConsoleLogger(progress=bool(cfg.get("progress", True))))
        if cfg["wandb"]["mode"] != "disabled":
            r.loggers.append(WandbLogger(cfg, rd.work, r.run_id, r.cfg_hash))
    failed = True
    try:
        result = execute(r, rd.work)
        for lg in r.loggers:
            lg.finish(r, result)
        failed = False
    finally:
        for lg in r.loggers:
            lg.close(failed=failed)
        if failed:
            rd.discard()
    result["wandb_dir"] = wandb_run_dir(rd.work)
    write_json_atomic(rd.work / "result.json", result)
    return result, rd.commit()
