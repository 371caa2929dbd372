"""The validation split: images a fine-tuning round is judged by and never trains on.

Carved from the training data (seeded, stratified by class) or given by the user. The test split
stays for the final report; rounds stop early, keep their best step and are flagged by what they
do on this split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from defuse_widgets.data.dataset import ImageDataset, as_images, as_labels, stratified
from defuse_widgets.utils.checks import is_number

DEFAULT_FRACTION = 0.1
MAX_FRACTION = 0.5


@dataclass(frozen=True, eq=False)
class ValidationSplit:
    """Where the validation images come from.

    ``rows``: (n,) indices into the training split (a carved split; their labels are the
    training labels with confirmed relabels applied), or None for the user's own ``images`` and
    ``labels``. ``fit_rows``: the training rows a round trains on (all of them for a user split).
    """

    fraction: float | None
    rows: torch.Tensor | None
    fit_rows: torch.Tensor
    images: torch.Tensor | None = None
    labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.rows) if self.rows is not None else len(self.images)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        where = f"{self.fraction:g} of the training split" if self.rows is not None else "given"
        return f"ValidationSplit({len(self)} images, {where})"


def carve(data: ImageDataset, fraction: float, seed: int) -> ValidationSplit:
    """A seeded, stratified ``fraction`` of the training split as validation rows."""
    n = len(data.y_train)
    size = max(1, round(fraction * n))
    if size >= n:
        raise ValueError(
            f"validation: a fraction of {fraction:g} leaves no training images out of {n}"
        )
    rows = stratified(data.y_train, size, seed)
    keep = torch.ones(n, dtype=torch.bool)
    keep[rows] = False
    return ValidationSplit(float(fraction), rows, keep.nonzero().flatten())


def make_validation(data: ImageDataset, validation: Any, seed: int) -> ValidationSplit | None:
    """The session's validation split from its ``validation`` argument (see DefuseSession).

    A fraction in (0, 0.5] carves that share of the training split (seeded by ``seed``); a pair
    ``(images, labels)`` is the user's own; None means no validation split (rounds train on every
    training image and neither stop early nor report validation figures).
    """
    if validation is None:
        return None
    if is_number(validation):
        if not 0 < validation <= MAX_FRACTION:
            raise ValueError(
                f"validation: expected a fraction in (0, {MAX_FRACTION}], a pair (images, labels) "
                f"or None, got {validation!r}"
            )
        return carve(data, float(validation), seed)
    if isinstance(validation, (tuple, list)) and len(validation) == 2:
        images = as_images("validation images", validation[0])
        if tuple(images.shape[1:]) != data.image_shape:
            raise ValueError(
                f"validation images: expected shape (n, {', '.join(map(str, data.image_shape))}) "
                f"like the dataset's, got {tuple(images.shape)}"
            )
        labels = as_labels("validation labels", validation[1], len(images), data.num_classes)
        everything = torch.arange(len(data.y_train))
        return ValidationSplit(None, None, everything, images, labels)
    raise TypeError(
        "validation: expected a fraction in (0, 0.5], a pair (images, labels) or None, "
        f"got {type(validation).__name__}"
    )
