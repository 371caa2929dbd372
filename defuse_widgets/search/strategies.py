"""Latent search strategies: small frozen settings objects that each search one chunk of images.

A new strategy is a frozen dataclass subclassing :class:`SearchStrategy`: it checks its knobs in
``__post_init__``, says how many codes per image it moves together
(:meth:`~SearchStrategy.width`), draws its randomness per image from
:meth:`~defuse_widgets.search.run.SearchRun.per_image` (never from a global stream), and implements
:meth:`~SearchStrategy.search_chunk` with the helpers of the
:class:`~defuse_widgets.search.run.SearchRun` it is given; add it to ``STRATEGIES`` for a shorthand
name. :func:`~defuse_widgets.search.identify.identify` does the rest (checks, probing, chunking,
assembly).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, ClassVar

import torch

from defuse_widgets.search.rng import beta_noise, normal_noise
from defuse_widgets.search.run import Found, SearchRun
from defuse_widgets.utils.checks import positive_int, positive_number


class SearchStrategy(ABC):
    """Base of the search strategies: a frozen dataclass of knobs that searches a chunk of images.

    Every strategy has a ``max_per_image`` knob (k, errors kept per image at most).
    """

    name: ClassVar[str]
    max_per_image: int

    @abstractmethod
    def width(self) -> int:
        """Return how many codes per image move together (chunks hold whole images).

        It must not depend on the chunk size: a decoder call larger than the chunk size is split,
        so an image's search (and its decode count) is the same however the images are chunked.
        """

    @abstractmethod
    def search_chunk(self, run: SearchRun, idx: torch.Tensor) -> Found:
        """Search the images ``idx`` (B,) on ``run.device``; return the kept errors' columns."""

    def resolve(self, latent_dim: int) -> SearchStrategy:
        """Return this strategy with knobs that default by latent size filled in (``d``)."""
        return self

    def settings(self) -> dict[str, Any]:
        """Return the strategy's name and knobs, as recorded in ``ErrorSet.settings``."""
        return {"strategy": self.name, **asdict(self)}  # type: ignore[call-overload]


class _SamplingSearch(SearchStrategy):
    """Random draws around the encoder mean, tried in order of increasing norm, k kept at most."""

    samples: int

    def _check_budget(self) -> None:
        positive_int("samples", self.samples)
        positive_int("max_per_image", self.max_per_image)
        if self.max_per_image > self.samples:
            raise ValueError(
                f"max_per_image: expected at most samples={self.samples} (k <= Q), "
                f"got {self.max_per_image}"
            )

    @abstractmethod
    def noise(self, run: SearchRun, idx: torch.Tensor) -> torch.Tensor:
        """Return (B, samples, d) perturbations on ``run.device``, drawn per image on the CPU."""

    def width(self) -> int:
        """Return the draws per image tried together: at least k (or 16), at most Q."""
        return min(self.samples, max(self.max_per_image, 16))

    @torch.inference_mode()
    def search_chunk(self, run: SearchRun, idx: torch.Tensor) -> Found:
        """Decode the draws in norm order, keep each image's first k errors, stop at k."""
        q, k = self.samples, self.max_per_image
        noise = self.noise(run, idx)
        order = noise.norm(dim=-1).argsort(dim=1)
        noise = noise.gather(1, order[..., None].expand_as(noise))
        kept = torch.zeros(len(idx), dtype=torch.long, device=run.device)
        step = self.width()
        out: list[Found] = []
        for lo in range(0, q, step):
            active = (kept < k).nonzero().flatten()
            if len(active) == 0:
                break
            delta = noise[active, lo : lo + step]
            z = (run.mu[idx[active], None, :] + delta).reshape(-1, delta.shape[-1])
            truth = run.y[idx[active]].repeat_interleave(delta.shape[1])
            logits = run.classify(z, truth)
            wrong = logits.argmax(1) != truth
            wrong = wrong.view(len(active), -1)
            keep = wrong & (wrong.long().cumsum(1) + kept[active, None] <= k)
            kept[active] += keep.sum(1)
            flat = keep.flatten().nonzero().flatten()
            rows = active.repeat_interleave(delta.shape[1])[flat]
            out.append(run.record(z[flat], idx[rows], logits[flat]))
        return run.concat(out)


