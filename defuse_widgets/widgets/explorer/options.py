"""The explorer's construction options, checked once before anything is built."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from defuse_widgets.projection import layout as proj


@dataclass(frozen=True)
class ExplorerOptions:
    """What :class:`~.widget.Explorer` shows and how (see its parameters for each field).

    ``projection`` is ``"umap"``, ``"pca"`` or an array (M, 2) of given positions.
    """

    projection: str | np.ndarray = "umap"
    background: str | None = None
    background_limit: int = 5000
    samples: int = 16
    members: int = 16
    thumbnail_side: int = 32
    max_thumbnail_bytes: int = 8_000_000
    min_probability: float = 0.0
    audit_limit: int = 100
    who: str = "user"

    def check(self, n_errors: int) -> ExplorerOptions:
        """Raise ValueError naming the first bad option (``n_errors``: errors on the map);
        returns self, with a given projection as a float32 array."""
        projection = self.projection
        if not isinstance(projection, str):
            xy = np.asarray(projection, dtype=np.float32)
            if xy.shape != (n_errors, 2):
                raise ValueError(
                    f"projection: expected 'umap', 'pca' or an array of shape ({n_errors}, 2), "
                    f"got shape {xy.shape}"
                )
            projection = xy
        elif projection not in proj.METHODS:
            raise ValueError(f"projection: expected one of {proj.METHODS}, got {projection!r}")
        if self.background not in (None, "train", "test"):
            raise ValueError(
                f"background: expected 'train', 'test' or None, got {self.background!r}"
            )
        if self.background is not None and not isinstance(projection, str):
            raise ValueError(
                "background: needs projection='umap' or 'pca' (a given array cannot place new "
                "codes); pass background=None"
            )
        _count("background_limit", self.background_limit, 1)
        _count("samples", self.samples, 0)
        _count("members", self.members, 0)
        _count("thumbnail_side", self.thumbnail_side, 1)
        _count("max_thumbnail_bytes", self.max_thumbnail_bytes, 0)
        _count("audit_limit", self.audit_limit, 1)
        p = self.min_probability
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise ValueError(f"min_probability: expected a number in [0, 1], got {p!r}")
        return ExplorerOptions(**{**self.__dict__, "projection": projection, "who": str(self.who)})


def _count(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        what = "a positive integer" if low == 1 else "a non-negative integer"
        raise ValueError(f"{name}: expected {what}, got {value!r}")
