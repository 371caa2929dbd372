"""Dataset files: the IDX (Fashion-)MNIST, CIFAR-10 and GTSRB loaders behind
:func:`load_dataset`, and :func:`from_image_folder` for a user's own images."""

from __future__ import annotations

import gzip
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from defuse_widgets.data.dataset import ImageDataset, from_tensors, subsample
from defuse_widgets.utils.cache import cache_dir
from defuse_widgets.utils.checks import positive_int

SUPPORTED = ("digits", "fashion-mnist", "mnist", "cifar10", "gtsrb")
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def load_idx(key: str, base: Path, download: bool) -> ImageDataset:
    from torchvision import datasets

    folder, cls, classes = (
        ("FashionMNIST", datasets.FashionMNIST, FASHION_CLASSES)
        if key == "fashion-mnist"
        else ("MNIST", datasets.MNIST, tuple(str(i) for i in range(10)))
    )
    tv_root = _prepare_idx_root(base, folder, key, download)
    try:
        train = cls(str(tv_root), train=True, download=download)
        test = cls(str(tv_root), train=False, download=download)
    except RuntimeError as exc:
        raise FileNotFoundError(_missing_message(key, base)) from exc
    return from_tensors(train.data, train.targets, test.data, test.targets, classes, name=key,
                        allow_unused_classes=True)  # fmt: skip


def _prepare_idx_root(base: Path, folder: str, key: str, download: bool) -> Path:
    """Return a torchvision root whose ``<folder>/raw`` holds the extracted IDX files.

    Gzipped files found in ``base`` or ``base/<folder>/raw`` (or, for Fashion-MNIST, Debian's
    dataset-fashion-mnist folder) are extracted, next to them when writable, else in the cache.
    """
    raw = base / folder / "raw"
    if all((raw / f).is_file() for f in IDX_FILES) or download:
        return base
    candidates = [base, raw] + ([DEBIAN_FASHION_DIR] if key == "fashion-mnist" else [])
    for src in candidates:
        if all((src / f).is_file() for f in IDX_FILES):
            return _link_extracted(src, folder)
        if all((src / f"{f}.gz").is_file() for f in IDX_FILES):
            return _extract_gz(src, folder, raw if _may_write(base) else None)
    raise FileNotFoundError(_missing_message(key, base))


def _link_extracted(src: Path, folder: str) -> Path:
    dest_root = default_root() / "extracted" / folder
    raw = dest_root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for f in IDX_FILES:
        if not (raw / f).exists():
            shutil.copyfile(src / f, raw / f)
    return dest_root


def _may_write(folder: Path) -> bool:
    """Whether to extract next to the files in ``folder``: only where the user can write and no
    package manager owns the files (as root, /usr/share/datasets is writable but not ours)."""
    resolved = folder.resolve()
    owned = resolved == DEBIAN_FASHION_DIR or resolved.is_relative_to("/usr")
    return not owned and os.access(folder, os.W_OK)


def _extract_gz(src: Path, folder: str, raw: Path | None) -> Path:
    if raw is None:
        root = default_root() / "extracted" / folder
        raw = root / folder / "raw"
    else:
        root = raw.parent.parent
    raw.mkdir(parents=True, exist_ok=True)
    for f in IDX_FILES:
        if not (raw / f).is_file():
            with gzip.open(src / f"{f}.gz", "rb") as fin, open(raw / f"{f}.part", "wb") as fout:
                shutil.copyfileobj(fin, fout)
            (raw / f"{f}.part").replace(raw / f)
    return root


def _missing_message(key: str, base: Path) -> str:
    hint = ""
    if key == "fashion-mnist":
        hint = (
            " On Debian, `apt-get install dataset-fashion-mnist` puts them in "
            "/usr/share/datasets/fashion-mnist."
        )
    return (
        f"{key} files not found under {base}: expected the four IDX files ({', '.join(IDX_FILES)}, "
        f"optionally .gz) in root or root/<Folder>/raw. Pass root= the folder holding them, or "
        f"download=True with internet access.{hint}"
    )


def load_cifar10(base: Path, download: bool) -> ImageDataset:
    from torchvision import datasets

    try:
        train = datasets.CIFAR10(str(base), train=True, download=download)
        test = datasets.CIFAR10(str(base), train=False, download=download)
    except RuntimeError as exc:
        raise FileNotFoundError(
            f"cifar10 files not found or corrupted under {base}: expected "
            f"{base}/cifar-10-batches-py/ (the python version). Pass root= or download=True."
        ) from exc
    to_chw = lambda a: torch.as_tensor(np.asarray(a)).permute(0, 3, 1, 2)  # noqa: E731
    return from_tensors(
        to_chw(train.data),
        train.targets,
        to_chw(test.data),
        test.targets,
        CIFAR10_CLASSES,
        "cifar10",
        allow_unused_classes=True,
    )


def load_gtsrb(base: Path, download: bool, size: int = 32) -> ImageDataset:
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor()])
    try:
        train = datasets.GTSRB(str(base), split="train", transform=tf, download=download)
        test = datasets.GTSRB(str(base), split="test", transform=tf, download=download)
    except RuntimeError as exc:
        raise FileNotFoundError(
            f"gtsrb files not found under {base}: expected {base}/gtsrb/GTSRB/Training and "
            f"{base}/gtsrb/GTSRB/Final_Test with GT-final_test.csv. Pass root= or download=True."
        ) from exc
    x_tr, y_tr = _stack(train, skip_unreadable=None)
    x_te, y_te = _stack(test, skip_unreadable=None)
    return from_tensors(x_tr, y_tr, x_te, y_te, [str(i) for i in range(43)], name="gtsrb",
                        allow_unused_classes=True)  # fmt: skip


