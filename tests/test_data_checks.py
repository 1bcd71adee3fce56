"""Corrupt data is refused with one line naming the file and the problem, for every loader (MNIST idx
files, .npz/.pt tensors, image folders, scikit-learn digits, a plugin loader): each case used to load and
run, or crash deep inside a reader. Every check lives in clbench/data/checks.py and runs in load_dataset."""
import numpy as np
import pytest
import torch

from clbench.cli import main
from clbench.config import compose
from clbench.data import TensorDataset, load_dataset
from clbench.data.checks import DataWarning
from clbench.errors import DataError
from clbench.registry import DATASETS

torch.set_num_threads(1)
CPU = torch.device("cpu")
IDX = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
       "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}


# ------------------------------------------------------------------ MNIST idx files (a small fake copy)
def write_idx(path, a: np.ndarray) -> None:
    """LeCun's idx format: magic 0x0000 08 <ndim>, big-endian dims, then unsigned bytes."""
    a = np.ascontiguousarray(a, dtype=np.uint8)
    header = bytes([0, 0, 0x08, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape)
    path.write_bytes(header + a.tobytes())


def fake_mnist(root, n_train=200, n_test=50, **replace) -> dict:
    """An MNIST/raw folder with small idx files (every class present); `replace` swaps an array."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (n_train, 28, 28)), "y_train": np.arange(n_train) % 10,
              "x_test": rng.integers(0, 256, (n_test, 28, 28)), "y_test": np.arange(n_test) % 10}
    arrays.update(replace)
    for k, a in arrays.items():
        write_idx(raw / IDX[k], a)
    return {k: raw / f for k, f in IDX.items()}


def mnist_cfg(root, *extra):
    return compose(["benchmark=split-mnist", f"data.root={root}", "wandb.mode=disabled", "device=cpu", *extra])


def test_fake_mnist_loads_when_it_is_sound(tmp_path):
    fake_mnist(tmp_path)
    ds = load_dataset(mnist_cfg(tmp_path), CPU)
    assert ds.x_train.shape == (200, 1, 28, 28) and ds.y_train.dtype == torch.long and ds.n_classes == 10


def test_mnist_labels_file_shorter_than_images_is_refused_naming_both_files(tmp_path):
    # the observed case: the 10,000-label test file next to the 60,000 training images (here 50 next to 200)
    files = fake_mnist(tmp_path, y_train=np.arange(50) % 10)
    with pytest.raises(DataError) as e:
        load_dataset(mnist_cfg(tmp_path), CPU)
    msg = str(e.value)
    assert str(files["x_train"]) in msg and str(files["y_train"]) in msg
    assert "200 inputs but 50 labels" in msg and "\n" not in msg


def test_mnist_label_out_of_range_is_refused(tmp_path):
    y = np.arange(200) % 10
    y[17] = 12
    files = fake_mnist(tmp_path, y_train=y)
    with pytest.raises(DataError, match=r"label 12 at index 17 is out of range.*0\.\.9") as e:
        load_dataset(mnist_cfg(tmp_path), CPU)
    assert str(files["y_train"]) in str(e.value)


def test_mnist_class_without_training_samples_is_refused(tmp_path):
    y = np.arange(200) % 10
    y[y == 7] = 6
    files = fake_mnist(tmp_path, y_train=y)
    with pytest.raises(DataError, match="class 7 of dataset 'mnist' .* has no train samples") as e:
        load_dataset(mnist_cfg(tmp_path), CPU)
    assert str(files["y_train"]) in str(e.value)


def test_truncated_idx_file_is_named(tmp_path):
    files = fake_mnist(tmp_path)
    data = files["x_train"].read_bytes()
    files["x_train"].write_bytes(data[: len(data) - 1000])
    with pytest.raises(DataError, match="truncated idx file: its header declares 200 x 28 x 28") as e:
        load_dataset(mnist_cfg(tmp_path), CPU)
    assert str(files["x_train"]) in str(e.value)
    files["y_test"].write_bytes(b"\x00\x00")                      # shorter than the magic number
    files["x_train"].write_bytes(data)
    with pytest.raises(DataError, match="truncated idx file") as e:
        load_dataset(mnist_cfg(tmp_path), CPU)
    assert str(files["y_test"]) in str(e.value)


def test_wrong_magic_idx_file_is_named(tmp_path):
    import gzip
    files = fake_mnist(tmp_path)
    files["y_train"].write_bytes(gzip.compress(files["y_train"].read_bytes()))   # the .gz saved under the raw name
    with pytest.raises(DataError, match="not an idx1-ubyte file.*gzip-compressed") as e:
        load_dataset(mnist_cfg(tmp_path), CPU)
    assert str(files["y_train"]) in str(e.value)
    files["y_train"].write_bytes(files["x_test"].read_bytes())                   # images where labels belong
    with pytest.raises(DataError, match="magic number 0x00000803, expected 0x00000801"):
        load_dataset(mnist_cfg(tmp_path), CPU)


def test_clbench_run_on_corrupt_mnist_prints_one_line_and_writes_nothing(tmp_path, capsys):
    files = fake_mnist(tmp_path, y_train=np.arange(50) % 10)
    out = tmp_path / "runs"
    code = main(["run", "benchmark=split-mnist", f"data.root={tmp_path}", f"out={out}", "wandb.mode=disabled",
                 "device=cpu", "train.epochs=1", "progress=false"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("clbench: error: ") and len(err.splitlines()) == 1
    assert str(files["y_train"]) in err
    assert not out.exists() or not any(out.iterdir())              # no result.json, no run folder


# ------------------------------------------------------------------ tensors: .npz and .pt
def tensors(tmp_path, name="mine.npz", **replace):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (40, 8, 8), dtype=np.uint8), "y_train": np.arange(40) % 10,
              "x_test": rng.integers(0, 256, (20, 8, 8), dtype=np.uint8), "y_test": np.arange(20) % 10}
    arrays.update(replace)
    path = tmp_path / name
    if name.endswith(".npz"):
        np.savez(path, **arrays)
    else:
        torch.save({k: torch.as_tensor(v) for k, v in arrays.items()}, path)
    return path


def tensors_cfg(path, *extra):
    return compose(["wandb.mode=disabled", "device=cpu", "dataset.name=tensors", f"+dataset.path={path}", *extra])


def test_float_labels_are_refused_not_truncated(tmp_path):
    y = (np.arange(40) % 10).astype(np.float64)
    y[5] = 2.7                                     # np.int64 would make it 2: a wrong label, silently
    for name in ("mine.npz", "mine.pt"):
        path = tensors(tmp_path, name, y_train=y)
        with pytest.raises(DataError, match=r"labels must be integers, found 2\.7 at index 5") as e:
            load_dataset(tensors_cfg(path), CPU)
        assert str(path) in str(e.value)
    whole = tensors(tmp_path, "whole.npz", y_train=(np.arange(40) % 10).astype(np.float32))   # 3.0 is 3
    ds = load_dataset(tensors_cfg(whole), CPU)
    assert ds.y_train.dtype == torch.long and ds.y_train[:12].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]


def test_tensors_length_mismatch_and_range_name_the_file(tmp_path):
    path = tensors(tmp_path, y_train=np.arange(30) % 10)
    with pytest.raises(DataError, match="the train split has 40 inputs but 30 labels") as e:
        load_dataset(tensors_cfg(path), CPU)
    assert str(path) in str(e.value)
    path = tensors(tmp_path, "neg.npz", y_test=np.r_[np.arange(19) % 10, -1])
    with pytest.raises(DataError, match="label -1 at index 19 is out of range"):
        load_dataset(tensors_cfg(path), CPU)
    path = tensors(tmp_path, "ten.npz")
    with pytest.raises(DataError, match=r"label 5 at index 5 is out of range: dataset 'ten' has 5 classes") as e:
        load_dataset(tensors_cfg(path, "+dataset.n_classes=5"), CPU)
    assert str(path) in str(e.value)


def test_tensors_class_without_test_samples_is_refused(tmp_path):
    path = tensors(tmp_path, y_test=np.arange(20) % 9)                # class 9 is never tested
    with pytest.raises(DataError, match="class 9 of dataset 'mine' .* has no test samples"):
        load_dataset(tensors_cfg(path), CPU)


def test_unreadable_tensor_files_are_named(tmp_path):
    npz = tensors(tmp_path)
    npz.write_bytes(npz.read_bytes()[:200])                              # truncated zip
    with pytest.raises(DataError, match="cannot be read as a .npz file") as e:
        load_dataset(tensors_cfg(npz), CPU)
    assert str(npz) in str(e.value)
    pt = tmp_path / "objects.pt"
    torch.save({"x_train": object()}, pt)                                 # pickled objects are never loaded
    with pytest.raises(DataError, match="cannot be read as a .pt file") as e:
        load_dataset(tensors_cfg(pt), CPU)
    assert str(pt) in str(e.value)


def test_non_finite_inputs_are_refused(tmp_path):
    x = np.random.default_rng(0).random((40, 8, 8)).astype(np.float32)
    x[3, 2, 2] = np.nan
    path = tensors(tmp_path, x_train=x, x_test=np.zeros((20, 8, 8), np.float32))
    with pytest.raises(DataError, match="train inputs contain NaN or infinite values"):
        load_dataset(tensors_cfg(path), CPU)


# ------------------------------------------------------------------ image folders
def image_folder(tmp_path, train=("cat", "dog"), test=("cat", "dog"), empty=()):
    from PIL import Image
    rng = np.random.default_rng(1)
    for split, classes in (("train", train), ("test", test)):
        for cls in classes:
            (tmp_path / "pets" / split / cls).mkdir(parents=True)
            if cls in empty and split == "train":
                continue
            for i in range(2):
                Image.fromarray(rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)).save(
                    tmp_path / "pets" / split / cls / f"{i}.png")
    return tmp_path / "pets"


def image_cfg(path):
    return compose(["wandb.mode=disabled", "device=cpu", "dataset.name=image_folder", f"+dataset.path={path}"])


def test_image_folder_empty_class_is_refused_naming_the_folder(tmp_path):
    base = image_folder(tmp_path, empty=("dog",))
    with pytest.raises(DataError, match=r"class 1 \('dog'\) of dataset 'pets' \(2 classes\) has no train samples") as e:
        load_dataset(image_cfg(base), CPU)
    assert str(base / "train") in str(e.value)


def test_image_folder_test_split_may_lack_a_class_with_a_warning(tmp_path):
    base = image_folder(tmp_path, train=("cat", "dog", "eel"), test=("cat", "dog"))
    with pytest.warns(DataWarning, match=r"class 2 \('eel'\) .* has no test samples; they are not evaluated"):
        ds = load_dataset(image_cfg(base), CPU)
    assert ds.n_classes == 3 and sorted(set(ds.y_test.tolist())) == [0, 1]


def test_image_folder_corrupt_image_is_named(tmp_path):
    base = image_folder(tmp_path)
    bad = base / "train" / "cat" / "1.png"
    bad.write_bytes(bad.read_bytes()[:30])
    with pytest.raises(DataError, match="cannot be read as an image") as e:
        load_dataset(image_cfg(base), CPU)
    assert str(bad) in str(e.value)


# ------------------------------------------------------------------ digits, plugin loaders, protocol subsets
def test_digits_with_non_integer_labels_is_refused(monkeypatch):
    import sklearn.datasets
    real = sklearn.datasets.load_digits

    def tampered(*a, **k):
        d = real(*a, **k)
        d.target = d.target + 0.5 * (d.target == 0)    # old code: .long() made 0.5 a 0 and the run went on
        return d
    monkeypatch.setattr(sklearn.datasets, "load_digits", tampered)
    with pytest.raises(DataError, match=r"digits.csv.gz'?: labels must be integers, found 0\.5"):
        load_dataset(compose(["wandb.mode=disabled"]), CPU)


def test_a_plugin_loader_goes_through_the_same_checks():
    def broken(root=None, download=False):
        x = torch.zeros(30, 1, 4, 4, dtype=torch.uint8)
        y = torch.arange(30) % 10
        return TensorDataset("broken", x, y[:25], x[:10], y[:10], 10, (1, 4, 4), 255.0, (0.0,), (1.0,),
                             sources={"y_train": "/data/broken/labels.bin"})
    DATASETS.register("broken_loader", broken)
    try:
        with pytest.raises(DataError, match="'/data/broken/labels.bin'.*30 inputs but 25 labels"):
            load_dataset(compose(["wandb.mode=disabled", "dataset.name=broken_loader"]), CPU)
    finally:
        DATASETS._extra.pop("broken_loader")


def test_train_per_class_larger_than_a_class_warns_and_keeps_what_there_is(tmp_path):
    y = np.arange(40) % 10
    y[y == 3] = 4                                         # class 3: 0 ...
    y[:2] = 3                                             # ... now 2 samples; the others have 3 or more
    path = tensors(tmp_path, y_train=y)
    with pytest.warns(DataWarning, match=r"train_per_class=3, but some classes have fewer train samples \(3: 2\)"):
        ds = load_dataset(tensors_cfg(path, "+dataset.train_per_class=3"), CPU)
    assert torch.bincount(ds.y_train).tolist() == [3, 3, 3, 2, 3, 3, 3, 3, 3, 3]