@dataclass(frozen=True)
class ReferenceSearch(_SamplingSearch):
    """The method's published search: Beta noise added to the encoder mean.

    Each image gets ``samples`` (Q) noise vectors with every coordinate from Beta(``beta``,
    ``beta``) (mean 0.5, sd about 0.05 for 50) added to its encoder mean. Errors are kept in order
    of increasing noise norm, so work on an image stops once ``max_per_image`` (k) are kept, and
    they are the k smallest-norm errors among the Q draws.

    Parameters
    ----------
    samples : int
        Q, draws per image.
    max_per_image : int
        k, errors kept per image at most (k <= Q).
    beta : float
        The Beta distribution's two (equal) parameters.
    """

    name: ClassVar[str] = "reference"
    samples: int = 100
    max_per_image: int = 5
    beta: float = 50.0

    def __post_init__(self) -> None:
        """Check the knobs."""
        self._check_budget()
        positive_number("beta", self.beta)

    def noise(self, run: SearchRun, idx: torch.Tensor) -> torch.Tensor:
        """Return (B, Q, d) Beta(beta, beta) draws, each image's from its own generator."""
        q, d, beta = self.samples, run.latent_dim, self.beta
        return run.per_image(idx, lambda g: beta_noise(g, q, d, beta))


@dataclass(frozen=True)
class GaussianSearch(_SamplingSearch):
    """Zero-mean Gaussian noise scaled by the encoder's posterior standard deviation.

    The perturbation is ``radius * sigma(x) * eps`` with ``eps ~ N(0, I)`` and sigma the encoder's
    standard deviation (1 for an encoder without logvar); same budget and keep rule as
    :class:`ReferenceSearch`.

    Parameters
    ----------
    radius : float
        Scale of the noise, in posterior standard deviations (0.5: chosen on the planted-bug
        suite).
    samples : int
        Q, draws per image.
    max_per_image : int
        k, errors kept per image at most (k <= Q).
    """

    name: ClassVar[str] = "gaussian"
    radius: float = 0.5  # measured: on the planted-bug suite 1.0 found 1 of 9 bugs, 0.5 found 7
    samples: int = 100
    max_per_image: int = 5

    def __post_init__(self) -> None:
        """Check the knobs."""
        self._check_budget()
        positive_number("radius", self.radius)

    def noise(self, run: SearchRun, idx: torch.Tensor) -> torch.Tensor:
        """Return (B, Q, d) scaled Gaussian draws."""
        return _gaussian(run, idx, self.samples, self.radius)


@dataclass(frozen=True)
class GradientSearch(SearchStrategy):
    """Projected gradient ascent on the classifier's loss, through the decoder.

    Each image gets ``restarts`` starting points near its encoder mean, each moved ``steps``
    times along the normalized gradient of the cross-entropy, projected onto the L2 ball of radius
    ``max_distance`` around the mean; a restart stops at its first misclassified code.

    Parameters
    ----------
    restarts : int
        Starting points per image.
    steps : int
        Gradient steps per restart at most.
    step_size, max_distance : float or None
        Step length and bound, in latent units; None: ``0.25 * sqrt(d)`` and ``0.5 * sqrt(d)``
        (the reference noise's mean norm is ``0.5 * sqrt(d)``).
    max_per_image : int
        k, errors kept per image at most.
    """

    name: ClassVar[str] = "gradient"
    restarts: int = 8
    steps: int = 10
    step_size: float | None = None
    max_distance: float | None = None
    max_per_image: int = 5

    def __post_init__(self) -> None:
        """Check the knobs."""
        for knob in ("restarts", "steps", "max_per_image"):
            positive_int(knob, getattr(self, knob))
        for knob in ("step_size", "max_distance"):
            if getattr(self, knob) is not None:
                positive_number(knob, getattr(self, knob))

    def resolve(self, latent_dim: int) -> GradientSearch:
        """Return a copy whose unset ``step_size`` and ``max_distance`` follow ``d``."""
        root = math.sqrt(latent_dim)
        return replace(
            self,
            step_size=self.step_size or 0.25 * root,
            max_distance=self.max_distance or 0.5 * root,
        )

    def width(self) -> int:
        """Return the restarts: every restart of an image moves in the same call."""
        return self.restarts

    def search_chunk(self, run: SearchRun, idx: torch.Tensor) -> Found:
        """Move every restart of the chunk's images together; keep each image's first k errors."""
        r, k, d = self.restarts, self.max_per_image, run.latent_dim
        step, bound = self.step_size, self.max_distance
        assert step is not None and bound is not None, "call resolve() first"
        center = run.mu[idx].repeat_interleave(r, 0)
        labels = run.y[idx].repeat_interleave(r)
        z = center + _clip_norm(_gaussian(run, idx, r, 1.0).reshape(-1, d) * 0.25, bound)
        alive = torch.ones(len(z), dtype=torch.bool, device=run.device)
        kept = torch.zeros(len(idx), dtype=torch.long, device=run.device)
        owner = torch.arange(len(idx), device=run.device).repeat_interleave(r)
        out: list[Found] = []
        for _ in range(self.steps):
            alive &= kept[owner] < k
            act = alive.nonzero().flatten()
            if len(act) == 0:
                break
            za = z[act]
            logits, grad = run.loss_gradient(za, labels[act])
            wrong = logits.argmax(1) != labels[act]
            # keep at most k per image: rank the newly wrong restarts of each image
            w_idx = act[wrong]
            ok = _rank_within(owner[w_idx]) + kept[owner[w_idx]] < k
            w_idx, w_rows = w_idx[ok], wrong.nonzero().flatten()[ok]
            kept.index_add_(0, owner[w_idx], torch.ones_like(w_idx))
            if len(w_idx):
                with torch.inference_mode():
                    out.append(run.record(za[w_rows], idx[owner[w_idx]], logits[w_rows]))
            alive[act[wrong]] = False
            moved = za + step * grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-12)
            z[act] = center[act] + _clip_norm(moved - center[act], bound)
        return run.concat(out)


