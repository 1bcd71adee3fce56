"""Datasets as tensors: every loader returns a `TensorDataset` with train/test tensors in their native dtype.

A loader is registered in the `clbench.datasets` entry-point group and called as
`loader(root=..., download=..., **options)`. Normalisation is part of the model (its first layer), so
raw tensors stay compact (uint8 images) everywhere, replay buffers included.

Every loader's output goes through `clbench.data.checks.check_dataset` here, in `load_dataset`: corrupt
data is refused with one line naming the file. Loaders hand labels over as read (any integer dtype, or
floats); the check refuses anything that is not a whole number and makes them int64, so a loader must
not turn float labels into integers itself (that would truncate 2.7 to 2 before anyone could see it).
A loader names the files it read in `sources` ({"x_train": path, "y_train": path, ...}); the messages
cite them, and the data fingerprint of a run (clbench/provenance.py) is cached per process while those
files are unchanged.
"""
from __future__ import annotations

import inspect
import json
import os
from dataclasses import dataclass, field, replace
from typing import Optional

import torch
from torch import Tensor

from clbench.errors import ConfigError, bad_value
from clbench.data.checks import check_dataset, warn_short_classes
from clbench.registry import DATASETS


@dataclass
class TensorDataset:
    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    n_classes: int
    input_shape: tuple            # shape of one input, e.g. (1, 28, 28)
    scale: float                  # raw value that maps to 1.0 (255 for uint8 images)
    mean: tuple                   # per-channel mean and std of the scaled training inputs
    std: tuple
    x_val: Optional[Tensor] = None   # validation split held out of the training data (eval.validation)
    y_val: Optional[Tensor] = None
    sources: dict = field(default_factory=dict)   # tensor name -> the file (or folder) it was read from
    test_may_lack_classes: bool = False           # a class with no test samples is a warning, not an error

    def to(self, device) -> "TensorDataset":
        for name in ("x_train", "y_train", "x_test", "y_test", "x_val", "y_val"):
            if getattr(self, name) is not None:
                setattr(self, name, getattr(self, name).to(device))
        return self

    def describe(self) -> dict:
        d = {"name": self.name, "n_train": len(self.y_train),
             "n_test": len(self.y_test) if self.y_test is not None else None,
             "n_classes": self.n_classes, "input_shape": list(self.input_shape),
             "dtype": str(self.x_train.dtype).replace("torch.", "")}
        if self.y_val is not None:
            d["n_val"] = len(self.y_val)
        if getattr(self, "subset", None):
            d["subset"] = dict(self.subset)
        return d


def channel_stats(x: Tensor, scale: float) -> tuple[tuple, tuple]:
    """Per-channel mean/std of scaled inputs shaped (N, C, ...) or (N, D) (one channel)."""
    xf = x.float() / scale
    if xf.dim() <= 2:
        return (xf.mean().item(),), (xf.std().item(),)
    dims = [0] + list(range(2, xf.dim()))
    return tuple(xf.mean(dims).tolist()), tuple(xf.std(dims).tolist())


def per_class_subset(y: Tensor, k: int) -> Tensor:
    """Indices of the first k samples of every class, in file order (deterministic, seed-free)."""
    keep = torch.zeros(len(y), dtype=torch.bool)
    for c in torch.unique(y).tolist():
        keep[(y == c).nonzero().squeeze(1)[:k]] = True
    return keep.nonzero().squeeze(1)


def limit_per_class(ds: TensorDataset, train_per_class=None, test_per_class=None) -> TensorDataset:
    """Keep the first `train_per_class` / `test_per_class` samples of every class (fast runs, evidence).

    Normalisation statistics are kept from the full dataset: a subset is the same benchmark, smaller.
    """
    for split, k in (("train", train_per_class), ("test", test_per_class)):
        if k is None or getattr(ds, f"y_{split}") is None:
            continue
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise bad_value(f"dataset.{split}_per_class", f"expected an integer >= 1 or null, "
                              f"got {k!r}")
        x, y = getattr(ds, f"x_{split}"), getattr(ds, f"y_{split}")
        warn_short_classes(ds, split, k, y)
        idx = per_class_subset(y.cpu(), k).to(y.device)
        setattr(ds, f"x_{split}", x[idx])
        setattr(ds, f"y_{split}", y[idx])
    if train_per_class is not None or test_per_class is not None:
        ds.subset = {"train_per_class": train_per_class, "test_per_class": test_per_class}
    return ds


