"""The generator report: per-class recognition of reconstructions, the Fréchet distance, flagged
classes; region sample recognition; a diffusers AutoencoderKL through ``as_generator``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from session_fixtures import label_true_class, new_session, ready_session
from torch import nn

import defuse_widgets as dw
from defuse_widgets.cli import print_generator_report
from defuse_widgets.models.demo import LIKELIHOODS, vae_defaults
from defuse_widgets.models.generative import as_generator
from defuse_widgets.models.generator_report import (
    frechet_distance,
    generator_report,
    penultimate_layer,
)
from defuse_widgets.utils.jsonio import nan_to_none

MISSING = 3  # the class the deliberately bad generator cannot draw


class ClassMeans(nn.Module):
    """A deliberately bad generator: it encodes an image as the nearest of its class means and
    decodes a code as a mix of them. Built without the means of ``missing``, it cannot draw that
    class: its images come back as the nearest other class's mean."""

    def __init__(self, data: dw.ImageDataset, missing: int | None):
        super().__init__()
        keep = [k for k in range(data.num_classes) if k != missing]
        means = torch.stack([data.x_train[data.y_train == k].mean(0) for k in keep])
        self.register_buffer("means", means)
        self.latent_dim = len(keep)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        d = torch.cdist(x.flatten(1), self.means.flatten(1))
        return nn.functional.one_hot(d.argmin(1), len(self.means)).float(), None

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nk,kchw->nchw", z, self.means)


class Identity(nn.Module):
    """A perfect generator: the code is the image."""

    def __init__(self, shape: tuple[int, int, int]):
        super().__init__()
        self.shape = shape
        self.latent_dim = shape[0] * shape[1] * shape[2]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z.view(len(z), *self.shape)


