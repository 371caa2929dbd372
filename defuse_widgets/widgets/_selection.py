"""The explorer's map selection and the selected error's interpolation panel.

:class:`SelectionMixin` is mixed into :class:`~.explorer.Explorer`. Selecting exactly one point
(a click, a lasso around one point, :meth:`~SelectionMixin.select` or
:meth:`~SelectionMixin.select_error`) opens the interpolation panel: the trait ``interpolator``
holds one :class:`~.interpolator.Interpolator` child (made on the first selection, retargeted with
``set_error`` later) that the explorer's view renders inside its panel.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from defuse_widgets.widgets.interpolator import Interpolator


def reason(exc: BaseException) -> str:
    """An exception in words, never empty: its type and message, or, without a message (a bare
    ``assert``), its type and the file and line that raised it."""
    if str(exc):
        return f"{type(exc).__name__}: {exc}"
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" raised at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return f"{type(exc).__name__} (no message){where}"


def cell_bound_host() -> bool:
    """Whether the front end registers a widget's code only while a cell runs (marimo): a child
    widget made later, in a callback from the page, cannot be shown there."""
    mo = sys.modules.get("marimo")
    running = getattr(mo, "running_in_notebook", None)
    return bool(running and running())


class SelectionMixin:
    """Selection methods of the explorer (its traits live there)."""

    session: Any
    selected_indices: np.ndarray | None
    selected_error: int
    interpolator: Any
    _errors: Any
    _select_callbacks: list[Callable[[np.ndarray], Any]]
    _interp_options: dict[str, Any]
    _note: Callable[..., None]

    def on_select(self, callback: Callable[[np.ndarray], Any]) -> None:
        """Call ``callback(indices)`` (int array of error indices) on each selection change."""
        self._select_callbacks.append(callback)

    def select(self, indices: Sequence[int] | np.ndarray | None) -> None:
        """Set the map selection (error indices); ``None`` clears it."""
        idx = np.zeros(0, np.int32) if indices is None else np.asarray(indices, dtype=np.int64)
        if idx.ndim != 1 or (len(idx) and (idx.min() < 0 or idx.max() >= len(self._errors))):
            raise ValueError(
                f"indices: expected error indices in [0, {len(self._errors) - 1}], got {idx[:5]}..."
            )
        self.selected_indices = np.unique(idx).astype(np.int32)

    def select_error(self, index: int | None) -> None:
        """Show error ``index`` in the interpolation panel (``None`` or -1 hides the panel).

        The first selection makes the child :class:`~.interpolator.Interpolator` (trait
        ``interpolator``); later ones retarget it. Raises ValueError for an index outside
        ``session.errors`` (nothing changes then).
        """
        if index is None:
            index = -1
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            raise ValueError(f"index: expected an integer error index, got {index!r}")
        if not -1 <= int(index) < len(self._errors):
            raise ValueError(
                f"index: expected an error index in [0, {len(self._errors) - 1}] (or -1), "
                f"got {index}"
            )
        self.selected_error = int(index)

    def _make_child_now(self) -> None:
        """On a cell-bound host, make the interpolation panel's widget while the cell runs (at
        error 0, shown once an error is selected); elsewhere it is made on the first selection."""
        if cell_bound_host() and len(self._errors) and self.interpolator is None:
            self.interpolator = Interpolator(self.session, 0, **self._interp_options)

    def _on_selected_indices(self, change: dict[str, Any]) -> None:
        value = change["new"]
        idx = np.zeros(0, np.int32) if value is None else np.asarray(value).astype(np.int32)
        if len(idx) == 1:  # one point selected: interpolate it
            self.selected_error = int(idx[0])
        for cb in self._select_callbacks:
            cb(idx)

    def _on_selected_error(self, change: dict[str, Any]) -> None:
        i = int(change["new"])
        if i < 0:
            return
        try:
            if not 0 <= i < len(self._errors):
                raise ValueError(f"expected an error index in [0, {len(self._errors) - 1}]")
            child = self.interpolator
            if child is None or child.closed:
                self.interpolator = Interpolator(self.session, i, **self._interp_options)
            else:
                child.set_error(i)
        except Exception as exc:  # shown in the widget
            self._note("", f"Could not interpolate error {i}: {reason(exc)}")
        else:
            self._note(f"Error {i}: interpolation from its source image.")
