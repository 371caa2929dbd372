"""The explorer's live search: errors on the map as the search finds them, regions from a quick
fit as soon as there are enough errors, replaced in place by the full fit.

:class:`LiveSearch` runs on the explorer's background worker. The search
(:meth:`~defuse_widgets.session.session.DefuseSession.search` with ``on_errors``) reports the
errors found so far every few hundred images; each report starts with the previous one's errors
in the same order, so point indices never change while the map grows. Each report is made the
session's errors (:meth:`~defuse_widgets.session.session.DefuseSession.adopt`), so a person can
open, label and even lasso regions while the search goes on. Once ``QUICK_MIN_ERRORS`` errors are
in, a quick fit (:func:`~defuse_widgets.regions.progressive.quick_regions`) gives the first
regions; later errors join them (:func:`~defuse_widgets.regions.progressive.extend_regions`).
When the search ends, the full fit replaces them and the labels given meanwhile move to the
matching full regions (:func:`~defuse_widgets.regions.progressive.carry_labels`); a label that
matches no region, or two labels that meet in one, are named in the status line for the person
to give again. Lasso regions made meanwhile join the full fit with their members and labels.
The trait ``regions_fit`` says which regions are shown: "" (none yet), "quick" or "full".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np
import torch

from defuse_widgets.projection import layout as proj
from defuse_widgets.regions.distill import RegionSet, fit_regions, user_region
from defuse_widgets.regions.labels import label_name
from defuse_widgets.regions.progressive import (
    QUICK_MIN_ERRORS,
    CarriedLabels,
    carry_labels,
    extend_regions,
    quick_regions,
)
from defuse_widgets.search.errors import ErrorSet
from defuse_widgets.session.session import DefuseSession

SEARCH_DEFAULTS: dict[str, Any] = {"progress": False}


class LiveTraits(Protocol):
    """The explorer's traits and methods the live search writes."""

    regions_fit: str

    def hold_sync(self) -> Any: ...


