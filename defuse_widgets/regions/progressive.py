"""Regions while the search runs: a quick fit on the errors found so far, and labels carried from
its regions to the matching regions of the full fit that replaces it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from defuse_widgets.regions.distill import RegionSet, describe_region, fit_regions
from defuse_widgets.search.errors import ErrorSet
from defuse_widgets.utils.checks import Interval, check, positive_int

QUICK_MIN_ERRORS = 200
"""Errors a quick fit waits for: with fewer, a 100-component mixture has few codes per region."""
QUICK_MAX_FIT = 2_000
"""Codes a quick fit is fitted on at most (a seeded subsample; every error is then assigned)."""
MATCH_DRAWS = 256
"""Draws from a quick region's Gaussian that :func:`carry_labels` places in the full fit."""


def quick_regions(
    errors: ErrorSet,
    max_regions: int = 100,
    min_errors: int = QUICK_MIN_ERRORS,
    max_fit: int = QUICK_MAX_FIT,
    **fit: Any,
) -> RegionSet:
    """A first set of regions from the errors found so far, to look at and label while the
    search goes on; :func:`carry_labels` moves its labels to the full fit that replaces it.

    It is :func:`~defuse_widgets.regions.distill.fit_regions` fitted on at most ``max_fit`` codes
    (a seeded subsample; every error is then assigned); its ``settings["quick"]`` is True. (A
    looser stopping rule was tried: it stops before the surplus components empty, so one kind of
    error shows as several regions.)

    Parameters
    ----------
    errors : ErrorSet
        The errors found so far (M of them).
    max_regions : int
        Components of the mixture.
    min_errors : int
        ValueError below this many errors (``QUICK_MIN_ERRORS``).
    max_fit : int
        Codes the mixture is fitted on at most (``QUICK_MAX_FIT``).
    **fit
        Other ``fit_regions`` arguments (``seed``, ``decode``, ``predict``, ``device``...).

    Returns
    -------
    RegionSet
    """
    positive_int("min_errors", min_errors, minimum=2)
    if len(errors) < min_errors:
        raise ValueError(
            f"errors: a quick fit waits for at least min_errors={min_errors} errors, got "
            f"{len(errors)}; search more images first"
        )
    regions = fit_regions(errors, max_regions, max_fit=max_fit, **fit)
    regions.settings["quick"] = True
    return regions


def extend_regions(regions: RegionSet, errors: ErrorSet) -> RegionSet:
    """The same regions over more errors: ``errors`` starts with the errors ``regions`` covers
    (a live search's next step); those keep their region, each new one goes to the region of
    its most probable mixture component (none when that component is too light to be a region).

    Returns a new :class:`RegionSet` (same ids, mixture and settings; sizes and member
    statistics over ``errors``); ``regions`` is not changed.
    """
    known = len(regions.assignments)
    if len(errors) < known:
        raise ValueError(
            f"errors: expected at least the {known} errors the regions cover, got {len(errors)}"
        )
    region_of = torch.full((len(regions.mixture.weights),), -1, dtype=torch.long)
    for r in regions:
        region_of[r.component] = r.id
    fresh = torch.zeros(len(errors) - known, dtype=torch.long)
    assignments = torch.cat([regions.assignments, fresh])
    if len(errors) > known:
        new = errors.codes[known:].double()
        assignments[known:] = region_of[regions.mixture.responsibilities(new).argmax(1)]
    described = [
        describe_region(
            r.id,
            r.component,
            r.weight,
            (assignments == r.id).nonzero().flatten(),
            errors,
            r.mean,
            r.covariance,
            r.user_defined,
        )
        for r in regions
    ]
    return RegionSet(
        described,
        assignments,
        regions.mixture,
        dict(regions.settings),
        regions.seed,
        regions.decode,
        regions.predict,
    )


@dataclass
class CarriedLabels:
    """What :func:`carry_labels` did with each label.

    Attributes
    ----------
    labels : dict
        New region id -> label: the labels that carry over.
    matches : dict
        Old region id -> (new region id, share of the old region's codes that fall in it).
    inside : dict
        New region id -> (label, share of its codes inside old regions with that label), for
        new regions that lie mostly inside such regions (a labeled old region split in two).
    unmatched : list of int
        Labeled old regions whose label reached no new region.
    conflicts : dict
        New region id -> the labeled old regions (with different labels) that all match it; the
        person decides (none of those labels is carried).
    """

    labels: dict[int, int] = field(default_factory=dict)
    matches: dict[int, tuple[int, float]] = field(default_factory=dict)
    inside: dict[int, tuple[int, float]] = field(default_factory=dict)
    unmatched: list[int] = field(default_factory=list)
    conflicts: dict[int, list[int]] = field(default_factory=dict)


