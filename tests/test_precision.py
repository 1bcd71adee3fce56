"""train.amp and train.compile: off (the default) changes nothing; on, they act where they say they do."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clbench.config import compose
from clbench.engine import execute, prepare
from clbench.errors import ConfigError
from clbench.testing import tiny_overrides


def _bare_naive(run) -> tuple[list[torch.Tensor], list[list[float]]]:
    """The naive strategy as a plain PyTorch loop (same initial weights, same generator use): the reference for
    what the engine computes with every option of this module off."""
    from clbench.models import build_model
    cfg, stream = run.cfg, run.stream
    torch.manual_seed(int(cfg["seed"]))
    model = build_model(cfg, stream.dataset)
    g = torch.Generator().manual_seed(int(cfg["seed"]))
    bs, rows = int(cfg["train"]["batch_size"]), []
    for exp in stream:
        data = exp.sealed().train
        opt = torch.optim.SGD(model.parameters(), lr=float(cfg["train"]["lr"]))
        for _ in range(int(cfg["train"]["epochs"])):
            order = torch.randperm(len(data), generator=g)
            for s in range(0, len(data), bs):
                b = data.get(order[s:s + bs])
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(b.x), b.y).backward()
                opt.step()
        with torch.inference_mode():
            tests = [t.test.get(torch.arange(len(t.test))) for t in stream.eval_tasks]
            rows.append([int((model(b.x).argmax(1) == b.y).sum()) / len(b.y) for b in tests])
    return [p.detach() for p in model.parameters()], rows


def test_off_is_the_plain_loop_bit_for_bit():
    cfg = compose(tiny_overrides("class-il", "naive", ["train.epochs=2"]))
    assert cfg["train"]["amp"] == "off" and cfg["train"]["compile"] == "off"
    run = prepare(cfg)
    result = execute(run, None)
    weights, rows = _bare_naive(prepare(cfg))
    assert all(torch.equal(p, q) for p, q in zip(run.strategy.model.parameters(), weights))
    assert result["accuracy_matrix"] == rows
    assert run.strategy.scaler is None and run.strategy._compiled is None and run.strategy._autocast is None


def test_bf16_runs_the_training_forward_in_bfloat16_and_evaluation_in_float32():
    run = prepare(compose(tiny_overrides("class-il", "replay", ["train.amp=bf16"])))
    seen = {"train": set(), "eval": set()}

    def hook(module, inputs, output):
        seen["train" if module.training else "eval"].add(output.dtype)

    run.strategy.model.classifier.register_forward_hook(hook)
    result = execute(run, None)
    assert seen == {"train": {torch.bfloat16}, "eval": {torch.float32}}
    assert all(p.dtype == torch.float32 for p in run.strategy.model.parameters())   # float32 master weights
    assert result["config"]["train"]["amp"] == "bf16" and 0 <= result["metrics"]["acc"] <= 1


def test_amp_and_compile_are_refused_where_they_cannot_act():
    with pytest.raises(ConfigError, match="train.amp.*fp16 needs a CUDA device"):
        prepare(compose(tiny_overrides("class-il", "naive", ["train.amp=fp16", "device=cpu"])))
    with pytest.raises(ConfigError, match="train.compile"):
        compose(tiny_overrides("class-il", "naive", ["train.compile=fast"]))


def test_compile_wraps_the_training_and_evaluation_forward(monkeypatch):
    """train.compile=MODE hands the model to torch.compile with that mode; training (Strategy.forward) and the
    evaluation of the trained model go through the compiled module, which shares the model's parameters;
    state_dict keys are unchanged. (A stand-in for torch.compile: compiling takes minutes on this CPU; the real
    dynamo wrapper runs in the next test, the real compiler in benchmarks/amp_compile.py.)"""
    calls = {"mode": None, "train": 0, "eval": 0}

    class Compiled(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.inner = model

        def forward(self, x):
            calls["train" if self.inner.training else "eval"] += 1
            return self.inner(x)

        def __len__(self):           # as torch's OptimizedModule: no truth value from len()
            raise TypeError("does not support len()")

    def fake_compile(model, mode=None):
        calls["mode"] = mode
        return Compiled(model)

    monkeypatch.setattr(torch, "compile", fake_compile)
    run = prepare(compose(tiny_overrides("class-il", "naive", ["train.compile=reduce-overhead"])))
    plain = prepare(compose(tiny_overrides("class-il", "naive")))
    a, b = execute(run, None), execute(plain, None)
    assert calls["mode"] == "reduce-overhead" and calls["train"] > 0 and calls["eval"] > 0
    assert a["accuracy_matrix"] == b["accuracy_matrix"]            # same module underneath
    assert list(run.strategy.state_dict()["model"]) == list(plain.strategy.state_dict()["model"])


def test_compile_through_dynamo_changes_no_number(monkeypatch):
    """The real torch.compile wrapper (dynamo tracing every forward of training and evaluation), with the eager
    backend so that no compiler runs: the results are the plain run's, bit for bit."""
    import torch._dynamo
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: real(model, backend="eager"))
    torch._dynamo.reset()
    extra = ["dataset.train_per_class=6", "eval.batch_size=4096"]
    plain = execute(prepare(compose(tiny_overrides("domain-il", "replay", extra))), None)
    run = prepare(compose(tiny_overrides("domain-il", "replay", [*extra, "train.compile=default"])))
    traced = execute(run, None)
    assert type(run.strategy._compiled).__name__ == "OptimizedModule"
    assert traced["accuracy_matrix"] == plain["accuracy_matrix"] and traced["metrics"] == plain["metrics"]


def test_datasets_move_to_a_gpu_through_pinned_memory(monkeypatch):
    """The dataset goes to the device once (then stays there); to a GPU it is copied from pinned memory. (No GPU
    here: the copy is recorded instead of made.)"""
    from clbench.data import to_device
    calls = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: (calls.append("pin"), self)[1])
    real_to = torch.Tensor.to

    def fake_to(self, *args, **kwargs):
        if args and isinstance(args[0], torch.device) and args[0].type == "cuda":
            calls.append(("to", str(args[0]), kwargs.get("non_blocking")))
            return self
        return real_to(self, *args, **kwargs)
    monkeypatch.setattr(torch.Tensor, "to", fake_to)
    x = torch.zeros(3, dtype=torch.uint8)
    assert to_device(x, "cpu") is x and calls == []
    to_device(x, "cuda:0")
    assert calls == ["pin", ("to", "cuda:0", True)]


def test_ray_runs_can_share_a_gpu(monkeypatch):
    """ray.num_gpus takes a fraction: four runs of 0.25 share one device (Ray schedules by these requests)."""
    pytest.importorskip("ray")
    from clbench.executors import make_executor
    ex = make_executor({"executor": "ray", "ray": {"num_gpus": 0.25, "num_cpus": 1}})
    assert ex.num_gpus == 0.25 and "0.25 GPU" in ex.describe()
    with pytest.raises(ConfigError, match="num_gpus"):
        make_executor({"executor": "ray", "ray": {"num_gpus": -0.5}})
