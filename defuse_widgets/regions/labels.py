"""Region labels and who gives them: the special values, the :class:`Labeler` protocol with its one
adapter :func:`as_labeler`, the reference model that labels automatically, label documents."""

from __future__ import annotations

import json
import operator
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from defuse_widgets.models.inference import predict_proba
from defuse_widgets.utils.checks import Constraints, Interval, positive_int, validate_params

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


class Labeler(Protocol):
    """What labels in place of a person: the one rule every step that takes a ``labeler`` uses.

    A labeler has

    - ``label_images(images) -> (n,)`` a class per image, or ``UNRECOGNIZABLE`` where it abstains:
      it vets a round's region samples (``correct``) and confirms audited images and disputes
      (``confirm_audit``, ``confirm_disputes``);
    - ``label_region(images, predictions) -> int`` one label for a region from its decoded
      ``images`` and the debugged classifier's ``predictions`` on them (``auto_label``), looking at
      ``samples`` images per region;
    - ``model``: the classifier module it judges with, or None; it judges the generator
      (``generator_report``, ``sample_recognition``);
    - ``name``: who it is, recorded with the relabels it confirms.

    The package gives :class:`ReferenceModelLabeler` (an independent classifier votes), and
    :func:`as_labeler` makes one of a classifier module (a ``ReferenceModelLabeler`` with its
    defaults), of a callable ``images -> (n,) classes`` (a person's decisions; it has no model) or
    of an object with only some of these methods (what it lacks is refused where it is needed).
    """

    @property
    def name(self) -> str: ...

    @property
    def samples(self) -> int: ...

    @property
    def model(self) -> nn.Module | None: ...

    def label_images(self, images: torch.Tensor) -> torch.Tensor: ...

    def label_region(self, images: torch.Tensor, predictions: torch.Tensor) -> int: ...


LabelerLike = Labeler | nn.Module | Callable[[torch.Tensor], Any]
"""What a step's ``labeler`` argument takes: anything :func:`as_labeler` adapts."""

DEFAULT_SAMPLES = 16
DEFAULT_AGREEMENT = 0.7


def region_vote(votes: torch.Tensor, predictions: torch.Tensor, min_agreement: float) -> int:
    """A region's label from per-sample ``votes`` (``UNRECOGNIZABLE``: an abstention): the
    majority class when it reaches ``min_agreement`` of the votes (``MODEL_IS_RIGHT`` when it is
    the class the debugged classifier mostly ``predicts``), else ``UNRECOGNIZABLE``."""
    votes = votes.cpu().long()
    counts = torch.bincount(votes[votes >= 0])
    if not len(votes) or not len(counts):
        return UNRECOGNIZABLE
    majority = int(counts.argmax())
    if float(counts[majority]) / len(votes) < min_agreement:
        return UNRECOGNIZABLE
    model_majority = int(torch.bincount(predictions.cpu()).argmax())
    return MODEL_IS_RIGHT if majority == model_majority else majority