def carry_labels(
    labels: Mapping[int, int],
    old: RegionSet,
    new: RegionSet,
    codes: torch.Tensor | None = None,
    min_share: float = 0.5,
) -> CarriedLabels:
    """Carry region labels from ``old`` (e.g. a quick fit) to the matching regions of ``new``.

    A new region takes a label when it holds at least ``min_share`` of a region labeled so (an
    old region matches the new region holding the largest share of its codes), or, with
    ``codes``, when at least ``min_share`` of its own codes lie in old regions labeled so (so a
    labeled region that the full fit splits in two gives its label to both halves). The codes
    of an old region are its member errors' ``codes`` when given (the codes ``old`` was fitted
    to, (M, d), in ``old.assignments`` order), else ``MATCH_DRAWS`` seeded draws from its
    Gaussian. A code belongs to the new region whose mixture component is the most probable for
    it (none when that component is too light to be a region). A new region that two labels
    reach is left to the person (``conflicts``).

    Parameters
    ----------
    labels : mapping of int to int
        Old region id -> label (a class index, ``MODEL_IS_RIGHT`` or ``UNRECOGNIZABLE``).
    old, new : RegionSet
        The regions the labels were given on, and the regions that replace them.
    codes : torch.Tensor or None
        (M, d) the codes of ``old``'s errors.
    min_share : float
        In (0, 1]: the share that makes a match, either way.

    Returns
    -------
    CarriedLabels
        Labels that carry, the matches, and what the person has to decide.
    """
    check("min_share", min_share, [Interval(float, 0, 1, closed="right")])
    for region_id in labels:
        old.get(int(region_id))
    if codes is not None and codes.shape[0] != len(old.assignments):
        raise ValueError(
            f"codes: expected the {len(old.assignments)} codes old was fitted to, got "
            f"{tuple(codes.shape)}"
        )
    region_of = torch.full((len(new.mixture.weights),), -1, dtype=torch.long)
    for r in new:
        region_of[r.component] = r.id
    landed_all = None
    if codes is not None and len(codes):
        landed_all = region_of[new.mixture.responsibilities(codes.double()).argmax(1)]
    out = CarriedLabels()
    claims: dict[int, dict[int, list[int]]] = {}  # new id -> label -> old ids that give it
    for region_id in labels:
        region_id = int(region_id)
        if landed_all is not None:
            landed = landed_all[old.members(region_id)]
        else:
            landed = region_of[
                new.mixture.responsibilities(
                    old.sample_codes(region_id, MATCH_DRAWS, scale=1.0)
                ).argmax(1)
            ]
        total = len(landed)
        landed = landed[landed >= 0]
        if len(landed) == 0:
            continue
        values, counts = landed.unique(return_counts=True)
        best = int(counts.argmax())
        share = float(counts[best]) / total
        if share >= min_share:
            target = int(values[best])
            out.matches[region_id] = (target, share)
            claims.setdefault(target, {}).setdefault(int(labels[region_id]), []).append(region_id)
    if landed_all is not None:
        _claim_inside(labels, old, new, landed_all, min_share, claims, out)
    for target, given in sorted(claims.items()):
        if len(given) == 1:
            out.labels[target] = next(iter(given))
        else:
            out.conflicts[target] = sorted({s for sources in given.values() for s in sources})
    reached = {s for given in claims.values() for sources in given.values() for s in sources}
    out.unmatched = [int(r) for r in labels if int(r) not in reached]
    return out


def _claim_inside(
    labels: Mapping[int, int],
    old: RegionSet,
    new: RegionSet,
    landed: torch.Tensor,
    min_share: float,
    claims: dict[int, dict[int, list[int]]],
    out: CarriedLabels,
) -> None:
    """Claim a label for each new region whose codes (``landed``: each code's new region) lie
    mostly inside old regions with that label."""
    label_of = torch.full((len(old.assignments),), -(2**31), dtype=torch.long)
    for region_id, label in labels.items():
        label_of[old.assignments == int(region_id)] = int(label)
    for r in new:
        mine = landed == r.id
        n = int(mine.sum())
        if n == 0:
            continue
        values, counts = label_of[mine].unique(return_counts=True)
        for label, count in zip(values.tolist(), counts.tolist()):
            share = count / n
            if label == -(2**31) or share < min_share:
                continue
            sources = [
                int(k)
                for k, v in labels.items()
                if int(v) == label and bool((old.assignments[mine] == int(k)).any())
            ]
            out.inside[r.id] = (label, share)
            given = claims.setdefault(r.id, {}).setdefault(label, [])
            given.extend(s for s in sources if s not in given)
