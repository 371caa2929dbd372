"""Distill: DP-GMM regions on synthetic and real error codes, edge cases, fields, sampling."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal
from session_fixtures import make_errors, ready_session, shared_errors
from torch import nn

import defuse_widgets as dw
from defuse_widgets import ErrorSet
from defuse_widgets.regions.distill import DEFAULT_SCALE, RegionSet, fit_regions, robust_cholesky
from defuse_widgets.regions.mixture import fit_mixture_torch, to_mixture
from defuse_widgets.regions.progressive import carry_labels, extend_regions, quick_regions

D = 4
PER_CLUSTER = 40
CENTERS = torch.tensor([[6.0, 0, 0, 0], [0, 6.0, 0, 0], [0, 0, 6.0, 0]])


@pytest.fixture(scope="module")
def clusters() -> tuple[ErrorSet, torch.Tensor]:
    """Three well separated clusters; cluster c holds errors c -> c + 1."""
    gen = torch.Generator().manual_seed(0)
    cluster = torch.arange(3).repeat_interleave(PER_CLUSTER)
    codes = CENTERS[cluster] + 0.5 * torch.randn(len(cluster), D, generator=gen)
    return make_errors(codes, cluster, cluster + 1), cluster


@pytest.fixture(scope="module")
def session(
    digits_classifier: nn.Module, digits_vae: nn.Module, digits: dw.ImageDataset
) -> dw.DefuseSession:
    return ready_session(digits_classifier, digits_vae, digits)


def check_consistent(regions: RegionSet, errors: ErrorSet) -> None:
    """Ids, order, sizes and assignments agree with each other and with the mixture."""
    m, d = errors.codes.shape
    assert regions.ids == list(range(len(regions)))
    assert regions.assignments.shape == (m,) and regions.assignments.dtype == torch.int64
    weights = [r.weight for r in regions]
    assert weights == sorted(weights, reverse=True), "regions come largest weight first"
    min_weight = regions.settings["min_weight"]
    comps = [r.component for r in regions]
    assert len(set(comps)) == len(comps)
    best = regions.mixture.responsibilities(errors.codes).argmax(1)
    for i in range(m):
        rid = int(regions.assignments[i])
        if rid >= 0:
            assert regions.get(rid).component == int(best[i])
        else:
            assert int(best[i]) not in comps
    for r in regions:
        assert r.weight > min_weight
        assert r.weight == pytest.approx(float(regions.mixture.weights[r.component]))
        assert r.size == int((regions.assignments == r.id).sum()) > 0
        assert torch.equal(regions.members(r.id), (regions.assignments == r.id).nonzero().flatten())
        assert r.mean.shape == (d,) and r.covariance.shape == (d, d)
        assert torch.allclose(r.covariance, r.covariance.T)
        assert float(torch.linalg.eigvalsh(r.covariance.double()).min()) > 0
        assert not r.user_defined


# ----- fitting on synthetic codes -----


def test_well_separated_clusters_become_pure_regions(
    clusters: tuple[ErrorSet, torch.Tensor],
) -> None:
    errors, cluster = clusters
    regions = fit_regions(errors, max_regions=10, seed=0)
    check_consistent(regions, errors)
    assert len(regions) == 3
    assert (regions.assignments >= 0).all()
    for r in regions:
        members = regions.members(r.id)
        (c,) = cluster[members].unique().tolist()  # one cluster per region
        assert r.size == PER_CLUSTER
        assert r.transition == (c, c + 1) and r.transition_share == 1.0
        assert r.weight == pytest.approx(1 / 3, abs=0.05)
        # the Bayesian fit shrinks toward the prior (the data's mean and covariance) a little
        assert torch.allclose(r.mean, errors.codes[members].mean(0), atol=0.2)
        spread = float(torch.cov(errors.codes[members].T).trace())
        assert spread / 2 < float(r.covariance.trace()) < 3 * spread
        assert r.mean_confidence == pytest.approx(float(errors.confidence[members].mean()))
        assert r.mean_validity == pytest.approx(float(errors.validity[members].mean()))
    assert sum(r.weight for r in regions) == pytest.approx(1.0, abs=0.03)


@pytest.mark.parametrize("covariance_type", ["full", "diag", "tied", "spherical"])
@pytest.mark.parametrize("seed", [1, 2])
def test_every_covariance_type_and_seed_keeps_regions_pure(
    clusters: tuple[ErrorSet, torch.Tensor], covariance_type: str, seed: int
) -> None:
    errors, cluster = clusters
    regions = fit_regions(errors, max_regions=10, covariance_type=covariance_type, seed=seed)
    check_consistent(regions, errors)
    assert regions.mixture.covariances.shape == (len(regions.mixture.weights), D, D)
    assert regions.settings["covariance_type"] == covariance_type
    covered = set()
    for r in regions:
        (c,) = cluster[regions.members(r.id)].unique().tolist()
        covered.add(c)
    assert covered == {0, 1, 2}
    if covariance_type == "diag":
        off = regions.mixture.covariances - torch.diag_embed(
            regions.mixture.covariances.diagonal(dim1=-2, dim2=-1)
        )
        assert bool((off == 0).all())


def test_fit_is_seeded(clusters: tuple[ErrorSet, torch.Tensor]) -> None:
    errors, _ = clusters
    a, b = (fit_regions(errors, max_regions=10, max_fit=60, seed=3) for _ in range(2))
    assert [r.summary() for r in a] == [r.summary() for r in b]
    assert torch.equal(a.assignments, b.assignments)
    for key, value in a.mixture.tensors().items():
        assert torch.equal(value, b.mixture.tensors()[key])


def test_max_fit_subsamples_then_assigns_every_error(
    clusters: tuple[ErrorSet, torch.Tensor],
) -> None:
    errors, cluster = clusters
    regions = fit_regions(errors, max_regions=10, min_weight=0.0, max_fit=30, seed=0)
    assert regions.settings["fitted_on"] == 30 and regions.settings["max_fit"] == 30
    check_consistent(regions, errors)
    # min_weight=0: every component is a region, so every one of the 120 errors lands in one
    assert bool((regions.assignments >= 0).all())
    assert sum(r.size for r in regions) == len(errors)
    for r in regions:
        if r.weight > 0.1:  # the heavy regions stay pure; tiny ones may straddle
            assert len(cluster[regions.members(r.id)].unique()) == 1
    full = fit_regions(errors, max_regions=10, seed=0)
    assert full.settings["fitted_on"] == len(errors)


def test_min_weight_leaves_light_components_out(clusters: tuple[ErrorSet, torch.Tensor]) -> None:
    errors, _ = clusters
    regions = fit_regions(errors, max_regions=10, min_weight=0.5, seed=0)
    assert len(regions) == 0
    assert bool((regions.assignments == -1).all())
    assert len(regions.mixture.weights) == 10, "the mixture keeps every component"


def test_all_errors_of_one_transition() -> None:
    gen = torch.Generator().manual_seed(1)
    codes = torch.randn(50, D, generator=gen)
    errors = make_errors(codes, torch.full((50,), 7), torch.full((50,), 1))
    regions = fit_regions(errors, max_regions=5, seed=0)
    check_consistent(regions, errors)
    assert len(regions) >= 1
    for r in regions:
        assert r.transition == (7, 1) and r.transition_share == 1.0


def test_one_true_class_with_mixed_predictions_reports_the_dominant_transition() -> None:
    gen = torch.Generator().manual_seed(2)
    codes = torch.randn(40, D, generator=gen)
    pred = torch.tensor([3] * 30 + [5] * 10)
    errors = make_errors(codes, torch.full((40,), 8), pred)
    regions = fit_regions(errors, max_regions=1, seed=0)
    (r,) = regions.regions
    assert r.size == 40 and r.transition == (8, 3) and r.transition_share == pytest.approx(0.75)


def test_fewer_errors_than_regions_is_graceful() -> None:
    codes = torch.randn(5, D, generator=torch.Generator().manual_seed(3))
    errors = make_errors(codes)
    regions = fit_regions(errors, max_regions=100, seed=0)
    check_consistent(regions, errors)
    assert 1 <= len(regions) <= 5
    assert len(regions.mixture.weights) <= 5


def test_two_errors_are_enough() -> None:
    errors = make_errors(torch.tensor([[0.0, 0, 0, 0], [1.0, 1, 1, 1]]))
    regions = fit_regions(errors, max_regions=10, seed=0)
    check_consistent(regions, errors)
    assert 1 <= len(regions) <= 2 and sum(r.size for r in regions) == 2


@pytest.mark.parametrize("m", [0, 1])
def test_fewer_than_two_errors_raise(m: int) -> None:
    with pytest.raises(ValueError, match="errors: need at least 2 errors"):
        fit_regions(make_errors(torch.randn(m, D)))


@pytest.mark.parametrize("covariance_type", ["full", "diag", "tied", "spherical"])
def test_identical_codes_raise_a_clear_error(covariance_type: str) -> None:
    errors = make_errors(torch.ones(20, D))
    with pytest.raises(ValueError, match="identical.*degenerate"):
        fit_regions(errors, max_regions=5, covariance_type=covariance_type)


@pytest.mark.parametrize("covariance_type", ["full", "diag", "tied", "spherical"])
def test_codes_on_two_points_never_crash_inside_sklearn(covariance_type: str) -> None:
    """Twenty codes on two distinct points: a zero covariance inside each group."""
    codes = torch.cat([torch.zeros(10, D), torch.ones(10, D)])
    errors = make_errors(
        codes, torch.tensor([0] * 10 + [2] * 10), torch.tensor([1] * 10 + [3] * 10)
    )
    try:
        regions = fit_regions(errors, max_regions=5, covariance_type=covariance_type)
    except ValueError as exc:  # a clear refusal is fine ...
        assert "degenerate" in str(exc) and "codes" in str(exc)
        return
    check_consistent(regions, errors)  # ... and so is a result that holds together
    for r in regions:
        assert r.transition_share == 1.0
        codes = regions.sample_codes(r.id, 8)
        assert bool(torch.isfinite(codes).all())


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_duplicated_codes_are_graceful(
    clusters: tuple[ErrorSet, torch.Tensor], covariance_type: str
) -> None:
    """Each error twice (e.g. two error sets concatenated): exact duplicates, no empty regions."""
    errors, cluster = clusters
    twice = make_errors(
        errors.codes.repeat(2, 1), errors.true_label.repeat(2), errors.pred_label.repeat(2)
    )
    regions = fit_regions(twice, max_regions=10, covariance_type=covariance_type, seed=0)
    check_consistent(regions, twice)
    assert int((regions.assignments >= 0).sum()) >= 0.95 * len(twice)
    assert torch.equal(regions.assignments[: len(errors)], regions.assignments[len(errors) :])
    for r in regions:
        assert len(cluster.repeat(2)[regions.members(r.id)].unique()) == 1


def test_low_dimensional_codes_with_a_constant_coordinate() -> None:
    gen = torch.Generator().manual_seed(4)
    codes = torch.cat([torch.randn(40, D - 1, generator=gen), torch.full((40, 1), 2.0)], 1)
    errors = make_errors(codes)
    regions = fit_regions(errors, max_regions=5, seed=0)
    check_consistent(regions, errors)
    for r in regions:
        assert bool(torch.isfinite(regions.sample_codes(r.id, 4)).all())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_regions": 0}, "max_regions"),
        ({"max_regions": 2.5}, "max_regions"),
        ({"min_weight": 1.0}, "min_weight"),
        ({"min_weight": -0.1}, "min_weight"),
        ({"covariance_type": "block"}, "covariance_type"),
        ({"max_fit": 1}, "max_fit"),
    ],
)
def test_bad_arguments_are_named(
    clusters: tuple[ErrorSet, torch.Tensor], kwargs: dict, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        fit_regions(clusters[0], **kwargs)


def test_non_finite_codes_raise() -> None:
    codes = torch.randn(10, D)
    codes[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        fit_regions(make_errors(codes))


# ----- the region set's own API -----


def test_unknown_region_id_names_the_known_ids(clusters: tuple[ErrorSet, torch.Tensor]) -> None:
    regions = fit_regions(clusters[0], max_regions=10, seed=0)
    for call in (
        lambda: regions.get(99),
        lambda: regions.members(99),
        lambda: regions.sample_codes(99, 4),
    ):
        with pytest.raises(KeyError, match=r"99.*\[0, 1, 2\]"):
            call()


def test_summary_is_json_ready(clusters: tuple[ErrorSet, torch.Tensor]) -> None:
    import json

    regions = fit_regions(clusters[0], max_regions=10, seed=0)
    for r in regions:
        s = r.summary()
        assert set(s) == {
            "id",
            "weight",
            "size",
            "transition",
            "transition_share",
            "mean_confidence",
            "mean_validity",
            "component",
            "user_defined",
        }
        assert json.loads(json.dumps(s)) == s


def test_sample_codes_streams(clusters: tuple[ErrorSet, torch.Tensor]) -> None:
    regions = fit_regions(clusters[0], max_regions=10, seed=0)
    rid = 1
    eval_a = regions.sample_codes(rid, 50, purpose="eval")
    eval_b = regions.sample_codes(rid, 50, purpose="eval")
    assert torch.equal(eval_a, eval_b), "evaluation draws repeat exactly"
    draw = regions.training_sampler({rid: 0}, None, seed=0, device=torch.device("cpu"))
    train_a, train_b = draw(50)[0], draw(50)[0]
    label = regions.sample_codes(rid, 50, purpose="label")
    draws = [eval_a, train_a, train_b, label]
    for i in range(len(draws)):
        for j in range(i + 1, len(draws)):
            # disjoint: no code of one draw appears in another
            assert float(torch.cdist(draws[i], draws[j]).min()) > 0
    assert not torch.equal(regions.sample_codes(0, 50, purpose="eval"), eval_a), (
        "each region has its own stream"
    )
    # an explicit seed repeats and wins over the stream
    assert torch.equal(
        regions.sample_codes(rid, 20, purpose="label", seed=5),
        regions.sample_codes(rid, 20, purpose="eval", seed=5),
    )
    # a second region set with the same seed gives the same evaluation draws
    again = fit_regions(clusters[0], max_regions=10, seed=0)
    assert torch.equal(again.sample_codes(rid, 50, purpose="eval"), eval_a)


def test_sample_codes_follow_the_scaled_gaussian(clusters: tuple[ErrorSet, torch.Tensor]) -> None:
    regions = fit_regions(clusters[0], max_regions=10, seed=0)
    r = regions.get(0)
    for scale in (DEFAULT_SCALE, 0.01):
        codes = regions.sample_codes(0, 4000, scale=scale, seed=1).double()
        assert torch.allclose(codes.mean(0), r.mean.double(), atol=0.05)
        assert torch.allclose(torch.cov(codes.T), scale * r.covariance.double(), atol=0.05 * scale)
    assert torch.equal(
        regions.sample_codes(0, 10, scale=None, seed=1),
        regions.sample_codes(0, 10, scale=DEFAULT_SCALE, seed=1),
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 0}, "n:"),
        ({"n": 2.0}, "n:"),
        ({"scale": 0.0}, "scale"),
        ({"scale": -1.0}, "scale"),
        ({"purpose": "test"}, "purpose"),
    ],
)
def test_sample_codes_bad_arguments(
    clusters: tuple[ErrorSet, torch.Tensor], kwargs: dict, match: str
) -> None:
    regions = fit_regions(clusters[0], max_regions=10, seed=0)
    args = {"region_id": 0, "n": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        regions.sample_codes(**args)


def test_unbound_region_set_cannot_decode(clusters: tuple[ErrorSet, torch.Tensor]) -> None:
    regions = fit_regions(clusters[0], max_regions=10, seed=0)
    with pytest.raises(RuntimeError, match="not bound"):
        regions.sample(0, 4)


def test_region_probability_matches_scipy(clusters: tuple[ErrorSet, torch.Tensor]) -> None:
    """The mixture's responsibilities, checked against an independent density computation."""
    errors, _ = clusters
    regions = fit_regions(errors, max_regions=10, min_weight=0.05, seed=0)
    mix = regions.mixture
    points = torch.cat([errors.codes[::7], torch.randn(10, D, generator=torch.Generator())])
    dens = np.stack(
        [
            float(w) * multivariate_normal(m.numpy(), c.numpy()).pdf(points.double().numpy())
            for w, m, c in zip(mix.weights, mix.means, mix.covariances)
        ],
        1,
    )
    resp = dens / dens.sum(1, keepdims=True)
    ours = regions.predict_proba(points)
    assert ours.shape == (len(points), len(regions))
    expected = resp[:, [r.component for r in regions]]
    ok = np.isfinite(expected).all(1)  # far-away points underflow in scipy
    assert ok.sum() >= len(errors.codes[::7])
    np.testing.assert_allclose(ours.numpy()[ok], expected[ok], atol=1e-4)
    assert bool((ours.sum(1) <= 1 + 1e-5).all())


