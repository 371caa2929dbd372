"""The explorer's map selection and the selected error's interpolation panel.

:class:`Selection` keeps them for :class:`~.widget.Explorer`. Selecting exactly one point
(a click, a lasso around one point, :meth:`Selection.select` or
:meth:`Selection.select_error`) opens the interpolation panel: the trait ``interpolator``
holds one :class:`Interpolator` child (made on the first selection, retargeted with
``set_error`` later) that the explorer's view renders inside its panel.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from defuse_widgets.search.errors import ErrorSet
from defuse_widgets.session.session import DefuseSession
from defuse_widgets.widgets.interpolator.widget import Interpolator


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


class SelectionTraits(Protocol):
    """The explorer's traits the selection reads and writes."""

    selected_indices: np.ndarray | None
    selected_error: int
    interpolator: Any  # an Interpolator, None until the first selection


class Selection:
    """The map selection, its callbacks and the selected error's interpolation panel.

    Parameters
    ----------
    traits : SelectionTraits
        The explorer, for the three traits above.
    session : DefuseSession
        The interpolation panel's widget is made over it.
    errors : ErrorSet
        The errors on the map (indices refer to them).
    interp_options : dict
        Keyword arguments of that :class:`Interpolator`.
    note : callable
        ``note(status, error="")`` writes the status line.
    """

    def __init__(
        self,
        traits: SelectionTraits,
        session: DefuseSession,
        errors: ErrorSet,
        interp_options: dict[str, Any],
        note: Callable[..., None],
    ) -> None:
        self.traits = traits
        self.session = session
        self.errors = errors
        self.interp_options = interp_options
        self._note = note
        self.callbacks: list[Callable[[np.ndarray], Any]] = []

    def select(self, indices: Sequence[int] | np.ndarray | None) -> None:
        """Set the map selection (error indices); ``None`` clears it."""
        idx = np.zeros(0, np.int32) if indices is None else np.asarray(indices, dtype=np.int64)
        n = len(self.errors)
        if idx.ndim != 1 or (len(idx) and (idx.min() < 0 or idx.max() >= n)):
            raise ValueError(f"indices: expected error indices in [0, {n - 1}], got {idx[:5]}...")
        self.traits.selected_indices = np.unique(idx).astype(np.int32)

    def select_error(self, index: int | None) -> None:
        """Show error ``index`` in the interpolation panel (``None`` or -1 hides the panel)."""
        if index is None:
            index = -1
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            raise ValueError(f"index: expected an integer error index, got {index!r}")
        if not -1 <= int(index) < len(self.errors):
            raise ValueError(
                f"index: expected an error index in [0, {len(self.errors) - 1}] (or -1), "
                f"got {index}"
            )
        self.traits.selected_error = int(index)

    def make_child_now(self) -> None:
        """On a cell-bound host, make the interpolation panel's widget while the cell runs (at
        error 0, shown once an error is selected); elsewhere it is made on the first selection."""
        if cell_bound_host() and len(self.errors) and self.traits.interpolator is None:
            self.traits.interpolator = Interpolator(self.session, 0, **self.interp_options)

    def indices_changed(self, change: dict[str, Any]) -> None:
        """Observer of ``selected_indices``: one point interpolates; callbacks hear of it."""
        value = change["new"]
        idx = np.zeros(0, np.int32) if value is None else np.asarray(value).astype(np.int32)
        if len(idx) == 1:  # one point selected: interpolate it
            self.traits.selected_error = int(idx[0])
        for cb in self.callbacks:
            cb(idx)

    def error_changed(self, change: dict[str, Any]) -> None:
        """Observer of ``selected_error``: make or retarget the interpolation panel."""
        i = int(change["new"])
        if i < 0:
            return
        try:
            if not 0 <= i < len(self.errors):
                raise ValueError(f"expected an error index in [0, {len(self.errors) - 1}]")
            child = self.traits.interpolator
            if child is None or child.closed:
                self.traits.interpolator = Interpolator(self.session, i, **self.interp_options)
            else:
                child.set_error(i)
        except Exception as exc:  # shown in the widget
            self._note("", f"Could not interpolate error {i}: {reason(exc)}")
        else:
            self._note(f"Error {i}: interpolation from its source image.")
