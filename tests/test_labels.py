"""Labels: one per region, special labels, undo, JSON export/import, and the reference labeler."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from session_fixtures import ready_session
from torch import nn

import defuse_widgets as dw
from defuse_widgets.regions.labels import (
    SPECIAL_LABELS,
    as_labeler,
    check_label,
    label_name,
    region_vote,
)


@pytest.fixture(scope="module")
def base(
    digits_classifier: nn.Module, digits_vae: nn.Module, digits: dw.ImageDataset
) -> dw.DefuseSession:
    """A distilled session; tests that label it clear its labels when they are done."""
    return ready_session(digits_classifier, digits_vae, digits)


@pytest.fixture()
def s(base: dw.DefuseSession):
    assert base.regions is not None and len(base.regions) >= 3
    base.import_labels({"format": "defuse-widgets-labels", "labels": {}})
    yield base
    base.import_labels({"format": "defuse-widgets-labels", "labels": {}})


# ----- labeling regions -----


def test_constants() -> None:
    assert dw.MODEL_IS_RIGHT == -1 and dw.UNRECOGNIZABLE == -2
    assert set(SPECIAL_LABELS) == {dw.MODEL_IS_RIGHT, dw.UNRECOGNIZABLE}
    classes = tuple(str(i) for i in range(10))
    assert label_name(3, classes) == "3"
    assert label_name(dw.MODEL_IS_RIGHT, classes) == "model is right"
    assert label_name(dw.UNRECOGNIZABLE, classes) == "unrecognizable"


def test_label_with_a_class_and_the_special_labels(s: dw.DefuseSession) -> None:
    s.label(0, 3)
    s.label(1, dw.MODEL_IS_RIGHT)
    s.label(2, dw.UNRECOGNIZABLE)
    assert s.labels == {0: 3, 1: dw.MODEL_IS_RIGHT, 2: dw.UNRECOGNIZABLE}
    assert s.correctable() == {0: 3}, "special labels are excluded from correction"
    s.label(0, 5)  # relabel replaces: one label per region
    assert s.labels[0] == 5
    s.label(1, np.int64(9))
    s.label(2, torch.tensor(0))
    assert s.labels == {0: 5, 1: 9, 2: 0}
    assert all(type(v) is int for v in s.labels.values())


def test_labels_property_is_a_copy(s: dw.DefuseSession) -> None:
    s.label(0, 1)
    copy = s.labels
    copy[0] = 7
    copy[1] = 2
    assert s.labels == {0: 1}


@pytest.mark.parametrize(
    "bad", [10, -3, 100, 1.0, 2.5, "3", None, True, [3], torch.tensor([1, 2]), float("nan")]
)
def test_bad_label_raises_and_changes_nothing(s: dw.DefuseSession, bad: object) -> None:
    s.label(0, 4)
    s.label(1, dw.MODEL_IS_RIGHT)
    before = s.labels
    with pytest.raises(ValueError, match="label"):
        s.label(0, bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="label"):
        s.label(2, bad)  # type: ignore[arg-type]
    assert s.labels == before


def test_unknown_region_raises_key_error_naming_known_ids(s: dw.DefuseSession) -> None:
    assert s.regions is not None
    s.label(0, 4)
    with pytest.raises(KeyError, match=str(s.regions.ids)[1:-1]):
        s.label(999, 3)
    with pytest.raises(KeyError, match="999"):
        s.unlabel(999)
    assert s.labels == {0: 4}


def test_unlabel_undoes_a_label(s: dw.DefuseSession) -> None:
    s.label(0, 4)
    s.label(1, dw.UNRECOGNIZABLE)
    s.unlabel(0)
    assert s.labels == {1: dw.UNRECOGNIZABLE}
    s.unlabel(0)  # no error if it has none
    s.unlabel(1)
    assert s.labels == {} and s.correctable() == {}


def test_labeling_needs_regions(
    digits_classifier: nn.Module, digits_vae: nn.Module, digits: dw.ImageDataset
) -> None:
    fresh = dw.DefuseSession(digits_classifier, digits_vae, digits, device="cpu", progress=False)
    for call in (lambda: fresh.label(0, 1), lambda: fresh.unlabel(0)):
        with pytest.raises(RuntimeError, match="distill"):
            call()


def test_new_regions_drop_old_labels(
    digits_classifier: nn.Module, digits_vae: nn.Module, digits: dw.ImageDataset
) -> None:
    s = ready_session(digits_classifier, digits_vae, digits, max_regions=3)
    s.label(0, 1)
    s.distill(max_regions=3)
    assert s.labels == {}


def test_check_label() -> None:
    assert check_label(0, 10) == 0 and check_label(9, 10) == 9
    assert check_label(-1, 10) == dw.MODEL_IS_RIGHT and check_label(-2, 2) == dw.UNRECOGNIZABLE
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        check_label(2, 2)


# ----- export and import -----


def test_export_import_round_trip(s: dw.DefuseSession, tmp_path: Path) -> None:
    s.label(0, 7)
    s.label(1, dw.MODEL_IS_RIGHT)
    s.label(2, dw.UNRECOGNIZABLE)
    path = tmp_path / "labels.json"
    doc = s.export_labels(path)
    on_disk = json.loads(path.read_text())
    assert on_disk == doc
    assert doc["format"] == "defuse-widgets-labels"
    assert doc["classes"] == list(s.data.classes)
    assert doc["labels"] == {"0": 7, "1": -1, "2": -2}
    labels = s.labels
    s.import_labels({"format": "defuse-widgets-labels", "labels": {}})
    assert s.labels == {}
    s.import_labels(path)
    assert s.labels == labels
    s.import_labels({"format": "defuse-widgets-labels", "labels": {"1": 2}})
    assert s.labels == {1: 2}, "import replaces the labels"
    s.import_labels(str(path))
    assert s.labels == labels


def test_import_into_another_session_with_the_same_regions(
    s: dw.DefuseSession,
    tmp_path: Path,
    digits_classifier: nn.Module,
    digits_vae: nn.Module,
    digits: dw.ImageDataset,
) -> None:
    s.label(0, 7)
    s.label(2, dw.UNRECOGNIZABLE)
    s.export_labels(tmp_path / "labels.json")
    other = ready_session(digits_classifier, digits_vae, digits)
    other.import_labels(tmp_path / "labels.json")
    assert other.labels == s.labels


@pytest.mark.parametrize(
    ("content", "error"),
    [
        ("not json {", ValueError),
        ("[1, 2, 3]", ValueError),
        ('"labels"', ValueError),
        ('{"labels": {"0": 1}}', ValueError),
        ('{"format": "something-else", "labels": {"0": 1}}', ValueError),
        ('{"format": "defuse-widgets-labels", "labels": [1, 2]}', ValueError),
        ('{"format": "defuse-widgets-labels", "labels": {"0": 1, "1": 99}}', ValueError),
        ('{"format": "defuse-widgets-labels", "labels": {"0": 1, "1": "cat"}}', ValueError),
        ('{"format": "defuse-widgets-labels", "labels": {"0": 1, "x": 2}}', ValueError),
        ('{"format": "defuse-widgets-labels", "labels": {"0": 1, "1": 2.5}}', ValueError),
        (
            '{"format": "defuse-widgets-labels", "labels": {"0": 1, "999": 2}}',
            (KeyError, ValueError),
        ),
        (
            '{"format": "defuse-widgets-labels", "classes": ["a", "b"], "labels": {"0": 1}}',
            ValueError,
        ),
    ],
)
def test_import_of_a_bad_file_is_refused_without_change(
    s: dw.DefuseSession, tmp_path: Path, content: str, error: type
) -> None:
    s.label(0, 4)
    s.label(1, dw.MODEL_IS_RIGHT)
    before = s.labels
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(error):
        s.import_labels(path)
    assert s.labels == before


def test_import_of_a_missing_file(s: dw.DefuseSession, tmp_path: Path) -> None:
    s.label(0, 4)
    with pytest.raises(FileNotFoundError):
        s.import_labels(tmp_path / "absent.json")
    assert s.labels == {0: 4}


# ----- the reference model labeler -----


class Oracle(nn.Module):
    """Fixed logits: an image's class is written in its first pixel (as class / 10)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.anchor = nn.Parameter(torch.zeros(1))  # so it has a device
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        cls = (x[:, 0, 0, 0] * 10).round().long().clamp(0, self.num_classes - 1)
        return 10.0 * nn.functional.one_hot(cls, self.num_classes).float() + self.anchor