def _stack(ds: Any, skip_unreadable: bool | None) -> tuple[torch.Tensor, torch.Tensor]:
    """All of ``ds`` as tensors; unreadable files skipped, or (None: no such option) an error."""
    if len(ds) == 0:
        raise FileNotFoundError("the dataset folder holds no images")
    xs, ys, unreadable = [], [], []
    files = getattr(ds, "samples", None) or getattr(ds, "_samples", None)  # (path, label) pairs
    for i in range(len(ds)):
        try:
            x, label = ds[i]
        except (OSError, ValueError) as exc:  # PIL's UnidentifiedImageError is an OSError
            file = files[i][0] if files else f"image {i}"
            if not skip_unreadable:
                hint = "" if skip_unreadable is None else ", or pass skip_unreadable=True"
                raise ValueError(
                    f"{file}: cannot be read as an image ({exc}); fix or remove it{hint}"
                ) from exc
            unreadable.append(file)
            continue
        xs.append(x)
        ys.append(label)
    if unreadable:
        warnings.warn(
            f"skipped {len(unreadable)} unreadable file(s): {', '.join(unreadable[:5])}"
            + (" ..." if len(unreadable) > 5 else ""),
            stacklevel=3,
        )
    if not xs:
        raise FileNotFoundError("the dataset folder holds no readable images")
    return torch.stack(xs), torch.as_tensor(ys)


def from_image_folder(
    root: str | os.PathLike,
    image_size: int | tuple[int, int] = 32,
    grayscale: bool = False,
    test_fraction: float = 0.2,
    seed: int = 0,
    skip_unreadable: bool = False,
) -> ImageDataset:
    """Load your own images from ``root/<class>/*.png`` (or ``root/train`` and ``root/test``).

    Images are resized to ``image_size``; without ``train``/``test`` subfolders a seeded stratified
    split holds out ``test_fraction``. A file that cannot be read as an image is an error naming
    it, or, with ``skip_unreadable=True``, is skipped with a warning.
    """
    from torchvision import datasets, transforms

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"root: expected a folder of class subfolders, got {root} (missing)"
        )
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    steps: list = [transforms.Resize(size)]
    if grayscale:
        steps.append(transforms.Grayscale())
    tf = transforms.Compose([*steps, transforms.ToTensor()])
    if (root / "train").is_dir() and (root / "test").is_dir():
        train = datasets.ImageFolder(str(root / "train"), transform=tf)
        test = datasets.ImageFolder(str(root / "test"), transform=tf)
        if train.classes != test.classes:
            raise ValueError(
                f"train classes {train.classes} differ from test classes {test.classes}"
            )
        x_tr, y_tr = _stack(train, skip_unreadable)
        x_te, y_te = _stack(test, skip_unreadable)
        return from_tensors(x_tr, y_tr, x_te, y_te, train.classes, name=root.name)
    from sklearn.model_selection import train_test_split

    folder = datasets.ImageFolder(str(root), transform=tf)
    x, y = _stack(folder, skip_unreadable)
    idx_tr, idx_te = train_test_split(
        np.arange(len(y)), test_size=test_fraction, random_state=seed, stratify=y.numpy()
    )
    return from_tensors(x[idx_tr], y[idx_tr], x[idx_te], y[idx_te], folder.classes, name=root.name)


def default_root() -> Path:
    """Where datasets are looked for and downloaded when no ``root`` is given: the ``datasets``
    folder of the cache (:func:`defuse_widgets.utils.cache.cache_dir`)."""
    return cache_dir("datasets")


def load_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    download: bool = False,
    train_limit: int | None = None,
    test_limit: int | None = None,
    seed: int = 0,
) -> ImageDataset:
    """Load a named dataset with train and test splits, pixels in [0, 1].

    Parameters
    ----------
    name : "digits" (scikit-learn's bundled 8x8 digits, offline), "fashion-mnist", "mnist",
        "cifar10" or "gtsrb" (through torchvision, read from ``root``).
    root : folder holding the files; defaults to the ``datasets`` folder of the package's cache
        (the user cache folder, moved by ``$DEFUSE_WIDGETS_CACHE``: see the install page). For
        Fashion-MNIST and MNIST the four IDX files may lie directly in ``root``, gzipped or not
        (e.g. Debian's ``/usr/share/datasets/fashion-mnist``).
    download : let torchvision download missing files (needs internet).
    train_limit, test_limit : keep at most this many images of each split, a seeded subsample
        stratified by class (a quick try of a large set); the name then says so.
    seed : the subsample's seed.

    Examples
    --------
    >>> data = load_dataset("digits")
    >>> data.image_shape
    (1, 8, 8)
    """
    if not isinstance(name, str):
        raise TypeError(f"name: expected a dataset name, one of {SUPPORTED}, got {name!r}")
    for arg, limit in (("train_limit", train_limit), ("test_limit", test_limit)):
        if limit is not None:
            positive_int(arg, limit, minimum=2)
    key = name.lower().replace("_", "-")
    if key not in SUPPORTED:
        raise ValueError(f"name: expected one of {SUPPORTED}, got {name!r}")
    base = Path(root) if root is not None else default_root()
    if key == "digits":
        data = _load_digits()
    elif key in ("fashion-mnist", "mnist"):
        data = load_idx(key, base, download)
    elif key == "cifar10":
        data = load_cifar10(base, download)
    else:
        data = load_gtsrb(base, download)
    return subsample(data, train_limit, test_limit, seed)


def _load_digits() -> ImageDataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None]
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    return from_tensors(x_tr, y_tr, x_te, y_te, [str(i) for i in range(10)], name="digits")
