"""Region labels: the special values, and a reference model that labels regions automatically."""

from __future__ import annotations

import json
import operator
import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from defuse_widgets.models.inference import predict_proba
from defuse_widgets.utils.checks import in_range, positive_int

MODEL_IS_RIGHT = -1
"""The region's decoded images really are the predicted class: excluded from correction."""
UNRECOGNIZABLE = -2
"""The region's decoded images are not recognizably any class: excluded from correction."""
SPECIAL_LABELS = {MODEL_IS_RIGHT: "model is right", UNRECOGNIZABLE: "unrecognizable"}
LABELS_FORMAT = "defuse-widgets-labels"


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
    """A label's display name: the class name, or "model is right" / "unrecognizable"."""
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
        positive_int("samples", samples)
        for name, value in (("min_agreement", min_agreement), ("min_confidence", min_confidence)):
            if in_range(name, value, 0, 1) == 0:
                raise ValueError(f"{name}: expected a number in (0, 1], got {value!r}")
        self.model = model
        self.samples = samples
        self.min_agreement = min_agreement
        self.min_confidence = min_confidence

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """(n, K) softmax probabilities of the reference model, on the CPU."""
        return predict_proba(self.model, images)

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


def as_labeler(labeler: Any) -> Any:
    """``labeler`` if it labels regions (``samples`` and ``label_region``); a classifier module is
    wrapped in a :class:`ReferenceModelLabeler`; TypeError otherwise."""
    if isinstance(labeler, nn.Module):
        return ReferenceModelLabeler(labeler)
    if isinstance(getattr(labeler, "samples", None), int) and callable(
        getattr(labeler, "label_region", None)
    ):
        return labeler
    raise TypeError(
        "labeler: expected a ReferenceModelLabeler (or an object with samples and "
        "label_region(images, predictions)), or a classifier module to wrap in one, "
        f"got {type(labeler).__name__}"
    )


def labels_document(labels: Mapping[int, int], classes: Sequence[str]) -> dict[str, Any]:
    """Region labels as a JSON-ready :data:`LABELS_FORMAT` document."""
    return {
        "format": LABELS_FORMAT,
        "classes": list(classes),
        "labels": {str(k): v for k, v in sorted(labels.items())},
    }


def read_labels(
    source: str | os.PathLike | Mapping[str, Any],
    classes: Sequence[str],
    region_ids: Collection[int],
) -> dict[int, int]:
    """Region labels from a :func:`labels_document` (a dict or a JSON file), all checked.

    The document must be for the same ``classes`` and name only regions in ``region_ids``.
    """
    if isinstance(source, Mapping):
        doc: Any = source
    else:
        try:
            doc = json.loads(Path(source).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"labels: {source} is not a JSON file ({exc})") from exc
    if (
        not isinstance(doc, Mapping)
        or doc.get("format") != LABELS_FORMAT
        or not isinstance(doc.get("labels"), dict)
    ):
        raise ValueError(f"labels: expected export_labels() output with format {LABELS_FORMAT!r}")
    given = doc.get("classes")
    if given is not None and list(given) != list(classes):
        raise ValueError(
            f"labels: they were made for the classes {list(given)}, but this session's "
            f"data has {list(classes)}"
        )
    return check_labels(doc["labels"], len(classes), region_ids)


def check_labels(
    labels: Mapping[Any, Any], num_classes: int, region_ids: Collection[int]
) -> dict[int, int]:
    """``labels`` (region id -> label) with int keys, every id known and every label valid."""
    out = {}
    for key, value in labels.items():
        try:
            region_id = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"labels: expected integer region ids, got {key!r}") from None
        if region_id not in region_ids:
            raise KeyError(f"region_id: no region {region_id!r}; known ids are {list(region_ids)}")
        out[region_id] = check_label(value, num_classes)
    return out