def images_of(classes: list[int]) -> torch.Tensor:
    x = torch.zeros(len(classes), 1, 8, 8)
    x[:, 0, 0, 0] = torch.tensor(classes, dtype=torch.float32) / 10
    return x


def test_labeler_votes_the_true_class() -> None:
    labeler = dw.ReferenceModelLabeler(Oracle(), samples=16)
    images = images_of([3] * 16)
    assert labeler.label_region(images, torch.full((16,), 5)) == 3
    # 12 of 16 agree (0.75 >= 0.7): still a clear majority
    images = images_of([3] * 12 + [1, 2, 4, 6])
    assert labeler.label_region(images, torch.full((16,), 5)) == 3


def test_labeler_says_model_is_right_when_it_agrees_with_the_classifier() -> None:
    labeler = dw.ReferenceModelLabeler(Oracle())
    images = images_of([5] * 16)
    assert labeler.label_region(images, torch.full((16,), 5)) == dw.MODEL_IS_RIGHT
    # the classifier's majority decides, not every single prediction
    preds = torch.tensor([5] * 10 + [2] * 6)
    assert labeler.label_region(images, preds) == dw.MODEL_IS_RIGHT


def test_labeler_abstains_when_agreement_is_low() -> None:
    labeler = dw.ReferenceModelLabeler(Oracle(), min_agreement=0.7)
    images = images_of([3] * 8 + [8] * 8)
    assert labeler.label_region(images, torch.full((16,), 5)) == dw.UNRECOGNIZABLE
    images = images_of([3] * 11 + [8] * 5)  # 0.6875 < 0.7
    assert labeler.label_region(images, torch.full((16,), 5)) == dw.UNRECOGNIZABLE
    images = images_of([3] * 7 + [8] * 3)  # exactly 0.7 is enough
    assert labeler.label_region(images, torch.full((10,), 5)) == 3
    lenient = dw.ReferenceModelLabeler(Oracle(), min_agreement=0.5)
    assert lenient.label_region(images_of([3] * 8 + [8] * 8), torch.full((16,), 5)) in (3, 8)


