"""JSON helpers shared by persistence, the report and the widgets."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def nan_to_none(value: Any) -> Any:
    """JSON has no NaN: replace NaN floats (recursively) with None; mappings become dicts."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Mapping):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [nan_to_none(v) for v in value]
    return value
