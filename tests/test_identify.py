"""identify(): every strategy on the trained digits models, keep rules, seeds, validity, errors;
the strategy objects, their knob checks and the string shorthand."""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import math

import pytest
import torch
from torch import nn

import defuse_widgets as dw
from defuse_widgets import (
    ErrorSet,
    GaussianSearch,
    GradientSearch,
    ReferenceSearch,
    SearchStrategy,
    identify,
    validity_score,
)
from defuse_widgets.models.inference import UpsampleConv, fused_upsampling
from defuse_widgets.search.rng import beta_noise, image_generator, image_seed
from defuse_widgets.search.run import resolve_autocast
from defuse_widgets.search.strategies import STRATEGIES

N_IMAGES, Q, K = 60, 30, 3
SETTINGS = {
    "reference": {"samples": Q, "max_per_image": K},
    "gaussian": {"samples": Q, "max_per_image": K},
    "gradient": {"max_per_image": K, "restarts": 6, "steps": 6},
}


def run(clf: nn.Module, vae: nn.Module, data: dw.ImageDataset, strategy: str, **kw) -> ErrorSet:
    options = {**SETTINGS[strategy], "device": "cpu", "progress": False, **kw}
    n = options.pop("n", N_IMAGES)
    return identify(clf, vae, data.x_test[:n], data.y_test[:n], strategy, **options)


def assert_identical(errors: ErrorSet, expected: ErrorSet) -> None:
    """Every per-error tensor equal bit for bit (same dtype), and the same decode count."""
    for name, tensor in expected.tensors().items():
        got = getattr(errors, name)
        assert got.dtype == tensor.dtype and torch.equal(got, tensor), name
    assert errors.decodes == expected.decodes


def assert_same_errors(errors: ErrorSet, expected: ErrorSet) -> None:
    """The same errors from differently cut work: sources, labels and decode count equal; codes and
    perturbations bit for bit for the sampling strategies (mu + noise). Confidence, validity and a
    gradient search's codes come from decoder calls over other batches, whose float sums the CPU
    kernels order differently (about 1e-6 apart), so those are close."""
    exact = ["source_index", "true_label", "pred_label"]
    close = ["confidence", "validity"]
    (close if expected.settings["strategy"] == "gradient" else exact).extend(
        ["codes", "perturbation"]
    )
    for name in exact:
        got, want = getattr(errors, name), getattr(expected, name)
        assert got.dtype == want.dtype and torch.equal(got, want), name
    for name in close:
        assert torch.allclose(getattr(errors, name), getattr(expected, name), atol=1e-5), name
    assert errors.decodes == expected.decodes
    assert errors.images_searched == expected.images_searched


@pytest.fixture(scope="module")
def found(
    digits: dw.ImageDataset, digits_classifier: nn.Module, digits_vae: nn.Module
) -> dict[str, ErrorSet]:
    return {s: run(digits_classifier, digits_vae, digits, s) for s in STRATEGIES}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_finds_real_errors(
    strategy: str,
    found: dict[str, ErrorSet],
    digits: dw.ImageDataset,
    digits_classifier: nn.Module,
    digits_vae: dw.ConvVAE,
) -> None:
    errors = found[strategy]
    m, d = len(errors), digits_vae.latent_dim
    assert m >= 10, f"{strategy} found only {m} errors on {N_IMAGES} digits"
    assert errors.codes.shape == errors.perturbation.shape == (m, d)
    assert errors.codes.dtype == torch.float32 and errors.codes.device.type == "cpu"
    for t in (errors.source_index, errors.true_label, errors.pred_label):
        assert t.shape == (m,) and t.dtype == torch.int64
    assert errors.images_searched == N_IMAGES and errors.split == "test"
    assert errors.settings["strategy"] == strategy and errors.settings["seed"] == 0
    assert errors.settings["num_classes"] == 10 and errors.settings["device"] == "cpu"
    # the rows are what they say: each code's decode is misclassified as pred_label
    assert bool((errors.source_index >= 0).all() and (errors.source_index < N_IMAGES).all())
    assert torch.equal(errors.true_label, digits.y_test[errors.source_index])
    assert bool((errors.pred_label != errors.true_label).all())
    with torch.no_grad():
        logits = digits_classifier(digits_vae.decode(errors.codes))
        mu, _ = digits_vae.encode(digits.x_test[:N_IMAGES])
    assert torch.equal(logits.argmax(1), errors.pred_label)
    assert torch.allclose(errors.confidence, logits.softmax(1).max(1).values, atol=1e-5)
    assert torch.allclose(errors.perturbation, errors.codes - mu[errors.source_index], atol=1e-5)
    assert bool(((errors.validity > 0) & (errors.validity <= 1)).all())
    assert bool(((errors.confidence > 0.1) & (errors.confidence <= 1)).all())
    # rows are grouped by source image
    assert bool((errors.source_index.diff() >= 0).all())


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_at_most_k_per_image(strategy: str, found: dict[str, ErrorSet]) -> None:
    counts = found[strategy].source_index.bincount(minlength=N_IMAGES)
    assert int(counts.max()) == K, "some image reaches the cap, none passes it"


