"""The demo models: shapes, seeded training on digits, and safetensors round trips."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import defuse_widgets as dw
from defuse_widgets.models.inference import predict_labels
from defuse_widgets.utils.seeding import seeded


def test_trained_classifier_is_well_above_chance(
    digits: dw.ImageDataset, digits_classifier: nn.Module
) -> None:
    assert isinstance(digits_classifier, dw.SmallCNN) and not digits_classifier.training
    pred = predict_labels(digits_classifier, digits.x_test)
    assert (pred == digits.y_test).float().mean() > 0.9  # chance: 0.1


def test_trained_vae_reconstructs(
    digits: dw.ImageDataset, digits_vae: nn.Module, digits_classifier: nn.Module
) -> None:
    assert isinstance(digits_vae, dw.ConvVAE) and not digits_vae.training
    x = digits.x_test
    with torch.no_grad():
        recon, mu, logvar = digits_vae(x)
    assert recon.shape == x.shape and mu.shape == logvar.shape == (len(x), digits_vae.latent_dim)
    err = (recon - x).pow(2).mean()
    baseline = (digits.x_train.mean(0, keepdim=True) - x).pow(2).mean()
    assert err < 0.4 * baseline, "reconstructions beat the mean image by a wide margin"
    # the reconstructions keep their class: the classifier still reads most of them right
    assert (predict_labels(digits_classifier, recon) == digits.y_test).float().mean() > 0.75
    # the codes carry the class: nearest class mean in latent space reads most test images right
    with torch.no_grad():
        mu_train, _ = digits_vae.encode(digits.x_train)
    means = torch.stack([mu_train[digits.y_train == c].mean(0) for c in range(10)])
    nearest = torch.cdist(mu, means).argmin(1)
    assert float((nearest == digits.y_test).float().mean()) > 0.7


def test_training_is_seeded(digits: dw.ImageDataset) -> None:
    small = dw.from_tensors(
        digits.x_train[:256], digits.y_train[:256], digits.x_test, digits.y_test, digits.classes
    )

    def weights(model: nn.Module) -> list[torch.Tensor]:
        return [p.detach().clone() for p in model.parameters()]

    a = weights(dw.train_classifier(small, epochs=1, seed=3, device="cpu", progress=False))
    b = weights(dw.train_classifier(small, epochs=1, seed=3, device="cpu", progress=False))
    c = weights(dw.train_classifier(small, epochs=1, seed=4, device="cpu", progress=False))
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not all(torch.equal(p, q) for p, q in zip(a, c))
    v1 = dw.train_vae(small, epochs=1, latent_dim=4, seed=3, device="cpu", progress=False)
    v2 = dw.train_vae(small, epochs=1, latent_dim=4, seed=3, device="cpu", progress=False)
    assert v1.latent_dim == 4
    assert all(torch.equal(p, q) for p, q in zip(weights(v1), weights(v2)))


def test_training_leaves_the_global_rng_alone(digits: dw.ImageDataset) -> None:
    small = dw.from_tensors(
        digits.x_train[:64], digits.y_train[:64], digits.x_test, digits.y_test, digits.classes
    )
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    dw.train_classifier(small, epochs=1, seed=0, device="cpu", progress=False)
    assert torch.equal(torch.rand(3), expected)
    with seeded(5) as gen:
        first = torch.rand(2)
        from_gen = torch.rand(2, generator=gen)
    with seeded(5) as gen:
        assert torch.equal(torch.rand(2), first)
        assert torch.equal(torch.rand(2, generator=gen), from_gen)


def test_train_classifier_labels_override(digits: dw.ImageDataset) -> None:
    with pytest.raises(ValueError, match=r"labels: expected .*shape \(1347,\)"):
        dw.train_classifier(digits, labels=digits.y_train[:10], progress=False)


@pytest.mark.parametrize(
    "shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (1, 64, 64), (3, 12, 40), (2, 9, 63)]
)
def test_conv_vae_and_cnn_shapes(shape: tuple[int, int, int]) -> None:
    vae = dw.ConvVAE(shape, latent_dim=5, width=8).requires_grad_(False)
    x = torch.rand(3, *shape)
    mu, logvar = vae.encode(x)
    assert mu.shape == logvar.shape == (3, 5)
    out = vae.decode(mu)
    assert out.shape == (3, *shape)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    recon, _, _ = vae.eval()(x)
    assert recon.shape == x.shape
    assert dw.SmallCNN(shape, 7, width=8)(x).shape == (3, 7)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"image_shape": (1, 4, 4)}, r"image_shape: expected C >= 1 and H, W in \[8, 64\]"),
        ({"image_shape": (3, 128, 128)}, "image_shape"),
        ({"image_shape": (8, 8)}, r"image_shape: expected \(C, H, W\)"),
        ({"image_shape": (1, 8, 8), "latent_dim": 0}, "latent_dim"),
    ],
)
def test_conv_vae_rejects_bad_settings(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        dw.ConvVAE(**kwargs)


def test_cnn_rejects_one_class() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        dw.SmallCNN((1, 8, 8), 1)


def test_save_load_model_round_trip_is_bit_exact(
    tmp_path: Path, digits: dw.ImageDataset, digits_classifier: nn.Module, digits_vae: nn.Module
) -> None:
    x = digits.x_test[:32]
    for model in (digits_classifier, digits_vae):
        path = tmp_path / f"{type(model).__name__}.safetensors"
        dw.save_model(model, path)
        loaded = dw.load_model(path)
        assert type(loaded) is type(model) and loaded.config == model.config
        assert not loaded.training
        with torch.no_grad():
            if isinstance(model, dw.ConvVAE):
                mu, logvar = model.encode(x)
                mu2, logvar2 = loaded.encode(x)
                assert torch.equal(mu, mu2) and torch.equal(logvar, logvar2)
                assert torch.equal(model.decode(mu), loaded.decode(mu))
            else:
                assert torch.equal(model(x), loaded(x))


def test_save_load_weights_into_any_module(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    dst = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    x = torch.randn(5, 4)
    assert not torch.equal(src(x), dst(x))
    dw.save_weights(src, tmp_path / "w.safetensors")
    assert dw.load_weights(dst, tmp_path / "w.safetensors") is dst
    assert torch.equal(src(x), dst(x))
    other = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match="do not fit the module .*it was not changed"):
        dw.load_weights(other, tmp_path / "w.safetensors")
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())


def test_model_io_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="path: no model file"):
        dw.load_model(tmp_path / "missing.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="not a defuse-widgets model file"):
        dw.load_model(tmp_path / "plain.safetensors")
    with pytest.raises(TypeError, match="model: expected a ConvVAE or SmallCNN"):
        dw.save_model(nn.Linear(2, 2), tmp_path / "linear.safetensors")  # type: ignore[arg-type]


def test_predict_labels_restores_mode_and_handles_empty(
    digits: dw.ImageDataset, digits_classifier: nn.Module
) -> None:
    model = dw.SmallCNN((1, 8, 8), 10).train()
    predict_labels(model, digits.x_test[:10])
    assert model.training
    empty = predict_labels(digits_classifier, digits.x_test[:0])
    assert empty.shape == (0,) and empty.dtype == torch.long
