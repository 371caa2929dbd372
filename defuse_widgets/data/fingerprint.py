"""A dataset's fingerprint: what a saved session or a regression suite records of the dataset it
was made on, so that loading or checking it against another dataset is refused."""

from __future__ import annotations

from typing import Any

import torch

from defuse_widgets.data.dataset import ImageDataset


def dataset_fingerprint(data: ImageDataset) -> dict[str, Any]:
    """Name, image shape (C, H, W), class names, split sizes and a checksum of the test labels.

    Returns
    -------
    dict
        JSON-ready: ``name``, ``image_shape``, ``classes``, ``n_train``, ``n_test`` and
        ``label_sum`` (the position-weighted sum of the test labels modulo 1,000,003).
    """
    return {
        "name": data.name,
        "image_shape": list(data.image_shape),
        "classes": list(data.classes),
        "n_train": len(data.y_train),
        "n_test": len(data.y_test),
        "label_sum": int((data.y_test * torch.arange(1, len(data.y_test) + 1)).sum() % 1_000_003),
    }
