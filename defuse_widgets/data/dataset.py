"""Image datasets as in-memory tensors: bundled digits, torchvision sets, tensors, image folders."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

CHANNELS = (1, 3, 4)  # channel counts of grey, RGB and RGBA images: how a layout is guessed


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
        xs[arg] = as_images(arg, x)
    ys = {}
    for arg, y, x_arg in (("y_train", y_train, "x_train"), ("y_test", y_test, "x_test")):
        ys[arg] = as_labels(arg, y, len(xs[x_arg]), len(classes))
    if not allow_unused_classes:
        _check_class_count(classes, ys["y_train"], ys["y_test"])
    if xs["x_train"].shape[1:] != xs["x_test"].shape[1:]:
        raise ValueError(
            f"x_test: expected images of shape {tuple(xs['x_train'].shape[1:])} like x_train, "
            f"got {tuple(xs['x_test'].shape[1:])}"
        )
    return ImageDataset(name, xs["x_train"], ys["y_train"], xs["x_test"], ys["y_test"], classes)


def as_images(arg: str, x: torch.Tensor | np.ndarray) -> torch.Tensor:
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


def as_labels(arg: str, y: object, n: int, num_classes: int) -> torch.Tensor:
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


def subsample(
    data: ImageDataset, train_limit: int | None, test_limit: int | None, seed: int = 0
) -> ImageDataset:
    """At most ``train_limit``/``test_limit`` images per split, stratified by class and seeded."""
    picks = {}
    for split, limit in (("train", train_limit), ("test", test_limit)):
        y = data.split(split)[1]
        picks[split] = stratified(y, limit, seed) if limit and limit < len(y) else None
    if all(v is None for v in picks.values()):
        return data
    (x_tr, y_tr), (x_te, y_te) = (_pick(data, split, idx) for split, idx in picks.items())
    return from_tensors(x_tr, y_tr, x_te, y_te, data.classes,
                        name=f"{data.name}-{len(y_tr)}-{len(y_te)}-seed{seed}",
                        allow_unused_classes=True)  # fmt: skip


def _pick(
    data: ImageDataset, split: str, idx: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = data.split(split)
    return (x, y) if idx is None else (x[idx], y[idx])


def stratified(y: torch.Tensor, limit: int, seed: int) -> torch.Tensor:
    from sklearn.model_selection import train_test_split

    counts = torch.bincount(y)
    stratify = y.numpy() if int(counts[counts > 0].min()) >= 2 and limit >= len(counts) else None
    idx, _ = train_test_split(
        np.arange(len(y)), train_size=limit, random_state=seed, stratify=stratify
    )
    return torch.as_tensor(np.sort(idx))