def test_search_budget_and_perturbation_shapes(found: dict[str, ErrorSet]) -> None:
    ref, gauss, grad = found["reference"], found["gaussian"], found["gradient"]
    for errors in (ref, gauss):
        assert 0 < errors.decodes <= N_IMAGES * Q
    # images that reach k stop early, so the budget is not spent in full
    assert ref.decodes < N_IMAGES * Q
    # Beta(50, 50) noise: every coordinate in (0, 1), mean 0.5, sd about 0.05 (the smallest-norm
    # draws are kept, which pulls the kept ones' mean a little below 0.5)
    p = ref.perturbation
    assert bool(((p > 0) & (p < 1)).all())
    assert 0.44 < float(p.mean()) < 0.5 and 0.03 < float(p.std()) < 0.08
    # gaussian noise is zero-mean
    assert abs(float(gauss.perturbation.mean())) < 0.2
    # the gradient search stays within max_distance of the encoder mean
    bound = grad.settings["max_distance"]
    assert bound == pytest.approx(0.5 * math.sqrt(grad.latent_dim))
    assert float(grad.perturbation.norm(dim=1).max()) <= bound * (1 + 1e-4)
    assert grad.decodes <= N_IMAGES * 6 * 6


def test_gradient_needs_far_fewer_decodes_per_error(found: dict[str, ErrorSet]) -> None:
    per_error = {s: found[s].decodes / len(found[s]) for s in ("reference", "gradient")}
    assert per_error["gradient"] * 2 < per_error["reference"], per_error
    images_hit = {s: len(found[s].source_index.unique()) for s in STRATEGIES}
    assert images_hit["gradient"] > images_hit["reference"], images_hit


def test_reference_keeps_the_smallest_norm_errors(
    digits: dw.ImageDataset, digits_classifier: nn.Module, digits_vae: nn.Module
) -> None:
    """With the same seed the noise is the same; k = Q keeps every error, k = 2 the two smallest."""
    everything = run(digits_classifier, digits_vae, digits, "reference", n=30, max_per_image=Q)
    two = run(digits_classifier, digits_vae, digits, "reference", n=30, max_per_image=2)
    assert len(everything) > len(two) > 0
    for i in range(30):
        all_i = everything.perturbation[everything.source_index == i]
        two_i = two.perturbation[two.source_index == i]
        assert len(two_i) == min(2, len(all_i))
        smallest = all_i[all_i.norm(dim=1).argsort()[:2]]
        assert torch.allclose(two_i.norm(dim=1).sort().values, smallest.norm(dim=1), atol=1e-6)


