"""The Generator protocol and the adapters that wrap a user's models without changing them."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import defuse_widgets as dw
from defuse_widgets import identify
from defuse_widgets.models.generative import (
    Generator,
    GeneratorAdapter,
    as_classifier,
    as_generator,
    check_logits,
    evaluating,
)


class UserVAE(nn.Module):
    """A user's VAE with ``encoder``/``decoder`` submodules and no encode()/decode() methods."""

    def __init__(self, vae: dw.ConvVAE, output: str):
        super().__init__()
        self.body, self.to_mu, self.to_logvar = vae.encoder, vae.to_mu, vae.to_logvar
        self.output = output
        self.decoder = vae.decoder

    def encoder(self, x: torch.Tensor):  # a method, like many user models' forward helpers
        h = self.body(x)
        mu, logvar = self.to_mu(h), self.to_logvar(h)
        if self.output == "tuple":
            return mu, logvar
        if self.output == "list":
            return [mu, logvar]
        return mu


def test_convvae_satisfies_the_protocol(digits_vae: dw.ConvVAE) -> None:
    assert isinstance(digits_vae, Generator)
    gen = as_generator(digits_vae)
    assert isinstance(gen, GeneratorAdapter) and isinstance(gen, Generator)
    assert gen.latent_dim == digits_vae.latent_dim and gen.modules == (digits_vae,)
    assert as_generator(gen) is gen
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        mu, logvar = gen.encode(x)
        expected_mu, expected_logvar = digits_vae.encode(x)
        assert torch.equal(mu, expected_mu) and torch.equal(logvar, expected_logvar)
        assert torch.equal(gen.decode(mu), digits_vae.decode(mu))


@pytest.mark.parametrize("output", ["tuple", "list", "mean"])
def test_module_with_encoder_and_decoder(digits_vae: dw.ConvVAE, output: str) -> None:
    user = UserVAE(digits_vae, output)
    before = {k: v.clone() for k, v in user.state_dict().items()}
    gen = as_generator(user)
    assert gen.modules == (user,)
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        mu, logvar = gen.encode(x)
        assert torch.equal(mu, digits_vae.encode(x)[0])
        assert (logvar is None) == (output == "mean")
        assert gen.decode(mu).shape == x.shape
    assert gen.latent_dim == digits_vae.latent_dim
    after = user.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the user's model is unchanged"


def test_latent_dim_is_learned_from_the_first_encoding() -> None:
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    decoder = nn.Sequential(nn.Linear(3, 64), nn.Sigmoid(), nn.Unflatten(1, (1, 8, 8)))
    gen = as_generator(encode=encoder, decode=decoder)
    assert gen.modules == (encoder, decoder)
    with pytest.raises(ValueError, match="latent_dim is not known yet"):
        _ = gen.latent_dim
    mu, logvar = gen.encode(torch.rand(2, 1, 8, 8))
    assert mu.shape == (2, 3) and logvar is None and gen.latent_dim == 3
    assert as_generator(encode=encoder, decode=decoder, latent_dim=3).latent_dim == 3


def test_two_callables_bound_to_a_module(digits_vae: dw.ConvVAE) -> None:
    gen = as_generator(encode=digits_vae.encode, decode=digits_vae.decode)
    assert digits_vae in gen.modules
    plain = as_generator(
        encode=lambda x: x.flatten(1)[:, :4], decode=lambda z: z.repeat(1, 16).view(-1, 1, 8, 8)
    )
    assert plain.modules == ()
    mu, _ = plain.encode(torch.rand(5, 1, 8, 8))
    assert plain.decode(mu).shape == (5, 1, 8, 8)


