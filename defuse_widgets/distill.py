"""Distill: a Dirichlet-process Gaussian mixture over error codes, and the failure regions in it."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from .identify import ErrorSet

DEFAULT_SCALE = (
    1.0  # measured in the README: 0.01 (the reference's) barely carries a fix to real images
)
EVAL_STREAM, TRAIN_STREAM, LABEL_STREAM = 1, 2, 3


@dataclass
class Region:
    """One failure region: a mixture component with enough weight (or a user's selection)."""

    id: int
    weight: float
    size: int
    mean: torch.Tensor
    covariance: torch.Tensor
    transition: tuple[int, int]
    transition_share: float
    mean_confidence: float
    mean_validity: float
    component: int
    user_defined: bool = False

    def summary(self) -> dict[str, Any]:
        """JSON-friendly fields (everything but the mean and covariance)."""
        out = {k: v for k, v in asdict(self).items() if k not in ("mean", "covariance")}
        out["transition"] = list(self.transition)
        return out


@dataclass
class RegionSample:
    """Decoded samples of a region: codes (n, d), images (n, C, H, W), predictions (n,),
    confidence (n,)."""

    codes: torch.Tensor
    images: torch.Tensor
    predictions: torch.Tensor
    confidence: torch.Tensor


class Mixture:
    """Gaussian mixture parameters (weights (K,), means (K, d), covariances (K, d, d)) in torch."""

    def __init__(self, weights: torch.Tensor, means: torch.Tensor, covariances: torch.Tensor):
        self.weights = weights.double()
        self.means = means.double()
        self.covariances = covariances.double()
        self._chol = torch.linalg.cholesky(self.covariances)

    def log_prob_components(self, codes: torch.Tensor) -> torch.Tensor:
        """(n, K) log of weight x density of each component at each code."""
        x = codes.double()[:, None, :] - self.means[None]
        sol = torch.linalg.solve_triangular(self._chol[None], x[..., None], upper=False)[..., 0]
        maha = sol.pow(2).sum(-1)
        logdet = 2 * self._chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        d = codes.shape[1]
        return self.weights.clamp_min(1e-300).log() - 0.5 * (
            maha + logdet + d * math.log(2 * math.pi)
        )

    def responsibilities(self, codes: torch.Tensor) -> torch.Tensor:
        """(n, K) posterior probability of each component for each code."""
        if len(codes) == 0:
            return torch.zeros(0, len(self.weights), dtype=torch.float64)
        return self.log_prob_components(codes).softmax(1)

    def with_component(self, weight: float, mean: torch.Tensor, cov: torch.Tensor) -> Mixture:
        w = torch.cat([self.weights * (1 - weight), torch.tensor([weight], dtype=torch.float64)])
        return Mixture(
            w,
            torch.cat([self.means, mean[None].double()]),
            torch.cat([self.covariances, cov[None].double()]),
        )

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"weights": self.weights, "means": self.means, "covariances": self.covariances}


class RegionSet:
    """The failure regions of one error set.

    Attributes
    ----------
    regions : list of :class:`Region`, largest weight first, ids 0, 1, ...
    assignments : (M,) int64 region id of each error, -1 for errors in no region.
    mixture : the fitted mixture (all components, including those below ``min_weight``).
    settings : the fit settings.

    ``sample`` needs a ``decode`` and ``predict`` function; a session binds them.
    """

    def __init__(
        self,
        regions: list[Region],
        assignments: torch.Tensor,
        mixture: Mixture,
        settings: dict[str, Any],
        seed: int = 0,
    ):
        self.regions = regions
        self.assignments = assignments
        self.mixture = mixture
        self.settings = settings
        self.seed = seed
        self.decode: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.predict: Callable[[torch.Tensor], torch.Tensor] | None = None
        self._train_draws: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.regions)

    def __iter__(self):
        return iter(self.regions)

    def __repr__(self) -> str:
        return f"RegionSet({len(self)} regions over {len(self.assignments)} errors)"

    @property
    def ids(self) -> list[int]:
        return [r.id for r in self.regions]

    def get(self, region_id: int) -> Region:
        """The region with this id; KeyError naming the known ids otherwise."""
        for r in self.regions:
            if r.id == region_id:
                return r
        raise KeyError(f"region_id: no region {region_id!r}; known ids are {self.ids}")

    def members(self, region_id: int) -> torch.Tensor:
        """Indices of the errors assigned to the region."""
        self.get(region_id)
        return (self.assignments == region_id).nonzero().flatten()

    def region_probability(self, codes: torch.Tensor) -> torch.Tensor:
        """(n, R) probability that each code belongs to each region (``regions`` order)."""
        resp = self.mixture.responsibilities(codes.cpu())
        return resp[:, [r.component for r in self.regions]].float()

    def sample_codes(
        self,
        region_id: int,
        n: int,
        scale: float | None = None,
        purpose: str = "eval",
        seed: int | None = None,
    ) -> torch.Tensor:
        """(n, d) codes from N(mean, scale x covariance), from a seeded stream per purpose.

        ``purpose="eval"`` always gives the same held-out draws; ``"train"`` a fresh stream on each
        call; so evaluation samples are never ones fine-tuning trained on.
        """
        region = self.get(region_id)
        if purpose not in ("eval", "train", "label"):
            raise ValueError(f"purpose: expected 'eval', 'train' or 'label', got {purpose!r}")
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n: expected a positive integer, got {n!r}")
        scale = DEFAULT_SCALE if scale is None else float(scale)
        if not scale > 0:
            raise ValueError(f"scale: expected a positive number, got {scale}")
        if seed is None:
            stream = {"eval": EVAL_STREAM, "train": TRAIN_STREAM, "label": LABEL_STREAM}[purpose]
            draw = self._train_draws.get(region_id, 0) if purpose == "train" else 0
            if purpose == "train":
                self._train_draws[region_id] = draw + 1
            seed = hash((self.seed, region_id, stream, draw)) % (2**63)
        gen = torch.Generator().manual_seed(seed)
        chol = robust_cholesky(region.covariance.double() * scale)
        eps = torch.randn(n, len(region.mean), generator=gen, dtype=torch.float64)
        return (region.mean.double() + eps @ chol.T).float()

    def sample(
        self,
        region_id: int,
        n: int,
        scale: float | None = None,
        purpose: str = "eval",
        seed: int | None = None,
    ) -> RegionSample:
        """Decode ``n`` codes from the region and classify them with the current classifier."""
        if self.decode is None or self.predict is None:
            raise RuntimeError(
                "this RegionSet is not bound to a generator and classifier; use a session"
            )
        codes = self.sample_codes(region_id, n, scale, purpose, seed)
        images = self.decode(codes)
        probs = self.predict(images)
        conf, pred = probs.max(1)
        return RegionSample(codes, images, pred, conf)