def test_reference_matches_a_plain_per_image_loop(
    digits: dw.ImageDataset, digits_classifier: nn.Module, digits_vae: dw.ConvVAE
) -> None:
    """The method's search written the simple way: one image at a time, Q Beta(50, 50) draws added
    to the encoder mean, keep the k smallest-norm misclassified codes. Image i draws its noise
    from its own generator keyed by (seed, i), so it keeps exactly what the batched search keeps."""
    n, q, k = 25, 40, 3
    x, y = digits.x_test[:n], digits.y_test[:n]
    expected = []
    with torch.no_grad():
        for i in range(n):
            mu, _ = digits_vae.encode(x[i : i + 1])
            noise = beta_noise(image_generator(7, i), q, mu.shape[1], 50.0)
            pred = digits_classifier(digits_vae.decode(mu + noise)).argmax(1)
            wrong = (pred != y[i]).nonzero().flatten()
            expected += [(mu + noise)[j] for j in wrong[noise[wrong].norm(dim=1).argsort()[:k]]]
    errors = identify(
        digits_classifier,
        digits_vae,
        x,
        y,
        "reference",
        samples=q,
        max_per_image=k,
        seed=7,
        device="cpu",
        progress=False,
        autocast=None,
    )  # fmt: skip  (float32, as the loop is)
    assert len(errors) == len(expected) > 5
    assert torch.allclose(errors.codes, torch.stack(expected), atol=1e-5)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_same_seed_repeats_exactly_and_another_seed_differs(
    strategy: str,
    found: dict[str, ErrorSet],
    digits: dw.ImageDataset,
    digits_classifier: nn.Module,
    digits_vae: nn.Module,
) -> None:
    first = found[strategy]
    again = run(digits_classifier, digits_vae, digits, strategy)
    assert_identical(again, first)
    other = run(digits_classifier, digits_vae, digits, strategy, seed=1)
    assert len(other) != len(first) or not torch.equal(other.codes, first.codes)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_chunk_size_does_not_change_the_errors(
    strategy: str, digits: dw.ImageDataset, digits_classifier: nn.Module, digits_vae: nn.Module
) -> None:
    """Each image draws from its own generator, so chunks of 1 and 7 codes find what one call
    over all the images finds."""
    n = 24
    width = STRATEGIES[strategy](**SETTINGS[strategy]).width()
    runs = {c: run(digits_classifier, digits_vae, digits, strategy, n=n, chunk_size=c)
            for c in (1, 7, n * width)}  # fmt: skip
    assert len(runs[1]) > 0
    for chunk in (7, n * width):
        assert_same_errors(runs[chunk], runs[1])


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_permuted_image_order_finds_the_same_errors_per_image(
    strategy: str, digits: dw.ImageDataset, digits_classifier: nn.Module, digits_vae: nn.Module
) -> None:
    n = 30
    x, y = digits.x_test[:n], digits.y_test[:n]
    options = {**SETTINGS[strategy], "device": "cpu", "progress": False, "chunk_size": 64}
    plain = identify(digits_classifier, digits_vae, x, y, strategy, **options)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(3))
    permuted = identify(digits_classifier, digits_vae, x, y, strategy, indices=perm, **options)
    assert len(plain) > 0
    assert_same_errors(permuted, plain)
    # a subset searches its images as the whole split does; source_index is the split's index
    subset = identify(digits_classifier, digits_vae, x, y, strategy, indices=perm[:10], **options)
    mask = torch.isin(plain.source_index, perm[:10])
    assert subset.images_searched == 10 and torch.equal(subset.codes, plain.codes[mask])
    assert torch.equal(subset.source_index, plain.source_index[mask])


def test_each_image_has_its_own_generator() -> None:
    seeds = {image_seed(s, i) for s in range(3) for i in range(1000)}
    assert len(seeds) == 3000 and all(0 <= v < 2**63 for v in seeds)
    a = beta_noise(image_generator(0, 5), 4, 3, 50.0)
    assert torch.equal(a, beta_noise(image_generator(0, 5), 4, 3, 50.0))
    assert not torch.equal(a, beta_noise(image_generator(0, 6), 4, 3, 50.0))
    assert not torch.equal(a, beta_noise(image_generator(1, 5), 4, 3, 50.0))


@pytest.mark.parametrize(
    "indices, match",
    [
        ([], r"indices: expected a non-empty 1-D sequence"),
        ([0.5, 1.0], r"indices: expected a non-empty 1-D sequence of integers, got shape \(2,\)"),
        ([0, 6], r"indices: expected positions in \[0, 6\), got min 0 and max 6"),
        ([-1], r"indices: expected positions in \[0, 6\), got min -1"),
        ([1, 1], r"indices: expected distinct positions, got 2 with repeats"),
        ("abc", r"indices: expected a sequence of integers, got 'abc'"),
    ],
)
def test_bad_indices_get_a_clear_error(
    indices,
    match: str,
    digits: dw.ImageDataset,
    digits_classifier: nn.Module,
    digits_vae: nn.Module,
) -> None:
    x, y = digits.x_test[:6], digits.y_test[:6]
    with pytest.raises(ValueError, match=match):
        identify(digits_classifier, digits_vae, x, y, indices=indices, device="cpu", progress=False)