def load_dataset(cfg: dict, device: torch.device, test: bool = True) -> TensorDataset:
    """Build the dataset named in cfg['dataset'] (other keys are the loader's options).

    `train_per_class` / `test_per_class` (any dataset) keep the first k samples of every class. With
    `test=False` (tuning) the test tensors are dropped as soon as the loader returns: nothing reads them.
    """
    options = {k: v for k, v in cfg["dataset"].items() if k != "name"}
    limits = {k: options.pop(k) for k in ("train_per_class", "test_per_class") if k in options}
    loader = DATASETS.get(cfg["dataset"]["name"])
    try:
        inspect.signature(loader).bind(root=None, download=False, **options)
    except TypeError as e:
        params = [p for p in inspect.signature(loader).parameters if p not in ("root", "download")]
        raise ConfigError(f"bad 'dataset' options for '{cfg['dataset']['name']}': {e}. Valid options: "
                          f"{', '.join(params + ['train_per_class', 'test_per_class'])}") from None
    ds = loader(root=cfg["data"]["root"], download=bool(cfg["data"]["download"]), **options)
    if not test:
        ds.x_test = ds.y_test = None     # nothing below (checks, limits, fingerprint) reads them
    ds = check_dataset(ds)
    ds = limit_per_class(ds, **limits)
    ds.source_key = source_key(cfg["dataset"]["name"], options, limits, ds.sources, test)
    return ds.to(device)


def holdout_validation(ds: TensorDataset, fraction: float, seed: int) -> TensorDataset:
    """Hold out `fraction` of every class's training samples as a validation split (config eval.validation).

    Class-stratified and seeded by the stream seed (its own purpose tag), so the split is the same for every
    strategy and training seed; the scenario then builds its experiences from the remaining training samples
    and its validation tasks from the held-out ones, exactly as it builds test tasks from the test split.
    """
    from clbench.scenarios.common import generator
    g = generator(seed, "validation")
    y = ds.y_train.cpu()
    val = []
    for c in torch.unique(y).tolist():
        idx = (y == c).nonzero().squeeze(1)
        k = int(round(fraction * len(idx)))
        k = min(max(k, 1), len(idx) - 1) if len(idx) >= 2 else 0
        val.append(idx[torch.randperm(len(idx), generator=g)[:k]])
    val_idx = torch.sort(torch.cat(val)).values
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[val_idx] = False
    train_idx = keep.nonzero().squeeze(1)
    dev = ds.y_train.device
    out = replace(ds, x_train=ds.x_train[train_idx.to(dev)], y_train=ds.y_train[train_idx.to(dev)],
                  x_val=ds.x_train[val_idx.to(dev)], y_val=ds.y_train[val_idx.to(dev)])
    if getattr(ds, "subset", None):
        out.subset = ds.subset
    return out



def _stamp(path: str) -> list:
    """(path, size, mtime) of a file, or of every file under a folder: what identifies its content cheaply."""
    p = os.path.abspath(path)
    if os.path.isdir(p):
        return [_stamp(os.path.join(d, f))[0] for d, _, files in sorted(os.walk(p)) for f in sorted(files)]
    st = os.stat(p)
    return [(p, st.st_size, st.st_mtime_ns)]


def source_key(name: str, options: dict, limits: dict, sources: dict, test: bool = True):
    """What a loaded dataset is a function of: the loader, its options, and the files it read (as they
    are now). None when the loader names no files (its fingerprint is then never cached)."""
    if not sources:
        return None
    try:
        stamps = {k: _stamp(str(v)) for k, v in sorted(sources.items())}
    except OSError:
        return None
    return json.dumps([name, options, limits, stamps, test], sort_keys=True, default=str)

