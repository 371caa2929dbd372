"""The one rule for "an image is inside a region", used by the audit, the rounds, the evaluation,
the regression suite and the explorer alike.

A code is inside a region when the mixture puts it there with probability at least
``min_probability`` *and* it lies inside the ellipsoid holding ``coverage`` of the region's
Gaussian. Probability alone puts a code far from every error in its nearest region with
probability near 1; the ellipsoid keeps "inside" to what the region covers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from defuse_widgets.regions.distill import RegionSet
from defuse_widgets.regions.mixture import chi_square_quantile, mahalanobis_sq

COVERAGE = 0.99
"""Share of a region's Gaussian whose ellipsoid bounds "inside"."""
MIN_PROBABILITY = 0.5
"""Least membership probability of an image inside a region."""


def within_ellipsoid(
    codes: torch.Tensor, mean: torch.Tensor, covariance: torch.Tensor, coverage: float
) -> torch.Tensor:
    """(N,) bool: the codes (N, d) inside the ellipsoid of N(mean, covariance) holding
    ``coverage`` of its mass (squared Mahalanobis distance at most the chi-square quantile)."""
    limit = chi_square_quantile(coverage, codes.shape[1])
    return mahalanobis_sq(codes, mean, covariance) <= limit


def inside_regions(
    regions: RegionSet,
    codes: torch.Tensor,
    region_ids: Sequence[int],
    coverage: float | None = COVERAGE,
    probability: torch.Tensor | None = None,
    min_probability: float = MIN_PROBABILITY,
) -> torch.Tensor:
    """(N, len(region_ids)) bool: which codes (N, d) lie inside each region.

    ``probability`` (N, R): the regions' membership probabilities of ``codes`` when already
    computed (``regions.predict_proba(codes)`` otherwise); ``coverage`` None: probability only.
    """
    prob = regions.predict_proba(codes) if probability is None else probability
    columns: list[torch.Tensor] = []
    for rid in region_ids:
        inside = prob[:, regions.column(rid)] >= min_probability
        if coverage is not None:
            region = regions.get(rid)
            inside &= within_ellipsoid(codes.cpu(), region.mean, region.covariance, coverage)
        columns.append(inside)
    return torch.stack(columns, 1) if columns else torch.zeros(len(codes), 0, dtype=torch.bool)


def members(
    regions: RegionSet,
    codes: torch.Tensor,
    region_id: int,
    probability: torch.Tensor | None = None,
) -> torch.Tensor:
    """(m,) int64 indices of the codes inside region ``region_id`` (see :func:`inside_regions`)."""
    return (
        inside_regions(regions, codes, [region_id], probability=probability)[:, 0]
        .nonzero()
        .flatten()
    )
