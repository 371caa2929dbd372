"""The explorer's commands: what the page's buttons and hover ask the kernel for.

Each is an ``anywidget.experimental.command`` the page calls with ``experimental.invoke(name,
msg)``; :class:`~.widget.Explorer` lists them as class attributes (anywidget finds commands on
the class). An action answers ``{"ok": True}`` or ``{"ok": False, "message"}`` (the message also
goes to the ``error`` trait), so the page can say why a click did nothing. :func:`thumb` answers
one error's thumbnail as a binary buffer. They call only what :class:`ExplorerActions` lists.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
from anywidget.experimental import command


class ExplorerActions(Protocol):
    """What the commands use of the explorer: its public actions, two traits and thumbnails."""

    selected_region: int
    error: str

    def label(self, region_id: int, label: int) -> None: ...
    def unlabel(self, region_id: int) -> None: ...
    def add_region(self) -> int: ...
    def fine_tune(self, steps: Any, lam: Any, lr: Any) -> Any: ...
    def cancel(self) -> None: ...
    def revert(self, round: int | None) -> None: ...
    def open_audit(self, region_id: int) -> None: ...
    def relabel_selected(self, indices: list[int] | None) -> int: ...
    def unrelabel_selected(self, indices: list[int] | None) -> int: ...
    def export_tests(self, path: str) -> Any: ...
    def measure_generator(self) -> None: ...
    def error_thumbnail(self, index: int) -> np.ndarray | None: ...


Command = Callable[[Any, Any, list[bytes]], tuple[Any, list[bytes]]]


def _action(fn: Callable[[ExplorerActions, dict[str, Any]], Any]) -> Command:
    """A command the page invokes: answers ``{"ok": True}``, or ``{"ok": False, "message"}``
    (also shown in ``error``) when the action refuses."""

    @functools.wraps(fn)
    def run(ui: ExplorerActions, msg: Any, buffers: list[bytes]) -> tuple[dict[str, Any], list]:
        try:
            fn(ui, msg if isinstance(msg, dict) else {})
        except Exception as exc:
            message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
            ui.error = message
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


@_action
def label(ui: ExplorerActions, msg: dict[str, Any]) -> None:
    ui.label(int(msg["region"]), int(msg["label"]))


@_action
def unlabel(ui: ExplorerActions, msg: dict[str, Any]) -> None:
    ui.unlabel(int(msg["region"]))


@_action
def add_region(ui: ExplorerActions, msg: dict[str, Any]) -> None:
    ui.add_region()


@_action
def fine_tune(ui: ExplorerActions, msg: dict[str, Any]) -> None:
    ui.fine_tune(msg.get("steps"), msg.get("lam"), msg.get("lr"))


@_action
def cancel(ui: ExplorerActions, msg: dict[str, Any]) -> None:
    ui.cancel()


@_action
def revert(ui: ExplorerActions, msg: dict[str, Any]) -> None:
    round = msg.get("round")
    ui.revert(None if round is None else int(round))


@_action
def audit(ui: ExplorerActions, msg: dict[str, Any]) -> None:
    ui.open_audit(int(msg.get("region", ui.selected_region)))


@_action
def relabel(ui: ExplorerActions, msg: dict[str, Any]) -> None:
    ui.relabel_selected(_ints(msg.get("indices")))


@_action
def unrelabel(ui: ExplorerActions, msg: dict[str, Any]) -> None:
    ui.unrelabel_selected(_ints(msg.get("indices")))


@_action
def export_tests(ui: ExplorerActions, msg: dict[str, Any]) -> None:
    ui.export_tests(msg.get("path", ""))


@_action
def generator(ui: ExplorerActions, msg: dict[str, Any]) -> None:
    ui.measure_generator()


@command
def thumb(ui: ExplorerActions, msg: Any, buffers: list[bytes]) -> tuple[Any, list[bytes]]:
    """One error's thumbnail (uint8 (1, h, w, c) as a buffer), for large maps."""
    index = msg.get("index", -1) if isinstance(msg, dict) else -1
    img = ui.error_thumbnail(index) if isinstance(index, int) else None
    if img is None:
        return {"index": index, "shape": None}, []
    return {"index": index, "shape": list(img.shape)}, [img.tobytes()]
