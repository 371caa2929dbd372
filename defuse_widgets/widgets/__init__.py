"""The anywidgets over a :class:`~defuse_widgets.session.session.DefuseSession`, one package
each (:mod:`.explorer`, :mod:`.interpolator`) and what they share (:mod:`.common`)."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Explorer", "Interpolator"]
_MODULES = {"Explorer": "explorer", "Interpolator": "interpolator"}


def __getattr__(name: str) -> Any:
    # lazy, so importing the package does not import anywidget until a widget is used
    if name in _MODULES:
        return getattr(importlib.import_module(f".{_MODULES[name]}", __name__), name)
    raise AttributeError(name)