def robust_cholesky(cov: torch.Tensor) -> torch.Tensor:
    """Cholesky factor of a covariance, adding diagonal jitter until it is positive definite."""
    eye = torch.eye(cov.shape[-1], dtype=cov.dtype)
    jitter = 0.0
    for _ in range(8):
        factor, info = torch.linalg.cholesky_ex(cov + jitter * eye)
        if int(info) == 0:
            return factor
        jitter = max(jitter * 10, 1e-8 * float(cov.diagonal().abs().mean()) + 1e-10)
    raise ValueError("covariance: not positive definite even with jitter; the region is degenerate")


def fit_regions(
    errors: ErrorSet,
    max_regions: int = 100,
    min_weight: float = 0.01,
    covariance_type: str = "full",
    max_fit: int = 10_000,
    max_iter: int = 200,
    seed: int = 0,
) -> RegionSet:
    """Fit a Dirichlet-process Gaussian mixture to the error codes and keep the heavy components.

    Parameters
    ----------
    errors : the :class:`~defuse_widgets.identify.ErrorSet` to cluster.
    max_regions : truncation level of the Dirichlet process (components fitted).
    min_weight : a component is a region when its mixture weight exceeds this.
    covariance_type : "full", "diag", "tied" or "spherical" (sklearn's meanings).
    max_fit : the mixture is fitted on at most this many codes (a seeded subsample); every error
        is then assigned to its most probable component.
    seed : seeds the subsample and sklearn.

    Examples
    --------
    >>> regions = fit_regions(errors, max_regions=50)  # doctest: +SKIP
    """
    _check_fit_args(errors, max_regions, min_weight, covariance_type, max_fit)
    codes = errors.codes.double()
    rng = np.random.default_rng(seed)
    fit_idx = np.sort(rng.choice(len(codes), size=min(max_fit, len(codes)), replace=False))
    mixture, converged = _fit_mixture(
        codes[fit_idx].numpy(), max_regions, covariance_type, max_iter, seed
    )
    component = mixture.responsibilities(codes).argmax(1)
    order = torch.argsort(mixture.weights, descending=True)
    # a heavy component that no error falls in (possible with duplicated codes) is no region
    counts = component.bincount(minlength=len(mixture.weights))
    heavy = [int(c) for c in order if mixture.weights[c] > min_weight and counts[c] > 0]
    assignments = torch.full((len(codes),), -1, dtype=torch.long)
    regions = []
    for region_id, comp in enumerate(heavy):
        members = (component == comp).nonzero().flatten()
        assignments[members] = region_id
        regions.append(
            _describe(
                region_id,
                comp,
                float(mixture.weights[comp]),
                members,
                errors,
                mixture.means[comp],
                mixture.covariances[comp],
            )
        )
    settings = dict(
        max_regions=max_regions,
        min_weight=min_weight,
        covariance_type=covariance_type,
        max_fit=max_fit,
        fitted_on=len(fit_idx),
        converged=converged,
    )
    return RegionSet(regions, assignments, mixture, settings, seed)