def test_errors_reported_step_by_step_grow_into_the_whole_result(
    digits: dw.ImageDataset, digits_classifier: nn.Module, digits_vae: nn.Module
) -> None:
    """``on_errors`` (the explorer's live search): every report starts with the one before, in
    the same order, and the last one is the result, the same as a search without reports."""
    x, y = digits.x_test[:90], digits.y_test[:90]
    options = {"device": "cpu", "progress": False, "limit": 70, "seed": 2}
    plain = identify(digits_classifier, digits_vae, x, y, **options)
    reports: list[ErrorSet] = []
    live = identify(digits_classifier, digits_vae, x, y, on_errors=reports.append,
                    step_images=20, **options)  # fmt: skip
    assert [r.images_searched for r in reports] == [20, 40, 60, 70]
    for before, after in zip(reports, reports[1:]):
        assert len(after) >= len(before)
        for name, column in before.tensors().items():
            assert torch.equal(getattr(after, name)[: len(before)], column), name
    assert_same_errors(live, plain)
    assert_same_errors(reports[-1], plain)
    with pytest.raises(ValueError, match="on_errors: reports errors step by step on the local"):
        identify(digits_classifier, digits_vae, x, y, on_errors=print, backend="ray")
    with pytest.raises(ValueError, match="step_images"):
        identify(digits_classifier, digits_vae, x, y, on_errors=print, step_images=0)


def test_backend_is_checked_before_any_work(
    digits: dw.ImageDataset, digits_classifier: nn.Module, digits_vae: nn.Module
) -> None:
    x, y = digits.x_test[:6], digits.y_test[:6]
    with pytest.raises(ValueError, match=r"backend: expected 'local', 'ray' or a RayBackend"):
        identify(digits_classifier, digits_vae, x, y, backend="dask", progress=False)
    with pytest.raises(TypeError, match=r"ray_options: expected None with backend='local'"):
        identify(digits_classifier, digits_vae, x, y, ray_options={"actors": 2}, progress=False)


def test_chunking_keeps_the_rules(
    digits: dw.ImageDataset, digits_classifier: nn.Module, digits_vae: nn.Module
) -> None:
    errors = run(digits_classifier, digits_vae, digits, "reference", n=20, chunk_size=40)
    assert len(errors) > 0 and int(errors.source_index.bincount().max()) <= K
    assert bool((errors.pred_label != errors.true_label).all())
    grad = run(digits_classifier, digits_vae, digits, "gradient", n=20, chunk_size=12)
    assert len(grad) > 0 and int(grad.source_index.bincount().max()) <= K


def test_autocast_bf16_runs_and_finds_errors(
    digits: dw.ImageDataset, digits_classifier: nn.Module, digits_vae: nn.Module
) -> None:
    errors = run(digits_classifier, digits_vae, digits, "gradient", n=20, autocast="bf16")
    assert len(errors) > 0 and errors.codes.dtype == torch.float32
    assert bool((errors.pred_label != errors.true_label).all())


def test_models_keep_their_mode_and_weights(
    digits: dw.ImageDataset, digits_classifier: nn.Module, digits_vae: nn.Module
) -> None:
    clf, vae = copy.deepcopy(digits_classifier).train(), copy.deepcopy(digits_vae).train()
    before = {k: v.clone() for k, v in clf.state_dict().items()}
    errors = run(clf, vae, digits, "gradient", n=15)
    assert clf.training and vae.training, "each model's mode is restored"
    assert all(torch.equal(before[k], v) for k, v in clf.state_dict().items())
    # the search itself ran in eval mode (no dropout, no sampled codes): same as with eval models
    expected = run(digits_classifier, digits_vae, digits, "gradient", n=15)
    assert torch.equal(errors.codes, expected.codes)


# ---------------------------------------------------------------- validity


def test_validity_is_high_for_real_codes_and_low_far_away(
    digits: dw.ImageDataset, digits_vae: dw.ConvVAE
) -> None:
    with torch.no_grad():
        mu, _ = digits_vae.encode(digits.x_test[:100])
    real = validity_score(digits_vae, mu)
    far = validity_score(digits_vae, mu + 20)
    nearby = validity_score(digits_vae, mu + 3)
    for v in (real, far, nearby):
        assert v.shape == (100,) and bool(((v > 0) & (v <= 1)).all())
    assert float(real.median()) > 0.8
    assert bool((real > far).all()) and float(far.max()) < 0.01
    assert float(real.mean()) > float(nearby.mean()) > float(far.mean())
    assert validity_score(digits_vae, mu[:0]).shape == (0,)
    assert torch.allclose(validity_score(digits_vae, mu, chunk_size=7), real)


