"""Bring your own data as a torch dataset: any map-style dataset of (image, label) pairs, such as
torchvision's, read once into an :class:`~defuse_widgets.data.dataset.ImageDataset`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from defuse_widgets.data.dataset import CHANNELS, ImageDataset, from_tensors, stratified
from defuse_widgets.utils.checks import in_range, positive_int

NORMALIZE_HINT = (
    "remove transforms.Normalize from the dataset's transform (Defuse's generator and search work "
    "on pixels in [0, 1]) and wrap the classifier instead: dw.Normalized(model, mean, std)"
)


def from_torch_dataset(
    train: Any,
    test: Any = None,
    classes: Sequence[str] | None = None,
    name: str | None = None,
    *,
    test_fraction: float = 0.2,
    train_limit: int | None = None,
    test_limit: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> ImageDataset:
    """Read map-style torch datasets of ``(image, label)`` pairs into an in-memory dataset.

    Parameters
    ----------
    train, test : map-style datasets (``len(ds)`` and ``ds[i]``)
        Each item is ``(image, label, ...)``: the image a tensor (C, H, W) or (H, W) (e.g. after
        ``transforms.ToTensor()``), a PIL image, or an array (H, W), (H, W, C) or (C, H, W);
        float pixels in [0, 1] or uint8; every image of one size (add ``transforms.Resize``
        otherwise). The label an int or a 0-d tensor. E.g. torchvision's
        ``FashionMNIST(root, train=True)`` and ``FashionMNIST(root, train=False)``.
        Without ``test``, a seeded stratified ``test_fraction`` of ``train`` becomes the test
        split.
    classes : sequence of str or None
        Class names in label order; None: the dataset's ``classes`` attribute (torchvision's
        have one), else ``"0"``, ``"1"``, ... up to the largest label.
    name : str or None
        The dataset's name; None: the class name of ``train`` (e.g. ``"FashionMNIST"``).
    test_fraction : float
        Share of ``train`` held out as test images when ``test`` is None, in (0, 1).
    train_limit, test_limit : int or None
        Read at most this many images of each split, a seeded sample stratified by class
        (read from the dataset's ``targets`` attribute when it has one, so only the picked
        images are loaded).
    seed : int
        Seeds the test split and the samples.
    progress : bool
        Show a progress bar while reading.

    Returns
    -------
    ImageDataset
        Images (N, C, H, W) float32 in [0, 1] and int64 labels, train and test.

    Examples
    --------
    >>> from torchvision.datasets import FashionMNIST  # doctest: +SKIP
    >>> data = dw.from_torch_dataset(FashionMNIST(root, train=True),
    ...                              FashionMNIST(root, train=False))  # doctest: +SKIP
    """
    for arg, ds in (("train", train), ("test", test)):
        if ds is not None and not (hasattr(ds, "__len__") and hasattr(ds, "__getitem__")):
            raise TypeError(
                f"{arg}: expected a map-style dataset (with len() and [i]), got "
                f"{type(ds).__name__}; an IterableDataset cannot be indexed: collect it into "
                "tensors and use dw.from_tensors"
            )
        if ds is not None and len(ds) == 0:
            raise ValueError(f"{arg}: expected a dataset with images, got an empty one")
    for arg, limit in (("train_limit", train_limit), ("test_limit", test_limit)):
        if limit is not None:
            positive_int(arg, limit, minimum=2)
    in_range("test_fraction", test_fraction, 0, 1, high_open=True)
    if test is None:
        train_rows, test_rows = _holdout(train, test_fraction, seed, progress)
        test = train
    else:
        train_rows, test_rows = torch.arange(len(train)), torch.arange(len(test))
    train_rows = _limit(train, train_rows, train_limit, seed)
    test_rows = _limit(test, test_rows, test_limit, seed)
    x_train, y_train = read_items("train", train, train_rows, progress)
    x_test, y_test = read_items("test", test, test_rows, progress)
    if classes is None:
        classes = getattr(train, "classes", None) or [
            str(i) for i in range(1 + int(max(y_train.max(), y_test.max())))
        ]
    return from_tensors(x_train, y_train, x_test, y_test, classes,
                        name or type(train).__name__, allow_unused_classes=True)  # fmt: skip


def _targets(ds: Any) -> torch.Tensor | None:
    """The dataset's labels without loading its images, when it says them (``targets``)."""
    targets = getattr(ds, "targets", None)
    if targets is None or len(targets) != len(ds):
        return None
    return torch.as_tensor(np.asarray(targets)).long()


