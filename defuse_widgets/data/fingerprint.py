"""A dataset's fingerprint: what a saved session or a regression suite records of the dataset it
was made on, so that loading or checking it against another dataset is refused.

The fingerprint holds a SHA-256 hash of every image and label (with their shapes and dtypes).
Files written by earlier development versions stored ``label_sum`` instead (a position-weighted
sum of the test labels modulo 1,000,003); :func:`fingerprint_matches` still accepts them.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

from defuse_widgets.data.dataset import ImageDataset

HASH = "sha256"  # named in the fingerprint's "hash" value, "sha256:<hex digest>"


def _describe(data: ImageDataset) -> dict[str, Any]:
    return {
        "name": data.name,
        "image_shape": list(data.image_shape),
        "classes": list(data.classes),
        "n_train": len(data.y_train),
        "n_test": len(data.y_test),
    }


def _update(digest: Any, tensor: torch.Tensor) -> None:
    arr = np.ascontiguousarray(tensor.detach().cpu().numpy())
    digest.update(repr((str(arr.dtype), arr.shape)).encode())
    digest.update(arr.reshape(-1).view(np.uint8).data)  # the bytes in place, no copy


def content_hash(data: ImageDataset) -> str:
    """``"sha256:<hex>"`` over the train and test images and labels, shapes and dtypes."""
    digest = hashlib.new(HASH)  # sha256: twice blake2b's speed on CPUs with SHA instructions
    for tensor in (data.x_train, data.y_train, data.x_test, data.y_test):
        _update(digest, tensor)
    return f"{HASH}:{digest.hexdigest()}"


def legacy_label_sum(data: ImageDataset) -> int:
    """The checksum the first session and suite files stored: the test labels weighted by their
    position (1, 2, ...), summed modulo 1,000,003. Kept only to recognise those files."""
    weights = torch.arange(1, len(data.y_test) + 1)
    return int((data.y_test * weights).sum() % 1_000_003)


def dataset_fingerprint(data: ImageDataset) -> dict[str, Any]:
    """Name, image shape (C, H, W), class names, split sizes and a hash of the images and labels.

    Returns
    -------
    dict
        JSON-ready: ``name``, ``image_shape``, ``classes``, ``n_train``, ``n_test`` and ``hash``
        (:func:`content_hash`).
    """
    return {**_describe(data), "hash": content_hash(data)}


def fingerprint_matches(data: ImageDataset, stored: Any) -> bool:
    """Whether ``stored`` (a fingerprint read from a file) describes ``data``.

    A fingerprint with ``hash`` must equal :func:`dataset_fingerprint`; an older one with
    ``label_sum`` must match the description and :func:`legacy_label_sum`.
    """
    if not isinstance(stored, dict):
        return False
    if "hash" in stored:
        return stored == dataset_fingerprint(data)
    legacy = {**_describe(data), "label_sum": legacy_label_sum(data)}
    return stored == legacy
