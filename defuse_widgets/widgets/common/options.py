"""The check both widgets make of their keyword options."""

from __future__ import annotations

import inspect
from typing import Any


def check_known_options(cls: type, kwargs: dict[str, Any]) -> None:
    """TypeError naming the valid options when ``kwargs`` holds a name that is neither a parameter
    of ``cls`` nor one of its traits (unknown keywords would otherwise be dropped silently)."""
    unknown = sorted(set(kwargs) - set(cls.class_trait_names()))  # type: ignore[attr-defined]
    if unknown:
        skip = {"session", "kwargs"}
        params = [p for p in inspect.signature(cls).parameters if p not in skip]
        raise TypeError(
            f"{cls.__name__}: unknown option(s) {', '.join(map(repr, unknown))}; expected one of "
            f"{', '.join(params)}, or a widget trait such as layout"
        )