STRATEGIES: dict[str, type[SearchStrategy]] = {
    cls.name: cls for cls in (ReferenceSearch, GaussianSearch, GradientSearch)
}
# Chosen on the planted-bug suite (benchmarks/planted_bugs.py, README): its errors sit around the
# real codes, so real images fall inside the regions and the audit and the round can use them.
# "reference" stays the paper's preset.
DEFAULT_STRATEGY = "gaussian"


def as_strategy(strategy: str | SearchStrategy, knobs: dict[str, Any]) -> SearchStrategy:
    """Turn a strategy name and its knobs (or a strategy object and no knobs) into a strategy.

    Parameters
    ----------
    strategy : str or SearchStrategy
        One of ``STRATEGIES`` (``"reference"``, ``"gaussian"``, ``"gradient"``) or a strategy.
    knobs : dict
        Keyword arguments for the named strategy's constructor; must be empty with an object.

    Returns
    -------
    SearchStrategy

    Raises
    ------
    ValueError
        For an unknown strategy name or a bad knob value.
    TypeError
        For a knob the strategy does not have, or knobs given with a strategy object.
    """
    if isinstance(strategy, SearchStrategy):
        if knobs:
            raise TypeError(
                f"{', '.join(sorted(knobs))}: expected no search knobs with a strategy object "
                f"(set them on it: {strategy!r}), got {knobs}"
            )
        return strategy
    if not isinstance(strategy, str) or strategy not in STRATEGIES:
        raise ValueError(
            f"strategy: expected one of {tuple(STRATEGIES)} or a SearchStrategy, got {strategy!r}"
        )
    cls = STRATEGIES[strategy]
    allowed = _knobs(cls)
    foreign = sorted(set(knobs) - set(allowed))
    if foreign:
        owners = {n: [s for s, c in STRATEGIES.items() if n in _knobs(c)] for n in foreign}
        hint = "; ".join(f"{n} belongs to {owners[n]}" for n in foreign if owners[n])
        raise TypeError(
            f"{', '.join(foreign)}: expected knobs of the {strategy!r} strategy "
            f"({', '.join(allowed)}), got {', '.join(f'{n}={knobs[n]!r}' for n in foreign)}"
            + (f" ({hint})" if hint else "")
        )
    return cls(**knobs)


def _knobs(cls: type[SearchStrategy]) -> list[str]:
    return [f.name for f in fields(cls)]  # type: ignore[arg-type]


def _gaussian(run: SearchRun, idx: torch.Tensor, count: int, scale: float) -> torch.Tensor:
    """(B, count, d) ``scale * sigma * eps``, each image's eps from its own CPU generator."""
    d = run.latent_dim
    eps = run.per_image(idx, lambda g: normal_noise(g, count, d))
    return scale * run.std[idx, None, :] * eps


def _clip_norm(delta: torch.Tensor, bound: float) -> torch.Tensor:
    norm = delta.norm(dim=1, keepdim=True)
    return delta * (bound / norm.clamp_min(bound))


def _rank_within(groups: torch.Tensor) -> torch.Tensor:
    """Each element's rank among the earlier elements with the same group id."""
    if len(groups) == 0:
        return groups
    order = torch.argsort(groups, stable=True)
    sorted_groups = groups[order]
    starts = torch.ones_like(sorted_groups, dtype=torch.bool)
    starts[1:] = sorted_groups[1:] != sorted_groups[:-1]
    pos = torch.arange(len(groups), device=groups.device)
    first = torch.cummax(torch.where(starts, pos, torch.zeros_like(pos)), 0).values
    rank = torch.empty_like(pos)
    rank[order] = pos - first
    return rank
