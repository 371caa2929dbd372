"""The explorer's commands: what the page's buttons and hover ask the kernel for.

Each is an ``anywidget.experimental.command`` the page calls with ``experimental.invoke(name,
msg)``; an action answers ``{"ok": True}`` or ``{"ok": False, "message"}`` (the message also goes
to the ``error`` trait), so the page can say why a click did nothing. ``_thumb_command`` answers
one error's thumbnail as a binary buffer. They call the explorer's public methods only.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from anywidget.experimental import command

from defuse_widgets.widgets import panels

if TYPE_CHECKING:
    from defuse_widgets.widgets._options import ExplorerOptions


def _action(fn: Callable[[Any, dict[str, Any]], Any]) -> Any:
    """A command the page invokes: answers ``{"ok": True}``, or ``{"ok": False, "message"}``
    (also shown in ``error``) when the action refuses."""

    @functools.wraps(fn)
    def run(self: Any, msg: Any, buffers: list[bytes]) -> tuple[dict[str, Any], list[bytes]]:
        try:
            fn(self, msg if isinstance(msg, dict) else {})
        except Exception as exc:
            message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
            self.error = message
            return {"ok": False, "message": message}, []
        return {"ok": True}, []

    return command(run)


def _ints(value: Any) -> list[int] | None:
    """Training indices from the page (a list of integers), None when absent."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, int) for v in value):
        raise ValueError(f"indices: expected a list of training indices, got {value!r}")
    return value


class CommandsMixin:
    """The commands of :class:`~.explorer.Explorer` (mixed into it; they call its public API)."""

    options: ExplorerOptions
    selected_region: int
    error: str
    session: Any
    _errors: Any
    label: Callable[[int, int], None]
    unlabel: Callable[[int], None]
    add_region: Callable[..., int]
    fine_tune: Callable[..., Any]
    cancel: Callable[[], None]
    revert: Callable[..., None]
    open_audit: Callable[..., None]
    relabel_selected: Callable[..., int]
    unrelabel_selected: Callable[..., int]
    export_tests: Callable[..., Any]

    @_action
    def _label_command(self, msg: dict[str, Any]) -> None:
        self.label(int(msg["region"]), int(msg["label"]))

    @_action
    def _unlabel_command(self, msg: dict[str, Any]) -> None:
        self.unlabel(int(msg["region"]))

    @_action
    def _add_region_command(self, msg: dict[str, Any]) -> None:
        self.add_region()

    @_action
    def _fine_tune_command(self, msg: dict[str, Any]) -> None:
        self.fine_tune(msg.get("steps"), msg.get("lam"), msg.get("lr"))

    @_action
    def _cancel_command(self, msg: dict[str, Any]) -> None:
        self.cancel()

    @_action
    def _revert_command(self, msg: dict[str, Any]) -> None:
        round = msg.get("round")
        self.revert(None if round is None else int(round))

    @_action
    def _audit_command(self, msg: dict[str, Any]) -> None:
        self.open_audit(int(msg.get("region", self.selected_region)))

    @_action
    def _relabel_command(self, msg: dict[str, Any]) -> None:
        self.relabel_selected(_ints(msg.get("indices")))

    @_action
    def _unrelabel_command(self, msg: dict[str, Any]) -> None:
        self.unrelabel_selected(_ints(msg.get("indices")))

    @_action
    def _export_tests_command(self, msg: dict[str, Any]) -> None:
        self.export_tests(msg.get("path", ""))

    @command
    def _thumb_command(self, msg: Any, buffers: list[bytes]) -> tuple[Any, list[bytes]]:
        """One error's thumbnail (uint8 (1, h, w, c) as a buffer), for large maps."""
        index = msg.get("index", -1) if isinstance(msg, dict) else -1
        if not isinstance(index, int) or not 0 <= index < len(self._errors):
            return {"index": index, "shape": None}, []
        opts = self.options
        img = panels.thumbnails(self.session, self._errors.codes[index : index + 1],
                                opts.thumbnail_side)  # fmt: skip
        assert img is not None
        return {"index": index, "shape": list(img.shape)}, [img.tobytes()]
