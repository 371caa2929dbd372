"""anywidgets over a :class:`~defuse_widgets.session.DefuseSession` (one module per widget)."""

from __future__ import annotations

from typing import Any

__all__ = ["Explorer"]


def __getattr__(name: str) -> Any:
    # lazy, so importing the package does not import anywidget until a widget is used
    if name == "Explorer":
        from .explorer import Explorer

        return Explorer
    raise AttributeError(name)
