"""Gaussian mixtures in torch: the fitted Dirichlet-process mixture and its densities."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch

from defuse_widgets.utils.checks import Interval, check


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

    check("coverage", coverage, [Interval(float, 0, 1, closed="neither")])
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


# ---------------------------------------------------------------- the variational DP-GMM in torch

DEFAULT_TOL = 1e-4  # stop when the lower bound gains less than this per code in one iteration


def fit_mixture_torch(
    x: torch.Tensor,
    max_regions: int,
    covariance_type: str,
    max_iter: int,
    seed: int,
    tol: float = DEFAULT_TOL,
    device: torch.device | None = None,
) -> tuple[Mixture, bool, int]:
    """Fit a Dirichlet-process Gaussian mixture to ``x`` (n, d) by variational inference in torch.

    The model, priors and updates are those of sklearn's ``BayesianGaussianMixture`` with
    ``weight_concentration_prior_type="dirichlet_process"`` and its default priors (weight
    concentration 1/K, mean prior the data mean with precision 1, ``d`` degrees of freedom,
    covariance prior the data covariance), and it starts from the same k-means labels for the same
    ``seed`` (:func:`kmeans_labels`): run for the same iterations, both give the same mixture to
    about 1e-12. Two things differ: each step runs batched over the components on ``device``
    in float64 (sklearn loops over them in numpy), and the fit stops when the lower bound gains
    less than ``tol`` per code in an iteration (sklearn's ``tol`` is on the whole lower bound,
    which on thousands of codes almost never stops before ``max_iter``).

    Parameters
    ----------
    x : torch.Tensor
        (n, d) codes.
    max_regions : int
        K, components (the truncation of the process); at most n are fitted.
    covariance_type : {"full", "diag", "tied", "spherical"}
        sklearn's meanings.
    max_iter : int
        Variational iterations at most.
    seed : int
        Seeds the k-means initialisation (as sklearn's ``random_state``).
    tol : float
        Per-code lower-bound gain under which the fit has converged.
    device : torch.device or None
        Where to fit (None: the CPU); MPS has no float64, so it fits on the CPU.

    Returns
    -------
    tuple of (Mixture, bool, int)
        The fitted mixture (on the CPU), whether it converged, and the iterations run.
    """
    dev = torch.device("cpu") if device is None or device.type == "mps" else device
    data = x.to(dev, torch.float64)
    k = min(max_regions, len(data))
    spread = float(data.var(0).mean())
    labels = torch.from_numpy(kmeans_labels(x.double().cpu().numpy(), k, seed)).to(dev)
    last_error: Exception | None = None
    for reg in (1e-6, 1e-4, 1e-2):
        try:
            fit = _VariationalDP(data, k, covariance_type, reg * max(spread, 1e-12))
            converged, iterations = fit.run(labels, max_iter, tol)
            return fit.mixture(), converged, iterations
        except torch.linalg.LinAlgError as exc:
            last_error = exc
    raise ValueError(
        f"the mixture could not be fitted to {len(x)} codes (degenerate covariance: are the codes "
        f"nearly identical?): {last_error}; search more images, use another strategy or lower "
        "max_regions"
    )


def kmeans_labels(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """(n,) int64 k-means cluster of each row of ``x`` (n, d): the initialisation sklearn's
    ``BayesianGaussianMixture(random_state=seed)`` starts from (one k-means++ run of
    ``KMeans``, seeded the same way), so both fits start from the same responsibilities."""
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    rng = np.random.RandomState(seed)
    with warnings.catch_warnings():  # fewer distinct codes than clusters: the mixture copes
        warnings.simplefilter("ignore", ConvergenceWarning)
        return KMeans(n_clusters=k, n_init=1, random_state=rng).fit(x).labels_.astype(np.int64)


class _VariationalDP:
    """The variational posterior of a truncated Dirichlet-process Gaussian mixture (sklearn's
    parametrisation: covariances normalised by the degrees of freedom)."""

    def __init__(self, x: torch.Tensor, k: int, covariance_type: str, reg: float):
        d = x.shape[1]
        self.center = x.mean(0)  # fitted on centred codes (the mean prior is then 0): less
        x = x - self.center  # cancellation in the expanded squared distances
        self.x, self.k, self.d, self.type, self.reg = x, k, d, covariance_type, reg
        self.eye = torch.eye(d, dtype=x.dtype, device=x.device)
        self.mean_prior = torch.zeros(d, dtype=x.dtype, device=x.device)
        cov = torch.cov(x.T).reshape(d, d)
        self.cov_prior = {
            "full": cov,
            "tied": cov,
            "diag": torch.diag(cov.diagonal()),
            "spherical": cov.diagonal().mean() * self.eye,
        }[covariance_type]
        self.alpha = 1.0 / k
        # x x' is symmetric: its d(d+1)/2 upper entries carry it, which halves the two largest
        # products of an iteration (the scatter and the squared distances)
        self.rows, self.cols = torch.triu_indices(d, d, device=x.device)
        self.outer = x[:, self.rows] * x[:, self.cols]  # (n, d(d+1)/2)
        self.twice = torch.where(self.rows == self.cols, 1.0, 2.0).to(x.dtype)
        self.half = 0.5 * torch.arange(d, dtype=x.dtype, device=x.device)

    def run(self, labels: torch.Tensor, max_iter: int, tol: float) -> tuple[bool, int]:
        """Initialise from hard ``labels`` (n,), then alternate E and M steps."""
        resp = torch.zeros(len(self.x), self.k, dtype=self.x.dtype, device=self.x.device)
        resp[torch.arange(len(self.x)), labels] = 1.0
        self.m_step(resp)
        bound = -math.inf
        for iteration in range(1, max_iter + 1):
            log_resp = self.log_resp()
            self.m_step(log_resp.exp())
            new = self.lower_bound(log_resp)
            if abs(new - bound) < tol * len(self.x):
                return True, iteration
            bound = new
        return False, max_iter

    def m_step(self, resp: torch.Tensor) -> None:
        d, k = self.d, self.k
        nk = resp.sum(0) + 10 * torch.finfo(resp.dtype).eps
        xk = resp.T @ self.x / nk[:, None]
        second = self.symmetric(resp.T @ self.outer) / nk[:, None, None]
        sk = second - xk[:, :, None] * xk[:, None, :] + self.reg * self.eye
        if self.type == "diag":
            sk = torch.diag_embed(sk.diagonal(dim1=1, dim2=2))
        elif self.type == "spherical":
            sk = sk.diagonal(dim1=1, dim2=2).mean(1)[:, None, None] * self.eye
        elif self.type == "tied":
            total = (self.x.T @ self.x - (nk[:, None, None] * xk[:, :, None] * xk[:, None, :])
                     .sum(0)) / nk.sum() + self.reg * self.eye  # fmt: skip
            sk = total.expand(k, d, d)
        tail = torch.cat([nk.flip(0).cumsum(0).flip(0)[1:], nk.new_zeros(1)])
        self.conc = (1.0 + nk, self.alpha + tail)
        self.mean_precision = 1.0 + nk
        self.means = (self.mean_prior + nk[:, None] * xk) / self.mean_precision[:, None]
        diff = xk - self.mean_prior
        shrink = (nk / self.mean_precision)[:, None, None] * diff[:, :, None] * diff[:, None, :]
        if self.type == "tied":
            self.dof = (d + nk.sum() / k).expand(k)
            scatter = self.cov_prior + nk.sum() / k * sk[0] + shrink.sum(0) / k
            self.covariances = (scatter / self.dof[0]).expand(k, d, d)
        else:
            self.dof = d + nk
            if self.type == "diag":
                shrink = torch.diag_embed(shrink.diagonal(dim1=1, dim2=2))
            elif self.type == "spherical":
                shrink = shrink.diagonal(dim1=1, dim2=2).mean(1)[:, None, None] * self.eye
            scatter = self.cov_prior + nk[:, None, None] * sk + shrink
            self.covariances = scatter / self.dof[:, None, None]
        self.chol = torch.linalg.cholesky(self.covariances)

    def symmetric(self, upper: torch.Tensor) -> torch.Tensor:
        """(K, d, d) symmetric matrices from their (K, d(d+1)/2) upper entries."""
        out = upper.new_empty(len(upper), self.d, self.d)
        out[:, self.rows, self.cols] = upper
        out[:, self.cols, self.rows] = upper
        return out

    def log_resp(self) -> torch.Tensor:
        """(n, K) log responsibilities under the current posterior."""
        a, b = self.conc
        dig_sum = torch.digamma(a + b)
        dig_b = torch.digamma(b) - dig_sum
        log_w = torch.digamma(a) - dig_sum + torch.cat([dig_b.new_zeros(1), dig_b.cumsum(0)[:-1]])
        d = self.d
        log_lambda = d * math.log(2.0) + torch.digamma(0.5 * self.dof[:, None] - self.half).sum(1)
        logdet = self.chol.diagonal(dim1=1, dim2=2).log().sum(1)
        const = (log_w - logdet - 0.5 * d * (math.log(2 * math.pi) + self.dof.log())
                 + 0.5 * (log_lambda - d / self.mean_precision))  # fmt: skip
        # (x - m)' P (x - m) = x'Px - 2 x'Pm + m'Pm: three matrix products over all components
        inv = torch.linalg.solve_triangular(self.chol, self.eye.expand_as(self.chol), upper=False)
        precision = inv.transpose(1, 2) @ inv  # (K, d, d)
        pm = (precision @ self.means[:, :, None])[..., 0]  # (K, d)
        const = const - 0.5 * (pm * self.means).sum(1)
        upper = precision[:, self.rows, self.cols] * self.twice  # x'Px over the upper entries
        maha = self.outer @ upper.T - 2 * self.x @ pm.T  # (n, K)
        log_prob = const - 0.5 * maha
        return log_prob - log_prob.logsumexp(1, keepdim=True)

    def lower_bound(self, log_resp: torch.Tensor) -> float:
        d = self.d
        log_det_prec = -self.chol.diagonal(dim1=1, dim2=2).log().sum(1) - 0.5 * d * self.dof.log()
        wishart = -(self.dof * log_det_prec + self.dof * d * 0.5 * math.log(2.0)
                    + torch.lgamma(0.5 * self.dof[:, None] - self.half).sum(1))  # fmt: skip
        a, b = self.conc
        betaln = torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)
        entropy = -(log_resp.exp() * log_resp).sum()
        total = entropy - wishart.sum() + betaln.sum() - 0.5 * d * self.mean_precision.log().sum()
        return float(total)

    def mixture(self) -> Mixture:
        a, b = self.conc
        stick = b / (a + b)
        w = a / (a + b) * torch.cat([stick.new_ones(1), stick.cumprod(0)[:-1]])
        cpu = torch.device("cpu")
        means = (self.means + self.center).to(cpu)
        return Mixture((w / w.sum()).to(cpu), means, self.covariances.to(cpu))
