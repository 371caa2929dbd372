"""Data loading: bundled digits, torchvision sets on real and written files, tensors, folders."""

from __future__ import annotations

import gzip
import pickle
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import defuse_widgets as dw
from defuse_widgets.data import loaders as data_mod

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX = data_mod.IDX_FILES
needs_fashion = pytest.mark.skipif(
    not all((FASHION_DIR / f"{f}.gz").is_file() for f in IDX),
    reason="needs the real files: apt-get install -y dataset-fashion-mnist",
)


@pytest.fixture(autouse=True)
def _data_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the cache at a temp dir so no test writes under the user's home; the datasets'
    folder in it."""
    cache = tmp_path_factory.mktemp("dw-data-cache")
    monkeypatch.setenv("DEFUSE_WIDGETS_CACHE", str(cache))
    monkeypatch.delenv("DEFUSE_WIDGETS_DATA", raising=False)
    return cache / "datasets"


# ---------------------------------------------------------------- digits


def test_digits_is_a_fixed_split_of_the_real_digits(digits: dw.ImageDataset) -> None:
    assert digits.image_shape == (1, 8, 8)
    assert digits.classes == tuple(str(i) for i in range(10))
    assert len(digits.y_train) + len(digits.y_test) == 1797
    assert len(digits.y_test) == 450
    for x in (digits.x_train, digits.x_test):
        assert x.dtype == torch.float32
        assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert torch.equal(digits.y_test.bincount(minlength=10) > 40, torch.ones(10, dtype=torch.bool))
    again = dw.load_dataset("DIGITS")
    assert torch.equal(again.x_test, digits.x_test) and torch.equal(again.y_train, digits.y_train)
    x, y = digits.split("test")
    assert x is digits.x_test and y is digits.y_test
    assert "image_shape=(1, 8, 8)" in repr(digits)


def test_split_and_name_errors_name_the_argument(digits: dw.ImageDataset) -> None:
    with pytest.raises(ValueError, match="split"):
        digits.split("validation")
    with pytest.raises(ValueError, match="name: expected one of"):
        dw.load_dataset("imagenet")


# ---------------------------------------------------------------- IDX files (MNIST, Fashion-MNIST)


def _idx_bytes(array: np.ndarray) -> bytes:
    dims = array.shape
    header = struct.pack(">I", 0x0800 + len(dims)) + b"".join(struct.pack(">I", d) for d in dims)
    return header + array.astype(np.uint8).tobytes()


def _write_idx_set(folder: Path, n_train: int = 12, n_test: int = 7, gz: bool = False) -> dict:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) * 3) % 10,
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        raw = _idx_bytes(array)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)
    return arrays


def _check_idx(ds: dw.ImageDataset, arrays: dict) -> None:
    assert ds.image_shape == (1, 28, 28)
    expected = torch.as_tensor(arrays["train-images-idx3-ubyte"], dtype=torch.float32) / 255
    assert torch.allclose(ds.x_train[:, 0], expected)
    assert ds.y_train.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert ds.y_test.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert len(ds.x_test) == len(arrays["t10k-images-idx3-ubyte"])


def test_mnist_from_gzipped_files_in_root(tmp_path: Path) -> None:
    arrays = _write_idx_set(tmp_path, gz=True)
    ds = dw.load_dataset("mnist", root=tmp_path)
    _check_idx(ds, arrays)
    assert ds.classes == tuple(str(i) for i in range(10))
    assert all((tmp_path / "MNIST" / "raw" / f).is_file() for f in IDX), "extracted next to root"


def test_mnist_from_torchvision_layout(tmp_path: Path) -> None:
    arrays = _write_idx_set(tmp_path / "MNIST" / "raw")
    _check_idx(dw.load_dataset("mnist", root=tmp_path), arrays)


def test_mnist_extracted_files_in_root_are_copied_to_the_cache(
    tmp_path: Path, _data_cache: Path
) -> None:
    arrays = _write_idx_set(tmp_path / "plain")
    _check_idx(dw.load_dataset("mnist", root=tmp_path / "plain"), arrays)


def test_mnist_missing_files_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"mnist files not found.*root=.*download=True"):
        dw.load_dataset("mnist", root=tmp_path)
    _write_idx_set(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        dw.load_dataset("mnist", root=tmp_path)


@needs_fashion
def test_fashion_mnist_real_files(tmp_path: Path) -> None:
    for f in IDX:
        (tmp_path / f"{f}.gz").symlink_to(FASHION_DIR / f"{f}.gz")
    ds = dw.load_dataset("fashion-mnist", root=tmp_path)
    assert (len(ds.y_train), len(ds.y_test)) == (60000, 10000)
    assert ds.image_shape == (1, 28, 28)
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
    assert ds.y_train.bincount().tolist() == [6000] * 10
    assert ds.y_test.bincount().tolist() == [1000] * 10
    assert float(ds.x_train.min()) == 0.0 and float(ds.x_train.max()) == 1.0
    # the first training image and label, read straight from the original gzipped IDX files
    with gzip.open(FASHION_DIR / "train-images-idx3-ubyte.gz") as f:
        first = np.frombuffer(f.read(16 + 784)[16:], dtype=np.uint8).reshape(28, 28)
    with gzip.open(FASHION_DIR / "train-labels-idx1-ubyte.gz") as f:
        first_label = f.read(9)[8]
    assert torch.allclose(ds.x_train[0, 0], torch.as_tensor(first / 255.0, dtype=torch.float32))
    assert int(ds.y_train[0]) == first_label
    assert all((tmp_path / "FashionMNIST" / "raw" / f).is_file() for f in IDX)


@needs_fashion
def test_fashion_mnist_from_a_read_only_root_extracts_into_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _data_cache: Path
) -> None:
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    for f in IDX:
        (readonly / f"{f}.gz").symlink_to(FASHION_DIR / f"{f}.gz")
    real_access = data_mod.os.access
    monkeypatch.setattr(
        data_mod.os, "access", lambda path, mode: Path(path) != readonly and real_access(path, mode)
    )
    ds = dw.load_dataset("fashion_mnist", root=readonly)
    assert (len(ds.y_train), len(ds.y_test)) == (60000, 10000)
    raw = _data_cache / "extracted" / "FashionMNIST" / "FashionMNIST" / "raw"
    assert all((raw / f).is_file() for f in IDX)
    assert not (readonly / "FashionMNIST").exists()


def test_never_extracts_into_a_system_folder(tmp_path: Path) -> None:
    # the tests run as root, for whom /usr/share/datasets is writable: it still belongs to dpkg
    assert not data_mod._may_write(FASHION_DIR)
    assert not data_mod._may_write(Path("/usr/share"))
    assert data_mod._may_write(tmp_path)


# ---------------------------------------------------------------- CIFAR-10


def _write_cifar(root: Path, per_batch: int = 3) -> tuple[np.ndarray, list[int]]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    all_rows, all_labels = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        rows = rng.integers(0, 256, (per_batch, 3072)).astype(np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rows, "labels": labels}, f)
        all_rows.append(rows)
        all_labels += labels
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(data_mod.CIFAR10_CLASSES)}, f)
    return np.concatenate(all_rows), all_labels


def test_cifar10_python_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets.cifar as tv_cifar

    rows, labels = _write_cifar(tmp_path)
    # torchvision checks each file's md5 against the real archive's; ours are small fakes
    monkeypatch.setattr(tv_cifar.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)
    ds = dw.load_dataset("cifar10", root=tmp_path)
    assert ds.image_shape == (3, 32, 32)
    assert (len(ds.y_train), len(ds.y_test)) == (15, 3)
    assert ds.classes == data_mod.CIFAR10_CLASSES
    # rows are channel planes (1024 red, 1024 green, 1024 blue values, row-major)
    expected = torch.as_tensor(rows[:15].reshape(15, 3, 32, 32), dtype=torch.float32) / 255
    assert torch.allclose(ds.x_train, expected)
    assert ds.y_train.tolist() == labels[:15] and ds.y_test.tolist() == labels[15:]


def test_cifar10_missing_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py.*download=True"):
        dw.load_dataset("cifar10", root=tmp_path)


# ---------------------------------------------------------------- GTSRB

COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]


def _write_gtsrb(root: Path, per_class: int = 2) -> None:
    base = root / "gtsrb"
    for cls, color in enumerate(COLORS):
        folder = base / "GTSRB" / "Training" / f"{cls:05d}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (30 + i, 40), color).save(folder / f"00000_{i:05d}.ppm")
    test = base / "GTSRB" / "Final_Test" / "Images"
    test.mkdir(parents=True)
    lines = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
    for i, cls in enumerate([2, 0, 1, 2]):
        Image.new("RGB", (45, 50), COLORS[cls]).save(test / f"{i:05d}.ppm")
        lines.append(f"{i:05d}.ppm;45;50;5;5;40;45;{cls}")
    (base / "GT-final_test.csv").write_text("\n".join(lines) + "\n")


def test_gtsrb_folder_layout(tmp_path: Path) -> None:
    _write_gtsrb(tmp_path)
    ds = dw.load_dataset("gtsrb", root=tmp_path)
    assert ds.image_shape == (3, 32, 32)
    assert ds.num_classes == 43
    assert ds.y_train.tolist() == [0, 0, 1, 1, 2, 2]
    assert ds.y_test.tolist() == [2, 0, 1, 2]
    # each image is one solid color, resized: its mean color is the class's color
    for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        means = x.mean(dim=(2, 3))
        expected = torch.tensor([COLORS[int(c)] for c in y], dtype=torch.float32) / 255
        assert torch.allclose(means, expected, atol=1e-3)


def test_gtsrb_missing_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="gtsrb files not found.*download=True"):
        dw.load_dataset("gtsrb", root=tmp_path)


# ---------------------------------------------------------------- from_tensors


def test_from_tensors_accepts_nchw_nhw_uint8_and_numpy() -> None:
    ds = dw.from_tensors(
        torch.rand(6, 2, 9, 10),
        [0, 1, 2, 0, 1, 2],
        torch.rand(3, 2, 9, 10),
        np.array([2, 1, 0]),
        ["a", "b", "c"],
        name="mine",
    )
    assert ds.image_shape == (2, 9, 10) and ds.name == "mine" and ds.num_classes == 3
    assert ds.y_test.dtype == torch.int64 and ds.y_test.tolist() == [2, 1, 0]
    x8 = np.full((4, 8, 8), 255, dtype=np.uint8)
    x8[0] = 51
    ds = dw.from_tensors(x8, [0, 1, 0, 1], x8[:2], [1, 0], ["no", "yes"])
    assert ds.image_shape == (1, 8, 8)
    assert float(ds.x_train[0].max()) == pytest.approx(0.2) and float(ds.x_train[1].min()) == 1.0


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"x_train": torch.rand(6, 64)}, r"x_train: expected images of shape \(N, C, H, W\)"),
        ({"x_test": torch.rand(3, 1, 8, 9)}, r"x_test: expected images of shape \(1, 8, 8\)"),
        ({"x_train": torch.rand(6, 1, 8, 8) * 255}, r"x_train: expected pixel values in \[0, 1\]"),
        ({"x_test": -torch.rand(3, 1, 8, 8)}, r"x_test: expected pixel values in \[0, 1\]"),
        ({"x_train": torch.full((6, 1, 8, 8), float("nan"))}, "x_train: contains NaN"),
        ({"x_train": torch.zeros(0, 1, 8, 8), "y_train": []}, "x_train: expected at least one"),
        ({"x_train": torch.ones(6, 1, 8, 8, dtype=torch.int64)}, "x_train: expected float"),
        ({"y_train": [0, 1, 2, 0, 1, 3]}, r"y_train: expected labels in \[0, 2\]"),
        ({"y_test": [0, -1, 2]}, r"y_test: expected labels in \[0, 2\]"),
        ({"y_test": [0.0, 1.0, 2.0]}, "y_test: expected integer class indices"),
        ({"y_train": [0, 1, 2]}, r"y_train: expected 6 labels of shape \(6,\)"),
        ({"classes": ["only"]}, "classes: expected at least 2"),
    ],
)
def test_from_tensors_errors_name_the_argument(change: dict, match: str) -> None:
    args = {
        "x_train": torch.rand(6, 1, 8, 8),
        "y_train": [0, 1, 2, 0, 1, 2],
        "x_test": torch.rand(3, 1, 8, 8),
        "y_test": [0, 1, 2],
        "classes": ["a", "b", "c"],
    }
    args.update(change)
    with pytest.raises(ValueError, match=match):
        dw.from_tensors(**args)


# ---------------------------------------------------------------- from_image_folder


def _write_folder(root: Path, classes: dict[str, tuple[int, int, int]], n: int) -> None:
    for name, color in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (20 + i, 24), color).save(root / name / f"{i}.png")


def test_from_image_folder_split_and_resize(tmp_path: Path) -> None:
    _write_folder(tmp_path, {"cat": (255, 0, 0), "dog": (0, 0, 255)}, n=10)
    ds = dw.from_image_folder(tmp_path, image_size=16, test_fraction=0.2, seed=0)
    assert ds.classes == ("cat", "dog") and ds.image_shape == (3, 16, 16)
    assert (len(ds.y_train), len(ds.y_test)) == (16, 4)
    assert ds.y_test.bincount().tolist() == [2, 2], "stratified split"
    red = ds.x_train[ds.y_train == 0].mean(dim=(0, 2, 3))
    assert torch.allclose(red, torch.tensor([1.0, 0.0, 0.0]), atol=1e-3)
    again = dw.from_image_folder(tmp_path, image_size=16, test_fraction=0.2, seed=0)
    assert torch.equal(again.x_test, ds.x_test), "seeded split repeats"
    gray = dw.from_image_folder(tmp_path, image_size=(8, 12), grayscale=True)
    assert gray.image_shape == (1, 8, 12)


def test_from_image_folder_train_test_subfolders(tmp_path: Path) -> None:
    colors = {"a": (10, 10, 10), "b": (200, 200, 200), "c": (90, 90, 90)}
    _write_folder(tmp_path / "train", colors, n=3)
    _write_folder(tmp_path / "test", colors, n=1)
    ds = dw.from_image_folder(tmp_path, image_size=8)
    assert ds.classes == ("a", "b", "c")
    assert (len(ds.y_train), len(ds.y_test)) == (9, 3)
    assert ds.y_test.tolist() == [0, 1, 2]


def test_from_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="root: expected a folder"):
        dw.from_image_folder(tmp_path / "nope")
    _write_folder(tmp_path / "train", {"a": (0, 0, 0), "b": (9, 9, 9)}, n=2)
    _write_folder(tmp_path / "test", {"a": (0, 0, 0), "c": (9, 9, 9)}, n=1)
    with pytest.raises(ValueError, match="train classes"):
        dw.from_image_folder(tmp_path)


def test_load_dataset_limits_take_a_seeded_stratified_subsample(digits: dw.ImageDataset) -> None:
    small = dw.load_dataset("digits", train_limit=100, test_limit=50, seed=1)
    assert (len(small.y_train), len(small.y_test)) == (100, 50)
    assert torch.bincount(small.y_train, minlength=10).tolist() == [10] * 10  # stratified
    assert small.name == "digits-100-50-seed1" and small.classes == digits.classes
    again = dw.load_dataset("digits", train_limit=100, test_limit=50, seed=1)
    assert torch.equal(again.x_train, small.x_train) and torch.equal(again.y_test, small.y_test)
    other = dw.load_dataset("digits", train_limit=100, seed=2)
    assert not torch.equal(other.x_train, small.x_train)
    assert len(other.y_test) == len(digits.y_test)  # no test_limit: the whole test split
    # the subsample's images are the dataset's own, rows unchanged
    rows = {tuple(r.flatten().tolist()) for r in digits.x_train}
    assert all(tuple(r.flatten().tolist()) in rows for r in small.x_train)
    assert dw.load_dataset("digits", train_limit=10_000) is not None  # more than there are: all
    with pytest.raises(ValueError, match=r"train_limit: expected an integer >= 2, got 0"):
        dw.load_dataset("digits", train_limit=0)


# ---------------------------------------------------------------- fingerprint and cache folder


def test_fingerprint_hashes_images_and_labels(digits: dw.ImageDataset) -> None:
    from defuse_widgets.data.fingerprint import dataset_fingerprint, fingerprint_matches

    fp = dataset_fingerprint(digits)
    assert fp["hash"].startswith("sha256:") and len(fp["hash"].split(":")[1]) == 64
    assert dataset_fingerprint(dw.load_dataset("digits")) == fp  # the same data, the same hash
    assert fingerprint_matches(digits, fp)
    parts = {"x_train": digits.x_train, "y_train": digits.y_train}
    parts |= {"x_test": digits.x_test, "y_test": digits.y_test}
    changed = {
        "x_train": digits.x_train.clone().index_fill_(0, torch.tensor([7]), 0.5),
        "y_train": digits.y_train.roll(1),  # same label counts, other order
        "x_test": digits.x_test.flip(-1),
        "y_test": digits.y_test.roll(1),
    }
    for key, value in changed.items():
        other = dw.from_tensors(**{**parts, key: value}, classes=digits.classes, name=digits.name)
        assert dataset_fingerprint(other)["hash"] != fp["hash"], key
        assert not fingerprint_matches(other, fp), key
    wider = dw.from_tensors(
        **{**parts, "x_train": digits.x_train.double(), "y_test": digits.y_test.int()},
        classes=digits.classes,
        name=digits.name,
    )
    assert dataset_fingerprint(wider) == fp  # from_tensors stores float32 images, int64 labels


def test_fingerprint_accepts_the_first_format(digits: dw.ImageDataset) -> None:
    """Files of earlier versions stored ``label_sum``, the weighted test-label sum."""
    from defuse_widgets.data.fingerprint import dataset_fingerprint, fingerprint_matches

    fp = dataset_fingerprint(digits)
    fp.pop("hash")
    weights = np.arange(1, len(digits.y_test) + 1)
    old = {**fp, "label_sum": int((digits.y_test.numpy() * weights).sum() % 1_000_003)}
    assert fingerprint_matches(digits, old)
    assert not fingerprint_matches(digits, {**old, "label_sum": old["label_sum"] + 1})
    assert not fingerprint_matches(digits, {**old, "n_train": old["n_train"] - 1})
    assert not fingerprint_matches(digits, fp)  # neither hash nor label_sum
    assert not fingerprint_matches(digits, None)


def test_one_cache_root_moved_by_one_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from defuse_widgets.utils import cache

    monkeypatch.delenv("DEFUSE_WIDGETS_CACHE")
    for variable in cache.LEGACY.values():  # conftest.py moves the projections this way
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):  # platformdirs honours XDG_CACHE_HOME there
        assert cache.cache_root() == tmp_path / "xdg" / "defuse-widgets"
    monkeypatch.setenv("DEFUSE_WIDGETS_CACHE", str(tmp_path / "mine"))
    assert cache.cache_root() == tmp_path / "mine"
    for kind in cache.KINDS:
        assert cache.cache_dir(kind) == tmp_path / "mine" / kind
    assert data_mod.default_root() == tmp_path / "mine" / "datasets"
    assert not (tmp_path / "mine").exists(), "asking creates nothing"
    with pytest.raises(ValueError, match=r"kind: expected one of .*got 'thumbnails'"):
        cache.cache_dir("thumbnails")


def test_the_old_cache_variables_still_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from defuse_widgets.utils import cache

    monkeypatch.setattr(cache, "_warned", set())
    for kind, variable in cache.LEGACY.items():
        monkeypatch.setenv(variable, str(tmp_path / variable))
        with pytest.warns(DeprecationWarning, match=f"{variable} is deprecated.*CACHE/{kind}"):
            assert cache.cache_dir(kind) == tmp_path / variable
    assert data_mod.default_root() == tmp_path / "DEFUSE_WIDGETS_DATA"