def test_labeler_restores_the_model_mode() -> None:
    model = Oracle().train()
    labeler = dw.ReferenceModelLabeler(model)
    probs = labeler.probabilities(images_of([1, 2, 3]))
    assert model.training, "the labeler leaves the model in the mode it found it"
    assert probs.shape == (3, 10) and torch.allclose(probs.sum(1), torch.ones(3))
    assert torch.equal(probs.argmax(1), torch.tensor([1, 2, 3]))


def test_labeler_per_image_mode() -> None:
    class Unsure(Oracle):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = super().forward(x)
            return torch.where(x[:, :1, 0, 1] > 0, logits / 10, logits)  # flagged images: unsure

    images = images_of([1, 2, 3, 4])
    images[2, 0, 0, 1] = 1.0
    labeler = dw.ReferenceModelLabeler(Unsure(), min_confidence=0.9)
    assert labeler.label_images(images).tolist() == [1, 2, dw.UNRECOGNIZABLE, 4]


# ----- the Labeler protocol and its one adapter -----


def test_as_labeler_makes_one_kind_of_labeler_of_what_a_step_takes() -> None:
    reference = dw.ReferenceModelLabeler(Oracle())
    assert as_labeler(reference) is reference
    wrapped = as_labeler(Oracle())
    assert isinstance(wrapped, dw.ReferenceModelLabeler) and wrapped.samples == 16
    person = as_labeler(lambda images: (images[:, 0, 0, 0] * 10).round().long())
    assert person.model is None and person.name == "function"
    assert person.label_images(images_of([1, 2, 3])).tolist() == [1, 2, 3]
    # a callable labels a region by the same vote as the reference labeler
    for votes, preds in (([3] * 12 + [1, 2, 4, 6], 5), ([5] * 16, 5), ([3] * 8 + [8] * 8, 5)):
        images = images_of(votes)
        expected = reference.label_region(images, torch.full((len(votes),), preds))
        assert person.label_region(images, torch.full((len(votes),), preds)) == expected


