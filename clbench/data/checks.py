"""The checks every dataset passes before a run uses it, in one place for every loader.

`load_dataset` calls `check_dataset` on whatever a loader returns (built-in or plugin), so a corrupt
file can never produce a result that looks real. Each problem is one `DataError` line that names the
file (from the loader's `sources`) and the problem:

- inputs and labels differ in length (a 10,000-label file next to 60,000 images), or a split is empty;
- labels are not integers (float labels are refused unless every value is a whole number: a silent
  truncation of 2.7 to 2 would train on wrong labels), or lie outside 0..n_classes-1;
- a class has no training samples; a class with no test samples is an error too, except where the
  loader declares that its test split may lack classes (`image_folder`), where it is a warning;
- train and test inputs differ in shape, inputs are not numeric, or float inputs hold NaN / inf.

Labels leave here as int64 tensors. Warnings (not errors) use `DataWarning`.
"""
from __future__ import annotations

import warnings

import torch
from torch import Tensor

from clbench.errors import DataError

SPLITS = ("train", "test", "val")   # "val": only where a loader ships its own validation split
INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


class DataWarning(UserWarning):
    """Data that is usable but not what the protocol expects (e.g. a class with fewer samples than asked)."""


def source_of(name: str, sources: dict, key: str) -> str:
    """The file (or folder) a tensor of the dataset was read from, for messages; else the dataset name."""
    where = (sources or {}).get(key)
    return f"'{where}'" if where else f"dataset '{name}'"


def source(ds, key: str) -> str:
    return source_of(ds.name, getattr(ds, "sources", None), key)


def present_splits(ds) -> list[str]:
    return [s for s in SPLITS if getattr(ds, f"x_{s}", None) is not None or getattr(ds, f"y_{s}", None) is not None]


def _class_name(ds, c: int) -> str:
    names = getattr(ds, "class_names", None)
    return f"{c} ('{names[c]}')" if names and c < len(names) else str(c)


def integer_labels(y, where: str) -> Tensor:
    """Labels as a 1-D int64 tensor; anything that is not a whole number is refused, never truncated."""
    if not isinstance(y, Tensor):
        try:
            y = torch.as_tensor(y)
        except (TypeError, ValueError, RuntimeError) as e:
            raise DataError(f"{where}: labels are not a numeric array ({e})") from None
    if y.dim() != 1 and not (y.dim() == 2 and y.shape[1] == 1):
        raise DataError(f"{where}: labels must be one integer per sample, got an array of shape {tuple(y.shape)}")
    y = y.reshape(-1)
    if y.dtype == torch.bool or y.is_complex():
        raise DataError(f"{where}: labels must be integers, got dtype {str(y.dtype).replace('torch.', '')}")
    if y.is_floating_point():
        bad = ~torch.isfinite(y) | (y != torch.round(y))
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise DataError(f"{where}: labels must be integers, found {y[i].item()!r} at index {i} "
                            f"({int(bad.sum())} non-integer labels; dtype {str(y.dtype).replace('torch.', '')})")
    return y.long()


def check_dataset(ds):
    """Validate a loaded TensorDataset in place (labels become int64); raise DataError naming the file."""
    splits = present_splits(ds)
    k = int(ds.n_classes)
    if k < 1:
        raise DataError(f"dataset '{ds.name}': n_classes must be >= 1, got {ds.n_classes}")
    for s in splits:
        x, y = getattr(ds, f"x_{s}", None), getattr(ds, f"y_{s}", None)
        wx, wy = source(ds, f"x_{s}"), source(ds, f"y_{s}")
        if x is None or y is None:
            raise DataError(f"dataset '{ds.name}': the {s} split lacks its {'inputs' if x is None else 'labels'}")
        y = integer_labels(y, wy)
        if len(x) != len(y):
            what = f"{wx}" if wx == wy else f"{wx} and {wy}"
            raise DataError(f"{what}: the {s} split has {len(x)} inputs but {len(y)} labels "
                            f"(inputs and labels must pair up one to one)")
        if len(y) == 0:
            raise DataError(f"{wy}: the {s} split is empty")
        if not (x.is_floating_point() or x.dtype in INTEGER_DTYPES):
            raise DataError(f"{wx}: inputs must be numeric, got dtype {str(x.dtype).replace('torch.', '')}")
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            raise DataError(f"{wx}: the {s} inputs contain NaN or infinite values")
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= k:
            i = int(((y < 0) | (y >= k)).nonzero()[0, 0])
            raise DataError(f"{wy}: label {int(y[i])} at index {i} is out of range: dataset '{ds.name}' has "
                            f"{k} classes, so labels must lie in 0..{k - 1} (found {lo}..{hi})")
        setattr(ds, f"y_{s}", y)
        if s != splits[0] and tuple(x.shape[1:]) != tuple(ds.x_train.shape[1:]):
            raise DataError(f"{wx}: {s} inputs are shaped {tuple(x.shape[1:])} but training inputs "
                            f"{tuple(ds.x_train.shape[1:])}")
    if "train" in splits:
        _check_classes(ds, "train", missing_ok=False)
    if "test" in splits:
        _check_classes(ds, "test", missing_ok=bool(getattr(ds, "test_may_lack_classes", False)))
    return ds


def _check_classes(ds, split: str, missing_ok: bool) -> None:
    counts = torch.bincount(getattr(ds, f"y_{split}").cpu(), minlength=int(ds.n_classes))
    empty = (counts == 0).nonzero().flatten().tolist()
    if not empty:
        return
    shown = ", ".join(_class_name(ds, c) for c in empty[:10]) + (", ..." if len(empty) > 10 else "")
    msg = (f"{source(ds, f'y_{split}')}: class{'es' if len(empty) > 1 else ''} {shown} of dataset '{ds.name}' "
           f"({ds.n_classes} classes) {'have' if len(empty) > 1 else 'has'} no {split} samples")
    if missing_ok:
        warnings.warn(msg + "; they are not evaluated", DataWarning, stacklevel=3)
    else:
        raise DataError(msg)


def warn_short_classes(ds, split: str, k: int, before: Tensor) -> None:
    """After keeping the first k samples per class: name the classes that had fewer than k."""
    short = [(c, int(n)) for c, n in enumerate(torch.bincount(before.cpu(), minlength=int(ds.n_classes)).tolist())
             if 0 < n < k]
    if short:
        shown = ", ".join(f"{_class_name(ds, c)}: {n}" for c, n in short[:10]) + (", ..." if len(short) > 10 else "")
        warnings.warn(f"{source(ds, f'y_{split}')}: dataset.{split}_per_class={k}, but some classes have fewer "
                      f"{split} samples ({shown}); they keep all they have", DataWarning, stacklevel=3)
