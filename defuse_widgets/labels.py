"""Region labels: the special values, and a reference model that labels regions automatically."""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
from torch import nn

from .device import module_device

MODEL_IS_RIGHT = -1
"""The region's decoded images really are the predicted class: excluded from correction."""
UNRECOGNIZABLE = -2
"""The region's decoded images are not recognizably any class: excluded from correction."""
SPECIAL_LABELS = {MODEL_IS_RIGHT: "model is right", UNRECOGNIZABLE: "unrecognizable"}


def check_label(label: object, num_classes: int) -> int:
    """``label`` as an int if it is a class index or a special label, else ValueError."""
    try:
        if isinstance(label, (bool, float)):
            raise TypeError
        value = operator.index(label)  # type: ignore[arg-type]
    except TypeError:  # e.g. a float, a string, a tensor of several values
        raise ValueError(
            f"label: expected a class index in [0, {num_classes - 1}], MODEL_IS_RIGHT or "
            f"UNRECOGNIZABLE, got {label!r}"
        ) from None
    if value in SPECIAL_LABELS or 0 <= value < num_classes:
        return value
    raise ValueError(
        f"label: expected a class index in [0, {num_classes - 1}], "
        f"MODEL_IS_RIGHT ({MODEL_IS_RIGHT}) "
        f"or UNRECOGNIZABLE ({UNRECOGNIZABLE}), got {value}"
    )


def label_name(label: int, classes: Sequence[str]) -> str:
    return SPECIAL_LABELS.get(label) or classes[label]


class ReferenceModelLabeler:
    """Labels a region by the majority vote of an independent model over its decoded samples.

    It stands in for a person in automated runs, demos and benchmarks.

    Parameters
    ----------
    model : a classifier returning logits, ideally stronger than (and trained apart from) the one
        being debugged.
    samples : decoded samples looked at per region.
    min_agreement : the share of samples the majority class must reach; below it the labeler
        abstains with ``UNRECOGNIZABLE``. When the majority is the class the debugged classifier
        predicts on those samples, the label is ``MODEL_IS_RIGHT``.
    min_confidence : per-image mode: a training image is relabeled only when the model's softmax
        probability for its class reaches this.

    Examples
    --------
    >>> labeler = ReferenceModelLabeler(train_classifier(data, width=64, seed=1))  # doctest: +SKIP
    >>> session.auto_label(labeler)  # doctest: +SKIP
    """

    name = "reference-model"

    def __init__(
        self,
        model: nn.Module,
        samples: int = 16,
        min_agreement: float = 0.7,
        min_confidence: float = 0.9,
    ):
        if not isinstance(samples, int) or samples < 1:
            raise ValueError(f"samples: expected a positive integer, got {samples!r}")
        if not 0 < min_agreement <= 1:
            raise ValueError(f"min_agreement: expected a number in (0, 1], got {min_agreement}")
        if not 0 < min_confidence <= 1:
            raise ValueError(f"min_confidence: expected a number in (0, 1], got {min_confidence}")
        self.model = model
        self.samples = samples
        self.min_agreement = min_agreement
        self.min_confidence = min_confidence

    @torch.inference_mode()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """(n, K) softmax probabilities of the reference model, on the CPU."""
        was_training = self.model.training
        self.model.eval()
        dev = module_device(self.model)
        probs = torch.cat(
            [self.model(x.to(dev)).float().softmax(1).cpu() for x in images.split(1024)]
        )
        self.model.train(was_training)
        return probs

    def label_region(self, images: torch.Tensor, predictions: torch.Tensor) -> int:
        """One label for a region from its decoded ``images`` and the debugged model's
        ``predictions``."""
        votes = self.probabilities(images).argmax(1)
        counts = torch.bincount(votes)
        majority = int(counts.argmax())
        if float(counts[majority]) / len(votes) < self.min_agreement:
            return UNRECOGNIZABLE
        model_majority = int(torch.bincount(predictions.cpu()).argmax())
        return MODEL_IS_RIGHT if majority == model_majority else majority

    def label_images(self, images: torch.Tensor) -> torch.Tensor:
        """Per-image mode: (n,) class per image, or ``UNRECOGNIZABLE`` where the model is unsure."""
        conf, pred = self.probabilities(images).max(1)
        return torch.where(conf >= self.min_confidence, pred, torch.full_like(pred, UNRECOGNIZABLE))
