"""Image datasets as in-memory tensors: bundled digits, torchvision sets, tensors, image folders."""

from __future__ import annotations

import gzip
import os
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

SUPPORTED = ("digits", "fashion-mnist", "mnist", "cifar10", "gtsrb")
CHANNELS = (1, 3, 4)  # channel counts of grey, RGB and RGBA images: how a layout is guessed
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


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """Train and test images in memory.

    Attributes
    ----------
    name : str
    x_train, x_test : float32 tensors of shape (N, C, H, W), pixel values in [0, 1].
    y_train, y_test : int64 tensors of shape (N,), class indices in [0, len(classes)).
    classes : tuple of class names.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: tuple[str, ...]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        c, h, w = self.x_train.shape[1:]
        return int(c), int(h), int(w)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(images, labels)`` of ``"train"`` or ``"test"``."""
        if split == "train":
            return self.x_train, self.y_train
        if split == "test":
            return self.x_test, self.y_test
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")

    def __repr__(self) -> str:
        return (
            f"ImageDataset({self.name!r}, train={len(self.y_train)}, test={len(self.y_test)}, "
            f"image_shape={self.image_shape}, classes={self.num_classes})"
        )


def from_tensors(
    x_train: torch.Tensor | np.ndarray,
    y_train: torch.Tensor | np.ndarray | Sequence[int],
    x_test: torch.Tensor | np.ndarray,
    y_test: torch.Tensor | np.ndarray | Sequence[int],
    classes: Sequence[str],
    name: str = "tensors",
    *,
    allow_unused_classes: bool = False,
) -> ImageDataset:
    """Build a dataset from arrays, checking shapes, value ranges and labels.

    Images are (N, C, H, W) or (N, H, W) (one channel added); floats must lie in [0, 1], uint8 is
    divided by 255. More class names than the labels use is an error unless
    ``allow_unused_classes`` (a subset of a dataset without its last classes).

    Examples
    --------
    >>> ds = from_tensors(torch.rand(10, 1, 8, 8), torch.arange(10) % 2,
    ...                   torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 0, 1]), ["a", "b"])
    >>> ds.image_shape
    (1, 8, 8)
    """
    classes = tuple(str(c) for c in classes)
    if len(classes) < 2:
        raise ValueError(f"classes: expected at least 2 class names, got {len(classes)}")
    xs = {}
    for arg, x in (("x_train", x_train), ("x_test", x_test)):
        xs[arg] = _as_images(arg, x)
    ys = {}
    for arg, y, x_arg in (("y_train", y_train, "x_train"), ("y_test", y_test, "x_test")):
        ys[arg] = _as_labels(arg, y, len(xs[x_arg]), len(classes))
    if not allow_unused_classes:
        _check_class_count(classes, ys["y_train"], ys["y_test"])
    if xs["x_train"].shape[1:] != xs["x_test"].shape[1:]:
        raise ValueError(
            f"x_test: expected images of shape {tuple(xs['x_train'].shape[1:])} like x_train, "
            f"got {tuple(xs['x_test'].shape[1:])}"
        )
    return ImageDataset(name, xs["x_train"], ys["y_train"], xs["x_test"], ys["y_test"], classes)


def _as_images(arg: str, x: torch.Tensor | np.ndarray) -> torch.Tensor:
    t = _as_tensor(arg, x, "images of shape (N, C, H, W)")
    if t.ndim == 3:
        t = t.unsqueeze(1)
    if t.ndim != 4:
        raise ValueError(
            f"{arg}: expected images of shape (N, C, H, W) or (N, H, W), got {tuple(t.shape)}"
        )
    if t.shape[-1] in CHANNELS and t.shape[1] not in CHANNELS:
        raise ValueError(
            f"{arg}: expected channels-first images (N, C, H, W), got shape {tuple(t.shape)}, "
            "which looks channels-last (N, H, W, C); pass x.permute(0, 3, 1, 2) "
            "(NumPy: x.transpose(0, 3, 1, 2))"
        )
    if len(t) == 0:
        raise ValueError(f"{arg}: expected at least one image, got an empty array")
    if t.dtype == torch.uint8:
        return t.float().div_(255.0).contiguous()
    if not t.is_floating_point():
        raise ValueError(f"{arg}: expected float pixels in [0, 1] or uint8, got dtype {t.dtype}")
    t = t.float()
    if torch.isnan(t).any():
        raise ValueError(f"{arg}: contains NaN pixels")
    lo, hi = float(t.min()), float(t.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"{arg}: expected pixel values in [0, 1], got min {lo:.3g} and max {hi:.3g}; "
            "divide by 255 (or your maximum) first"
        )
    return t.contiguous()