def test_robust_cholesky_handles_singular_covariance() -> None:
    cov = torch.zeros(3, 3, dtype=torch.float64)
    cov[0, 0] = 1.0
    chol = robust_cholesky(cov)
    assert torch.allclose(chol @ chol.T, cov, atol=1e-6)
    with pytest.raises(ValueError, match="degenerate"):
        robust_cholesky(-torch.eye(3, dtype=torch.float64))


# ----- regions of real digits errors, through a session -----


def test_real_errors_distill_into_consistent_regions(session: dw.DefuseSession) -> None:
    assert session.errors is not None and session.regions is not None
    regions = session.regions
    check_consistent(regions, session.errors)
    assert 2 <= len(regions) <= 6
    assert regions.settings["fitted_on"] == len(session.errors)
    for r in regions:
        members = regions.members(r.id)
        pairs = list(
            zip(
                session.errors.true_label[members].tolist(),
                session.errors.pred_label[members].tolist(),
            )
        )
        top = max(set(pairs), key=pairs.count)
        assert pairs.count(r.transition) == pairs.count(top)
        assert r.transition_share == pytest.approx(pairs.count(top) / len(pairs))
        assert 0 < r.mean_confidence <= 1 and 0 < r.mean_validity <= 1
        assert r.transition[0] != r.transition[1]


