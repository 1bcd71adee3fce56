"""Dataset loaders and models: real MNIST (skipped when absent), the missing-data error, subsets,
a user's own tensors and image folders, and the CNN / reduced ResNet-18 shapes."""
import numpy as np
import pytest
import torch

from clbench.config import ConfigError, compose
from clbench.data import limit_per_class, load_dataset
from clbench.data.custom import load_image_folder, load_tensors
from clbench.data.vision import SPECS, DatasetNotFoundError, load_cifar10, load_mnist
from clbench.engine import prepare
from clbench.models import CNN, ReducedResNet18, Normalize

torch.set_num_threads(1)


def test_missing_mnist_error_names_dataset_root_files_and_fix(tmp_path):
    with pytest.raises(DatasetNotFoundError) as e:
        load_mnist(root=str(tmp_path))
    msg = str(e.value)
    assert "'mnist'" in msg and str(tmp_path.resolve()) in msg
    assert all(f in msg for f in SPECS["mnist"].files) and "MNIST/raw" in msg
    assert "data.download=true" in msg and "CLBENCH_DATA" in msg and "data.root=" in msg
    with pytest.raises(DatasetNotFoundError, match="cifar-10-batches-py"):
        load_cifar10(root=str(tmp_path))
    assert isinstance(e.value, FileNotFoundError)            # the CLI reports it without a traceback


def test_missing_data_fails_before_anything_is_written(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset 'mnist' not found"):
        prepare(compose(["benchmark=split-mnist", f"data.root={tmp_path}", f"out={tmp_path / 'runs'}",
                         "wandb.mode=disabled", "device=cpu"]))
    assert not (tmp_path / "runs").exists()


@pytest.mark.mnist
def test_mnist_loader_on_the_real_data(mnist_root):
    ds = load_mnist(root=mnist_root)
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert ds.x_train.dtype == torch.uint8 and ds.y_train.dtype == torch.long
    assert ds.y_train[:5].tolist() == [5, 0, 4, 1, 9]          # the well-known first MNIST labels
    assert torch.bincount(ds.y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    x = ds.x_train.float() / 255                                # the standard statistics hold on this copy
    assert abs(x.mean().item() - ds.mean[0]) < 1e-3 and abs(x.std().item() - ds.std[0]) < 1e-3
    assert ds.scale == 255.0 and ds.input_shape == (1, 28, 28) and ds.n_classes == 10


def test_first_k_per_class_subset():
    y = torch.tensor([0, 1, 0, 2, 1, 0, 2, 2, 1, 0])
    x = torch.arange(10).reshape(10, 1)
    from clbench.data import TensorDataset
    ds = TensorDataset("t", x, y, x.clone(), y.clone(), 3, (1,), 1.0, (0.0,), (1.0,))
    limit_per_class(ds, train_per_class=2, test_per_class=1)
    assert ds.x_train.flatten().tolist() == [0, 1, 2, 3, 4, 6]  # first two of each class, in file order
    assert ds.y_test.tolist() == [0, 1, 2]
    assert ds.describe()["subset"] == {"train_per_class": 2, "test_per_class": 1}
    with pytest.raises(ConfigError, match="dataset.train_per_class"):
        limit_per_class(ds, train_per_class=0)


def test_dataset_option_typo_lists_valid_options():
    # refused when the config is composed (the loader's signature declares its options), before any loading
    with pytest.raises(ConfigError, match="Did you mean 'test_fraction'.*Valid: test_fraction, split_seed"):
        compose(["wandb.mode=disabled", "dataset.tets_fraction=0.1"])


def test_tensors_from_npz_and_pt(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (20, 6, 6, 3), dtype=np.uint8), "y_train": np.arange(20) % 4,
              "x_test": rng.integers(0, 256, (8, 6, 6, 3), dtype=np.uint8), "y_test": np.arange(8) % 4}
    np.savez(tmp_path / "mine.npz", **arrays)
    ds = load_tensors(root=str(tmp_path), path="mine.npz")         # relative to the data root
    assert ds.x_train.shape == (20, 3, 6, 6) and ds.x_train.dtype == torch.uint8      # channels first
    assert torch.equal(ds.x_train[3, 1], torch.from_numpy(arrays["x_train"][3, :, :, 1]))
    assert ds.n_classes == 4 and ds.scale == 255.0 and len(ds.mean) == 3
    assert abs(ds.mean[0] - arrays["x_train"][..., 0].mean() / 255) < 1e-5
    torch.save({k: torch.as_tensor(v).float() / 255 for k, v in arrays.items() if k.startswith("x")} |
               {k: torch.as_tensor(v) for k, v in arrays.items() if k.startswith("y")}, tmp_path / "mine.pt")
    pt = load_tensors(root="/nonexistent", path=str(tmp_path / "mine.pt"))
    assert pt.x_train.dtype == torch.float32 and pt.scale == 1.0 and pt.x_train.shape == (20, 3, 6, 6)
    np.savez(tmp_path / "bad.npz", x_train=arrays["x_train"])
    with pytest.raises(ValueError, match="lacks y_train, x_test, y_test"):
        load_tensors(root=str(tmp_path), path="bad.npz")
    with pytest.raises(DatasetNotFoundError, match="not found"):
        load_tensors(root=str(tmp_path), path="nope.npz")


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    written = {}
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("cat", "dog"):
            (tmp_path / "pets" / split / cls).mkdir(parents=True)
            for i in range(n):
                a = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
                Image.fromarray(a).save(tmp_path / "pets" / split / cls / f"{i}.png")
                written[(split, cls, i)] = a
    ds = load_image_folder(root=str(tmp_path), path="pets")
    assert ds.x_train.shape == (6, 3, 5, 7) and ds.x_test.shape == (4, 3, 5, 7)
    assert ds.y_train.tolist() == [0, 0, 0, 1, 1, 1] and ds.class_names == ["cat", "dog"]
    assert np.array_equal(ds.x_train[4].numpy().transpose(1, 2, 0), written[("train", "dog", 1)])  # lossless PNG
    grey = load_image_folder(root=str(tmp_path), path="pets", size=[4, 4], mode="L")
    assert grey.x_train.shape == (6, 1, 4, 4)


def test_models_map_uint8_images_to_logits():
    mnist_norm = Normalize(255.0, (0.1307,), (0.3081,))
    cifar_norm = Normalize(255.0, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    x28 = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    x32 = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    assert CNN((1, 28, 28), 10, mnist_norm)(x28).shape == (3, 10)
    assert CNN((3, 32, 32), 100, cifar_norm)(x32).shape == (3, 100)
    net = ReducedResNet18((3, 32, 32), 100, cifar_norm)
    assert net(x32).shape == (3, 100)
    # GEM's reduced ResNet-18: nf=20 -> 17 3x3 convs + 3 1x1 shortcuts, 160 features before the classifier
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 20 and net.classifier.in_features == 160
    assert ReducedResNet18((1, 28, 28), 10, mnist_norm, nf=8)(x28).shape == (3, 10)
