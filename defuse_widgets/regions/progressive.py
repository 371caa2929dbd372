"""Regions while the search runs: a quick fit on the errors found so far, and labels carried from
its regions to the matching regions of the full fit that replaces it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from defuse_widgets.regions.distill import RegionSet, fit_regions
from defuse_widgets.search.errors import ErrorSet
from defuse_widgets.utils.checks import in_range, positive_int

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


@dataclass
class CarriedLabels:
    """What :func:`carry_labels` did with each label.

    Attributes
    ----------
    labels : dict
        New region id -> label: the labels that carry over.
    matches : dict
        Old region id -> (new region id, share of the old region's codes that fall in it).
    unmatched : list of int
        Labeled old regions with no new region holding at least ``min_share`` of their codes.
    conflicts : dict
        New region id -> the labeled old regions (with different labels) that all match it; the
        person decides (none of those labels is carried).
    """

    labels: dict[int, int] = field(default_factory=dict)
    matches: dict[int, tuple[int, float]] = field(default_factory=dict)
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

    An old region matches the new region that holds the largest share of its codes, when that
    share is at least ``min_share``: its member errors' codes when ``codes`` is given (the codes
    ``old`` was fitted to, (M, d), in ``old.assignments`` order), else ``MATCH_DRAWS`` seeded
    draws from its Gaussian. A code belongs to the new region whose mixture component is the
    most probable for it (none when that component is too light to be a region).

    Parameters
    ----------
    labels : mapping of int to int
        Old region id -> label (a class index, ``MODEL_IS_RIGHT`` or ``UNRECOGNIZABLE``).
    old, new : RegionSet
        The regions the labels were given on, and the regions that replace them.
    codes : torch.Tensor or None
        (M, d) the codes of ``old``'s errors.
    min_share : float
        In (0, 1]: the share of an old region's codes a new region must hold to match.

    Returns
    -------
    CarriedLabels
        Labels that carry, the matches, and what the person has to decide.
    """
    in_range("min_share", min_share, 0, 1)
    if not min_share > 0:
        raise ValueError(f"min_share: expected a number in (0, 1], got {min_share}")
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
    out = CarriedLabels()
    claims: dict[int, list[int]] = {}
    for region_id in labels:
        region_id = int(region_id)
        if codes is not None:
            inside = codes[old.members(region_id)]
        else:
            inside = old.sample_codes(region_id, MATCH_DRAWS, scale=1.0)
        if len(inside) == 0:
            out.unmatched.append(region_id)
            continue
        landed = region_of[new.mixture.responsibilities(inside).argmax(1)]
        landed = landed[landed >= 0]
        if len(landed) == 0:
            out.unmatched.append(region_id)
            continue
        values, counts = landed.unique(return_counts=True)
        best = int(counts.argmax())
        share = float(counts[best]) / len(inside)
        if share < min_share:
            out.unmatched.append(region_id)
            continue
        target = int(values[best])
        out.matches[region_id] = (target, share)
        claims.setdefault(target, []).append(region_id)
    for target, sources in claims.items():
        given = {int(labels[s]) for s in sources}
        if len(given) == 1:
            out.labels[target] = given.pop()
        else:
            out.conflicts[target] = sources
    return out