def test_sample_decodes_and_classifies(session: dw.DefuseSession) -> None:
    regions = session.regions
    assert regions is not None
    a = regions.sample(0, 12, purpose="eval")
    assert a.codes.shape == (12, session.generator.latent_dim)
    assert a.images.shape == (12, *session.data.image_shape)
    with torch.no_grad():
        logits = session.classifier(session.generator.decode(a.codes))
    assert torch.equal(a.predictions, logits.argmax(1))
    assert torch.allclose(a.confidence, logits.softmax(1).max(1).values, atol=1e-5)
    assert torch.allclose(a.images, session.decode(a.codes))
    b = regions.sample(0, 12, purpose="eval")
    for field in ("codes", "images", "predictions", "confidence"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    label = regions.sample(0, 12, purpose="label")
    assert float(torch.cdist(label.codes, a.codes).min()) > 0


def test_training_sampler_draws_the_labeled_regions(session: dw.DefuseSession) -> None:
    regions = session.regions
    assert regions is not None and len(regions) >= 2
    targets = {regions.ids[0]: 3, regions.ids[1]: 5}
    draw = regions.training_sampler(targets, 1.0, seed=7, device=torch.device("cpu"))
    codes, labels = draw(400)
    assert codes.shape == (400, session.generator.latent_dim) and set(labels.tolist()) == {3, 5}
    # each code is likeliest in the region its label says (the regions are well apart)
    prob = regions.predict_proba(codes)
    for rid, label in targets.items():
        share = (prob[labels == label].argmax(1) == regions.column(rid)).float().mean()
        assert share > 0.8, (rid, float(share))
    again = regions.training_sampler(targets, 1.0, seed=7, device=torch.device("cpu"))
    assert torch.equal(again(400)[0], codes), "the same seed repeats the stream"


def test_distill_errors_leave_the_session_unchanged(session: dw.DefuseSession) -> None:
    regions, labels = session.regions, session.labels
    with pytest.raises(ValueError, match="max_regions"):
        session.distill(max_regions=0)
    with pytest.raises(ValueError, match="covariance_type"):
        session.distill(covariance_type="nope")
    assert session.regions is regions and session.labels == labels


def test_session_distill_before_identify(
    digits_classifier: nn.Module, digits_vae: nn.Module, digits: dw.ImageDataset
) -> None:
    s = dw.DefuseSession(digits_classifier, digits_vae, digits, device="cpu", progress=False)
    with pytest.raises(RuntimeError, match="identify"):
        s.distill()


def test_user_region(
    digits_classifier: nn.Module, digits_vae: nn.Module, digits: dw.ImageDataset
) -> None:
    s = ready_session(digits_classifier, digits_vae, digits)
    assert s.regions is not None and s.errors is not None
    n = len(s.regions)
    picked = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    rid = s.add_region(picked)
    assert rid == n and s.regions.ids == list(range(n + 1))
    r = s.regions.get(rid)
    assert r.user_defined and r.size == 8
    assert torch.equal(s.regions.members(rid), picked)
    assert torch.allclose(r.mean.double(), s.errors.codes[picked].double().mean(0), atol=1e-5)
    assert sum(x.size for x in s.regions) == int((s.regions.assignments >= 0).sum())
    assert len(s.regions.mixture.weights) == len(s.regions.mixture.means)
    assert s.regions.predict_proba(s.errors.codes).shape == (len(s.errors), n + 1)
    assert s.regions.sample(rid, 4).images.shape[0] == 4
    for bad in ([0], [0, 10_000], [-1, 2]):
        with pytest.raises(ValueError, match="indices"):
            s.add_region(bad)
    assert len(s.regions) == n + 1
    assert shared_errors(digits_classifier, digits_vae, digits) is s.errors


# ----- the torch fit against sklearn's, and progressive regions (issue 34) -----


@pytest.mark.parametrize("covariance_type", ["full", "diag", "tied", "spherical"])
def test_torch_fit_is_sklearns_fit_step_for_step(
    clusters: tuple[ErrorSet, torch.Tensor], covariance_type: str
) -> None:
    """Same model, priors, initialisation and updates: after the same iterations, the same
    mixture (only the stopping rule differs)."""
    from sklearn.mixture import BayesianGaussianMixture

    x = clusters[0].codes.double()
    reg = 1e-6 * float(x.var(0).mean())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bgm = BayesianGaussianMixture(
            n_components=8,
            covariance_type=covariance_type,
            weight_concentration_prior_type="dirichlet_process",
            reg_covar=reg,
            max_iter=12,
            tol=0,
            random_state=3,
        ).fit(x.numpy())
    ours, converged, iterations = fit_mixture_torch(x, 8, covariance_type, 12, 3, tol=0.0)
    theirs = to_mixture(bgm, x.shape[1])
    assert iterations == 12 and not converged
    for name in ("weights", "means", "covariances"):
        assert torch.allclose(getattr(ours, name), getattr(theirs, name), atol=1e-9), name


def test_torch_fit_stops_early_and_agrees_with_sklearn(
    clusters: tuple[ErrorSet, torch.Tensor],
) -> None:
    errors, cluster = clusters
    ours = fit_regions(errors, max_regions=10, seed=0)
    theirs = fit_regions(errors, max_regions=10, seed=0, method="sklearn")
    assert ours.settings["method"] == "torch" and theirs.settings["method"] == "sklearn"
    assert ours.settings["converged"] and ours.settings["iterations"] < 200
    assert torch.equal(ours.assignments, theirs.assignments)
    assert [r.size for r in ours] == [r.size for r in theirs]


@pytest.mark.parametrize(
    "kwargs, match",
    [({"method": "em"}, "method"), ({"tol": 0}, "tol"), ({"device": 3}, "device")],
)
def test_bad_fit_options_are_named(
    clusters: tuple[ErrorSet, torch.Tensor], kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        fit_regions(clusters[0], max_regions=5, **kwargs)


def test_quick_regions_wait_for_enough_errors(clusters: tuple[ErrorSet, torch.Tensor]) -> None:
    errors = clusters[0]
    with pytest.raises(ValueError, match="min_errors=200"):
        quick_regions(errors)
    quick = quick_regions(errors, max_regions=10, min_errors=60, max_fit=60)
    assert quick.settings["quick"] and quick.settings["fitted_on"] == 60
    check_consistent(quick, errors)
    assert len(quick) >= 3  # 60 codes and 10 components: sklearn's fit splits them alike
    for r in quick:
        assert len(set(clusters[1][quick.members(r.id)].tolist())) == 1


def test_labels_carry_from_a_quick_fit_to_the_full_fit(
    clusters: tuple[ErrorSet, torch.Tensor],
) -> None:
    """A quick fit on the first errors found, labeled; the full fit on all of them (other region
    ids, other order) gets each label on the region with the same cluster."""
    errors, cluster = clusters
    first = torch.cat([torch.arange(c * PER_CLUSTER, c * PER_CLUSTER + 15) for c in range(3)])
    early = errors.subset(first)
    quick = quick_regions(early, max_regions=6, min_errors=30, seed=1)
    full = fit_regions(errors, max_regions=10, seed=0)
    labels = {r.id: int(cluster[first][quick.members(r.id)][0]) + 5 for r in quick}
    for codes in (early.codes, None):  # by the labeled errors, then by draws from the regions
        carried = carry_labels(labels, quick, full, codes=codes)
        assert not carried.unmatched and not carried.conflicts
        assert len(carried.labels) == 3
        for new_id, label in carried.labels.items():
            assert set(cluster[full.members(new_id)].tolist()) == {label - 5}


def test_a_labeled_region_split_in_two_gives_its_label_to_both_halves(
    clusters: tuple[ErrorSet, torch.Tensor],
) -> None:
    """One quick region over two clusters, labeled; the full fit separates them: no full region
    holds most of the quick one, yet each lies inside it, so every one takes the label."""
    errors, cluster = clusters
    two = make_errors(errors.codes[cluster < 2], cluster[cluster < 2], cluster[cluster < 2] + 1)
    merged = fit_regions(two, max_regions=1, min_weight=0.0, seed=0)
    full = fit_regions(two, max_regions=10, seed=0)
    halves = {int(full.assignments[cluster[cluster < 2] == c][0]) for c in (0, 1)}
    assert len(merged) == 1 and len(halves) == 2
    carried = carry_labels({0: 7}, merged, full, codes=two.codes)
    assert carried.labels == {r.id: 7 for r in full} and not carried.unmatched
    assert all(carried.inside[r.id] == (7, 1.0) for r in full)


def test_extend_regions_keeps_the_first_errors_and_assigns_the_new_ones(
    clusters: tuple[ErrorSet, torch.Tensor],
) -> None:
    """A live search's next report: the errors already shown keep their region (a lasso region
    too), the new ones go to their most probable region, sizes and statistics follow."""
    errors, cluster = clusters
    first = errors.subset(torch.arange(len(errors)) % 2 == 0)
    rest = errors.subset(torch.arange(len(errors)) % 2 == 1)
    grown = ErrorSet(**{k: torch.cat([getattr(first, k), getattr(rest, k)])
                        for k in first.tensors()})  # fmt: skip
    quick = fit_regions(first, max_regions=6, seed=0)
    lasso = dw.regions.distill.user_region(quick, first, torch.arange(3))
    before = quick.assignments.clone()
    out = extend_regions(quick, grown)
    assert torch.equal(quick.assignments, before)  # the input is not changed
    assert torch.equal(out.assignments[: len(first)], before) and out.ids == quick.ids
    expected = quick.mixture.responsibilities(rest.codes.double()).argmax(1)
    comp_of = {r.component: r.id for r in quick}
    want = torch.tensor([comp_of.get(int(c), -1) for c in expected])
    assert torch.equal(out.assignments[len(first) :], want)
    for r in out:
        assert r.size == int((out.assignments == r.id).sum())
    assert out.get(lasso.id).user_defined and out.get(lasso.id).size >= 3
    with pytest.raises(ValueError, match="at least the 60 errors"):
        extend_regions(quick, rest.subset(torch.arange(10)))


def test_carry_labels_leaves_conflicts_and_strangers_to_the_person(
    clusters: tuple[ErrorSet, torch.Tensor],
) -> None:
    errors, cluster = clusters
    full = fit_regions(errors, max_regions=10, seed=0)
    one = make_errors(errors.codes[cluster == 0], cluster[cluster == 0], cluster[cluster == 0] + 1)
    split = fit_regions(one, max_regions=2, min_weight=0.0, seed=0)  # one cluster, two regions
    assert len(split) == 2
    target = int(full.assignments[cluster == 0][0])
    carried = carry_labels({0: 3, 1: 4}, split, full, codes=one.codes)
    assert carried.conflicts == {target: [0, 1]} and not carried.labels
    agreed = carry_labels({0: 3, 1: 3}, split, full, codes=one.codes)
    assert agreed.labels == {target: 3}
    far = make_errors(errors.codes + 100.0)
    stranger = fit_regions(far, max_regions=3, seed=0)
    moved = carry_labels({0: 2}, stranger, full)
    assert moved.unmatched == [0] or moved.matches[0][1] >= 0.5
    with pytest.raises(KeyError, match="known ids"):
        carry_labels({99: 1}, split, full)
    with pytest.raises(ValueError, match="codes"):
        carry_labels({0: 1}, split, full, codes=errors.codes)
    with pytest.raises(ValueError, match="min_share"):
        carry_labels({0: 1}, split, full, min_share=0)