def test_min_validity_drops_the_least_natural(
    found: dict[str, ErrorSet],
    digits: dw.ImageDataset,
    digits_classifier: nn.Module,
    digits_vae: nn.Module,
) -> None:
    full = found["gaussian"]
    threshold = float(full.validity.median())
    kept = run(digits_classifier, digits_vae, digits, "gaussian", min_validity=threshold)
    assert 0 < len(kept) < len(full)
    assert bool((kept.validity >= threshold).all())
    mask = full.validity >= threshold
    assert torch.equal(kept.codes, full.codes[mask]), "the same search, filtered"
    assert kept.settings["min_validity"] == threshold


def test_errorset_helpers(found: dict[str, ErrorSet]) -> None:
    errors = found["gradient"]
    pairs = errors.transitions()
    assert sum(pairs.values()) == len(errors)
    assert list(pairs.values()) == sorted(pairs.values(), reverse=True)
    assert all(t != p for t, p in pairs)
    sub = errors.subset(errors.true_label == errors.true_label[0])
    assert 0 < len(sub) < len(errors) and bool((sub.true_label == errors.true_label[0]).all())
    assert sub.decodes == errors.decodes and sub.settings == errors.settings
    assert sub.settings is not errors.settings
    empty = errors.subset(torch.zeros(len(errors), dtype=torch.bool))
    assert len(empty) == 0 and empty.latent_dim == errors.latent_dim
    assert empty.transitions() == {}
    assert "strategy='gradient'" in repr(errors)


# ---------------------------------------------------------------- bad input


class NaNEncoder(nn.Module):
    def __init__(self, vae: dw.ConvVAE):
        super().__init__()
        self.vae = vae

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.vae.encode(x)
        return mu.index_fill(0, torch.tensor([1]), float("nan")), logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z)


