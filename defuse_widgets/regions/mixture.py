"""Gaussian mixtures in torch: the fitted Dirichlet-process mixture and its densities."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch


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
        """A new mixture with one more component of ``weight``; the others scaled to fit."""
        w = torch.cat([self.weights * (1 - weight), torch.tensor([weight], dtype=torch.float64)])
        return Mixture(
            w,
            torch.cat([self.means, mean[None].double()]),
            torch.cat([self.covariances, cov[None].double()]),
        )

    def tensors(self) -> dict[str, torch.Tensor]:
        """The parameters by name (``weights``, ``means``, ``covariances``), float64."""
        return {"weights": self.weights, "means": self.means, "covariances": self.covariances}


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


def fit_mixture(
    x: np.ndarray, max_regions: int, covariance_type: str, max_iter: int, seed: int
) -> tuple[Mixture, bool]:
    """Fit sklearn's Dirichlet-process ``BayesianGaussianMixture`` to ``x`` (n, d).

    Returns the fitted :class:`Mixture` (``min(max_regions, n)`` components) and whether EM
    converged; the covariance regularisation grows until the fit succeeds.
    """
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
            return to_mixture(bgm, x.shape[1]), bool(bgm.converged_)
        except (ValueError, np.linalg.LinAlgError, torch.linalg.LinAlgError) as exc:
            last_error = exc
    raise ValueError(
        f"the mixture could not be fitted to {len(x)} codes (degenerate covariance: are the codes "
        f"nearly identical?): {last_error}; search more images, use another strategy or lower "
        "max_regions"
    )


def to_mixture(bgm: Any, d: int) -> Mixture:
    """A fitted sklearn mixture as a :class:`Mixture` with full (K, d, d) covariances."""
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


def chi_square_quantile(coverage: float, dims: int) -> float:
    """The squared Mahalanobis radius of the ellipsoid holding ``coverage`` of a d-dim Gaussian."""
    from scipy.stats import chi2

    if not 0 < coverage < 1:
        raise ValueError(f"coverage: expected a number in (0, 1) or None, got {coverage!r}")
    return float(chi2.ppf(coverage, dims))


def mahalanobis_sq(
    codes: torch.Tensor, mean: torch.Tensor, covariance: torch.Tensor
) -> torch.Tensor:
    """(N,) float64 squared Mahalanobis distances of codes (N, d) under N(mean, covariance)."""
    chol = robust_cholesky(covariance.double())
    diff = (codes.double() - mean.double()).T
    return torch.linalg.solve_triangular(chol, diff, upper=False).pow(2).sum(0)


def inside_ellipsoid(
    eps: torch.Tensor, scale: torch.Tensor, limit: float, gen: torch.Generator, redraws: int
) -> torch.Tensor:
    """Standard normal draws eps (n, d) for codes mean + sqrt(scale) L eps, redrawn (up to
    ``redraws`` times, then pulled onto the boundary) where the code's squared Mahalanobis
    distance under the unscaled covariance, scale x |eps|^2, exceeds ``limit``."""
    for _ in range(redraws):
        outside = scale * eps.pow(2).sum(1) > limit
        if not outside.any():
            break
        eps[outside] = torch.randn(
            int(outside.sum()), eps.shape[1], generator=gen, device=eps.device
        )
    d2 = scale * eps.pow(2).sum(1)
    return eps * (0.999 * limit / d2).clamp(max=1.0).sqrt()[:, None]