def test_adapter_errors_name_the_problem() -> None:
    with pytest.raises(TypeError, match="generator: expected a module with encode"):
        as_generator(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="either model or encode= and decode="):
        as_generator(nn.Linear(2, 2), encode=lambda x: x)
    with pytest.raises(TypeError, match="both encode and decode"):
        as_generator(encode=lambda x: x)
    with pytest.raises(TypeError, match="generator.encode: expected the encoder to return mu"):
        as_generator(encode=lambda x: "code", decode=lambda z: z).encode(torch.rand(2, 1, 8, 8))
    image_encoder = as_generator(encode=lambda x: x, decode=lambda z: z)
    with pytest.raises(ValueError, match=r"generator.encode: expected codes of shape \(2, d\)"):
        image_encoder.encode(torch.rand(2, 1, 8, 8))
    bad_logvar = as_generator(encode=lambda x: (x.flatten(1), x.flatten(1)[:, :3]), decode=id)
    with pytest.raises(ValueError, match="logvar shape"):
        bad_logvar.encode(torch.rand(2, 1, 8, 8))
    fixed = as_generator(encode=lambda x: x.flatten(1), decode=lambda z: z, latent_dim=5)
    with pytest.raises(ValueError, match="expected 5-d codes, got 64-d"):
        fixed.encode(torch.rand(2, 1, 8, 8))
    with pytest.raises(TypeError, match="classifier: expected a torch.nn.Module"):
        as_classifier(lambda x: x)


def test_evaluating_restores_each_mode() -> None:
    a, b = nn.Dropout().train(), nn.Dropout().eval()
    with evaluating(a, b):
        assert not a.training and not b.training
    assert a.training and not b.training
    with pytest.raises(RuntimeError), evaluating(a):
        raise RuntimeError("boom")
    assert a.training


def test_check_logits() -> None:
    logits = torch.randn(4, 10) * 3
    check_logits(logits, 4, 10)
    check_logits(logits.log_softmax(1), 4, 10)  # log-probabilities are logits too
    with pytest.raises(ValueError, match="returns probabilities.*logits.*softmax"):
        check_logits(logits.softmax(1), 4, 10)
    with pytest.raises(ValueError, match=r"expected logits of shape \(4, K\)"):
        check_logits(logits[:3], 4, 10)
    with pytest.raises(ValueError, match="returns 10 classes but the labels need 12"):
        check_logits(logits, 4, 12)
    logits[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        check_logits(logits, 4, 10)


def test_identify_detects_a_probability_classifier(
    digits: dw.ImageDataset, digits_classifier: nn.Module, digits_vae: dw.ConvVAE
) -> None:
    softmaxed = nn.Sequential(copy.deepcopy(digits_classifier), nn.Softmax(dim=1))
    with pytest.raises(ValueError, match="classifier: returns probabilities"):
        identify(softmaxed, digits_vae, digits.x_test[:8], digits.y_test[:8], device="cpu")


def test_identify_through_an_adapter_with_a_mean_only_encoder(
    digits: dw.ImageDataset, digits_classifier: nn.Module, digits_vae: dw.ConvVAE
) -> None:
    user = UserVAE(copy.deepcopy(digits_vae), "mean").train()  # never touch the shared model
    x, y = digits.x_test[:40], digits.y_test[:40]
    errors = identify(digits_classifier, user, x, y, "gaussian", samples=20, max_per_image=2,
                      radius=0.8, device="cpu", progress=False)  # fmt: skip
    assert len(errors) > 0 and user.training, "search runs in eval mode and restores the mode"
    # without a logvar the noise scale is 1: perturbations are N(0, radius^2) per coordinate
    assert 0.4 < float(errors.perturbation.std()) < 1.6
    with torch.no_grad():
        pred = digits_classifier(digits_vae.decode(errors.codes)).argmax(1)
    assert torch.equal(pred, errors.pred_label)
    assert bool((errors.pred_label != errors.true_label).all())


def test_evaluating_restores_every_submodule_mode() -> None:
    inner = nn.Linear(2, 2).eval()
    outer = nn.Sequential(inner, nn.ReLU()).train()
    inner.eval()  # a wrapper in train mode around a model in eval mode
    with evaluating(outer):
        assert not outer.training and not inner.training
    assert outer.training and not inner.training
