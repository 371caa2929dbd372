"""The explorer's map layout: a first look at once, the final projection in place when ready.

:class:`LayoutMixin` is mixed into :class:`~.explorer.Explorer`. With ``projection="umap"`` and no
cached UMAP map, the points first get PCA positions (milliseconds), the thumbnails and the
baseline evaluation follow, and only then is UMAP computed (numba's first compile alone takes tens
of seconds); its positions replace the PCA ones in place. Point indices never change, so the
selection, the selected region and the open panel stay. ``map_layout`` says which layout is shown.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from defuse_widgets.widgets import panels
from defuse_widgets.widgets import projection as proj


class LayoutMixin:
    """Map preparation of the explorer (its traits live there)."""

    session: Any
    options: Any
    regions: list[dict[str, Any]]
    points: np.ndarray | None
    map_layout: str
    thumbs: np.ndarray | None
    baseline: dict[str, Any] | None
    background_label: str
    background_points: np.ndarray | None
    _errors: Any
    _note: Callable[..., None]
    _absorb: Callable[[Any], None]

    def _prepare_map(self) -> None:
        codes, opts = self._errors.codes, self.options
        method = opts.projection if isinstance(opts.projection, str) else "given"
        place = None
        if method == "given":
            self._show_layout(opts.projection, method)
        elif method == "umap" and proj.cached(codes, "umap") is None:
            self._show_layout(proj.project(codes, "pca"), "pca")
            self._note(f"PCA layout shown; UMAP of {len(codes):,} errors follows…")
        else:
            place = self._fit_layout(method)
        self._prepare_panels()
        if self.map_layout != method:  # the first look was PCA: now the real layout
            place = self._fit_layout(method)
        self._note(f"{len(codes):,} errors, {len(self.regions)} regions ({self._layout_name()}).")
        if opts.background is not None and place is not None:
            self._place_background(place)

    def _fit_layout(self, method: str) -> proj.Placer:
        xy, place = proj.fit(self._errors.codes, method,
                             progress=lambda msg: self._note(msg.capitalize()))  # fmt: skip
        self._show_layout(xy, method)
        return place

    def _show_layout(self, xy: Any, layout: str) -> None:
        self.map_layout = layout  # first: the page resets pan and zoom when the points follow
        self.points = np.ascontiguousarray(xy, dtype=np.float32)

    def _layout_name(self) -> str:
        return {"pca": "PCA layout", "umap": "UMAP layout"}.get(self.map_layout, "given layout")

    def _prepare_panels(self) -> None:
        opts = self.options
        self.thumbs = panels.thumbnails(self.session, self._errors.codes, opts.thumbnail_side,
                                        opts.max_thumbnail_bytes)  # fmt: skip
        if self.baseline is None:
            ev = self.session.evaluate()
            self._absorb(ev)
            self.baseline = panels.history_entry(self.session, "start", ev)

    def _place_background(self, place: proj.Placer) -> None:
        opts, m = self.options, len(self._errors)
        n, what = panels.background_size(self.session, opts.background, opts.background_limit)
        self._note(f"Placing {n:,} {what} on the map…")
        points = panels.background_points(self.session, opts.background, n, place)
        self.background_label = what  # first: the page draws the note when the points come
        self.background_points = points
        self._note(f"{m:,} errors, {len(self.regions)} regions; {n:,} {what} in faint grey.")
