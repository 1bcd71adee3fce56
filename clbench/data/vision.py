"""torchvision image datasets (MNIST, Fashion-MNIST, KMNIST, CIFAR-10, CIFAR-100) as uint8 tensors.

Each loader reads the torchvision folder layout under the data root (`data.root`, else $CLBENCH_DATA,
else ./data) and downloads only when the user sets `data.download=true`. Before torchvision is asked,
the expected files are checked here, so a missing dataset fails with a message that names the dataset,
the folder searched, the files expected, and how to get them.

Images stay uint8, shaped (N, C, H, W). The mean/std recorded with each dataset are the standard
per-channel statistics of its training set (scaled to [0, 1]); the model's first layer applies them.

The MNIST family is read here from its idx files (torchvision only downloads them): each file's magic
number, header and length are checked first, so a truncated, compressed or foreign file fails with one
line naming it instead of a reshape error deep inside a reader.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from clbench.data import TensorDataset
from clbench.errors import DataError


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not under the data root (the CLI prints the message without a traceback)."""


@dataclass(frozen=True)
class VisionSpec:
    name: str                  # clbench name
    tv_class: str              # torchvision.datasets class
    folder: str                # folder under the root that torchvision reads
    files: tuple               # files torchvision needs inside `folder`
    n_classes: int
    mean: tuple                # standard per-channel statistics of the training set, inputs in [0, 1]
    std: tuple


_IDX = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

