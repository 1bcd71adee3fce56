"""Explicit state for checkpoints: nested dicts/lists of tensors and plain values, never pickled objects.

`pack(value)` turns what a strategy keeps (tensors, modules, replay buffers, generators, dicts and lists of
them, numbers, strings) into plain data that `torch.load(weights_only=True)` reads back safely across versions
(Avalanche's dill checkpoints of whole objects break when a class changes; these do not). `unpack(saved, current)`
restores it into the live object: a module or buffer loads its state in place, so the strategy's own
construction code stays the only place that builds objects.

`nbytes(value)` counts the bytes of the tensors a value holds, for the memory a method keeps.
"""
from __future__ import annotations

import copy
import io
from typing import Any

import torch
from torch import Tensor, nn

MODULE, STATEFUL, GENERATOR, TUPLE = "__module__", "__state__", "__generator__", "__tuple__"


def pack(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, nn.Module):
        return {MODULE: {k: v.detach().clone() for k, v in value.state_dict().items()},
                "modes": [m.training for m in value.modules()],        # e.g. BatchNorm frozen by GPM
                "requires_grad": [p.requires_grad for p in value.parameters()]}
    if isinstance(value, torch.Generator):
        return {GENERATOR: value.get_state()}
    if hasattr(value, "state_dict") and hasattr(value, "load_state_dict"):
        return {STATEFUL: pack(value.state_dict())}
    if isinstance(value, dict):
        return {k: pack(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return {TUPLE: [pack(v) for v in value]}
    if isinstance(value, list):
        return [pack(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.device):
        return str(value)
    raise TypeError(f"cannot checkpoint a {type(value).__name__}: keep tensors, modules, buffers, generators, "
                    f"dicts/lists of them or plain values, or override state_dict()/load_state_dict()")


def unpack(saved: Any, current: Any = None, template: nn.Module | None = None) -> Any:
    """The saved value, restored into `current` where it is a live object (module, buffer, generator).

    A module saved where the attribute is now None (e.g. a teacher copy made after the first experience) is
    rebuilt as a deep copy of `template` (the strategy's model) when the keys match.
    """
    if isinstance(saved, dict) and MODULE in saved:
        module = current
        if module is None:
            if template is None:
                raise ValueError("a saved module has no live object to load into and no template")
            module = copy.deepcopy(template)
        module.load_state_dict(saved[MODULE])
        for m, mode in zip(module.modules(), saved["modes"]):
            m.training = bool(mode)
        for p, rg in zip(module.parameters(), saved["requires_grad"]):
            p.requires_grad_(bool(rg))
        return module
    if isinstance(saved, dict) and GENERATOR in saved:
        g = current if isinstance(current, torch.Generator) else torch.Generator()
        g.set_state(saved[GENERATOR])
        return g
    if isinstance(saved, dict) and STATEFUL in saved:
        if current is None:
            raise ValueError("a saved stateful object has no live object to load into")
        current.load_state_dict(unpack(saved[STATEFUL]))
        return current
    if isinstance(saved, dict) and TUPLE in saved:
        cur = current if isinstance(current, tuple) else ()
        return tuple(unpack(v, cur[i] if i < len(cur) else None, template) for i, v in enumerate(saved[TUPLE]))
    if isinstance(saved, dict):
        cur = current if isinstance(current, dict) else {}
        return {k: unpack(v, cur.get(k), template) for k, v in saved.items()}
    if isinstance(saved, list):
        cur = current if isinstance(current, list) else []
        return [unpack(v, cur[i] if i < len(cur) else None, template) for i, v in enumerate(saved)]
    if isinstance(saved, Tensor) and isinstance(current, Tensor):
        return saved.to(current.device)
    if isinstance(saved, Tensor) and isinstance(template, nn.Module):
        p = next(template.parameters(), None)
        return saved.to(p.device) if p is not None else saved
    return saved


def nbytes(value: Any, seen: set | None = None) -> int:
    """Bytes of the tensors in a value (each storage counted once)."""
    seen = set() if seen is None else seen
    if isinstance(value, Tensor):
        key = (value.untyped_storage().data_ptr(), value.device)
        if key in seen:
            return 0
        seen.add(key)
        return value.numel() * value.element_size()
    if isinstance(value, nn.Module):
        return sum(nbytes(t, seen) for t in [*value.parameters(), *value.buffers()])
    if hasattr(value, "state_dict") and not isinstance(value, (torch.Generator, torch.optim.Optimizer)):
        return nbytes(value.state_dict(), seen)
    if isinstance(value, dict):
        return sum(nbytes(v, seen) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(nbytes(v, seen) for v in value)
    return 0


def rng_state() -> dict:
    """Every global random stream: Python, NumPy, torch CPU and CUDA."""
    import random

    import numpy as np
    np_state = np.random.get_state()
    state = {"python": _py_state(random.getstate()),
             "numpy": {"keys": torch.from_numpy(np_state[1].astype("int64")), "pos": int(np_state[2]),
                       "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import random

    import numpy as np
    random.setstate(_py_state_back(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype("uint32"), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _py_state(s: tuple) -> dict:
    version, internal, gauss = s
    return {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss}


def _py_state_back(d: dict) -> tuple:
    return (d["version"], tuple(int(v) for v in d["internal"].tolist()), d["gauss"])


def save(path, state: dict) -> None:
    """Write a checkpoint atomically (temp file, fsync, rename): a kill leaves the old one or the new one.

    Serialised in memory first, so that a full disk surfaces as the OS's error (StorageError naming the
    file, no temporary file left) rather than as torch's zip-writer RuntimeError."""
    from clbench.results import write_text_atomic
    buf = io.BytesIO()
    torch.save(state, buf)
    write_text_atomic(path, buf.getbuffer())


def load(path) -> dict:
    """Read a checkpoint without executing anything from it (weights_only: tensors and plain values)."""
    return torch.load(path, map_location="cpu", weights_only=True)
