"""torchvision image datasets (MNIST, Fashion-MNIST, KMNIST, CIFAR-10, CIFAR-100) as uint8 tensors.

Each loader reads the torchvision folder layout under the data root (`data.root`, else $CLBENCH_DATA,
else ./data) and downloads only when the user sets `data.download=true`. Before torchvision is asked,
the expected files are checked here, so a missing dataset fails with a message that names the dataset,
the folder searched, the files expected, and how to get them.

Images stay uint8, shaped (N, C, H, W). The mean/std recorded with each dataset are the standard
per-channel statistics of its training set (scaled to [0, 1]); the model's first layer applies them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from clbench.data import TensorDataset


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


def load_vision(name: str, root, download: bool = False) -> TensorDataset:
    """Load one torchvision dataset as uint8 tensors (N, C, H, W) plus int64 labels."""
    spec = SPECS[name]
    root = str(Path(root).expanduser())
    if not download:
        check_files(spec, root)
    import torchvision.datasets as tvd  # slow to import: only once the files are known to be there

    cls = getattr(tvd, spec.tv_class)
    parts = []
    for train in (True, False):
        ds = cls(root=root, train=train, download=download)
        x = ds.data
        x = torch.from_numpy(x).permute(0, 3, 1, 2) if x.ndim == 4 else torch.as_tensor(x).unsqueeze(1)
        parts += [x.contiguous(), torch.as_tensor(ds.targets, dtype=torch.long)]
    x_tr, y_tr, x_te, y_te = parts
    return TensorDataset(name, x_tr, y_tr, x_te, y_te, n_classes=spec.n_classes,
                         input_shape=tuple(x_tr.shape[1:]), scale=255.0, mean=spec.mean, std=spec.std)


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