def _bad_cases(data: dw.ImageDataset, clf: nn.Module, vae: dw.ConvVAE) -> dict:
    x, y = data.x_test[:6], data.y_test[:6]
    softmax = nn.Sequential(clf, nn.Softmax(dim=1))
    return {
        "images 28x28 vs an 8x8 generator": (
            (clf, vae, torch.rand(6, 1, 28, 28), y),
            {},
            ValueError,
            r"generator: built for .*8, 8",
        ),
        "images with 3 channels": (
            (clf, vae, x.repeat(1, 3, 1, 1), y),
            {},
            ValueError,
            r"images searched are \(3, 8, 8\)",
        ),
        "a classifier for 3-channel images": (
            (dw.SmallCNN((3, 8, 8), 10), vae, x, y),
            {},
            ValueError,
            r"classifier: built for",
        ),
        "a user generator for other images": (
            (clf, as_plain(vae, 28), x, y),
            {},
            ValueError,
            "generator: could not encode images",
        ),
        "a classifier with fewer classes": (
            (dw.SmallCNN((1, 8, 8), 5), vae, x, y),
            {},
            ValueError,
            "returns 5 classes",
        ),
        "probabilities": (
            (softmax, vae, x, y),
            {},
            ValueError,
            "classifier: returns probabilities",
        ),
        "NaN codes": (
            (clf, NaNEncoder(vae), x, y),
            {},
            ValueError,
            r"generator.encode: .*NaN.*\[1\]",
        ),
        "k > Q": (
            (clf, vae, x, y),
            {"samples": 4, "max_per_image": 5},
            ValueError,
            "max_per_image: expected at most samples=4",
        ),
        "no images": ((clf, vae, x[:0], y[:0]), {}, ValueError, "images: expected at least one"),
        "flat images": ((clf, vae, x.flatten(1), y), {}, ValueError, r"images: expected .*\(N, C"),
        "numpy images": ((clf, vae, x.numpy(), y), {}, ValueError, "images: expected a tensor"),
        "uint8 images": ((clf, vae, (x * 255).byte(), y), {}, ValueError, "images: expected float"),
        "0-255 images": ((clf, vae, x * 255, y), {}, ValueError, r"images: expected .*\[0, 1\]"),
        "NaN images": ((clf, vae, x * float("nan"), y), {}, ValueError, "images: contain NaN"),
        "too few labels": ((clf, vae, x, y[:4]), {}, ValueError, r"labels: expected 6"),
        "float labels": ((clf, vae, x, y.float()), {}, ValueError, "labels: expected 6 integer"),
        "negative labels": (
            (clf, vae, x, y - 10),
            {},
            ValueError,
            "labels: expected class indices",
        ),
        "bad strategy": ((clf, vae, x, y, "random"), {}, ValueError, "strategy: expected one of"),
        "samples 0": ((clf, vae, x, y), {"samples": 0}, ValueError, "samples: expected a positive"),
        "bad autocast": ((clf, vae, x, y), {"autocast": "fp8"}, ValueError, "autocast: expected"),
        "min_validity 2": ((clf, vae, x, y), {"min_validity": 2.0}, ValueError, "min_validity"),
        "negative step": (
            (clf, vae, x, y, "gradient"),
            {"step_size": -1.0},
            ValueError,
            "step_size: expected a positive",
        ),  # fmt: skip
        "beta 0": (
            (clf, vae, x, y, "reference"),
            {"beta": 0.0},
            ValueError,
            "beta: expected a positive",
        ),
        "radius 0": (
            (clf, vae, x, y, "gaussian"),
            {"radius": 0.0},
            ValueError,
            "radius: expected a positive",
        ),
        "chunk_size 0": ((clf, vae, x, y), {"chunk_size": 0}, ValueError, "chunk_size: expected"),
        "a knob of another strategy": (
            (clf, vae, x, y, "gradient"),
            {"samples": 20},
            TypeError,
            r"samples: expected knobs of the 'gradient' strategy \(restarts, steps, step_size, "
            r"max_distance, max_per_image\), got samples=20 \(samples belongs to "
            r"\['reference', 'gaussian'\]\)",
        ),
        "an unknown knob": (
            (clf, vae, x, y, "reference"),
            {"sampels": 20},
            TypeError,
            r"sampels: expected knobs of the 'reference' strategy \(samples, max_per_image, "
            r"beta\), got sampels=20$",
        ),
        "knobs with a strategy object": (
            (clf, vae, x, y, ReferenceSearch(samples=10)),
            {"samples": 20},
            TypeError,
            r"samples: expected no search knobs with a strategy object "
            r".*ReferenceSearch\(samples=10",
        ),
        "a strategy class, not an object": (
            (clf, vae, x, y, ReferenceSearch),
            {},
            ValueError,
            "strategy: expected one of .* or a SearchStrategy",
        ),
        "no classifier": ((None, vae, x, y), {}, TypeError, "classifier: expected a torch module"),
        "no generator": ((clf, object(), x, y), {}, TypeError, "generator: expected a module"),
        "bad device": ((clf, vae, x, y), {"device": "tpu"}, ValueError, "device: expected"),
    }


def as_plain(vae: dw.ConvVAE, side: int) -> dw.GeneratorAdapter:
    """A user's generator (no image_shape attribute) built for ``side`` x ``side`` images."""
    other = dw.ConvVAE((1, side, side), latent_dim=vae.latent_dim)
    return dw.as_generator(encode=lambda x: other.encode(x), decode=other.decoder)


CASES = [
    "images 28x28 vs an 8x8 generator", "images with 3 channels",
    "a classifier for 3-channel images",
    "a user generator for other images", "a classifier with fewer classes", "probabilities",
    "NaN codes", "k > Q", "no images", "flat images", "numpy images", "uint8 images",
    "0-255 images", "NaN images", "too few labels", "float labels", "negative labels",
    "bad strategy", "samples 0", "bad autocast", "min_validity 2", "negative step", "beta 0",
    "radius 0", "chunk_size 0", "a knob of another strategy", "an unknown knob",
    "knobs with a strategy object", "a strategy class, not an object",
    "no classifier", "no generator", "bad device",
]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gets_a_clear_error(
    case: str, digits: dw.ImageDataset, digits_classifier: nn.Module, digits_vae: dw.ConvVAE
) -> None:
    cases = _bad_cases(digits, digits_classifier, digits_vae)
    assert set(cases) == set(CASES)
    args, kwargs, error, match = cases[case]
    with pytest.raises(error, match=match):
        identify(*args, progress=False, **{"device": "cpu", **kwargs})


def test_package_exports_the_identify_function_and_no_module_of_that_name() -> None:
    import defuse_widgets.session.session  # noqa: F401  (imports the search module too)

    assert callable(dw.identify) and dw.identify.__name__ == "identify"
    # the search lives in the search subpackage; no top-level module shadows the function
    assert importlib.util.find_spec("defuse_widgets.identify") is None


