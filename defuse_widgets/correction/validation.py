"""The validation split: images a fine-tuning round is judged by and never trains on.

Carved from the training data (seeded, stratified by class) or given by the user. The test split
stays for the final report; rounds stop early, keep their best step and are flagged by what they
do on this split.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from defuse_widgets.correction.statistics import images_to_resolve
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


def halves(labels: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two disjoint, seeded halves of a validation split, stratified by class: ``(choose,
    confirm)`` as (n,) bool masks over ``labels`` (n,). A round chooses its step on the first
    and is confirmed on the second, which played no part in the choice: the best of many
    candidates judged on the images it was chosen on passes by luck."""
    gen = torch.Generator().manual_seed(seed)
    choose = torch.zeros(len(labels), dtype=torch.bool)
    for c in torch.unique(labels).tolist():
        rows = (labels == c).nonzero().flatten()
        rows = rows[torch.randperm(len(rows), generator=gen)]
        choose[rows[: (len(rows) + 1) // 2]] = True
    return choose, ~choose


class ValidationWarning(UserWarning):
    """The validation split cannot judge rounds as well as it should (too small, or seen in
    training)."""


def resolution_note(
    labels: torch.Tensor, num_classes: int, tolerance: float, confidence: float
) -> str:
    """A sentence when the smallest class of the split has too few images to refuse a drop of
    twice ``tolerance`` points as harm (see
    :func:`~defuse_widgets.correction.statistics.images_to_resolve`); empty when every class
    has enough."""
    need = images_to_resolve(tolerance, confidence)
    counts = torch.bincount(labels, minlength=num_classes)
    present = counts[counts > 0]
    if len(present) == 0 or int(present.min()) >= need:
        return ""
    return (
        f"the validation split has {int(present.min())} images in its smallest class; telling a "
        f"drop of {2 * tolerance:g} points from noise takes about {need} per class, so rounds "
        "are judged coarsely (a larger validation fraction, your own "
        "validation images, or a larger tolerance resolve it)"
    )


def leak_note(
    validation_right: torch.Tensor,
    test_right: torch.Tensor,
    train_right: torch.Tensor | None = None,
    min_gap: float = 2.0,
    labels: tuple[torch.Tensor, torch.Tensor] | None = None,
    class_names: Sequence[str] | None = None,
) -> str:
    """A sentence when the classifier has probably trained on the validation rows: validation
    accuracy sits above test accuracy by more than ``min_gap`` points and three standard errors
    of the difference, and (with ``train_right``) level with the accuracy on rows it did train
    on (within a point, or three standard errors). ``*_right``: (n,) bool, whether each image is
    right; ``train_right`` on a sample of the training rows, with their labels.

    The training rows matter when the training labels differ from the test labels (a mislabeled
    slice, a class kept rare): held-out validation rows share the training labels and then sit
    above test accuracy too, but below the rows the classifier trained on. Where the classifier
    is as good on held-out rows as on its own that cannot tell, so with ``labels`` (the
    validation and the test labels) a gap that one class explains is named as that instead: the
    test images of that class hold some the split lacks (memorised rows lift every class).
    """
    if not _gap_beyond_noise(validation_right, test_right, min_gap):
        return ""
    val, test = float(validation_right.float().mean()), float(test_right.float().mean())
    level = ""
    if train_right is not None and len(train_right):
        train = float(train_right.float().mean())
        spread = math.sqrt(_variance(validation_right) + _variance(train_right))
        if train - val > max(0.01, 3 * spread):
            return ""  # held out: below the rows it trained on, whatever the test labels say
        level = f" and level with its {100 * train:.1f}% on training rows"
    gap = f"validation accuracy {100 * val:.1f}% sits {100 * (val - test):.1f} points above test "
    gap += f"accuracy {100 * test:.1f}%"
    if labels is not None:
        shifted = _one_class_gap(validation_right, test_right, *labels, min_gap)
        if shifted is not None:
            name = f"class {class_names[shifted] if class_names else shifted}"
            return (
                f"{gap}, and {name} alone accounts for it: the test split holds {name} images "
                "the validation split lacks (a subgroup rare in training looks like this), so a "
                "round judged on this split cannot see them. Pass validation=(images, labels) "
                "that look like deployment to judge rounds by them"
            )
    return (
        f"{gap}{level}: the classifier has probably trained on the validation rows, "
        "so any change reads as harm. Train it on session.validation.fit_rows (the rows outside "
        "the split), or pass your own held-out validation=(images, labels)"
    )


def _gap_beyond_noise(
    validation_right: torch.Tensor, test_right: torch.Tensor, min_gap: float
) -> bool:
    """Whether validation accuracy sits above test accuracy by more than ``min_gap`` points and
    three standard errors of the difference."""
    if len(validation_right) == 0 or len(test_right) == 0:
        return False
    val, test = float(validation_right.float().mean()), float(test_right.float().mean())
    error = math.sqrt(_variance(validation_right) + _variance(test_right))
    return 100 * (val - test) > min_gap and val - test > 3 * error


def _one_class_gap(
    validation_right: torch.Tensor,
    test_right: torch.Tensor,
    validation_labels: torch.Tensor,
    test_labels: torch.Tensor,
    min_gap: float,
) -> int | None:
    """The class whose test images account for the gap (without it the gap is within noise), or
    None when no one class does."""
    classes = torch.unique(test_labels)
    deficit = [
        float(validation_right[validation_labels == k].float().mean().nan_to_num(1.0))
        - float(test_right[test_labels == k].float().mean())
        for k in classes.tolist()
    ]
    worst = int(classes[max(range(len(deficit)), key=lambda i: deficit[i])])
    rest_val, rest_test = validation_labels != worst, test_labels != worst
    if _gap_beyond_noise(validation_right[rest_val], test_right[rest_test], min_gap):
        return None
    return worst


def _variance(right: torch.Tensor) -> float:
    """Variance of an accuracy estimate, with Agresti and Caffo's one success and one failure
    added (sound at 0% and 100%, where the plain estimate claims no uncertainty)."""
    share = (float(right.sum()) + 1) / (len(right) + 2)
    return share * (1 - share) / (len(right) + 2)
