"""The explorer's map layout: a first look at once, the final projection in place when ready.

:class:`MapLayout` prepares the map for :class:`~.widget.Explorer`. With ``projection="umap"``
and no cached UMAP map, the points first get PCA positions (milliseconds), the thumbnails and the
baseline evaluation follow, and only then is UMAP computed (numba's first compile alone takes tens
of seconds); its positions replace the PCA ones in place. Point indices never change, so the
selection, the selected region and the open panel stay. ``map_layout`` says which layout is shown.

Outside a kernel (a script) nobody can see the map, so with ``defer_final`` the UMAP fit waits for
:meth:`MapLayout.finish` (the explorer's ``wait()``): a script that never waits does not spend its
last seconds, or its exit, inside a numba compile.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from defuse_widgets.projection import layout as proj
from defuse_widgets.projection import points
from defuse_widgets.search.errors import ErrorSet
from defuse_widgets.session.session import DefuseSession
from defuse_widgets.widgets.explorer import panels
from defuse_widgets.widgets.explorer.options import ExplorerOptions


class MapTraits(Protocol):
    """The explorer's traits the map preparation writes (and ``regions``, read for counts)."""

    regions: list[dict[str, Any]]
    points: np.ndarray | None
    map_layout: str
    thumbs: np.ndarray | None
    baseline: dict[str, Any] | None
    background_label: str
    background_points: np.ndarray | None


class MapLayout:
    """Positions, thumbnails, the baseline and the background of the explorer's map.

    Parameters
    ----------
    traits : MapTraits
        The explorer, for the traits above.
    session : DefuseSession
        Decodes thumbnails, evaluates the baseline, encodes the background split.
    errors : ErrorSet
        The errors on the map (M codes).
    options : ExplorerOptions
        ``projection``, ``background``, ``background_limit``, the thumbnail sizes.
    note : callable
        ``note(status)`` writes the status line.
    absorb : callable
        ``absorb(evaluation)`` shows the baseline evaluation in the region list.
    """

    def __init__(
        self,
        traits: MapTraits,
        session: DefuseSession,
        errors: ErrorSet,
        options: ExplorerOptions,
        note: Callable[..., None],
        absorb: Callable[[Any], None],
        defer_final: bool = False,
    ) -> None:
        self.traits = traits
        self.session = session
        self.errors = errors
        self.options = options
        self._note = note
        self._absorb = absorb
        self.defer_final = defer_final
        self.pending = False
        """Whether the final projection waits for :meth:`finish` (see ``defer_final``)."""

    def prepare(self) -> None:
        """Lay out the map (first look, then the final projection), thumbnails, baseline and
        background; runs on the background worker."""
        codes, opts, traits = self.errors.codes, self.options, self.traits
        method = opts.projection if isinstance(opts.projection, str) else "given"
        place = None
        if method == "given":
            self._show(opts.projection, method)
        elif method == "umap" and proj.cached(codes, "umap") is None:
            self._show(proj.project(codes, "pca"), "pca")
            self._note(f"PCA layout shown; UMAP of {len(codes):,} errors follows…")
        else:
            place = self._fit(method)
        self._prepare_panels()
        if traits.map_layout != method and self.defer_final:
            self.pending = True
            self._note(
                f"{len(codes):,} errors, {len(traits.regions)} regions "
                "(PCA layout; UMAP on wait())."
            )
            return
        self.finish(place)

    def finish(self, place: proj.Placer | None = None) -> None:
        """The final layout where the first look was PCA, then the background; runs on the
        background worker."""
        self.pending = False
        codes, opts, traits = self.errors.codes, self.options, self.traits
        method = opts.projection if isinstance(opts.projection, str) else "given"
        if traits.map_layout != method:  # the first look was PCA: now the real layout
            place = self._fit(method)
        self._note(f"{len(codes):,} errors, {len(traits.regions)} regions ({self._name()}).")
        if opts.background is not None and place is not None:
            self._place_background(place, opts.background)

    def thumbnail(self, index: int) -> np.ndarray | None:
        """Error ``index``'s thumbnail, uint8 (1, h, w, c); None for an index off the map."""
        if not 0 <= index < len(self.errors):
            return None
        codes = self.errors.codes[index : index + 1]
        return points.thumbnails(
            self.session.decode, codes, self._shape(), self.options.thumbnail_side
        )

    def _shape(self) -> tuple[int, ...]:
        return tuple(self.session.data.image_shape)

    def _fit(self, method: str) -> proj.Placer:
        xy, place = proj.fit(
            self.errors.codes, method, progress=lambda msg: self._note(msg.capitalize())
        )
        self._show(xy, method)
        return place

    def _show(self, xy: Any, layout: str) -> None:
        self.traits.map_layout = layout  # first: the page resets pan and zoom when points follow
        self.traits.points = np.ascontiguousarray(xy, dtype=np.float32)

    def _name(self) -> str:
        layout = self.traits.map_layout
        return {"pca": "PCA layout", "umap": "UMAP layout"}.get(layout, "given layout")

    def _prepare_panels(self) -> None:
        opts = self.options
        thumbs = points.thumbnails(
            self.session.decode,
            self.errors.codes,
            self._shape(),
            opts.thumbnail_side,
            opts.max_thumbnail_bytes,
        )
        self.traits.thumbs = thumbs
        if self.traits.baseline is None:
            ev = self.session.evaluate()
            self._absorb(ev)
            self.traits.baseline = panels.history_entry(self.session, "start", ev)

    def _place_background(self, place: proj.Placer, split: str) -> None:
        m = len(self.errors)
        images, _ = self.session.data.split(split)
        n, what = points.background_size(len(images), split, self.options.background_limit)
        self._note(f"Placing {n:,} {what} on the map…")
        placed = points.background_points(images, self.session.encode, n, place)
        self.traits.background_label = what  # first: the page draws the note when points come
        self.traits.background_points = placed
        self._note(f"{m:,} errors, {len(self.traits.regions)} regions; {n:,} {what} in faint grey.")