SPECS = {
    # MNIST statistics as in the PyTorch examples and GPM/HLOP (0.1307, 0.3081).
    "mnist": VisionSpec("mnist", "MNIST", "MNIST/raw", _IDX, 10, (0.1307,), (0.3081,)),
    "fashion_mnist": VisionSpec("fashion_mnist", "FashionMNIST", "FashionMNIST/raw", _IDX, 10, (0.2860,), (0.3530,)),
    "kmnist": VisionSpec("kmnist", "KMNIST", "KMNIST/raw", _IDX, 10, (0.1918,), (0.3483,)),
    # CIFAR: the exact training-set std (as in mammoth), not the widely copied (0.2023, 0.1994, 0.2010).
    "cifar10": VisionSpec("cifar10", "CIFAR10", "cifar-10-batches-py",
                          tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta"), 10,
                          (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": VisionSpec("cifar100", "CIFAR100", "cifar-100-python", ("train", "test", "meta"), 100,
                           (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def check_files(spec: VisionSpec, root) -> None:
    """Raise DatasetNotFoundError naming what is missing and how to get it."""
    folder = Path(root).expanduser() / spec.folder
    missing = [f for f in spec.files if not (folder / f).is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"dataset '{spec.name}' not found under the data root '{Path(root).expanduser().resolve()}': "
            f"expected {', '.join(spec.files)} in '{folder}' (torchvision {spec.tv_class} layout; "
            f"missing: {', '.join(missing)}). Point the root at the folder that holds '{spec.folder.split('/')[0]}' "
            f"with data.root=/path/to/data or the CLBENCH_DATA environment variable, or let torchvision "
            f"download it with data.download=true.")


def read_idx(path: Path, ndim: int) -> torch.Tensor:
    """An unsigned-byte idx file (LeCun's MNIST format): magic 0x000008NN, NN dimensions, then the bytes.

    Its header is checked against the file's length before anything is read, so truncation is named."""
    expected = 0x0800 | ndim
    header = 4 + 4 * ndim
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(header)
    if len(head) < 4:
        raise DataError(f"'{path}': truncated idx file ({size} bytes; an idx file starts with a 4-byte magic number)")
    magic = int.from_bytes(head[:4], "big")
    if magic != expected:
        hint = " (it is gzip-compressed: decompress it with gunzip)" if head[:2] == b"\x1f\x8b" else ""
        raise DataError(f"'{path}': not an idx{ndim}-ubyte file: magic number 0x{magic:08x}, expected "
                        f"0x{expected:08x}{hint}")
    if len(head) < header:
        raise DataError(f"'{path}': truncated idx file ({size} bytes, shorter than its {header}-byte header)")
    dims = [int.from_bytes(head[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    need = header + int(np.prod(dims, dtype=np.int64))
    if size != need:
        raise DataError(f"'{path}': {'truncated' if size < need else 'trailing bytes in'} idx file: its header "
                        f"declares {' x '.join(map(str, dims))} values ({need} bytes), the file has {size} bytes")
    return torch.from_numpy(np.fromfile(path, dtype=np.uint8, offset=header)).reshape(dims)


def load_idx_dataset(spec: VisionSpec, root: str) -> TensorDataset:
    """MNIST-family: 28x28 uint8 images and their labels from the four idx files."""
    folder = Path(root) / spec.folder
    names = dict(zip(("x_train", "y_train", "x_test", "y_test"), spec.files))
    t = {k: read_idx(folder / f, 3 if k.startswith("x") else 1) for k, f in names.items()}
    return TensorDataset(spec.name, t["x_train"].unsqueeze(1), t["y_train"].long(), t["x_test"].unsqueeze(1),
                         t["y_test"].long(),
                         n_classes=spec.n_classes, input_shape=(1,) + tuple(t["x_train"].shape[1:]), scale=255.0,
                         mean=spec.mean, std=spec.std, sources={k: str(folder / f) for k, f in names.items()})


def load_vision(name: str, root, download: bool = False) -> TensorDataset:
    """Load one torchvision dataset as uint8 tensors (N, C, H, W) plus int64 labels."""
    spec = SPECS[name]
    root = str(Path(root).expanduser())
    present = all((Path(root) / spec.folder / f).is_file() for f in spec.files)
    if not download:
        check_files(spec, root)
    if spec.files == _IDX:
        if not present:   # data.download=true: torchvision fetches the four files, clbench reads them
            import torchvision.datasets as tvd
            getattr(tvd, spec.tv_class)(root=root, train=True, download=True)
        return load_idx_dataset(spec, root)
    import torchvision.datasets as tvd  # slow to import: only when torchvision must read or fetch

    cls = getattr(tvd, spec.tv_class)
    parts = []
    for train in (True, False):
        ds = cls(root=root, train=train, download=download)
        x = ds.data
        x = torch.from_numpy(x).permute(0, 3, 1, 2) if x.ndim == 4 else torch.as_tensor(x).unsqueeze(1)
        parts += [x.contiguous(), torch.as_tensor(ds.targets, dtype=torch.long)]
    x_tr, y_tr, x_te, y_te = parts
    folder = str(Path(root) / spec.folder)
    return TensorDataset(name, x_tr, y_tr, x_te, y_te, n_classes=spec.n_classes,
                         input_shape=tuple(x_tr.shape[1:]), scale=255.0, mean=spec.mean, std=spec.std,
                         sources={k: folder for k in ("x_train", "y_train", "x_test", "y_test")})


def load_mnist(root="data", download=False) -> TensorDataset:
    """MNIST (LeCun et al. 1998): 60000/10000 grey 28x28 digits."""
    return load_vision("mnist", root, download)


def load_fashion_mnist(root="data", download=False) -> TensorDataset:
    """Fashion-MNIST (Xiao et al. 2017): 60000/10000 grey 28x28 clothing images, 10 classes."""
    return load_vision("fashion_mnist", root, download)


def load_kmnist(root="data", download=False) -> TensorDataset:
    """Kuzushiji-MNIST (Clanuwat et al. 2018): 60000/10000 grey 28x28 cursive Japanese characters."""
    return load_vision("kmnist", root, download)


def load_cifar10(root="data", download=False) -> TensorDataset:
    """CIFAR-10 (Krizhevsky 2009): 50000/10000 RGB 32x32 images, 10 classes."""
    return load_vision("cifar10", root, download)


def load_cifar100(root="data", download=False) -> TensorDataset:
    """CIFAR-100 (Krizhevsky 2009): 50000/10000 RGB 32x32 images, 100 fine classes."""
    return load_vision("cifar100", root, download)