def test_abstentions_count_against_a_regions_majority() -> None:
    votes = torch.tensor([3] * 6 + [dw.UNRECOGNIZABLE] * 4)
    assert region_vote(votes, torch.full((10,), 5), 0.7) == dw.UNRECOGNIZABLE
    assert region_vote(votes, torch.full((10,), 5), 0.6) == 3
    none = torch.full((4,), dw.UNRECOGNIZABLE)
    assert region_vote(none, torch.full((4,), 5), 0.5) == dw.UNRECOGNIZABLE


def test_as_labeler_refuses_what_a_step_needs_and_the_labeler_lacks() -> None:
    class RegionsOnly:
        samples = 4

        def label_region(self, images: torch.Tensor, predictions: torch.Tensor) -> int:
            return 0

    assert as_labeler(RegionsOnly(), "regions").label_region(images_of([1]), torch.ones(1)) == 0
    with pytest.raises(TypeError, match=r"labeler: .*needs label_images\(images\); RegionsOnly"):
        as_labeler(RegionsOnly(), "images")
    with pytest.raises(TypeError, match="labeler: judging the generator needs a classifier"):
        as_labeler(lambda images: images, "model")
    assert as_labeler(Oracle(), "model").model is not None
    with pytest.raises(TypeError, match=r"labeler: expected a ReferenceModelLabeler.*got str"):
        as_labeler("reference")
    with pytest.raises(ValueError, match="need: expected one of"):
        as_labeler(Oracle(), "everything")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"samples": 0}, "samples"),
        ({"samples": 2.5}, "samples"),
        ({"min_agreement": 0.0}, "min_agreement"),
        ({"min_agreement": 1.5}, "min_agreement"),
    ],
)
def test_labeler_bad_settings(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        dw.ReferenceModelLabeler(Oracle(), **kwargs)


def test_auto_label_with_a_copy_of_the_classifier_never_names_a_class(s: dw.DefuseSession) -> None:
    """A reference that is the debugged model itself always agrees with it."""
    import copy

    assert s.regions is not None
    labels = s.auto_label(dw.ReferenceModelLabeler(copy.deepcopy(s.classifier), samples=8))
    assert set(labels) == set(s.regions.ids)
    assert set(labels.values()) <= {dw.MODEL_IS_RIGHT, dw.UNRECOGNIZABLE}
    assert s.correctable() == {}


class Constant(nn.Module):
    def __init__(self, cls: int) -> None:
        super().__init__()
        self.cls = cls
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(len(x), 10) + self.anchor
        logits[:, self.cls] = 5.0
        return logits


def test_auto_label_with_a_constant_reference(s: dw.DefuseSession) -> None:
    assert s.regions is not None
    cls = 6
    expected = {}
    for r in s.regions:
        sample = s.regions.sample(r.id, 16, purpose="label")
        majority = int(sample.predictions.bincount().argmax())
        expected[r.id] = dw.MODEL_IS_RIGHT if majority == cls else cls
    s.label(0, 2)
    labels = s.auto_label(dw.ReferenceModelLabeler(Constant(cls), samples=16))
    assert labels == {**expected, 0: 2}, "an existing label is kept unless overwrite"
    labels = s.auto_label(dw.ReferenceModelLabeler(Constant(cls), samples=16), overwrite=True)
    assert labels == expected
    assert s.labels == expected


def test_auto_label_errors_change_nothing(s: dw.DefuseSession) -> None:
    class Broken(Oracle):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.calls >= 2:
                raise RuntimeError("reference model failed")
            return super().forward(x)

    s.label(0, 2)
    with pytest.raises(RuntimeError, match="reference model failed"):
        s.auto_label(dw.ReferenceModelLabeler(Broken(), samples=4), overwrite=True)
    assert s.labels == {0: 2}