def _limit(ds: Any, rows: torch.Tensor, limit: int | None, seed: int) -> torch.Tensor:
    """At most ``limit`` of ``rows``, stratified by the dataset's targets (plain seeded sample
    when it has none)."""
    if limit is None or limit >= len(rows):
        return rows
    targets = _targets(ds)
    if targets is None:
        gen = torch.Generator().manual_seed(seed)
        return rows[torch.randperm(len(rows), generator=gen)[:limit].sort().values]
    return rows[stratified(targets[rows], limit, seed)]


def _holdout(
    ds: Any, fraction: float, seed: int, progress: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train rows, test rows): a seeded split of ``ds`` holding out ``fraction``, stratified."""
    targets = _targets(ds)
    if targets is None:
        bar = tqdm(range(len(ds)), desc="read labels", disable=not progress)
        targets = torch.as_tensor([_label("train", ds[i], i) for i in bar])
    n_test = max(1, round(fraction * len(ds)))
    if n_test >= len(ds):
        raise ValueError(
            f"test_fraction: {fraction:g} of {len(ds)} images leaves no training images"
        )
    test_rows = stratified(targets, n_test, seed)
    keep = torch.ones(len(ds), dtype=torch.bool)
    keep[test_rows] = False
    return keep.nonzero().flatten(), test_rows


def read_items(
    arg: str, ds: Any, rows: torch.Tensor, progress: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (n, C, H, W) and labels (n,) of the items ``rows`` of a map-style dataset.

    Raises a ValueError naming ``arg`` and the item for an item that is not an
    ``(image, label)`` pair, images of different sizes, or normalised pixels outside [0, 1].
    """
    images: list[torch.Tensor] = []
    labels: list[int] = []
    for i in tqdm(rows.tolist(), desc=f"read {arg}", disable=not progress):
        item = ds[i]
        image = _image(arg, item, i)
        if images and image.shape != images[0].shape:
            raise ValueError(
                f"{arg}: image {i} has shape {tuple(image.shape)} but image {int(rows[0])} has "
                f"{tuple(images[0].shape)}; every image must be one size (add "
                "transforms.Resize((H, W)) to the dataset's transform)"
            )
        images.append(image)
        labels.append(_label(arg, item, i))
    x = torch.stack(images)
    if x.is_floating_point() and len(x) and (float(x.min()) < 0 or float(x.max()) > 1):
        raise ValueError(
            f"{arg}: expected pixels in [0, 1], got min {float(x.min()):.3g} and max "
            f"{float(x.max()):.3g}; {NORMALIZE_HINT}"
        )
    return x, torch.as_tensor(labels, dtype=torch.long)


def _pair(arg: str, item: Any, i: int) -> tuple[Any, Any]:
    if not isinstance(item, (tuple, list)) or len(item) < 2:
        raise ValueError(
            f"{arg}: expected each item to be (image, label), got {type(item).__name__} at item {i}"
        )
    return item[0], item[1]


def _image(arg: str, item: Any, i: int) -> torch.Tensor:
    image, _ = _pair(arg, item, i)
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
    else:
        try:
            arr = np.asarray(image)  # a PIL image or an array
        except Exception as exc:
            raise ValueError(
                f"{arg}: item {i}'s image is a {type(image).__name__}, expected a tensor, a PIL "
                "image or an array"
            ) from exc
        if arr.dtype == object or arr.ndim not in (2, 3):
            raise ValueError(
                f"{arg}: item {i}'s image is a {type(image).__name__}, expected a tensor, a PIL "
                "image or an array of shape (H, W), (H, W, C) or (C, H, W)"
            )
        t = torch.from_numpy(np.array(arr))  # a copy: PIL's arrays are read-only
        if t.ndim == 3 and t.shape[-1] in CHANNELS and t.shape[0] not in CHANNELS:
            t = t.permute(2, 0, 1)  # PIL and NumPy images are channels-last
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3:
        raise ValueError(
            f"{arg}: item {i}'s image has shape {tuple(t.shape)}, expected (C, H, W) or (H, W)"
        )
    return t


def _label(arg: str, item: Any, i: int) -> int:
    _, label = _pair(arg, item, i)
    value = label.item() if isinstance(label, (torch.Tensor, np.ndarray)) else label
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{arg}: item {i}'s label is {label!r}, expected an integer class index")
    return int(value)
