"""Argument checks: each names the argument, what it expects and what it got.

A public entry point declares its parameters' constraints once, in the spirit of scikit-learn's
``_parameter_constraints``: a mapping of argument name -> list of constraints, any one of which
the value may meet (``None`` in the list allows None), checked by :func:`validate_params`::

    CONSTRAINTS = {"latent_dim": [Interval(int, 1, None)], "kind": [Options({"vae", "ae"})]}
    validate_params(CONSTRAINTS, latent_dim=latent_dim, kind=kind)

The single-argument helpers (:func:`positive_int`, :func:`in_range`, ...) are the same rules for
code that checks one value.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


class InvalidParameterError(ValueError, TypeError):
    """A refused argument: both a ValueError and a TypeError (as scikit-learn's), so callers may
    catch either whether the value had the wrong type or the wrong value."""


class Constraint(Protocol):
    """One thing an argument may be: ``accepts(value)``, described in words by ``str()``."""

    def accepts(self, value: Any) -> bool: ...


def is_number(value: Any) -> bool:
    """True for an int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Interval:
    """A number (``kind`` int: an integer; float: any int or float) between ``left`` and
    ``right`` (None: unbounded), ``closed`` "both", "left", "right" or "neither". Floats must be
    finite."""

    kind: type
    left: float | None
    right: float | None
    closed: str = "both"

    def accepts(self, value: Any) -> bool:
        if self.kind is int and (not isinstance(value, int) or isinstance(value, bool)):
            return False
        if not is_number(value) or not math.isfinite(value):
            return False
        low_ok = self.left is None or (
            value >= self.left if self.closed in ("both", "left") else value > self.left
        )
        high_ok = self.right is None or (
            value <= self.right if self.closed in ("both", "right") else value < self.right
        )
        return low_ok and high_ok

    def __str__(self) -> str:
        if self.kind is int and self.right is None and self.left is not None:
            least = self.left + (self.closed in ("right", "neither"))
            return "a positive integer" if least == 1 else f"an integer >= {least:g}"
        if self.kind is not int and self.right is None and self.left is not None:
            if self.closed in ("both", "left"):
                return f"a finite number >= {self.left:g}"
            return (
                "a positive finite number" if self.left == 0 else f"a finite number > {self.left:g}"
            )
        what = "an integer" if self.kind is int else "a number"
        opening = "[" if self.closed in ("both", "left") else "("
        closing = "]" if self.closed in ("both", "right") else ")"
        low = "-inf" if self.left is None else f"{self.left:g}"
        high = "inf" if self.right is None else f"{self.right:g}"
        return f"{what} in {opening}{low}, {high}{closing}"


@dataclass(frozen=True)
class Options:
    """One of a few values (compared with ``==``, as ``in`` does)."""

    values: Sequence[Any]

    def accepts(self, value: Any) -> bool:
        return value in tuple(self.values)

    def __str__(self) -> str:
        return f"one of {tuple(self.values)}"


@dataclass(frozen=True)
class Boolean:
    """True or False (not 0 or 1)."""

    def accepts(self, value: Any) -> bool:
        return isinstance(value, bool)

    def __str__(self) -> str:
        return "True or False"


@dataclass(frozen=True)
class InstanceOf:
    """An instance of ``kind``, described as ``what``."""

    kind: type | tuple[type, ...]
    what: str

    def accepts(self, value: Any) -> bool:
        return isinstance(value, self.kind)

    def __str__(self) -> str:
        return self.what


Constraints = Mapping[str, Sequence[Constraint | None]]
"""Argument name -> the constraints one of which its value must meet (None: the value None)."""


def describe(constraints: Sequence[Constraint | None]) -> str:
    """The constraints in words, "None or a positive integer"."""
    words = ["None" if c is None else str(c) for c in constraints]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def check(name: str, value: Any, constraints: Sequence[Constraint | None]) -> Any:
    """``value`` if it meets one of ``constraints`` (None: the value None), else
    :class:`InvalidParameterError` naming ``name``, what it expects and what it got."""
    for c in constraints:
        if (value is None) if c is None else c.accepts(value):
            return value
    raise InvalidParameterError(f"{name}: expected {describe(constraints)}, got {value!r}")


def validate_params(constraints: Constraints, **values: Any) -> None:
    """Check each of ``values`` against its entry in ``constraints`` (in the order given); the
    first refused raises :class:`InvalidParameterError`. A name without an entry is a bug."""
    for name, value in values.items():
        check(name, value, constraints[name])


def positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` if it is an integer >= ``minimum``, else ValueError."""
    return check(name, value, [Interval(int, minimum, None)])


def positive_number(name: str, value: Any) -> float:
    """``value`` as a float if it is a finite number > 0, else ValueError."""
    return float(check(name, value, [Interval(float, 0, None, closed="neither")]))


def in_range(name: str, value: Any, low: float, high: float, high_open: bool = False) -> float:
    """``value`` as a float if it lies in [low, high] (or [low, high)), else ValueError."""
    closed = "left" if high_open else "both"
    return float(check(name, value, [Interval(float, low, high, closed=closed)]))


def one_of(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """``value`` if it is one of ``choices``, else ValueError listing them."""
    return check(name, value, [Options(tuple(choices))])