def _as_tensor(arg: str, x: object, what: str) -> torch.Tensor:
    if isinstance(x, (str, bytes, os.PathLike)):
        raise TypeError(f"{arg}: expected a tensor or array of {what}, got {type(x).__name__}")
    try:
        return torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(
            f"{arg}: expected a tensor or array of {what}, got {type(x).__name__} ({exc})"
        ) from exc


def _as_labels(arg: str, y: object, n: int, num_classes: int) -> torch.Tensor:
    t = _as_tensor(arg, y, f"{n} integer labels")
    if t.ndim != 1 or len(t) != n:
        raise ValueError(f"{arg}: expected {n} labels of shape ({n},), got shape {tuple(t.shape)}")
    if t.is_floating_point() or t.dtype == torch.bool:
        raise ValueError(f"{arg}: expected integer class indices, got dtype {t.dtype}")
    t = t.long()
    if int(t.min()) < 0 or int(t.max()) >= num_classes:
        raise ValueError(
            f"{arg}: expected labels in [0, {num_classes - 1}] for {num_classes} classes, "
            f"got min {int(t.min())} and max {int(t.max())}"
        )
    return t.contiguous()


def _check_class_count(classes: tuple[str, ...], *labels: torch.Tensor) -> None:
    used = 1 + max(int(y.max()) for y in labels)
    if used < len(classes):
        unused = ", ".join(repr(c) for c in classes[used:])
        raise ValueError(
            f"classes: expected one name per class, got {len(classes)} names but the labels use "
            f"only 0-{used - 1} ({used} classes), so {unused} never occur; pass the {used} names "
            "in label order (or allow_unused_classes=True for a subset without those classes)"
        )


def default_root() -> Path:
    """Where datasets are looked for and downloaded when no ``root`` is given."""
    env = os.environ.get("DEFUSE_WIDGETS_DATA")
    return Path(env) if env else Path.home() / ".cache" / "defuse-widgets" / "datasets"


def load_dataset(
    name: str, root: str | os.PathLike | None = None, download: bool = False
) -> ImageDataset:
    """Load a named dataset with train and test splits, pixels in [0, 1].

    Parameters
    ----------
    name : "digits" (scikit-learn's bundled 8x8 digits, offline), "fashion-mnist", "mnist",
        "cifar10" or "gtsrb" (through torchvision, read from ``root``).
    root : folder holding the files; defaults to ``$DEFUSE_WIDGETS_DATA`` or
        ``~/.cache/defuse-widgets/datasets``. For Fashion-MNIST and MNIST the four IDX files may lie
        directly in ``root``, gzipped or not (e.g. Debian's ``/usr/share/datasets/fashion-mnist``).
    download : let torchvision download missing files (needs internet).

    Examples
    --------
    >>> data = load_dataset("digits")
    >>> data.image_shape
    (1, 8, 8)
    """
    if not isinstance(name, str):
        raise TypeError(f"name: expected a dataset name, one of {SUPPORTED}, got {name!r}")
    key = name.lower().replace("_", "-")
    if key == "digits":
        return _load_digits()
    if key not in SUPPORTED:
        raise ValueError(f"name: expected one of {SUPPORTED}, got {name!r}")
    base = Path(root) if root is not None else default_root()
    if key in ("fashion-mnist", "mnist"):
        return _load_idx(key, base, download)
    if key == "cifar10":
        return _load_cifar10(base, download)
    return _load_gtsrb(base, download)


def _load_digits() -> ImageDataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None]
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    return from_tensors(x_tr, y_tr, x_te, y_te, [str(i) for i in range(10)], name="digits")


def _load_idx(key: str, base: Path, download: bool) -> ImageDataset:
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


def _load_cifar10(base: Path, download: bool) -> ImageDataset:
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


def _load_gtsrb(base: Path, download: bool, size: int = 32) -> ImageDataset:
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
