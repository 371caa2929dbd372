"""Argument checks shared by the steps: each names the argument, what it expects and what it got."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


def is_number(value: Any) -> bool:
    """True for an int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` if it is an integer >= ``minimum``, else ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name}: expected {what}, got {value!r}")
    return value


def positive_number(name: str, value: Any) -> float:
    """``value`` as a float if it is a finite number > 0, else ValueError."""
    if not (is_number(value) and 0 < value < math.inf):
        raise ValueError(f"{name}: expected a positive finite number, got {value!r}")
    return float(value)


def in_range(name: str, value: Any, low: float, high: float, high_open: bool = False) -> float:
    """``value`` as a float if it lies in [low, high] (or [low, high)), else ValueError."""
    inside = is_number(value) and low <= value and (value < high if high_open else value <= high)
    if not inside:
        bracket = ")" if high_open else "]"
        raise ValueError(f"{name}: expected a number in [{low:g}, {high:g}{bracket}, got {value!r}")
    return float(value)


def one_of(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """``value`` if it is one of ``choices``, else ValueError listing them."""
    options = tuple(choices)
    if value not in options:
        raise ValueError(f"{name}: expected one of {options}, got {value!r}")
    return value