# ---------------------------------------------------------------- strategy objects


def test_strategy_defaults_are_the_documented_knobs() -> None:
    assert dataclasses.asdict(ReferenceSearch()) == {"samples": 100, "max_per_image": 5, "beta": 50}
    gaussian = {"radius": 0.5, "samples": 100, "max_per_image": 5}
    assert dataclasses.asdict(GaussianSearch()) == gaussian
    assert dataclasses.asdict(GradientSearch()) == {
        "restarts": 8, "steps": 10, "step_size": None, "max_distance": None, "max_per_image": 5,
    }  # fmt: skip
    assert {name: cls.name for name, cls in STRATEGIES.items()} == {
        "reference": "reference", "gaussian": "gaussian", "gradient": "gradient"}  # fmt: skip
    assert all(issubclass(cls, SearchStrategy) for cls in STRATEGIES.values())
    # frozen: a strategy is a value, changed with dataclasses.replace
    strategy = ReferenceSearch(samples=50)
    with pytest.raises(dataclasses.FrozenInstanceError):
        strategy.samples = 10  # type: ignore[misc]
    assert dataclasses.replace(strategy, beta=20.0) == ReferenceSearch(50, 5, 20.0)
    assert ReferenceSearch(samples=50) == strategy and hash(ReferenceSearch(samples=50))


