"""Bad input through the public API: each case gets an error that says what was expected and what
was given (and what to do), raised before anything changes. One test per case of issue 17's list."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from session_fixtures import ready_session
from torch import nn

import defuse_widgets as dw
from defuse_widgets.models.generative import as_generator
from defuse_widgets.utils.checks import (
    Boolean,
    Interval,
    InvalidParameterError,
    Options,
    validate_params,
)


def small_set(x: torch.Tensor, classes: list[str] | None = None) -> dw.ImageDataset:
    y = torch.arange(len(x)) % 2
    return dw.from_tensors(x, y, x[:4], y[:4], classes or ["a", "b"])


# ---------------------------------------------------------------- datasets


@pytest.mark.parametrize("shape", [(10, 8, 8, 3), (10, 8, 8, 1)])
def test_channels_last_images_are_refused_with_the_permute(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"channels-last.*permute\(0, 3, 1, 2\)"):
        small_set(torch.rand(shape))
    with pytest.raises(ValueError, match=r"transpose\(0, 3, 1, 2\)"):
        small_set(torch.from_numpy(np.random.rand(*shape).astype(np.float32)))


def test_channels_first_colour_images_are_still_accepted() -> None:
    assert small_set(torch.rand(10, 3, 8, 8)).image_shape == (3, 8, 8)
    assert small_set(torch.rand(10, 8, 8)).image_shape == (1, 8, 8)


def test_more_class_names_than_the_labels_use_is_refused() -> None:
    x, y = torch.rand(20, 1, 8, 8), torch.arange(20) % 10
    names = [str(i) for i in range(12)]
    with pytest.raises(ValueError, match=r"12 names .* only 0-9 \(10 classes\).*'10', '11'"):
        dw.from_tensors(x, y, x[:10], y[:10], names)
    assert dw.from_tensors(x, y, x[:10], y[:10], names[:10]).num_classes == 10


def test_a_string_for_images_or_labels_says_what_was_expected() -> None:
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 0, 1])
    with pytest.raises(TypeError, match=r"x_train: expected a tensor or array of images.*got str"):
        dw.from_tensors("images.npy", y, x, y, ["a", "b"])
    with pytest.raises(TypeError, match=r"y_test: expected a tensor or array of 4 integer labels"):
        dw.from_tensors(x, y, x, "0101", ["a", "b"])


def test_load_dataset_of_none_names_the_choices() -> None:
    with pytest.raises(TypeError, match=r"name: expected a dataset name, one of \('digits'"):
        dw.load_dataset(None)  # type: ignore[arg-type]


def _image_folder(root: Path, corrupt: str | None) -> None:
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(5):
            pixels = (rng.random((8, 8, 3)) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i}.png")
    if corrupt:
        (root / corrupt).write_bytes(b"this is not a PNG")


def test_a_corrupt_image_file_is_named_and_can_be_skipped(tmp_path: Path) -> None:
    _image_folder(tmp_path, corrupt="dog/broken.png")
    with pytest.raises(ValueError, match=r"dog/broken\.png: cannot be read.*skip_unreadable=True"):
        dw.from_image_folder(tmp_path, image_size=8)
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable file.*broken\.png"):
        ds = dw.from_image_folder(tmp_path, image_size=8, skip_unreadable=True)
    assert len(ds.y_train) + len(ds.y_test) == 10


# ---------------------------------------------------------------- training


@pytest.mark.parametrize(
    ("knob", "match"),
    [
        ({"epochs": -1}, r"epochs: expected None or a positive integer, got -1"),
        ({"epochs": 0}, r"epochs: expected None or a positive integer, got 0"),
        ({"lr": float("nan")}, r"lr: expected a positive finite number, got nan"),
        ({"lr": -0.1}, r"lr: expected a positive finite number"),
        ({"batch_size": 0}, r"batch_size: expected a positive integer"),
    ],
)
def test_trainers_refuse_bad_knobs_before_training(
    digits: dw.ImageDataset, knob: dict, match: str
) -> None:
    for train in (dw.train_classifier, dw.train_vae):
        with pytest.raises(ValueError, match=match):
            train(digits, progress=False, **knob)


def test_train_classifier_checks_replacement_labels(digits: dw.ImageDataset) -> None:
    with pytest.raises(ValueError, match=r"labels: expected values in \[0, 9\], got min 5"):
        dw.train_classifier(digits, labels=digits.y_train + 5, progress=False)
    with pytest.raises(ValueError, match=r"labels: expected integer class indices"):
        dw.train_classifier(digits, labels=digits.y_train.float(), progress=False)
    with pytest.raises(ValueError, match=r"beta: expected a finite number >= 0"):
        dw.train_vae(digits, beta=-1.0, progress=False)
    for latent_dim in (0, -3, 2.5, True):  # 0 once fell through to the default and trained
        with pytest.raises(
            ValueError, match=r"latent_dim: expected None or a positive integer, got"
        ):
            dw.train_vae(digits, latent_dim=latent_dim, epochs=1, progress=False)


def test_declared_checks_name_the_argument_the_expectation_and_the_value() -> None:
    constraints = {
        "n": [None, Interval(int, 1, None)],
        "p": [Interval(float, 0, 1, closed="right")],
        "how": [Options(("a", "b"))],
        "flag": [Boolean()],
    }
    validate_params(constraints, n=None, p=1, how="a", flag=False)
    for bad, message in (
        ({"n": 0}, "n: expected None or a positive integer, got 0"),
        ({"n": 2.0}, "n: expected None or a positive integer, got 2.0"),
        ({"p": 0.0}, "p: expected a number in (0, 1], got 0.0"),
        ({"p": float("nan")}, "p: expected a number in (0, 1], got nan"),
        ({"how": "c"}, "how: expected one of ('a', 'b'), got 'c'"),
        ({"flag": 1}, "flag: expected True or False, got 1"),
    ):
        with pytest.raises(InvalidParameterError) as caught:
            validate_params(constraints, **bad)
        assert str(caught.value) == message
        assert isinstance(caught.value, ValueError) and isinstance(caught.value, TypeError)


# ---------------------------------------------------------------- models that do not fit


def test_a_classifier_with_more_outputs_than_classes_is_refused(
    digits: dw.ImageDataset, digits_vae: nn.Module
) -> None:
    with pytest.raises(ValueError, match=r"expected 10 logits per image.*got 12.*num_classes=10"):
        dw.DefuseSession(dw.SmallCNN((1, 8, 8), 12), digits_vae, digits, device="cpu")


def test_models_built_for_another_image_size_are_named(
    digits: dw.ImageDataset, digits_classifier: nn.Module, digits_vae: nn.Module
) -> None:
    flat16 = nn.Sequential(nn.Flatten(), nn.Linear(16 * 16, 10))
    with pytest.raises(ValueError, match=r"classifier: expected a model for the data's 1x8x8"):
        dw.DefuseSession(flat16, digits_vae, digits, device="cpu")
    with pytest.raises(ValueError, match=r"generator: expected a model for the data's 1x8x8"):
        dw.DefuseSession(digits_classifier, dw.ConvVAE((1, 16, 16)), digits, device="cpu")


def test_a_model_on_the_meta_device_is_refused(
    digits: dw.ImageDataset, digits_classifier: nn.Module, digits_vae: nn.Module
) -> None:
    with torch.device("meta"):
        ghost_clf, ghost_vae = dw.SmallCNN((1, 8, 8), 10), dw.ConvVAE((1, 8, 8))
    with pytest.raises(ValueError, match=r"classifier: .*meta device.*to_empty"):
        dw.DefuseSession(ghost_clf, digits_vae, digits, device="cpu")
    with pytest.raises(ValueError, match=r"generator: .*meta device"):
        dw.DefuseSession(digits_classifier, ghost_vae, digits, device="cpu")


class NaNOut(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * float("nan")


def test_nan_logits_and_nan_codes_say_what_to_check(
    digits: dw.ImageDataset, digits_classifier: nn.Module, digits_vae: nn.Module
) -> None:
    with pytest.raises(ValueError, match=r"NaN or infinite logits.*check its weights"):
        dw.DefuseSession(NaNOut(copy.deepcopy(digits_classifier)), digits_vae, digits, "cpu")
    nan_encoder = as_generator(
        encode=lambda x: digits_vae.encode(x)[0] * float("nan"),
        decode=digits_vae.decode,
        modules=[digits_vae],
    )
    with pytest.raises(ValueError, match=r"encoder returned NaN or infinite codes.*weights"):
        dw.DefuseSession(digits_classifier, nan_encoder, digits, device="cpu")


# ---------------------------------------------------------------- session calls


def test_auto_label_takes_a_bare_module_or_says_what_it_needs(
    digits: dw.ImageDataset, digits_classifier: nn.Module, digits_vae: nn.Module
) -> None:
    s = ready_session(digits_classifier, digits_vae, digits)
    wrapped = ready_session(digits_classifier, digits_vae, digits)
    assert s.auto_label(digits_classifier) == wrapped.auto_label(
        dw.ReferenceModelLabeler(digits_classifier)
    )
    before = dict(s.labels)
    with pytest.raises(TypeError, match=r"labeler: expected a ReferenceModelLabeler.*got str"):
        s.auto_label("reference")  # type: ignore[arg-type]
    assert s.labels == before


def test_audit_wraps_a_bare_module_instead_of_reading_its_logits(
    digits: dw.ImageDataset, digits_classifier: nn.Module, digits_vae: nn.Module
) -> None:
    results = []
    for labeler in (digits_classifier, dw.ReferenceModelLabeler(digits_classifier)):
        s = ready_session(digits_classifier, digits_vae, digits)
        region = max(s.regions.regions, key=lambda r: r.size)
        s.label(region.id, int(region.transition[1]))  # most images inside carry another label
        results.append(s.confirm_audit(region.id, labeler, who="test"))
    assert results[0]["candidates"] > 0
    assert results[0] == results[1]


def test_correct_refuses_a_bool_for_cancel_before_training(
    digits: dw.ImageDataset, digits_classifier: nn.Module, digits_vae: nn.Module
) -> None:
    s = ready_session(digits_classifier, digits_vae, digits)
    region = max(s.regions.regions, key=lambda r: r.size)
    s.label(region.id, int(region.transition[0]))
    weights = copy.deepcopy(s.classifier.state_dict())
    with pytest.raises(TypeError, match=r"cancel: expected a CancelToken .*got True"):
        s.correct(steps=2, cancel=True)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"callback: expected a callable"):
        s.correct(steps=2, callback="print")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"ema: expected a number in \[0, 1\), got 1\.0"):
        s.correct(steps=2, ema=1.0)
    assert s.rounds == 0 and s.history == []
    assert all(torch.equal(v, weights[k]) for k, v in s.classifier.state_dict().items())


def test_widgets_refuse_unknown_options_and_name_the_valid_ones(
    digits: dw.ImageDataset, digits_classifier: nn.Module, digits_vae: nn.Module
) -> None:
    s = ready_session(digits_classifier, digits_vae, digits)
    with pytest.raises(TypeError, match=r"Explorer: unknown option\(s\) 'colour'.*projection"):
        s.explorer(colour="red", projection="pca")
    with pytest.raises(TypeError, match=r"Interpolator: unknown option\(s\) 'steps'.*scan_points"):
        s.interpolator(0, steps=10)
    s.interpolator(0, max_requests=1).close()  # a trait is an option too


def test_identify_with_a_negative_limit_changes_nothing(
    digits: dw.ImageDataset, digits_classifier: nn.Module, digits_vae: nn.Module
) -> None:
    s = ready_session(digits_classifier, digits_vae, digits)
    s.label(s.regions.ids[0], 0)
    errors, regions, labels = s.errors, s.regions, s.labels
    with pytest.raises(ValueError, match=r"limit"):
        s.identify(limit=-5)
    assert s.errors is errors and s.regions is regions and s.labels == labels
