"""A user's own data, with no code: arrays in one file (`tensors`) or an image folder (`image_folder`).

`tensors`: a `.npz` file (numpy.savez) or a `.pt` file (torch.save of a dict) holding x_train, y_train,
x_test, y_test. Inputs are (N, ...) in any numeric dtype; images as (N, H, W), (N, C, H, W) or
channels-last (N, H, W, C) with C in {1, 3, 4}. Labels are integers 0..K-1.

`image_folder`: `<path>/train/<class>/*.png|jpg|...` and `<path>/test/<class>/...`; class ids follow the
sorted class folder names. Images become uint8 tensors (N, C, H, W), resized to `size` if given.

`path` may be absolute or relative to the data root. Mean/std are computed on the training inputs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from clbench.data import TensorDataset, channel_stats
from clbench.data.checks import check_dataset, integer_labels, source_of
from clbench.data.vision import DatasetNotFoundError
from clbench.errors import DataError

KEYS = ("x_train", "y_train", "x_test", "y_test")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")


def _resolve(path, root, what: str) -> Path:
    if not path:
        raise DatasetNotFoundError(f"dataset '{what}' needs a path: set dataset.path=/path/to/data "
                                   f"(absolute, or relative to the data root)")
    p = Path(path).expanduser()
    candidates = [p] if p.is_absolute() else [p, Path(root).expanduser() / p]
    for c in candidates:
        if c.exists():
            return c
    searched = ", ".join(str(c) for c in candidates)
    raise DatasetNotFoundError(f"dataset '{what}': '{path}' not found (searched {searched})")


def _channels_first(x: torch.Tensor) -> torch.Tensor:
    """(N, H, W) -> (N, 1, H, W); channels-last (N, H, W, C) -> (N, C, H, W); others unchanged."""
    if x.dim() == 3:
        return x.unsqueeze(1)
    if x.dim() == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        return x.permute(0, 3, 1, 2).contiguous()
    return x


def _default_scale(x: torch.Tensor) -> float:
    if x.dtype == torch.uint8:
        return 255.0
    return 1.0


def make_dataset(name: str, x_tr, y_tr, x_te, y_te, n_classes: Optional[int] = None,
                 scale: Optional[float] = None, sources: Optional[dict] = None, class_names: Optional[list] = None,
                 test_may_lack_classes: bool = False) -> TensorDataset:
    """Wrap arrays as a checked TensorDataset (statistics from the training inputs); `sources` names the
    file each array came from, for error messages."""
    sources = sources or {}
    x_tr, x_te = _channels_first(torch.as_tensor(x_tr)), _channels_first(torch.as_tensor(x_te))
    y_tr, y_te = (integer_labels(y, source_of(name, sources, k)) for y, k in ((y_tr, "y_train"), (y_te, "y_test")))
    labelled = [y for y in (y_tr, y_te) if len(y)]   # an empty split is named by check_dataset below
    k = int(n_classes) if n_classes else int(max(y.max() for y in labelled)) + 1 if labelled else 1
    if x_tr.dtype == torch.bool:
        x_tr, x_te = x_tr.to(torch.uint8), x_te.to(torch.uint8)
    s = float(scale) if scale else _default_scale(x_tr)
    ds = TensorDataset(name, x_tr, y_tr, x_te, y_te, n_classes=k, input_shape=tuple(x_tr.shape[1:]), scale=s,
                       mean=(), std=(), sources=sources, test_may_lack_classes=test_may_lack_classes)
    if class_names is not None:
        ds.class_names = class_names  # named in messages about a class (e.g. an empty class folder)
    check_dataset(ds)
    mean, std = channel_stats(ds.x_train, s)
    ds.mean, ds.std = mean, tuple(v if v > 0 else 1.0 for v in std)  # a constant channel must not divide by 0
    return ds


def _read_arrays(p: Path) -> dict:
    """The arrays of a .npz or .pt file; an unreadable file is a DataError naming it (never unpickled)."""
    try:
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        arrays = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickled objects, not a torch file, ...
        raise DataError(f"'{p}': cannot be read as a {p.suffix} file of arrays ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else 'no detail'})") from None
    if not isinstance(arrays, dict):
        raise DataError(f"'{p}': expected a dict of tensors (torch.save({{'x_train': ..., ...}})), "
                        f"got {type(arrays).__name__}")
    return arrays


def load_tensors(root="data", download=False, path: Optional[str] = None, n_classes: Optional[int] = None,
                 scale: Optional[float] = None) -> TensorDataset:
    """Arrays from a .npz (numpy) or .pt (torch) file with keys x_train, y_train, x_test, y_test."""
    p = _resolve(path, root, "tensors")
    if p.suffix not in (".npz", ".pt", ".pth"):
        raise DataError(f"dataset 'tensors': '{p}' must be a .npz or .pt/.pth file")
    arrays = _read_arrays(p)
    missing = [k for k in KEYS if k not in arrays]
    if missing:
        raise DataError(f"dataset 'tensors': '{p}' lacks {', '.join(missing)} "
                        f"(expected keys: {', '.join(KEYS)}; found: {', '.join(sorted(map(str, arrays)))})")
    return make_dataset(p.stem, *(arrays[k] for k in KEYS), n_classes=n_classes, scale=scale,
                        sources={k: str(p) for k in KEYS})


def _read_images(folder: Path, classes: list[str], size, mode: Optional[str]):
    from PIL import Image

    xs, ys = [], []
    for label, name in enumerate(classes):
        files = sorted(f for f in (folder / name).iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
        for f in files:
            try:
                with Image.open(f) as img:
                    img = img.convert(mode) if mode else (img if img.mode in ("L", "RGB") else img.convert("RGB"))
                    if size is not None:
                        img = img.resize((int(size[1]), int(size[0])), Image.BILINEAR)
                    a = np.asarray(img, dtype=np.uint8)
            except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for corrupt or truncated files
                raise DataError(f"'{f}': cannot be read as an image ({type(e).__name__}: {e})") from None
            xs.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
            ys.append(label)
    if not xs:
        raise DataError(f"'{folder}': no images ({', '.join(IMAGE_EXTENSIONS)}) in its class folders")
    shapes = {x.shape for x in xs}
    if len(shapes) > 1:
        raise DataError(f"dataset 'image_folder': images in '{folder}' differ in size or channels "
                         f"({sorted(shapes)[:3]}...); set dataset.size=[H, W] and/or dataset.mode=L|RGB")
    return np.stack(xs), np.asarray(ys)


def load_image_folder(root="data", download=False, path: Optional[str] = None, size: Optional[list] = None,
                      mode: Optional[str] = None) -> TensorDataset:
    """Images under <path>/train/<class>/ and <path>/test/<class>/ (uint8; optional resize and L/RGB mode)."""
    base = _resolve(path, root, "image_folder")
    if isinstance(size, int):
        size = [size, size]
    splits = {s: base / s for s in ("train", "test")}
    for s, d in splits.items():
        if not d.is_dir():
            raise DatasetNotFoundError(f"dataset 'image_folder': expected '{d}' holding one folder per class "
                                       f"(layout: {base}/train/<class>/*.png and {base}/test/<class>/*.png)")
    classes = sorted(d.name for d in splits["train"].iterdir() if d.is_dir())
    test_classes = sorted(d.name for d in splits["test"].iterdir() if d.is_dir())
    if not classes or set(test_classes) - set(classes):
        raise DataError(f"dataset 'image_folder': train classes {classes} must be non-empty and include "
                         f"every test class {test_classes}")
    x_tr, y_tr = _read_images(splits["train"], classes, size, mode)
    x_te, y_te = _read_images(splits["test"], [c for c in classes if c in test_classes], size, mode)
    # Test labels must use the train ids even when the test set lacks some classes.
    y_te = np.asarray([classes.index(c) for c in [c for c in classes if c in test_classes]])[y_te]
    return make_dataset(base.name, x_tr, y_tr, x_te, y_te, n_classes=len(classes), scale=255.0,
                        sources={f"{v}_{s}": str(splits[s]) for s in splits for v in ("x", "y")},
                        class_names=classes, test_may_lack_classes=True)