def test_gradient_bounds_default_by_latent_size() -> None:
    resolved = GradientSearch().resolve(16)
    assert (resolved.step_size, resolved.max_distance) == (1.0, 2.0)
    assert GradientSearch(step_size=0.3).resolve(16).step_size == 0.3
    assert GradientSearch(max_distance=5.0).resolve(16).max_distance == 5.0
    assert ReferenceSearch().resolve(16) == ReferenceSearch()


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ReferenceSearch(samples=0), r"samples: expected a positive integer, got 0"),
        (lambda: ReferenceSearch(samples=2.5), r"samples: expected a positive integer, got 2.5"),
        (lambda: ReferenceSearch(max_per_image=0), r"max_per_image: expected a positive integer"),
        (lambda: ReferenceSearch(samples=4, max_per_image=5),
         r"max_per_image: expected at most samples=4 \(k <= Q\), got 5"),
        (lambda: ReferenceSearch(beta=0.0), r"beta: expected a positive finite number, got 0.0"),
        (lambda: ReferenceSearch(beta="50"), r"beta: expected a positive finite number, got '50'"),
        (lambda: GaussianSearch(radius=float("inf")), r"radius: expected a positive finite"),
        (lambda: GradientSearch(steps=True), r"steps: expected a positive integer, got True"),
        (lambda: GaussianSearch(radius=-1.0), r"radius: expected a positive finite number"),
        (lambda: GaussianSearch(samples=3, max_per_image=4), r"max_per_image: expected at most"),
        (lambda: GradientSearch(restarts=0), r"restarts: expected a positive integer, got 0"),
        (lambda: GradientSearch(steps=-2), r"steps: expected a positive integer, got -2"),
        (lambda: GradientSearch(max_per_image=0), r"max_per_image: expected a positive integer"),
        (lambda: GradientSearch(step_size=-1.0),
         r"step_size: expected a positive finite number, got -1.0"),
        (lambda: GradientSearch(max_distance=0.0),
         r"max_distance: expected a positive finite number, got 0.0"),
    ],
)  # fmt: skip
def test_strategy_objects_check_their_knobs(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_gradient_takes_more_restarts_than_samples() -> None:
    """k <= Q binds the sampling strategies only; the gradient search has no samples."""
    assert GradientSearch(restarts=2, max_per_image=5).max_per_image == 5


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_shorthand_and_object_find_identical_errors(
    strategy: str,
    found: dict[str, ErrorSet],
    digits: dw.ImageDataset,
    digits_classifier: nn.Module,
    digits_vae: nn.Module,
) -> None:
    shorthand = found[strategy]
    obj = STRATEGIES[strategy](**SETTINGS[strategy])
    x, y = digits.x_test[:N_IMAGES], digits.y_test[:N_IMAGES]
    errors = identify(digits_classifier, digits_vae, x, y, obj, device="cpu", progress=False)
    assert_identical(errors, shorthand)
    assert errors.settings == shorthand.settings
    assert errors.settings["strategy"] == strategy
    # the settings record the strategy's own knobs (resolved) and the run's, nothing else
    knobs = dataclasses.asdict(obj.resolve(digits_vae.latent_dim))
    assert errors.settings == {"strategy": strategy, **knobs, "min_validity": None,
                               "chunk_size": errors.settings["chunk_size"],
                               "autocast": resolve_autocast("auto", torch.device("cpu")),
                               "fuse": True, "channels_last": True,
                               "seed": 0, "device": "cpu", "num_classes": 10,
                               "backend": "local"}  # fmt: skip


def test_session_identify_takes_a_strategy_object_or_its_name(
    digits: dw.ImageDataset, digits_classifier: nn.Module, digits_vae: nn.Module
) -> None:
    s = dw.DefuseSession(digits_classifier, digits_vae, digits, device="cpu", progress=False)
    by_name = s.identify(strategy="gaussian", limit=20, samples=20, max_per_image=2)
    by_object = s.identify(strategy=GaussianSearch(samples=20, max_per_image=2), limit=20)
    assert len(by_name) > 0 and torch.equal(by_name.codes, by_object.codes)
    with pytest.raises(TypeError, match="restarts: expected knobs of the 'gaussian' strategy"):
        s.identify(strategy="gaussian", limit=20, restarts=3)
    assert s.errors is by_object, "a refused search leaves the session's errors as they were"


def test_fast_defaults_keep_float32_errors(
    digits_classifier: nn.Module, digits_vae: nn.Module, digits: dw.ImageDataset
) -> None:
    """The defaults (bf16 where native, fused upsampling, channels-last weights) keep only codes
    that float32 also misclassifies (bf16 screens, float32 confirms), nearly the same ones as a
    plain float32 search, and leave the models as they were (layers, memory order, mode)."""
    x, y = digits.x_test[:40], digits.y_test[:40]
    keys = list(digits_vae.state_dict())
    plain = identify(digits_classifier, digits_vae, x, y, "reference", samples=40, seed=3,
                     device="cpu", progress=False, autocast=None, fuse=False,
                     channels_last=False)  # fmt: skip
    fast = identify(digits_classifier, digits_vae, x, y, "reference", samples=40, seed=3,
                    device="cpu", progress=False)  # fmt: skip
    assert fast.settings["fuse"] and fast.settings["channels_last"]
    assert fast.settings["autocast"] in (None, "bf16")
    with torch.no_grad():
        pred = digits_classifier(digits_vae.decode(fast.codes)).argmax(1)
    assert torch.equal(pred, fast.pred_label)
    assert bool((fast.pred_label != fast.true_label).all())
    same = {(int(s), tuple(c)) for s, c in zip(plain.source_index, plain.codes.tolist())}
    shared = sum((int(s), tuple(c)) in same for s, c in zip(fast.source_index, fast.codes.tolist()))
    assert shared >= 0.9 * len(plain) > 10
    assert list(digits_vae.state_dict()) == keys and not digits_vae.training
    assert all(p.is_contiguous() for p in digits_vae.parameters())
    assert all(p.is_contiguous() for p in digits_classifier.parameters())


def test_fused_upsampling_is_the_same_decoder() -> None:
    """Nearest 2x upsampling + 3x3 conv as one transposed conv: same images (and gradients to the
    codes), for sizes that halve evenly and for one that does not (falls back), then restored."""
    torch.manual_seed(0)
    for shape in [(1, 8, 8), (3, 28, 28), (1, 15, 15)]:
        vae = dw.ConvVAE(shape, 4).eval()
        z = torch.randn(16, 4, requires_grad=True)
        before = [type(m) for m in vae.decoder]
        plain = vae.decode(z)
        (g_plain,) = torch.autograd.grad(plain.sum(), z)
        with fused_upsampling(vae) as pairs:
            assert pairs >= 1
            assert any(isinstance(m, UpsampleConv) for m in vae.decoder)
            fused = vae.decode(z)
            (g_fused,) = torch.autograd.grad(fused.sum(), z)
        assert torch.allclose(plain, fused, atol=1e-5)
        scale = float(g_plain.abs().max())  # float32 sums over many pixels: compare relatively
        assert torch.allclose(g_plain, g_fused, rtol=1e-3, atol=1e-3 * scale)
        assert [type(m) for m in vae.decoder] == before