def check_live(
    search: Mapping[str, Any] | bool | None, distill: Mapping[str, Any] | None, projection: Any
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The explorer's ``search`` and ``distill`` arguments as two dicts (None: no live search);
    ValueError or TypeError naming the first bad one."""
    if search is None or search is False:
        if distill is not None:
            raise ValueError("distill: sets the live search's full fit; pass search= too")
        return None
    if search is True:
        search = {}
    if not isinstance(search, Mapping):
        raise TypeError(
            f"search: expected a dict of session.search arguments or True, got "
            f"{type(search).__name__}"
        )
    if not isinstance(distill, (Mapping, type(None))):
        raise TypeError(
            f"distill: expected a dict of session.distill arguments, got {type(distill).__name__}"
        )
    if "on_errors" in search:
        raise ValueError("search: on_errors is the explorer's own (it shows each report)")
    if search.get("backend") == "ray":
        raise ValueError("search: a live search runs on the local backend, got backend='ray'")
    if not isinstance(projection, str):
        raise ValueError(
            "projection: a live search lays out its own errors: expected 'umap' "
            "or 'pca', got an array"
        )
    distill = dict(distill or {})
    min_errors = distill.get("min_errors", QUICK_MIN_ERRORS)
    if isinstance(min_errors, bool) or not isinstance(min_errors, int) or min_errors < 2:
        raise ValueError(f"distill: min_errors expected an integer >= 2, got {min_errors!r}")
    return dict(search), distill


def keep_user_regions(quick: RegionSet, full: RegionSet, errors: ErrorSet) -> dict[int, int]:
    """Add each user-defined (lasso) region of ``quick`` to ``full`` with the same member errors;
    return old id -> new id."""
    return {
        r.id: user_region(full, errors, quick.members(r.id)).id for r in quick if r.user_defined
    }


def no_errors(latent_dim: int, split: str) -> ErrorSet:
    """An empty error set with ``latent_dim``-d codes: the map before the search's first report."""
    long, flt = torch.zeros(0, dtype=torch.long), torch.zeros(0)
    codes = torch.zeros(0, latent_dim)
    return ErrorSet(codes, long, long, long, flt, flt, codes, split=split)


class LiveSearch:
    """Search, show and fit, step by step (see the module docstring).

    Parameters
    ----------
    traits : LiveTraits
        The explorer: ``regions_fit`` and ``hold_sync()`` (one message per report).
    session : DefuseSession
        Searches, and holds each report's errors and regions.
    search : dict
        Keyword arguments of ``session.search`` (``limit``, ``strategy``, ``step_images``...).
    distill : dict
        Keyword arguments of the full fit (those of ``session.distill``); ``min_errors`` (the
        errors a quick fit waits for, default ``QUICK_MIN_ERRORS``) is taken out of it.
    show : callable
        ``show(errors, xy)`` puts the errors on the map at positions ``xy`` (M, 2).
    note : callable
        ``note(status)`` writes the status line.
    """

    def __init__(
        self,
        traits: LiveTraits,
        session: DefuseSession,
        search: Mapping[str, Any],
        distill: Mapping[str, Any],
        show: Callable[[ErrorSet, np.ndarray], None],
        note: Callable[..., None],
    ) -> None:
        self.traits, self.session = traits, session
        self.search = {**SEARCH_DEFAULTS, **search}
        self.distill = dict(distill)
        self.min_errors = int(self.distill.pop("min_errors", QUICK_MIN_ERRORS))
        self._show, self._note = show, note
        self._place: proj.Placer | None = None
        self._shown: ErrorSet | None = None
        self.summary = ""
        """What the full fit did, in words (the status line's start once the map is ready)."""

    def run(self) -> None:
        """Search with a report per step, then the full fit (on the background worker)."""
        self._note("Searching…")
        errors = self.session.search(on_errors=self.report, **self.search)
        if self._shown is None or self._shown.images_searched != errors.images_searched:
            self.report(errors)  # no step was reported (no image to search)
        assert self._shown is not None
        self.finish(self._shown)  # the last report holds the whole result

    def report(self, errors: ErrorSet) -> None:
        """Show the errors found so far and the regions over them; make them the session's."""
        regions, fresh = self._regions_for(errors)
        if self._place is None or fresh:  # positions stay put once the first regions show
            xy, self._place = proj.fit(errors.codes, "pca", use_cache=False)
        else:
            xy = self._place(errors.codes.numpy())
        with self.traits.hold_sync():  # points, colors and regions in one message
            self._show(errors, xy)
            self.session.adopt(errors, regions, labels="keep")
            self._shown = errors
            if regions is not None:
                self.traits.regions_fit = "quick"
        searched, total = errors.images_searched, self._total()
        shown = (
            f"quick regions ({len(regions)}, fitted on {regions.settings['fitted_on']:,} errors)"
            if regions is not None
            else f"regions once {self.min_errors:,} errors are in"
        )
        self._note(f"Searching: {searched:,} of {total:,} images, {len(errors):,} errors; {shown}…")

    def finish(self, errors: ErrorSet) -> None:
        """Fit the full mixture and put it in place of the quick regions, labels carried."""
        quick = self.session.regions if self.session.errors is errors else None
        meanwhile = " (the quick regions stay meanwhile)" if quick is not None else ""
        self._note(f"Search done: {len(errors):,} errors. Fitting the full mixture{meanwhile}…")
        if len(errors) < 2:
            self.summary = (
                f"Search done: {len(errors)} error{'s' * (len(errors) != 1)}, too "
                "few for regions; search more images or another strategy."
            )
            return
        options = {"seed": self.session.seed, **self.distill}
        full = fit_regions(
            errors, decode=self.session.decode, predict=self.session.predict, **options
        )
        labels = self.session.labels if quick is not None else {}
        kept = keep_user_regions(quick, full, errors) if quick is not None else {}
        fitted = {rid: label for rid, label in labels.items() if rid not in kept}
        carried = CarriedLabels()
        if quick is not None and fitted:
            carried = carry_labels(fitted, quick, full, errors.codes)
        lassoed = {kept[rid]: label for rid, label in labels.items() if rid in kept}
        self.session.adopt(errors, full, {**carried.labels, **lassoed})
        self.traits.regions_fit = "full"
        self.summary = self._full_note(errors, full, carried, fitted, quick is not None)
        if kept:
            moved = ", ".join(f"{old} as {new}" for old, new in kept.items())
            self.summary = self.summary[:-1] + f"; your lasso regions kept ({moved})."
        self._note(self.summary)

    def _regions_for(self, errors: ErrorSet) -> tuple[RegionSet | None, bool]:
        """The regions over ``errors``, and whether they are a fresh quick fit."""
        current = self.session.regions if self.session.errors is self._shown else None
        if current is not None and self._shown is not None:
            return extend_regions(current, errors), False
        if len(errors) < self.min_errors:
            return None, False
        fit = {k: v for k, v in self.distill.items() if k != "max_fit"}
        fit.setdefault("seed", self.session.seed)
        regions = quick_regions(
            errors,
            min_errors=self.min_errors,
            decode=self.session.decode,
            predict=self.session.predict,
            **fit,
        )
        return regions, True

    def _total(self) -> int:
        limit = self.search.get("limit")
        x, _ = self.session.data.split(self.search.get("split", "test"))
        return len(x) if limit is None else min(int(limit), len(x))

    def _full_note(
        self,
        errors: ErrorSet,
        full: RegionSet,
        carried: CarriedLabels,
        labels: Mapping[int, int],
        replaced: bool,
    ) -> str:
        classes = self.session.data.classes
        parts = [
            f"Full fit: {len(full)} regions over {len(errors):,} errors"
            + (" (replaced the quick fit)" if replaced else "")
        ]
        if labels:
            reached = len(labels) - len(carried.unmatched)
            parts.append(
                f"labels of {reached} of {len(labels)} labeled quick regions carried "
                f"over to {len(carried.labels)} full regions"
            )
        lost = [f"region {rid} ({label_name(labels[rid], classes)})" for rid in carried.unmatched]
        if lost:
            parts.append(f"no full region matches quick {', '.join(lost)}: label again")
        for target, sources in carried.conflicts.items():
            names = ", ".join(f"{rid} ({label_name(labels[rid], classes)})" for rid in sources)
            parts.append(f"quick regions {names} all match region {target}: label it")
        return "; ".join(parts) + "."
