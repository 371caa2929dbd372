"""Small tables for people: every result renders as one in a notebook and converts to pandas.

A :class:`Table` holds raw values (numbers stay numbers, for :meth:`Table.to_pandas`) and how to
show them (a format per column, for :meth:`Table.to_html`). :class:`Tables` stacks several under
one heading. The HTML needs nothing but the standard library; pandas is an optional extra
(``pip install "defuse-widgets[tables]"``) needed only by ``to_pandas``.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

PANDAS_HINT = 'pip install "defuse-widgets[tables]" (or pip install pandas)'
MISSING = "n/a"  # how a NaN or None shows in HTML
_STYLE = "border-collapse:collapse;margin:0.3em 0"
_CELL = "padding:2px 8px;border-bottom:1px solid #ddd"


def percent(value: float) -> str:
    """A fraction as a percentage with one decimal (``0.125`` -> ``"12.5%"``)."""
    return f"{100 * value:.1f}%"


def points(value: float) -> str:
    """Percentage points with a sign (``-1.25`` -> ``"-1.2"``)."""
    return f"{round(value, 1) + 0.0:+.1f}"  # + 0.0: no "-0.0"


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


@dataclass(frozen=True, repr=False)
class Table:
    """Rows of raw values under named columns, shown as HTML and convertible to pandas.

    Parameters
    ----------
    columns : sequence of str
        The column names (the pandas column names, the HTML header).
    rows : sequence of sequences
        One sequence of ``len(columns)`` values per row: numbers, strings, bools or None.
    title : str
        A heading shown above the table (not part of the pandas frame).
    formats : mapping of str to callable
        Column name -> function from a value to its displayed text (e.g. :func:`percent`).
        Unformatted floats show with 3 significant digits; NaN and None show as ``"n/a"``.
    notes : sequence of str
        Lines shown under the table.
    """

    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]
    title: str = ""
    formats: Mapping[str, Any] = field(default_factory=dict)
    notes: Sequence[str] = ()

    def __post_init__(self) -> None:
        for i, row in enumerate(self.rows):
            if len(row) != len(self.columns):
                raise ValueError(
                    f"rows: expected {len(self.columns)} values per row (one per column), "
                    f"got {len(row)} in row {i}"
                )

    def __len__(self) -> int:
        """The number of rows."""
        return len(self.rows)

    def column(self, name: str) -> list[Any]:
        """The raw values of one column, top to bottom."""
        if name not in self.columns:
            raise KeyError(f"name: no column {name!r}; columns are {list(self.columns)}")
        i = list(self.columns).index(name)
        return [row[i] for row in self.rows]

    def cell_text(self, column: str, value: Any) -> str:
        """The displayed text of ``value`` in ``column`` (not yet HTML-escaped)."""
        if _is_missing(value):
            return MISSING
        fmt = self.formats.get(column)
        if fmt is not None:
            return str(fmt(value))
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, float):
            return f"{value:.3g}"
        return str(value)

    def to_html(self) -> str:
        """The table as an HTML fragment, every cell escaped; numbers right-aligned."""
        parts = []
        if self.title:
            parts.append(f"<p style='margin:0.4em 0 0.1em'><b>{html.escape(self.title)}</b></p>")
        head = "".join(
            f"<th style='{_CELL};text-align:left'>{html.escape(str(c))}</th>" for c in self.columns
        )
        body = []
        for row in self.rows:
            cells = []
            for name, value in zip(self.columns, row):
                numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
                align = "right" if numeric else "left"
                text = html.escape(self.cell_text(name, value))
                cells.append(f"<td style='{_CELL};text-align:{align}'>{text}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        parts.append(
            f"<table style='{_STYLE}'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>"
        )
        parts.extend(f"<p style='margin:0.1em 0'>{html.escape(n)}</p>" for n in self.notes)
        return "<div class='defuse-widgets-table'>" + "".join(parts) + "</div>"

    def _repr_html_(self) -> str:
        return self.to_html()

    def to_text(self) -> str:
        """The table as fixed-width plain text (for terminals and logs)."""
        cells = [[self.cell_text(c, v) for c, v in zip(self.columns, row)] for row in self.rows]
        widths = [
            max([len(str(c))] + [len(r[i]) for r in cells]) for i, c in enumerate(self.columns)
        ]
        lines = [self.title] if self.title else []
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(self.columns, widths)).rstrip())
        lines += ["  ".join(t.ljust(w) for t, w in zip(r, widths)).rstrip() for r in cells]
        lines += list(self.notes)
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.to_text()

    def to_pandas(self) -> Any:
        """A ``pandas.DataFrame`` of the raw values (needs pandas; ImportError naming the extra)."""
        pd = require_pandas()
        return pd.DataFrame([list(r) for r in self.rows], columns=list(self.columns))


@dataclass(frozen=True, repr=False)
class Tables:
    """Several :class:`Table` under one heading (e.g. an evaluation's per-class and per-region
    figures); renders them one after the other."""

    tables: Sequence[Table]
    title: str = ""
    notes: Sequence[str] = ()

    def __getitem__(self, title: str) -> Table:
        """The table with this title."""
        for t in self.tables:
            if t.title == title:
                return t
        raise KeyError(f"title: no table {title!r}; tables are {[t.title for t in self.tables]}")

    def to_html(self) -> str:
        """All the tables as one HTML fragment, the heading and notes escaped."""
        head = f"<h4 style='margin:0.4em 0'>{html.escape(self.title)}</h4>" if self.title else ""
        notes = "".join(f"<p style='margin:0.1em 0'>{html.escape(n)}</p>" for n in self.notes)
        inner = "".join(t.to_html() for t in self.tables)
        return f"<div class='defuse-widgets-tables'>{head}{notes}{inner}</div>"

    def _repr_html_(self) -> str:
        return self.to_html()

    def to_text(self) -> str:
        """All the tables as plain text, one blank line apart."""
        head = [self.title] if self.title else []
        return "\n\n".join(["\n".join([*head, *self.notes])] + [t.to_text() for t in self.tables])

    def __repr__(self) -> str:
        return self.to_text()


def require_pandas() -> Any:
    """The pandas module, or an ImportError that says how to install it."""
    try:
        import pandas
    except ImportError as exc:
        raise ImportError(f"to_pandas needs pandas, which is not installed: {PANDAS_HINT}") from exc
    return pandas


def class_label(label: int, classes: Sequence[str] | None) -> str | int:
    """Class ``label``'s name from ``classes``; the index itself without names."""
    if classes is not None and 0 <= label < len(classes):
        return str(classes[label])
    return int(label)
