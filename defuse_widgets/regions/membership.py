"""The rules for which images belong to a region: one for codes, one for real rows.

*Inside* (:func:`inside_regions`, for codes: region samples, the regression suite, the
evaluation): a code is inside a region when the mixture puts it there with probability at least
``min_probability`` *and* it lies inside the ellipsoid holding ``coverage`` of the region's
Gaussian. Probability alone puts a code far from every error in its nearest region with
probability near 1; the ellipsoid keeps "inside" to what the region covers.

*Reach* (:func:`reach`, for the real training and validation rows a region points to: the
audit, the rounds' real rows, the explorer's counts): the ``k`` rows nearest to each source image
of the region's errors. The Gaussian is fitted to *perturbed* codes and the real rows of a bug
lie outside its ellipsoid (on Fashion-MNIST it reached 2.5% of a mislabeled slice);
``benchmarks/reach.py`` measures the candidates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from defuse_widgets.regions.distill import RegionSet
from defuse_widgets.regions.mixture import chi_square_quantile, mahalanobis_sq
from defuse_widgets.utils.checks import positive_int

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


NEAREST = 25
"""Rows each source image of a region's errors reaches (see :func:`reach`). Measured with
``benchmarks/reach.py`` on the digits suite's mislabeled slice (seed 0, 57 rows): 5 / 10 / 25
nearest (VAE latent) reached 81% / 95% / 100% of it, the 99% ellipsoid 98%; on a Fashion-MNIST
mislabeled slice (611 rows) 10 / 25 / 50 reached 35% / 48% / 62% and the ellipsoid 2.5%. Recall
first: a labeler decides each audited row, and a round's real rows are the reached rows that
carry the region's label."""


@dataclass(frozen=True)
class Reach:
    """The real rows each region points to (see :func:`reach`).

    Attributes
    ----------
    rows : dict
        Region id -> (m,) int64 sorted indices of the rows it reaches.
    total : int
        The number of rows looked at (N).
    """

    rows: dict[int, torch.Tensor]
    total: int

    def mask(self, region_id: int | None = None) -> torch.Tensor:
        """(N,) bool: the rows region ``region_id`` reaches (None: any region)."""
        out = torch.zeros(self.total, dtype=torch.bool)
        for rid in self.rows if region_id is None else [region_id]:
            if rid not in self.rows:
                raise KeyError(f"region_id: no reach for region {rid!r}; known {list(self.rows)}")
            out[self.rows[rid]] = True
        return out

    def matrix(self, region_ids: Sequence[int]) -> torch.Tensor:
        """(N, len(region_ids)) bool, one column per region (like :func:`inside_regions`)."""
        if not region_ids:
            return torch.zeros(self.total, 0, dtype=torch.bool)
        return torch.stack([self.mask(rid) for rid in region_ids], 1)

    def counts(self) -> dict[int, int]:
        """Region id -> how many rows it reaches."""
        return {rid: len(rows) for rid, rows in self.rows.items()}


def nearest_rows(query: torch.Tensor, points: torch.Tensor, k: int) -> torch.Tensor:
    """(q, min(k, N)) int64: the ``k`` rows of ``points`` (N, f) nearest (Euclidean) to each
    row of ``query`` (q, f), nearest first."""
    k = min(k, len(points))
    if not len(query) or not k:
        return torch.zeros(len(query), k, dtype=torch.long)
    pool = points.float()
    found = [torch.cdist(q.float(), pool).topk(k, largest=False).indices for q in query.split(512)]
    return torch.cat(found)


def reach(
    regions: RegionSet,
    source_index: torch.Tensor,
    source_points: torch.Tensor,
    row_points: torch.Tensor,
    region_ids: Sequence[int] | None = None,
    k: int = NEAREST,
) -> Reach:
    """The one rule for which real rows a region points to: the ``k`` rows nearest to each
    source image of its member errors.

    A region's errors are perturbed codes; the real rows of a bug (a mislabeled slice's training
    rows, a rare slice's few images) lie near the *images* those errors came from, not inside
    the Gaussian fitted to the perturbations (measured in ``benchmarks/reach.py``).

    Parameters
    ----------
    regions : RegionSet
        Its ``assignments`` (M,) give each error's region.
    source_index : (M,) int64
        The searched image each error came from (``ErrorSet.source_index``).
    source_points : (S, f)
        The searched split's images as points (every index of ``source_index`` below S).
    row_points : (N, f)
        The rows to reach (a training or validation split) in the same space.
    region_ids : the regions to reach from (default: every region).
    k : rows reached per source image.

    Returns
    -------
    Reach
    """
    positive_int("k", k)
    if source_index.shape != regions.assignments.shape:
        raise ValueError(
            f"source_index: expected one index per error, shape {tuple(regions.assignments.shape)}"
            f", got {tuple(source_index.shape)}"
        )
    if (
        source_points.ndim != 2
        or row_points.ndim != 2
        or source_points.shape[1] != row_points.shape[1]
    ):
        raise ValueError(
            "source_points, row_points: expected (S, f) and (N, f) points of one space, got "
            f"{tuple(source_points.shape)} and {tuple(row_points.shape)}"
        )
    if len(source_index) and int(source_index.max()) >= len(source_points):
        raise ValueError(
            f"source_index: expected indices below {len(source_points)} (source_points' rows), "
            f"got {int(source_index.max())}"
        )
    ids = regions.ids if region_ids is None else [regions.get(r).id for r in region_ids]
    rows = {}
    for rid in ids:
        sources = source_index[regions.assignments == rid].unique()
        rows[rid] = nearest_rows(source_points[sources], row_points, k).flatten().unique()
    return Reach(rows, len(row_points))