class ReferenceModelLabeler:
    """Labels a region by the majority vote of an independent model over its decoded samples.

    It stands in for a person in automated runs, demos and benchmarks (see :class:`Labeler`).

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
    CONSTRAINTS: Constraints = {
        "samples": [Interval(int, 1, None)],
        "min_agreement": [Interval(float, 0, 1, closed="right")],
        "min_confidence": [Interval(float, 0, 1, closed="right")],
    }

    def __init__(
        self,
        model: nn.Module,
        samples: int = DEFAULT_SAMPLES,
        min_agreement: float = DEFAULT_AGREEMENT,
        min_confidence: float = 0.9,
    ):
        validate_params(
            self.CONSTRAINTS,
            samples=samples,
            min_agreement=min_agreement,
            min_confidence=min_confidence,
        )
        self.model = model
        self.samples = samples
        self.min_agreement = min_agreement
        self.min_confidence = min_confidence

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """(n, K) softmax probabilities of the reference model, on the CPU."""
        return predict_proba(self.model, images)

    def label_region(self, images: torch.Tensor, predictions: torch.Tensor) -> int:
        """One label for a region from its decoded ``images`` and the debugged model's
        ``predictions`` (every sample votes its likeliest class; see :func:`region_vote`)."""
        return region_vote(self.probabilities(images).argmax(1), predictions, self.min_agreement)

    def label_images(self, images: torch.Tensor) -> torch.Tensor:
        """Per-image mode: (n,) class per image, or ``UNRECOGNIZABLE`` where the model is unsure."""
        conf, pred = self.probabilities(images).max(1)
        return torch.where(conf >= self.min_confidence, pred, torch.full_like(pred, UNRECOGNIZABLE))


class AdaptedLabeler:
    """A :class:`Labeler` made by :func:`as_labeler` of a callable or of an object with only
    some of a labeler's methods: what it lacks is refused when asked for (see ``lacks``)."""

    def __init__(self, source: Any):
        images = getattr(source, "label_images", None)
        self._images = images if callable(images) else None
        if self._images is None and callable(source) and not hasattr(source, "label_region"):
            self._images = source  # a callable images -> classes, such as a person's decisions
        region = getattr(source, "label_region", None)
        self._region = region if callable(region) else None
        model = getattr(source, "model", None)
        self.model: nn.Module | None = model if isinstance(model, nn.Module) else None
        self.samples: int = getattr(source, "samples", DEFAULT_SAMPLES)
        self.name: str = str(getattr(source, "name", type(source).__name__))
        self.source = source

    def lacks(self, need: str) -> str | None:
        """What the labeler lacks to do ``need`` ("images", "regions", "model"), or None."""
        if need == "images" and self._images is None:
            return "label_images(images)"
        if need == "regions" and self._region is None and self._images is None:
            return "label_region(images, predictions)"
        if need == "model" and self.model is None:
            return "a model (a classifier module)"
        return None

    def label_images(self, images: torch.Tensor) -> torch.Tensor:
        """(n,) the class the source gives each image."""
        if self._images is None:
            raise TypeError(f"labeler: {self.name} has no label_images(images)")
        return torch.as_tensor(self._images(images))

    def label_region(self, images: torch.Tensor, predictions: torch.Tensor) -> int:
        """The source's own label for the region, else the vote of its per-image labels."""
        if self._region is not None:
            return int(self._region(images, predictions))
        return region_vote(self.label_images(images).flatten(), predictions, DEFAULT_AGREEMENT)


NEEDS = {
    "images": "labeling image by image needs label_images(images)",
    "regions": "labeling regions needs label_region(images, predictions) or label_images(images)",
    "model": "judging the generator needs a classifier module",
}


def as_labeler(labeler: LabelerLike, need: str | None = None) -> Labeler:
    """``labeler`` as a :class:`Labeler`: the one adapter every step that takes one uses.

    A :class:`ReferenceModelLabeler` (or any object with every part of a labeler) is returned as
    it is; a classifier module is wrapped in a ``ReferenceModelLabeler`` with its defaults (calling
    it would give logits, not labels); a callable ``images -> classes`` or an object with
    ``label_images`` and/or ``label_region`` in an :class:`AdaptedLabeler`. ``need`` ("images",
    "regions" or "model") is what the caller will ask of it: TypeError now if it lacks it.
    """
    if need is not None and need not in NEEDS:
        raise ValueError(f"need: expected one of {tuple(NEEDS)}, got {need!r}")
    if isinstance(labeler, nn.Module):
        return ReferenceModelLabeler(labeler)
    if isinstance(labeler, ReferenceModelLabeler):
        if need == "model" and not isinstance(labeler.model, nn.Module):
            raise TypeError(f"labeler: {NEEDS[need]}; {labeler.name} has no model")
        return labeler
    if not (
        callable(labeler)
        or callable(getattr(labeler, "label_images", None))
        or callable(getattr(labeler, "label_region", None))
    ):
        raise TypeError(
            "labeler: expected a ReferenceModelLabeler, a classifier module, a callable "
            "images -> classes, or an object with label_images(images) and/or "
            f"label_region(images, predictions) (see Labeler), got {type(labeler).__name__}"
        )
    adapted = AdaptedLabeler(labeler)
    positive_int("labeler.samples", adapted.samples)
    missing = None if need is None else adapted.lacks(need)
    if need is not None and missing is not None:
        raise TypeError(f"labeler: {NEEDS[need]}; {type(labeler).__name__} has no {missing}")
    return adapted


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