def _check_fit_args(
    errors: ErrorSet, max_regions: int, min_weight: float, covariance_type: str, max_fit: int
) -> None:
    if len(errors) < 2:
        raise ValueError(
            f"errors: need at least 2 errors to find regions, got {len(errors)}; search more "
            "images "
            "or use a stronger strategy (e.g. 'gradient')"
        )
    if not torch.isfinite(errors.codes).all():
        raise ValueError("errors: codes contain NaN or infinite values")
    if len(errors.codes.unique(dim=0)) < 2:
        raise ValueError(
            f"errors: all {len(errors)} codes are identical, so their covariance is degenerate and "
            "no mixture can be fitted; search more images or use another strategy"
        )
    if not isinstance(max_regions, int) or max_regions < 1:
        raise ValueError(f"max_regions: expected a positive integer, got {max_regions!r}")
    if not 0 <= min_weight < 1:
        raise ValueError(f"min_weight: expected a number in [0, 1), got {min_weight}")
    if covariance_type not in ("full", "diag", "tied", "spherical"):
        raise ValueError(
            "covariance_type: expected 'full', 'diag', 'tied' or 'spherical', "
            f"got {covariance_type!r}"
        )
    if not isinstance(max_fit, int) or max_fit < 2:
        raise ValueError(f"max_fit: expected an integer >= 2, got {max_fit!r}")


def _fit_mixture(
    x: np.ndarray, max_regions: int, covariance_type: str, max_iter: int, seed: int
) -> tuple[Mixture, bool]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import BayesianGaussianMixture

    k = min(max_regions, len(x))
    spread = float(x.var(0).mean())
    last_error: Exception | None = None
    for reg in (1e-6, 1e-4, 1e-2):
        bgm = BayesianGaussianMixture(
            n_components=k,
            covariance_type=covariance_type,
            weight_concentration_prior_type="dirichlet_process",
            reg_covar=reg * max(spread, 1e-12),
            max_iter=max_iter,
            random_state=seed,
        )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                bgm.fit(x)
            return _to_mixture(bgm, x.shape[1]), bool(bgm.converged_)
        except (ValueError, np.linalg.LinAlgError, torch.linalg.LinAlgError) as exc:
            last_error = exc
    raise ValueError(
        f"the mixture could not be fitted to {len(x)} codes (degenerate covariance: are the codes "
        f"nearly identical?): {last_error}"
    )


def _to_mixture(bgm: Any, d: int) -> Mixture:
    k = len(bgm.weights_)
    cov = np.asarray(bgm.covariances_, dtype=np.float64)
    if bgm.covariance_type == "diag":
        cov = np.stack([np.diag(c) for c in cov])
    elif bgm.covariance_type == "tied":
        cov = np.broadcast_to(cov, (k, d, d)).copy()
    elif bgm.covariance_type == "spherical":
        cov = cov[:, None, None] * np.eye(d)[None]
    return Mixture(
        torch.from_numpy(bgm.weights_), torch.from_numpy(bgm.means_), torch.from_numpy(cov)
    )


def _describe(
    region_id: int,
    comp: int,
    weight: float,
    members: torch.Tensor,
    errors: ErrorSet,
    mean: torch.Tensor,
    cov: torch.Tensor,
    user_defined: bool = False,
) -> Region:
    if len(members):
        pairs = errors.true_label[members] * 100_000 + errors.pred_label[members]
        values, counts = pairs.unique(return_counts=True)
        top = int(counts.argmax())
        transition = (int(values[top]) // 100_000, int(values[top]) % 100_000)
        share = float(counts[top]) / len(members)
        conf = float(errors.confidence[members].mean())
        valid = float(errors.validity[members].mean())
    else:
        transition, share, conf, valid = (-1, -1), 0.0, float("nan"), float("nan")
    return Region(
        region_id,
        weight,
        len(members),
        mean.float(),
        cov.float(),
        transition,
        share,
        conf,
        valid,
        comp,
        user_defined,
    )


def user_region(regions: RegionSet, errors: ErrorSet, indices: torch.Tensor) -> Region:
    """Add a region made of the errors ``indices`` (e.g. a lasso selection) and return it.

    Its Gaussian is the members' mean and covariance; it joins the mixture as a new component
    with weight ``len(indices) / len(errors)``, and its members are reassigned to it.
    """
    idx = torch.as_tensor(indices, dtype=torch.long).unique()
    if len(idx) < 2:
        raise ValueError(f"indices: expected at least 2 distinct error indices, got {len(idx)}")
    if int(idx.min()) < 0 or int(idx.max()) >= len(errors):
        raise ValueError(
            f"indices: expected error indices in [0, {len(errors) - 1}], got {idx.tolist()[:5]}..."
        )
    codes = errors.codes[idx].double()
    d = codes.shape[1]
    cov = torch.cov(codes.T).reshape(d, d) + 1e-4 * torch.eye(d, dtype=torch.float64)
    mean = codes.mean(0)
    weight = len(idx) / len(errors)
    mixture = regions.mixture.with_component(weight, mean, cov)
    region_id = max(regions.ids, default=-1) + 1
    region = _describe(region_id, len(mixture.weights) - 1, weight, idx, errors, mean, cov, True)
    regions.mixture = mixture
    regions.regions.append(region)
    regions.assignments[idx] = region_id
    for r in regions.regions:
        r.size = int((regions.assignments == r.id).sum())
    return region