def small_autoencoder_kl(channels: int) -> nn.Module:
    """A small randomly initialised diffusers AutoencoderKL (no download): 8x8 -> 2 x 4 x 4."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    return diffusers.AutoencoderKL(
        in_channels=channels,
        out_channels=channels,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 8),
        latent_channels=2,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=8,
    ).eval()


def test_frechet_distance_is_zero_for_the_same_features_and_the_squared_mean_shift() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 5, generator=gen, dtype=torch.float64)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shift = torch.tensor([3.0, 0, 0, 0, 4.0], dtype=torch.float64)
    assert frechet_distance(a, a + shift) == pytest.approx(25.0, rel=1e-6)
    b = torch.randn(4000, 5, generator=gen, dtype=torch.float64) * 2  # variance 4 vs 1
    assert frechet_distance(a, b) == pytest.approx(5 * (1 + 4 - 2 * 2), rel=0.1)
    with pytest.raises(ValueError, match="same width"):
        frechet_distance(a, a[:, :3])


def test_penultimate_layer_is_the_last_linear(digits_classifier: nn.Module) -> None:
    assert penultimate_layer(digits_classifier) is digits_classifier.head[-1]
    assert penultimate_layer(nn.Sequential(nn.Flatten())) is None


def test_a_perfect_generator_flags_nothing(
    digits: dw.ImageDataset, digits_classifier: nn.Module
) -> None:
    x, y = digits.x_test[:300], digits.y_test[:300]
    report = generator_report(Identity(digits.image_shape), digits_classifier, x, y,
                              digits.classes)  # fmt: skip
    assert report.flagged == [] and report.messages == []
    assert report.mse == 0 and report.frechet == pytest.approx(0.0, abs=1e-6)
    assert all(c.ratio == 1 for c in report.classes)
    assert "every class's reconstructions are recognised" in report.table()


def test_session_report_flags_the_class_a_bad_generator_cannot_draw(
    digits: dw.ImageDataset, digits_classifier: nn.Module
) -> None:
    s = new_session(digits_classifier, ClassMeans(digits, MISSING), digits)
    report = s.generator_report(labeler=dw.ReferenceModelLabeler(digits_classifier))
    assert report.judge == "labeler"
    assert report.images == len(s.validation_data()[1])  # the whole validation split (< 2000)
    flagged = {c.index: c for c in report.flagged}
    assert MISSING in flagged
    three = flagged[MISSING]
    assert three.reconstructed < 0.2 < 0.8 < three.real
    assert three.looks_like is not None and three.looks_like != digits.classes[MISSING]
    assert three.message.startswith(
        f"regions of class {digits.classes[MISSING]} will look like {three.looks_like}"
    )
    assert three.message.endswith("fix the generator first")
    # the class means it can draw are recognised, so most classes pass
    assert len(report.flagged) <= 4
    # worse than the good generator on every figure
    good = new_session(digits_classifier, Identity(digits.image_shape), digits)
    good_report = good.generator_report(labeler=digits_classifier)
    assert report.frechet > good_report.frechet + 1 and report.mse > good_report.mse


def test_report_with_the_classifier_judges_only_the_images_it_gets_right(
    digits: dw.ImageDataset, digits_classifier: nn.Module
) -> None:
    s = new_session(digits_classifier, ClassMeans(digits, MISSING), digits)
    report = s.generator_report(limit=100)
    x, y = s.validation_data()
    right = int((dw.models.inference.predict_labels(digits_classifier, x[:100]) == y[:100]).sum())
    assert report.judge == "classifier" and report.images == right
    assert all(c.real == 1 for c in report.classes if c.images)
    assert MISSING in {c.index for c in report.flagged}


def test_report_to_dict_and_html(digits: dw.ImageDataset, digits_classifier: nn.Module) -> None:
    s = new_session(digits_classifier, ClassMeans(digits, MISSING), digits)
    report = s.generator_report(labeler=digits_classifier, limit=120)
    doc = json.loads(json.dumps(nan_to_none(report.to_dict())))
    assert set(doc) >= {"judge", "images", "frechet", "mse", "classes", "flagged", "min_ratio"}
    assert len(doc["classes"]) == digits.num_classes
    assert [f["index"] for f in doc["flagged"]] == [c.index for c in report.flagged]
    assert doc["flagged"][0]["message"] == report.flagged[0].message
    page = report._repr_html_()
    assert "<table>" in page and "fix the generator first" in page
    assert "FLAGGED" in report.table()


def test_report_refuses_bad_arguments(
    digits: dw.ImageDataset, digits_classifier: nn.Module
) -> None:
    s = new_session(digits_classifier, Identity(digits.image_shape), digits)
    with pytest.raises(ValueError, match="limit: expected None or a positive integer"):
        s.generator_report(limit=0)
    with pytest.raises(
        TypeError, match="labeler: expected a ReferenceModelLabeler, a classifier module"
    ):
        s.generator_report(labeler="reference")
    with pytest.raises(ValueError, match="min_ratio"):
        s.generator_report(min_ratio=1.5)
    with pytest.raises(ValueError, match="expected \\(n, C, H, W\\) images and \\(n,\\) labels"):
        generator_report(s.generator, digits_classifier, digits.x_test[:5], digits.y_test[:4],
                         digits.classes)  # fmt: skip


def test_sample_recognition_per_region(
    digits: dw.ImageDataset, digits_classifier: nn.Module, digits_vae: nn.Module
) -> None:
    s = ready_session(digits_classifier, digits_vae, digits)
    assert s.regions is not None
    label = label_true_class(s, s.regions.ids[0])
    shares = s.sample_recognition(labeler=digits_classifier, samples=16)
    assert sorted(shares) == sorted(s.regions.ids)
    assert all(0 <= v <= 1 for v in shares.values())
    # by hand for the labeled region: its "label" draws, judged as its label
    codes = s.regions.sample_codes(s.regions.ids[0], 16, purpose="label")
    pred = dw.models.inference.predict_labels(digits_classifier, s.decode(codes))
    assert shares[s.regions.ids[0]] == float((pred == label).float().mean())
    # the classifier itself mostly gets its own regions' samples wrong
    own = s.sample_recognition(samples=16)
    assert sum(own.values()) / len(own) < 0.5
    with pytest.raises(ValueError, match="samples: expected a positive integer"):
        s.sample_recognition(samples=0)


def test_sample_recognition_needs_regions(
    digits: dw.ImageDataset, digits_classifier: nn.Module, digits_vae: nn.Module
) -> None:
    with pytest.raises(RuntimeError, match="no regions yet"):
        new_session(digits_classifier, digits_vae, digits).sample_recognition()


def test_diffusers_autoencoder_kl_through_as_generator(
    digits: dw.ImageDataset, digits_classifier: nn.Module
) -> None:
    vae = small_autoencoder_kl(digits.image_shape[0])
    gen = as_generator(vae)
    x = digits.x_test[:4]
    with torch.inference_mode():
        mu, logvar = gen.encode(x)
        direct = vae.encode(x * 2 - 1).latent_dist
        assert gen.latent_shape == (2, 4, 4) and mu.shape == (4, 32) and gen.latent_dim == 32
        assert torch.equal(mu, direct.mean.flatten(1)) and torch.equal(
            logvar, direct.logvar.flatten(1)
        )
        images = gen.decode(mu)
        expected = (vae.decode(direct.mean).sample + 1) / 2
    assert images.shape == x.shape and 0 <= float(images.min()) <= float(images.max()) <= 1
    assert torch.allclose(images, expected.clamp(0, 1))
    # through a session: codes flat for the search and the mixture, reshaped for decoding
    s = new_session(digits_classifier, vae, digits)
    codes = s.encode(digits.x_test[:6])
    assert codes.shape == (6, 32) and s.decode(codes).shape == (6, *digits.image_shape)
    errors = s.identify(strategy="reference", limit=4, samples=8, max_per_image=2)
    assert errors.codes.shape[1] == 32
    report = s.generator_report(labeler=digits_classifier, limit=100)
    assert report.images == 100 and len(report.flagged) >= 5  # random weights draw nothing


def test_diffusers_decode_before_any_encoding_says_what_it_needs() -> None:
    gen = as_generator(small_autoencoder_kl(1))
    with pytest.raises(ValueError, match="encode an image first"):
        gen.decode(torch.zeros(2, 32))


def test_as_generator_says_what_it_needs_from_anything_else() -> None:
    with pytest.raises(TypeError, match=r"a diffusers AutoencoderKL works as it is.*\[0, 1\]"):
        as_generator(nn.Linear(3, 3))


def test_cli_prints_the_report_and_writes_it(
    digits: dw.ImageDataset, digits_classifier: nn.Module, tmp_path: Path, capsys: Any
) -> None:
    s = new_session(digits_classifier, ClassMeans(digits, MISSING), digits)
    print_generator_report(s, dw.ReferenceModelLabeler(digits_classifier), tmp_path / "out")
    text = capsys.readouterr().out
    assert text.startswith("generator report (labeler as judge") and "FLAGGED" in text
    assert f"regions of class {digits.classes[MISSING]} will look like" in text
    doc = json.loads((tmp_path / "out" / "generator.json").read_text())
    assert MISSING in [f["index"] for f in doc["flagged"]]


def test_train_vae_gaussian_likelihood_and_defaults(digits: dw.ImageDataset) -> None:
    assert vae_defaults(digits.image_shape) == {"latent_dim": 8, "likelihood": "bernoulli"}
    big = vae_defaults((1, 28, 28))
    assert set(big) == {"latent_dim", "likelihood"} and big["likelihood"] in LIKELIHOODS
    small = dw.load_dataset("digits", train_limit=300, test_limit=50)
    kw = {"epochs": 1, "latent_dim": 4, "seed": 0, "device": "cpu", "progress": False}
    gauss = dw.train_vae(small, likelihood="gaussian", **kw)
    bern = dw.train_vae(small, likelihood="bernoulli", **kw)
    assert not torch.equal(gauss.decode(torch.zeros(1, 4)), bern.decode(torch.zeros(1, 4)))
    with pytest.raises(ValueError, match="likelihood: expected None or one of"):
        dw.train_vae(small, likelihood="laplace", **kw)


def test_spatial_codes_need_spatial_true_outside_diffusers() -> None:
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match="pass spatial=True"):
        as_generator(encode=lambda x: x, decode=lambda z: z).encode(x)
    gen = as_generator(encode=lambda x: x, decode=lambda z: z, spatial=True)
    mu, _ = gen.encode(x)
    assert mu.shape == (2, 64) and gen.latent_shape == (1, 8, 8)
    assert torch.equal(gen.decode(mu), x)
    with pytest.raises(ValueError, match=r"expected spatial codes of shape \(1, 8, 8\)"):
        gen.encode(torch.rand(2, 1, 4, 4))
