"""scikit-learn's handwritten digits (8x8, 10 classes): ships inside scikit-learn, so it runs offline."""
from __future__ import annotations

import os

import numpy as np
import torch

from clbench.data import TensorDataset, channel_stats


def load_digits(root=None, download=False, test_fraction: float = 0.2, split_seed: int = 0) -> TensorDataset:
    """Digits with a fixed stratified train/test split (part of the benchmark, not of the stream seed)."""
    import sklearn.datasets
    from sklearn.datasets import load_digits as sk_load
    from sklearn.model_selection import train_test_split

    d = sk_load()
    x = d.images.astype(np.uint8)[:, None]  # values 0..16, shape (N, 1, 8, 8)
    x_tr, x_te, y_tr, y_te = train_test_split(x, d.target, test_size=test_fraction,
                                              random_state=split_seed, stratify=d.target)
    x_tr, x_te = torch.from_numpy(x_tr), torch.from_numpy(x_te)
    mean, std = channel_stats(x_tr, 16.0)
    shipped = os.path.join(os.path.dirname(sklearn.datasets.__file__), "data", "digits.csv.gz")
    sources = {k: shipped for k in ("x_train", "y_train", "x_test", "y_test")} if os.path.isfile(shipped) else {}
    # Labels keep sklearn's dtype: clbench.data.checks refuses anything that is not a whole number.
    return TensorDataset("digits", x_tr, torch.from_numpy(y_tr), x_te, torch.from_numpy(y_te),
                         n_classes=10, input_shape=(1, 8, 8), scale=16.0, mean=mean, std=std, sources=sources)
